//! The application service: runs commands through the pure domain and the store, keeps the
//! read models current in the commit path, and answers queries. The HTTP layer and the CLI
//! both drive Chronicle through this one type. Its work is split by responsibility:
//!
//! - [`commands`]: commands decided against the views and appended; raw appends; identities.
//! - [`queries`]: reads of the views and, for a past instant, of the log.
//! - [`access`]: tenants, keys and authentication, request budgets.
//! - [`views`]: the checkpoint (sealed, rotated after an erasure) and its lease.
//! - [`privacy`]: erasure, export and the access audit trail.
//!
//! This file holds the type and its start: the checkpoint read, the commit hook installed, the
//! log caught up.

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

mod access;
mod budgets;
mod commands;
pub mod indexes;
mod people;
mod privacy;
mod queries;
mod views;

pub use queries::ListFilter;
pub(crate) use queries::check_as_of;
pub use people::{SignInError, SignedIn, MIN_PASSWORD, SESSION_HOURS};
pub use privacy::{Export, ExportedMessage, MessageState};

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

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// The labelled families and histograms (see [`crate::telemetry`]).
    pub labelled: crate::telemetry::Telemetry,
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
    /// Tenants' keys verified in this process, and the request budgets.
    budgets: budgets::Budgets,
    /// The tenants' analytics indexes (see [`indexes`]).
    pub(crate) analytics: indexes::Indexes,
    /// Whether tenants' webhooks may reach internal addresses (see `automation::targets`).
    allow_private_webhooks: std::sync::atomic::AtomicBool,
    /// Where "now" comes from (the wall clock unless a test installs another, see
    /// [`App::set_clock`]).
    clock: std::sync::OnceLock<Arc<dyn crate::clock::Clock>>,
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


/// A customer's consent ledger: the current decisions and every decision ever recorded.
#[derive(serde::Serialize, schemars::JsonSchema)]
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
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Page {
    pub events: Vec<EventEnvelope>,
    /// The cursor of the next page (`?after=`).
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
                let (views, fresh) = chronicle_projections::resume_from(&**p, seal).map_err(|e| AppError::internal("reading the views' checkpoint", e))?;
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
                    tracing::warn!(error = &e as &dyn std::error::Error, "destroying a retired checkpoint key failed; the next checkpoint tries again");
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
            budgets: Default::default(),
            analytics: Default::default(),
            allow_private_webhooks: Default::default(),
            clock: Default::default(),
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

    /// Now, by the application's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.get().map_or_else(Utc::now, |c| c.now())
    }

    /// Use `clock` for "now" (tests; once, before the engine starts). Whether it was installed.
    pub fn set_clock(&self, clock: Arc<dyn crate::clock::Clock>) -> bool {
        self.clock.set(clock).is_ok()
    }

    /// Where tenants' webhooks may go (`--allow-private-webhooks` sets `AllowPrivate`); the
    /// campaign's save checks literal addresses against it, the engine every resolved one.
    pub fn set_webhook_targets(&self, targets: crate::targets::WebhookTargets) {
        let allow = targets == crate::targets::WebhookTargets::AllowPrivate;
        self.allow_private_webhooks.store(allow, Ordering::Relaxed);
    }

    pub fn webhook_targets(&self) -> crate::targets::WebhookTargets {
        match self.allow_private_webhooks.load(Ordering::Relaxed) {
            true => crate::targets::WebhookTargets::AllowPrivate,
            false => crate::targets::WebhookTargets::PublicOnly,
        }
    }
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
