//! Segment membership at any past instant, from the entries and exits recorded on customers'
//! streams (`SegmentEntered`, `SegmentExited`): a customer is a member at `as_of` when the last
//! of their records for the segment by then is an entry.

use crate::index::{Index, Row, LONG};
use crate::Horizon;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// The members of `segment` as of the horizon, by customer id, with when they entered.
pub fn members_at(ix: &Index, horizon: Horizon, segment: &str) -> Vec<(String, DateTime<Utc>)> {
    members_with_position(ix, horizon, segment).0
}

/// [`members_at`], and the log position the answer reflects.
pub fn members_with_position(ix: &Index, horizon: Horizon, segment: &str) -> (Vec<(String, DateTime<Utc>)>, u64) {
    let vis = horizon.visible();
    let seen = |r: &Row| vis.sees(r);
    let position = ix.rows.iter().filter(|r| seen(r)).map(|r| r.position).max().unwrap_or(0);
    let (entered, exited, key) = (ix.name("SegmentEntered"), ix.name("SegmentExited"), ix.key("segment"));
    let Some(wanted) = serde_json::to_string(segment).ok().and_then(|t| ix.values.get(&t)) else { return (Vec::new(), position) };
    // Per customer stream: the latest record by event time (then log order).
    let mut last: BTreeMap<u32, (i64, u64, bool)> = BTreeMap::new();
    for r in ix.rows.iter().filter(|r| (r.ty == entered || r.ty == exited) && seen(r)) {
        if ix.prop(r, key).filter(|v| *v != LONG) != Some(wanted) {
            continue;
        }
        let e = last.entry(r.stream).or_insert((i64::MIN, 0, false));
        if (r.time, r.position) > (e.0, e.1) {
            *e = (r.time, r.position, r.ty == entered);
        }
    }
    let members = last
        .into_iter()
        .filter(|(_, (_, _, member))| *member)
        .filter_map(|(s, (t, _, _))| Some((ix.customer(s)?.to_owned(), DateTime::from_timestamp_micros(t)?)))
        .collect();
    (members, position)
}
