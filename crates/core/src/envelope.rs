//! The event envelope: what every stored event carries, and what an append submits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use uuid::Uuid;

/// A stored event, as every reader sees it (times in RFC 3339 UTC on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventEnvelope {
    pub id: Uuid,
    pub tenant: String,
    pub stream: String,
    /// 1-based position within the stream.
    pub version: u64,
    /// Global, gap-free commit order (1-based).
    pub position: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub event_time: DateTime<Utc>,
    pub ingest_time: DateTime<Utc>,
    pub source: String,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub data: Value,
    pub metadata: Value,
}

/// The type of an expired event's tombstone: what retention leaves in its place (the store
/// keeps its position, id, stream and version; see `chronicle_store::expire`).
pub const EXPIRED_TYPE: &str = "EventExpired";

/// An event submitted for append; the store assigns version, position and ingest time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The idempotency key: the same id appended twice is stored once.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub event_time: DateTime<Utc>,
    pub source: String,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub data: Payload,
    pub metadata: Value,
}

/// An event's payload on its way into the store: a JSON value, or JSON text that a bulk path
/// assembled from its input without ever building the tree (see `chronicle import`). The store
/// keeps both alike, as compact JSON text; readers always get a `Value`.
#[derive(Debug, Clone)]
pub enum Payload {
    Value(Value),
    /// Valid JSON by construction (`RawValue` is only made from checked text).
    Text(Box<RawValue>),
}

impl Payload {
    /// The payload as JSON text (borrowed when it already is text).
    pub fn json_text(&self) -> Cow<'_, str> {
        match self {
            Payload::Value(v) => Cow::Owned(v.to_string()),
            Payload::Text(t) => Cow::Borrowed(t.get()),
        }
    }

    /// The payload as a value (text is parsed).
    pub fn into_value(self) -> Value {
        match self {
            Payload::Value(v) => v,
            Payload::Text(t) => serde_json::from_str(t.get()).expect("RawValue holds valid JSON"),
        }
    }

    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Value(v)
    }
}

/// Two payloads are equal when they hold the same JSON value, whatever their form.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Value(a), Payload::Value(b)) => a == b,
            _ => self.to_value() == other.to_value(),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Value(v) => v.serialize(s),
            Payload::Text(t) => t.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Payload::Value)
    }
}

impl NewEvent {
    /// A new event with the current schema version, no causation and empty metadata.
    pub fn new(id: Uuid, event_type: impl Into<String>, data: Value, event_time: DateTime<Utc>) -> Self {
        let event_type = event_type.into();
        NewEvent {
            id,
            schema_version: crate::upcast::current_schema_version_of(&event_type),
            event_type,
            event_time,
            source: "chronicle".into(),
            causation_id: None,
            correlation_id: None,
            actor: None,
            data: Payload::Value(data),
            metadata: Value::Object(Default::default()),
        }
    }

    /// A new event whose payload is JSON text already checked (see [`Payload::Text`]).
    pub fn from_json_text(
        id: Uuid,
        event_type: impl Into<String>,
        data: Box<RawValue>,
        event_time: DateTime<Utc>,
    ) -> Self {
        NewEvent { data: Payload::Text(data), ..NewEvent::new(id, event_type, Value::Null, event_time) }
    }

    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }
}

/// Optimistic concurrency for an append. On the wire: `"any"`, `"no_stream"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this (0 is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = no stream) satisfies this expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Any => s.serialize_str("any"),
            ExpectedVersion::NoStream => s.serialize_str("no_stream"),
            ExpectedVersion::Exact(v) => s.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "any" => Ok(ExpectedVersion::Any),
            Value::String(s) if s == "no_stream" => Ok(ExpectedVersion::NoStream),
            Value::Number(n) => n
                .as_u64()
                .map(ExpectedVersion::Exact)
                .ok_or_else(|| serde::de::Error::custom("expected_version must be a non-negative integer")),
            _ => Err(serde::de::Error::custom(
                r#"expected_version must be "any", "no_stream" or a non-negative integer"#,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_wire_forms() {
        let any: ExpectedVersion = serde_json::from_str(r#""any""#).unwrap();
        let none: ExpectedVersion = serde_json::from_str(r#""no_stream""#).unwrap();
        let exact: ExpectedVersion = serde_json::from_str("3").unwrap();
        assert_eq!((any, none, exact), (ExpectedVersion::Any, ExpectedVersion::NoStream, ExpectedVersion::Exact(3)));
        assert!(serde_json::from_str::<ExpectedVersion>("-1").is_err());
        assert!(serde_json::from_str::<ExpectedVersion>(r#""latest""#).is_err());
    }

    #[test]
    fn admits() {
        assert!(ExpectedVersion::NoStream.admits(0));
        assert!(!ExpectedVersion::NoStream.admits(1));
        assert!(ExpectedVersion::Exact(2).admits(2));
        assert!(!ExpectedVersion::Exact(2).admits(3));
        assert!(ExpectedVersion::Any.admits(7));
    }
}

/// A stored event whose payload and metadata are still the JSON text on disk (not parsed, not
/// upcast): for bulk readers such as a rebuild, which decode only the payloads they use.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEnvelope {
    pub id: Uuid,
    pub tenant: String,
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub event_time: DateTime<Utc>,
    pub ingest_time: DateTime<Utc>,
    pub source: String,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub data: String,
    pub metadata: String,
}

impl EventEnvelope {
    /// The event in its type's current schema (see [`crate::upcast`]): what readers see.
    pub fn upcast(mut self) -> EventEnvelope {
        self.schema_version = crate::upcast::upcast_data(&self.event_type, self.schema_version, &mut self.data);
        self
    }
}

impl RawEnvelope {
    /// Parse the payload and bring it to the current schema: what `read_all` would return.
    pub fn decode(&self) -> Result<EventEnvelope, serde_json::Error> {
        let env = EventEnvelope {
            data: serde_json::from_str(&self.data)?,
            metadata: serde_json::from_str(&self.metadata)?,
            id: self.id,
            tenant: self.tenant.clone(),
            stream: self.stream.clone(),
            version: self.version,
            position: self.position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            event_time: self.event_time,
            ingest_time: self.ingest_time,
            source: self.source.clone(),
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            actor: self.actor.clone(),
        };
        Ok(env.upcast())
    }

    /// The raw form of an already decoded event (for backends without a cheaper path).
    pub fn from_envelope(e: EventEnvelope) -> Self {
        RawEnvelope {
            data: e.data.to_string(),
            metadata: e.metadata.to_string(),
            id: e.id,
            tenant: e.tenant,
            stream: e.stream,
            version: e.version,
            position: e.position,
            event_type: e.event_type,
            schema_version: e.schema_version,
            event_time: e.event_time,
            ingest_time: e.ingest_time,
            source: e.source,
            causation_id: e.causation_id,
            correlation_id: e.correlation_id,
            actor: e.actor,
        }
    }
}
