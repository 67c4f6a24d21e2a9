//! The commands that open storage and act on it: serve, tenant create, rebuild, verify,
//! history, export, retention and compact. (`demo` lives in its own module.)

use crate::config::{AutomationArgs, Config, ServerArgs, StorageArgs};
use crate::progress::Progress;
use chronicle_app::storage;
use anyhow::Context;
use chronicle_core::customer;
use chronicle_projections::{diff, save_to, Saved};
use chronicle_app::maintenance;
use chronicle_server::application::Application;
use serde_json::json;
use std::process::ExitCode;

/// Serve the API until Ctrl-C or SIGTERM; then stop accepting, let in-flight requests finish,
/// and write a final checkpoint.
pub async fn serve(args: &StorageArgs, listen: Option<&str>, server: &ServerArgs, automation: &AutomationArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, listen)?;
    let scheme = if server.tls_cert.is_some() { "https" } else { "http" };
    let application = Application::build(cfg.application(server, automation)?).await?;
    run(application, &cfg, |addr| println!("chronicle listening on {scheme}://{addr}")).await?;
    Ok(ExitCode::SUCCESS)
}

/// Run the built system until Ctrl-C or SIGTERM, telling `on_ready` where it listens.
pub async fn run(application: Application, cfg: &Config, on_ready: impl FnOnce(std::net::SocketAddr)) -> anyhow::Result<()> {
    let addr = application.address();
    match &cfg.storage.database_url {
        Some(_) => tracing::info!(%addr, schema = %cfg.storage.database_schema, "serving from PostgreSQL"),
        None => tracing::info!(%addr, data = %cfg.storage.data.display(), "serving"),
    }
    // The handlers are in place before anyone is told the server is up: a SIGTERM right after
    // the "listening" line must shut down gracefully, not kill the process.
    let shutdown = shutdown_signal()?;
    on_ready(addr);
    match application.run_until_stopped(shutdown).await? {
        Some(pos) => tracing::info!(position = pos, "stopped; checkpoint written"),
        None => tracing::info!("stopped; the checkpoint is kept by another node"),
    }
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

/// The effective settings of `serve`, secrets hidden (`***` when set; a URL keeps all but its
/// password).
pub fn show_config(args: &StorageArgs, listen: Option<&str>, server: &ServerArgs, automation: &AutomationArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, listen)?;
    let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
    let url = |v: &Option<String>| {
        v.as_ref().map(|u| match (u.split_once("://"), u.rfind('@')) {
            (Some((scheme, rest)), Some(at)) if rest.contains(':') && at > scheme.len() + 3 => {
                let userinfo = &u[scheme.len() + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***{}", &u[at..])
            }
            _ => u.clone(),
        })
    };
    let doc = json!({
        "data": cfg.storage.data,
        "listen": cfg.listen.to_string(),
        "database_url": url(&cfg.storage.database_url),
        "database_schema": cfg.storage.database_schema,
        "seal": cfg.storage.seal,
        "master_key_file": cfg.storage.master_key_file,
        "master_key": hidden(&cfg.storage.master_key),
        "tls_ca_file": args.tls_ca_file,
        "rate_limit": server.rate_limit,
        "ingest_rate_limit": server.ingest_rate_limit,
        "ingest_rate_limit_per_address": server.ingest_rate_limit_per_address,
        "max_connections": server.max_connections,
        "metrics_token": hidden(&server.metrics_token),
        "cors_origin": server.cors_origin,
        "tls_cert": server.tls_cert,
        "tls_key": server.tls_key,
        "smtp_url": url(&automation.smtp_url),
        "mail_from": automation.mail_from,
        "allow_private_webhooks": automation.allow_private_webhooks,
        "webhook_secret": hidden(&automation.webhook_secret),
        "public_url": automation.public_url,
        "unsubscribe_secret": hidden(&automation.unsubscribe_secret),
        "sms_webhook_url": automation.sms_webhook_url,
        "push_webhook_url": automation.push_webhook_url,
        "retry_base_ms": automation.retry_base_ms,
        "max_attempts": automation.max_attempts,
        "scan_every_ms": automation.scan_every_ms,
        "sendgrid_public_key": automation.sendgrid_public_key,
        "campaigns": automation.campaigns,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}

/// The tenants, a JSON object per line: name and customers listed.
pub async fn tenant_list(args: &StorageArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    for name in app.tenant_names() {
        let customers = app.views().tenant(&name).map_or(0, |t| t.contacts.len());
        println!("{}", json!({"tenant": name, "customers": customers}));
    }
    Ok(ExitCode::SUCCESS)
}

/// The tenant a command names, which must exist; else an error listing those that do.
pub fn existing_tenant<'a>(app: &chronicle_app::App, tenant: Option<&'a str>) -> anyhow::Result<&'a str> {
    let tenants = app.tenant_names();
    let known = if tenants.is_empty() { "there are none yet (chronicle tenant create NAME)".to_owned() } else { format!("the tenants here: {}", tenants.join(", ")) };
    match tenant {
        Some(t) if tenants.iter().any(|n| n == t) => Ok(t),
        Some(t) => anyhow::bail!("tenant {t:?} does not exist; {known}"),
        None => anyhow::bail!("which tenant? pass --tenant NAME; {known}"),
    }
}

/// A new API key for a tenant, made offline (a lost admin key): printed once, recorded as the
/// API's are (`ApiKeyCreated`, actor `cli`).
pub async fn api_key_create(args: &StorageArgs, tenant: &str, role: &str, name: Option<String>) -> anyhow::Result<ExitCode> {
    let role: chronicle_projections::Role = serde_json::from_value(json!(role))
        .map_err(|_| anyhow::anyhow!("role {role:?} is not one of admin, writer, reader, ingest"))?;
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    let tenant = existing_tenant(&app, Some(tenant))?;
    let (record, key) = app.create_api_key(tenant, role, name, "cli").await?;
    app.final_checkpoint()?;
    println!("{}", json!({"id": record.id, "tenant": tenant, "role": record.role, "name": record.name, "api_key": key}));
    Ok(ExitCode::SUCCESS)
}

/// A person's account for the web UI, made offline (the first admin of a tenant).
pub async fn user_create(
    args: &StorageArgs,
    tenant: &str,
    email: &str,
    name: &str,
    role: &str,
    password_file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let role: chronicle_projections::Role = serde_json::from_value(json!(role))
        .ok()
        .filter(|r| *r != chronicle_projections::Role::Ingest)
        .ok_or_else(|| anyhow::anyhow!("role {role:?} is not one of admin, writer, reader"))?;
    let password = match (password_file, std::env::var("CHRONICLE_USER_PASSWORD")) {
        (Some(f), _) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, Ok(p)) => p,
        (None, Err(_)) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            line
        }
    };
    let password = password.trim_end_matches(['\r', '\n']);
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    let tenant = existing_tenant(&app, Some(tenant))?;
    let user = app.create_user(tenant, name, email, role, password, "cli").await?;
    app.final_checkpoint()?;
    println!("{}", json!({"id": user.id, "tenant": user.tenant, "name": user.name, "email": user.email, "role": user.role}));
    Ok(ExitCode::SUCCESS)
}

