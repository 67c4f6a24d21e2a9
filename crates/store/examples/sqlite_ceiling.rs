//! What SQLite alone can do on this disk: no channel, no async, no validation, one thread
//! inserting groups of N single-event appends to random streams of 100,000, one transaction
//! (one fsync, `synchronous=FULL`, WAL) per group, with the store's exact table. It bounds what
//! `SqliteStore` can reach, and shows what the per-stream index costs (docs/adr/0001).
//!
//! `cargo run --release -p chronicle-store --example sqlite_ceiling -- <group> <seconds> [no-stream-index]`
//!
//! Prints `{"group","stream_index","events_per_sec","insert_us_per_event","commit_us_per_group","wal_pages_per_group"}`.

use rusqlite::{params, Connection};
use serde_json::json;
use std::time::{Duration, Instant};

const TABLE: &str = "CREATE TABLE events (
    position INTEGER PRIMARY KEY, id BLOB NOT NULL, tenant TEXT NOT NULL, stream TEXT NOT NULL,
    version INTEGER NOT NULL, type TEXT NOT NULL, schema_version INTEGER NOT NULL,
    event_time INTEGER NOT NULL, ingest_time INTEGER NOT NULL, source TEXT NOT NULL,
    causation_id BLOB, correlation_id BLOB, actor TEXT, data TEXT NOT NULL, metadata TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX events_id ON events(id);";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let group: usize = args.first().map_or(64, |a| a.parse().expect("group size"));
    let seconds: u64 = args.get(1).map_or(5, |a| a.parse().expect("seconds"));
    let stream_index = args.get(2).is_none_or(|a| a != "no-stream-index");

    let dir = tempfile::tempdir().expect("temp dir");
    let conn = Connection::open(dir.path().join("events.sqlite")).expect("open");
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).expect("wal");
    conn.pragma_update(None, "synchronous", "FULL").expect("pragma");
    conn.pragma_update(None, "cache_size", -64 * 1024).expect("pragma");
    // Checkpoint by hand (as often as the default autocheckpoint, and timed as part of the
    // commit) with TRUNCATE, so the WAL's growth per commit counts the pages each group wrote.
    conn.pragma_update(None, "wal_autocheckpoint", 0).expect("pragma");
    conn.execute_batch(TABLE).expect("schema");
    if stream_index {
        conn.execute_batch("CREATE UNIQUE INDEX events_stream ON events(tenant, stream, version);").expect("index");
    }

    let data = json!({ "customer_id": "customer-00000", "changes": { "email": { "old": "a@example.com", "new": "b@example.org" },
        "plan": { "old": "starter", "new": "growth" }, "city": { "old": "London", "new": "Cambridge" } }, "revision": 1 })
    .to_string();
    let metadata = json!({ "ip": "192.0.2.10", "user_agent": "append-bench/1" }).to_string();
    let mut versions = vec![0i64; 100_000];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut position, mut events, mut groups) = (0i64, 0u64, 0u64);
    let (mut inserting, mut committing) = (Duration::ZERO, Duration::ZERO);
    let wal_bytes = || std::fs::metadata(dir.path().join("events.sqlite-wal")).map_or(0, |m| m.len());
    let mut frames_written = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let t0 = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .expect("prepare");
            for _ in 0..group {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let s = (rng % versions.len() as u64) as usize;
                versions[s] += 1;
                position += 1;
                let now = chrono::Utc::now().timestamp_micros();
                insert
                    .execute(params![
                        position,
                        &uuid::Uuid::now_v7().as_bytes()[..],
                        "bench",
                        format!("customer-{s}"),
                        versions[s],
                        "CustomerProfileUpdated",
                        1,
                        now,
                        now,
                        "chronicle",
                        None::<&[u8]>,
                        None::<&[u8]>,
                        "api-key:bench",
                        data,
                        metadata
                    ])
                    .expect("insert");
            }
        }
        let t1 = Instant::now();
        let before = wal_bytes();
        conn.execute_batch("COMMIT").expect("commit");
        let after = wal_bytes();
        // A frame is a 24-byte header and one 4 KiB page; a fresh WAL starts with a 32-byte header.
        frames_written += (after - before.max(32)) / 4120;
        if after > 1000 * 4120 {
            let _: (i64, i64, i64) = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("checkpoint");
        }
        inserting += t1 - t0;
        committing += t1.elapsed();
        events += group as u64;
        groups += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "group": group,
            "stream_index": stream_index,
            "events_per_sec": (events as f64 / elapsed).round(),
            "insert_us_per_event": (inserting.as_secs_f64() / events as f64 * 1e7).round() / 10.0,
            "commit_us_per_group": (committing.as_secs_f64() / groups as f64 * 1e6).round(),
            "wal_pages_per_group": (frames_written as f64 / groups as f64).round(),
        })
    );
}
