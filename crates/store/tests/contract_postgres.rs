//! The contract suite on PostgreSQL: `CHRONICLE_TEST_DATABASE_URL`, else the machine's server
//! (127.0.0.1:5432, trust auth, database `test`). Each test works in a schema of its own,
//! dropped afterwards. Without a server the tests fail — unless `CHRONICLE_TEST_ALLOW_SKIP=1`,
//! when they skip with the reason printed.

use chronicle_store::postgres::PgStore;
use chronicle_store::contract::allow_skip;
use chronicle_store::EventStore;
use std::sync::Arc;

fn url() -> String {
    std::env::var("CHRONICLE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops the test's schema when the test ends.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // A runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let _ = rt.block_on(PgStore::drop_schema(&url(), &schema));
        })
        .join();
    }
}

async fn fresh() -> Option<(Arc<dyn EventStore>, Schema)> {
    let schema = format!("contract_{}", uuid::Uuid::new_v4().simple());
    match PgStore::connect_in(&url(), &schema).await {
        Ok(store) => Some((Arc::new(store), Schema(schema))),
        Err(e) if allow_skip() => {
            eprintln!("skipped: no PostgreSQL at {} ({e})", url());
            None
        }
        Err(e) => panic!("PostgreSQL at {} is required (CHRONICLE_TEST_ALLOW_SKIP=1 skips): {e}", url()),
    }
}

chronicle_store::contract_tests!(optional: fresh().await);

/// More nodes over the schema of `first`: each its own connections, writer and follower.
async fn node(schema: &Schema) -> Arc<PgStore> {
    Arc::new(PgStore::connect_in(&url(), &schema.0).await.expect("a second node connects"))
}

fn event(i: u64) -> chronicle_core::envelope::NewEvent {
    let data = serde_json::json!({"i": i, "pad": "x".repeat(200)});
    chronicle_core::envelope::NewEvent::new(uuid::Uuid::now_v7(), "Noted", data, chrono::Utc::now())
}

