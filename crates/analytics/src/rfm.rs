//! RFM: recency, frequency and monetary value per customer over their orders, with quintile
//! scores and the usual named groups, as of an instant and as known at a position.
//!
//! Semantics (documented in `docs/analytics.md`):
//! - An **order** is a tracked `Order Completed`; its value is its `total` property, else its
//!   `revenue` (the rule the order aggregate uses on ingest). An order id seen again for the
//!   same customer counts once. A tracked `Order Refunded` is a **refund**: its value is summed
//!   beside the monetary value (`refunds`), not subtracted from it.
//! - A **customer** is as in funnels (merged duplicates count for the survivor; anonymous
//!   histories for the customer they were linked to). Customers without an order are not
//!   listed; erased customers never are; anonymous histories never linked are not customers.
//! - **Recency** is whole days from the last order to `as_of` (rounded down); **frequency** the
//!   orders; **monetary** the sum of their values (no currency conversion).
//! - **Scores** 1–5 by quintile with ties kept together: a customer's score is 1 + ⌊5 · w / n⌋,
//!   where n is the number of customers listed and w the number whose value is strictly worse
//!   (for recency: more days; for frequency and monetary: less). Equal values get equal scores.
//! - **Groups** from the recency and frequency scores (the common RFM map): `champions` (R 5,
//!   F 4–5), `loyal` (R 3–4, F 4–5), `potential_loyalists` (R 4–5, F 2–3), `new_customers`
//!   (R 5, F 1), `promising` (R 4, F 1), `need_attention` (R 3, F 3), `about_to_sleep` (R 3,
//!   F 1–2), `cannot_lose` (R 1–2, F 5), `at_risk` (R 1–2, F 3–4), `hibernating` (R 1–2, F 1–2).

use crate::index::{Index, Row, LONG, NONE};
use crate::Horizon;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// The named groups, in the order a report lists them.
pub const GROUPS: [&str; 10] = [
    "champions",
    "loyal",
    "potential_loyalists",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "cannot_lose",
    "at_risk",
    "hibernating",
];

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Rfm {
    pub id: String,
    pub recency_days: i64,
    pub frequency: u64,
    pub monetary: f64,
    /// Refunds' value (beside `monetary`, not subtracted).
    pub refunds: f64,
    pub r: u8,
    pub f: u8,
    pub m: u8,
    pub group: String,
    /// The last order's time.
    pub last_order: DateTime<Utc>,
}

/// Every listed customer, in id order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RfmAll {
    pub customers: Vec<Rfm>,
    pub position: u64,
    pub as_of: DateTime<Utc>,
}

/// A customer's group from their recency and frequency scores.
pub fn group(r: u8, f: u8) -> &'static str {
    match (r, f) {
        (5, 4..) => "champions",
        (3..=4, 4..) => "loyal",
        (4..=5, 2..=3) => "potential_loyalists",
        (5, _) => "new_customers",
        (4, _) => "promising",
        (3, 3) => "need_attention",
        (3, _) => "about_to_sleep",
        (_, 5..) => "cannot_lose",
        (_, 3 | 4) => "at_risk",
        _ => "hibernating",
    }
}

/// Quintile scores with ties together: 1 + ⌊5 · (values strictly worse) / n⌋, where `worse`
/// orders values from worst to best.
fn scores<T: Copy + PartialOrd>(values: &[T], better: impl Fn(T, T) -> bool) -> Vec<u8> {
    let mut sorted: Vec<T> = values.to_vec();
    // Worst first.
    sorted.sort_by(|a, b| if better(*a, *b) { std::cmp::Ordering::Greater } else if better(*b, *a) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Equal });
    let n = values.len();
    values.iter().map(|v| (1 + 5 * sorted.partition_point(|w| better(*v, *w)) / n) as u8).collect()
}

#[derive(Default)]
struct Acc {
    last: i64,
    orders: u64,
    monetary: f64,
    refunds: f64,
}

