//! Model-based property test: random operation sequences — appends to a few streams of a few
//! tenants with right, stale, ahead, `Any` and `NoStream` expectations, fresh and reused ids,
//! replays, small groups submitted concurrently — run against each durable backend
//! (`SqliteStore`, `LogStore`) and the `MemoryStore` reference. Every operation must give the
//! same answer on both, and at the end the logs (and what the commit hooks saw) must be
//! identical but for ingest times: no loss, no duplicate, no reordering. Then the backend is
//! reopened and must read back the same log.

use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chronicle_store::log::LogStore;
use chronicle_store::memory::MemoryStore;
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::{AppendError, AppendResult, Committed, EventStore};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const TENANTS: [&str; 2] = ["acme", "globex"];
const STREAMS: [&str; 3] = ["customer-1", "customer-2", "order-7"];

#[derive(Debug, Clone)]
enum Expect {
    Right,
    Stale,
    Ahead,
    Any,
    NoStream,
}

#[derive(Debug, Clone)]
enum Id {
    Fresh,
    /// An id used before (index modulo the ids used so far).
    Reuse(usize),
}

#[derive(Debug, Clone)]
enum Body {
    /// New events (0 to 3; 0 is the invalid empty batch), ids fresh or reused.
    Events(Vec<(Id, bool)>),
    /// Resubmit an earlier batch (index modulo the batches so far) exactly as it was.
    Resubmit(usize),
}

#[derive(Debug, Clone)]
struct AppendOp {
    tenant: usize,
    stream: usize,
    expected: Expect,
    body: Body,
}

#[derive(Debug, Clone)]
enum Op {
    Append(AppendOp),
    /// Submitted together (`tokio::join!`), so they can land in one commit group.
    Together(Vec<AppendOp>),
    ReadStream {
        tenant: usize,
        stream: usize,
        from: u64,
        limit: usize,
    },
    ReadAll {
        after: u64,
        limit: usize,
    },
    Versions,
}

fn append_op() -> impl Strategy<Value = AppendOp> {
    let expect = prop_oneof![
        4 => Just(Expect::Right),
        1 => Just(Expect::Stale),
        1 => Just(Expect::Ahead),
        2 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
    ];
    let id = prop_oneof![6 => Just(Id::Fresh), 1 => any::<usize>().prop_map(Id::Reuse)];
    let body = prop_oneof![
        6 => prop::collection::vec((id, any::<bool>()), 0..4).prop_map(Body::Events),
        1 => any::<usize>().prop_map(Body::Resubmit),
    ];
    (0..TENANTS.len(), 0..STREAMS.len(), expect, body).prop_map(|(tenant, stream, expected, body)| AppendOp {
        tenant,
        stream,
        expected,
        body,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => append_op().prop_map(Op::Append),
        3 => prop::collection::vec(append_op(), 2..=4).prop_map(Op::Together),
        1 => (0..TENANTS.len(), 0..STREAMS.len(), 0u64..6, 0usize..5)
            .prop_map(|(tenant, stream, from, limit)| Op::ReadStream { tenant, stream, from, limit }),
        1 => (0u64..30, 0usize..8).prop_map(|(after, limit)| Op::ReadAll { after, limit }),
        1 => Just(Op::Versions),
    ]
}

/// Turns generated operations into concrete appends; both stores get the very same events.
#[derive(Default)]
struct Driver {
    next_id: u128,
    used: Vec<Uuid>,
    batches: Vec<(usize, usize, Vec<NewEvent>)>,
}

fn event_time() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 987_654_321).single().unwrap()
}

impl Driver {
    fn event(&mut self, id: Id, legacy: bool) -> NewEvent {
        let id = match id {
            Id::Reuse(i) if !self.used.is_empty() => self.used[i % self.used.len()],
            _ => {
                self.next_id += 1;
                Uuid::from_u128(self.next_id)
            }
        };
        self.used.push(id);
        if legacy {
            // An old schema: both backends must upcast it on read and in the hook.
            let mut e = NewEvent::new(id, "CustomerRegistered", json!({ "name": "Ada Lovelace" }), event_time());
            e.schema_version = 1;
            e
        } else {
            NewEvent::new(id, "ModelTestEvent", json!({ "n": self.next_id as u64 }), event_time())
        }
    }

    async fn resolve(
        &mut self,
        op: &AppendOp,
        reference: &MemoryStore,
    ) -> (usize, usize, ExpectedVersion, Vec<NewEvent>) {
        let (mut tenant, mut stream) = (op.tenant, op.stream);
        let events = match &op.body {
            Body::Events(ids) => ids.iter().map(|(id, legacy)| self.event(id.clone(), *legacy)).collect(),
            Body::Resubmit(i) if !self.batches.is_empty() => {
                let (t, s, events) = self.batches[i % self.batches.len()].clone();
                // Mostly to its own stream (a replay), sometimes elsewhere (an id reuse).
                if i % 4 != 0 {
                    (tenant, stream) = (t, s);
                }
                events
            }
            Body::Resubmit(_) => vec![self.event(Id::Fresh, false)],
        };
        self.batches.push((tenant, stream, events.clone()));
        let right = reference.stream_version(TENANTS[tenant], STREAMS[stream]).await.unwrap();
        let expected = match op.expected {
            Expect::Right => ExpectedVersion::Exact(right),
            Expect::Stale => ExpectedVersion::Exact(right.saturating_sub(1)),
            Expect::Ahead => ExpectedVersion::Exact(right + 1),
            Expect::Any => ExpectedVersion::Any,
            Expect::NoStream => ExpectedVersion::NoStream,
        };
        (tenant, stream, expected, events)
    }
}

