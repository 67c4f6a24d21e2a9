//! Offline maintenance over a store: replaying the whole log into fresh projections (for
//! `rebuild` and `verify`), checking the log's own invariants on the way, and loading the live
//! views as a server would (checkpoint plus the log's tail).

use crate::error::AppError;
use chronicle_core::envelope::RawEnvelope;
use chronicle_projections::{resume_from, Projections};
use chronicle_store::EventStore;
use std::collections::HashMap;
use std::sync::Arc;

const PAGE: usize = 10_000;

/// A replay's result: the projections and any broken log invariant.
pub struct Replay {
    pub projections: Projections,
    pub problems: Vec<String>,
    pub events: u64,
}

/// Fold the whole log into fresh projections, checking positions 1..=head with no gap and
/// versions 1.. per stream with no gap. `progress` is called with each page's size.
///
/// Pages are read (raw: payloads stay text until a read model needs them) on another task while
/// the previous page is folded, so reading and folding use both cores.
pub async fn replay(store: &Arc<dyn EventStore>, mut progress: impl FnMut(u64)) -> Result<Replay, AppError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<RawEnvelope>>(2);
    let reader_store = store.clone();
    let reader = tokio::spawn(async move {
        let mut after = 0;
        loop {
            let page = reader_store.read_all_raw(after, PAGE).await?;
            let Some(last) = page.last() else { return Ok::<(), AppError>(()) };
            after = last.position;
            if tx.send(page).await.is_err() {
                return Ok(());
            }
        }
    });
    let mut fresh = Projections::new();
    fresh.index_key = store.index_key()?.map(chronicle_projections::IndexKey::new);
    let mut problems = Vec::new();
    let mut versions: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut events = 0;
    while let Some(page) = rx.recv().await {
        let n = page.len() as u64;
        for ev in page {
            if ev.position != fresh.position + 1 && problems.len() < 100 {
                problems.push(format!("log: position {} follows {}", ev.position, fresh.position));
            }
            check_version(&mut versions, &ev.tenant, &ev.stream, ev.version, &mut problems);
            fresh.apply_raw_with(&ev, |raw| {
                let mut raw = raw.clone();
                store.open_raw(&mut raw);
                raw.decode()
            });
        }
        events += n;
        progress(n);
    }
    reader.await.map_err(|e| AppError::internal("reading the log", e))??;
    Ok(Replay { projections: fresh, problems, events })
}

/// Versions of a stream must run 1, 2, 3… in log order. Looks up before inserting, so the
/// common case allocates nothing.
fn check_version(
    versions: &mut HashMap<String, HashMap<String, u64>>,
    tenant: &str,
    stream: &str,
    version: u64,
    problems: &mut Vec<String>,
) {
    if !versions.contains_key(tenant) {
        versions.insert(tenant.to_owned(), HashMap::new());
    }
    let streams = versions.get_mut(tenant).expect("inserted above");
    let last = match streams.get_mut(stream) {
        Some(v) => v,
        None => streams.entry(stream.to_owned()).or_insert(0),
    };
    if version != *last + 1 && problems.len() < 100 {
        problems.push(format!("log: {tenant}/{stream} version {version} follows {last}"));
    }
    *last = version;
}

/// The views a server would start with: the checkpoint kept at `checkpoint` plus the log after it.
pub async fn live_views(
    store: &dyn EventStore,
    checkpoint: &dyn chronicle_projections::CheckpointPlace,
    seal: Option<&dyn chronicle_projections::CheckpointSeal>,
) -> Result<Projections, AppError> {
    // What the server would start from (a checkpoint it cannot use is rebuilt from the log).
    let (mut live, _) = resume_from(checkpoint, seal).map_err(|e| AppError::internal("reading the views' checkpoint", e))?;
    live.index_key = store.index_key()?.map(chronicle_projections::IndexKey::new);
    let mut after = live.position;
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else { return Ok(live) };
        after = last.position;
        page.iter().for_each(|e| live.apply(e));
    }
}
