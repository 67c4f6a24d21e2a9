//! The contract suite: the behaviour every [`EventStore`] backend must have, as plain async
//! functions that each take a fresh, empty store. A backend runs the whole suite with
//! [`contract_tests!`](crate::contract_tests), which expands to one `#[tokio::test]` per rule:
//!
//! ```text
//! fn fresh() -> (Arc<dyn EventStore>, tempfile::TempDir) { /* open a store in a new temp dir */ }
//! chronicle_store::contract_tests!(fresh());
//! ```
//!
//! The expression is evaluated inside each (async) test, so it may `.await`; it yields the store
//! and a guard (a temp dir, a database handle…) kept alive until the test ends.

use crate::event_store::{AppendError, AppendResult, Committed, EventStore};
use crate::subscription::Subscription;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

pub type Store = Arc<dyn EventStore>;

/// Whether a test may skip when a service it needs (PostgreSQL, the SMTP server, the Segment
/// clients) is not there: only with `CHRONICLE_TEST_ALLOW_SKIP=1`, which neither `scripts/test`
/// nor CI sets. Without it such a test fails, so a run that did not test something never looks
/// green.
pub fn allow_skip() -> bool {
    std::env::var("CHRONICLE_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// Expands to one `#[tokio::test]` per contract rule, each on a store made by `$fresh`, which
/// must evaluate to `(Arc<dyn EventStore>, guard)`.
#[macro_export]
macro_rules! contract_tests {
    // `$fresh` gives `Option<(store, guard)>`: `None` skips (a service that is not there, with
    // skipping allowed, see `allow_skip`; the expression prints why).
    (optional: $fresh:expr) => {
        $crate::contract_tests!(@names (optional $fresh));
    };
    ($fresh:expr) => {
        $crate::contract_tests!(@names (always $fresh));
    };
    (@names $mode:tt) => {
        $crate::contract_tests!(@each $mode;
            empty_append_is_invalid,
            event_times_outside_the_accepted_range_are_refused,
            empty_store_reads_nothing,
            versions_and_positions_start_at_one,
            expected_version_rules,
            conflict_names_the_actual_version,
            rejected_appends_write_nothing_and_leave_no_gap,
            idempotent_replay_returns_the_original_result,
            replay_must_match_stream_tenant_and_order,
            partial_id_reuse_is_rejected_and_writes_nothing,
            stored_tells_which_ids_are_committed,
            duplicate_ids_in_one_batch_are_rejected,
            ids_are_unique_per_tenant,
            tenants_are_isolated,
            read_all_pages_with_limit,
            read_stream_pages_with_limit,
            envelope_round_trips,
            head_watch_follows_commits,
            commit_hook_sees_every_event_once_in_order,
            concurrent_appends_are_gap_free,
            concurrent_duplicate_submissions_store_once,
            subscription_sees_every_event_once_in_order,
            large_batches_are_atomic,
            raw_reads_decode_to_what_read_all_returns,
            read_stream_until_filters_by_event_time,
        );
    };
    (@each $mode:tt; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $crate::contract_tests!(@fresh $mode) else { return };
                $crate::contract::$name(store).await;
            }
        )*
    };
    (@fresh (always $fresh:expr)) => {
        Some($fresh)
    };
    (@fresh (optional $fresh:expr)) => {
        $fresh
    };
}

/// The fixed event time of test events; it has nanoseconds, which stores keep to the microsecond.
pub fn event_time() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 123_456_789).single().expect("valid time")
}

/// A new test event with a fresh id. The type is one no upcaster knows, so reads return it as
/// written.
pub fn event(n: u64) -> NewEvent {
    NewEvent::new(Uuid::now_v7(), "ContractTestEvent", json!({ "n": n }), event_time())
}

pub fn batch(n: u64) -> Vec<NewEvent> {
    (0..n).map(event).collect()
}

async fn append(
    store: &Store,
    tenant: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> AppendResult {
    match store.append(tenant, stream, expected, events).await {
        Ok(r) => r,
        Err(e) => panic!("append to {tenant}/{stream} at {expected:?} failed: {e}"),
    }
}

async fn all(store: &Store) -> Vec<EventEnvelope> {
    store.read_all(0, usize::MAX).await.expect("read_all")
}

fn ids(events: &[EventEnvelope]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

fn result(first_version: u64, last_version: u64, position: u64) -> AppendResult {
    AppendResult { first_version, last_version, position }
}

fn assert_gap_free(events: &[EventEnvelope]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "positions must be 1-based and gap-free");
    }
}

