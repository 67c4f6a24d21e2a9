//! The application service: runs commands through the pure domain and the store, keeps the
//! read models current in the commit path, and answers queries. The HTTP layer and the CLI
//! both drive Chronicle through this one type.

use crate::error::AppError;
use crate::keys;
use chronicle_core::customer::{self, Channel, ConsentDecision, Customer, CustomerCommand, EmailIndex, Purpose};
use chronicle_core::deal::{self, Deal, DealCommand};
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chronicle_core::order::{self, Order, OrderCommand};
use chronicle_projections::{CheckpointFile, CheckpointPlace, ConsentEntry, Head, KeyRecord, Pipeline, Projections, Saved, SYSTEM_TENANT};
use chronicle_store::{AppendError, AppendResult, Committed, EventStore};
use crate::sealing::CheckpointKeys;
use chronicle_privacy::Keys;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use uuid::Uuid;

/// How often a command is retried when another writer moved its stream first.
const COMMAND_ATTEMPTS: usize = 8;
/// Stripes of the e-mail claim lock.
const EMAIL_STRIPES: usize = 64;
/// Stream name prefixes owned by the domain: raw appends may not write there.
pub const RESERVED_PREFIXES: &[&str] =
    &["customer-", "deal-", "order-", "tenant-", "anonymous-", "campaign-", "template-", "retention", "_"];

/// The streams that hold a person's personal data: theirs and their anonymous identities'.
fn owner_streams<'a>(id: &str, anonymous_ids: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    std::iter::once(customer::stream_of(id)).chain(anonymous_ids.into_iter().map(|a| format!("anonymous-{a}"))).collect()
}

/// Runs blocking `f` from async code: on a multi-thread runtime its worker thread is given up
/// meanwhile (as `spawn_blocking` would, without moving `f`); on a current-thread runtime
/// (tests) it runs in place.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The window over which failed secret verifications of one API key id are counted.
const SECRET_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub http_errors: AtomicU64,
    pub appends: AtomicU64,
    pub events_appended: AtomicU64,
    pub append_conflicts: AtomicU64,
    pub consent_checks: AtomicU64,
    pub checkpoints: AtomicU64,
    /// API key secrets verified with argon2 (a key is verified once, then remembered).
    pub key_verifications: AtomicU64,
    /// Outcomes of hand-overs the store refused to record (each is written again later).
    pub outcomes_unrecorded: AtomicU64,
    /// Campaign reactions that kept failing and were parked (see `GET /v1/automation/parked`).
    pub reactions_parked: AtomicU64,
}

/// Erasures the views applied (counted by the commit hook), and how many the checkpoint's key
/// rotations cover. `wake` tells the checkpoint writer at once.
#[derive(Default)]
pub struct Erasures {
    applied: AtomicU64,
    sealed: AtomicU64,
    pub wake: tokio::sync::Notify,
}

impl Erasures {
    /// The views applied an event of this type: an erasure is counted, and the checkpoint
    /// writer woken.
    fn note(&self, event_type: &str) {
        if event_type == "CustomerErased" {
            self.applied.fetch_add(1, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }
}

pub struct App {
    store: Arc<dyn EventStore>,
    /// What a customer id that is personal data becomes (see [`crate::pseudonym`]).
    pub pseudonyms: crate::pseudonym::Pseudonyms,
    views: Arc<RwLock<Projections>>,
    /// Where the views' checkpoint is kept: this node's folder, or the database every node
    /// shares (written by the holder of its lease only).
    checkpoint_place: Option<Arc<dyn CheckpointPlace>>,
    /// Commands that claim an e-mail address take the address's stripe, so two can't claim the
    /// same one while claims of different addresses run side by side.
    email_locks: Vec<tokio::sync::Mutex<()>>,
    /// The automation engine's cursor (see `Projections::reacted`).
    reacted: AtomicU64,
    /// Accesses to customers' data not yet written to the audit trail.
    pub audit: crate::audit::Audit,
    /// Digests of API-made keys verified against their argon2 hash in this process.
    verified: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per-key request budgets (token buckets) and the rate they refill at.
    buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    /// Ingest requests a write key, and a client address, may make per second (0: no limit).
    ingest_per_key: AtomicU64,
    ingest_per_address: AtomicU64,
    /// Failed verifications of an API key's secret, by key id: a guesser pays for an argon2
    /// verification a few times per window, not once per request.
    failed_secrets: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
    rate_limit: AtomicU64,
    /// Whether tenants' webhooks may reach internal addresses (see `automation::targets`).
    allow_private_webhooks: std::sync::atomic::AtomicBool,
    /// Wakes the automation engine's clock: something in the outbox or a timer changed.
    pub automation_wake: tokio::sync::Notify,
    /// The running engine's gate: which shards of the campaign work this node holds (metrics).
    pub automation_gate: std::sync::OnceLock<Arc<crate::automation::lease::Gate>>,
    /// Reactions to events the engine could not make, waiting for a retry.
    pub parked_reactions: crate::automation::parked::Parked,
    /// Where "now" comes from (the wall clock unless a test installs another, see
    /// [`App::set_clock`]).
    clock: std::sync::OnceLock<Arc<dyn crate::clock::Clock>>,
    /// The key SendGrid's Event Webhook batches are signed with; without it they are refused.
    pub sendgrid_key: std::sync::OnceLock<p256::ecdsa::VerifyingKey>,
    /// Crypto-shredding: the key store under the sealing store layer (erasure destroys keys)
    /// and the checkpoint's key. `None` over a store that does not seal (tests, benchmarks).
    keys: Option<Arc<dyn Keys>>,
    checkpoint_keys: Option<CheckpointKeys>,
    /// Erasures the views applied, whichever node erased (see [`App::checkpoint`]).
    pub erasures: Arc<Erasures>,
    /// One checkpoint written at a time (a key rotation must not cross another's write), and
    /// the checkpoint keys rotated out and not yet destroyed.
    checkpointing: std::sync::Mutex<Vec<String>>,
    pub metrics: Metrics,
}

struct ViewEmails<'a>(&'a Projections, &'a str);
impl EmailIndex for ViewEmails<'_> {
    fn owner_of(&self, email: &str) -> Option<String> {
        self.0.tenant(self.1)?.email_owner(self.0.index_key.as_ref(), email).cloned()
    }
}

/// A customer's consent ledger: the current decisions and every decision ever recorded.
#[derive(serde::Serialize)]
pub struct ConsentLedger {
    pub current: Vec<customer::ConsentState>,
    pub history: Vec<ConsentEntry>,
}

/// What an erasure did.
pub struct Erasure {
    pub customer: Customer,
    pub merged_customers_erased: Vec<String>,
    /// Data keys destroyed: the customer's, their anonymous identities', their duplicates'.
    pub keys_destroyed: usize,
    /// Messages waiting in the outbox or the dead-letter queue, dropped.
    pub pending_sends_cancelled: usize,
    /// Campaign enrolments ended (their waits with them).
    pub enrolments_ended: usize,
}

/// One page of events and the cursor for the next.
pub struct Page {
    pub events: Vec<EventEnvelope>,
    pub next: u64,
}

impl App {
    /// Start over a store: load the checkpoint (if any), catch up from the log, then keep the
    /// views current from the store's commit hook.
    pub async fn start(store: Arc<dyn EventStore>, checkpoint_path: Option<PathBuf>) -> Result<Arc<App>, AppError> {
        App::start_sealed(store, checkpoint_path, None).await
    }