/// RFM over a tenant's analytics index.
pub fn run_on(ix: &Index, horizon: Horizon) -> RfmAll {
    let as_of = horizon.as_of.timestamp_micros();
    let vis = horizon.visible();
    let seen = |r: &Row| vis.sees(r);
    let (completed, refunded, order_id) = (ix.name("Order Completed"), ix.name("Order Refunded"), ix.key("order_id"));
    let people = ix.people(seen);
    let mut accs: BTreeMap<u32, Acc> = BTreeMap::new();
    let mut orders: HashSet<(u32, u32)> = HashSet::new();
    let mut position = 0;
    for r in &ix.rows {
        if !seen(r) {
            continue;
        }
        position = position.max(r.position);
        if r.name == NONE || (r.name != completed && r.name != refunded) {
            continue;
        }
        let person = people[r.stream as usize];
        if ix.customer(person).is_none() {
            continue;
        }
        let acc = accs.entry(person).or_default();
        if r.name == refunded {
            acc.refunds += ix.order_value(r);
            continue;
        }
        if let Some(id) = ix.prop(r, order_id).filter(|v| *v != LONG) {
            if !orders.insert((person, id)) {
                continue;
            }
        }
        acc.orders += 1;
        acc.monetary += ix.order_value(r);
        acc.last = if acc.orders == 1 { r.time } else { acc.last.max(r.time) };
    }
    let listed: Vec<(String, Acc)> = accs
        .into_iter()
        .filter(|(_, a)| a.orders > 0)
        .map(|(p, a)| (ix.customer(p).unwrap_or_default().to_owned(), a))
        .collect();
    let recency: Vec<i64> = listed.iter().map(|(_, a)| (as_of - a.last).div_euclid(86_400_000_000)).collect();
    let r = scores(&recency, |a, b| a < b);
    let f = scores(&listed.iter().map(|(_, a)| a.orders).collect::<Vec<_>>(), |a, b| a > b);
    let m = scores(&listed.iter().map(|(_, a)| round6(a.monetary)).collect::<Vec<_>>(), |a, b| a > b);
    let mut customers: Vec<Rfm> = listed
        .into_iter()
        .enumerate()
        .map(|(i, (id, a))| Rfm {
            id,
            recency_days: recency[i],
            frequency: a.orders,
            monetary: round6(a.monetary),
            refunds: round6(a.refunds),
            r: r[i],
            f: f[i],
            m: m[i],
            group: group(r[i], f[i]).to_owned(),
            last_order: DateTime::from_timestamp_micros(a.last).unwrap_or_default(),
        })
        .collect();
    customers.sort_by(|a, b| a.id.cmp(&b.id));
    RfmAll { customers, position, as_of: horizon.as_of }
}

/// One page of an RFM answer, as `GET /v1/analytics/rfm` gives it (paged like the contact
/// list: by id, `after` the previous page's `next`).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RfmPage {
    pub customers: Vec<Rfm>,
    pub next: Option<String>,
    pub has_more: bool,
    /// Customers per group (of all listed, not only this page's).
    pub groups: BTreeMap<String, u64>,
    /// The log position the answer reflects.
    pub position: u64,
    pub as_of: DateTime<Utc>,
}