/// Records what a node's commit hook is given: every position, in order, exactly once.
fn record_hook(store: &PgStore) -> Arc<std::sync::Mutex<Vec<u64>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    store.set_commit_hook(Arc::new(move |evs: &[chronicle_store::Committed<'_>]| {
        s.lock().unwrap().extend(evs.iter().map(|c| c.position));
    }));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_several_nodes_and_a_live_subscriber_on_another_see_every_event_once_in_order() {
    use chronicle_core::envelope::ExpectedVersion;
    let Some((_, schema)) = fresh().await else { return };
    let nodes = [node(&schema).await, node(&schema).await, node(&schema).await];
    let watcher = node(&schema).await;
    let hooks: Vec<_> = nodes.iter().map(|n| record_hook(n)).collect();
    // The subscriber runs while the writers write (live, not only catch-up).
    let (writers, batches) = (8u64, 40u64);
    let subscriber = {
        let store: Arc<dyn EventStore> = watcher.clone();
        tokio::spawn(async move {
            let mut sub = chronicle_store::Subscription::new(store, 0);
            let mut got = Vec::new();
            while got.len() < (3 * writers * batches * 2) as usize {
                let e = tokio::time::timeout(std::time::Duration::from_secs(30), sub.next()).await.expect("no stall").unwrap().unwrap();
                got.push((e.position, e.id));
            }
            got
        })
    };
    let mut tasks = Vec::new();
    for store in &nodes {
        for w in 0..writers {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for b in 0..batches {
                    // Streams shared by all nodes' writers: appends race on them.
                    let stream = format!("customer-{}", (w * 7 + b) % 13);
                    let evs = vec![event(b), event(b + 1)];
                    let ids: Vec<_> = evs.iter().map(|e| e.id).collect();
                    let r = store.append("t", &stream, ExpectedVersion::Any, evs).await.expect("append");
                    acked.extend(ids.into_iter().zip([r.position - 1, r.position]));
                }
                acked
            }));
        }
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let got = subscriber.await.unwrap();
    let total = (3 * writers * batches * 2) as usize;
    assert_eq!(got.len(), total);
    let positions: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(positions, (1..=total as u64).collect::<Vec<_>>(), "the subscriber saw every position once, in order");
    acked.sort();
    let mut delivered: Vec<_> = got.iter().map(|&(p, id)| (id, p)).collect();
    delivered.sort();
    assert_eq!(acked, delivered, "every acknowledged event was delivered at the position it was acknowledged at");
    // Each writing node handed every event, its own and the others', to its hook once, in order.
    for (node, hook) in nodes.iter().zip(&hooks) {
        assert_eq!(node.sync().await.unwrap(), total as u64);
        assert_eq!(*hook.lock().unwrap(), (1..=total as u64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_on_two_nodes_get_one_event_per_version() {
    use chronicle_core::envelope::ExpectedVersion;
    let Some((_, schema)) = fresh().await else { return };
    let (a, b) = (node(&schema).await, node(&schema).await);
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for i in 0..50 {
                // Each writer appends at the version it reads: the losers of a race get a conflict.
                let v = store.stream_version("t", "deal-1").await.unwrap();
                let expected = if v == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(v) };
                match store.append("t", "deal-1", expected, vec![event(i)]).await {
                    Ok(_) => won += 1,
                    Err(chronicle_store::AppendError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            won
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap();
    }
    let events = b.read_stream("t", "deal-1", 1, 10_000).await.unwrap();
    assert_eq!(events.len(), won, "one event per successful append");
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=won as u64).collect::<Vec<_>>());
    assert!(won < 200, "the writers did race ({won} of 200 won)");
    // A write on one node is read on the other once it syncs.
    let r = a.append("t", "customer-x", ExpectedVersion::NoStream, vec![event(0)]).await.unwrap();
    assert_eq!(b.sync().await.unwrap(), r.position);
    assert_eq!(b.read_all(r.position - 1, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_lease_has_one_holder_and_passes_on_with_its_progress_when_it_runs_out_or_is_released() {
    use chronicle_store::Leases;
    use std::time::Duration;
    let Some((_, schema)) = fresh().await else { return };
    let (a, b) = (node(&schema).await, node(&schema).await);
    let ttl = Duration::from_millis(300);
    assert_eq!(a.lease("work", "a", ttl, 10).await.unwrap(), Some(10));
    assert_eq!(b.lease("work", "b", ttl, 0).await.unwrap(), None, "held by a");
    assert_eq!(a.lease("work", "a", ttl, 25).await.unwrap(), Some(25), "renewed with its progress");
    assert_eq!(a.lease("work", "a", ttl, 20).await.unwrap(), Some(25), "progress never goes back");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.lease("work", "b", ttl, 0).await.unwrap(), Some(25), "run out: b takes it, with a's progress");
    assert_eq!(a.lease("work", "a", ttl, 30).await.unwrap(), None, "a lost it");
    b.release("work", "b", 40).await.unwrap();
    assert_eq!(a.lease("work", "a", Duration::from_secs(60), 0).await.unwrap(), Some(40), "released: taken at once");
    assert_eq!(a.lease("other", "b", ttl, 0).await.unwrap(), Some(0), "leases are independent");
}

/// The shared checkpoint: written only by the holder of its lease (checked by the writing
/// statement itself, so a node that lost the lease unawares writes nothing), never replaced by
/// one further back, and the head of the one replaced or removed is handed back.
#[tokio::test]
async fn the_shared_checkpoint_is_written_by_the_lease_holder_only_and_never_goes_back() {
    use chronicle_store::Leases;
    use std::time::Duration;
    let Some((_, schema)) = fresh().await else { return };
    let (a, b) = (node(&schema).await, node(&schema).await);
    let ttl = Duration::from_millis(300);
    assert_eq!(a.read_checkpoint("views").await.unwrap(), None);
    assert_eq!(a.write_checkpoint("views", "views", "a", 5, b"five").await.unwrap(), None, "no lease, no write");
    assert!(a.lease("views", "a", ttl, 0).await.unwrap().is_some());
    assert_eq!(a.write_checkpoint("views", "views", "a", 5, b"five").await.unwrap(), Some(None), "the first");
    assert_eq!(b.write_checkpoint("views", "views", "b", 9, b"nine").await.unwrap(), None, "b does not hold the lease");
    assert_eq!(b.read_checkpoint("views").await.unwrap().as_deref(), Some(&b"five"[..]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.write_checkpoint("views", "views", "a", 7, b"seven").await.unwrap(), None, "a's lease ran out");
    assert!(b.lease("views", "b", ttl, 0).await.unwrap().is_some());
    assert_eq!(b.write_checkpoint("views", "views", "b", 4, b"four").await.unwrap(), None, "never back to an older position");
    assert_eq!(b.write_checkpoint("views", "views", "b", 9, b"nine").await.unwrap(), Some(Some(b"five".to_vec())));
    assert_eq!(a.read_checkpoint("views").await.unwrap().as_deref(), Some(&b"nine"[..]));
    assert_eq!(a.remove_checkpoint("views").await.unwrap(), Some(b"nine".to_vec()));
    assert_eq!(a.read_checkpoint("views").await.unwrap(), None);
    assert_eq!(a.remove_checkpoint("views").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_connections_are_cut_reconnects_writes_and_follows_again() {
    use chronicle_core::envelope::ExpectedVersion;
    use std::time::Duration;
    let Some((_, schema)) = fresh().await else { return };
    let (a, b) = (node(&schema).await, node(&schema).await);
    a.append("t", "s-1", ExpectedVersion::NoStream, vec![event(0)]).await.unwrap();
    assert_eq!(b.sync().await.unwrap(), 1);
    // Every connection of both nodes, cut by the server (as a restart or a failover would).
    let (admin, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let cut: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("chronicle_{}", schema.0)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cut >= 12, "both nodes' connections were cut ({cut})");
    // Appends fail at most while the writer reconnects, then go through; nothing is doubled.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let id = uuid::Uuid::now_v7();
    let again = || chronicle_core::envelope::NewEvent::new(id, "Noted", serde_json::json!({}), chrono::Utc::now());
    loop {
        match a.append("t", "s-2", ExpectedVersion::Any, vec![again()]).await {
            Ok(r) => {
                assert_eq!(r.position, 2);
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "the writer did not come back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other node reads and follows again.
    let mut synced = Err(chronicle_store::ReadError::Storage("not tried".into()));
    while std::time::Instant::now() < deadline {
        synced = b.sync().await;
        if synced.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(synced.unwrap(), 2);
    let tail = b.read_all(1, 10).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id]);
}

/// Ids are not looked up before a group's INSERT: a replay in a group of new appends is found by
/// the unique index, and the group is done again. Every new append is stored once, the replays
/// answer their original results, and the log has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_sent_together_with_new_appends_answer_their_first_result_and_leave_the_rest_stored_once() {
    use chronicle_core::envelope::ExpectedVersion;
    let Some((store, _schema)) = fresh().await else { return };
    let originals: Vec<_> = (0..20).map(event).collect();
    let mut first = Vec::new();
    for (i, e) in originals.iter().enumerate() {
        first.push(store.append("t", &format!("c-{i}"), ExpectedVersion::NoStream, vec![e.clone()]).await.unwrap());
    }
    for round in 0..3u64 {
        // Sent at once, so the writer groups them: replays (with an expected version that would
        // admit them as new) among new events on other streams.
        let mut tasks = Vec::new();
        for (i, e) in originals.iter().enumerate() {
            let (s, e) = (store.clone(), e.clone());
            tasks.push(tokio::spawn(async move { s.append("t", &format!("c-{i}"), ExpectedVersion::Any, vec![e]).await }));
            let s = store.clone();
            let fresh = event(100 + round * 100 + i as u64);
            tasks.push(tokio::spawn(async move { s.append("t", &format!("n-{round}-{i}"), ExpectedVersion::NoStream, vec![fresh]).await }));
        }
        for (k, t) in tasks.into_iter().enumerate() {
            let result = t.await.unwrap().unwrap();
            if k % 2 == 0 {
                assert_eq!(result, first[k / 2], "a replay answers the original result");
            } else {
                assert_eq!((result.first_version, result.last_version), (1, 1), "a new append is stored");
            }
        }
    }
    let log = store.read_all(0, 10_000).await.unwrap();
    assert_eq!(log.len(), 20 + 3 * 20, "each new event once, no replay stored again");
    assert!(log.iter().enumerate().all(|(i, e)| e.position == i as u64 + 1), "no gap");
    let ids: std::collections::HashSet<_> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), log.len());
}

/// A node's writer remembers the versions of streams it wrote and does not read them again;
/// when another node has written to such a stream since, every expected version is still
/// judged on the stored stream, not on what the first node remembers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_written_by_another_node_since_is_judged_on_its_stored_version() {
    use chronicle_core::envelope::ExpectedVersion;
    use chronicle_store::AppendError;
    let Some((_, schema)) = fresh().await else { return };
    let (a, b) = (node(&schema).await, node(&schema).await);
    a.append("t", "s", ExpectedVersion::NoStream, vec![event(1)]).await.unwrap();
    a.append("t", "s", ExpectedVersion::Exact(1), vec![event(2)]).await.unwrap(); // a knows s at 2
    b.append("t", "s", ExpectedVersion::Exact(2), vec![event(3)]).await.unwrap(); // s is at 3 now

    // What a remembers (2) is stale: each of these is judged on the stored version, 3.
    let r = a.append("t", "s", ExpectedVersion::Exact(2), vec![event(4)]).await;
    assert!(matches!(r, Err(AppendError::Conflict { actual: 3, .. })), "{r:?}");
    let r = a.append("t", "s", ExpectedVersion::NoStream, vec![event(5)]).await;
    assert!(matches!(r, Err(AppendError::Conflict { actual: 3, .. })), "{r:?}");
    assert_eq!(a.append("t", "s", ExpectedVersion::Exact(3), vec![event(6)]).await.unwrap().first_version, 4);
    b.append("t", "s", ExpectedVersion::Exact(4), vec![event(7)]).await.unwrap();
    // Any appends after the stored version, not after the remembered one.
    let r = a.append("t", "s", ExpectedVersion::Any, vec![event(8), event(9)]).await.unwrap();
    assert_eq!((r.first_version, r.last_version), (6, 7));

    let versions: Vec<u64> = b.read_stream("t", "s", 1, 100).await.unwrap().iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=7).collect::<Vec<_>>(), "one event per version, no gap");

    // A stream this node never saw, expected new (taken as new without a read): refused when
    // another node wrote it, in a group with a new stream's append, which is not lost.
    let c = node(&schema).await;
    let (taken, fresh) = tokio::join!(
        c.append("t", "s", ExpectedVersion::NoStream, vec![event(10)]),
        c.append("t", "new", ExpectedVersion::NoStream, vec![event(11)])
    );
    assert!(matches!(taken, Err(AppendError::Conflict { actual: 7, .. })), "{taken:?}");
    assert_eq!(fresh.unwrap().first_version, 1);
    let r = c.append("t", "new", ExpectedVersion::NoStream, vec![event(12)]).await;
    assert!(matches!(r, Err(AppendError::Conflict { actual: 1, .. })), "a stream it wrote is known: {r:?}");
    assert_eq!(b.read_stream("t", "s", 1, 100).await.unwrap().len(), 7);
}

/// Ready to be distributed by tenant (Citus): every table has a primary key, and every index —
/// primary keys included — leads with the tenant.
#[tokio::test]
async fn the_tenant_leads_every_primary_key_and_index() {
    let Some((_store, schema)) = fresh().await else { return };
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT c.relname::text, i.relname::text, a.attname::text, x.indisprimary FROM pg_index x \
             JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0] WHERE n.nspname = $1",
            &[&schema.0],
        )
        .await
        .unwrap();
    let indexes: Vec<(String, String, String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert!(indexes.len() >= 10, "{indexes:?}");
    for (table, index, first, _) in &indexes {
        assert_eq!(first, "tenant", "index {index} of {table} leads with {first}");
    }
    let tables: Vec<String> = client
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1", &[&schema.0])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in &tables {
        assert!(indexes.iter().any(|(t, _, _, primary)| t == table && *primary), "{table} has no primary key");
    }
}

/// Every column of every row of the schema's events, as text.
async fn table_text(schema: &Schema) -> String {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let sql = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {}.events t", schema.0);
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

/// Compaction on PostgreSQL: expired events become tombstones (their payload gone from the
/// table), the record follows the head in the same transaction, bad requests change nothing,
/// an expired id is still a replay, and it runs only while no store has the schema open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_turns_events_into_tombstones_only_while_no_node_has_the_schema_open() {
    use chronicle_core::envelope::{ExpectedVersion, NewEvent, EXPIRED_TYPE};
    use chronicle_store::expire::{tombstone_data, ExpireError, Expiry};
    let Some((store, schema)) = fresh().await else { return };
    let tracked = |secret: &str| {
        NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", serde_json::json!({"secret": secret}), chrono::Utc::now()).with_actor("key:abc")
    };
    let (a, b) = (tracked("gone-1"), tracked("kept-2"));
    let a_id = a.id;
    store.append("t", "customer-1", ExpectedVersion::Any, vec![a, b]).await.unwrap();
    store.append("t", "customer-2", ExpectedVersion::Any, vec![tracked("gone-3")]).await.unwrap();
    let record = || NewEvent::new(uuid::Uuid::now_v7(), "RetentionApplied", serde_json::json!({"expired": 2}), chrono::Utc::now());
    {
        // The views' shared checkpoint, which holds the events about to expire.
        use chronicle_store::Leases;
        let pg = node(&schema).await;
        assert!(pg.lease("views", "n", std::time::Duration::from_secs(60), 0).await.unwrap().is_some());
        assert!(pg.write_checkpoint("views", "views", "n", 3, b"gone-1").await.unwrap().is_some());
    }

    // Refused while a store (a node) has the schema open; nothing changed.
    let busy = PgStore::expire(&url(), &schema.0, &Expiry { positions: &[1], records: vec![] }).await;
    assert!(matches!(&busy, Err(ExpireError::Failed { reason, .. }) if reason.contains("open")), "{busy:?}");
    drop(store);

    // Bad requests change nothing.
    let bad = PgStore::expire(&url(), &schema.0, &Expiry { positions: &[3, 1], records: vec![] }).await;
    assert!(matches!(bad, Err(ExpireError::Invalid(_))), "{bad:?}");
    let beyond = PgStore::expire(&url(), &schema.0, &Expiry { positions: &[1, 9], records: vec![] }).await;
    assert!(matches!(beyond, Err(ExpireError::Invalid(_))), "{beyond:?}");
    let reused = NewEvent { id: a_id, ..record() };
    let clash = PgStore::expire(&url(), &schema.0, &Expiry { positions: &[1], records: vec![("t".into(), "retention".into(), reused)] }).await;
    assert!(matches!(clash, Err(ExpireError::Invalid(_))), "{clash:?}");
    assert!(table_text(&schema).await.contains("gone-1"));

    let done = PgStore::expire(&url(), &schema.0, &Expiry { positions: &[1, 3], records: vec![("t".into(), "retention".into(), record())] })
        .await
        .unwrap();
    assert_eq!((done.expired, done.head), (2, 4));
    let text = table_text(&schema).await;
    assert!(!text.contains("gone-1") && !text.contains("gone-3"), "an expired payload is still in the table");
    assert!(text.contains("kept-2"));

    let store = node(&schema).await;
    assert_eq!(store.compactions().await.unwrap(), 1);
    assert_eq!(store.read_checkpoint("views").await.unwrap(), None, "the views holding expired events are dropped");
    let all = store.read_all(0, 10).await.unwrap();
    let summary: Vec<(u64, &str, &str, u64)> = all.iter().map(|e| (e.position, e.stream.as_str(), e.event_type.as_str(), e.version)).collect();
    assert_eq!(
        summary,
        vec![
            (1, "customer-1", EXPIRED_TYPE, 1),
            (2, "customer-1", "ActivityTracked", 2),
            (3, "customer-2", EXPIRED_TYPE, 1),
            (4, "retention", "RetentionApplied", 1),
        ]
    );
    assert_eq!((all[0].id, &all[0].data, all[0].actor.as_deref()), (a_id, &tombstone_data("ActivityTracked"), None));
    // An expired event redelivered is still a replay; appends go on after the record.
    let again = NewEvent { id: a_id, ..tracked("gone-1") };
    assert_eq!(store.append("t", "customer-1", ExpectedVersion::Any, vec![again]).await.unwrap().position, 1);
    let next = store.append("t", "customer-1", ExpectedVersion::Exact(2), vec![tracked("new")]).await.unwrap();
    assert_eq!((next.position, next.first_version), (5, 3));
    drop(store);

    // Expiring a tombstone again counts nothing; the record goes on its stream.
    let done = PgStore::expire(&url(), &schema.0, &Expiry { positions: &[1, 2], records: vec![("t".into(), "retention".into(), record())] })
        .await
        .unwrap();
    assert_eq!((done.expired, done.head), (1, 6));
    let store = node(&schema).await;
    assert_eq!(store.compactions().await.unwrap(), 2);
    assert_eq!(store.read_all(5, 10).await.unwrap()[0].version, 2);
}

/// A schema made before the tenant-led migrations (5 and 6) is upgraded in place: its events
/// keyed by tenant, with each tenant's head and the id registry filled; each key filed under
/// the tenant whose customer or visitor events name its slot (the one naming it most, where
/// another tenant's clear text imitates a sealed value), Chronicle's own under `_system`, and
/// keys that seal nothing stored gone. A schema newer than the build is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_schema_is_upgraded_in_place_and_a_newer_one_refused() {
    let schema = Schema(format!("contract_{}", uuid::Uuid::new_v4().simple()));
    if let Err(e) = PgStore::migrate_only(&url(), &schema.0, 4).await {
        assert!(allow_skip(), "PostgreSQL at {} is required (CHRONICLE_TEST_ALLOW_SKIP=1 skips): {e}", url());
        eprintln!("skipped: no PostgreSQL at {} ({e})", url());
        return;
    }
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("SET search_path TO {}", schema.0)).await.unwrap();
    client
        .batch_execute(
            r#"INSERT INTO events (position, id, tenant, stream, version, type, schema_version, event_time, ingest_time, source, data, metadata) VALUES
                (1, '00000000-0000-0000-0000-000000000001', '_system', 'tenant-acme', 1, 'TenantCreated', 1, 0, 0, 't', '{}', '{}'),
                (2, '00000000-0000-0000-0000-000000000002', 'acme', 'customer-c1', 1, 'CustomerRegistered', 1, 0, 0, 't', '{"email":"enc:v2:11:AAAA"}', '{}'),
                (3, '00000000-0000-0000-0000-000000000003', 'acme', 'customer-c1', 2, 'NoteAdded', 1, 0, 0, 't', '{"text":"enc:v2:11:BBBB"}', '{}'),
                (4, '00000000-0000-0000-0000-000000000004', 'globex', 'customer-g1', 1, 'NoteAdded', 1, 0, 0, 't', '{"text":"looks like enc:v2:11:CCCC"}', '{}'),
                (5, '00000000-0000-0000-0000-000000000005', 'globex', 'anonymous-v1', 1, 'ActivityTracked', 1, 0, 0, 't', '{"ip":"enc:v2:12:DDDD"}', '{}'),
                (6, '00000000-0000-0000-0000-000000000006', 'globex', 'deal-1', 1, 'DealNoted', 1, 0, 0, 't', '{"x":"enc:v2:13:EEEE"}', '{}');
               INSERT INTO keys (slot, owner, master_version, wrapped) VALUES
                (11, '\x01', 1, '\x00'), (12, NULL, 1, '\x00'), (13, '\x03', 1, '\x00'), (14, NULL, 1, '\x00'),
                (15, sha256(convert_to('_system', 'UTF8') || '\x00'::bytea || convert_to('index:emails', 'UTF8')), 1, '\x00');"#,
        )
        .await
        .unwrap();

    let store = PgStore::connect_in(&url(), &schema.0).await.expect("upgraded");
    assert_eq!(store.head().await.unwrap(), 6);
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    let heads: Vec<(String, i64)> =
        client.query("SELECT tenant, position FROM heads ORDER BY tenant", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(heads, vec![("_system".into(), 1), ("acme".into(), 3), ("globex".into(), 6)]);
    let id = |n: u128| uuid::Uuid::from_u128(n);
    assert_eq!(store.stored("globex", &[id(4), id(9)]).await.unwrap(), vec![true, false]);
    assert_eq!(store.stored("acme", &[id(4), id(2)]).await.unwrap(), vec![false, true], "ids are registered per tenant");
    let keys: Vec<(i64, String)> =
        client.query("SELECT slot, tenant FROM keys ORDER BY slot", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(keys, vec![(11, "acme".into()), (12, "globex".into()), (15, "_system".into())]);
    // Appends go on after the head; an id is refused again within its tenant, and is free in
    // another (ids are unique per tenant, migration 7).
    let reused = chronicle_core::envelope::NewEvent { id: id(2), ..event(1) };
    assert!(matches!(store.append("acme", "s", chronicle_core::envelope::ExpectedVersion::Any, vec![reused.clone()]).await, Err(chronicle_store::AppendError::IdReused { .. })));
    assert_eq!(store.append("globex", "s", chronicle_core::envelope::ExpectedVersion::Any, vec![reused]).await.unwrap().position, 7);
    assert_eq!(store.append("acme", "s", chronicle_core::envelope::ExpectedVersion::Any, vec![event(2)]).await.unwrap().position, 8);
    drop(store);

    client.execute("INSERT INTO schema_migrations (version) VALUES (99)", &[]).await.unwrap();
    match PgStore::connect_in(&url(), &schema.0).await {
        Err(e @ chronicle_store::postgres::PgOpenError::Newer { .. }) => assert!(e.to_string().contains("upgrade this node"), "{e}"),
        Err(e) => panic!("expected Newer, got {e}"),
        Ok(_) => panic!("a schema newer than the build was opened"),
    }
}