    /// Like [`start`](Self::start) over a store that seals personal data (`SealedStore`) with
    /// the keys of `keys`: erasure destroys them, and the checkpoint is sealed too.
    pub async fn start_sealed(
        store: Arc<dyn EventStore>,
        checkpoint_path: Option<PathBuf>,
        keys: Option<Arc<dyn Keys>>,
    ) -> Result<Arc<App>, AppError> {
        let place = checkpoint_path.map(|p| Arc::new(CheckpointFile(p)) as Arc<dyn CheckpointPlace>);
        App::start_at(store, place, keys).await
    }

    /// Like [`start_sealed`](Self::start_sealed) with the checkpoint kept at `checkpoint_place`
    /// (a file, or the database that every node over it shares).
    pub async fn start_at(
        store: Arc<dyn EventStore>,
        checkpoint_place: Option<Arc<dyn CheckpointPlace>>,
        keys: Option<Arc<dyn Keys>>,
    ) -> Result<Arc<App>, AppError> {
        let checkpoint_keys = keys.clone().map(CheckpointKeys::new);
        let seal = checkpoint_keys.as_ref().map(|k| k as &dyn chronicle_projections::CheckpointSeal);
        let mut initial = match &checkpoint_place {
            Some(p) => {
                let (views, fresh) = chronicle_projections::resume_from(&**p, seal).map_err(|e| AppError::Internal(e.to_string()))?;
                if let Some(why) = fresh {
                    tracing::warn!(reason = %why, "rebuilding the views from the log");
                }
                views
            }
            None => Projections::new(),
        };
        if initial.position > store.head().await? {
            tracing::warn!(checkpoint = initial.position, "checkpoint is ahead of the log; rebuilding the views");
            initial = Projections::new();
        }
        // Checkpoint keys rotated out before the checkpoint read was written: destroyed again
        // (a crash may have come before they were).
        let mut still_retired = Vec::new();
        if let Some(ck) = &checkpoint_keys {
            for name in std::mem::take(&mut initial.retired_keys) {
                if let Err(e) = ck.destroy(&name) {
                    tracing::warn!(error = %e, "destroying a retired checkpoint key failed; the next checkpoint tries again");
                    still_retired.push(name);
                }
            }
        }
        let index_key = store.index_key()?;
        initial.index_key = index_key.map(chronicle_projections::IndexKey::new);
        let pseudonyms = crate::pseudonym::Pseudonyms::new(index_key);
        let reacted = AtomicU64::new(initial.reacted);
        let views = Arc::new(RwLock::new(initial));
        // Other nodes over the same database may commit while this one starts: the hook takes
        // only the event right after the views' position and notes any later one it leaves;
        // the catch-up below (the log from the checkpoint on) reads until the views hold
        // everything left (the store moves its head right after the hook), so the views never
        // skip an event whatever the interleaving.
        let hook_views = views.clone();
        let left = Arc::new(AtomicU64::new(0));
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (hook_left, hook_started) = (left.clone(), started.clone());
        let erasures = Arc::new(Erasures::default());
        let hook_erasures = erasures.clone();
        store.set_commit_hook(Arc::new(move |evs: &[Committed<'_>]| {
            let mut v = hook_views.write().expect("views lock");
            for c in evs {
                if c.position > v.position + 1 {
                    hook_left.fetch_max(c.position, Ordering::SeqCst);
                    if hook_started.load(Ordering::SeqCst) {
                        tracing::error!(position = c.position, views = v.position, "an event ahead of the views was not applied");
                    }
                    continue;
                }
                let head = Head {
                    tenant: c.tenant,
                    stream: c.stream,
                    event_type: c.event_type,
                    version: c.version,
                    position: c.position,
                    event_time: c.event_time,
                };
                v.apply_lazy(head, || Ok::<_, std::convert::Infallible>(c.envelope()));
                hook_erasures.note(c.event_type);
            }
        }));
        loop {
            catch_up(&*store, &views, &erasures).await?;
            let need = left.load(Ordering::SeqCst);
            if views.read().expect("views lock").position >= need {
                break;
            }
            let mut head = store.head_watch();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), head.wait_for(|h| *h >= need)).await;
        }
        started.store(true, Ordering::SeqCst);
        let email_locks = (0..EMAIL_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        let app = Arc::new(App {
            store,
            pseudonyms,
            views,
            checkpoint_place,
            email_locks,
            reacted,
            audit: Default::default(),
            verified: Default::default(),
            buckets: Default::default(),
            ingest_per_key: AtomicU64::new(0),
            ingest_per_address: AtomicU64::new(0),
            failed_secrets: Default::default(),
            rate_limit: AtomicU64::new(0),
            allow_private_webhooks: Default::default(),
            automation_wake: tokio::sync::Notify::new(),
            automation_gate: Default::default(),
            parked_reactions: Default::default(),
            clock: Default::default(),
            sendgrid_key: Default::default(),
            keys,
            checkpoint_keys,
            erasures,
            checkpointing: std::sync::Mutex::new(still_retired),
            metrics: Metrics::default(),
        });
        app.finish_erasures().await?;
        app.spawn_audit_flusher();
        Ok(app)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn views(&self) -> RwLockReadGuard<'_, Projections> {
        self.views.read().expect("views lock")
    }

