//! Segments as data: a definition (conditions that must all hold) checked whole, and whether a
//! customer is in it now. Membership is kept by the engine as events (`SegmentEntered`,
//! `SegmentExited` on the customer's stream), so it is known at any past instant and can trigger
//! campaigns.
//!
//! Conditions (each an object with one kind):
//! - `{"trait": NAME, "equals": VALUE}`; `{"trait": NAME, "exists": true|false}`;
//! - `{"tag": NAME}`; `{"stage": "customer"}` (the lifecycle stage);
//! - `{"consent": {"channel": "email", "purpose": "marketing"}}`: the decision allows it now;
//! - `{"inactive_for": "60d"}`: no tracked activity for that long (counted from the customer's
//!   last activity, else their registration). This one changes with time alone: the engine's
//!   scan re-evaluates it.
//! - `{"event": NAME, "within": "30d", "at_least"?: N, "at_most"?: N, "sum"?: PROPERTY}`: how
//!   many events named NAME (an event type or a tracked name) the customer had in the window
//!   (or the sum of their PROPERTY); the window slides with time, so the scan re-evaluates it;
//! - `{"rfm_group": "champions"}`: the customer's RFM group; `{"rfm": {"r": 4, "f": 3}}`: their
//!   RFM scores at least these (relative to the whole population, so recomputed on the engine's
//!   scan, not per event; the application checks the group's name).

use chronicle_core::customer::{Channel, Customer, CustomerStatus, LifecycleStage, Purpose};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SegmentError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, SegmentError> {
    Err(SegmentError(msg.into()))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cond {
    TraitEquals(String, Value),
    TraitExists(String, bool),
    Tag(String),
    Stage(LifecycleStage),
    Consent(Channel, Purpose),
    InactiveFor(#[serde(with = "crate::campaign::secs")] Duration),
    RfmGroup(String),
    /// Minimum R, F and M scores (1–5).
    RfmScores { r: Option<u8>, f: Option<u8>, m: Option<u8> },
    Events { event: String, sum: Option<String>, #[serde(with = "crate::campaign::secs")] within: Duration, at_least: Option<f64>, at_most: Option<f64> },
}

/// A customer's RFM group and scores, as last computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmFacts {
    pub group: String,
    pub r: u8,
    pub f: u8,
    pub m: u8,
}

/// What a segment's conditions read besides the customer's state.
pub struct Facts<'a> {
    pub now: DateTime<Utc>,
    /// The customer's last tracked activity.
    pub last_active: Option<DateTime<Utc>>,
    /// Their RFM group and scores as last computed.
    pub rfm: Option<&'a RfmFacts>,
    /// How many of their events named `event` happened after `since` (with a property name:
    /// the sum of that property over them).
    pub window: &'a dyn Fn(&str, Option<&str>, DateTime<Utc>) -> f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub conditions: Vec<Cond>,
    /// The definition as given (answered by `GET`).
    pub definition: Value,
}

/// A segment's name: what its stream and the API's path carry.
pub fn check_name(name: &str) -> Result<(), SegmentError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        bad("a segment's name is 1 to 64 letters, digits, '-' or '_'")
    }
}

pub fn stream_of(name: &str) -> String {
    format!("segment-{name}")
}

/// The types of [`SegmentEvent`], as `chronicle_core::registry` lists them.
pub const EVENT_TYPES: &[&str] = chronicle_core::registry::SEGMENT_TYPES;

/// What segments record: a definition saved or deleted (on `segment-{name}`), a customer
/// entering or leaving (on their stream, with what caused it: an event's id, or `scan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SegmentEvent {
    SegmentSaved { name: String, definition: Value },
    SegmentDeleted { name: String },
    SegmentEntered { segment: String, cause: String },
    SegmentExited { segment: String, cause: String },
}

impl SegmentEvent {
    pub fn to_parts(&self) -> (String, Value) {
        let v = serde_json::to_value(self).expect("serializable");
        (v["type"].as_str().unwrap_or_default().to_owned(), v["data"].clone())
    }

    pub fn from_parts(event_type: &str, data: &Value) -> Result<SegmentEvent, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"type": event_type, "data": data}))
    }
}