pub async fn empty_append_is_invalid(store: Store) {
    let r = store.append("t1", "s", ExpectedVersion::Any, vec![]).await;
    assert!(matches!(r, Err(AppendError::Invalid(_))), "{r:?}");
    assert_eq!(store.head().await.unwrap(), 0);
    assert_eq!(store.stream_version("t1", "s").await.unwrap(), 0);
}

/// An event time outside 1900-01-01..9999-12-31 (`chronicle_core::time`) is refused with the
/// whole batch, nothing written; the bounds themselves are accepted.
pub async fn event_times_outside_the_accepted_range_are_refused(store: Store) {
    let at = |t: DateTime<Utc>| NewEvent::new(Uuid::now_v7(), "ContractTestEvent", json!({}), t);
    let far = DateTime::<Utc>::MIN_UTC;
    for bad in [far, chronicle_core::time::earliest() - chrono::Duration::seconds(1), chronicle_core::time::latest() + chrono::Duration::seconds(1)] {
        let r = store.append("t1", "s", ExpectedVersion::Any, vec![event(1), at(bad)]).await;
        assert!(matches!(&r, Err(AppendError::Invalid(m)) if m.contains("event_time")), "{bad}: {r:?}");
    }
    assert_eq!(store.head().await.unwrap(), 0);
    assert_eq!(store.stream_version("t1", "s").await.unwrap(), 0);
    let r = append(&store, "t1", "s", ExpectedVersion::NoStream, vec![at(chronicle_core::time::earliest()), at(chronicle_core::time::latest())]).await;
    assert_eq!(r.last_version, 2);
    let read = store.read_stream("t1", "s", 1, 10).await.unwrap();
    assert_eq!(read[0].event_time, chronicle_core::time::earliest());
    assert_eq!(read[1].event_time, chronicle_core::time::latest());
}