    /// Write the views to the checkpoint; the position written, `None` without a checkpoint
    /// or when another node keeps the shared one. When the views applied an erasure since the
    /// last rotation — made here, or by another node over the same database — the checkpoint is
    /// written under a new key and the old key destroyed: the checkpoints written before (which
    /// held the person) can no longer be read. So is the key of a checkpoint this one replaced
    /// when another node had sealed it (the shared checkpoint changed hands).
    pub fn checkpoint(&self) -> Result<Option<u64>, AppError> {
        let Some(place) = &self.checkpoint_place else { return Ok(None) };
        let internal = |e: chronicle_projections::CheckpointError| AppError::Internal(e.to_string());
        let mut retired = self.checkpointing.lock().expect("checkpoint lock");
        let applied = self.erasures.applied.load(Ordering::SeqCst);
        if !place.claim().map_err(internal)? {
            // Another node keeps the shared checkpoint, and rotates its key on erasures. A
            // rotation due here stays due: should this node keep the checkpoint later, the one
            // it replaces may still be sealed under a key that saw the erased person.
            return Ok(None);
        }
        if let Some(ck) = &self.checkpoint_keys {
            if applied > self.erasures.sealed.load(Ordering::SeqCst) {
                retired.push(ck.rotate());
            }
        }
        let mut snapshot = self.views().clone();
        snapshot.reacted = self.reacted();
        // Kept in the checkpoint itself: a crash after it is written and before the keys are
        // destroyed leaves their names where the next start finds them.
        snapshot.retired_keys = retired.clone();
        let seal = self.checkpoint_keys.as_ref().map(|k| k as &dyn chronicle_projections::CheckpointSeal);
        let Saved::Written { replaced_key } = chronicle_projections::save_to(&**place, &snapshot, seal).map_err(internal)? else {
            // The lease was lost since the claim, or the stored checkpoint is further on than
            // these views: nothing written, the rotation stays due.
            return Ok(None);
        };
        self.erasures.sealed.fetch_max(applied, Ordering::SeqCst);
        // Destroyed only once a checkpoint under the new key is written; a failure keeps the
        // old names for the next checkpoint to destroy.
        if let Some(ck) = &self.checkpoint_keys {
            if let Some(old) = replaced_key.filter(|k| !retired.contains(k)) {
                retired.push(old);
            }
            while let Some(old) = retired.last() {
                ck.destroy(old).map_err(AppError::Internal)?;
                retired.pop();
            }
        }
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(Some(snapshot.position))
    }

    /// Take or renew the shared checkpoint's lease (see [`CheckpointPlace::claim`]); whether
    /// this node keeps the checkpoint.
    pub fn claim_checkpoint(&self) -> Result<bool, AppError> {
        let Some(place) = &self.checkpoint_place else { return Ok(false) };
        place.claim().map_err(|e| AppError::Internal(e.to_string()))
    }

    /// The last checkpoint of a process that stops (a server, a one-off command): written if
    /// this process keeps the checkpoint, then the shared checkpoint's lease given up, so a
    /// running node keeps it at once.
    pub fn final_checkpoint(&self) -> Result<Option<u64>, AppError> {
        let written = self.checkpoint()?;
        if let Some(place) = &self.checkpoint_place {
            place.release().map_err(|e| AppError::Internal(e.to_string()))?;
        }
        Ok(written)
    }

    /// The last log position the automation engine has reacted to.
    pub fn reacted(&self) -> u64 {
        self.reacted.load(Ordering::Relaxed)
    }

    /// Records that the engine reacted up to `position` (never moves back: a task of an
    /// earlier lease term may finish an older event late).
    pub fn set_reacted(&self, position: u64) {
        self.reacted.fetch_max(position, Ordering::Relaxed);
    }

    /// The key's tenant, kind and role; `None` for an unknown or revoked key.
    pub fn authenticate(&self, presented_key: &str) -> Option<KeyRecord> {
        if let Some(id) = keys::api_key_id(presented_key) {
            let k = self.views().api_keys.get(id).cloned()?;
            if k.revoked_at.is_some() {
                return None;
            }
            let digest = keys::digest(presented_key);
            let known = self.verified.lock().expect("verified keys lock").contains(&digest);
            if !known {
                if !self.may_try_secret(id) {
                    return None;
                }
                // argon2 is slow on purpose: the async worker is given up meanwhile.
                self.metrics.key_verifications.fetch_add(1, Ordering::Relaxed);
                if !blocking(|| keys::verify_secret(presented_key, &k.hash)) {
                    self.secret_failed(id);
                    return None;
                }
                self.verified.lock().expect("verified keys lock").insert(digest);
            }
            return Some(KeyRecord { tenant: k.tenant, kind: chronicle_projections::KeyKind::Api, role: k.role });
        }
        self.views().keys.get(&keys::digest(presented_key)).cloned()
    }

    /// Make an API key with a role; the key itself is returned once, only its hash is kept.
    pub async fn create_api_key(
        &self,
        tenant: &str,
        role: chronicle_projections::Role,
        name: Option<String>,
        actor: &str,
    ) -> Result<(chronicle_projections::ApiKey, String), AppError> {
        let (id, key, hash) = tokio::task::spawn_blocking(keys::mint_api_key).await.map_err(|e| AppError::Internal(e.to_string()))?;
        let record = chronicle_projections::ApiKey { id: id.clone(), tenant: tenant.to_owned(), role, name, hash, created_at: self.now(), revoked_at: None };
        let ev = NewEvent::new(Uuid::now_v7(), "ApiKeyCreated", json!(record), record.created_at).with_actor(actor);
        self.append(SYSTEM_TENANT, &format!("apikeys-{tenant}"), ExpectedVersion::Any, vec![ev]).await?;
        self.verified.lock().expect("verified keys lock").insert(keys::digest(&key));
        Ok((record, key))
    }

