//! The append rules every backend shares: batch validation, the idempotency classification, the
//! wording of the errors, time precision and the upcast on read. Keeping them in one place means
//! the reference model and the engines cannot drift apart (the model test compares errors
//! verbatim).

use crate::errors::{AppendError, AppendResult};
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use uuid::Uuid;

/// Checks that need nothing but the batch itself: it is not empty, every event time is in the
/// accepted range and no id occurs twice.
pub(crate) fn check_batch(events: &[NewEvent]) -> Result<(), AppendError> {
    if events.is_empty() {
        return Err(AppendError::Invalid("an append needs at least one event".into()));
    }
    // Times outside the accepted range are refused here, whatever path they came by, so no
    // stored time can make the read models' date arithmetic overflow.
    if let Some(e) = events.iter().find(|e| !chronicle_core::time::in_range(e.event_time)) {
        return Err(AppendError::Invalid(format!("event {}: {}", e.id, chronicle_core::time::check("event_time", e.event_time).unwrap_err())));
    }
    if events.len() > 1 {
        let mut seen = HashSet::with_capacity_and_hasher(events.len(), foldhash::fast::RandomState::default());
        for e in events {
            if !seen.insert(e.id) {
                return Err(AppendError::IdReused { id: e.id, detail: "(twice in this batch)".into() });
            }
        }
    }
    Ok(())
}

/// Where an already stored event id lives.
pub(crate) struct StoredAt<'a> {
    pub tenant: &'a str,
    pub stream: &'a str,
    pub version: u64,
    pub position: u64,
}

/// Decides what a batch is, given where each of its ids is stored (`found[i]` for `ids[i]`):
/// `None` when no id is stored (a new batch: go on to the version check); `Some(Ok)` when every
/// id is stored on this stream, in this order, at consecutive versions (a replay: the original
/// result); `Some(Err(IdReused))` for anything in between.
pub(crate) fn classify_ids(
    tenant: &str,
    stream: &str,
    ids: &[Uuid],
    found: &[Option<StoredAt<'_>>],
) -> Option<Result<AppendResult, AppendError>> {
    debug_assert_eq!(ids.len(), found.len());
    let first_stored = found.iter().position(Option::is_some)?;
    let is_replay = match (found.first(), found.last()) {
        (Some(Some(first)), Some(Some(_))) => found.iter().enumerate().all(|(i, f)| {
            f.as_ref()
                .is_some_and(|at| at.tenant == tenant && at.stream == stream && at.version == first.version + i as u64)
        }),
        _ => false,
    };
    if is_replay {
        let first = found[0].as_ref().expect("checked above");
        let last = found[found.len() - 1].as_ref().expect("checked above");
        return Some(Ok(AppendResult {
            first_version: first.version,
            last_version: last.version,
            position: last.position,
        }));
    }
    let at = found[first_stored].as_ref().expect("position() found it");
    // Ids are unique per tenant: `found` holds this tenant's events only.
    debug_assert_eq!(at.tenant, tenant);
    let detail = if at.stream != stream {
        format!("in stream {}", at.stream)
    } else {
        format!("at version {} of this stream, and the batch is not a replay of an earlier append", at.version)
    };
    Some(Err(AppendError::IdReused { id: ids[first_stored], detail }))
}

pub(crate) fn conflict(stream: &str, expected: ExpectedVersion, actual: u64) -> AppendError {
    AppendError::Conflict { stream: stream.to_string(), expected, actual }
}

/// Times are stored with microsecond precision (an `INTEGER` in SQLite, `timestamptz` in
/// PostgreSQL); every backend truncates the same way so they return identical envelopes.
pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

pub(crate) fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    // Every DateTime<Utc> chrono can represent fits in i64 microseconds, and back.
    from_micros(to_micros(t)).unwrap_or(t)
}

/// Every envelope a reader (or the commit hook) sees passes through here, so projections only
/// ever see the newest schema of each event type.
pub(crate) fn upcast_on_read(e: EventEnvelope) -> EventEnvelope {
    e.upcast()
}

/// The envelope a committed `NewEvent` becomes (before any upcast): every backend builds the
/// stored form through here, so they agree on it field by field.
pub(crate) fn stored_envelope(
    tenant: &str,
    stream: &str,
    e: NewEvent,
    version: u64,
    position: u64,
    ingest_time: DateTime<Utc>,
) -> EventEnvelope {
    EventEnvelope {
        id: e.id,
        tenant: tenant.to_string(),
        stream: stream.to_string(),
        version,
        position,
        event_type: e.event_type,
        schema_version: e.schema_version,
        event_time: truncate_to_micros(e.event_time),
        ingest_time,
        source: e.source,
        causation_id: e.causation_id,
        correlation_id: e.correlation_id,
        actor: e.actor,
        data: e.data.into_value(),
        metadata: e.metadata,
    }
}

/// Wait for a backend's writer thread to finish (its request channel already closed), unless
/// this is that thread: a commit hook holding the last reference can drop the store there.
pub(crate) fn join_writer(writer: Option<std::thread::JoinHandle<()>>) {
    if let Some(writer) = writer {
        if writer.thread().id() != std::thread::current().id() {
            let _ = writer.join();
        }
    }
}

/// Fills a writer's `group` with `first` and every request already queued behind it, up to
/// `max_requests` requests or `max_events` events (`events` counts a request's): what one
/// commit takes, in every backend with a single writer.
pub(crate) fn fill_group<R>(
    group: &mut Vec<R>,
    first: R,
    inbox: &mut tokio::sync::mpsc::Receiver<R>,
    events: impl Fn(&R) -> usize,
    (max_requests, max_events): (usize, usize),
) {
    let mut n = events(&first);
    group.push(first);
    while group.len() < max_requests && n < max_events {
        match inbox.try_recv() {
            Ok(request) => {
                n += events(&request);
                group.push(request);
            }
            Err(_) => break,
        }
    }
}
