//! The contract suite on PostgreSQL: `CHRONICLE_TEST_DATABASE_URL`, else the machine's server
//! (127.0.0.1:5432, trust auth, database `test`). Each test works in a schema of its own,
//! dropped afterwards. Without a server the tests skip with the reason printed — except in CI
//! (`CI` set), where they fail.

use chronicle_store::postgres::PgStore;
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
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no PostgreSQL at {} ({e})", url());
            None
        }
        Err(e) => panic!("PostgreSQL at {} is required in CI: {e}", url()),
    }
}

chronicle_store::contract_tests!(optional: fresh().await);