impl Segment {
    /// A definition checked whole: `{"conditions": [...], "description"?: "..."}`.
    pub fn parse(definition: &Value) -> Result<Segment, SegmentError> {
        let Some(m) = definition.as_object() else { return bad("a segment is a JSON object") };
        if let Some(k) = m.keys().find(|k| !["conditions", "description"].contains(&k.as_str())) {
            return bad(format!("unexpected field {k:?}; a segment has conditions and a description"));
        }
        if m.get("description").is_some_and(|d| !d.is_string()) {
            return bad("description must be a string");
        }
        let Some(list) = m.get("conditions").and_then(Value::as_array) else { return bad("conditions must be a list") };
        if list.is_empty() || list.len() > 20 {
            return bad("a segment has 1 to 20 conditions");
        }
        let conditions = list.iter().enumerate().map(|(i, c)| cond(c).map_err(|e| SegmentError(format!("conditions[{i}]: {}", e.0)))).collect::<Result<_, _>>()?;
        Ok(Segment { conditions, definition: definition.clone() })
    }

    /// Whether a condition changes with time alone (the scan re-evaluates those).
    pub fn elapses(&self) -> bool {
        self.conditions.iter().any(|c| matches!(c, Cond::InactiveFor(_) | Cond::Events { .. }))
    }

    /// The event windows the conditions read: (event, summed property, window).
    pub fn windows(&self) -> impl Iterator<Item = (&str, Option<&str>, Duration)> {
        self.conditions.iter().filter_map(|c| match c {
            Cond::Events { event, sum, within, .. } => Some((event.as_str(), sum.as_deref(), *within)),
            _ => None,
        })
    }

    /// Whether a condition is relative to the population (RFM): computed on a schedule.
    pub fn scheduled(&self) -> bool {
        self.conditions.iter().any(|c| matches!(c, Cond::RfmGroup(_) | Cond::RfmScores { .. }))
    }

    /// The RFM groups the conditions name.
    pub fn rfm_groups(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().filter_map(|c| match c {
            Cond::RfmGroup(g) => Some(g.as_str()),
            _ => None,
        })
    }

    /// Whether the customer is in the segment at `now` (`last_active`: their last tracked
    /// activity; `rfm_group`: their RFM group as last computed, if any). Only active customers
    /// are ever members.
    pub fn holds(&self, c: &Customer, f: &Facts) -> bool {
        let (last_active, now, rfm) = (f.last_active, f.now, f.rfm);
        c.exists
            && c.status == CustomerStatus::Active
            && self.conditions.iter().all(|cond| match cond {
                Cond::TraitEquals(k, v) => c.traits.get(k) == Some(v),
                Cond::TraitExists(k, e) => c.traits.get(k).is_some_and(|v| !v.is_null()) == *e,
                Cond::Tag(t) => c.tags.contains(t),
                Cond::Stage(s) => c.lifecycle_stage == Some(*s),
                Cond::Consent(ch, p) => c.consent_check(*ch, *p).allowed,
                Cond::InactiveFor(d) => match last_active.or(c.created_at) {
                    Some(t) => t.checked_add_signed(*d).is_some_and(|due| due <= now),
                    None => false,
                },
                Cond::RfmGroup(g) => rfm.is_some_and(|x| x.group == *g),
                Cond::RfmScores { r, f, m } => rfm.is_some_and(|x| r.is_none_or(|r| x.r >= r) && f.is_none_or(|f| x.f >= f) && m.is_none_or(|m| x.m >= m)),
                Cond::Events { event, sum, within, at_least, at_most } => {
                    let since = now.checked_sub_signed(*within).unwrap_or(DateTime::<Utc>::MIN_UTC);
                    let n = (f.window)(event, sum.as_deref(), since);
                    at_least.is_none_or(|a| n >= a) && at_most.is_none_or(|a| n <= a)
                }
            })
    }
}

fn one<'a>(m: &'a Map<String, Value>, allowed: &[&str]) -> Result<(), SegmentError> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => bad(format!("unexpected field {k:?}")),
        None => Ok(()),
    }
}

