//! An erasure cut short between recording `CustomerErased` and destroying the keys (a crash):
//! the next start finishes it, for the customer and their anonymous identities.

use chronicle_core::customer::CustomerCommand;
use chronicle_privacy::{KeyStore, MasterKey, SealedStore};
use chronicle_server::App;
use chronicle_store::log::LogStore;
use std::sync::Arc;

async fn start(dir: &std::path::Path) -> (Arc<App>, Arc<KeyStore>) {
    let keys = Arc::new(KeyStore::open(dir, MasterKey::new(1, [3; 32])).unwrap());
    let store = Arc::new(SealedStore::new(Arc::new(LogStore::open(dir).unwrap()), keys.clone()));
    let app = App::start_sealed(store, Some(dir.join("projections.json")), Some(keys.clone())).await.unwrap();
    (app, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_finishes_an_erasure_whose_keys_were_not_yet_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (app, keys) = start(dir.path()).await;
        app.create_tenant("acme").await.unwrap();
        let register = CustomerCommand::Register {
            email: Some("ada@example.com".into()),
            phone: None,
            traits: Default::default(),
            consents: vec![],
        };
        app.customer_command("acme", "c1", register, "test").await.unwrap();
        app.link_identity("acme", "c1", "anon-1", "test").await.unwrap();
        let page = chronicle_core::envelope::NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", serde_json::json!({"event": "Pricing"}), chrono::Utc::now());
        app.append("acme", "anonymous-anon-1", chronicle_core::envelope::ExpectedVersion::Any, vec![page]).await.unwrap();
        assert!(keys.get("acme", "c1").is_some() && keys.get("acme", "anonymous:anon-1").is_some());
        // The erasure's append, without the key destruction that follows it (the crash).
        app.customer_command("acme", "c1", CustomerCommand::Erase { reason: None }, "test").await.unwrap();
        assert!(keys.get("acme", "c1").is_some());
        app.checkpoint().unwrap();
    }
    let (app, keys) = start(dir.path()).await;
    assert!(keys.get("acme", "c1").is_none(), "the customer's key is destroyed at start");
    assert!(keys.get("acme", "anonymous:anon-1").is_none(), "and their anonymous identity's");
    let evs = app.store().read_stream("acme", "anonymous-anon-1", 1, 10).await.unwrap();
    assert_eq!(evs[0].data, serde_json::json!({"redacted": true}));
    // The same after a start from the log alone (no checkpoint).
    drop(app);
    std::fs::remove_file(dir.path().join("projections.json")).unwrap();
    let (app, _) = start(dir.path()).await;
    assert_eq!(app.customer("acme", "c1").unwrap().anonymous_ids.len(), 1, "the erased record keeps the identities");
}