pub async fn empty_store_reads_nothing(store: Store) {
    assert_eq!(store.head().await.unwrap(), 0);
    assert_eq!(*store.head_watch().borrow(), 0);
    assert!(all(&store).await.is_empty());
    assert!(store.read_stream("t1", "s", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.stream_version("t1", "s").await.unwrap(), 0);
}

pub async fn versions_and_positions_start_at_one(store: Store) {
    assert_eq!(append(&store, "t1", "a", ExpectedVersion::NoStream, batch(2)).await, result(1, 2, 2));
    assert_eq!(append(&store, "t1", "a", ExpectedVersion::Exact(2), batch(1)).await, result(3, 3, 3));
    assert_eq!(append(&store, "t1", "b", ExpectedVersion::Any, batch(1)).await, result(1, 1, 4));
    assert_eq!(append(&store, "t1", "a", ExpectedVersion::Any, batch(2)).await, result(4, 5, 6));
    assert_eq!(store.head().await.unwrap(), 6);
    assert_eq!(store.stream_version("t1", "a").await.unwrap(), 5);
    assert_eq!(store.stream_version("t1", "b").await.unwrap(), 1);
    assert_eq!(store.stream_version("t1", "c").await.unwrap(), 0);
    let log = all(&store).await;
    assert_gap_free(&log);
    let versions: Vec<(&str, u64)> = log.iter().map(|e| (e.stream.as_str(), e.version)).collect();
    assert_eq!(versions, [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("a", 4), ("a", 5)]);
}

pub async fn expected_version_rules(store: Store) {
    use ExpectedVersion::*;
    assert_eq!(append(&store, "t1", "new-1", NoStream, batch(1)).await.first_version, 1);
    assert_eq!(append(&store, "t1", "new-2", Exact(0), batch(1)).await.first_version, 1);
    assert_eq!(append(&store, "t1", "new-3", Any, batch(1)).await.first_version, 1);
    assert_eq!(append(&store, "t1", "new-1", Exact(1), batch(1)).await.first_version, 2);
    assert_eq!(append(&store, "t1", "new-1", Any, batch(1)).await.first_version, 3);
    for (stream, expected, actual) in [
        ("new-1", NoStream, 3),
        ("new-1", Exact(0), 3),
        ("new-1", Exact(2), 3),
        ("new-1", Exact(4), 3),
        ("missing", Exact(1), 0),
    ] {
        let r = store.append("t1", stream, expected, batch(1)).await;
        assert_eq!(r, Err(AppendError::Conflict { stream: stream.into(), expected, actual }));
    }
}

pub async fn conflict_names_the_actual_version(store: Store) {
    append(&store, "t1", "s", ExpectedVersion::NoStream, batch(3)).await;
    for expected in [ExpectedVersion::Exact(1), ExpectedVersion::Exact(5), ExpectedVersion::NoStream] {
        match store.append("t1", "s", expected, batch(1)).await {
            Err(AppendError::Conflict { stream, expected: e, actual }) => {
                assert_eq!((stream.as_str(), e, actual), ("s", expected, 3));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    let r = store.append("t1", "fresh", ExpectedVersion::Exact(2), batch(1)).await;
    assert_eq!(
        r,
        Err(AppendError::Conflict { stream: "fresh".into(), expected: ExpectedVersion::Exact(2), actual: 0 })
    );
}

pub async fn rejected_appends_write_nothing_and_leave_no_gap(store: Store) {
    let first = batch(2);
    append(&store, "t1", "s", ExpectedVersion::NoStream, first.clone()).await;
    // A conflict, a partial id reuse, a duplicate inside a batch and an empty batch.
    assert!(store.append("t1", "s", ExpectedVersion::Exact(7), batch(3)).await.is_err());
    assert!(store.append("t1", "s", ExpectedVersion::Any, vec![event(9), first[0].clone()]).await.is_err());
    let e = event(1);
    assert!(store.append("t1", "s", ExpectedVersion::Any, vec![e.clone(), e]).await.is_err());
    assert!(store.append("t1", "s", ExpectedVersion::Any, vec![]).await.is_err());
    assert_eq!(store.head().await.unwrap(), 2);
    assert_eq!(store.stream_version("t1", "s").await.unwrap(), 2);
    assert_eq!(append(&store, "t1", "other", ExpectedVersion::Any, batch(1)).await, result(1, 1, 3));
    assert_eq!(append(&store, "t1", "s", ExpectedVersion::Exact(2), batch(2)).await, result(3, 4, 5));
    let log = all(&store).await;
    assert_eq!(log.len(), 5);
    assert_gap_free(&log);
}

pub async fn idempotent_replay_returns_the_original_result(store: Store) {
    let original = batch(3);
    let first = append(&store, "t1", "s", ExpectedVersion::NoStream, original.clone()).await;
    assert_eq!(first, result(1, 3, 3));
    append(&store, "t1", "s", ExpectedVersion::Exact(3), batch(1)).await;
    append(&store, "t1", "other", ExpectedVersion::Any, batch(2)).await;
    let before = all(&store).await;

    // Whatever the expected version, a replay answers the original result and stores nothing.
    for expected in
        [ExpectedVersion::NoStream, ExpectedVersion::Exact(3), ExpectedVersion::Any, ExpectedVersion::Exact(99)]
    {
        assert_eq!(store.append("t1", "s", expected, original.clone()).await, Ok(first), "{expected:?}");
    }
    let single = event(7);
    let single_result = append(&store, "t1", "other", ExpectedVersion::Exact(2), vec![single.clone()]).await;
    assert_eq!(single_result, result(3, 3, 7));
    assert_eq!(store.append("t1", "other", ExpectedVersion::Exact(0), vec![single]).await, Ok(single_result));

    let after = all(&store).await;
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(store.head().await.unwrap(), 7);
    assert_eq!(store.stream_version("t1", "s").await.unwrap(), 4);
}

pub async fn replay_must_match_stream_tenant_and_order(store: Store) {
    let original = batch(2);
    append(&store, "t1", "s", ExpectedVersion::NoStream, original.clone()).await;
    let reversed = vec![original[1].clone(), original[0].clone()];
    for (tenant, stream, events) in [("t1", "s", reversed), ("t1", "other", original.clone())] {
        let r = store.append(tenant, stream, ExpectedVersion::Any, events).await;
        assert!(matches!(r, Err(AppendError::IdReused { .. })), "{tenant}/{stream}: {r:?}");
    }
    assert_eq!(store.head().await.unwrap(), 2);
    assert_eq!(store.stream_version("t1", "other").await.unwrap(), 0);
    // In another tenant the same ids are new (ids are unique per tenant).
    assert_eq!(append(&store, "t2", "s", ExpectedVersion::NoStream, original).await, result(1, 2, 4));
}

pub async fn partial_id_reuse_is_rejected_and_writes_nothing(store: Store) {
    let original = batch(2);
    append(&store, "t1", "s", ExpectedVersion::NoStream, original.clone()).await;
    let fresh = event(5);
    for (events, reused) in [
        (vec![original[0].clone(), fresh.clone()], original[0].id),
        (vec![fresh.clone(), original[1].clone()], original[1].id),
        (vec![original[0].clone(), original[1].clone(), fresh.clone()], original[0].id),
    ] {
        match store.append("t1", "s", ExpectedVersion::Any, events).await {
            Err(AppendError::IdReused { id, .. }) => assert_eq!(id, reused),
            other => panic!("expected IdReused, got {other:?}"),
        }
    }
    assert_eq!(store.head().await.unwrap(), 2);
    // The fresh id was not stored by the rejected batches.
    assert_eq!(append(&store, "t1", "s", ExpectedVersion::Exact(2), vec![fresh.clone()]).await, result(3, 3, 3));
    assert_eq!(ids(&all(&store).await), vec![original[0].id, original[1].id, fresh.id]);
}

pub async fn stored_tells_which_ids_are_committed(store: Store) {
    let (a, b) = (batch(2), batch(1));
    append(&store, "t1", "s", ExpectedVersion::NoStream, a.clone()).await;
    append(&store, "t2", "other", ExpectedVersion::NoStream, b.clone()).await;
    let fresh = event(9);
    let asked = [a[1].id, fresh.id, b[0].id, a[0].id];
    assert_eq!(store.stored("t1", &asked).await.unwrap(), vec![true, false, false, true]);
    assert_eq!(store.stored("t2", &asked).await.unwrap(), vec![false, false, true, false], "per tenant");
    assert_eq!(store.stored("t3", &asked).await.unwrap(), vec![false; 4]);
    assert!(store.stored("t1", &[]).await.unwrap().is_empty());
    // A rejected append stores nothing.
    let _ = store.append("t1", "s", ExpectedVersion::Exact(7), vec![fresh.clone()]).await;
    assert_eq!(store.stored("t1", &[fresh.id]).await.unwrap(), vec![false]);
}

pub async fn duplicate_ids_in_one_batch_are_rejected(store: Store) {
    let (a, b) = (event(1), event(2));
    for events in [vec![a.clone(), a.clone()], vec![a.clone(), b.clone(), a.clone()]] {
        match store.append("t1", "s", ExpectedVersion::NoStream, events).await {
            Err(AppendError::IdReused { id, .. }) => assert_eq!(id, a.id),
            other => panic!("expected IdReused, got {other:?}"),
        }
    }
    assert_eq!(store.head().await.unwrap(), 0);
    assert_eq!(append(&store, "t1", "s", ExpectedVersion::NoStream, vec![a, b]).await, result(1, 2, 2));
}

/// Ids are unique per tenant: an id another tenant stored is neither a duplicate (its event is
/// stored here too) nor a clash, and no answer — not even a version conflict's — tells whether
/// another tenant has it (issue 17: a tenant could suppress or probe another's events).
pub async fn ids_are_unique_per_tenant(store: Store) {
    let e = event(1);
    append(&store, "t1", "secret-stream", ExpectedVersion::NoStream, vec![e.clone()]).await;
    // A wrong expected version in t2 is a plain conflict, as for an id nobody has.
    match store.append("t2", "s", ExpectedVersion::Exact(5), vec![e.clone()]).await {
        Err(AppendError::Conflict { actual: 0, .. }) => {}
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(append(&store, "t2", "secret-stream", ExpectedVersion::NoStream, vec![e.clone()]).await, result(1, 1, 2));
    // Each tenant's copy is its own: a replay in either is recognised as that tenant's.
    assert_eq!(append(&store, "t2", "secret-stream", ExpectedVersion::NoStream, vec![e.clone()]).await, result(1, 1, 2));
    assert_eq!(append(&store, "t1", "secret-stream", ExpectedVersion::NoStream, vec![e.clone()]).await, result(1, 1, 1));
    // Within a tenant an id is still stored once.
    match store.append("t2", "elsewhere", ExpectedVersion::Any, vec![e.clone()]).await {
        Err(AppendError::IdReused { id, detail }) => {
            assert_eq!(id, e.id);
            assert!(detail.contains("secret-stream"), "names this tenant's stream: {detail}");
        }
        other => panic!("expected IdReused, got {other:?}"),
    }
    assert_eq!(store.stored("t1", &[e.id]).await.unwrap(), vec![true]);
    assert_eq!(store.stored("t2", &[e.id]).await.unwrap(), vec![true]);
    assert_eq!(store.stored("t3", &[e.id]).await.unwrap(), vec![false]);
    assert_eq!(store.head().await.unwrap(), 2);
    let t2: Vec<_> = all(&store).await.into_iter().filter(|x| x.tenant == "t2").collect();
    assert_eq!((t2.len(), t2[0].id), (1, e.id));
}

pub async fn tenants_are_isolated(store: Store) {
    append(&store, "t1", "customer-1", ExpectedVersion::NoStream, batch(2)).await;
    assert_eq!(append(&store, "t2", "customer-1", ExpectedVersion::NoStream, batch(1)).await, result(1, 1, 3));
    assert_eq!(append(&store, "t1", "customer-1", ExpectedVersion::Exact(2), batch(1)).await, result(3, 3, 4));
    assert_eq!(store.stream_version("t1", "customer-1").await.unwrap(), 3);
    assert_eq!(store.stream_version("t2", "customer-1").await.unwrap(), 1);
    assert_eq!(store.stream_version("t3", "customer-1").await.unwrap(), 0);
    let t1 = store.read_stream("t1", "customer-1", 1, 100).await.unwrap();
    let t2 = store.read_stream("t2", "customer-1", 1, 100).await.unwrap();
    assert!(t1.iter().all(|e| e.tenant == "t1") && t1.len() == 3);
    assert!(t2.iter().all(|e| e.tenant == "t2") && t2.len() == 1);
    assert!(store.read_stream("t3", "customer-1", 1, 100).await.unwrap().is_empty());
    let log = all(&store).await;
    assert_gap_free(&log);
    assert_eq!(log.iter().map(|e| e.tenant.as_str()).collect::<Vec<_>>(), ["t1", "t1", "t2", "t1"]);
}

pub async fn read_all_pages_with_limit(store: Store) {
    let mut n = 0;
    while n < 25 {
        let size = 1 + n % 3;
        let (tenant, stream) = (["t1", "t2"][(n % 2) as usize], ["a", "b", "c"][(n % 3) as usize]);
        append(&store, tenant, stream, ExpectedVersion::Any, batch(size)).await;
        n += size;
    }
    let every = all(&store).await;
    assert_eq!(every.len() as u64, n);
    assert_gap_free(&every);
    let positions = |v: Vec<EventEnvelope>| v.iter().map(|e| e.position).collect::<Vec<_>>();
    assert_eq!(positions(store.read_all(0, 10).await.unwrap()), (1..=10).collect::<Vec<_>>());
    assert_eq!(positions(store.read_all(10, 10).await.unwrap()), (11..=20).collect::<Vec<_>>());
    assert_eq!(positions(store.read_all(20, 10).await.unwrap()), (21..=n).collect::<Vec<_>>());
    assert!(store.read_all(n, 10).await.unwrap().is_empty());
    assert!(store.read_all(u64::MAX, 10).await.unwrap().is_empty());
    assert!(store.read_all(0, 0).await.unwrap().is_empty());
    assert_eq!(positions(store.read_all(3, usize::MAX).await.unwrap()), (4..=n).collect::<Vec<_>>());
    // Paging with `after` = the last position seen visits every event once.
    let (mut paged, mut after) = (Vec::new(), 0);
    loop {
        let page = store.read_all(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(paged, every);
}

pub async fn read_stream_pages_with_limit(store: Store) {
    for i in 0..12 {
        append(&store, "t1", "s", ExpectedVersion::Exact(i), batch(1)).await;
        append(&store, "t1", "noise", ExpectedVersion::Any, batch(1)).await;
    }
    let versions = |v: Vec<EventEnvelope>| v.iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(versions(store.read_stream("t1", "s", 0, 5).await.unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(versions(store.read_stream("t1", "s", 1, 5).await.unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(versions(store.read_stream("t1", "s", 6, 5).await.unwrap()), [6, 7, 8, 9, 10]);
    assert_eq!(versions(store.read_stream("t1", "s", 11, 5).await.unwrap()), [11, 12]);
    assert!(store.read_stream("t1", "s", 13, 5).await.unwrap().is_empty());
    assert!(store.read_stream("t1", "s", u64::MAX, 5).await.unwrap().is_empty());
    assert!(store.read_stream("t1", "s", 1, 0).await.unwrap().is_empty());
    // A stream read returns the same envelopes as the global log.
    let stream = store.read_stream("t1", "s", 1, usize::MAX).await.unwrap();
    let log: Vec<EventEnvelope> = all(&store).await.into_iter().filter(|e| e.stream == "s").collect();
    assert_eq!(stream, log);
    assert!(stream.windows(2).all(|w| w[0].position < w[1].position));
}

pub async fn envelope_round_trips(store: Store) {
    let full = NewEvent {
        id: Uuid::now_v7(),
        event_type: "ContractTestEvent".into(),
        schema_version: event(0).schema_version,
        event_time: event_time(),
        source: "crm-import".into(),
        causation_id: Some(Uuid::now_v7()),
        correlation_id: Some(Uuid::now_v7()),
        actor: Some("user:ada".into()),
        data: json!({ "name": "Zoë 🚀", "nested": { "list": [1, 2, 3], "flag": true, "none": null }, "big": 9007199254740993u64 }).into(),
        metadata: json!({ "ip": "192.0.2.1" }),
    };
    let bare = event(2);
    // A payload submitted as JSON text (bulk import) reads back as the same value.
    let text = r#"{ "z": "Zo\u00eb", "a": [1, {"b": null}], "n": -1.5e3 }"#;
    let as_text = NewEvent::from_json_text(
        Uuid::now_v7(),
        "ContractTestEvent",
        RawValue::from_string(text.into()).unwrap(),
        event_time(),
    );
    let before = Utc::now();
    let sent = [full.clone(), bare.clone(), as_text.clone()];
    let r = append(&store, "t1", "s", ExpectedVersion::NoStream, sent.to_vec()).await;
    let after = Utc::now();
    assert_eq!(r, result(1, 3, 3));
    let read = store.read_stream("t1", "s", 1, 10).await.unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(read[2].data, json!({"z": "Zoë", "a": [1, {"b": null}], "n": -1500.0}));
    for (got, sent) in read.iter().zip(&sent) {
        assert_eq!(got.id, sent.id);
        assert_eq!((got.tenant.as_str(), got.stream.as_str()), ("t1", "s"));
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.schema_version, sent.schema_version);
        assert_eq!(got.source, sent.source);
        assert_eq!(got.causation_id, sent.causation_id);
        assert_eq!(got.correlation_id, sent.correlation_id);
        assert_eq!(got.actor, sent.actor);
        assert_eq!(got.data, sent.data.to_value());
        assert_eq!(got.metadata, sent.metadata);
        // Times are kept to the microsecond.
        assert_eq!(got.event_time, Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap());
        assert_eq!(got.ingest_time.timestamp_subsec_nanos() % 1000, 0);
        assert!(got.ingest_time >= before - chrono::Duration::microseconds(1) && got.ingest_time <= after);
    }
    assert_eq!(read[0].ingest_time, read[1].ingest_time, "one batch, one ingest time");
}

pub async fn head_watch_follows_commits(store: Store) {
    let mut watch = store.head_watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    let waiter = tokio::spawn(async move {
        watch.changed().await.expect("store alive");
        *watch.borrow_and_update()
    });
    let r = append(&store, "t1", "s", ExpectedVersion::Any, batch(2)).await;
    // The watch has moved by the time the append returns.
    assert!(*store.head_watch().borrow() >= r.position);
    let seen = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("watch woke").unwrap();
    assert_eq!(seen, 2);
    let r = append(&store, "t2", "s", ExpectedVersion::Any, batch(1)).await;
    assert_eq!(*store.head_watch().borrow(), r.position);
}

pub async fn commit_hook_sees_every_event_once_in_order(store: Store) {
    let seen: Arc<Mutex<Vec<EventEnvelope>>> = Arc::default();
    let sink = seen.clone();
    store.set_commit_hook(Arc::new(move |events: &[Committed<'_>]| {
        let mut sink = sink.lock().unwrap();
        for c in events {
            let e = c.envelope();
            // The header the hook has at hand is the stored event's.
            let head = (c.tenant, c.stream, c.version, c.position, c.event_type, c.event_time);
            assert_eq!(
                head,
                (e.tenant.as_str(), e.stream.as_str(), e.version, e.position, e.event_type.as_str(), e.event_time)
            );
            sink.push(e);
        }
    }));

    // Sequentially: the hook has the events before the append returns; rejections and replays
    // call it with nothing new.
    let original = batch(3);
    let r = append(&store, "t1", "s", ExpectedVersion::NoStream, original.clone()).await;
    assert_eq!(seen.lock().unwrap().last().map(|e| e.position), Some(r.position));
    assert!(store.append("t1", "s", ExpectedVersion::NoStream, batch(1)).await.is_err());
    assert_eq!(store.append("t1", "s", ExpectedVersion::Any, original).await, Ok(r));
    let r = append(&store, "t2", "s", ExpectedVersion::Any, batch(1)).await;
    assert_eq!(seen.lock().unwrap().last().map(|e| e.position), Some(r.position));
    assert_eq!(seen.lock().unwrap().len(), 4);

    // Concurrently: still every event once, in position order.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let r = append(&store, "t1", &format!("w{t}"), ExpectedVersion::Any, batch(1 + i % 2)).await;
                let max_seen = seen.lock().unwrap().iter().map(|e| e.position).max();
                assert!(max_seen >= Some(r.position), "the hook ran before the append returned");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_gap_free(&seen);
    // The hook saw exactly what readers see.
    assert_eq!(seen, all(&store).await);
}

pub async fn concurrent_appends_are_gap_free(store: Store) {
    const TASKS: usize = 32;
    const APPENDS: u64 = 50;
    const STREAMS: [(&str, &str); 4] = [("t1", "shared-0"), ("t1", "shared-1"), ("t2", "shared-0"), ("t2", "shared-2")];
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (tenant, stream) = STREAMS[t % STREAMS.len()];
            let mut expected = 0;
            let mut acknowledged = Vec::new();
            for i in 0..APPENDS {
                let events = batch(1 + u64::from(i % 5 == 0));
                loop {
                    match store.append(tenant, stream, ExpectedVersion::Exact(expected), events.clone()).await {
                        Ok(r) => {
                            expected = r.last_version;
                            acknowledged.push((events.iter().map(|e| e.id).collect::<Vec<_>>(), r));
                            break;
                        }
                        Err(AppendError::Conflict { actual, .. }) => expected = actual,
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
            }
            (tenant, stream, acknowledged)
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.push(t.await.unwrap());
    }

    let log = all(&store).await;
    assert_gap_free(&log);
    assert_eq!(store.head().await.unwrap(), log.len() as u64);
    let total: usize = acknowledged.iter().flat_map(|(_, _, a)| a).map(|(ids, _)| ids.len()).sum();
    assert_eq!(log.len(), total, "no loss, no duplicate");
    let unique: HashSet<Uuid> = log.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), log.len());

    // Every stream's versions are 1..=n in position order.
    let mut versions: HashMap<(&str, &str), u64> = HashMap::new();
    for e in &log {
        let v = versions.entry((e.tenant.as_str(), e.stream.as_str())).or_default();
        *v += 1;
        assert_eq!(e.version, *v, "contiguous versions on {}/{}", e.tenant, e.stream);
    }
    // Every acknowledgement describes what is stored.
    for (tenant, stream, acks) in &acknowledged {
        for (ids, r) in acks {
            let n = ids.len() as u64;
            assert_eq!(r.last_version - r.first_version + 1, n);
            for (i, id) in ids.iter().enumerate() {
                let e = &log[(r.position - n + i as u64) as usize];
                assert_eq!((e.id, e.tenant.as_str(), e.stream.as_str()), (*id, *tenant, *stream));
                assert_eq!(e.version, r.first_version + i as u64);
            }
        }
    }
}

pub async fn concurrent_duplicate_submissions_store_once(store: Store) {
    let events = batch(3);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let events = events.clone();
        let expected = if i % 2 == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Any };
        tasks.push(tokio::spawn(async move { store.append("t1", "s", expected, events).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(result(1, 3, 3)));
    }
    assert_eq!(ids(&all(&store).await), events.iter().map(|e| e.id).collect::<Vec<_>>());
}

pub async fn subscription_sees_every_event_once_in_order(store: Store) {
    const WRITERS: u64 = 8;
    const PER_WRITER: u64 = 40;
    append(&store, "t1", "before", ExpectedVersion::Any, batch(50)).await;
    let total = 50 + WRITERS * PER_WRITER;

    let collect = |after: u64| {
        let mut sub = Subscription::new(store.clone(), after);
        tokio::spawn(async move {
            let mut got = Vec::new();
            while (got.len() as u64) < total - after {
                match sub.next().await {
                    Ok(Some(e)) => got.push(e),
                    other => panic!("subscription ended early: {other:?}"),
                }
            }
            assert_eq!(sub.position(), total);
            got
        })
    };
    let from_start = collect(0);
    let from_middle = collect(25);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                append(&store, "t1", &format!("live-{w}"), ExpectedVersion::Any, vec![event(i)]).await;
                if i % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let limit = Duration::from_secs(60);
    let from_start = tokio::time::timeout(limit, from_start).await.expect("caught up").unwrap();
    let from_middle = tokio::time::timeout(limit, from_middle).await.expect("caught up").unwrap();
    let log = all(&store).await;
    assert_eq!(from_start, log);
    assert_eq!(from_middle[..], log[25..]);
}

pub async fn large_batches_are_atomic(store: Store) {
    assert_eq!(append(&store, "t1", "big", ExpectedVersion::NoStream, batch(3_000)).await, result(1, 3_000, 3_000));
    // Larger than one commit group's event budget: still one atomic append.
    assert_eq!(
        append(&store, "t1", "bigger", ExpectedVersion::NoStream, batch(12_000)).await,
        result(1, 12_000, 15_000)
    );
    let mut partial = batch(4_000);
    partial[3_999] = store
        .read_stream("t1", "big", 2, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| NewEvent {
            id: e.id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            event_time: e.event_time,
            source: e.source,
            causation_id: e.causation_id,
            correlation_id: e.correlation_id,
            actor: e.actor,
            data: e.data.into(),
            metadata: e.metadata,
        })
        .next()
        .unwrap();
    assert!(matches!(
        store.append("t1", "big", ExpectedVersion::Any, partial).await,
        Err(AppendError::IdReused { .. })
    ));
    assert_eq!(store.head().await.unwrap(), 15_000);
    assert_eq!(store.read_stream("t1", "bigger", 1, usize::MAX).await.unwrap().len(), 12_000);
    assert_gap_free(&all(&store).await);
}

/// `read_all_raw` returns the same events as `read_all`, payloads as text (a backend may hand
/// them out as stored, not yet upcast); decoding one
/// (parse + upcast) gives exactly what `read_all` returns.
pub async fn raw_reads_decode_to_what_read_all_returns(store: Store) {
    let mut old = NewEvent::new(Uuid::now_v7(), "CustomerRegistered", json!({"name": "Ada Lovelace"}), event_time());
    old.schema_version = 1;
    store.append("t", "customer-1", ExpectedVersion::NoStream, vec![old]).await.unwrap();
    store.append("t", "s", ExpectedVersion::Any, batch(3)).await.unwrap();
    let decoded = store.read_all(0, 100).await.unwrap();
    let raw = store.read_all_raw(0, 100).await.unwrap();
    assert_eq!(raw.len(), 4);
    assert_eq!(raw.iter().map(|r| r.position).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let raw_decoded: Vec<_> = raw
        .into_iter()
        .map(|mut r| {
            store.open_raw(&mut r);
            r.decode().unwrap()
        })
        .collect();
    assert_eq!(raw_decoded, decoded);
    assert_eq!(decoded[0].schema_version, 2);
    assert_eq!(store.read_all_raw(2, 1).await.unwrap()[0].position, 3);
}

/// Time travel reads: only the stream's events at or after a version that happened by an
/// instant, in version order, whatever order their event times are in.
pub async fn read_stream_until_filters_by_event_time(store: Store) {
    let t0 = event_time();
    let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
    let mut events = Vec::new();
    for (n, secs) in [(0u64, 0i64), (1, 10), (2, 5), (3, 30), (4, 20)] {
        let mut e = event(n);
        e.event_time = at(secs);
        events.push(e);
    }
    store.append("t", "s", ExpectedVersion::NoStream, events).await.unwrap();
    store.append("other", "s", ExpectedVersion::NoStream, batch(2)).await.unwrap();
    let versions = |evs: Vec<EventEnvelope>| evs.iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(versions(store.read_stream_until("t", "s", 1, at(10)).await.unwrap()), vec![1, 2, 3]);
    assert_eq!(versions(store.read_stream_until("t", "s", 3, at(20)).await.unwrap()), vec![3, 5]);
    assert_eq!(versions(store.read_stream_until("t", "s", 1, at(-1)).await.unwrap()), Vec::<u64>::new());
    assert_eq!(versions(store.read_stream_until("t", "s", 1, at(99)).await.unwrap()), vec![1, 2, 3, 4, 5]);
    assert!(store.read_stream_until("t", "nope", 1, at(99)).await.unwrap().is_empty());
}
