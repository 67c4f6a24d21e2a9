//! Schema evolution: older shapes of an event are upcast on read, so projections and
//! aggregates only ever see the newest shape.
//!
//! Shipped upcaster: `CustomerRegistered` v1 carried one `name`; v2 carries
//! `traits.first_name` / `traits.last_name` instead.

use crate::envelope::EventEnvelope;
use serde_json::Value;

/// The schema version new events of this type are written with.
pub fn current_schema_version_of(event_type: &str) -> u32 {
    match event_type {
        "CustomerRegistered" => 2,
        _ => 1,
    }
}

/// Bring an event up to the current schema of its type. Unknown types pass through unchanged.
pub fn upcast(mut ev: EventEnvelope) -> EventEnvelope {
    if ev.event_type == "CustomerRegistered" && ev.schema_version < 2 {
        customer_registered_v1_to_v2(&mut ev.data);
        ev.schema_version = 2;
    }
    ev
}

/// v1 `{"email", "name": "Ada King Lovelace", "traits"}` → v2 with `traits.first_name = "Ada"`
/// and `traits.last_name = "King Lovelace"` (split at the first whitespace; a one-word name is a
/// first name). A trait already present in v1's traits is kept.
fn customer_registered_v1_to_v2(data: &mut Value) {
    let Value::Object(obj) = data else { return };
    let name = match obj.remove("name") {
        Some(Value::String(s)) => s,
        _ => return,
    };
    let traits = obj.entry("traits").or_insert_with(|| Value::Object(Default::default()));
    if !traits.is_object() {
        *traits = Value::Object(Default::default());
    }
    let traits = traits.as_object_mut().expect("made an object above");
    let name = name.trim();
    let (first, last) = match name.split_once(char::is_whitespace) {
        Some((f, l)) => (f.to_owned(), Some(l.trim().to_owned())),
        None => (name.to_owned(), None),
    };
    if !first.is_empty() {
        traits.entry("first_name").or_insert(Value::String(first));
    }
    if let Some(last) = last.filter(|l| !l.is_empty()) {
        traits.entry("last_name").or_insert(Value::String(last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1(data: Value) -> EventEnvelope {
        EventEnvelope {
            id: uuid::Uuid::nil(),
            tenant: "t".into(),
            stream: "customer-1".into(),
            version: 1,
            position: 1,
            event_type: "CustomerRegistered".into(),
            schema_version: 1,
            event_time: chrono::DateTime::UNIX_EPOCH,
            ingest_time: chrono::DateTime::UNIX_EPOCH,
            source: "test".into(),
            causation_id: None,
            correlation_id: None,
            actor: None,
            data,
            metadata: json!({}),
        }
    }

    #[test]
    fn splits_name_into_first_and_last() {
        let up = upcast(v1(json!({"email": "ada@example.com", "name": "Ada King Lovelace"})));
        assert_eq!(up.schema_version, 2);
        assert_eq!(
            up.data,
            json!({"email": "ada@example.com", "traits": {"first_name": "Ada", "last_name": "King Lovelace"}})
        );
    }

    #[test]
    fn one_word_name_and_existing_traits() {
        let up = upcast(v1(json!({"name": "Plato", "traits": {"first_name": "Kept", "plan": "pro"}})));
        assert_eq!(up.data, json!({"traits": {"first_name": "Kept", "plan": "pro"}}));
    }

    #[test]
    fn current_versions_pass_through() {
        let mut e = v1(json!({"traits": {"first_name": "A"}}));
        e.schema_version = 2;
        assert_eq!(upcast(e.clone()), e);
        let mut other = v1(json!({"name": "x"}));
        other.event_type = "NoteAdded".into();
        assert_eq!(upcast(other.clone()), other);
    }
}