/// A page of `all`: customers of `group` (when given) after the id `after`, at most `limit`.
pub fn page(all: RfmAll, group: Option<&str>, after: Option<&str>, limit: usize) -> Result<RfmPage, String> {
    if let Some(g) = group.filter(|g| !GROUPS.contains(g)) {
        return Err(format!("no RFM group {g:?}; the groups are {}", GROUPS.join(", ")));
    }
    let mut groups: BTreeMap<String, u64> = GROUPS.iter().map(|g| ((*g).to_owned(), 0)).collect();
    for c in &all.customers {
        *groups.entry(c.group.clone()).or_default() += 1;
    }
    let mut rest = all.customers.into_iter().filter(|c| group.is_none_or(|g| c.group == g) && after.is_none_or(|a| c.id.as_str() > a));
    let customers: Vec<Rfm> = rest.by_ref().take(limit).collect();
    let has_more = rest.next().is_some();
    let next = if has_more { customers.last().map(|c| c.id.clone()) } else { None };
    Ok(RfmPage { customers, next, has_more, groups, position: all.position, as_of: all.as_of })
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_core::envelope::EventEnvelope;
    use serde_json::{json, Value};

    fn ev(stream: &str, position: u64, day: i64, ty: &str, data: Value) -> EventEnvelope {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        crate::test_event(stream, position, t0 + chrono::Duration::days(day), ty, data)
    }

    fn order(stream: &str, position: u64, day: i64, id: &str, total: f64) -> EventEnvelope {
        ev(stream, position, day, "ActivityTracked", json!({"event": "Order Completed", "properties": {"order_id": id, "total": total}}))
    }

    /// Computed by hand: as of day 100, a (orders on days 10 and 90, 30 + 20, one sent twice,
    /// a refund of 5), b (day 50, revenue 100, plus the orders of b2 merged into b: day 95, 10),
    /// c (day 20, 5), d (erased: never listed), e (only a refund: not listed).
    #[test]
    fn a_hand_computed_rfm() {
        let evs = vec![
            order("customer-a", 1, 10, "o1", 30.0),
            order("customer-a", 2, 90, "o2", 20.0),
            order("customer-a", 3, 90, "o2", 20.0),
            ev("customer-a", 4, 91, "ActivityTracked", json!({"event": "Order Refunded", "properties": {"total": 5}})),
            ev("customer-b", 5, 50, "ActivityTracked", json!({"event": "Order Completed", "properties": {"order_id": "o3", "revenue": 100}})),
            order("customer-b2", 6, 95, "o4", 10.0),
            ev("customer-b2", 7, 96, "CustomerMergedInto", json!({"survivor": "b"})),
            order("customer-c", 8, 20, "o5", 5.0),
            order("customer-d", 9, 20, "o6", 500.0),
            ev("customer-d", 10, 97, "CustomerErased", json!({"reason": "request", "anonymous_ids": []})),
            ev("customer-e", 11, 30, "ActivityTracked", json!({"event": "Order Refunded", "properties": {"total": 1}})),
            // After as_of: not counted.
            order("customer-c", 12, 150, "o7", 1000.0),
        ];
        let as_of = DateTime::parse_from_rfc3339("2026-04-11T00:00:00Z").unwrap().with_timezone(&Utc); // day 100
        let all = run_on(&Index::of(&evs), Horizon { as_of, known_at: u64::MAX, known_by: None });
        let got: Vec<(&str, i64, u64, f64, f64, u8, u8, u8)> =
            all.customers.iter().map(|c| (c.id.as_str(), c.recency_days, c.frequency, c.monetary, c.refunds, c.r, c.f, c.m)).collect();
        // n = 3. Recency a 10, b 5, c 80: b best (2 worse → 1 + 10/3 = 4), a 2, c 1.
        // Frequency a 2, b 2, c 1: a and b 1 + 5/3 = 2, c 1. Monetary a 50, b 110, c 5: b 4, a 2, c 1.
        assert_eq!(got, [("a", 10, 2, 50.0, 5.0, 2, 2, 2), ("b", 5, 2, 110.0, 0.0, 4, 2, 4), ("c", 80, 1, 5.0, 0.0, 1, 1, 1)]);
        assert_eq!(all.customers.iter().map(|c| c.group.as_str()).collect::<Vec<_>>(), ["hibernating", "potential_loyalists", "hibernating"]);
        assert_eq!(all.position, 11);
        // Known at position 6 (before the merge, before c ordered): b2 is a customer of its own.
        let then = run_on(&Index::of(&evs), Horizon { as_of, known_at: 6, known_by: None });
        assert_eq!(then.customers.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a", "b", "b2"]);
    }

    #[test]
    fn quintiles_keep_ties_together() {
        // Ten values 1..=10, higher is better: two per quintile.
        let s = scores(&(1..=10).collect::<Vec<u64>>(), |a, b| a > b);
        assert_eq!(s, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        // Ties: seven customers with one order, three with more.
        let s = scores(&[1u64, 1, 1, 1, 1, 1, 1, 2, 2, 5], |a, b| a > b);
        assert_eq!(s, [1, 1, 1, 1, 1, 1, 1, 4, 4, 5]);
        // Recency: fewer days is better.
        let s = scores(&[0i64, 10, 400, 10], |a, b| a < b);
        assert_eq!(s, [4, 2, 1, 2]);
    }

    #[test]
    fn every_score_pair_has_one_group() {
        let mut seen = HashSet::new();
        for r in 1..=5 {
            for f in 1..=5 {
                seen.insert(group(r, f));
            }
        }
        assert_eq!(seen.len(), GROUPS.len());
        assert_eq!((group(5, 5), group(1, 1), group(2, 5), group(3, 3), group(5, 1)), ("champions", "hibernating", "cannot_lose", "need_attention", "new_customers"));
    }
}
