//! Funnels: how many people went through ordered steps within a conversion window.
//!
//! Semantics (documented in `docs/analytics.md`):
//! - A **person** is a customer: their stream's events, their anonymous histories' once the link
//!   (`IdentityLinked`) is part of the answer, and the events of duplicates merged into them
//!   (`CustomerMergedInto`). An anonymous history never linked is a person of its own.
//! - A person **enters** at their first event matching step 1; the window runs from there.
//! - `ordered` (the default): each next step is the first matching event after the previous
//!   step, other events may come between. `strict`: the very next event of the person must be
//!   the next step. `any`: a step counts when it happens within the window, in any order; the
//!   window starts at the first event matching any step.
//! - An event matching an **exclusion** after the entry ends the person's progress there.
//! - **Counts are people**: a person counts once per step reached. The time between steps is
//!   the median and p90 (nearest rank) over the people who reached the step; for `any`, from the
//!   entry.
//! - A **breakdown by trait** uses the trait's value as it was when the person entered (their
//!   profile folded up to that instant, as known at the answer's position); by property, the
//!   entry event's property.

use crate::index::{self, Index, Row, NONE};
use crate::{nearest_rank, Horizon};
use chronicle_core::envelope::EventEnvelope;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A funnel, as `POST /v1/analytics/funnels` and `chronicle analytics funnel` take it.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunnelSpec {
    /// 1 to 20 steps.
    pub steps: Vec<Step>,
    /// The conversion window from the entry: `30m`, `1h`, `7d`, `2w`.
    pub window: String,
    #[serde(default)]
    pub order: Order,
    /// Events that end a person's progress when they happen after the entry.
    #[serde(default)]
    pub exclude: Vec<Step>,
    #[serde(default)]
    pub breakdown: Option<Breakdown>,
    /// Events that happened by this instant (default: now).
    #[serde(default)]
    pub as_of: Option<DateTime<Utc>>,
    /// As known at this log position, or at this instant of ingest time (default: now).
    #[serde(default)]
    pub known_at: Option<KnownAt>,
}

/// A step: an event type (`CustomerRegistered`) or a tracked event's name (`Order Completed`),
/// optionally with property values it must have.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub event: String,
    #[serde(default, rename = "where", skip_serializing_if = "Map::is_empty")]
    pub filter: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Strict,
    #[default]
    Ordered,
    Any,
}

/// Split the answer by a trait (as it was at the entry) or by a property of the entry event.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Breakdown {
    #[serde(default, rename = "trait")]
    pub trait_name: Option<String>,
    #[serde(default)]
    pub property: Option<String>,
}

/// A log position, or an instant of ingest time.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum KnownAt {
    Position(u64),
    Instant(DateTime<Utc>),
}

impl std::str::FromStr for KnownAt {
    type Err = String;