    pub fn api_keys(&self, tenant: &str) -> Vec<chronicle_projections::ApiKey> {
        let mut out: Vec<_> = self.views().api_keys.values().filter(|k| k.tenant == tenant).cloned().collect();
        out.sort_by_key(|k| k.created_at);
        out
    }

    pub async fn revoke_api_key(&self, tenant: &str, id: &str, actor: &str) -> Result<(), AppError> {
        let known = self.views().api_keys.get(id).is_some_and(|k| k.tenant == tenant);
        if !known {
            return Err(AppError::NotFound("API key"));
        }
        let ev = NewEvent::new(Uuid::now_v7(), "ApiKeyRevoked", json!({"id": id, "tenant": tenant}), self.now()).with_actor(actor);
        self.append(SYSTEM_TENANT, &format!("apikeys-{tenant}"), ExpectedVersion::Any, vec![ev]).await?;
        Ok(())
    }

    /// Take one request from the key's budget; `Err(seconds)` to wait when it is spent.
    pub fn rate_check(&self, actor: &str) -> Result<(), u64> {
        self.bucket_check(actor, self.rate_limit.load(Ordering::Relaxed))
    }

    /// Ingest's budgets: per write key (when known) and per client address (when known); the
    /// seconds to wait when either is spent.
    pub fn ingest_rate_check(&self, key: Option<&str>, address: Option<std::net::IpAddr>) -> Result<(), u64> {
        // No name is built (nor a key hashed) for a budget that is off.
        let (per_address, per_key) = (self.ingest_per_address.load(Ordering::Relaxed), self.ingest_per_key.load(Ordering::Relaxed));
        if let (Some(a), true) = (address, per_address > 0) {
            self.bucket_check(&format!("ingest-address:{a}"), per_address)?;
        }
        if let (Some(k), true) = (key, per_key > 0) {
            self.bucket_check(&format!("ingest-key:{}", keys::digest(k)), per_key)?;
        }
        Ok(())
    }

    /// Ingest requests per second a write key, and a client address, may make (twice that in
    /// a burst); 0: no limit.
    pub fn set_ingest_rate_limits(&self, per_key: u64, per_address: u64) {
        self.ingest_per_key.store(per_key, Ordering::Relaxed);
        self.ingest_per_address.store(per_address, Ordering::Relaxed);
    }

    /// Failed secret verifications allowed per key id in [`SECRET_WINDOW`].
    const SECRET_TRIES: u32 = 5;

    fn may_try_secret(&self, id: &str) -> bool {
        let f = self.failed_secrets.lock().expect("failed secrets lock");
        f.get(id).is_none_or(|(since, n)| since.elapsed() > SECRET_WINDOW || *n < Self::SECRET_TRIES)
    }

    fn secret_failed(&self, id: &str) {
        let mut f = self.failed_secrets.lock().expect("failed secrets lock");
        if f.len() > 100_000 {
            f.retain(|_, (since, _)| since.elapsed() <= SECRET_WINDOW);
        }
        let e = f.entry(id.to_owned()).or_insert((std::time::Instant::now(), 0));
        if e.0.elapsed() > SECRET_WINDOW {
            *e = (std::time::Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// One token of bucket `name`, refilled at `per_sec` (0: no limit); else the seconds to
    /// wait.
    fn bucket_check(&self, name: &str, per_sec: u64) -> Result<(), u64> {
        let per_sec = per_sec as f64;
        if per_sec <= 0.0 {
            return Ok(());
        }
        let burst = per_sec * 2.0;
        let now = std::time::Instant::now();
        let mut b = self.buckets.lock().expect("rate lock");
        if b.len() > 100_000 {
            // Client addresses come and go: buckets idle long enough to be full again go.
            b.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = b.entry(name.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }

    /// Write the audit trail noted so far (one append per tenant, on its `_audit` stream).
    pub async fn flush_audit(&self) -> Result<(), AppError> {
        for (tenant, ev) in self.audit.take(self.now()) {
            self.append(&tenant, crate::audit::STREAM, ExpectedVersion::Any, vec![ev]).await?;
        }
        Ok(())
    }

    /// Flush the audit trail every [`crate::audit::FLUSH_EVERY`] while the app lives.
    fn spawn_audit_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::audit::FLUSH_EVERY).await;
                let Some(app) = weak.upgrade() else { return };
                if let Err(e) = app.flush_audit().await {
                    tracing::warn!(error = %e, "writing the audit trail failed; retrying");
                }
            }
        });
    }

