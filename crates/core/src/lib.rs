//! Chronicle's pure core: the event envelope, the event catalogue, the aggregates as
//! `decide(state, command) -> events` / `evolve(state, event) -> state`, and the upcasters.
//!
//! Nothing here does I/O or reads a clock: time and ids come in as arguments, so replays are
//! deterministic and property tests can drive any history.

pub mod customer;
pub mod deal;
pub mod envelope;
pub mod ids;
pub mod order;
pub mod registry;
pub mod time;
pub mod upcast;

/// Decoding a stored event into a typed domain event failed (unknown type or bad payload).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("cannot decode event {event_type}: {reason}")]
pub struct DecodeError {
    pub event_type: String,
    pub reason: String,
}

/// Turn a typed event enum (`#[serde(tag = "type", content = "data")]`) into its wire parts.
pub fn to_parts<T: serde::Serialize>(ev: &T) -> (String, serde_json::Value) {
    match serde_json::to_value(ev).expect("domain events always serialize") {
        serde_json::Value::Object(mut m) => {
            let ty = match m.remove("type") {
                Some(serde_json::Value::String(s)) => s,
                _ => unreachable!("tagged enums carry a string tag"),
            };
            (ty, m.remove("data").unwrap_or(serde_json::Value::Object(Default::default())))
        }
        _ => unreachable!("tagged enums serialize to objects"),
    }
}

/// The inverse of [`to_parts`].
pub fn from_parts<T: serde::de::DeserializeOwned>(
    event_type: &str,
    data: &serde_json::Value,
) -> Result<T, DecodeError> {
    let mut m = serde_json::Map::with_capacity(2);
    m.insert("type".into(), serde_json::Value::String(event_type.to_owned()));
    m.insert("data".into(), data.clone());
    serde_json::from_value(serde_json::Value::Object(m))
        .map_err(|e| DecodeError { event_type: event_type.to_owned(), reason: e.to_string() })
}
