//! Retention at the storage level (`expire`) on both embedded backends: expired events become
//! tombstones and the record is appended in the same atomic step.

use chronicle_core::envelope::NewEvent;
use chronicle_store::expire::{tombstone_data, ExpireError, Expired, Expiry, EXPIRED_TYPE};
use chronicle_store::log::LogStore;
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::{AppendError, EventStore};
use chronicle_core::envelope::ExpectedVersion;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

type Open = fn(&Path) -> Arc<dyn EventStore>;
type Expire = fn(&Path, &Expiry<'_>) -> Result<Expired, ExpireError>;

fn open_log(dir: &Path) -> Arc<dyn EventStore> {
    Arc::new(LogStore::open(dir).unwrap())
}

fn open_sqlite(dir: &Path) -> Arc<dyn EventStore> {
    Arc::new(SqliteStore::open(dir).unwrap())
}

fn tracked(secret: &str) -> NewEvent {
    let mut e = NewEvent::new(Uuid::now_v7(), "ActivityTracked", serde_json::json!({"secret": secret}), chronicle_store::contract::event_time())
        .with_actor("key:abc");
    e.correlation_id = Some(Uuid::now_v7());
    e
}

/// Every byte of every file in `dir`.
fn folder_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn expires_into_tombstones(open: Open, expire: Expire) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tracked("gone-1"), tracked("kept-2"));
    let (a_id, b_id) = (a.id, b.id);
    {
        let store = open(dir.path());
        store.append("t", "customer-1", ExpectedVersion::Any, vec![a, b]).await.unwrap();
        store.append("t", "customer-2", ExpectedVersion::Any, vec![tracked("gone-3")]).await.unwrap();
    }
    let record = NewEvent::new(Uuid::now_v7(), "RetentionApplied", serde_json::json!({"expired": 2}), chronicle_store::contract::event_time());
    let record_id = record.id;

    // Bad requests change nothing.
    let bad = expire(dir.path(), &Expiry { positions: &[3, 1], records: vec![] });
    assert!(matches!(bad, Err(ExpireError::Invalid(_))), "{bad:?}");
    let beyond = expire(dir.path(), &Expiry { positions: &[1, 9], records: vec![] });
    assert!(matches!(beyond, Err(ExpireError::Invalid(_))), "{beyond:?}");
    let reused = tracked("x");
    let reused = NewEvent { id: a_id, ..reused };
    let clash = expire(dir.path(), &Expiry { positions: &[1], records: vec![("t".into(), "retention".into(), reused)] });
    assert!(matches!(clash, Err(ExpireError::Invalid(_))), "{clash:?}");
    assert!(contains(&folder_bytes(dir.path()), "gone-1"));

    let done = expire(
        dir.path(),
        &Expiry { positions: &[1, 3], records: vec![("t".into(), "retention".into(), record.clone())] },
    )
    .unwrap();
    assert_eq!((done.expired, done.head), (2, 4));

    let bytes = folder_bytes(dir.path());
    assert!(!contains(&bytes, "gone-1") && !contains(&bytes, "gone-3"), "an expired payload is still on disk");
    assert!(contains(&bytes, "kept-2"));

    let store = open(dir.path());
    let all = store.read_all(0, 10).await.unwrap();
    let summary: Vec<(u64, &str, &str, u64)> =
        all.iter().map(|e| (e.position, e.stream.as_str(), e.event_type.as_str(), e.version)).collect();
    assert_eq!(
        summary,
        vec![
            (1, "customer-1", EXPIRED_TYPE, 1),
            (2, "customer-1", "ActivityTracked", 2),
            (3, "customer-2", EXPIRED_TYPE, 1),
            (4, "retention", "RetentionApplied", 1),
        ]
    );
    assert_eq!(all[0].id, a_id);
    assert_eq!(all[0].data, tombstone_data("ActivityTracked"));
    assert_eq!((all[0].actor.as_deref(), all[0].correlation_id), (None, None));
    assert_eq!(all[0].event_time, all[1].event_time, "the event time is kept");
    assert_eq!((all[1].id, all[3].id), (b_id, record_id));

    // An expired event redelivered is still a replay, not a new event.
    let again = NewEvent { id: a_id, ..tracked("gone-1") };
    let replay = store.append("t", "customer-1", ExpectedVersion::Any, vec![again]).await.unwrap();
    assert_eq!(replay.position, 1);
    assert_eq!(store.head().await.unwrap(), 4);
    // Appends go on after the record.
    let next = store.append("t", "customer-1", ExpectedVersion::Exact(2), vec![tracked("new")]).await.unwrap();
    assert_eq!((next.position, next.first_version), (5, 3));
    let stale = store.append("t", "customer-1", ExpectedVersion::Exact(2), vec![tracked("late")]).await;
    assert!(matches!(stale, Err(AppendError::Conflict { .. })));
    drop(store);

    // Expiring a tombstone again counts nothing and keeps it.
    let second = NewEvent::new(Uuid::now_v7(), "RetentionApplied", serde_json::json!({}), chronicle_store::contract::event_time());
    let done = expire(dir.path(), &Expiry { positions: &[1, 2], records: vec![("t".into(), "retention".into(), second)] })
        .unwrap();
    assert_eq!((done.expired, done.head), (1, 6));
    let store = open(dir.path());
    let all = store.read_all(0, 10).await.unwrap();
    assert_eq!(all[5].version, 2, "the second record follows the first on its stream");
    assert!(all[..2].iter().all(|e| e.event_type == EXPIRED_TYPE));
}

#[tokio::test]
async fn log_store_expires_into_tombstones() {
    expires_into_tombstones(open_log, LogStore::expire).await;
}

#[tokio::test]
async fn sqlite_store_expires_into_tombstones() {
    expires_into_tombstones(open_sqlite, SqliteStore::expire).await;
}
