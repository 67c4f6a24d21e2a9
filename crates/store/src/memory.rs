//! `MemoryStore`: the in-memory reference model of the [`EventStore`] contract. It is the
//! simplest thing that obeys every rule (one mutex over the log and its indices) and is what the
//! model-based tests compare the real engines against. Nothing here is durable.

use crate::rules::{self, StoredAt};
use crate::event_store::{AppendError, AppendResult, CommitHook, EventStore, ReadError};
use async_trait::async_trait;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, RwLock};
use tokio::sync::watch;
use uuid::Uuid;

pub struct MemoryStore {
    state: Mutex<State>,
    head: watch::Sender<u64>,
    hook: RwLock<Option<CommitHook>>,
}

#[derive(Default)]
struct State {
    /// The log; the event at index `i` has position `i + 1`.
    log: Vec<EventEnvelope>,
    /// Event id → index in `log`.
    by_id: HashMap<(String, Uuid), usize>,
    /// tenant → stream → indices in `log`, by version (version `v` at index `v - 1`).
    streams: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl State {
    fn stream(&self, tenant: &str, stream: &str) -> &[usize] {
        self.streams.get(tenant).and_then(|s| s.get(stream)).map_or(&[], Vec::as_slice)
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore { state: Mutex::new(State::default()), head: watch::Sender::new(0), hook: RwLock::new(None) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated (appends mutate
        // only after every check), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        rules::check_batch(&events)?;
        let mut st = self.lock();

        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let found: Vec<Option<StoredAt<'_>>> = ids
            .iter()
            .map(|id| {
                st.by_id.get(&(tenant.to_owned(), *id)).map(|&i| {
                    let e = &st.log[i];
                    StoredAt { tenant: &e.tenant, stream: &e.stream, version: e.version, position: e.position }
                })
            })
            .collect();
        if let Some(outcome) = rules::classify_ids(tenant, stream, &ids, &found) {
            return outcome;
        }
        drop(found);

        let actual = st.stream(tenant, stream).len() as u64;
        if !expected.admits(actual) {
            return Err(rules::conflict(stream, expected, actual));
        }

        let ingest_time = rules::truncate_to_micros(Utc::now());
        let first_index = st.log.len();
        let st = &mut *st;
        let indices = st.streams.entry(tenant.to_string()).or_default().entry(stream.to_string()).or_default();
        for (i, e) in events.into_iter().enumerate() {
            let index = first_index + i;
            st.by_id.insert((tenant.to_owned(), e.id), index);
            indices.push(index);
            st.log.push(rules::stored_envelope(
                tenant,
                stream,
                e,
                actual + 1 + i as u64,
                index as u64 + 1,
                ingest_time,
            ));
        }
        let committed = &st.log[first_index..];
        let last = committed.last().expect("batch is not empty");
        let result =
            AppendResult { first_version: committed[0].version, last_version: last.version, position: last.position };

        // Called with the state still locked, so concurrent appends reach the hook in position
        // order, exactly once each.
        crate::event_store::call_hook_stored(&self.hook, committed);
        self.head.send_replace(result.position);
        Ok(result)
    }

    async fn read_stream(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        let st = self.lock();
        let indices = st.stream(tenant, stream);
        let start = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX).min(indices.len());
        Ok(indices[start..].iter().take(limit).map(|&i| rules::upcast_on_read(st.log[i].clone())).collect())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, ReadError> {
        let st = self.lock();
        let start = usize::try_from(after).unwrap_or(usize::MAX).min(st.log.len());
        Ok(st.log[start..].iter().take(limit).cloned().map(rules::upcast_on_read).collect())
    }

    async fn head(&self) -> Result<u64, ReadError> {
        Ok(self.lock().log.len() as u64)
    }

    async fn stored(&self, tenant: &str, ids: &[Uuid]) -> Result<Vec<bool>, ReadError> {
        let st = self.lock();
        Ok(ids.iter().map(|id| st.by_id.contains_key(&(tenant.to_owned(), *id))).collect())
    }

    async fn stream_version(&self, tenant: &str, stream: &str) -> Result<u64, ReadError> {
        Ok(self.lock().stream(tenant, stream).len() as u64)
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn set_commit_hook(&self, hook: CommitHook) {
        *self.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }
}
