//! Fuzz targets: the parsers that take untrusted bytes (Segment messages and batches, import
//! lines, CloudEvents, campaign definitions) and the decoding of stored events into every read
//! model. Each must refuse bad input with an error, never panic. They are `cargo fuzz` targets
//! (`fuzz/fuzz_targets/`, libFuzzer, nightly) and also run on stable in the test suite for a
//! fixed budget over the corpus in `fuzz/corpus/` and mutations of it (`tests/fuzz.rs`).

use crate::ingest::{self, Call, Kind};
use chrono::{TimeZone, Utc};
use serde_json::Value;

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).single().expect("a valid instant")
}

/// A Segment call or batch, as the tracking API receives it.
pub fn segment(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let _ = ingest::parse_batch("t", value.clone(), now());
    for kind in [Kind::Identify, Kind::Track, Kind::Page, Kind::Screen, Kind::Alias, Kind::Group] {
        if let Ok(m) = ingest::parse_message("t", 0, value.clone(), Some(kind), now(), None, Some(data.len())) {
            let _ = Call::of("fuzz", m);
        }
    }
}

/// One line of an NDJSON import (Segment message or CloudEvent), both the fast path and the
/// general one.
pub fn import_line(data: &[u8]) {
    crate::import::fuzz_line(data, now());
}

/// A CloudEvent in structured mode.
pub fn cloudevent(data: &[u8]) {
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(data) {
        let _ = crate::cloudevents::prepare("t", m, now());
    }
}

/// A campaign definition.
pub fn campaign(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(c) = chronicle_automation::Campaign::parse(&v) {
            let _ = c.triggered_by("ActivityTracked", Some("x"), &Value::Null);
        }
    }
}

/// A stored event's payload, under each event type a read model folds, into fresh views.
pub fn stored_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if serde_json::from_str::<Value>(text).is_err() {
        return;
    }
    let mut views = chronicle_projections::Projections::new();
    let types = chronicle_core::customer::EVENT_TYPES
        .iter()
        .chain(chronicle_automation::events::EVENT_TYPES)
        .chain(chronicle_automation::events::FEEDBACK_TYPES)
        .chain(["AuditRecorded", "ActivityTracked"].iter());
    for (i, ty) in types.enumerate() {
        for (stream, schema) in [("customer-c1", 1), ("customer-c1", 2), ("deal-d1", 1), ("order-o1", 1), ("_audit", 1)] {
            let raw = chronicle_core::envelope::RawEnvelope {
                id: uuid::Uuid::from_u128(i as u128 + 1),
                tenant: "t".into(),
                stream: stream.into(),
                version: views.position + 1,
                position: views.position + 1,
                event_type: (*ty).into(),
                schema_version: schema,
                event_time: now(),
                ingest_time: now(),
                source: "fuzz".into(),
                causation_id: None,
                correlation_id: None,
                actor: None,
                data: text.to_owned(),
                metadata: "{}".into(),
            };
            views.apply_raw(&raw);
        }
    }
    let _ = chronicle_projections::diff(&views, &chronicle_projections::Projections::new());
}

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// Every target by name (the corpus folders are named the same).
pub const TARGETS: &[(&str, Target)] = &[
    ("segment", segment),
    ("import_line", import_line),
    ("cloudevent", cloudevent),
    ("campaign", campaign),
    ("stored_event", stored_event),
];