type Outcome = Result<AppendResult, AppendError>;

async fn run_together(store: &dyn EventStore, ops: &[(usize, usize, ExpectedVersion, Vec<NewEvent>)]) -> Vec<Outcome> {
    let go = |i: usize| {
        let (t, s, e, events) = &ops[i];
        store.append(TENANTS[*t], STREAMS[*s], *e, events.clone())
    };
    match ops.len() {
        2 => {
            let (a, b) = tokio::join!(go(0), go(1));
            vec![a, b]
        }
        3 => {
            let (a, b, c) = tokio::join!(go(0), go(1), go(2));
            vec![a, b, c]
        }
        4 => {
            let (a, b, c, d) = tokio::join!(go(0), go(1), go(2), go(3));
            vec![a, b, c, d]
        }
        n => unreachable!("groups have 2 to 4 appends, not {n}"),
    }
}

fn without_ingest_time(mut events: Vec<EventEnvelope>) -> Vec<EventEnvelope> {
    for e in &mut events {
        e.ingest_time = DateTime::UNIX_EPOCH;
    }
    events
}

fn recording_hook(store: &dyn EventStore) -> Arc<Mutex<Vec<EventEnvelope>>> {
    let seen: Arc<Mutex<Vec<EventEnvelope>>> = Arc::default();
    let sink = seen.clone();
    store.set_commit_hook(Arc::new(move |events: &[Committed<'_>]| {
        sink.lock().unwrap().extend(events.iter().map(Committed::envelope))
    }));
    seen
}

/// Opens a durable backend in a folder (again, for the reopen at the end of a case).
type Open = fn(&Path) -> Box<dyn EventStore>;

fn open_sqlite(dir: &Path) -> Box<dyn EventStore> {
    Box::new(SqliteStore::open(dir).unwrap())
}

fn open_log(dir: &Path) -> Box<dyn EventStore> {
    Box::new(LogStore::open(dir).unwrap())
}

async fn check(ops: Vec<Op>, open: Open) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let opened = open(dir.path());
    let store = &*opened;
    let memory = MemoryStore::new();
    let (store_hook, memory_hook) = (recording_hook(store), recording_hook(&memory));
    let mut driver = Driver::default();

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Append(a) => {
                let (t, s, e, events) = driver.resolve(a, &memory).await;
                let want = memory.append(TENANTS[t], STREAMS[s], e, events.clone()).await;
                let got = store.append(TENANTS[t], STREAMS[s], e, events).await;
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::Together(group) => {
                let mut resolved = Vec::new();
                for a in group {
                    resolved.push(driver.resolve(a, &memory).await);
                }
                let want = run_together(&memory, &resolved).await;
                let got = run_together(store, &resolved).await;
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::ReadStream { tenant, stream, from, limit } => {
                let (t, s) = (TENANTS[*tenant], STREAMS[*stream]);
                let want = memory.read_stream(t, s, *from, *limit).await.unwrap();
                let got = store.read_stream(t, s, *from, *limit).await.unwrap();
                prop_assert_eq!(without_ingest_time(got), without_ingest_time(want), "step {}", step);
            }
            Op::ReadAll { after, limit } => {
                let want = memory.read_all(*after, *limit).await.unwrap();
                let got = store.read_all(*after, *limit).await.unwrap();
                prop_assert_eq!(without_ingest_time(got), without_ingest_time(want), "step {}", step);
            }
            Op::Versions => {
                prop_assert_eq!(store.head().await.unwrap(), memory.head().await.unwrap());
                for t in TENANTS {
                    for s in STREAMS {
                        prop_assert_eq!(
                            store.stream_version(t, s).await.unwrap(),
                            memory.stream_version(t, s).await.unwrap()
                        );
                    }
                }
            }
        }
    }

    let want = without_ingest_time(memory.read_all(0, usize::MAX).await.unwrap());
    let got = without_ingest_time(store.read_all(0, usize::MAX).await.unwrap());
    prop_assert_eq!(&got, &want);
    for (i, e) in got.iter().enumerate() {
        prop_assert_eq!(e.position, i as u64 + 1);
    }
    prop_assert!(got.iter().all(|e| e.event_type != "CustomerRegistered" || e.schema_version == 2), "upcast on read");
    prop_assert_eq!(store.head().await.unwrap(), memory.head().await.unwrap());
    prop_assert_eq!(*store.head_watch().borrow(), got.len() as u64);
    let store_saw = without_ingest_time(store_hook.lock().unwrap().clone());
    let memory_saw = without_ingest_time(memory_hook.lock().unwrap().clone());
    prop_assert_eq!(&store_saw, &want, "the store's hook saw the log");
    prop_assert_eq!(&memory_saw, &want, "the memory hook saw the log");

    // And it all survives a reopen.
    drop(opened);
    let reopened = open(dir.path());
    prop_assert_eq!(without_ingest_time(reopened.read_all(0, usize::MAX).await.unwrap()), want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_matches_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check(ops, open_sqlite))?;
    }

    #[test]
    fn log_matches_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check(ops, open_log))?;
    }
}
