//! Cohorts: customers grouped by the week or month they signed up, and how many of each cohort
//! had converted by the end of each period after it, as of an instant and as known at a
//! position.
//!
//! Semantics (documented in `docs/analytics.md`):
//! - **Signup** is a customer's `CustomerRegistered` (the earliest, with merged duplicates'
//!   counting for the survivor). Customers without one are in no cohort; erased customers in
//!   none.
//! - A cohort is the **week** (ISO, from Monday 00:00 UTC) or **month** (UTC) of the signup.
//! - A customer **converts** at their `occurrence`-th event named `event` (an event type or a
//!   tracked name; default the first `Order Completed`) at or after their signup; events before
//!   the signup do not count.
//! - `converted[k]` is the number converted by the end of the k-th period after the cohort's
//!   start (k = 0: within the cohort's own period), cumulative; the columns stop at the period
//!   holding `as_of`, and at `periods`.

use crate::index::{Index, Row, NONE};
use crate::Horizon;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Week,
    #[default]
    Month,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Cohort {
    /// `2026-11` (month) or `2026-W45` (ISO week).
    pub cohort: String,
    pub start: DateTime<Utc>,
    pub size: u64,
    /// Converted by the end of each period from the cohort's (cumulative).
    pub converted: Vec<u64>,
    pub rates: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Cohorts {
    pub period: Period,
    pub event: String,
    pub occurrence: u32,
    pub cohorts: Vec<Cohort>,
    /// The log position the answer reflects.
    pub position: u64,
    pub as_of: DateTime<Utc>,
}

/// The start of the period holding `t`.
fn period_start(p: Period, t: DateTime<Utc>) -> NaiveDate {
    let d = t.date_naive();
    match p {
        Period::Week => d - Duration::days(i64::from(d.weekday().num_days_from_monday())),
        Period::Month => d.with_day(1).expect("day 1"),
    }
}

/// Whole periods from `a` to `b` (both period starts).
fn periods_between(p: Period, a: NaiveDate, b: NaiveDate) -> i64 {
    match p {
        Period::Week => (b - a).num_days() / 7,
        Period::Month => i64::from(b.year() - a.year()) * 12 + i64::from(b.month()) - i64::from(a.month()),
    }
}

fn label(p: Period, start: NaiveDate) -> String {
    match p {
        Period::Week => {
            let w = start.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        Period::Month => start.format("%Y-%m").to_string(),
    }
}

/// Cohorts over a tenant's analytics index. `periods` caps the columns (1 to 120).
pub fn run_on(ix: &Index, horizon: Horizon, period: Period, event: &str, occurrence: u32, periods: u32) -> Cohorts {
    let vis = horizon.visible();
    let seen = |r: &Row| vis.sees(r);
    let people = ix.people(seen);
    let (registered, wanted) = (ix.name("CustomerRegistered"), ix.name(event));
    let mut signup: HashMap<u32, i64> = HashMap::new();
    let mut hits: HashMap<u32, Vec<i64>> = HashMap::new();
    let mut position = 0;
    for r in &ix.rows {
        if !seen(r) {
            continue;
        }
        position = position.max(r.position);
        let person = people[r.stream as usize];
        if ix.customer(person).is_none() {
            continue;
        }
        if r.ty == registered {
            let s = signup.entry(person).or_insert(r.time);
            *s = (*s).min(r.time);
        }
        if wanted != NONE && (r.ty == wanted || r.name == wanted) {
            hits.entry(person).or_default().push(r.time);
        }
    }
    let at = |us: i64| DateTime::from_timestamp_micros(us).unwrap_or_default();
    let last = period_start(period, horizon.as_of);
    let mut groups: BTreeMap<NaiveDate, (u64, Vec<u64>)> = BTreeMap::new();
    for (person, s) in &signup {
        let start = period_start(period, at(*s));
        let width = (periods_between(period, start, last) + 1).clamp(1, i64::from(periods)) as usize;
        let g = groups.entry(start).or_insert_with(|| (0, vec![0; width]));
        g.0 += 1;
        let mut times: Vec<i64> = hits.get(person).map(|v| v.iter().copied().filter(|t| t >= s).collect()).unwrap_or_default();
        times.sort_unstable();
        if let Some(t) = times.get(occurrence.max(1) as usize - 1) {
            let k = periods_between(period, start, period_start(period, at(*t))) as usize;
            for c in g.1.iter_mut().skip(k) {
                *c += 1;
            }
        }
    }
    let cohorts = groups
        .into_iter()
        .map(|(start, (size, converted))| Cohort {
            cohort: label(period, start),
            start: Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).expect("midnight")),
            size,
            rates: converted.iter().map(|c| *c as f64 / size as f64).collect(),
            converted,
        })
        .collect();
    Cohorts { period, event: event.to_owned(), occurrence: occurrence.max(1), cohorts, position, as_of: horizon.as_of }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_labels() {
        let d = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // 2026-12-07 is a Monday; 2026-12-13 the Sunday of its week.
        assert_eq!(period_start(Period::Week, d("2026-12-13T23:59:00Z")), NaiveDate::from_ymd_opt(2026, 12, 7).unwrap());
        assert_eq!(label(Period::Week, NaiveDate::from_ymd_opt(2026, 12, 7).unwrap()), "2026-W50");
        assert_eq!(label(Period::Month, period_start(Period::Month, d("2011-02-28T10:00:00Z"))), "2011-02");
        let (a, b) = (NaiveDate::from_ymd_opt(2010, 12, 1).unwrap(), NaiveDate::from_ymd_opt(2011, 3, 1).unwrap());
        assert_eq!(periods_between(Period::Month, a, b), 3);
    }
}
