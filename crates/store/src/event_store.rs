//! The contract itself: the [`EventStore`] trait every backend implements, what an append
//! returns and can fail with, the commit hook's view of committed events, and [`Leases`].

use crate::rules;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent, RawEnvelope};
use std::sync::Arc;


pub use crate::errors::{AppendError, AppendResult, ReadError};

/// The store's hook for projections that must be updated in the commit path (read-your-writes):
/// called once per committed group, in position order, before any append of the group returns.
pub type CommitHook = Arc<dyn Fn(&[Committed<'_>]) + Send + Sync>;

/// Awaited before events that *another node* committed go through the commit hook: what a
/// layer over the store must fetch first (the keys another node sealed them with) is fetched
/// here, since the hook itself cannot wait. `None`: nothing to fetch. An error stops the
/// hand-out; it is retried (the views never see an event the layer could not prepare).
pub type HandOutCheck = Arc<dyn Fn(&[EventEnvelope]) -> Option<HandOutFuture> + Send + Sync>;
pub type HandOutFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// A committed event as the commit hook sees it: the stored header at hand, the whole event
/// built only on request. The hook runs in the commit path, on the writer thread; most events
/// (page views, tracks) only move a stream's version in the views, and building, then freeing,
/// their payload trees there was most of the cost of a bulk import's commits.
#[derive(Clone)]
pub struct Committed<'a> {
    pub tenant: &'a str,
    pub stream: &'a str,
    pub version: u64,
    pub position: u64,
    pub event_type: &'a str,
    /// As stored (microsecond precision).
    pub event_time: chrono::DateTime<chrono::Utc>,
    whole: Whole<'a>,
}

#[derive(Clone)]
enum Whole<'a> {
    /// As submitted, with the ingest time the store gave it.
    Submitted(&'a NewEvent, chrono::DateTime<chrono::Utc>),
    /// Already in stored form (not yet upcast).
    Stored(&'a EventEnvelope),
    /// What a layer over the store makes of the event (opened from its sealed form, say).
    Mapped(Box<Whole<'a>>, &'a (dyn Fn(EventEnvelope) -> EventEnvelope + Sync)),
}

impl<'a> Committed<'a> {
    fn submitted(
        tenant: &'a str,
        stream: &'a str,
        version: u64,
        position: u64,
        event: &'a NewEvent,
        ingest_time: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        Committed {
            tenant,
            stream,
            version,
            position,
            event_type: &event.event_type,
            event_time: rules::truncate_to_micros(event.event_time),
            whole: Whole::Submitted(event, ingest_time),
        }
    }

    pub(crate) fn stored(e: &'a EventEnvelope) -> Self {
        Committed {
            tenant: &e.tenant,
            stream: &e.stream,
            version: e.version,
            position: e.position,
            event_type: &e.event_type,
            event_time: e.event_time,
            whole: Whole::Stored(e),
        }
    }

    /// The event as a reader gets it (upcast to the current schema).
    pub fn envelope(&self) -> EventEnvelope {
        self.envelope_of(&self.whole)
    }

    fn envelope_of(&self, whole: &Whole<'a>) -> EventEnvelope {
        let stored = match whole {
            Whole::Submitted(e, ingest_time) => {
                rules::stored_envelope(self.tenant, self.stream, (*e).clone(), self.version, self.position, *ingest_time)
            }
            Whole::Stored(e) => (*e).clone(),
            Whole::Mapped(inner, f) => return f(self.envelope_of(inner)),
        };
        rules::upcast_on_read(stored)
    }

    /// The same event, with `f` applied to it whenever it is built whole: how a layer over the
    /// store (one that opens sealed payloads) shows the hook what readers see, still lazily.
    pub fn mapped(&self, f: &'a (dyn Fn(EventEnvelope) -> EventEnvelope + Sync)) -> Committed<'a> {
        Committed { whole: Whole::Mapped(Box::new(self.whole.clone()), f), ..self.clone() }
    }
}

/// Leases over a database several nodes share: who does a piece of shared work (the campaign
/// engine) now, and how far it got, so a node that takes over continues from there.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Take or renew lease `name` for `holder` until `ttl` from now, recording `progress` (its
    /// holder's); `Some(progress recorded)` when `holder` holds it, `None` when another does.
    async fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration, progress: u64) -> Result<Option<u64>, ReadError>;

    /// Give lease `name` up now (a clean stop), so another node takes it at once.
    async fn release(&self, name: &str, holder: &str, progress: u64) -> Result<(), ReadError>;

    /// Make lease `name` exist, free, with `progress` — unless it exists already. Taking a
    /// lease then never changes its recorded progress.
    async fn seed(&self, name: &str, progress: u64) -> Result<(), ReadError>;

    /// How many leases whose name starts with `prefix` are held now (not run out): the live
    /// nodes, counted by their heartbeat leases.
    async fn live(&self, prefix: &str) -> Result<usize, ReadError>;
}

/// One event store. Positions are global, 1-based, gap-free and follow commit order; versions
/// are 1-based per `(tenant, stream)`.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Append `events` to `stream` atomically if it is at `expected`. Returns once durable.
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError>;

    /// Events of one stream with `version >= from_version`, oldest first, at most `limit`.
    async fn read_stream(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, ReadError>;

    /// Events of every tenant with `position > after`, in position order, at most `limit`.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, ReadError>;

    /// Like `read_all`, with each payload left as its JSON text (see [`RawEnvelope`]), so a bulk
    /// reader pays for parsing only the payloads it uses. Backends should override this. A
    /// layer that transforms payloads on read (sealing) leaves them as stored here: a reader
    /// passes each payload it uses through [`open_raw`](Self::open_raw) before decoding it.
    async fn read_all_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEnvelope>, ReadError> {
        Ok(self.read_all(after, limit).await?.into_iter().map(RawEnvelope::from_envelope).collect())
    }

    /// Like `read_stream`, with payloads as stored text (see `read_all_raw`): a reader that
    /// folds only some of the stream's events parses (and opens) only those.
    async fn read_stream_raw(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RawEnvelope>, ReadError> {
        Ok(self.read_stream(tenant, stream, from_version, limit).await?.into_iter().map(RawEnvelope::from_envelope).collect())
    }

    /// Make a raw envelope's payload what `read_all` would return (see `read_all_raw`).
    fn open_raw(&self, _raw: &mut RawEnvelope) {}

    /// Get ready for appends to these streams (a sealing layer makes the keys they need in one
    /// durable step, instead of one per append); appending without it is correct too.
    async fn prepare_streams(&self, _tenant: &str, _streams: &[&str]) -> Result<(), AppendError> {
        Ok(())
    }

    /// The key the views' look-up indexes of personal data (the unique e-mail index) are
    /// hashed with, when this store seals personal data (none: indexes hold the values).
    fn index_key(&self) -> Result<Option<[u8; 32]>, ReadError> {
        Ok(None)
    }

    /// Destroy every key that sealed personal data on this stream (crypto-shredding: a
    /// layer that seals does; a store that does not has none). Returns how many there were.
    async fn destroy_keys(&self, _tenant: &str, _stream: &str) -> Result<usize, AppendError> {
        Ok(0)
    }

    /// Which of `ids` are stored in `tenant` (committed, in any of its streams), in order. A
    /// writer of messages that may have been delivered before sends only the new ones. Ids are
    /// unique per tenant: an id stored in another tenant is not stored here.
    async fn stored(&self, tenant: &str, ids: &[uuid::Uuid]) -> Result<Vec<bool>, ReadError>;

    /// The position of the last committed event (0 when empty).
    async fn head(&self) -> Result<u64, ReadError>;

    /// Waits until everything committed anywhere before the call — by other nodes over the same
    /// database too — is readable here and has been through the commit hook, and returns that
    /// head: a node's read-your-writes across nodes. A store only this process writes is
    /// always in sync.
    async fn sync(&self) -> Result<u64, ReadError> {
        self.head().await
    }

    /// The current version of a stream (0 = no stream).
    async fn stream_version(&self, tenant: &str, stream: &str) -> Result<u64, ReadError>;

    /// Events of one stream with `version >= from_version` and `event_time <= until`, oldest
    /// first (time travel). Backends with an index on event time should override this.
    async fn read_stream_until(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        let mut out = Vec::new();
        let mut from = from_version;
        loop {
            let page = self.read_stream(tenant, stream, from, 1000).await?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            from = last.version + 1;
            out.extend(page.into_iter().filter(|e| e.event_time <= until));
        }
    }

    /// A watch that changes whenever the head moves; live subscriptions wait on it.
    fn head_watch(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Install the commit hook (replacing any earlier one).
    fn set_commit_hook(&self, hook: CommitHook);

    /// Install the [`HandOutCheck`] (replacing any earlier one). Only a store that other
    /// processes write to (PostgreSQL) hands out events it did not append; the others ignore it.
    fn set_hand_out_check(&self, _check: HandOutCheck) {}
}

/// Hands a group's accepted appends (tenant, stream, result, events), in position order, to the
/// commit hook, if one is set. The events are committed whatever the hook does: a panic in it
/// is caught and must not stop writes.
pub(crate) fn call_hook<'a>(
    hook: &std::sync::RwLock<Option<CommitHook>>,
    appended: impl Iterator<Item = (&'a str, &'a str, AppendResult, Vec<&'a NewEvent>)>,
    ingest_time: DateTime<Utc>,
) {
    let hook = hook.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(hook) = hook else { return };
    let mut committed = Vec::new();
    for (tenant, stream, result, events) in appended {
        let first_position = result.position + 1 - events.len() as u64;
        for (i, event) in events.into_iter().enumerate() {
            let (version, position) = (result.first_version + i as u64, first_position + i as u64);
            committed.push(Committed::submitted(tenant, stream, version, position, event, ingest_time));
        }
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&committed)));
}

/// Hands events read back from storage (committed by another writer), in position order, to
/// the commit hook, if one is set; like [`call_hook`].
pub(crate) fn call_hook_stored(hook: &std::sync::RwLock<Option<CommitHook>>, events: &[chronicle_core::envelope::EventEnvelope]) {
    let hook = hook.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(hook) = hook else { return };
    let committed: Vec<Committed<'_>> = events.iter().map(Committed::stored).collect();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&committed)));
}
