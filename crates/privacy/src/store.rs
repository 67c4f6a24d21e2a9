//! `SealedStore`: an [`EventStore`] over another that seals personal data on append and opens
//! it on every read (and for the commit hook), with the owner's key from the key store ([`Keys`]).
//! Everything above it — the application, the views, the automation engine, exports — sees
//! plaintext while the key exists and the redacted form once it is destroyed; everything
//! below it — the log on disk — only ever holds the sealed form.

use crate::keys::Keys;
use crate::seal::{self, Rule};
use async_trait::async_trait;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent, Payload, RawEnvelope};
use chronicle_core::upcast::current_schema_version_of;
use chronicle_store::{AppendError, AppendResult, CommitHook, Committed, EventStore, ReadError};
use std::sync::Arc;

/// Where the index key lives in the key store (a tenant no customer can have).
const INDEX_TENANT: &str = "_system";
const INDEX_OWNER: &str = "index:emails";

pub struct SealedStore {
    inner: Arc<dyn EventStore>,
    keys: Arc<dyn Keys>,
}

impl SealedStore {
    pub fn new(inner: Arc<dyn EventStore>, keys: Arc<dyn Keys>) -> SealedStore {
        SealedStore { inner, keys }
    }
}

/// Whether an event's metadata holds anything (sealed, on a person's stream, when it does:
/// Segment's `integrations` and whatever a producer sends may name the person).
fn has_metadata(m: &serde_json::Value) -> bool {
    !matches!(m, serde_json::Value::Null) && m.as_object().is_none_or(|o| !o.is_empty())
}

/// Open an event in place (a no-op for events without an owner or anything sealed).
pub fn open_envelope(keys: &dyn Keys, env: &mut EventEnvelope) {
    let rule = seal::rule(&env.event_type);
    if rule == Rule::Clear && !has_metadata(&env.metadata) {
        return;
    }
    if let Some(owner) = seal::owner(&env.stream) {
        let key = |slot: Option<u64>| match slot {
            Some(slot) => keys.get_slot(slot),
            None => keys.get(&env.tenant, &owner),
        };
        if seal::is_sealed_whole(&env.metadata) {
            seal::open_value(Rule::Whole, &key, &mut env.metadata);
        }
        if let Some(legacy) = seal::open_value(rule, &key, &mut env.data) {
            // The store could not upcast the sealed payload; now it is open, upcast it.
            env.schema_version = legacy;
            *env = env.clone().upcast();
        }
    }
}

fn open_raw_with(keys: &dyn Keys, raw: &mut RawEnvelope) {
    let rule = seal::rule(&raw.event_type);
    let metadata_sealed = seal::looks_sealed(&raw.metadata);
    if (rule == Rule::Clear || !seal::looks_sealed(&raw.data)) && !metadata_sealed {
        return;
    }
    if let Some(owner) = seal::owner(&raw.stream) {
        let key = |slot: Option<u64>| match slot {
            Some(slot) => keys.get_slot(slot),
            None => keys.get(&raw.tenant, &owner),
        };
        if metadata_sealed {
            if let Ok(mut m) = serde_json::from_str::<serde_json::Value>(&raw.metadata) {
                if seal::is_sealed_whole(&m) {
                    seal::open_value(Rule::Whole, &key, &mut m);
                    raw.metadata = m.to_string();
                }
            }
        }
        if rule == Rule::Clear || !seal::looks_sealed(&raw.data) {
            return;
        }
        let Ok(mut v) = serde_json::from_str(&raw.data) else { return };
        if let Some(legacy) = seal::open_value(rule, &key, &mut v) {
            // Raw envelopes are upcast when decoded, from their schema version.
            raw.schema_version = legacy;
        }
        raw.data = v.to_string();
    }
}

/// The slots that sealed values of these events name and that `keys` must fetch before they
/// open (keys another node made); empty for a key store only this process writes.
fn slots_to_fetch<'a>(keys: &dyn Keys, events: impl Iterator<Item = &'a EventEnvelope>) -> Vec<(String, u64)> {
    missing(keys, |slots| {
        for e in events {
            let rule = seal::rule(&e.event_type);
            let named = seal::sealed_parts(rule, &e.data)
                .into_iter()
                .chain(seal::sealed_parts(Rule::Whole, &e.metadata))
                .filter_map(|p| crate::cipher::sealed_slot(p).flatten());
            slots.extend(named.map(|s| (e.tenant.clone(), s)));
        }
    })
}

