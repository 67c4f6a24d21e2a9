//! What every benchmark shares: the store it opens, the payload it appends, the driver of
//! concurrent appends, and the latency summary it prints.

use chronicle_store::log::LogStore;
use chronicle_store::sqlite::SqliteStore;
use chronicle_store::EventStore;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn summary(mut samples_us: Vec<f64>) -> Value {
    samples_us.sort_by(|a, b| a.total_cmp(b));
    json!({"p50_us": round2(percentile(&samples_us, 0.5)), "p99_us": round2(percentile(&samples_us, 0.99)), "max_us": round2(*samples_us.last().unwrap_or(&0.0)), "samples": samples_us.len()})
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn payload(i: u64) -> Value {
    // About 300 bytes once serialized.
    json!({"kind": "track", "event": "Product Viewed", "properties": {"product_id": format!("sku-{}", i % 1000), "name": "Walnut desk", "price": 34900, "currency": "EUR", "path": "/products/walnut-desk", "referrer": "https://search.example/?q=desk", "session": format!("s-{i:012}")}, "context": {"ip": "198.51.100.7", "locale": "en-GB"}})
}

/// The default embedded backend (the append-only log), or SQLite.
pub(crate) fn open(dir: &std::path::Path, backend: &str) -> Arc<dyn EventStore> {
    let inner: Arc<dyn EventStore> = match backend {
        "sqlite" => Arc::new(SqliteStore::open(dir).expect("open SQLite store")),
        _ => Arc::new(LogStore::open(dir).expect("open log store")),
    };
    // CHRONICLE_BENCH_SEALED=1: what `chronicle --seal` runs, personal data sealed on its way
    // to the log (crypto-shredding); otherwise the plain store.
    if std::env::var_os("CHRONICLE_BENCH_SEALED").is_none() {
        return inner;
    }
    let keys = chronicle_privacy::KeyStore::open(dir, chronicle_privacy::MasterKey::new(1, [42; 32])).expect("key store");
    Arc::new(chronicle_privacy::SealedStore::new(inner, Arc::new(keys)))
}

/// Runs `writers` tasks for `seconds`, each calling `append(writer, stream, version, i)` on its
/// share of 100,000 streams with the version the stream is at (0 = none); returns events/s,
/// the latency summary, the events and the seconds taken. Every append benchmark drives its
/// store with it.
pub(crate) async fn drive<F, Fut>(writers: usize, seconds: u64, append: F) -> (f64, Value, usize, f64)
where
    F: Fn(usize, usize, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let append = append.clone();
        tasks.push(tokio::spawn(async move {
            let streams = 100_000 / writers;
            let mut versions = vec![0u64; streams];
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let s = (i as usize * 7919) % streams;
                let t = Instant::now();
                append(w, s, versions[s], i).await;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                versions[s] += 1;
                i += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    let secs = started.elapsed().as_secs_f64();
    let n = lat.len();
    ((n as f64 / secs).round(), summary(lat), n, secs)
}

