//! Analytics on the log, pure (no I/O, no clock): answers computed from a tenant's events as
//! they were by an instant of event time (`as_of`) and as Chronicle knew them at a log position
//! (`known_at`), so a backfill changes the answers known after it and never those before.
//! The application reads the events; this crate only folds them.
//!
//! - [`index`]: a tenant's events kept compact in memory (rows of ids and times), which the
//!   answers scan.
//! - [`funnel`]: ordered steps within a conversion window, per person, with a breakdown by a
//!   trait as it was when the person entered or by a property of the entry event.
//! - [`rfm`]: recency, frequency and monetary value per customer, quintile scores, groups.
//! - [`attribution`]: revenue of conversions credited to channels and campaigns, five models.
//! - [`pipeline`]: stage velocity (by owner), stage conversion, win rate, stuck deals.
//! - [`segments`]: a segment's members at any past instant, from their entries and exits.
//! - [`reengagement`]: customers who were engaged, then went silent.
//! - [`cohorts`]: customers by signup week or month, and their conversion over time.

pub mod attribution;
pub mod cohorts;
pub mod funnel;
pub mod index;
pub mod pipeline;
pub mod reengagement;
pub mod rfm;
pub mod segments;

use chrono::{DateTime, Utc};

/// What an answer reflects: events that happened by `as_of` and were recorded at or before log
/// position `known_at` (and, when `known_by` is given, ingested by that instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub as_of: DateTime<Utc>,
    pub known_at: u64,
    pub known_by: Option<DateTime<Utc>>,
}

/// The nearest-rank percentile of sorted values.
pub(crate) fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// An event as the tests' hand-made histories need it: in `stream`, at `position` (its version
/// too), happened and ingested at `at`.
#[cfg(test)]
pub(crate) fn test_event(stream: &str, position: u64, at: DateTime<Utc>, event_type: &str, data: serde_json::Value) -> chronicle_core::envelope::EventEnvelope {
    chronicle_core::envelope::EventEnvelope {
        id: chronicle_core::ids::derive_id(&[stream, &position.to_string()]),
        tenant: "t".into(),
        stream: stream.into(),
        version: position,
        position,
        event_type: event_type.into(),
        schema_version: 1,
        event_time: at,
        ingest_time: at,
        source: "test".into(),
        causation_id: None,
        correlation_id: None,
        actor: None,
        data,
        metadata: serde_json::Value::Null,
    }
}