    /// A log position (`123456`) or an RFC 3339 instant, as a query parameter gives it.
    fn from_str(s: &str) -> Result<KnownAt, String> {
        match s.parse::<u64>() {
            Ok(p) => Ok(KnownAt::Position(p)),
            Err(_) => DateTime::parse_from_rfc3339(s)
                .map(|t| KnownAt::Instant(t.with_timezone(&Utc)))
                .map_err(|_| format!("known_at {s:?}: a log position or an RFC 3339 instant")),
        }
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FunnelAnswer {
    pub steps: Vec<StepResult>,
    /// Breakdown value → the steps of the people with it (`(none)`: no value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<BTreeMap<String, Vec<StepResult>>>,
    /// The log position the answer reflects.
    pub position: u64,
    pub as_of: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StepResult {
    pub event: String,
    /// People who reached this step.
    pub count: u64,
    /// Of those who entered (step 1), the share who reached this step.
    pub conversion: f64,
    /// From the previous step (for `any`, from the entry); none for the first step.
    pub median_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FunnelError(pub String);

impl FunnelSpec {
    /// The spec checked whole: its window as a duration.
    pub fn check(&self) -> Result<Duration, FunnelError> {
        if self.steps.is_empty() || self.steps.len() > 20 {
            return Err(FunnelError("a funnel has 1 to 20 steps".into()));
        }
        if self.exclude.len() > 20 {
            return Err(FunnelError("a funnel has at most 20 exclusions".into()));
        }
        if let Some(s) = self.steps.iter().chain(&self.exclude).find(|s| s.event.trim().is_empty()) {
            return Err(FunnelError(format!("a step names its event: {s:?}")));
        }
        let long = |v: &Value| index::value_key(v).is_none();
        if let Some((k, _)) = self.steps.iter().chain(&self.exclude).flat_map(|s| &s.filter).find(|(_, v)| long(v)) {
            return Err(FunnelError(format!("where.{k}: a value to match is at most {} characters of JSON", index::MAX_VALUE_LEN)));
        }
        if let Some(b) = &self.breakdown {
            if b.trait_name.is_some() == b.property.is_some() {
                return Err(FunnelError("a breakdown is by one trait or one property: {\"trait\": NAME} or {\"property\": NAME}".into()));
            }
        }
        chronicle_automation::campaign::parse_duration(&self.window).map_err(|e| FunnelError(format!("window: {e}")))
    }
}

/// A step compiled against an index: the name's id and the filter's (key, value) ids; `None`
/// when the index has never seen the name or a filter's key or value, so nothing can match.
struct Matcher {
    name: u32,
    filter: Vec<(u32, u32)>,
}

fn compile(step: &Step, ix: &Index) -> Option<Matcher> {
    let name = ix.names.get(&step.event)?;
    let filter = step
        .filter
        .iter()
        .map(|(k, v)| Some((ix.keys.get(k)?, ix.values.get(&index::value_key(v)?)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Matcher { name, filter })
}

/// One person's event as a funnel sees it: which steps (bits 0–19) and exclusions (bits 32–51)
/// it matches.
#[derive(Clone, Copy)]
struct Hit {
    person: u32,
    time: i64,
    position: u64,
    mask: u64,
    row: u32,
}

const EXCLUDED: u64 = 0xFFFF_FFFF << 32;

/// One person's way through the funnel: the times (µs) each step was reached, the entry row.
struct Progress {
    times: Vec<i64>,
    entry: u32,
}

/// Run a funnel over a tenant's events (any order; those outside `horizon` are left out).
pub fn run(spec: &FunnelSpec, events: &[EventEnvelope], horizon: Horizon) -> Result<FunnelAnswer, FunnelError> {
    run_on(spec, &Index::of(events), horizon)
}

/// Run a funnel over a tenant's analytics index.
pub fn run_on(spec: &FunnelSpec, ix: &Index, horizon: Horizon) -> Result<FunnelAnswer, FunnelError> {
    let window = spec.check()?.num_microseconds().unwrap_or(i64::MAX);
    let vis = horizon.visible();
    let seen = |r: &Row| vis.sees(r);
    // Which names can match which steps (bit k) and exclusions (bit 32 + j).
    let mut by_name = vec![0u64; ix.names.len()];
    let steps: Vec<Option<Matcher>> = spec.steps.iter().map(|s| compile(s, ix)).collect();
    let excluded: Vec<Option<Matcher>> = spec.exclude.iter().map(|s| compile(s, ix)).collect();
    for (bit, m) in steps.iter().enumerate().chain(excluded.iter().enumerate().map(|(j, m)| (32 + j, m))) {
        if let Some(m) = m {
            by_name[m.name as usize] |= 1 << bit;
        }
    }
    let matcher = |bit: usize| if bit < 32 { steps[bit].as_ref() } else { excluded[bit - 32].as_ref() };
    let strict = spec.order == Order::Strict;
    let people = ix.people(seen);
    let mut position = 0;
    let mut hits: Vec<Hit> = Vec::new();
    for (i, r) in ix.rows.iter().enumerate() {
        if !seen(r) {
            continue;
        }
        position = position.max(r.position);
        let person = people[r.stream as usize];
        let mut mask = by_name[r.ty as usize] | if r.name == NONE { 0 } else { by_name[r.name as usize] };
        if person == NONE || (mask == 0 && !strict) {
            continue;
        }
        let mut bits = mask;
        while bits != 0 {
            let bit = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let m = matcher(bit).expect("a bit is set for a compiled step");
            if !m.filter.iter().all(|(k, v)| ix.prop(r, *k) == Some(*v)) {
                mask &= !(1 << bit);
            }
        }
        if mask != 0 || strict {
            hits.push(Hit { person, time: r.time, position: r.position, mask, row: i as u32 });
        }
    }
    hits.sort_unstable_by_key(|h| (h.person, h.time, h.position));
    let mut results: Vec<(u32, Progress)> = Vec::new();
    for person in hits.chunk_by(|a, b| a.person == b.person) {
        if let Some(p) = progress(spec, person, window) {
            results.push((person[0].person, p));
        }
    }
    let total = summarize(spec, results.iter().map(|(_, p)| p));
    let breakdown = spec.breakdown.as_ref().map(|b| {
        let mut groups: BTreeMap<String, Vec<&Progress>> = BTreeMap::new();
        for (person, p) in &results {
            let value = match (&b.trait_name, &b.property) {
                (Some(t), _) => ix.trait_at(*person, t, p.times[0], seen).as_ref().map(value_text),
                (_, Some(prop)) => ix.keys.get(prop).and_then(|k| ix.prop(&ix.rows[p.entry as usize], k)).map(|v| match v {
                    index::LONG => "(long value)".to_owned(),
                    v => value_text(&serde_json::from_str(ix.values.text(v)).unwrap_or(Value::Null)),
                }),
                _ => None,
            };
            groups.entry(value.unwrap_or_else(|| "(none)".into())).or_default().push(p);
        }
        groups.into_iter().map(|(k, ps)| (k, summarize(spec, ps.into_iter()))).collect()
    });
    Ok(FunnelAnswer { steps: total, breakdown, position, as_of: horizon.as_of })
}

/// How far one person got (`None`: never entered), over their events in time order.
fn progress(spec: &FunnelSpec, evs: &[Hit], window: i64) -> Option<Progress> {
    let n = spec.steps.len();
    let all_steps = (1u64 << n) - 1;
    if spec.order == Order::Any {
        let first = evs.iter().position(|e| e.mask & all_steps != 0)?;
        let end = evs[first].time.saturating_add(window);
        let mut times = Vec::new();
        for k in 0..n {
            let hit = evs[first..]
                .iter()
                .take_while(|e| e.time <= end)
                .take_while(|e| e.mask & EXCLUDED == 0)
                .find(|e| e.mask & (1 << k) != 0);
            match hit {
                Some(e) => times.push(e.time),
                None => break,
            }
        }
        // The entry is the first step's event (a breakdown by property reads it).
        let entry = evs[first..].iter().find(|e| e.mask & 1 != 0).unwrap_or(&evs[first]).row;
        return (!times.is_empty()).then_some(Progress { times, entry });
    }
    let first = evs.iter().position(|e| e.mask & 1 != 0)?;
    let end = evs[first].time.saturating_add(window);
    let mut times = vec![evs[first].time];
    for e in &evs[first + 1..] {
        if times.len() == n || e.time > end || e.mask & EXCLUDED != 0 {
            break;
        }
        if e.mask & (1 << times.len()) != 0 {
            times.push(e.time);
        } else if spec.order == Order::Strict {
            break;
        }
    }
    Some(Progress { times, entry: evs[first].row })
}

fn summarize<'a>(spec: &FunnelSpec, people: impl Iterator<Item = &'a Progress>) -> Vec<StepResult> {
    let n = spec.steps.len();
    let mut counts = vec![0u64; n];
    let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); n];
    for p in people {
        for k in 0..p.times.len() {
            counts[k] += 1;
            if k > 0 {
                let from = if spec.order == Order::Any { p.times[0] } else { p.times[k - 1] };
                gaps[k].push((p.times[k] - from).div_euclid(1000) as f64 / 1000.0);
            }
        }
    }
    let entered = counts[0];
    spec.steps
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let mut g = std::mem::take(&mut gaps[k]);
            g.sort_by(f64::total_cmp);
            StepResult {
                event: s.event.clone(),
                count: counts[k],
                conversion: if entered == 0 { 0.0 } else { counts[k] as f64 / entered as f64 },
                median_seconds: nearest_rank(&g, 0.5),
                p90_seconds: nearest_rank(&g, 0.9),
            }
        })
        .collect()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small history, by hand: (person, seconds after t0, position, type, data).
    fn history(rows: &[(&str, i64, u64, &str, Value)]) -> Vec<EventEnvelope> {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        rows.iter()
            .map(|(person, secs, position, ty, data)| {
                let mut e = crate::test_event(&chronicle_core::customer::stream_of(person), *position, t0 + Duration::seconds(*secs), ty, data.clone());
                e.ingest_time = t0 + Duration::seconds(*position as i64);
                e
            })
            .collect()
    }

    fn track(name: &str) -> Value {
        json!({"kind": "track", "event": name, "properties": {"source": "ads"}})
    }

    fn spec(order: Order) -> FunnelSpec {
        serde_json::from_value(json!({"steps": [{"event": "A"}, {"event": "B"}, {"event": "C"}], "window": "1d", "exclude": [{"event": "X"}]}))
            .map(|mut s: FunnelSpec| {
                s.order = order;
                s
            })
            .unwrap()
    }

    fn all() -> Horizon {
        Horizon { as_of: DateTime::<Utc>::MAX_UTC, known_at: u64::MAX, known_by: None }
    }

    fn counts(a: &FunnelAnswer) -> Vec<u64> {
        a.steps.iter().map(|s| s.count).collect()
    }

    #[test]
    fn a_hand_computed_funnel() {
        let reg = |plan: &str| json!({"email": null, "phone": null, "traits": {"plan": plan}, "consents": []});
        let evs = history(&[
            ("p1", 0, 1, "CustomerRegistered", reg("free")),
            ("p1", 10, 2, "ActivityTracked", track("A")),
            ("p1", 3610, 3, "ActivityTracked", track("B")),
            ("p1", 7210, 4, "ActivityTracked", track("C")),
            ("p1", 9000, 5, "CustomerProfileUpdated", json!({"changes": {"traits.plan": {"old": "free", "new": "pro"}}})),
            // Past the one-day window.
            ("p2", 0, 6, "ActivityTracked", track("A")),
            ("p2", 3 * 86_400, 7, "ActivityTracked", track("B")),
            // B before A: entered, no step after.
            ("p3", 0, 8, "ActivityTracked", track("B")),
            ("p3", 60, 9, "ActivityTracked", track("A")),
            // Excluded between A and B.
            ("p4", 0, 10, "ActivityTracked", track("A")),
            ("p4", 30, 11, "ActivityTracked", track("X")),
            ("p4", 60, 12, "ActivityTracked", track("B")),
            // Another event between A and B: ordered yes, strict no.
            ("p5", 0, 13, "ActivityTracked", track("A")),
            ("p5", 100, 14, "ActivityTracked", track("Y")),
            ("p5", 300, 15, "ActivityTracked", track("B")),
        ]);
        let a = run(&spec(Order::Ordered), &evs, all()).unwrap();
        assert_eq!(counts(&a), [5, 2, 1]);
        assert_eq!(a.steps[1].conversion, 0.4);
        // p1 took 3,600 s from A to B, p5 300 s: nearest rank median is the lower one.
        assert_eq!((a.steps[1].median_seconds, a.steps[1].p90_seconds), (Some(300.0), Some(3600.0)));
        assert_eq!(a.steps[0].median_seconds, None);
        assert_eq!(a.position, 15);
        assert_eq!(counts(&run(&spec(Order::Strict), &evs, all()).unwrap()), [5, 1, 1]);
        // Any order: p3's B then A counts both.
        assert_eq!(counts(&run(&spec(Order::Any), &evs, all()).unwrap()), [5, 3, 1]);

        // The breakdown uses the plan p1 had when entering (free), not today's (pro).
        let mut by_plan = spec(Order::Ordered);
        by_plan.breakdown = Some(Breakdown { trait_name: Some("plan".into()), property: None });
        let b = run(&by_plan, &evs, all()).unwrap().breakdown.unwrap();
        assert_eq!(counts(&FunnelAnswer { steps: b["free"].clone(), breakdown: None, position: 0, as_of: Utc::now() }), [1, 1, 1]);
        assert_eq!(b["(none)"][0].count, 4);
        assert!(!b.contains_key("pro"));
    }

    #[test]
    fn a_backfill_changes_answers_known_after_it_only() {
        let mut evs = history(&[("p1", 0, 1, "ActivityTracked", track("A")), ("p2", 0, 2, "ActivityTracked", track("A"))]);
        // Learnt later (position 3) about something that happened long before: p2's B.
        evs.extend(history(&[("p2", 60, 3, "ActivityTracked", track("B"))]));
        let s = spec(Order::Ordered);
        let before = run(&s, &evs, Horizon { as_of: DateTime::<Utc>::MAX_UTC, known_at: 2, known_by: None }).unwrap();
        let after = run(&s, &evs, all()).unwrap();
        assert_eq!((counts(&before), before.position), (vec![2, 0, 0], 2));
        assert_eq!((counts(&after), after.position), (vec![2, 1, 0], 3));
        // As of before B happened, even known now: not yet.
        let t = evs[0].event_time + Duration::seconds(30);
        assert_eq!(counts(&run(&s, &evs, Horizon { as_of: t, known_at: u64::MAX, known_by: None }).unwrap()), [2, 0, 0]);
    }

    #[test]
    fn bad_specs_are_refused_whole() {
        let bad = |v: Value| serde_json::from_value::<FunnelSpec>(v).map_err(|e| e.to_string()).and_then(|s| s.check().map(|_| ()).map_err(|e| e.0));
        assert!(bad(json!({"steps": [], "window": "1d"})).is_err());
        assert!(bad(json!({"steps": [{"event": "A"}], "window": "soon"})).is_err());
        assert!(bad(json!({"steps": [{"event": "A"}], "window": "1d", "order": "sideways"})).is_err());
        assert!(bad(json!({"steps": [{"event": "A"}], "window": "1d", "breakdown": {}})).is_err());
        assert!(bad(json!({"steps": [{"event": "A"}], "window": "1d", "extra": 1})).is_err());
        assert!(bad(json!({"steps": [{"event": "A"}], "window": "1d", "known_at": 12})).is_ok());
        assert!(bad(json!({"steps": [{"event": "A"}], "window": "1d", "known_at": "2026-01-01T00:00:00Z"})).is_ok());
    }
}
