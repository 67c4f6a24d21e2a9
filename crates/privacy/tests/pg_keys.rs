//! The key store in PostgreSQL (`PgKeyStore`), as two nodes see it: one key per owner whichever
//! node asks first, a key one node made fetched by the other, a destroyed key forgotten by
//! every node and gone from the table, and a node with another master key refused. Runs against
//! `CHRONICLE_TEST_DATABASE_URL` (else 127.0.0.1:5432, database `test`), a schema per test;
//! without a server it fails, unless `CHRONICLE_TEST_ALLOW_SKIP=1` (then it skips, saying why).

use chronicle_privacy::{Keys, MasterKey, PgKeyStore};
use chronicle_store::contract::allow_skip;
use chronicle_store::postgres::PgStore;
use std::time::{Duration, Instant};

fn url() -> String {
    std::env::var("CHRONICLE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let _ = rt.block_on(PgStore::drop_schema(&url(), &schema));
        })
        .join();
    }
}

/// A migrated schema of its own (the event store owns the migrations).
async fn schema() -> Option<Schema> {
    let name = format!("keys_{}", uuid::Uuid::new_v4().simple());
    match PgStore::connect_in(&url(), &name).await {
        Ok(_) => Some(Schema(name)),
        Err(e) if allow_skip() => {
            eprintln!("skipped: no PostgreSQL at {} ({e})", url());
            None
        }
        Err(e) => panic!("PostgreSQL at {} is required (CHRONICLE_TEST_ALLOW_SKIP=1 skips): {e}", url()),
    }
}

fn master() -> MasterKey {
    MasterKey::new(1, [9; 32])
}

async fn rows(schema: &str, sql: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_keys_and_forget_the_destroyed_ones() {
    let Some(s) = schema().await else { return };
    let a = PgKeyStore::open(&url(), &s.0, master()).await.unwrap();
    let b = PgKeyStore::open(&url(), &s.0, master()).await.unwrap();

    // One key per owner, whichever node asks first.
    let (ka, kb) = (a.get_or_create("_system", "index"), b.get_or_create("_system", "index"));
    assert_eq!(ka.unwrap().bytes(), kb.unwrap().bytes());

    // A pooled key node A hands out: node B fetches it by the slot a sealed value names.
    let key = a.assign("acme", "c1").unwrap();
    let slot = key.slot().expect("every key names its slot");
    let sealed = key.seal("ada@example.com");
    assert!(sealed.starts_with(&format!("enc:v2:{slot}:")), "{sealed}");
    assert!(b.get_slot(slot).is_none());
    let acme = |slot: u64| vec![("acme".to_owned(), slot)];
    assert_eq!(b.missing(&acme(slot)), acme(slot));
    b.fetch(acme(slot)).await.unwrap();
    assert_eq!(b.get_slot(slot).expect("fetched").open(&sealed).as_deref(), Some("ada@example.com"));
    assert_eq!(a.get("acme", "c1").unwrap().bytes(), key.bytes(), "node A knows whose it is");

    // A sample the key does not open destroys nothing.
    let other = a.assign("acme", "c2").unwrap();
    assert_eq!(a.destroy_slots_opening("acme", &[(slot, other.seal("x"))]).unwrap(), 0);
    assert!(a.get_slot(slot).is_some());

    // Destroyed on A: gone from the table, forgotten by B when told, never fetched again.
    assert!(a.destroy("acme", "c1").unwrap());
    assert!(a.get_slot(slot).is_none() && a.get("acme", "c1").is_none());
    assert_eq!(rows(&s.0, &format!("SELECT count(*) FROM keys WHERE slot = {slot}")).await, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.get_slot(slot).is_some() {
        assert!(Instant::now() < deadline, "node B still holds the destroyed key");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.fetch(acme(slot)).await.unwrap();
    assert!(b.get_slot(slot).is_none() && b.missing(&acme(slot)).is_empty(), "a destroyed slot stays missing");
    assert!(!a.destroy("acme", "c1").unwrap(), "nothing left to destroy");

    // By slot, with proof: the key that opens the sample goes.
    let other_slot = other.slot().unwrap();
    b.fetch(acme(other_slot)).await.unwrap();
    // Only the tenant's own keys: the slot under another tenant is not found, so stays.
    assert_eq!(b.destroy_slots_opening("globex", &[(other_slot, other.seal("x"))]).unwrap(), 0);
    assert_eq!(rows(&s.0, &format!("SELECT count(*) FROM keys WHERE tenant = 'acme' AND slot = {other_slot}")).await, 1);
    assert_eq!(b.destroy_slots_opening("acme", &[(other_slot, other.seal("x"))]).unwrap(), 1);
    assert_eq!(rows(&s.0, &format!("SELECT count(*) FROM keys WHERE slot = {other_slot}")).await, 0);

    // A node reopening holds every key left, and the owners recorded for pooled keys.
    let c2 = a.assign("acme", "c3").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rows(&s.0, "SELECT count(*) FROM keys WHERE owner IS NOT NULL").await < 2 {
        assert!(Instant::now() < deadline, "the owner of a pooled key is never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = PgKeyStore::open(&url(), &s.0, master()).await.unwrap();
    assert_eq!(again.get("acme", "c3").unwrap().bytes(), c2.bytes());
    assert!(again.get("acme", "c1").is_none());

    // Every row belongs to the tenant of the owner it seals for; each tenant has a pool of its own.
    let globex = a.assign("globex", "g1").unwrap().slot().unwrap();
    assert_eq!(rows(&s.0, &format!("SELECT count(*) FROM keys WHERE tenant = 'globex' AND slot = {globex}")).await, 1);
    assert_eq!(rows(&s.0, "SELECT count(*) FROM keys WHERE tenant = '_system'").await, 1, "the index key");
    assert_eq!(rows(&s.0, "SELECT count(*) FROM keys WHERE tenant NOT IN ('_system', 'acme', 'globex')").await, 0);

    // A store dropped gives its unused pool back: only keys handed out (or owned) stay.
    drop((a, b, again));
    assert_eq!(rows(&s.0, "SELECT count(*) FROM keys WHERE owner IS NULL").await, 0, "no ownerless key left");

    // Another master key does not open the database's keys.
    let wrong = PgKeyStore::open(&url(), &s.0, MasterKey::new(1, [8; 32])).await.unwrap_err();
    assert!(wrong.to_string().contains("same master key"), "{wrong}");
}
