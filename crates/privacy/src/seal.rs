//! Which parts of which events are personal, and sealing or opening them with the owner's key.
//!
//! Events of a customer's stream belong to the customer, those of an anonymous visitor's stream
//! to the visitor (a key of its own, destroyed with the customer it was linked to). Their
//! payloads are sealed whole — profile changes, notes, consent records, tracked events and
//! their context (IP, user agent), delivery feedback — except where a read model must still
//! fold the event after the key is gone, so that a replay after an erasure gives what the live
//! views hold: there only the personal fields are sealed (a queued message's recipient, subject
//! and body; an enrolment's context; a delivery error), and events that carry nothing personal
//! (the erasure itself, campaign steps) stay clear.
//!
//! Opened without the key, a whole payload reads `{"redacted": true}` and a sealed field is
//! absent.

use crate::cipher::{sealed_slot, DataKey, SEALED_MARK};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Whole,
    Fields(&'static [&'static str]),
    Clear,
}

/// The owner of a stream's personal data, if it has one.
pub fn owner(stream: &str) -> Option<String> {
    if let Some(id) = stream.strip_prefix("customer-") {
        Some(id.to_owned())
    } else {
        stream.strip_prefix("anonymous-").map(anonymous_owner)
    }
}

/// The key owner name of an anonymous visitor.
pub fn anonymous_owner(anonymous_id: &str) -> String {
    format!("anonymous:{anonymous_id}")
}

pub fn rule(event_type: &str) -> Rule {
    match event_type {
        "CustomerErased" | "CustomerMergedInto" | "CampaignStepScheduled" | "CampaignStepExecuted" | "CampaignExited"
        | "CampaignConverted" | "MessageSuppressed" | "MessageSent" | "MessageRetried" => Rule::Clear,
        "CampaignEnrolled" => Rule::Fields(&["context"]),
        "MessageQueued" => Rule::Fields(&["to", "subject", "body"]),
        "MessageFailed" | "MessageDeadLettered" => Rule::Fields(&["error"]),
        _ => Rule::Whole,
    }
}

/// What a sealed whole payload looks like: `{"sealed": "enc:v1:…"}`, plus `"v": N` when the
/// event was written in an older schema (the store upcasts what it reads, which it cannot do
/// to a sealed payload; the layer that opens it does, from this).
pub const WHOLE_KEY: &str = "sealed";
const SCHEMA_KEY: &str = "v";

pub fn redacted() -> Value {
    serde_json::json!({"redacted": true})
}

/// Seal a payload given as JSON text; returns the new text. `legacy` is the event's schema
/// version when it is older than its type's current one.
pub fn seal_text(rule: Rule, key: &DataKey, text: &str, legacy: Option<u32>) -> String {
    match rule {
        Rule::Clear => text.to_owned(),
        Rule::Whole => {
            let mut out = String::with_capacity((text.len() + 28) * 4 / 3 + 40);
            out.push_str("{\"");
            out.push_str(WHOLE_KEY);
            out.push_str("\":\"");
            key.seal_into(text, &mut out);
            out.push('"');
            if let Some(v) = legacy {
                out.push_str(&format!(",\"{SCHEMA_KEY}\":{v}"));
            }
            out.push('}');
            out
        }
        Rule::Fields(_) => {
            let mut v: Value = serde_json::from_str(text).expect("payload text is valid JSON");
            seal_value(rule, key, &mut v, legacy);
            v.to_string()
        }
    }
}

/// Seal a payload in place.
pub fn seal_value(rule: Rule, key: &DataKey, v: &mut Value, legacy: Option<u32>) {
    match rule {
        Rule::Clear => {}
        Rule::Whole => {
            let mut m = Map::new();
            m.insert(WHOLE_KEY.into(), Value::String(key.seal(&v.to_string())));
            if let Some(ver) = legacy {
                m.insert(SCHEMA_KEY.into(), Value::from(ver));
            }
            *v = Value::Object(m);
        }
        Rule::Fields(fields) => {
            if let Value::Object(m) = v {
                for f in fields {
                    if let Some(x) = m.get_mut(*f) {
                        if !x.is_null() {
                            *x = Value::String(key.seal(&x.to_string()));
                        }
                    }
                }
            }
        }
    }
}

/// Whether a payload text may hold sealed parts (cheap: a substring test).
pub fn looks_sealed(text: &str) -> bool {
    text.contains(SEALED_MARK)
}

/// Whether `v` is a value sealed whole (`{"sealed": "enc:…"}`), as an event's metadata is on a
/// person's stream.
pub fn is_sealed_whole(v: &Value) -> bool {
    !sealed_parts(Rule::Whole, v).is_empty()
}

