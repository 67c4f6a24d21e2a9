//! CloudEvents 1.0 over HTTP (`POST /v1/cloudevents`): structured mode
//! (`application/cloudevents+json`), batch mode (`application/cloudevents-batch+json`) and
//! binary mode (`ce-*` headers, the body is the data). Authenticated by the tenant's write key
//! (HTTP Basic user name) or API key (Bearer). A batch is validated whole, then appended; the
//! mapping onto events is `chronicle_app::cloudevents`.

use super::error::ApiError;
use chronicle_app::app::App;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chronicle_core::envelope::ExpectedVersion;
use serde_json::{json, Map, Value};
use std::sync::Arc;

const MAX_BATCH: usize = 1000;

pub async fn receive(
    State(app): State<Arc<App>>,
    auth: Option<axum::Extension<super::auth::Authenticated>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Accepted>, ApiError> {
    let tenant = super::segment::ingest_tenant(&app, auth.as_ref().map(|a| &a.0), &headers, &Value::Null)?;
    let content_type =
        headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let bad = |m: String| ApiError::of(super::codes::Code::BadRequest, m);
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).map_err(|e| bad(format!("invalid JSON body: {e}")));
    let events: Vec<Map<String, Value>> = if content_type.starts_with("application/cloudevents-batch+json") {
        match parse(&body)? {
            Value::Array(items) if !items.is_empty() && items.len() <= MAX_BATCH => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(m) => Ok(m),
                    _ => Err(bad(format!("event {i} is not a JSON object"))),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad(format!("a batch is a JSON array of 1 to {MAX_BATCH} events"))),
        }
    } else if content_type.starts_with("application/cloudevents+json") {
        match parse(&body)? {
            Value::Object(m) => vec![m],
            _ => return Err(bad("a structured event is a JSON object".into())),
        }
    } else {
        // Binary mode: attributes in ce-* headers (percent-encoded, as the HTTP binding says),
        // the body is the data.
        let mut m = Map::new();
        for (name, value) in &headers {
            if let Some(attr) = name.as_str().strip_prefix("ce-") {
                let v = percent_decode(value.as_bytes()).ok_or_else(|| bad(format!("header ce-{attr} is not percent-encoded UTF-8")))?;
                m.insert(attr.to_owned(), Value::String(v));
            }
        }
        if !m.contains_key("specversion") {
            return Err(ApiError::of(super::codes::Code::UnsupportedMediaType,
                "send application/cloudevents+json, application/cloudevents-batch+json, or ce-* headers (binary mode)",
            ));
        }
        if body.is_empty() {
            m.insert("data".into(), Value::Null);
        } else if content_type.starts_with("application/json") || content_type.split(';').next().is_some_and(|t| t.trim().ends_with("+json")) {
            m.insert("data".into(), parse(&body)?);
        } else {
            // Anything else is kept byte for byte, as the JSON format keeps binary data.
            use base64::Engine;
            m.insert("data_base64".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(&body)));
        }
        if !content_type.is_empty() {
            m.insert("datacontenttype".into(), Value::String(content_type.clone()));
        }
        vec![m]
    };
    // Validate every event before writing any.
    let mut prepared = Vec::with_capacity(events.len());
    for (i, mut m) in events.into_iter().enumerate() {
        app.pseudonyms.apply(&mut m, &["subject"]);
        prepared.push(
            chronicle_app::cloudevents::prepare(&tenant, m, app.now())
                .map_err(|e| ApiError { extra: Some(json!({"index": i})), ..bad(e.to_string()) })?,
        );
    }
    let count = prepared.len();
    for (stream, ev) in prepared {
        app.append(&tenant, &stream, ExpectedVersion::Any, vec![ev]).await?;
    }
    Ok(Json(Accepted { success: true, accepted: count }))
}

/// CloudEvents received: every event of the request was checked before any was stored.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Accepted {
    success: bool,
    /// Events in the request.
    accepted: usize,
}

/// RFC 3986 percent-decoding of a header value into UTF-8; `None` for a bad escape or bytes
/// that are not UTF-8.
fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(percent_decode(b"caf%C3%A9 %2Fshop").as_deref(), Some("café /shop"));
        assert_eq!(percent_decode(b"plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode(b"bad%2"), None);
        assert_eq!(percent_decode(b"bad%zz"), None);
        assert_eq!(percent_decode(b"%FF"), None, "not UTF-8");
    }
}

/// A CloudEvent in the JSON format (structured mode), or a batch of them: the schema of the
/// body. Binary mode puts the attributes in `ce-` headers and the data as the body, any media
/// type. `chronicle_app::cloudevents::prepare` checks each event.
pub struct Body;

impl schemars::JsonSchema for Body {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CloudEvents".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let event = json!({
            "type": "object",
            "required": ["specversion", "id", "source", "type"],
            "properties": {
                "specversion": {"const": "1.0"},
                "id": {"type": "string", "minLength": 1},
                "source": {"type": "string", "minLength": 1},
                "type": {"type": "string", "minLength": 1},
                "subject": {"type": "string", "description": "The customer's id (or e-mail): the event goes on their timeline"},
                "time": {"type": "string", "format": "date-time"},
                "datacontenttype": {"type": "string"},
                "dataschema": {"type": "string"},
                "data": {},
                "data_base64": {"type": "string"}
            }
        });
        schemars::json_schema!({"oneOf": [event, {"type": "array", "items": event}]})
    }
}
