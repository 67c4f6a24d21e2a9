//! Durable append throughput and latency of the embedded store (`SqliteStore`).
//!
//! `cargo run --release -p chronicle-store --example append_bench -- <writers> <seconds> [dir]`
//!
//! N concurrent writer tasks each append one ~300-byte event at a time, with an exact expected
//! version, to their own share of 100,000 customer streams (picked at random), for the given
//! number of seconds. Every append waits until it is fsync'd. Prints one JSON object:
//! `{"writers","events","seconds","events_per_sec","p50_us","p99_us"}`. The store lives in a
//! fresh temp dir unless `dir` is given (it must be empty or absent).

use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::{AppendError, EventStore};
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const STREAMS: usize = 100_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let writers = arg(0, 16).max(1) as usize;
    let seconds = arg(1, 5).max(1);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = args
        .get(2)
        .map_or_else(|| temp.path().to_path_buf(), Into::into);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (events, elapsed, mut latencies) = runtime.block_on(async {
        let store = Arc::new(SqliteStore::open(&dir).expect("open store"));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..writers)
            .map(|w| tokio::spawn(writer(store.clone(), w, writers, deadline)))
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.expect("writer task"));
        }
        let elapsed = start.elapsed().as_secs_f64();
        (latencies.len() as u64, elapsed, latencies)
    });
    latencies.sort_unstable();
    let percentile = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        json!({
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
async fn writer(store: Arc<SqliteStore>, w: usize, writers: usize, deadline: Instant) -> Vec<u32> {
    let streams: Vec<usize> = (w..STREAMS).step_by(writers).collect();
    let mut versions = vec![0u64; streams.len()];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        // xorshift64: a cheap, reproducible pick of the next stream.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = (rng % streams.len() as u64) as usize;
        let customer = streams[k];
        let event = profile_update(customer, versions[k]);
        let started = Instant::now();
        match store
            .append(
                "bench",
                &format!("customer-{customer}"),
                ExpectedVersion::Exact(versions[k]),
                vec![event],
            )
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
    let mut e = NewEvent::new(Uuid::now_v7(), "CustomerProfileUpdated", data, Utc::now())
        .with_actor("api-key:bench");
    e.metadata = json!({ "ip": "192.0.2.10", "user_agent": "append-bench/1" });
    e
}
