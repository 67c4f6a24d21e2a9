//! Schema evolution: older shapes of an event are upcast on read, so projections and
//! aggregates only ever see the newest shape.
//!
//! Shipped upcaster: `CustomerRegistered` v1 carried one `name`; v2 carries
//! `traits.first_name` / `traits.last_name` instead.
//!
//! This module works on payloads alone (it knows no envelope); `EventEnvelope::upcast` applies
//! it to a whole event.

use serde_json::Value;

/// The schema version new events of this type are written with.
pub fn current_schema_version_of(event_type: &str) -> u32 {
    match event_type {
        "CustomerRegistered" => 2,
        _ => 1,
    }
}

/// Bring a payload of `event_type` written in `schema_version` up to the type's current schema;
/// returns the version it is now in. Unknown types pass through unchanged.
pub fn upcast_data(event_type: &str, schema_version: u32, data: &mut Value) -> u32 {
    if event_type == "CustomerRegistered" && schema_version < 2 {
        customer_registered_v1_to_v2(data);
        return 2;
    }
    schema_version
}

/// `data` of `event_type` in the type's current schema: borrowed when it already is, else an
/// upcast copy. For a fold handed an envelope that was never read back through the store (the
/// commit hook's, an import's): it must see what a replay, which upcasts on read, will see.
pub fn upcast_ref<'a>(event_type: &str, schema_version: u32, data: &'a Value) -> std::borrow::Cow<'a, Value> {
    if schema_version >= current_schema_version_of(event_type) {
        return std::borrow::Cow::Borrowed(data);
    }
    let mut owned = data.clone();
    upcast_data(event_type, schema_version, &mut owned);
    std::borrow::Cow::Owned(owned)
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

    fn up(mut data: Value) -> (u32, Value) {
        let v = upcast_data("CustomerRegistered", 1, &mut data);
        (v, data)
    }

    #[test]
    fn splits_name_into_first_and_last() {
        let (v, data) = up(json!({"email": "ada@example.com", "name": "Ada King Lovelace"}));
        assert_eq!(v, 2);
        assert_eq!(data, json!({"email": "ada@example.com", "traits": {"first_name": "Ada", "last_name": "King Lovelace"}}));
    }

    #[test]
    fn one_word_name_and_existing_traits() {
        let (_, data) = up(json!({"name": "Plato", "traits": {"first_name": "Kept", "plan": "pro"}}));
        assert_eq!(data, json!({"traits": {"first_name": "Kept", "plan": "pro"}}));
    }

    #[test]
    fn current_versions_pass_through() {
        let mut data = json!({"traits": {"first_name": "A"}});
        assert_eq!(upcast_data("CustomerRegistered", 2, &mut data), 2);
        assert_eq!(data, json!({"traits": {"first_name": "A"}}));
        let mut other = json!({"name": "x"});
        assert_eq!(upcast_data("NoteAdded", 1, &mut other), 1);
        assert_eq!(other, json!({"name": "x"}));
    }
}
