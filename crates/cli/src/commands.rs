//! The commands that open storage and act on it: serve, tenant create, rebuild, verify and
//! history. (`demo` lives in its own module.)

use crate::config::{AutomationArgs, Config, StorageArgs};
use crate::progress::Progress;
use crate::storage;
use anyhow::Context;
use chronicle_core::customer;
use chronicle_projections::{diff, save_checkpoint_sealed};
use chronicle_server::{maintenance, App};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// Serve the API until Ctrl-C or SIGTERM; then stop accepting, let in-flight requests finish,
/// and write a final checkpoint.
pub async fn serve(args: &StorageArgs, listen: Option<&str>, rate_limit: u64, automation: &AutomationArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, listen)?;
    let st = storage::open(&cfg)?;
    let app = st.app().await?;
    app.set_rate_limit(rate_limit);
    if let Some(dir) = &automation.campaigns {
        let n = chronicle_server::automation::definitions::load_folder(&app, dir)
            .await
            .with_context(|| format!("loading campaigns from {}", dir.display()))?;
        tracing::info!(changed = n, folder = %dir.display(), "campaigns and templates loaded");
    }
    start_automation(&app, automation)?;
    run_server(&cfg, app, |addr| println!("chronicle listening on http://{addr}")).await?;
    Ok(ExitCode::SUCCESS)
}

/// Start the automation engine (campaigns, timers, the outbox) on the running app.
pub fn start_automation(app: &Arc<App>, automation: &AutomationArgs) -> anyhow::Result<()> {
    if let Some(k) = &automation.sendgrid_public_key {
        let key = chronicle_server::automation::feedback::parse_public_key(k).map_err(|e| anyhow::anyhow!(e))?;
        let _ = app.sendgrid_key.set(key);
    }
    chronicle_server::automation::Engine::start(app.clone(), automation.engine_config())
        .map_err(|e| anyhow::anyhow!(e))
        .context("starting the automation engine")?;
    Ok(())
}

/// Bind, serve, checkpoint periodically, and shut down gracefully.
pub async fn run_server(
    cfg: &Config,
    app: Arc<App>,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %cfg.data.display(), "serving");
    // The handlers are in place before anyone is told the server is up: a SIGTERM right after
    // the "listening" line must shut down gracefully, not kill the process.
    let shutdown = shutdown_signal()?;
    on_ready(addr);
    let ticker_app = app.clone();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            let a = ticker_app.clone();
            match tokio::task::spawn_blocking(move || a.checkpoint()).await {
                Ok(Ok(pos)) => tracing::debug!(position = pos, "checkpoint written"),
                Ok(Err(e)) => tracing::warn!(error = %e, "checkpoint failed"),
                Err(e) => tracing::warn!(error = %e, "checkpoint task failed"),
            }
        }
    });
    chronicle_server::serve(app.clone(), listener, shutdown).await.context("serving HTTP")?;
    ticker.abort();
    app.audit.flush(&app).await.context("writing the audit trail")?;
    let pos = app.checkpoint().context("writing the final checkpoint")?;
    tracing::info!(position = pos, "stopped; checkpoint written");
    Ok(())
}

/// A future that resolves on Ctrl-C or SIGTERM; the handlers are installed when it is made.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        let term = async move {
            term.recv().await;
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    })
}

pub async fn tenant_create(args: &StorageArgs, name: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg)?;
    let app = st.app().await?;
    let (api_key, write_key) = app.create_tenant(name).await?;
    app.checkpoint()?;
    println!("{}", json!({"tenant": name, "api_key": api_key, "write_key": write_key}));
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(args: &StorageArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg)?;
    let old_key = chronicle_projections::sealed_key_name(&st.checkpoint);
    let _ = std::fs::remove_file(&st.checkpoint);
    let mut progress = Progress::new("rebuild", Some(st.store.head().await?));
    let replay = maintenance::replay(&st.store, |n| progress.add(n)).await?;
    let (n, secs, rate) = progress.finish();
    let (fresh, problems) = (replay.projections, replay.problems);
    let seal = st.keys.clone().map(chronicle_server::sealing::CheckpointKeys::new);
    save_checkpoint_sealed(&st.checkpoint, &fresh, seal.as_ref().map(|s| s as &dyn chronicle_projections::CheckpointSeal))?;
    if let (Some(seal), Some(old)) = (&seal, old_key) {
        seal.destroy(&old).map_err(|e| anyhow::anyhow!(e))?;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    println!(
        "{}",
        json!({"rebuilt_events": n, "seconds": secs, "events_per_sec": rate.round(), "position": fresh.position})
    );
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn verify(args: &StorageArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg)?;
    // The live views: what a server would run on (checkpoint plus the log's tail).
    let seal = st.keys.clone().map(chronicle_server::sealing::CheckpointKeys::new);
    let live =
        maintenance::live_views(&*st.store, &st.checkpoint, seal.as_ref().map(|s| s as &dyn chronicle_projections::CheckpointSeal))
            .await?;
    let mut progress = Progress::new("verify", Some(st.store.head().await?));
    let replay = maintenance::replay(&st.store, |n| progress.add(n)).await?;
    let (n, secs, _) = progress.finish();
    let (fresh, mut problems) = (replay.projections, replay.problems);
    problems.extend(diff(&live, &fresh));
    for p in &problems {
        println!("DIFF {p}");
    }
    let ok = problems.is_empty();
    println!("{}", json!({"verified_events": n, "seconds": secs, "differences": problems.len(), "ok": ok}));
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn history(args: &StorageArgs, tenant: &str, customer_id: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg)?;
    let stream = customer::stream_of(customer_id);
    let mut from = 1;
    let mut any = false;
    loop {
        let page = st.store.read_stream(tenant, &stream, from, 1000).await?;
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        for ev in &page {
            any = true;
            println!("{}", serde_json::to_string(ev)?);
        }
    }
    if !any {
        eprintln!("no events for customer {customer_id} in tenant {tenant}");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// `chronicle export CUSTOMER`: the same document as `GET /v1/customers/{id}/export`.
pub async fn export(args: &StorageArgs, tenant: &str, customer_id: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg)?;
    let app = st.app().await?;
    match app.export_customer(tenant, customer_id, chronicle_server::http::profile_json).await {
        Ok(doc) => {
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(chronicle_server::AppError::NotFound(_)) => {
            eprintln!("no customer {customer_id} in tenant {tenant}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