    /// Now, by the application's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.get().map_or_else(Utc::now, |c| c.now())
    }

    /// Use `clock` for "now" (tests; once, before the engine starts). Whether it was installed.
    pub fn set_clock(&self, clock: Arc<dyn crate::clock::Clock>) -> bool {
        self.clock.set(clock).is_ok()
    }

    /// Requests a key may make per second (twice that in a burst); 0: no limit.
    pub fn set_rate_limit(&self, per_sec: u64) {
        self.rate_limit.store(per_sec, Ordering::Relaxed);
    }

    /// Where tenants' webhooks may go (`--allow-private-webhooks` sets `AllowPrivate`); the
    /// campaign's save checks literal addresses against it, the engine every resolved one.
    pub fn set_webhook_targets(&self, targets: crate::automation::targets::WebhookTargets) {
        let allow = targets == crate::automation::targets::WebhookTargets::AllowPrivate;
        self.allow_private_webhooks.store(allow, Ordering::Relaxed);
    }

    pub fn webhook_targets(&self) -> crate::automation::targets::WebhookTargets {
        match self.allow_private_webhooks.load(Ordering::Relaxed) {
            true => crate::automation::targets::WebhookTargets::AllowPrivate,
            false => crate::automation::targets::WebhookTargets::PublicOnly,
        }
    }

    /// Create a tenant and return its freshly minted (api_key, write_key); only hashes are kept.
    pub async fn create_tenant(&self, name: &str) -> Result<(String, String), AppError> {
        keys::validate_tenant_name(name)?;
        let api_key = keys::mint("ck");
        let write_key = keys::mint("wk");
        let data = json!({"name": name, "api_key_sha256": keys::digest(&api_key), "write_key_sha256": keys::digest(&write_key)});
        let ev = NewEvent::new(Uuid::now_v7(), "TenantCreated", data, self.now()).with_actor("cli");
        match self.store.append(SYSTEM_TENANT, &format!("tenant-{name}"), ExpectedVersion::NoStream, vec![ev]).await {
            Ok(_) => Ok((api_key, write_key)),
            Err(AppendError::Conflict { .. }) => {
                Err(AppError::Conflict { code: "tenant_exists", message: format!("tenant {name} already exists") })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Decide against the current view and append with the view's version as the expected
    /// version; when another writer got there first, decide again on the newer state.
    async fn run_command(
        &self,
        tenant: &str,
        stream: &str,
        actor: &str,
        decide: impl FnMut(&Projections) -> Result<(u64, Vec<(String, Value)>), AppError>,
    ) -> Result<Option<AppendResult>, AppError> {
        self.run_command_from(tenant, stream, actor, None, decide).await
    }

    /// `run_command` for a command caused by an outside message: its events get ids derived
    /// from `cause` (so a redelivered message is a replay, not a second effect) and the
    /// message's time.
    async fn run_command_from(
        &self,
        tenant: &str,
        stream: &str,
        actor: &str,
        cause: Option<(&str, DateTime<Utc>)>,
        mut decide: impl FnMut(&Projections) -> Result<(u64, Vec<(String, Value)>), AppError>,
    ) -> Result<Option<AppendResult>, AppError> {
        for _ in 0..COMMAND_ATTEMPTS {
            let (version, events) = decide(&self.views())?;
            if events.is_empty() {
                return Ok(None);
            }
            let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
            let now = cause.map_or_else(|| self.now(), |(_, at)| at);
            let batch = events
                .into_iter()
                .enumerate()
                .map(|(i, (ty, data))| {
                    let id = match cause {
                        Some((key, _)) => chronicle_core::ids::event_id(tenant, &format!("{key}/{stream}/{i}")),
                        None => Uuid::now_v7(),
                    };
                    NewEvent::new(id, ty, data, now).with_actor(actor)
                })
                .collect();
            match self.append(tenant, stream, expected, batch).await {
                Ok(r) => return Ok(Some(r)),
                // Another writer (maybe another node) won: decide again on the state after it.
                Err(AppError::VersionConflict { .. }) => {
                    self.store.sync().await?;
                    continue;
                }
                // The ids derive from the cause, and an append is all or nothing: a stored id
                // means this message already had its effect (decided then on an older state).
                Err(AppError::Conflict { code: "event_id_reused", .. }) if cause.is_some() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Err(AppError::Conflict { code: "contention", message: format!("stream {stream} kept changing; try again") })
    }

    /// Run a command on a customer; returns the customer as it is after it.
    pub async fn customer_command(
        &self,
        tenant: &str,
        id: &str,
        cmd: CustomerCommand,
        actor: &str,
    ) -> Result<Customer, AppError> {
        self.customer_command_from(tenant, id, cmd, actor, None).await
    }

    /// `customer_command` on behalf of an outside message (`cause`: its key and time), whose
    /// events get ids derived from the key: delivering the message again has no second effect,
    /// even when the customer has changed since.
    pub async fn customer_command_from(
        &self,
        tenant: &str,
        id: &str,
        cmd: CustomerCommand,
        actor: &str,
        cause: Option<(&str, DateTime<Utc>)>,
    ) -> Result<Customer, AppError> {
        self.customer_commands_from(tenant, id, vec![cmd], actor, cause, None).await
    }

    /// Several commands on one customer as one decision and one append: all of them take
    /// effect or none does (each is decided on the state the ones before it leave).
    ///
    /// `record` (an event type and payload: the outside message itself) is written after the
    /// commands' events in the same append, even when they change nothing. With a `cause`, that makes the
    /// message's handling a fact in the log: delivered again later, it finds its ids stored
    /// and has no effect, rather than being decided afresh on a newer state (an old identify
    /// undoing a newer one's traits).
    pub async fn customer_commands_from(
        &self,
        tenant: &str,
        id: &str,
        cmds: Vec<CustomerCommand>,
        actor: &str,
        cause: Option<(&str, DateTime<Utc>)>,
        record: Option<(String, Value)>,
    ) -> Result<Customer, AppError> {
        validate_id(id)?;
        let claimed = cmds.iter().find_map(|cmd| match cmd {
            CustomerCommand::Register { email: Some(e), .. }
            | CustomerCommand::UpdateProfile { email: Some(e), .. } => customer::normalize_email(e).ok(),
            _ => None,
        });
        // Two commands can't claim one address: claims of the same address take turns.
        let _guard = match &claimed {
            Some(e) => Some(self.email_locks[email_stripe(e)].lock().await),
            None => None,
        };
        let stream = customer::stream_of(id);
        self.run_command_from(tenant, &stream, actor, cause, |v| {
            let mut state = v.customer(tenant, id).cloned().unwrap_or_else(|| Customer::new(id));
            let version = state.version;
            let emails = ViewEmails(v, tenant);
            let mut out = Vec::new();
            for cmd in &cmds {
                for e in state.decide(cmd.clone(), &emails)? {
                    state.apply(&e, state.version + 1, self.now());
                    out.push(e.to_parts());
                }
            }
            out.extend(record.iter().cloned());
            Ok((version, out))
        })
        .await?;
        self.customer(tenant, id)
    }

    pub async fn deal_command(&self, tenant: &str, id: &str, cmd: DealCommand, actor: &str) -> Result<Deal, AppError> {
        validate_id(id)?;
        self.run_command(tenant, &deal::stream_of(id), actor, |v| {
            let state = v.tenant(tenant).and_then(|t| t.deals.get(id)).cloned().unwrap_or_else(|| Deal::new(id));
            let events = state.decide(cmd.clone())?;
            Ok((state.version, events.iter().map(|e| e.to_parts()).collect()))
        })
        .await?;
        self.deal(tenant, id)
    }

    /// Run a command on an order on behalf of an outside message (`cause`: its key and time).
    pub async fn order_command(
        &self,
        tenant: &str,
        id: &str,
        cmd: OrderCommand,
        actor: &str,
        cause: (&str, DateTime<Utc>),
    ) -> Result<(), AppError> {
        validate_id(id)?;
        self.run_command_from(tenant, &order::stream_of(id), actor, Some(cause), |v| {
            let state = v.tenant(tenant).and_then(|t| t.orders.get(id)).cloned().unwrap_or_else(|| Order::new(id));
            let events = state.decide(cmd.clone())?;
            Ok((state.version, events.iter().map(|e| e.to_parts()).collect()))
        })
        .await?;
        Ok(())
    }

    /// Append raw events (the streams API); counts and maps store errors.
    pub async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppError> {
        let n = events.len() as u64;
        match self.store.append(tenant, stream, expected, events).await {
            Ok(r) => {
                self.metrics.appends.fetch_add(1, Ordering::Relaxed);
                self.metrics.events_appended.fetch_add(n, Ordering::Relaxed);
                Ok(r)
            }
            Err(e) => {
                if matches!(e, AppendError::Conflict { .. }) {
                    self.metrics.append_conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }

    pub fn customer(&self, tenant: &str, id: &str) -> Result<Customer, AppError> {
        match self.views().customer(tenant, id) {
            Some(c) if c.exists => Ok(c.clone()),
            _ => Err(AppError::NotFound("customer")),
        }
    }

    pub fn deal(&self, tenant: &str, id: &str) -> Result<Deal, AppError> {
        match self.views().tenant(tenant).and_then(|t| t.deals.get(id)) {
            Some(d) if d.exists => Ok(d.clone()),
            _ => Err(AppError::NotFound("deal")),
        }
    }

    pub fn order(&self, tenant: &str, id: &str) -> Result<Order, AppError> {
        match self.views().tenant(tenant).and_then(|t| t.orders.get(id)) {
            Some(o) if o.status != order::OrderStatus::None => Ok(o.clone()),
            _ => Err(AppError::NotFound("order")),
        }
    }

    pub fn pipeline(&self, tenant: &str) -> Pipeline {
        self.views()
            .tenant(tenant)
            .map(|t| t.pipeline())
            .unwrap_or_else(|| chronicle_projections::TenantViews::default().pipeline())
    }

    /// The customer as it was at instant `t` (by event time): the latest snapshot that lies
    /// wholly before `t`, plus the stream's later events that happened by `t` — read only from
    /// the blocks of versions known to hold such an event.
    pub async fn customer_as_of(&self, tenant: &str, id: &str, t: DateTime<Utc>) -> Result<Customer, AppError> {
        chronicle_core::time::check("as_of", t).map_err(|e| AppError::BadRequest(e.to_string()))?;
        let (base, ranges) = {
            let v = self.views();
            let tv = v
                .tenant(tenant)
                .filter(|tv| tv.customers.get(id).is_some_and(|c| c.exists))
                .ok_or(AppError::NotFound("customer"))?;
            let base = tv.snapshot_for(id, t).cloned();
            let ranges = tv.as_of_ranges(id, base.as_ref(), t, v.snapshot_every);
            (base, ranges)
        };
        let stream = customer::stream_of(id);
        let mut events = Vec::new();
        for (from, to) in ranges {
            // As stored: only the customer's own events are opened and parsed.
            let page = self.store.read_stream_raw(tenant, &stream, from, (to - from + 1) as usize).await?;
            events.extend(page.into_iter().filter(|e| e.event_time <= t));
        }
        let c = chronicle_projections::fold_customer_raw(id, base.as_ref(), events, |raw| self.store.open_raw(raw));
        if c.exists {
            Ok(c)
        } else {
            Err(AppError::NotFound("customer"))
        }
    }

    /// A customer's timeline: the events of the customer's stream, of every duplicate merged
    /// into it and of every anonymous identity linked to it, in commit order, paged by global position (`after` exclusive;
    /// `next` is the last position scanned).
    pub async fn timeline(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        limit: usize,
        as_of: Option<DateTime<Utc>>,
        types: &[String],
    ) -> Result<Page, AppError> {
        if let Some(t) = as_of {
            chronicle_core::time::check("as_of", t).map_err(|e| AppError::BadRequest(e.to_string()))?;
        }
        let c = self.customer(tenant, id)?;
        let mut streams = vec![customer::stream_of(id)];
        streams.extend(c.merged_ids.iter().map(|m| customer::stream_of(m)));
        streams.extend(c.anonymous_ids.iter().map(|a| format!("anonymous-{a}")));
        let limit = limit.max(1);
        let mut out = Vec::new();
        let mut next = after;
        loop {
            // The first `limit` events after the cursor of each stream hold the first `limit`
            // of the merge.
            let mut chunk = Vec::new();
            for s in &streams {
                if let Some(v) = self.first_version_after(tenant, s, next).await? {
                    chunk.extend(self.store.read_stream(tenant, s, v, limit).await?);
                }
            }
            if chunk.is_empty() {
                break;
            }
            chunk.sort_by_key(|e| e.position);
            chunk.truncate(limit);
            for ev in chunk {
                if out.len() == limit {
                    break;
                }
                next = ev.position;
                // An expired event's tombstone keeps its place in the log, not in the timeline.
                if as_of.is_some_and(|t| ev.event_time > t)
                    || (!types.is_empty() && !types.contains(&ev.event_type))
                    || ev.event_type == chronicle_core::envelope::EXPIRED_TYPE
                {
                    continue;
                }
                let mut ev = ev;
                if c.status == customer::CustomerStatus::Erased && ev.event_type != "CustomerErased" {
                    // The timeline is a read model too: an erased person's is redacted (with
                    // crypto-shredding on, the log itself no longer opens).
                    ev.data = json!({"redacted": true});
                }
                out.push(ev);
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(Page { events: out, next })
    }

    /// The first version of a stream whose position is after `position` (binary search over
    /// the stream; positions grow with versions).
    async fn first_version_after(&self, tenant: &str, stream: &str, position: u64) -> Result<Option<u64>, AppError> {
        let n = self.store.stream_version(tenant, stream).await?;
        let (mut lo, mut hi) = (1, n + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.store.read_stream(tenant, stream, mid, 1).await?;
            match at.first() {
                Some(e) if e.position > position => hi = mid,
                Some(_) => lo = mid + 1,
                None => hi = mid,
            }
        }
        Ok((lo <= n).then_some(lo))
    }

    /// Link an anonymous identity to a customer (identity resolution); refused when it is
    /// already linked to someone else.
    pub async fn link_identity(&self, tenant: &str, id: &str, anonymous_id: &str, actor: &str) -> Result<(), AppError> {
        if let Some(owner) = self.identity_owner(tenant, anonymous_id) {
            if owner != id {
                return Err(AppError::Conflict {
                    code: "identity_linked_elsewhere",
                    message: "this anonymous id is already linked to another customer".into(),
                });
            }
            return Ok(());
        }
        self.customer_command(
            tenant,
            id,
            CustomerCommand::LinkIdentity { anonymous_id: anonymous_id.to_owned() },
            actor,
        )
        .await?;
        Ok(())
    }

    /// Merge the duplicate `from` into `survivor` (CustomerMergedInto on the duplicate, then
    /// CustomersMerged on the survivor). Both are checked before anything is written; a merge
    /// cut off between its two appends (a crash) is finished by running it again, and running
    /// a finished merge again changes nothing.
    pub async fn merge_customers(
        &self,
        tenant: &str,
        survivor: &str,
        from: &str,
        actor: &str,
    ) -> Result<Customer, AppError> {
        validate_id(survivor)?;
        validate_id(from)?;
        // No e-mail lock: an address only moves from the duplicate to the survivor, and while
        // it moves the index names one of the two, so no third customer can claim it.
        let s = self.customer(tenant, survivor)?;
        let d = self.customer(tenant, from)?;
        if s.merged_ids.contains(from) {
            return Ok(s);
        }
        // Dry-run both halves on the current states, so a refusal writes nothing.
        let mut marked = d.clone();
        if d.merged_into.as_deref() != Some(survivor) {
            let evs = d.decide(CustomerCommand::MergeInto { survivor: survivor.to_owned() }, &customer::NoEmails)?;
            evs.iter().for_each(|e| marked.apply(e, d.version + 1, self.now()));
        }
        s.decide(CustomerCommand::Absorb { other: Box::new(marked) }, &customer::NoEmails)?;
        self.customer_command(tenant, from, CustomerCommand::MergeInto { survivor: survivor.to_owned() }, actor)
            .await?;
        let frozen = self.customer(tenant, from)?;
        self.customer_command(tenant, survivor, CustomerCommand::Absorb { other: Box::new(frozen) }, actor).await
    }

    /// Erase a customer and every duplicate merged into it (one person, one erasure).
    /// Erase a customer (and the duplicates merged into them): `CustomerErased` on each, the
    /// read models redacted (and their pending sends and waits cancelled) in the same commit
    /// path, then — with crypto-shredding on — their data keys and those of their anonymous
    /// identities destroyed, and a new checkpoint written under a new key.
    pub async fn erase_customer(&self, tenant: &str, id: &str, actor: &str) -> Result<Erasure, AppError> {
        let c = self.customer(tenant, id)?;
        let mut people = vec![c.clone()];
        for m in &c.merged_ids {
            if let Some(d) = self.views().customer(tenant, m).cloned() {
                people.push(d);
            }
        }
        let (sends, waits) = {
            let v = self.views();
            let a = v.tenant(tenant).map(|t| &t.automation);
            let ids: Vec<&str> = people.iter().map(|p| p.id.as_str()).collect();
            let sends = a.map_or(0, |a| {
                a.outbox.values().chain(a.dead_letters.values()).filter(|m| ids.contains(&m.customer.as_str())).count()
            });
            let waits = a.map_or(0, |a| {
                ids.iter().map(|i| a.active.get(*i).map_or(0, Vec::len)).sum::<usize>()
            });
            (sends, waits)
        };
        let reason = || CustomerCommand::Erase { reason: Some("erasure request".into()) };
        // Erased already (a request repeated after a crash cut the first short): go on to the keys.
        let erased = match self.customer_command(tenant, id, reason(), actor).await {
            Err(AppError::Rule { code: "customer_erased", .. }) => c.clone(),
            other => other?,
        };
        for m in &c.merged_ids {
            match self.customer_command(tenant, m, reason(), actor).await {
                Ok(_) | Err(AppError::Rule { code: "customer_erased", .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut keys_destroyed = 0;
        if self.keys.is_some() {
            for p in &people {
                for stream in owner_streams(&p.id, &p.anonymous_ids) {
                    keys_destroyed += self.store.destroy_keys(tenant, &stream).await?;
                }
            }
            // The checkpoint on disk still holds the person's data: replaced now, under a new
            // key (the views applied the erasure, so `checkpoint` rotates). Off the async
            // thread: the checkpoint writer woken by the same erasure may hold the checkpoint's
            // lock while it waits on the database, which needs this runtime's threads.
            blocking(|| self.checkpoint())?;
        }
        Ok(Erasure {
            customer: erased,
            merged_customers_erased: c.merged_ids.iter().cloned().collect(),
            keys_destroyed,
            pending_sends_cancelled: sends,
            enrolments_ended: waits,
        })
    }

    /// Destroy the keys an erasure cut short by a crash left behind: every erased customer's,
    /// and their anonymous identities' (the erased record keeps those ids). A stream is read
    /// (for the pooled keys its events name) only when its owner still has a key, or when a
    /// crash left keys whose owner is unknown.
    async fn finish_erasures(&self) -> Result<(), AppError> {
        let Some(keys) = &self.keys else { return Ok(()) };
        let streams: Vec<(String, String, String)> = {
            let v = self.views();
            let mut out = Vec::new();
            for (t, views) in &v.tenants {
                for c in views.customers.values().filter(|c| c.status == customer::CustomerStatus::Erased) {
                    let owners = std::iter::once(c.id.clone())
                        .chain(c.anonymous_ids.iter().map(|a| chronicle_privacy::seal::anonymous_owner(a)));
                    for (owner, stream) in owners.zip(owner_streams(&c.id, &c.anonymous_ids)) {
                        out.push((t.clone(), owner, stream));
                    }
                }
            }
            out
        };
        let orphans = keys.orphans() > 0;
        let mut destroyed = 0;
        for (tenant, owner, stream) in streams {
            if orphans || keys.get(&tenant, &owner).is_some() {
                destroyed += self.store.destroy_keys(&tenant, &stream).await?;
            }
        }
        if destroyed > 0 {
            tracing::info!(keys = destroyed, "destroyed the keys of erasures a crash had cut short");
        }
        Ok(())
    }

    /// Who read or changed the customer's data through the API, oldest first (what is still
    /// waiting to be written included).
    pub fn audit_trail(&self, tenant: &str, id: &str) -> Vec<chronicle_projections::AuditEntry> {
        self.views().tenant(tenant).and_then(|t| t.audit.get(id)).cloned().unwrap_or_default()
    }

    /// Subject access: everything held about a person as one document — the profile, every
    /// event of their timeline (their anonymous history and merged duplicates included, opened
    /// where sealing is on), the consent ledger with its proofs, the messages waiting or dead-
    /// lettered, and their campaign enrolments. `profile` is how the API shows a profile.
    pub async fn export_customer(&self, tenant: &str, id: &str) -> Result<Value, AppError> {
        let profile = crate::profile::profile_json;
        let c = self.customer(tenant, id)?;
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self.timeline(tenant, id, after, 1000, None, &[]).await?;
            if page.events.is_empty() {
                break;
            }
            after = page.next;
            events.extend(page.events);
        }
        let consents = self.consents(tenant, id)?;
        let (messages, enrolments) = {
            let v = self.views();
            let a = v.tenant(tenant).map(|t| &t.automation);
            let messages: Vec<Value> = a.map_or_else(Vec::new, |a| {
                a.outbox
                    .values()
                    .map(|m| (m, "queued"))
                    .chain(a.dead_letters.values().map(|m| (m, "dead_letter")))
                    .filter(|(m, _)| m.customer == id)
                    .map(|(m, state)| json!({"id": m.message, "state": state, "channel": m.channel, "purpose": m.purpose,
                                              "to": m.to, "subject": m.subject, "body": m.body, "queued_at": m.queued_at,
                                              "attempts": m.attempts}))
                    .collect()
            });
            let enrolments: Vec<Value> = a.map_or_else(Vec::new, |a| {
                a.enrolments.values().filter(|e| e.customer == id).map(|e| json!(e)).collect()
            });
            (messages, enrolments)
        };
        Ok(json!({
            "exported_at": self.now(),
            "tenant": tenant,
            "customer": profile(&c),
            "consents": consents,
            "events": events,
            "messages": messages,
            "campaign_enrolments": enrolments,
            "scores": [],
        }))
    }

    /// The customer an anonymous id is linked to, if any.
    pub fn identity_owner(&self, tenant: &str, anonymous_id: &str) -> Option<String> {
        self.views().tenant(tenant)?.identities.get(anonymous_id).cloned()
    }

    pub fn consents(&self, tenant: &str, id: &str) -> Result<ConsentLedger, AppError> {
        let c = self.customer(tenant, id)?;
        let history = self.views().tenant(tenant).and_then(|t| t.consent_history.get(id)).cloned().unwrap_or_default();
        Ok(ConsentLedger { current: c.consents.into_values().collect(), history })
    }

    /// The send decision's consent step: read from the inline view, so a revocation that
    /// committed before this call is always seen.
    pub fn consent_check(&self, tenant: &str, id: &str, channel: Channel, purpose: Purpose) -> ConsentDecision {
        self.metrics.consent_checks.fetch_add(1, Ordering::Relaxed);
        self.views().consent_check(tenant, id, channel, purpose)
    }

    /// The tenant's events after `after` (exclusive), at most `limit`; `next` is the last
    /// position scanned, to pass as `after` for the following page.
    pub async fn events(&self, tenant: &str, after: u64, limit: usize) -> Result<Page, AppError> {
        let mut out = Vec::new();
        let mut next = after;
        loop {
            let page = self.store.read_all(next, limit.max(1)).await?;
            let Some(last) = page.last() else { break };
            let scanned = last.position;
            for ev in page {
                if out.len() == limit {
                    break;
                }
                next = ev.position;
                if ev.tenant == tenant && !crate::audit::is_internal(&ev.stream) {
                    out.push(ev);
                }
            }
            if out.len() == limit || next < scanned {
                break;
            }
        }
        Ok(Page { events: out, next })
    }

    pub async fn read_stream(&self, tenant: &str, stream: &str, after: u64, limit: usize) -> Result<Page, AppError> {
        let events = self.store.read_stream(tenant, stream, after + 1, limit).await?;
        let next = events.last().map_or(after, |e| e.version);
        Ok(Page { events, next })
    }
}

fn email_stripe(email: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(email);
    (h % EMAIL_STRIPES as u64) as usize
}

fn validate_id(id: &str) -> Result<(), AppError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AppError::BadRequest("id must be 1-128 characters of letters, digits and - _ . @ :".into()))
    }
}

/// Applies the log past the views' position; erasures among it are counted, so the next
/// checkpoint rotates the key that sealed the checkpoint read at start (it held the person).
async fn catch_up(store: &dyn EventStore, views: &RwLock<Projections>, erasures: &Erasures) -> Result<(), AppError> {
    loop {
        let after = views.read().expect("views lock").position;
        let page = store.read_all(after, 10_000).await?;
        if page.is_empty() {
            return Ok(());
        }
        let mut v = views.write().expect("views lock");
        for e in &page {
            v.apply(e);
            erasures.note(&e.event_type);
        }
    }
}