fn cond(v: &Value) -> Result<Cond, SegmentError> {
    let Some(m) = v.as_object() else { return bad("a condition is an object") };
    let text = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    if let Some(t) = text("trait") {
        return match (m.get("equals"), m.get("exists").map(Value::as_bool)) {
            (Some(v), None) => one(m, &["trait", "equals"]).map(|_| Cond::TraitEquals(t, v.clone())),
            (None, Some(Some(e))) => one(m, &["trait", "exists"]).map(|_| Cond::TraitExists(t, e)),
            _ => bad("a trait condition has equals (a value) or exists (true or false)"),
        };
    }
    if let Some(t) = text("tag") {
        return one(m, &["tag"]).map(|_| Cond::Tag(t));
    }
    if let Some(s) = m.get("stage") {
        one(m, &["stage"])?;
        return serde_json::from_value(s.clone()).map(Cond::Stage).map_err(|_| SegmentError(format!("stage {s}: not a lifecycle stage")));
    }
    if let Some(c) = m.get("consent") {
        one(m, &["consent"])?;
        let channel = c.get("channel").cloned().and_then(|v| serde_json::from_value(v).ok());
        let purpose = c.get("purpose").cloned().and_then(|v| serde_json::from_value(v).ok());
        return match (channel, purpose) {
            (Some(ch), Some(p)) => Ok(Cond::Consent(ch, p)),
            _ => bad("consent names a channel and a purpose"),
        };
    }
    if let Some(event) = text("event") {
        one(m, &["event", "within", "at_least", "at_most", "sum"])?;
        let within = text("within").ok_or_else(|| SegmentError("an event condition names its window: within".into()))?;
        let within = crate::campaign::parse_duration(&within).map_err(|e| SegmentError(format!("within: {}", e.0)))?;
        let num = |k: &str| match m.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| SegmentError(format!("{k} must be a number"))),
        };
        let (at_least, at_most) = (num("at_least")?, num("at_most")?);
        if at_least.is_none() && at_most.is_none() {
            return bad("an event condition has at_least, at_most or both");
        }
        let sum = match m.get("sum") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => return bad("sum names a property"),
        };
        return Ok(Cond::Events { event, sum, within, at_least, at_most });
    }
    if let Some(scores) = m.get("rfm") {
        one(m, &["rfm"])?;
        let Some(o) = scores.as_object() else { return bad("rfm is an object of minimum scores: {\"r\": 4}") };
        one(o, &["r", "f", "m"])?;
        let score = |k: &str| match o.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().filter(|n| (1..=5).contains(n)).map(|n| Some(n as u8)).ok_or_else(|| SegmentError(format!("rfm.{k} is a score from 1 to 5"))),
        };
        let (r, f, mm) = (score("r")?, score("f")?, score("m")?);
        if r.is_none() && f.is_none() && mm.is_none() {
            return bad("rfm names at least one of r, f, m");
        }
        return Ok(Cond::RfmScores { r, f, m: mm });
    }
    if let Some(g) = text("rfm_group") {
        return one(m, &["rfm_group"]).map(|_| Cond::RfmGroup(g));
    }
    if let Some(d) = text("inactive_for") {
        one(m, &["inactive_for"])?;
        let d = crate::campaign::parse_duration(&d).map_err(|e| SegmentError(format!("inactive_for: {}", e.0)))?;
        return Ok(Cond::InactiveFor(d));
    }
    bad("a condition is one of trait, tag, stage, consent, inactive_for, event, rfm_group, rfm")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_event_types_are_the_registrys() {
        let evs = [
            SegmentEvent::SegmentSaved { name: "a".into(), definition: json!({}) },
            SegmentEvent::SegmentDeleted { name: "a".into() },
            SegmentEvent::SegmentEntered { segment: "a".into(), cause: "scan".into() },
            SegmentEvent::SegmentExited { segment: "a".into(), cause: "scan".into() },
        ];
        let types: Vec<String> = evs.iter().map(|e| e.to_parts().0).collect();
        assert_eq!(types, EVENT_TYPES);
        for e in evs {
            let (t, d) = e.to_parts();
            assert_eq!(SegmentEvent::from_parts(&t, &d).unwrap(), e);
        }
    }

    #[test]
    fn definitions_are_checked_whole() {
        let ok = |v: Value| Segment::parse(&v).map(|s| s.conditions.len()).map_err(|e| e.0);
        assert_eq!(ok(json!({"conditions": [{"inactive_for": "60d"}, {"trait": "plan", "equals": "pro"}], "description": "x"})), Ok(2));
        assert!(ok(json!({"conditions": []})).is_err());
        assert!(ok(json!({"conditions": [{"inactive_for": "soon"}]})).unwrap_err().contains("conditions[0]"));
        assert!(ok(json!({"conditions": [{"trait": "plan"}]})).is_err());
        assert!(ok(json!({"conditions": [{"stage": "boss"}]})).is_err());
        assert!(ok(json!({"conditions": [{"consent": {"channel": "email"}}]})).is_err());
        assert!(ok(json!({"conditions": [{"tag": "vip", "extra": 1}]})).is_err());
        assert!(ok(json!({"conditions": [{"tag": "vip"}], "trigger": 1})).is_err());
        assert!(check_name("dormant-60").is_ok() && check_name("").is_err() && check_name("a/b").is_err());
    }

    fn none(_: &str, _: Option<&str>, _: DateTime<Utc>) -> f64 {
        0.0
    }

    fn facts<'a>(now: DateTime<Utc>, last_active: Option<DateTime<Utc>>, rfm: Option<&'a RfmFacts>) -> Facts<'a> {
        Facts { now, last_active, rfm, window: &none }
    }

    #[test]
    fn inactivity_holds_once_the_span_has_passed() {
        let s = Segment::parse(&json!({"conditions": [{"inactive_for": "60d"}, {"trait": "plan", "exists": true}]})).unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let mut c = Customer::new("c1");
        c.exists = true;
        c.created_at = Some(t0);
        c.traits.insert("plan".into(), json!("pro"));
        assert!(!s.holds(&c, &facts(t0 + Duration::days(59), Some(t0), None)));
        assert!(s.holds(&c, &facts(t0 + Duration::days(60), Some(t0), None)));
        assert!(!s.holds(&c, &facts(t0 + Duration::days(60), Some(t0 + Duration::days(30)), None)));
        assert!(s.holds(&c, &facts(t0 + Duration::days(61), None, None)), "no activity: counted from registration");
        c.traits.remove("plan");
        assert!(!s.holds(&c, &facts(t0 + Duration::days(60), Some(t0), None)));
        assert!(s.elapses() && !s.scheduled());
        let r = Segment::parse(&json!({"conditions": [{"rfm_group": "champions"}]})).unwrap();
        c.traits.insert("plan".into(), json!("pro"));
        let (loyal, champion) = (RfmFacts { group: "loyal".into(), r: 3, f: 4, m: 2 }, RfmFacts { group: "champions".into(), r: 5, f: 4, m: 5 });
        assert!(r.scheduled() && !r.holds(&c, &facts(t0, None, None)) && !r.holds(&c, &facts(t0, None, Some(&loyal))) && r.holds(&c, &facts(t0, None, Some(&champion))));
        let scores = Segment::parse(&json!({"conditions": [{"rfm": {"r": 4, "m": 3}}]})).unwrap();
        assert!(scores.scheduled() && scores.holds(&c, &facts(t0, None, Some(&champion))) && !scores.holds(&c, &facts(t0, None, Some(&loyal))));
        assert!(Segment::parse(&json!({"conditions": [{"rfm": {"r": 6}}]})).is_err() && Segment::parse(&json!({"conditions": [{"rfm": {}}]})).is_err());
        // Two orders worth at least 100 in 30 days: the window reads the customer's events.
        let w = Segment::parse(&json!({"conditions": [{"event": "Order Completed", "within": "30d", "at_least": 100, "sum": "total"}]})).unwrap();
        let orders = [(t0 - Duration::days(40), 500.0), (t0 - Duration::days(10), 60.0), (t0 - Duration::days(1), 50.0)];
        let window = |e: &str, sum: Option<&str>, since: DateTime<Utc>| -> f64 {
            assert_eq!((e, sum), ("Order Completed", Some("total")));
            orders.iter().filter(|(t, _)| *t > since).map(|(_, v)| v).sum()
        };
        let at = |now| Facts { now, last_active: None, rfm: None, window: &window };
        assert!(w.holds(&c, &at(t0)), "60 + 50 in the last 30 days");
        assert!(!w.holds(&c, &at(t0 + Duration::days(25))), "only 50 left in the window");
        assert!(w.elapses() && w.windows().count() == 1);
        assert!(Segment::parse(&json!({"conditions": [{"event": "X", "within": "30d"}]})).is_err(), "no bound");
        assert!(Segment::parse(&json!({"conditions": [{"event": "X", "at_least": 1}]})).is_err(), "no window");
    }
}
