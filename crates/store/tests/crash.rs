//! Crash safety of the durable backends (`SqliteStore`, `LogStore`): a child process (this test
//! binary, re-run in child mode) appends 3-event batches from several tasks and prints every
//! acknowledgement; the parent kills it with SIGKILL mid-stream, reopens the folder and checks
//! that every acknowledged batch is there at its acknowledged position, every batch is whole or
//! absent, and positions and versions have no gap. This runs for several rounds on the same
//! folder, so each round's child also writes on top of a log recovered from a kill.

use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_store::log::LogStore;
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::EventStore;
use chrono::Utc;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use uuid::Uuid;

const CHILD_ENV: &str = "CHRONICLE_STORE_CRASH_CHILD_DIR";
const BACKEND_ENV: &str = "CHRONICLE_STORE_CRASH_BACKEND";
const ROUND_ENV: &str = "CHRONICLE_STORE_CRASH_ROUND";
const TASKS: u64 = 8;
const BATCH: u64 = 3;
const ACKS_PER_ROUND: usize = 400;
const ROUNDS: u64 = 3;

/// One stored event of a batch: (index in the batch, version, position).
type Stored = (u64, u64, u64);
/// One acknowledgement: (round, task, batch, first version, position).
type Ack = (u64, u64, u64, u64, u64);

fn open(backend: &str, dir: &Path) -> Arc<dyn EventStore> {
    match backend {
        "sqlite" => Arc::new(SqliteStore::open(dir).unwrap()),
        "log" => Arc::new(LogStore::open(dir).unwrap()),
        other => panic!("unknown backend {other}"),
    }
}

/// Child mode: appends until killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let backend = std::env::var(BACKEND_ENV).unwrap();
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = open(&backend, Path::new(&dir));
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for batch in 0u64.. {
                        let events = (0..BATCH)
                            .map(|i| {
                                let data = json!({ "round": round, "task": task, "batch": batch, "i": i });
                                NewEvent::new(Uuid::now_v7(), "CrashTestEvent", data, Utc::now())
                            })
                            .collect();
                        let r =
                            store.append("t1", &format!("task-{task}"), ExpectedVersion::Any, events).await.unwrap();
                        println!("ACK {round} {task} {batch} {} {}", r.first_version, r.position);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Runs one child on `dir` until it has acknowledged [`ACKS_PER_ROUND`] batches, then SIGKILLs it.
fn crash_round(backend: &str, dir: &Path, round: u64) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(BACKEND_ENV, backend)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let n: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
        acked.push((n[0], n[1], n[2], n[3], n[4]));
        if acked.len() == ACKS_PER_ROUND {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), ACKS_PER_ROUND, "the child stopped early");
    acked
}

async fn kill_9_leaves_whole_groups_only(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    for round in 0..ROUNDS {
        acked.extend(crash_round(backend, dir.path(), round));
        check(backend, dir.path(), &acked).await;
    }
}

/// Reopens the folder and checks the log against every acknowledgement so far.
async fn check(backend: &str, dir: &Path, acked: &[Ack]) {
    let store = open(backend, dir);
    let log = store.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(store.head().await.unwrap(), log.len() as u64);
    // (round, task, batch) → [(index in batch, version, position)]
    let mut batches: HashMap<(u64, u64, u64), Vec<Stored>> = HashMap::new();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "gap-free positions");
        let v = versions.entry(e.stream.as_str()).or_default();
        *v += 1;
        assert_eq!(e.version, *v, "contiguous versions");
        if e.stream.starts_with("after-") {
            continue;
        }
        let field = |k: &str| e.data[k].as_u64().unwrap();
        batches.entry((field("round"), field("task"), field("batch"))).or_default().push((
            field("i"),
            e.version,
            e.position,
        ));
    }
    for (key, events) in &batches {
        assert_eq!(events.len() as u64, BATCH, "batch {key:?} is torn: {events:?}");
        for (k, (i, v, p)) in events.iter().enumerate() {
            assert_eq!((*i, *v, *p), (k as u64, events[0].1 + k as u64, events[0].2 + k as u64));
        }
    }
    for &(round, task, batch, first_version, position) in acked {
        let events = batches
            .get(&(round, task, batch))
            .unwrap_or_else(|| panic!("acknowledged batch {round}/{task}/{batch} lost"));
        assert_eq!((events[0].1, events[BATCH as usize - 1].2), (first_version, position));
    }
    // The reopened store carries on from where the killed one stopped.
    let round = acked.last().map_or(0, |a| a.0);
    let next = store
        .append(
            "t1",
            &format!("after-{round}"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(Uuid::now_v7(), "CrashTestEvent", json!({}), Utc::now())],
        )
        .await
        .unwrap();
    assert_eq!(next.position, log.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_leaves_whole_groups_only() {
    kill_9_leaves_whole_groups_only("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_kill_9_leaves_whole_groups_only() {
    kill_9_leaves_whole_groups_only("log").await;
}