/// The sealed values of a payload under `rule` (only the parts the rule seals: a value a user
/// wrote in a clear field is never taken for one).
pub fn sealed_parts(rule: Rule, v: &Value) -> Vec<&str> {
    let Value::Object(m) = v else { return Vec::new() };
    let fields: &[&str] = match rule {
        Rule::Clear => &[],
        Rule::Whole => &[WHOLE_KEY],
        Rule::Fields(fields) => fields,
    };
    fields.iter().filter_map(|f| m.get(*f).and_then(Value::as_str)).filter(|s| sealed_slot(s).is_some()).collect()
}

/// Open a payload in place; `key` finds the key a sealed value needs (by its slot, or the
/// owner's for a value that names none), if it still exists. Returns the schema version the
/// payload was written in when it is an older one (see [`WHOLE_KEY`]).
pub fn open_value(rule: Rule, key: &dyn Fn(Option<u64>) -> Option<DataKey>, v: &mut Value) -> Option<u32> {
    let open = |s: &str| sealed_slot(s).and_then(key).and_then(|k| k.open(s));
    match rule {
        Rule::Clear => None,
        Rule::Whole => {
            let (sealed, legacy) = match v {
                Value::Object(m) if m.len() <= 2 => (
                    m.get(WHOLE_KEY).and_then(Value::as_str),
                    m.get(SCHEMA_KEY).and_then(Value::as_u64).map(|n| n as u32),
                ),
                _ => (None, None),
            };
            // Not sealed (written before sealing was on): as it is.
            let sealed = sealed.filter(|s| sealed_slot(s).is_some())?;
            let opened = open(sealed).and_then(|t| serde_json::from_str(&t).ok());
            match opened {
                Some(o) => {
                    *v = o;
                    legacy
                }
                None => {
                    *v = redacted();
                    None
                }
            }
        }
        Rule::Fields(fields) => {
            if let Value::Object(m) = v {
                for f in fields {
                    let Some(Value::String(s)) = m.get(*f) else { continue };
                    if sealed_slot(s).is_none() {
                        continue;
                    }
                    match open(s).and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
                        Some(x) => {
                            m.insert((*f).to_owned(), x);
                        }
                        None => {
                            m.remove(*f);
                        }
                    }
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_payloads_and_fields_seal_and_open_and_read_redacted_without_the_key() {
        let k = DataKey::random();
        let data = json!({"email": "ada@example.com", "traits": {"first_name": "Adelgunde"}});
        let text = seal_text(Rule::Whole, &k, &data.to_string(), None);
        assert!(!text.contains("ada@example") && !text.contains("Adelgunde"));
        let mut v: Value = serde_json::from_str(&text).unwrap();
        let mut gone = v.clone();
        open_value(Rule::Whole, &|_| Some(k.clone()), &mut v);
        assert_eq!(v, data);
        open_value(Rule::Whole, &|_| None, &mut gone);
        assert_eq!(gone, redacted());

        let msg = json!({"message": "m1", "channel": "email", "to": "ada@example.com", "subject": "Hi Adelgunde", "body": "<p>Adelgunde</p>"});
        let mut v = msg.clone();
        seal_value(rule("MessageQueued"), &k, &mut v, None);
        assert_eq!(v["message"], "m1", "what the outbox needs stays clear");
        assert!(!v.to_string().contains("Adelgunde") && !v.to_string().contains("ada@"));
        let mut gone = v.clone();
        open_value(rule("MessageQueued"), &|_| Some(k.clone()), &mut v);
        assert_eq!(v, msg);
        open_value(rule("MessageQueued"), &|_| None, &mut gone);
        assert_eq!(gone, json!({"message": "m1", "channel": "email"}));

        // Text written before sealing was on reads as it was.
        let mut plain = data.clone();
        open_value(Rule::Whole, &|_| Some(k.clone()), &mut plain);
        assert_eq!(plain, data);
        assert_eq!(rule("CustomerErased"), Rule::Clear);
        assert_eq!(owner("anonymous-a1").as_deref(), Some("anonymous:a1"));
        assert_eq!(owner("order-1"), None);
    }

    #[test]
    fn only_the_parts_a_rule_seals_count_as_sealed() {
        let k = DataKey::random().in_slot(7);
        // A clear event whose id a user chose to look like a sealed value.
        let merged = json!({"survivor": "enc:v2:7:AAAA"});
        assert!(sealed_parts(rule("CustomerMergedInto"), &merged).is_empty());
        let mut queued = json!({"message": "enc:v2:7:BBBB", "to": "ada@example.com"});
        seal_value(rule("MessageQueued"), &k, &mut queued, None);
        let parts = sealed_parts(rule("MessageQueued"), &queued);
        assert_eq!(parts.len(), 1, "the recipient, not the clear message id: {parts:?}");
        assert_eq!(crate::cipher::sealed_slot(parts[0]), Some(Some(7)));
    }
}
