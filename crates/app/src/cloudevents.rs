//! CloudEvents 1.0 mapped onto Chronicle's events, for the HTTP endpoint and the bulk import.
//!
//! Mapping: `id` (unique per `source`) → the event id (derived from source and id, so a
//! redelivery stores nothing new); `type` → the event type; `source` → the envelope's source;
//! `time` → event time; `subject` → the customer (`customer-<subject>` stream), else the
//! `source-<source>` stream. The data and the extension attributes are kept in the payload.
//! Types Chronicle's own code writes ([`registry::owner_of`]) are refused: those are written
//! by its commands. `time` must lie in the accepted range ([`chronicle_core::time`]).

use chronicle_core::envelope::NewEvent;
use chronicle_core::{customer, registry};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Why a CloudEvent was refused (nothing of its batch is written).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

impl From<&str> for Invalid {
    fn from(why: &str) -> Invalid {
        Invalid(why.to_owned())
    }
}

impl From<String> for Invalid {
    fn from(why: String) -> Invalid {
        Invalid(why)
    }
}

/// Validate one event (its attributes as a JSON object) and map it to its stream and event.
/// An event without `time` happened `now`.
pub fn prepare(tenant: &str, mut m: Map<String, Value>, now: DateTime<Utc>) -> Result<(String, NewEvent), Invalid> {
    let text =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    if text(&m, "specversion").as_deref() != Some("1.0") {
        return Err("specversion must be \"1.0\"".into());
    }
    let id = text(&m, "id").ok_or(Invalid::from("id is required"))?;
    let source = text(&m, "source").ok_or(Invalid::from("source is required"))?;
    let ty = text(&m, "type").ok_or(Invalid::from("type is required"))?;
    if ty.len() > 128 {
        return Err("type is at most 128 characters".into());
    }
    if registry::owner_of(&ty).is_some() {
        return Err(format!("type {ty:?} names one of Chronicle's own events, which only its commands write").into());
    }
    let time = match m.get("time") {
        None => now,
        Some(Value::String(t)) => {
            let t = DateTime::parse_from_rfc3339(t).map_err(|_| Invalid(format!("time is not RFC 3339: {t:?}")))?;
            chronicle_core::time::check("time", t.with_timezone(&Utc)).map_err(|e| Invalid(e.to_string()))?
        }
        Some(_) => return Err("time must be a string".into()),
    };
    let stream = match text(&m, "subject") {
        Some(subject) if subject.len() <= 128 && !subject.chars().any(char::is_control) => {
            customer::stream_of(&subject)
        }
        Some(_) => return Err("subject is at most 128 characters, no control characters".into()),
        None => format!("source-{source}"),
    };
    let event_id = crate::ingest::event_id(tenant, &format!("cloudevents\0{source}\0{id}"));
    let data = m.remove("data").unwrap_or(Value::Null);
    let mut ev = NewEvent::new(event_id, ty, json!({"data": data, "cloudevent": m}), time).with_source(source);
    ev.metadata = json!({"transport": "cloudevents"});
    Ok((stream, ev))
}