/// `chronicle analytics funnel FILE.json --tenant T`: the answer `POST /v1/analytics/funnels`
/// gives, offline.
pub async fn funnel(args: &StorageArgs, file: &std::path::Path, tenant: &str) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let spec: chronicle_analytics::funnel::FunnelSpec =
        serde_json::from_str(&text).with_context(|| format!("{} is not a funnel", file.display()))?;
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    let tenant = existing_tenant(&app, Some(tenant))?;
    let answer = app.funnel(tenant, &spec).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}

/// `chronicle analytics rfm|pipeline|cohorts --tenant T`: the answer the API gives, offline,
/// as pretty JSON.
pub async fn analytics_answer<F, Fut>(args: &StorageArgs, tenant: &str, answer: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(std::sync::Arc<chronicle_app::App>, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    let tenant = existing_tenant(&app, Some(tenant))?.to_owned();
    let v = answer(app.clone(), tenant).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// `chronicle segment put|show|members`: what `/v1/segments/{name}` does, offline. A segment
/// saved offline is kept by the engine of the next `serve`.
pub async fn segment(args: &StorageArgs, command: crate::SegmentCommand) -> anyhow::Result<ExitCode> {
    use chronicle_app::automation::definitions;
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    match command {
        crate::SegmentCommand::Put { name, file, tenant } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let def: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let tenant = existing_tenant(&app, Some(&tenant))?;
            let changed = definitions::save_segment(&app, tenant, &name, def, "cli").await?;
            app.final_checkpoint()?;
            println!("{}", json!({"name": name, "changed": changed}));
        }
        crate::SegmentCommand::Show { name, tenant } => {
            let tenant = existing_tenant(&app, Some(&tenant))?;
            let info = definitions::segment_info(&app, tenant, &name).with_context(|| format!("no segment {name:?}"))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        crate::SegmentCommand::Members { name, tenant, as_of } => {
            let tenant = existing_tenant(&app, Some(&tenant))?;
            definitions::segment_info(&app, tenant, &name).with_context(|| format!("no segment {name:?}"))?;
            let members = match as_of {
                Some(t) => app.segment_members_at(tenant, &name, t, None).await?.0,
                None => definitions::segment_members(&app, tenant, &name, None, usize::MAX)?.0,
            };
            for (id, since) in members {
                println!("{}", json!({"id": id, "since": since}));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn user_list(args: &StorageArgs, tenant: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    let tenant = existing_tenant(&app, Some(tenant))?;
    for u in app.users(tenant) {
        println!("{}", json!({"id": u.id, "name": u.name, "email": u.email, "role": u.role, "active": u.deactivated_at.is_none()}));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tenant_create(args: &StorageArgs, name: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&chronicle_app::storage::StorageConfig { create: true, ..cfg.storage() })?;
    let app = st.app().await?;
    let (api_key, write_key) = app.create_tenant(name).await?;
    app.final_checkpoint()?;
    println!("{}", json!({"tenant": name, "api_key": api_key, "write_key": write_key}));
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(args: &StorageArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let old_key = drop_checkpoint(&st)?;
    let (fresh, problems, (n, secs, rate)) = rebuild_checkpoint(&st, "rebuild", old_key, 0).await?;
    for p in &problems {
        eprintln!("{p}");
    }
    println!(
        "{}",
        json!({"rebuilt_events": n, "seconds": secs, "events_per_sec": rate.round(), "position": fresh.position})
    );
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Removes the checkpoint (a server then rebuilds its views from the log); returns the name of
/// the key it was sealed under, to destroy once a new one is saved.
fn drop_checkpoint(st: &storage::Storage) -> anyhow::Result<Option<String>> {
    let place = st.checkpoint();
    place.remove().with_context(|| format!("removing the checkpoint {}", place.describe()))
}

/// Replays the whole log into fresh views and saves them as the checkpoint (sealed under a new
/// key where crypto-shredding is on, the old one destroyed), keeping the automation engine's
/// cursor at `reacted`. Returns the views, broken log invariants and (events, seconds, rate).
/// Over a shared database the checkpoint is saved only while no running node keeps it (that
/// node goes on writing its own views, which hold the same).
async fn rebuild_checkpoint(
    st: &storage::Storage,
    label: &'static str,
    old_key: Option<String>,
    reacted: u64,
) -> anyhow::Result<(chronicle_projections::Projections, Vec<String>, (u64, f64, f64))> {
    let mut progress = Progress::new(label, Some(st.store.head().await?));
    let replay = maintenance::replay(&st.store, |n| progress.add(n)).await?;
    let done = progress.finish();
    let (mut fresh, problems) = (replay.projections, replay.problems);
    fresh.reacted = reacted;
    let seal = st.keys.clone().map(chronicle_app::sealing::CheckpointKeys::new);
    let place = st.checkpoint();
    let saved = tokio::task::block_in_place(|| -> anyhow::Result<Saved> {
        if !place.claim()? {
            return Ok(Saved::NotMine);
        }
        let saved = save_to(&*place, &fresh, seal.as_ref().map(|s| s as &dyn chronicle_projections::CheckpointSeal))?;
        place.release()?;
        Ok(saved)
    })?;
    match saved {
        // The running node that keeps it seals its own under its key: that key stays.
        Saved::NotMine => eprintln!("the checkpoint is kept by a running node; it was not replaced"),
        Saved::Written { replaced_key } => {
            // The checkpoint removed before, and any other node saved meanwhile: their keys go.
            if let Some(seal) = &seal {
                for old in old_key.into_iter().chain(replaced_key) {
                    seal.destroy(&old).map_err(|e| anyhow::anyhow!(e))?;
                }
            }
        }
    }
    Ok((fresh, problems, done))
}

/// `chronicle compact`: applies every tenant's retention policies. Expired events become
/// tombstones and each tenant that lost events gets a `RetentionApplied` record, in one atomic
/// step of the store; then the views are rebuilt from the compacted log, so `verify` holds.
/// Offline: it takes the folder's lock like every command; over PostgreSQL, it runs only while
/// no other node has the schema open, and other nodes build their views again when they start.
pub async fn compact(args: &StorageArgs, dry_run: bool) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let mut st = storage::open(&cfg.storage())?;
    let seal = st.keys.clone().map(chronicle_app::sealing::CheckpointKeys::new);
    let live =
        maintenance::live_views(&*st.store, &*st.checkpoint(), seal.as_ref().map(|s| s as &dyn chronicle_projections::CheckpointSeal))
            .await?;
    let started = std::time::Instant::now();
    let plan = chronicle_app::retention::plan(&*st.store, &live, chrono::Utc::now()).await?;
    let report = |expired: u64, extra: serde_json::Value| {
        let mut out = json!({"expired": expired, "through_position": plan.through, "tenants": plan.tenants, "dry_run": dry_run});
        if let (Some(o), serde_json::Value::Object(e)) = (out.as_object_mut(), extra) {
            o.extend(e);
        }
        out
    };
    if dry_run || plan.positions.is_empty() {
        println!("{}", report(plan.positions.len() as u64, json!({})));
        return Ok(ExitCode::SUCCESS);
    }
    let records = plan.records("chronicle compact");
    // The checkpoint goes first: after a crash past the store's switch, a server must rebuild
    // from the compacted log rather than resume from views that hold the expired events.
    let old_key = drop_checkpoint(&st)?;
    let expiry = chronicle_store::expire::Expiry { positions: &plan.positions, records };
    let done = st.expire(&cfg.storage(), &expiry)?;
    let compacted = started.elapsed().as_secs_f64();
    let (_, problems, _) = rebuild_checkpoint(&st, "rebuild", old_key, live.reacted).await?;
    for p in &problems {
        eprintln!("{p}");
    }
    println!(
        "{}",
        report(
            done.expired,
            json!({"head": done.head, "bytes_before": done.bytes_before, "bytes_after": done.bytes_after,
                   "compact_seconds": compacted, "seconds": started.elapsed().as_secs_f64()})
        )
    );
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `chronicle retention`: a tenant's policies, set or removed as through the API.
pub async fn retention(args: &StorageArgs, tenant: &str, change: Option<(String, Option<u32>)>) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    if app.views().tenant(tenant).is_none() {
        eprintln!("no tenant {tenant}");
        return Ok(ExitCode::from(2));
    }
    match change {
        Some((event_type, Some(days))) => {
            chronicle_app::retention::set_policy(&app, tenant, &event_type, days, "cli").await?;
        }
        Some((event_type, None)) => chronicle_app::retention::remove_policy(&app, tenant, &event_type, "cli").await?,
        None => {}
    }
    app.final_checkpoint()?;
    let v = chronicle_app::retention::policies(&app, tenant);
    println!("{}", json!({"tenant": tenant, "policies": v.policies, "compactions": v.runs}));
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(args: &StorageArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    // The live views: what a server would run on (checkpoint plus the log's tail).
    let seal = st.keys.clone().map(chronicle_app::sealing::CheckpointKeys::new);
    let live =
        maintenance::live_views(&*st.store, &*st.checkpoint(), seal.as_ref().map(|s| s as &dyn chronicle_projections::CheckpointSeal))
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
    let st = storage::open(&cfg.storage())?;
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
/// One page of a tenant's contact list: a JSON profile per line; the next page's cursor, when
/// more remain, on stderr.
pub async fn customers_list(args: &StorageArgs, tenant: &str, query: &chronicle_projections::contacts::ContactQuery) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    let (customers, next) = app.contacts(tenant, query)?;
    for c in &customers {
        println!("{}", chronicle_app::profile::profile_json(c));
    }
    if let Some(next) = next {
        eprintln!("more: --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn export(args: &StorageArgs, tenant: &str, customer_id: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::resolve(args, None)?;
    let st = storage::open(&cfg.storage())?;
    let app = st.app().await?;
    match app.export_customer(tenant, customer_id).await {
        Ok(doc) => {
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(chronicle_app::AppError::NotFound(_)) => {
            eprintln!("no customer {customer_id} in tenant {tenant}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
