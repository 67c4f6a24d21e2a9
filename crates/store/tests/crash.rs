//! Crash safety of `SqliteStore`: a child process (this test binary, re-run in child mode)
//! appends 3-event batches from several tasks and prints every acknowledgement; the parent kills
//! it with SIGKILL mid-stream, reopens the folder and checks that every acknowledged batch is
//! there at its acknowledged position, every batch is whole or absent, and positions and
//! versions have no gap.

use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::EventStore;
use chrono::Utc;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use uuid::Uuid;

const CHILD_ENV: &str = "CHRONICLE_STORE_CRASH_CHILD_DIR";
const TASKS: u64 = 8;
const BATCH: u64 = 3;

/// One stored event of a batch: (index in the batch, version, position).
type Stored = (u64, u64, u64);

/// Child mode: appends until killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = Arc::new(SqliteStore::open(std::path::Path::new(&dir)).unwrap());
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for batch in 0u64.. {
                        let events = (0..BATCH)
                            .map(|i| {
                                let data = json!({ "task": task, "batch": batch, "i": i });
                                NewEvent::new(Uuid::now_v7(), "CrashTestEvent", data, Utc::now())
                            })
                            .collect();
                        let r = store
                            .append("t1", &format!("task-{task}"), ExpectedVersion::Any, events)
                            .await
                            .unwrap();
                        println!("ACK {task} {batch} {} {}", r.first_version, r.position);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_whole_groups_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked: Vec<(u64, u64, u64, u64)> = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let n: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
        acked.push((n[0], n[1], n[2], n[3]));
        if acked.len() == 400 {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), 400, "the child stopped early");

    let store = SqliteStore::open(dir.path()).unwrap();
    let log = store.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(store.head().await.unwrap(), log.len() as u64);
    // (task, batch) → [(index in batch, version, position)]
    let mut batches: HashMap<(u64, u64), Vec<Stored>> = HashMap::new();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "gap-free positions");
        let v = versions.entry(e.stream.as_str()).or_default();
        *v += 1;
        assert_eq!(e.version, *v, "contiguous versions");
        let field = |k: &str| e.data[k].as_u64().unwrap();
        batches
            .entry((field("task"), field("batch")))
            .or_default()
            .push((field("i"), e.version, e.position));
    }
    for ((task, batch), events) in &batches {
        assert_eq!(
            events.len() as u64,
            BATCH,
            "batch {task}/{batch} is torn: {events:?}"
        );
        for (k, (i, v, p)) in events.iter().enumerate() {
            assert_eq!(
                (*i, *v, *p),
                (k as u64, events[0].1 + k as u64, events[0].2 + k as u64)
            );
        }
    }
    for (task, batch, first_version, position) in acked {
        let events = batches
            .get(&(task, batch))
            .unwrap_or_else(|| panic!("acknowledged batch {task}/{batch} lost"));
        assert_eq!(
            (events[0].1, events[BATCH as usize - 1].2),
            (first_version, position)
        );
    }
    // The reopened store carries on from where the killed one stopped.
    let next = store
        .append(
            "t1",
            "after",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                Uuid::now_v7(),
                "CrashTestEvent",
                json!({}),
                Utc::now(),
            )],
        )
        .await
        .unwrap();
    assert_eq!(next.position, log.len() as u64 + 1);
}
