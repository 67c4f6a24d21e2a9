//! Schema evolution end to end: a `CustomerRegistered` v1 event written to disk (one `name`)
//! stays v1 on disk — the log is immutable — and reads back upcast to v2
//! (`traits.first_name` / `traits.last_name`) after the store is closed and reopened.

use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::EventStore;
use serde_json::json;

#[tokio::test]
async fn a_v1_event_on_disk_reads_back_as_v2() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut v1 = NewEvent::new(
            uuid::Uuid::now_v7(),
            "CustomerRegistered",
            json!({"email": "ada@example.com", "name": "Ada Lovelace"}),
            chrono::Utc::now(),
        );
        v1.schema_version = 1;
        store.append("t", "customer-c1", ExpectedVersion::NoStream, vec![v1]).await.unwrap();
    }
    // On disk it is still the v1 shape.
    let conn = rusqlite::Connection::open(dir.path().join("events.sqlite")).unwrap();
    let (schema, data): (i64, String) = conn
        .query_row("SELECT schema_version, data FROM events WHERE stream = 'customer-c1'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(schema, 1);
    assert!(data.contains("\"name\":\"Ada Lovelace\""), "{data}");
    drop(conn);

    let store = SqliteStore::open(dir.path()).unwrap();
    for ev in [
        store.read_stream("t", "customer-c1", 1, 10).await.unwrap().remove(0),
        store.read_all(0, 10).await.unwrap().remove(0),
    ] {
        assert_eq!(ev.schema_version, 2);
        assert_eq!(
            ev.data,
            json!({"email": "ada@example.com", "traits": {"first_name": "Ada", "last_name": "Lovelace"}})
        );
    }
}
