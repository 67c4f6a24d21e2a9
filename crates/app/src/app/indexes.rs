//! The tenants' analytics indexes (`chronicle_analytics::index`), in memory: each built from the
//! log on its tenant's first answer, caught up with the log's tail before each next one, and
//! started over after a compaction (`RetentionApplied`: events were replaced in place).

use crate::error::AppError;
use chronicle_analytics::index::Index;
use chronicle_store::EventStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// Events read from the log per page while catching an index up.
const PAGE: usize = 10_000;

/// One answer at a time per tenant reads its index (catching up needs it whole).
#[derive(Default)]
pub struct Indexes(Mutex<HashMap<String, Arc<tokio::sync::Mutex<Index>>>>);

impl Indexes {
    /// The tenant's index, caught up with the log's head.
    pub async fn caught_up(&self, store: &dyn EventStore, tenant: &str) -> Result<OwnedMutexGuard<Index>, AppError> {
        let cell = self.0.lock().expect("indexes lock").entry(tenant.to_owned()).or_default().clone();
        let mut ix = cell.lock_owned().await;
        let head = store.head().await?;
        let mut after = ix.position;
        let mut built = after > 0;
        while after < head {
            let page = store.read_all(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for ev in page.iter().filter(|e| e.tenant == tenant) {
                if built && ev.event_type == chronicle_projections::retention::APPLIED {
                    *ix = Index::default();
                    after = 0;
                    built = false;
                    break;
                }
                ix.add(ev);
            }
        }
        ix.position = ix.position.max(after);
        Ok(ix)
    }
}
