//! An erasure cut short between recording `CustomerErased` and destroying the keys (a crash):
//! the next start finishes it, for the customer and their anonymous identities.

use chronicle_core::customer::CustomerCommand;
use chronicle_privacy::{KeyStore, MasterKey, SealedStore};
use chronicle_app::App;
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

fn register(email: &str) -> CustomerCommand {
    CustomerCommand::Register { email: Some(email.into()), phone: None, traits: Default::default(), consents: vec![] }
}

/// With sealing on, the unique e-mail index holds keyed hashes, not addresses — and still
/// refuses a second customer with the same address, live, after a restart and after a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_email_index_holds_keyed_hashes_and_still_enforces_uniqueness() {
    let dir = tempfile::tempdir().unwrap();
    let check = |app: &Arc<App>| {
        let v = app.views();
        let t = v.tenant("acme").unwrap();
        assert_eq!(t.emails.len(), 1);
        // (Not "ada" alone: a hex digest contains it now and then.)
        assert!(t.emails.keys().all(|k| k.starts_with("h:") && !k.contains("ada@example.com")), "{:?}", t.emails.keys());
        assert_eq!(t.email_owner(v.index_key.as_ref(), "ada@example.com").map(String::as_str), Some("c1"));
    };
    {
        let (app, _) = start(dir.path()).await;
        app.create_tenant("acme").await.unwrap();
        app.customer_command("acme", "c1", register("ada@example.com"), "test").await.unwrap();
        check(&app);
        let dup = app.customer_command("acme", "c2", register("Ada@Example.com"), "test").await;
        assert!(dup.is_err(), "a second customer with the address is refused");
        app.checkpoint().unwrap();
    }
    let (app, _) = start(dir.path()).await;
    check(&app);
    assert!(app.customer_command("acme", "c3", register("ada@example.com"), "test").await.is_err());
    // A replay hashes alike: the views equal the live ones.
    let replay = chronicle_app::maintenance::replay(app.store(), |_| ()).await.unwrap();
    assert_eq!(chronicle_projections::diff(&app.views(), &replay.projections), Vec::<String>::new());
    drop(app);
    std::fs::remove_file(dir.path().join("projections.json")).unwrap();
    let (app, _) = start(dir.path()).await;
    check(&app);
}

/// A crash lost the record of which customer a pooled key went to: the events still open (they
/// name the key's slot), and erasing the customer destroys that key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_destroys_a_key_whose_owner_record_a_crash_lost() {
    let dir = tempfile::tempdir().unwrap();
    let slot = {
        let (app, keys) = start(dir.path()).await;
        app.create_tenant("acme").await.unwrap();
        app.customer_command("acme", "c1", register("lost@example.com"), "test").await.unwrap();
        app.checkpoint().unwrap();
        keys.get("acme", "c1").unwrap().slot().expect("a pooled key")
    };
    // The owner's digest in the slot never reached the disk.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(dir.path().join("keys.bin")).unwrap();
        f.write_all_at(&[0u8; 32], 16 + slot * 128 + 1).unwrap();
    }
    let (app, keys) = start(dir.path()).await;
    assert!(keys.get("acme", "c1").is_none() && keys.orphans() > 0);
    let evs = app.store().read_stream("acme", "customer-c1", 1, 10).await.unwrap();
    assert_eq!(evs[0].data["email"], "lost@example.com", "still opens, by slot");
    // A later event takes a new key; the erasure destroys both.
    app.customer_command("acme", "c1", CustomerCommand::Tag { tag: "vip".into() }, "test").await.unwrap();
    let erased = app.erase_customer("acme", "c1", "test").await.unwrap();
    assert_eq!(erased.keys_destroyed, 2, "the new key and the orphan");
    assert!(keys.get_slot(slot).is_none());
    let evs = app.store().read_stream("acme", "customer-c1", 1, 10).await.unwrap();
    assert!(evs.iter().filter(|e| e.event_type != "CustomerErased").all(|e| e.data == serde_json::json!({"redacted": true})), "{evs:?}");
}

/// A checkpoint kept elsewhere part of the time (shared by nodes, held by another's lease).
struct Shared {
    file: chronicle_projections::CheckpointFile,
    mine: std::sync::atomic::AtomicBool,
}

