//! The log's on-disk format is stable across builds: a log written by an earlier build (when
//! the CRC-32 was computed by a table of Chronicle's own, before `crc32fast`) reads back whole,
//! its index rebuilds, and appends go on after it.

use chronicle_core::envelope::ExpectedVersion;
use chronicle_store::log::LogStore;
use chronicle_store::EventStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_by_an_earlier_build_reads_back_whole() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-written-before-crc32fast/events.log");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&fixture, dir.path().join("events.log")).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.truncated_on_open(), 0, "every frame's CRC checks");
    let all = store.read_all(0, 100).await.unwrap();
    let got: Vec<(u128, &str, &str, &str, u64, u64, i64)> = all
        .iter()
        .map(|e| (e.id.as_u128(), e.tenant.as_str(), e.stream.as_str(), e.event_type.as_str(), e.version, e.position, e.event_time.timestamp()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0x1000, "acme", "customer-c1", "CustomerRegistered", 1, 1, 1_780_000_000),
            (0x1001, "acme", "customer-c1", "NoteAdded", 2, 2, 1_780_000_001),
            (0x1002, "globex", "notes-1", "Noted", 1, 3, 1_780_000_002),
            (0x1003, "acme", "deal-d1", "DealCreated", 1, 4, 1_780_000_003),
        ]
    );
    assert_eq!(all[2].data, serde_json::json!({"n": 2, "text": "event 2 — ünïcode"}));
    let next = store.append("acme", "customer-c1", ExpectedVersion::Exact(2), vec![chronicle_store::contract::event(9)]).await.unwrap();
    assert_eq!((next.first_version, next.position), (3, 5));
    drop(store);
    let reopened = LogStore::open(dir.path()).unwrap();
    assert_eq!(reopened.read_all(0, 100).await.unwrap().len(), 5, "old frames and a new one, both checked on open");
}
