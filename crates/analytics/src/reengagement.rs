//! Re-engagement candidates: customers who were engaged (at least `min_events` tracked events:
//! tracks, pages, screens) and then went silent (no tracked event in the last `silent_days`),
//! as of an instant and as known at a position. The most engaged first.

use crate::index::{Index, Row};
use crate::Horizon;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Candidate {
    pub id: String,
    /// Tracked events by `as_of`.
    pub events: u64,
    pub last_active: DateTime<Utc>,
    /// Whole days since the last tracked event.
    pub silent_days: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Reengagement {
    pub min_events: u64,
    pub silent_days: u32,
    /// Every candidate (`candidates` holds the first `limit`).
    pub total: u64,
    pub candidates: Vec<Candidate>,
    pub position: u64,
    pub as_of: DateTime<Utc>,
}

const DAY_US: i64 = 86_400_000_000;

/// The candidates over a tenant's analytics index.
pub fn run_on(ix: &Index, horizon: Horizon, min_events: u64, silent_days: u32, limit: usize) -> Reengagement {
    let as_of = horizon.as_of.timestamp_micros();
    let vis = horizon.visible();
    let seen = |r: &Row| vis.sees(r);
    let people = ix.people(seen);
    let tracked = ix.name("ActivityTracked");
    let mut per: HashMap<u32, (u64, i64)> = HashMap::new();
    let mut position = 0;
    for r in &ix.rows {
        if !seen(r) {
            continue;
        }
        position = position.max(r.position);
        if r.ty != tracked {
            continue;
        }
        let p = people[r.stream as usize];
        if ix.customer(p).is_none() {
            continue;
        }
        let e = per.entry(p).or_insert((0, i64::MIN));
        e.0 += 1;
        e.1 = e.1.max(r.time);
    }
    let mut all: Vec<Candidate> = per
        .into_iter()
        .filter(|(_, (n, last))| *n >= min_events && as_of - last >= i64::from(silent_days) * DAY_US)
        .filter_map(|(p, (n, last))| {
            Some(Candidate {
                id: ix.customer(p)?.to_owned(),
                events: n,
                last_active: DateTime::from_timestamp_micros(last)?,
                silent_days: (as_of - last).div_euclid(DAY_US),
            })
        })
        .collect();
    all.sort_by(|a, b| b.events.cmp(&a.events).then_with(|| a.id.cmp(&b.id)));
    let total = all.len() as u64;
    all.truncate(limit);
    Reengagement { min_events, silent_days, total, candidates: all, position, as_of: horizon.as_of }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_core::envelope::EventEnvelope;
    use serde_json::json;

    fn ev(stream: &str, position: u64, day: i64) -> EventEnvelope {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        crate::test_event(stream, position, t0 + chrono::Duration::days(day), "ActivityTracked", json!({"kind": "page", "event": null, "properties": {}}))
    }

    /// By hand, as of day 100, 3 events and 30 silent days needed: a (4 events, last day 50:
    /// silent 50 days) is one; b (4 events, last day 80: 20 days) is still active; c (2 events,
    /// last day 10) was never engaged enough.
    #[test]
    fn engaged_then_silent() {
        let mut evs = Vec::new();
        let mut p = 0;
        for (who, days) in [("a", vec![10, 20, 30, 50]), ("b", vec![10, 20, 30, 80]), ("c", vec![5, 10])] {
            for d in days {
                p += 1;
                evs.push(ev(&format!("customer-{who}"), p, d));
            }
        }
        let as_of = DateTime::parse_from_rfc3339("2026-04-11T00:00:00Z").unwrap().with_timezone(&Utc);
        let r = run_on(&Index::of(&evs), Horizon { as_of, known_at: u64::MAX, known_by: None }, 3, 30, 10);
        assert_eq!(r.candidates.iter().map(|c| (c.id.as_str(), c.events, c.silent_days)).collect::<Vec<_>>(), [("a", 4, 50)]);
        // As of day 60: a had gone silent only 10 days; b had 3 events (days 10-30) and 30
        // silent days then.
        let early = DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z").unwrap().with_timezone(&Utc);
        let r = run_on(&Index::of(&evs), Horizon { as_of: early, known_at: u64::MAX, known_by: None }, 3, 30, 10);
        assert_eq!(r.candidates.iter().map(|c| (c.id.as_str(), c.events, c.silent_days)).collect::<Vec<_>>(), [("b", 3, 30)]);
    }
}
