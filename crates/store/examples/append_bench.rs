//! Durable append throughput and latency of the embedded backends, and their scan rate.
//!
//! `cargo run --release -p chronicle-store --example append_bench -- [sqlite|log|memory] <writers> <seconds> [dir]`
//!
//! N concurrent writer tasks each append one ~300-byte event at a time, with an exact expected
//! version, to their own share of 100,000 customer streams (picked at random), for the given
//! number of seconds. Every append waits until it is fsync'd. Prints one JSON object:
//! `{"backend","writers","events","seconds","events_per_sec","p50_us","p99_us"}`.
//!
//! `… -- [sqlite|log] scan <events> [dir]` fills a store up to that many such events (16 tasks,
//! batches of 100; a `dir` that already holds them is reused as it is), reopens it (timing the open: the log store rebuilds its indexes there) and
//! reads the whole log back with `read_all_raw` in pages of 10,000, as a projection rebuild
//! does. Prints `{"backend","mode","events","open_seconds","scan_seconds","scan_events_per_sec"}`.
//!
//! The backend defaults to `sqlite`. `memory` (the in-memory reference, nothing durable) measures
//! the harness itself: what the writer tasks cost in CPU on this machine, with no I/O at all.
//! The store lives in a fresh temp dir unless `dir` is given
//! (it must be empty or absent).

use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_store::log::LogStore;
use chronicle_store::memory::MemoryStore;
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::{AppendError, EventStore};
use chrono::Utc;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const STREAMS: usize = 100_000;
const SCAN_PAGE: usize = 10_000;

fn open(backend: &str, dir: &Path) -> Arc<dyn EventStore> {
    match backend {
        "sqlite" => Arc::new(SqliteStore::open(dir).expect("open store")),
        "log" => Arc::new(LogStore::open(dir).expect("open store")),
        "memory" => Arc::new(MemoryStore::new()),
        other => panic!("unknown backend {other:?}: use sqlite, log or memory"),
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let backend = match args.first().map(String::as_str) {
        Some("sqlite" | "log" | "memory") => args.remove(0),
        _ => "sqlite".to_string(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let temp = tempfile::tempdir().expect("temp dir");
    let dir_arg = |i: usize| args.get(i).map_or_else(|| temp.path().to_path_buf(), Into::into);
    let number = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().expect("a number"));

    if args.first().map(String::as_str) == Some("scan") {
        let events = number(1, 1_000_000);
        let dir = dir_arg(2);
        println!("{}", runtime.block_on(scan(&backend, &dir, events)));
        return;
    }

    let writers = number(0, 16).max(1) as usize;
    let seconds = number(1, 5).max(1);
    let dir = dir_arg(2);
    let (events, elapsed, mut latencies) = runtime.block_on(async {
        let store = open(&backend, &dir);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..writers).map(|w| tokio::spawn(writer(store.clone(), w, writers, deadline))).collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.expect("writer task"));
        }
        let elapsed = start.elapsed().as_secs_f64();
        (latencies.len() as u64, elapsed, latencies)
    });
    latencies.sort_unstable();
    let percentile = |p: usize| latencies.get(latencies.len() * p / 100).copied().unwrap_or(0);
    println!(
        "{}",
        json!({
            "backend": backend,
            "writers": writers,
            "events": events,
            "seconds": (elapsed * 100.0).round() / 100.0,
            "events_per_sec": (events as f64 / elapsed).round(),
            "p50_us": percentile(50),
            "p99_us": percentile(99),
        })
    );
}

/// One writer: appends to the streams `w, w + writers, …` below [`STREAMS`] until `deadline`;
/// returns each append's latency in microseconds.
async fn writer(store: Arc<dyn EventStore>, w: usize, writers: usize, deadline: Instant) -> Vec<u32> {
    let streams: Vec<usize> = (w..STREAMS).step_by(writers).collect();
    let mut versions = vec![0u64; streams.len()];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let k = (xorshift(&mut rng) % streams.len() as u64) as usize;
        let customer = streams[k];
        let event = profile_update(customer, versions[k]);
        let started = Instant::now();
        match store
            .append("bench", &format!("customer-{customer}"), ExpectedVersion::Exact(versions[k]), vec![event])
            .await
        {
            Ok(r) => versions[k] = r.last_version,
            Err(AppendError::Conflict { actual, .. }) => {
                versions[k] = actual;
                continue;
            }
            Err(e) => panic!("append failed: {e}"),
        }
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    latencies
}

/// Fills a store with `events` events, reopens it and times a full `read_all_raw` scan.
async fn scan(backend: &str, dir: &Path, events: u64) -> serde_json::Value {
    const FILLERS: u64 = 16;
    const BATCH: u64 = 100;
    let store = open(backend, dir);
    // A folder given again is only topped up, so a scan can be rerun without refilling.
    let missing = events.saturating_sub(store.head().await.expect("head"));
    let batches = missing.div_ceil(BATCH);
    let fillers: Vec<_> = (0..FILLERS)
        .map(|f| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (f + 1);
                for _ in (f..batches).step_by(FILLERS as usize) {
                    let customer = (xorshift(&mut rng) % STREAMS as u64) as usize;
                    let batch = (0..BATCH).map(|v| profile_update(customer, v)).collect();
                    store
                        .append("bench", &format!("customer-{customer}"), ExpectedVersion::Any, batch)
                        .await
                        .expect("fill");
                }
            })
        })
        .collect();
    for f in fillers {
        f.await.expect("filler");
    }
    drop(store);

    let started = Instant::now();
    let store = open(backend, dir);
    let open_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (mut after, mut seen, mut bytes) = (0, 0u64, 0usize);
    loop {
        let page = store.read_all_raw(after, SCAN_PAGE).await.expect("scan");
        let Some(last) = page.last() else { break };
        after = last.position;
        seen += page.len() as u64;
        // Touch every payload, so nothing is optimised away.
        bytes += page.iter().map(|e| e.data.len()).sum::<usize>();
    }
    let scan_seconds = started.elapsed().as_secs_f64();
    assert!(bytes > 0);
    json!({
        "backend": backend,
        "mode": "scan",
        "events": seen,
        "open_seconds": (open_seconds * 1000.0).round() / 1000.0,
        "scan_seconds": (scan_seconds * 1000.0).round() / 1000.0,
        "scan_events_per_sec": (seen as f64 / scan_seconds).round(),
    })
}

/// xorshift64: a cheap, reproducible pick of the next stream.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A realistic ~300-byte `CustomerProfileUpdated` (data plus metadata).
fn profile_update(customer: usize, version: u64) -> NewEvent {
    let data = json!({
        "customer_id": format!("customer-{customer}"),
        "changes": {
            "email": { "old": format!("ada.{customer}@example.com"), "new": format!("ada.king.{customer}@example.org") },
            "plan": { "old": "starter", "new": "growth" },
            "city": { "old": "London", "new": "Cambridge" },
        },
        "revision": version + 1,
    });
    let mut e = NewEvent::new(Uuid::now_v7(), "CustomerProfileUpdated", data, Utc::now()).with_actor("api-key:bench");
    e.metadata = json!({ "ip": "192.0.2.10", "user_agent": "append-bench/1" });
    e
}
