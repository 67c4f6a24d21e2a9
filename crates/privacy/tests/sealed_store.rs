//! The store contract on the sealing layer (over the embedded log), and what sealing promises:
//! the log on disk never holds the personal data, readers and the commit hook see it while the
//! key exists, and nothing of it after the key is destroyed.

use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_privacy::{KeyStore, MasterKey, SealedStore};
use chronicle_store::log::{LogStore, LOG_FILE};
use chronicle_store::{Committed, EventStore};
use serde_json::json;
use std::sync::{Arc, Mutex};

fn fresh() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(LogStore::open(dir.path()).expect("open store"));
    let keys = Arc::new(KeyStore::open(dir.path(), MasterKey::new(1, [7; 32])).unwrap());
    (Arc::new(SealedStore::new(log, keys)), dir)
}

chronicle_store::contract_tests!(fresh());

fn ev(ty: &str, data: serde_json::Value) -> NewEvent {
    NewEvent::new(uuid::Uuid::now_v7(), ty, data, chrono::Utc::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_sealed_on_disk_readable_with_the_key_and_gone_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(LogStore::open(dir.path()).unwrap());
    let keys = Arc::new(KeyStore::open(dir.path(), MasterKey::new(1, [7; 32])).unwrap());
    let store = SealedStore::new(log, keys.clone());
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let s = seen.clone();
    store.set_commit_hook(Arc::new(move |evs: &[Committed<'_>]| {
        s.lock().unwrap().extend(evs.iter().map(|c| c.envelope().data));
    }));
    let registered = json!({"email": "ada@example.com", "phone": "+351910000000", "traits": {"first_name": "Adelgunde"}});
    let queued = json!({"message": "m1", "channel": "email", "purpose": "marketing", "to": "ada@example.com", "subject": "Hi Adelgunde", "body": "Adelgunde"});
    store
        .append("t", "customer-c1", ExpectedVersion::Any, vec![ev("CustomerRegistered", registered.clone()), ev("MessageQueued", queued.clone())])
        .await
        .unwrap();
    let page = json!({"kind": "page", "event": "Pricing", "properties": {}, "context": {"ip": "203.0.113.9"}});
    store.append("t", "anonymous-a1", ExpectedVersion::Any, vec![ev("ActivityTracked", page.clone())]).await.unwrap();
    store.append("t", "order-o1", ExpectedVersion::Any, vec![ev("OrderPlaced", json!({"total": 100}))]).await.unwrap();
    store.append("t", "customer-c1", ExpectedVersion::Any, vec![ev("CustomerErased", json!({}))]).await.unwrap();

    let disk = String::from_utf8_lossy(&std::fs::read(dir.path().join(LOG_FILE)).unwrap()).into_owned();
    for secret in ["ada@example.com", "+351910000000", "Adelgunde", "203.0.113.9"] {
        assert!(!disk.contains(secret), "{secret} is on disk in the clear");
    }
    assert!(disk.contains("\"total\":100"), "streams without an owner are not sealed");
    assert!(disk.contains("\"message\":\"m1\""), "what the outbox folds stays clear");

    // Readers and the hook see the plaintext.
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all[0].data, registered);
    assert_eq!(all[1].data, queued);
    assert_eq!(all[2].data, page);
    assert_eq!(seen.lock().unwrap()[..3], [registered.clone(), queued.clone(), page.clone()]);
    let mut raw = store.read_all_raw(0, 100).await.unwrap();
    assert!(!raw[0].data.contains("ada@"), "raw reads hand out the sealed form");
    store.open_raw(&mut raw[0]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw[0].data).unwrap(), registered);

    // The keys destroyed: redacted everywhere, in every read.
    assert!(keys.destroy("t", "c1").unwrap());
    assert!(keys.destroy("t", "anonymous:a1").unwrap());
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all[0].data, json!({"redacted": true}));
    assert_eq!(all[1].data, json!({"message": "m1", "channel": "email", "purpose": "marketing"}));
    assert_eq!(all[2].data, json!({"redacted": true}));
    assert_eq!(all[3].data, json!({"total": 100}));
    let mut raw = store.read_all_raw(0, 100).await.unwrap();
    store.open_raw(&mut raw[0]);
    assert_eq!(raw[0].data, r#"{"redacted":true}"#);
    assert_eq!(store.read_stream("t", "customer-c1", 1, 10).await.unwrap()[0].data, json!({"redacted": true}));
}