/// [`slots_to_fetch`] for events as stored (a text scan; the payload is not parsed).
fn raw_slots_to_fetch(keys: &dyn Keys, raws: &[RawEnvelope]) -> Vec<(String, u64)> {
    missing(keys, |slots| {
        for raw in raws {
            if seal::rule(&raw.event_type) != Rule::Clear {
                slots.extend(crate::cipher::slots_named(&raw.data).map(|s| (raw.tenant.clone(), s)));
            }
            slots.extend(crate::cipher::slots_named(&raw.metadata).map(|s| (raw.tenant.clone(), s)));
        }
    })
}

/// The `(tenant, slot)`s `named` collects that `keys` does not hold (none looked for unless it
/// is shared).
fn missing(keys: &dyn Keys, named: impl FnOnce(&mut Vec<(String, u64)>)) -> Vec<(String, u64)> {
    if !keys.shared() {
        return Vec::new();
    }
    let mut slots = Vec::new();
    named(&mut slots);
    slots.sort_unstable();
    slots.dedup();
    keys.missing(&slots)
}

impl SealedStore {
    async fn fetch(&self, slots: Vec<(String, u64)>) -> Result<(), ReadError> {
        if slots.is_empty() {
            return Ok(());
        }
        self.keys.fetch(slots).await.map_err(|e| ReadError::Storage(e.to_string()))
    }

    async fn open_all(&self, mut evs: Vec<EventEnvelope>) -> Result<Vec<EventEnvelope>, ReadError> {
        self.fetch(slots_to_fetch(&*self.keys, evs.iter())).await?;
        evs.iter_mut().for_each(|e| open_envelope(&*self.keys, e));
        Ok(evs)
    }
}