impl chronicle_projections::CheckpointPlace for Shared {
    fn describe(&self) -> String {
        self.file.describe()
    }
    fn read(&self) -> Result<Option<Vec<u8>>, chronicle_projections::CheckpointError> {
        self.file.read()
    }
    fn claim(&self) -> Result<bool, chronicle_projections::CheckpointError> {
        Ok(self.mine.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn write(&self, position: u64, bytes: &[u8]) -> Result<chronicle_projections::Saved, chronicle_projections::CheckpointError> {
        match self.mine.load(std::sync::atomic::Ordering::SeqCst) {
            true => self.file.write(position, bytes),
            false => Ok(chronicle_projections::Saved::NotMine),
        }
    }
    fn remove(&self) -> Result<Option<String>, chronicle_projections::CheckpointError> {
        self.file.remove()
    }
}

/// An erasure applied while another node kept the shared checkpoint: when this node keeps it
/// later, it still writes under a new key and destroys the key of the checkpoint it replaces
/// (written before the erasure, and sealed under a key this node took over when it started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_keeps_the_checkpoint_after_an_erasure_rotates_the_key_it_replaces() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("projections.json");
    let place = Arc::new(Shared { file: chronicle_projections::CheckpointFile(path.clone()), mine: true.into() });
    let keys = Arc::new(KeyStore::open(dir.path(), MasterKey::new(1, [3; 32])).unwrap());
    let store = Arc::new(SealedStore::new(Arc::new(LogStore::open(dir.path()).unwrap()), keys.clone()));
    let app = App::start_at(store, Some(place.clone()), Some(keys.clone())).await.unwrap();
    app.create_tenant("acme").await.unwrap();
    app.customer_command("acme", "c1", register("gone@example.com"), "test").await.unwrap();
    assert!(app.checkpoint().unwrap().is_some());
    let before = chronicle_projections::sealed_key_name(&path).expect("sealed");
    assert!(keys.get("_system", &before).is_some());

    place.mine.store(false, Ordering::SeqCst);
    app.customer_command("acme", "c1", CustomerCommand::Erase { reason: None }, "test").await.unwrap();
    assert_eq!(app.checkpoint().unwrap(), None, "another node keeps it: nothing written");
    assert_eq!(chronicle_projections::sealed_key_name(&path).as_deref(), Some(before.as_str()));
    assert_eq!(app.checkpoint().unwrap(), None);

    place.mine.store(true, Ordering::SeqCst);
    assert!(app.checkpoint().unwrap().is_some());
    let after = chronicle_projections::sealed_key_name(&path).expect("sealed");
    assert_ne!(after, before, "written under a new key");
    assert!(keys.get("_system", &before).is_none(), "the key of the checkpoint that held the person is destroyed");
    assert!(keys.get("_system", &after).is_some());
    // No erasure since: the next checkpoint keeps the key.
    assert!(app.checkpoint().unwrap().is_some());
    assert_eq!(chronicle_projections::sealed_key_name(&path), Some(after));
}

/// Issue 17, item 6: an erasure forgets every address of the person's that bounced — not only
/// the current one — live and on replay alike, so a new customer at the old address is mailed
/// and `verify` (live views against a replay) finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_forgets_every_bounced_address_of_the_person() {
    use chronicle_core::envelope::{ExpectedVersion, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = start(dir.path()).await;
    app.create_tenant("acme").await.unwrap();
    app.customer_command("acme", "c1", register("old@example.com"), "test").await.unwrap();
    let bounce = serde_json::json!({"email": "old@example.com", "provider": "sendgrid", "provider_event_id": "sg-1",
                                    "at": "2026-01-01T00:00:00Z", "kind": "bounce"});
    let ev = NewEvent::new(uuid::Uuid::now_v7(), "MessageBounced", bounce, chrono::Utc::now());
    app.append("acme", "customer-c1", ExpectedVersion::Any, vec![ev]).await.unwrap();
    assert!(app.views().tenant("acme").unwrap().automation.bounced("old@example.com"));
    let moved = CustomerCommand::UpdateProfile { email: Some("new@example.com".into()), phone: None, traits: Default::default() };
    app.customer_command("acme", "c1", moved, "test").await.unwrap();
    app.erase_customer("acme", "c1", "test").await.unwrap();

    let bounced = app.views().tenant("acme").unwrap().automation.bounced.clone();
    assert!(bounced.is_empty(), "the erased person's old address is forgotten: {bounced:?}");
    // A new customer at the old address is not suppressed as bounced.
    app.customer_command("acme", "c2", register("old@example.com"), "test").await.unwrap();
    assert!(!app.views().tenant("acme").unwrap().automation.bounced("old@example.com"));
    // The live views equal a replay of the log (what `chronicle verify` checks).
    let replay = chronicle_app::maintenance::replay(app.store(), |_| ()).await.unwrap();
    assert_eq!(chronicle_projections::diff(&app.views(), &replay.projections), Vec::<String>::new());
}

/// Issue 17 (suspected, confirmed): the names of the checkpoint keys to destroy after an
/// erasure lived only in memory, so a crash after the new checkpoint was written and before
/// the old key was destroyed left that key — which opens the checkpoint that held the person —
/// in `keys.bin` for good. The names now travel in the new checkpoint, and a start destroys
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_old_checkpoint_key_is_destroyed_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("projections.json");
    let old = {
        let (app, keys) = start(dir.path()).await;
        app.create_tenant("acme").await.unwrap();
        app.customer_command("acme", "c1", register("gone@example.com"), "test").await.unwrap();
        app.checkpoint().unwrap();
        let old = chronicle_projections::sealed_key_name(&path).expect("sealed");
        app.customer_command("acme", "c1", CustomerCommand::Erase { reason: None }, "test").await.unwrap();
        app.checkpoint().unwrap();
        assert_ne!(chronicle_projections::sealed_key_name(&path).unwrap(), old);
        // The crash: the old key's destruction never reached the disk.
        keys.get_or_create("_system", &old).unwrap();
        old
    };
    let (_app, keys) = start(dir.path()).await;
    assert!(keys.get("_system", &old).is_none(), "the start destroyed the key of the checkpoint that held the person");
}
