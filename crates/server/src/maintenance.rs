//! Offline maintenance over a store: replaying the whole log into fresh projections (for
//! `rebuild` and `verify`), checking the log's own invariants on the way, and loading the live
//! views as a server would (checkpoint plus the log's tail).

use crate::error::AppError;
use chronicle_projections::{load_checkpoint, Projections};
use chronicle_store::EventStore;
use std::collections::HashMap;
use std::path::Path;

const PAGE: usize = 10_000;

/// A replay's result: the projections and any broken log invariant.
pub struct Replay {
    pub projections: Projections,
    pub problems: Vec<String>,
    pub events: u64,
}

/// Fold the whole log into fresh projections, checking positions 1..=head with no gap and
/// versions 1.. per stream with no gap. `progress` is called with each page's size.
pub async fn replay(store: &dyn EventStore, mut progress: impl FnMut(u64)) -> Result<Replay, AppError> {
    let mut fresh = Projections::new();
    let mut problems = Vec::new();
    let mut versions: HashMap<(String, String), u64> = HashMap::new();
    let mut events = 0;
    let mut after = 0;
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for ev in &page {
            if ev.position != fresh.position + 1 && problems.len() < 100 {
                problems.push(format!("log: position {} follows {}", ev.position, fresh.position));
            }
            let v = versions.entry((ev.tenant.clone(), ev.stream.clone())).or_insert(0);
            if ev.version != *v + 1 && problems.len() < 100 {
                problems.push(format!("log: {}/{} version {} follows {}", ev.tenant, ev.stream, ev.version, v));
            }
            *v = ev.version;
            fresh.apply(ev);
        }
        events += page.len() as u64;
        progress(page.len() as u64);
    }
    Ok(Replay { projections: fresh, problems, events })
}

/// The views a server would start with: the checkpoint at `path` plus the log after it.
pub async fn live_views(store: &dyn EventStore, checkpoint: &Path) -> Result<Projections, AppError> {
    let mut live = load_checkpoint(checkpoint).map_err(|e| AppError::Internal(e.to_string()))?;
    let mut after = live.position;
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else { return Ok(live) };
        after = last.position;
        page.iter().for_each(|e| live.apply(e));
    }
}
