//! The running system around an [`App`]: the HTTP server with its limits, the views' checkpoint
//! written periodically (and at once after an erasure, on any node), the checkpoint's lease
//! renewed over a shared database, and the orderly stop — in-flight requests finished, the audit
//! trail flushed, a final checkpoint written. `chronicle serve` and `chronicle demo` run it, and
//! so do the API tests, so the tests run what production runs.

use chronicle_app::app::App;
use chronicle_app::error::AppError;
use crate::http::serve::ServeOptions;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often the views' checkpoint is written.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// Where the running system keeps its checkpoint duty.
#[derive(Debug, Clone, Copy)]
pub struct Checkpointing {
    /// How often the checkpoint is written ([`CHECKPOINT_EVERY`] in production).
    pub every: Duration,
    /// Over a database other nodes share: how often this node renews the checkpoint's lease
    /// (one node writes it; a dead holder's duty moves within a few renewals). `None` alone.
    pub lease_renewal: Option<Duration>,
}

impl Default for Checkpointing {
    fn default() -> Self {
        Checkpointing { every: CHECKPOINT_EVERY, lease_renewal: None }
    }
}

/// Why the running system stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
    #[error("writing the audit trail: {0}")]
    Audit(#[source] AppError),
    #[error("writing the final checkpoint: {0}")]
    Checkpoint(#[source] AppError),
}

/// Serve `app` on `listener` with its background duties until `shutdown` resolves, then stop in
/// order. Returns the final checkpoint's position (`None` when another node keeps it).
pub async fn run_until_stopped(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
    checkpointing: Checkpointing,
) -> Result<Option<u64>, RunError> {
    let claims = checkpointing.lease_renewal.map(|renew| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(renew);
            loop {
                every.tick().await;
                let a = app.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.claim_checkpoint()).await {
                    tracing::warn!(error = %e, "renewing the checkpoint's lease failed");
                }
            }
        })
    });
    let ticker_app = app.clone();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(checkpointing.every);
        every.tick().await;
        loop {
            // At once after an erasure (on any node): the checkpoint is rewritten under a new
            // key and the one that sealed the person's data destroyed.
            tokio::select! {
                _ = every.tick() => {}
                _ = ticker_app.erasures.wake.notified() => {}
            }
            let a = ticker_app.clone();
            match tokio::task::spawn_blocking(move || a.checkpoint()).await {
                Ok(Ok(Some(pos))) => tracing::debug!(position = pos, "checkpoint written"),
                Ok(Ok(None)) => tracing::debug!("checkpoint kept by another node"),
                Ok(Err(e)) => tracing::warn!(error = %e, "checkpoint failed"),
                Err(e) => tracing::warn!(error = %e, "checkpoint task failed"),
            }
        }
    });
    let served = crate::serve_with(app.clone(), listener, shutdown, options).await;
    ticker.abort();
    if let Some(claims) = claims {
        claims.abort();
    }
    served.map_err(RunError::Serve)?;
    app.flush_audit().await.map_err(RunError::Audit)?;
    app.final_checkpoint().map_err(RunError::Checkpoint)
}