#[async_trait]
impl EventStore for SealedStore {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        let owner = seal::owner(stream)
            .filter(|_| events.iter().any(|e| seal::rule(&e.event_type) != Rule::Clear || has_metadata(&e.metadata)));
        if let Some(owner) = owner {
            let key = match self.keys.try_assign(tenant, &owner).map_err(|e| AppendError::Storage(e.to_string()))? {
                Some(k) => k,
                None => {
                    // The pool is empty: a batch of keys is written and synced first.
                    let (keys, t) = (self.keys.clone(), tenant.to_owned());
                    tokio::task::spawn_blocking(move || keys.assign(&t, &owner))
                        .await
                        .map_err(|e| AppendError::Storage(e.to_string()))?
                        .map_err(|e| AppendError::Storage(e.to_string()))?
                }
            };
            if self.keys.pool_low(tenant) {
                // Refilled in the background, so no append waits for the pool's sync.
                let (keys, t) = (self.keys.clone(), tenant.to_owned());
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = keys.refill_ahead(&t) {
                        tracing::warn!(error = %e, "refilling the key pool failed");
                    }
                });
            }
            for e in &mut events {
                if has_metadata(&e.metadata) {
                    seal::seal_value(Rule::Whole, &key, &mut e.metadata, None);
                }
                let rule = seal::rule(&e.event_type);
                let legacy = (e.schema_version != current_schema_version_of(&e.event_type)).then_some(e.schema_version);
                match &mut e.data {
                    Payload::Value(v) => seal::seal_value(rule, &key, v, legacy),
                    Payload::Text(t) => {
                        if rule != Rule::Clear {
                            let sealed = seal::seal_text(rule, &key, t.get(), legacy);
                            *t = serde_json::value::RawValue::from_string(sealed).expect("sealing keeps JSON valid");
                        }
                    }
                }
            }
        }
        self.inner.append(tenant, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        let evs = self.inner.read_stream(tenant, stream, from_version, limit).await?;
        self.open_all(evs).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, ReadError> {
        let evs = self.inner.read_all(after, limit).await?;
        self.open_all(evs).await
    }

    /// As stored: a bulk reader opens only the payloads it uses ([`open_raw`](Self::open_raw)),
    /// so a rebuild does not decrypt every page view it only counts.
    async fn read_all_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEnvelope>, ReadError> {
        let raws = self.inner.read_all_raw(after, limit).await?;
        self.fetch(raw_slots_to_fetch(&*self.keys, &raws)).await?;
        Ok(raws)
    }

    /// A key of its own in the key store (made once, durably).
    fn index_key(&self) -> Result<Option<[u8; 32]>, ReadError> {
        let key = self.keys.get_or_create(INDEX_TENANT, INDEX_OWNER).map_err(|e| ReadError::Storage(e.to_string()))?;
        Ok(Some(*key.bytes()))
    }

    /// As stored, like [`read_all_raw`](Self::read_all_raw).
    async fn read_stream_raw(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RawEnvelope>, ReadError> {
        let raws = self.inner.read_stream_raw(tenant, stream, from_version, limit).await?;
        self.fetch(raw_slots_to_fetch(&*self.keys, &raws)).await?;
        Ok(raws)
    }

    fn open_raw(&self, raw: &mut RawEnvelope) {
        self.inner.open_raw(raw);
        open_raw_with(&*self.keys, raw);
    }

    async fn prepare_streams(&self, tenant: &str, streams: &[&str]) -> Result<(), AppendError> {
        let missing: Vec<String> =
            streams.iter().filter_map(|s| seal::owner(s)).filter(|o| self.keys.get(tenant, o).is_none()).collect();
        if !missing.is_empty() {
            let (keys, t) = (self.keys.clone(), tenant.to_owned());
            tokio::task::spawn_blocking(move || keys.create_many(&t, &missing))
                .await
                .map_err(|e| AppendError::Storage(e.to_string()))?
                .map_err(|e| AppendError::Storage(e.to_string()))?;
        }
        self.inner.prepare_streams(tenant, streams).await
    }

    /// The owner's key, and every pooled key that sealed one of the stream's events — found
    /// by the slot a sealed value names, and destroyed only if its key really opens that value
    /// (so a slot since reused for someone else, or a clear string that merely looks sealed,
    /// is left alone). A key whose owner record a crash lost is found that way only.
    async fn destroy_keys(&self, tenant: &str, stream: &str) -> Result<usize, AppendError> {
        let Some(owner) = seal::owner(stream) else { return Ok(0) };
        let storage = |e: String| AppendError::Storage(e);
        let mut samples: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
        let mut from = 1;
        loop {
            let page = self.inner.read_stream(tenant, stream, from, 1000).await.map_err(|e| storage(e.to_string()))?;
            let Some(last) = page.last() else { break };
            from = last.version + 1;
            for e in &page {
                for part in seal::sealed_parts(seal::rule(&e.event_type), &e.data) {
                    if let Some(Some(slot)) = crate::cipher::sealed_slot(part) {
                        samples.entry(slot).or_insert_with(|| part.to_owned());
                    }
                }
            }
        }
        let keys = self.keys.clone();
        let t = tenant.to_owned();
        tokio::task::spawn_blocking(move || -> Result<usize, crate::keystore::KeyError> {
            let own = usize::from(keys.destroy(&t, &owner)?);
            let samples: Vec<(u64, String)> = samples.into_iter().collect();
            Ok(own + keys.destroy_slots_opening(&t, &samples)?)
        })
        .await
        .map_err(|e| storage(e.to_string()))?
        .map_err(|e| storage(e.to_string()))
    }

    async fn stored(&self, tenant: &str, ids: &[uuid::Uuid]) -> Result<Vec<bool>, ReadError> {
        self.inner.stored(tenant, ids).await
    }

    async fn head(&self) -> Result<u64, ReadError> {
        self.inner.head().await
    }

    async fn sync(&self) -> Result<u64, ReadError> {
        self.inner.sync().await
    }

    async fn stream_version(&self, tenant: &str, stream: &str) -> Result<u64, ReadError> {
        self.inner.stream_version(tenant, stream).await
    }

    async fn read_stream_until(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        let evs = self.inner.read_stream_until(tenant, stream, from_version, until).await?;
        self.open_all(evs).await
    }

    fn head_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.head_watch()
    }

    fn set_commit_hook(&self, hook: CommitHook) {
        if self.keys.shared() {
            // Events another node committed may be sealed with keys it made: fetched first.
            let keys = self.keys.clone();
            self.inner.set_hand_out_check(Arc::new(move |events: &[EventEnvelope]| {
                let slots = slots_to_fetch(&*keys, events.iter());
                if slots.is_empty() {
                    return None;
                }
                let keys = keys.clone();
                Some(Box::pin(async move { keys.fetch(slots).await.map_err(|e| e.to_string()) }))
            }));
        }
        let keys = self.keys.clone();
        self.inner.set_commit_hook(Arc::new(move |evs: &[Committed<'_>]| {
            let open = |mut env: EventEnvelope| {
                open_envelope(&*keys, &mut env);
                env
            };
            // Opened lazily: most events (page views) are never built whole by the hook.
            let mapped: Vec<Committed<'_>> = evs.iter().map(|c| c.mapped(&open)).collect();
            hook(&mapped);
        }));
    }
}
