//! The contract suite on the embedded SQLite backend, plus what only a durable backend has:
//! reopening, and a second process writing the same file.

use chronicle_core::envelope::ExpectedVersion;
use chronicle_store::contract::{batch, event};
use chronicle_store::sqlite::{SqliteStore, StoreOpenError, DB_FILE};
use chronicle_store::{AppendResult, EventStore};
use std::sync::Arc;

fn fresh() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open store");
    (Arc::new(store), dir)
}

chronicle_store::contract_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything_and_continues_positions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let before = {
        let store = SqliteStore::open(&data).unwrap();
        store.append("t1", "a", ExpectedVersion::NoStream, batch(3)).await.unwrap();
        store.append("t2", "a", ExpectedVersion::NoStream, batch(2)).await.unwrap();
        store.append("t1", "b", ExpectedVersion::Any, batch(1)).await.unwrap();
        store.read_all(0, usize::MAX).await.unwrap()
    };
    assert!(data.join(DB_FILE).exists());

    let store = SqliteStore::open(&data).unwrap();
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), before);
    assert_eq!(store.head().await.unwrap(), 6);
    assert_eq!(*store.head_watch().borrow(), 6);
    assert_eq!(store.stream_version("t1", "a").await.unwrap(), 3);
    // The version check and idempotency still hold against what the earlier process wrote.
    let conflict = store.append("t1", "a", ExpectedVersion::NoStream, batch(1)).await;
    assert!(conflict.is_err());
    let mut replay = event(0);
    replay.id = before[5].id;
    assert_eq!(
        store.append("t1", "b", ExpectedVersion::Any, vec![replay]).await,
        Ok(AppendResult { first_version: 1, last_version: 1, position: 6 })
    );
    assert_eq!(
        store.append("t1", "a", ExpectedVersion::Exact(3), batch(2)).await,
        Ok(AppendResult { first_version: 4, last_version: 5, position: 8 })
    );
    drop(store);
    let store = SqliteStore::open(&data).unwrap();
    assert_eq!(store.head().await.unwrap(), 8);
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap()[..6], before[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_folder_stay_consistent() {
    // E.g. `chronicle import` while `chronicle serve` runs: each writer notices the other's
    // commits (PRAGMA data_version) and reloads its caches.
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(dir.path()).unwrap();
    let b = SqliteStore::open(dir.path()).unwrap();
    for i in 0..10 {
        let (store, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let r = store.append("t1", "s", ExpectedVersion::Exact(i), batch(1)).await.unwrap();
        assert_eq!((r.first_version, r.position), (i + 1, i + 1));
        assert_eq!(other.stream_version("t1", "s").await.unwrap(), i + 1);
        assert_eq!(other.head().await.unwrap(), i + 1);
    }
    let stale = a.append("t1", "s", ExpectedVersion::Exact(9), batch(1)).await;
    assert!(stale.is_err(), "{stale:?}");
}

#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(dir.path()).err().expect("refused");
    assert!(matches!(err, StoreOpenError::UnsupportedFormat { found: 99, .. }), "{err}");
}

/// A layout-1 database (ids unique across tenants) is migrated in place to layout 2, where
/// ids are unique per tenant: its events stay, and an id of one tenant is then free in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_1_database_is_migrated_to_ids_unique_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.append("t1", "a", ExpectedVersion::NoStream, batch(2)).await.unwrap();
        store.read_all(0, usize::MAX).await.unwrap()
    };
    {
        // Back to layout 1's global id index, as an older build left it.
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch("DROP INDEX events_id; CREATE UNIQUE INDEX events_id ON events(id); PRAGMA user_version = 1;").unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), before);
    let mut same = event(0);
    same.id = before[0].id;
    assert_eq!(
        store.append("t2", "a", ExpectedVersion::NoStream, vec![same.clone()]).await,
        Ok(AppendResult { first_version: 1, last_version: 1, position: 3 })
    );
    assert!(store.append("t1", "other", ExpectedVersion::Any, vec![same]).await.is_err(), "still once per tenant");
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    assert_eq!(conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), 2);
}
