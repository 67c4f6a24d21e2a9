//! The running system, composed in one place: [`Application::build`] opens the storage (the
//! embedded store, or PostgreSQL shared by many nodes), starts the views from their checkpoint,
//! loads the campaigns folder, makes the automation engine and binds the listener;
//! [`Application::run_until_stopped`] runs the engine (alone, or on the shards its leases hold),
//! the views' checkpoint (periodically, at once after an erasure, by the holder of its lease over
//! a shared database) and the HTTP server, then stops in order — in-flight requests finished, the
//! audit trail flushed, a final checkpoint written, the campaign work handed over.
//!
//! `chronicle serve` and `chronicle demo` parse their arguments into a [`Config`] and call these
//! two; so do the API tests, so the tests run what production runs.

use crate::http::serve::ServeOptions;
use crate::http::Api;
use chronicle_app::automation::{delivery::DeliveryError, lease, Engine, EngineConfig};
use chronicle_app::targets::WebhookTargets;
use chronicle_app::error::AppError;
use chronicle_app::storage::{self, Storage, StorageConfig, StorageError};
use chronicle_app::App;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the views' checkpoint is written.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping node waits for its deliveries in flight before handing the campaign
/// work to another node.
const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

/// Request budgets; 0 is no limit (see `App::set_rate_limit`, `App::set_ingest_rate_limits`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Requests per second per API key.
    pub per_key: u64,
    /// Ingest requests per second per write key, and per client address.
    pub ingest_per_key: u64,
    pub ingest_per_address: u64,
}

/// Everything the running system is made from.
#[derive(Clone)]
pub struct Config {
    pub storage: StorageConfig,
    pub listen: SocketAddr,
    pub serve: ServeOptions,
    pub limits: Limits,
    pub engine: EngineConfig,
    /// Where tenants' webhooks may go.
    pub webhook_targets: WebhookTargets,
    /// A folder of campaigns and templates loaded at start (`TENANT/campaigns/NAME.json`).
    pub campaigns: Option<PathBuf>,
    /// How often the views' checkpoint is written ([`CHECKPOINT_EVERY`] in production).
    pub checkpoint_every: Duration,
}

impl Config {
    /// The system over `storage` on `listen`, with the defaults of `chronicle serve` where the
    /// flags are not given, except budgets (none).
    pub fn new(storage: StorageConfig, listen: SocketAddr) -> Config {
        Config {
            storage,
            listen,
            serve: ServeOptions::default(),
            limits: Limits::default(),
            engine: EngineConfig::default(),
            webhook_targets: WebhookTargets::PublicOnly,
            campaigns: None,
            checkpoint_every: CHECKPOINT_EVERY,
        }
    }
}

/// Why the system could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("loading campaigns from {}", .folder.display())]
    Campaigns {
        folder: PathBuf,
        #[source]
        cause: AppError,
    },
    #[error("starting the automation engine")]
    Engine(#[source] DeliveryError),
    #[error("binding {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        cause: std::io::Error,
    },
}

/// Why the running system stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    #[error("writing the audit trail")]
    Audit(#[source] AppError),
    #[error("writing the final checkpoint")]
    Checkpoint(#[source] AppError),
    #[error("handing the campaign work over")]
    HandOver(#[source] chronicle_store::ReadError),
}

/// The system, built and bound, not yet running.
pub struct Application {
    storage: Storage,
    app: Arc<App>,
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    serve: ServeOptions,
    checkpoint_every: Duration,
}

impl Application {
    /// Open the storage, start the views, load the campaigns, make the engine and bind the
    /// listener (port 0 picks a free one; see [`address`](Self::address)).
    pub async fn build(config: Config) -> Result<Application, BuildError> {
        let storage = storage::open(&config.storage)?;
        let app = storage.app().await?;
        app.set_rate_limit(config.limits.per_key);
        app.set_ingest_rate_limits(config.limits.ingest_per_key, config.limits.ingest_per_address);
        app.set_webhook_targets(config.webhook_targets);
        if let Some(folder) = &config.campaigns {
            let changed = chronicle_app::automation::definitions::load_folder(&app, folder)
                .await
                .map_err(|cause| BuildError::Campaigns { folder: folder.clone(), cause })?;
            tracing::info!(changed, folder = %folder.display(), "campaigns and templates loaded");
        }
        // Over a shared database the campaign work is shared out by tenant in leased shards
        // (see `automation::lease`); alone, this node does all of it.
        let gate = if storage.pg.is_some() { lease::Gate::leased() } else { lease::Gate::always() };
        let engine = Engine::new(app.clone(), config.engine, gate).map_err(BuildError::Engine)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|cause| BuildError::Bind { address: config.listen, cause })?;
        Ok(Application { storage, app, engine, listener, serve: config.serve, checkpoint_every: config.checkpoint_every })
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The application (to prepare data before running, as the demo does).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// The automation engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Run until `shutdown` resolves, then stop in order. Returns the final checkpoint's
    /// position (`None` when another node keeps the shared checkpoint).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<Option<u64>, RunError> {
        let Application { storage, app, engine, listener, serve, checkpoint_every } = self;
        engine.run();
        let holder = storage.holder.clone();
        let leases = storage.pg.clone().map(|pg| pg as Arc<dyn chronicle_store::Leases>);
        let renewal = leases.clone().map(|l| lease::renew(app.clone(), l, engine.gate().clone(), engine.clone(), holder.clone()));
        // Over a shared database one node writes the views' checkpoint: the holder of its lease,
        // renewed more often than checkpoints are written, so a dead holder's duty moves within
        // seconds. Alone, this node writes its own.
        let claims = leases.is_some().then(|| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(storage::VIEWS_LEASE_RENEW);
                loop {
                    every.tick().await;
                    let a = app.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.claim_checkpoint()).await {
                        tracing::warn!(error = &e as &dyn std::error::Error, "renewing the checkpoint's lease failed");
                    }
                }
            })
        });
        let ticker = tokio::spawn(checkpoints(app.clone(), checkpoint_every));
        let api = Api { app: app.clone(), engine: engine.clone() };
        let served = crate::serve_with(api, listener, shutdown, serve).await;
        ticker.abort();
        if let Some(claims) = claims {
            claims.abort();
        }
        served.map_err(RunError::Serve)?;
        app.flush_audit().await.map_err(RunError::Audit)?;
        let written = app.final_checkpoint().map_err(RunError::Checkpoint)?;
        if let (Some(leases), Some(renewal)) = (leases, renewal) {
            // Handed over now rather than when the leases run out.
            lease::hand_over(renewal, engine.gate(), &*engine, &*leases, &holder, HAND_OVER_WAIT)
                .await
                .map_err(RunError::HandOver)?;
        }
        drop(storage);
        Ok(written)
    }
}

/// Write the views' checkpoint every `every`, and at once after an erasure (on any node): the
/// checkpoint is rewritten under a new key and the one that sealed the person's data destroyed.
async fn checkpoints(app: Arc<App>, every: Duration) {
    let mut every = tokio::time::interval(every);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = app.erasures.wake.notified() => {}
        }
        let a = app.clone();
        match tokio::task::spawn_blocking(move || a.checkpoint()).await {
            Ok(Ok(Some(pos))) => tracing::debug!(position = pos, "checkpoint written"),
            Ok(Ok(None)) => tracing::debug!("checkpoint kept by another node"),
            Ok(Err(e)) => tracing::warn!(error = &e as &dyn std::error::Error, "checkpoint failed"),
            Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "checkpoint task failed"),
        }
    }
}
