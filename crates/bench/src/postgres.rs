//! `chronicle-bench postgres [SECONDS]`: durable appends per second on PostgreSQL with 1, 16
//! and 64 concurrent writers, side by side in one run on one database, for Chronicle's
//! `PgStore` and two baselines:
//!
//! - **plain INSERT**: one `INSERT` per event, each its own transaction, into a table with a
//!   key on the event id (no order, no stream versions) — what the database does without an
//!   event store's guarantees;
//! - **message-db** (`@eventide/message-db`, installed into schema `message_store` by its own
//!   install script, see `scripts/bench-postgres`): `write_message` with an expected version.
//!
//! Every writer appends one ~300-byte event per call to its share of 100,000 customer
//! streams, with the stream's expected version. With 64 Chronicle writers a second node
//! subscribes to the log and records each event's lag: the time from its append (the ingest
//! time stamped before the commit) to its delivery on the other node.

use crate::measure::{drive, payload, round2, summary};
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_store::postgres::PgStore;
use chronicle_store::EventStore;
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;


fn url() -> String {
    std::env::var("CHRONICLE_BENCH_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn connect(url: &str) -> Client {
    let (client, connection) = chronicle_tls::postgres::connect(url).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

pub async fn compare(seconds: u64) -> Vec<Value> {
    let url = url();
    let admin = connect(&url).await;
    let message_db = admin
        .query_one("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'message_store' AND p.proname = 'write_message'", &[])
        .await
        .expect("look for message-db")
        .get::<_, i64>(0)
        > 0;
    // CHRONICLE_BENCH_ONLY=chronicle|plain|message-db and CHRONICLE_BENCH_WRITERS=64 narrow a run (profiling).
    let only = std::env::var("CHRONICLE_BENCH_ONLY").ok();
    let runs = |store: &str| only.as_deref().is_none_or(|o| o == store);
    let counts: Vec<usize> = match std::env::var("CHRONICLE_BENCH_WRITERS") {
        Ok(w) => w.split(',').filter_map(|n| n.parse().ok()).collect(),
        Err(_) => vec![1, 16, 64],
    };
    let mut out = Vec::new();
    for writers in counts {
        if runs("chronicle") {
            out.push(chronicle(&url, writers, seconds, writers == 64).await);
        }
        if runs("plain") {
            out.push(plain(&url, &admin, writers, seconds).await);
        }
        if !runs("message-db") {
        } else if message_db {
            out.push(message_db_run(&url, &admin, writers, seconds).await);
        } else {
            out.push(json!({"bench": "postgres", "store": "message-db", "writers": writers, "skipped": "message-db is not installed (scripts/bench-postgres installs it)"}));
        }
    }
    out
}

/// CHRONICLE_BENCH_SEALED=1: the nodes seal personal data, with the keys in the database.
fn sealed() -> bool {
    std::env::var_os("CHRONICLE_BENCH_SEALED").is_some()
}

/// CHRONICLE_BENCH_TENANTS=N (default 1): the appends go to N tenants in turn, each of which
/// has an event before the run — the cost of the look-ups that visit every tenant.
fn tenants() -> usize {
    std::env::var("CHRONICLE_BENCH_TENANTS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(1)
}

fn tenant(i: usize) -> String {
    match tenants() {
        1 => "bench".to_owned(),
        n => format!("bench-{}", i % n),
    }
}

/// A node over the schema: the store, sealed by the keys in the database when [`sealed`].
async fn node(url: &str, schema: &str) -> Arc<dyn EventStore> {
    let store: Arc<dyn EventStore> = Arc::new(PgStore::connect_in(url, schema).await.expect("connect"));
    if !sealed() {
        return store;
    }
    let master = chronicle_privacy::MasterKey::new(1, [42; 32]);
    let keys = chronicle_privacy::PgKeyStore::open(url, schema, master).await.expect("key store");
    Arc::new(chronicle_privacy::SealedStore::new(store, Arc::new(keys)))
}

async fn chronicle(url: &str, writers: usize, seconds: u64, lag: bool) -> Value {
    let schema = format!("bench_chronicle_{}", std::process::id());
    let _ = PgStore::drop_schema(url, &schema).await;
    let store = node(url, &schema).await;
    // The subscriber runs on a node of its own, as another `chronicle serve` would.
    let watcher = if lag {
        let node = node(url, &schema).await;
        let mut sub = chronicle_store::Subscription::new(node, 0);
        Some(tokio::spawn(async move {
            let mut lags = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                    Ok(Ok(Some(e))) => lags.push((Utc::now() - e.ingest_time).num_microseconds().unwrap_or(0) as f64),
                    _ => return lags,
                }
            }
        }))
    } else {
        None
    };
    for t in (tenants() > 1).then(tenants).into_iter().flat_map(|n| 0..n) {
        let ev = NewEvent::new(uuid::Uuid::now_v7(), "TenantSeeded", payload(0), Utc::now());
        store.append(&tenant(t), "seed", ExpectedVersion::Any, vec![ev]).await.expect("seed");
    }
    let seeded = store.head().await.expect("head") as usize;
    let s = store.clone();
    let (rate, latency, n, _) = drive(writers, seconds, move |w, stream, version, i| {
        let s = s.clone();
        async move {
            let ev = NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", payload(i), Utc::now());
            let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
            s.append(&tenant(w + stream), &format!("customer-w{w}-{stream}"), expected, vec![ev]).await.expect("append");
        }
    })
    .await;
    let name = if sealed() { "chronicle-sealed" } else { "chronicle" };
    let mut result =
        json!({"bench": "postgres", "store": name, "writers": writers, "tenants": tenants(), "events": n, "events_per_sec": rate, "latency": latency});
    if let Some(w) = watcher {
        let lags = w.await.expect("subscriber");
        assert_eq!(lags.len(), n + seeded, "the subscriber got every event");
        result["subscriber_lag"] = summary(lags);
    }
    drop(store);
    let _ = PgStore::drop_schema(url, &schema).await;
    result
}

async fn plain(url: &str, admin: &Client, writers: usize, seconds: u64) -> Value {
    let schema = format!("bench_plain_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.events (position BIGSERIAL PRIMARY KEY, id UUID NOT NULL UNIQUE, stream TEXT NOT NULL, \
             type TEXT NOT NULL, data TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await
        .expect("plain table");
    let mut clients = Vec::new();
    for _ in 0..writers {
        clients.push(Arc::new(connect(url).await));
    }
    let sql = format!("INSERT INTO {schema}.events (id, stream, type, data) VALUES ($1, $2, $3, $4)");
    let (rate, latency, n, _) = drive(writers, seconds, move |w, stream, _version, i| {
        let (c, sql) = (clients[w].clone(), sql.clone());
        async move {
            let data = payload(i).to_string();
            c.execute(&sql, &[&uuid::Uuid::now_v7(), &format!("customer-w{w}-{stream}"), &"ActivityTracked", &data]).await.expect("insert");
        }
    })
    .await;
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop");
    json!({"bench": "postgres", "store": "plain INSERT", "writers": writers, "events": n, "events_per_sec": rate, "latency": latency})
}

async fn message_db_run(url: &str, admin: &Client, writers: usize, seconds: u64) -> Value {
    admin.batch_execute("TRUNCATE message_store.messages").await.expect("truncate message-db");
    let mut clients = Vec::new();
    for _ in 0..writers {
        let c = connect(url).await;
        c.batch_execute("SET search_path TO message_store, public").await.expect("search path");
        clients.push(Arc::new(c));
    }
    let (rate, latency, n, _) = drive(writers, seconds, move |w, stream, version, i| {
        let c = clients[w].clone();
        async move {
            let data = payload(i).to_string();
            // message-db's versions start at 0, and -1 means "no stream yet".
            let expected = version as i64 - 1;
            c.execute(
                "SELECT write_message($1, $2, $3, $4::text::jsonb, NULL, $5)",
                &[&uuid::Uuid::now_v7().to_string(), &format!("customer-w{w}x{stream}"), &"ActivityTracked", &data, &expected],
            )
            .await
            .expect("write_message");
        }
    })
    .await;
    json!({"bench": "postgres", "store": "message-db", "writers": writers, "events": n, "events_per_sec": rate, "latency": latency, "seconds": round2(seconds as f64)})
}
