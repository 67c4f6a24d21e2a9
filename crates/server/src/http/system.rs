//! Health, Prometheus metrics, the OpenAPI document (built from the route table), API keys and
//! retention policies.

use super::error::ApiError;
use chronicle_app::app::App;
use chronicle_app::error::AppError;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Liveness: the log's head and the position the views reflect.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Health {
    status: &'static str,
    head: u64,
    projections: u64,
}

pub async fn healthz(State(app): State<Arc<App>>) -> Result<Json<Health>, ApiError> {
    let head = app.store().head().await.map_err(AppError::from)?;
    Ok(Json(Health { status: "ok", head, projections: app.views().position }))
}

pub async fn metrics(
    State(app): State<Arc<App>>,
    State(engine): State<Arc<chronicle_app::automation::Engine>>,
    axum::Extension(options): axum::Extension<super::state::Options>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(token) = &options.metrics_token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // Compared as digests, so the time taken does not tell how much of a guess was right.
        let digest = |s: &str| chronicle_app::keys::digest(s.trim());
        if given.is_none_or(|g| digest(g) != digest(token)) {
            return Err(ApiError::of(super::codes::Code::Unauthorized,
                "the metrics need Authorization: Bearer <metrics token> (--metrics-token)",
            ));
        }
    }
    let head = app.store().head().await.map_err(AppError::from)?;
    let (projected, customers, tenants, undecodable, (outbox, outbox_lag, dead, timers)) = {
        let v = app.views();
        let customers: usize = v.tenants.values().map(|t| t.customers.values().filter(|c| c.exists).count()).sum();
        (v.position, customers, v.tenants.len(), v.undecodable, chronicle_app::automation::gauges(&v, app.now()))
    };
    let m = &app.metrics;
    let mut out = String::new();
    // OpenMetrics text (what prometheus-client writes for the labelled families): a counter's
    // family is named without `_total`, its sample with it.
    m.labelled.encode(&mut out);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let family = if kind == "counter" { name.strip_suffix("_total").unwrap_or(name) } else { name };
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}\n{name} {value}");
    };
    metric(
        "chronicle_http_requests_total",
        "counter",
        "HTTP requests served.",
        m.http_requests.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_http_errors_total",
        "counter",
        "HTTP requests answered with a 4xx or 5xx status.",
        m.http_errors.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_appends_total",
        "counter",
        "Successful appends through the API.",
        m.appends.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_events_appended_total",
        "counter",
        "Events appended through the API.",
        m.events_appended.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_append_conflicts_total",
        "counter",
        "Appends refused for a version conflict.",
        m.append_conflicts.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_consent_checks_total",
        "counter",
        "Consent decisions made.",
        m.consent_checks.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_checkpoints_total",
        "counter",
        "Projection checkpoints written.",
        m.checkpoints.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_key_verifications_total",
        "counter",
        "API key secrets verified with argon2 (each key once; a key id whose secret keeps failing is refused without one for 10 s after 5 failures).",
        m.key_verifications.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_automation_outcomes_unrecorded_total",
        "counter",
        "Message outcomes the store refused to record (each is written again; the message is not re-sent).",
        m.outcomes_unrecorded.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_automation_reactions_parked_total",
        "counter",
        "Campaign reactions to an event that kept failing and were parked for a retry.",
        m.reactions_parked.load(Ordering::Relaxed),
    );
    metric(
        "chronicle_automation_parked_reactions",
        "gauge",
        "Campaign reactions parked now, waiting for a retry.",
        engine.parked().len() as u64,
    );
    metric("chronicle_log_head_position", "gauge", "Position of the last committed event.", head);
    metric("chronicle_projection_position", "gauge", "Position the read models reflect.", projected);
    metric(
        "chronicle_projection_lag_events",
        "gauge",
        "Committed events not yet in the read models.",
        head.saturating_sub(projected),
    );
    metric("chronicle_customers", "gauge", "Customers in the read models (all tenants).", customers as u64);
    metric("chronicle_tenants", "gauge", "Tenants.", tenants as u64);
    metric("chronicle_undecodable_events_total", "counter", "Events the read models could not decode.", undecodable);
    metric("chronicle_outbox_depth", "gauge", "Messages queued and not yet sent (retries included).", outbox as u64);
    metric("chronicle_dead_letters", "gauge", "Messages in the dead-letter queue.", dead as u64);
    metric("chronicle_pending_waits", "gauge", "Campaign waits and deferred sends not yet due or fired.", timers as u64);
    metric("chronicle_automation_reacted_position", "gauge", "The last log position the automation engine reacted to.", app.reacted());
    {
        let held = engine.gate().shards();
        let _ = writeln!(
            out,
            "# HELP chronicle_automation_shard_held Whether this node does the campaign work of a shard of the tenants (1) or not (0).\n# TYPE chronicle_automation_shard_held gauge"
        );
        for s in 0..chronicle_app::automation::lease::SHARDS {
            let _ = writeln!(out, "chronicle_automation_shard_held{{shard=\"{s}\"}} {}", (held >> s) & 1);
        }
    }
    let _ = writeln!(
        out,
        "# HELP chronicle_outbox_lag_seconds How late the most overdue outbox message is.\n# TYPE chronicle_outbox_lag_seconds gauge\nchronicle_outbox_lag_seconds {outbox_lag:.3}"
    );
    out.push_str("# EOF\n");
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out))
}


#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    role: chronicle_projections::Role,
    #[serde(default)]
    name: Option<String>,
}

/// An API key as it is listed (never the key itself, nor its hash).
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct KeyInfo {
    id: String,
    role: chronicle_projections::Role,
    name: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The key itself: only in the answer that made it, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

fn key_info(k: &chronicle_projections::ApiKey, key: Option<String>) -> KeyInfo {
    KeyInfo { id: k.id.clone(), role: k.role, name: k.name.clone(), created_at: k.created_at, revoked_at: k.revoked_at, key }
}

pub async fn create_key(
    State(app): State<Arc<App>>,
    p: super::auth::Principal,
    super::error::Body(b): super::error::Body<NewKey>,
) -> Result<(axum::http::StatusCode, Json<KeyInfo>), ApiError> {
    let (record, key) = app.create_api_key(&p.tenant, b.role, b.name, &p.actor).await?;
    Ok((axum::http::StatusCode::CREATED, Json(key_info(&record, Some(key)))))
}

/// The tenant's keys.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct KeyList {
    keys: Vec<KeyInfo>,
}

pub async fn list_keys(State(app): State<Arc<App>>, p: super::auth::Principal) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList { keys: app.api_keys(&p.tenant).iter().map(|k| key_info(k, None)).collect() }))
}

pub async fn revoke_key(
    State(app): State<Arc<App>>,
    p: super::auth::Principal,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    app.revoke_api_key(&p.tenant, &id, &p.actor).await?;
    Ok(Json(Revoked { revoked: id }))
}

/// A key revoked.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Revoked {
    /// The key's id.
    revoked: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepFor {
    keep_days: u32,
}

/// The retention policies and the latest compactions.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Retention {
    /// Event type → days kept (by event time).
    policies: std::collections::BTreeMap<String, u32>,
    /// The latest compactions, oldest first.
    compactions: Vec<chronicle_projections::retention::RetentionRun>,
}

pub async fn retention(State(app): State<Arc<App>>, p: super::auth::Principal) -> Result<Json<Retention>, ApiError> {
    let v = chronicle_app::retention::policies(&app, &p.tenant);
    Ok(Json(Retention { policies: v.policies, compactions: v.runs }))
}

/// A retention policy as set (`keep_days` null: kept forever).
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Policy {
    event_type: String,
    keep_days: Option<u32>,
    /// Whether setting it changed anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<bool>,
}

pub async fn set_retention(
    State(app): State<Arc<App>>,
    p: super::auth::Principal,
    axum::extract::Path(event_type): axum::extract::Path<String>,
    super::error::Body(b): super::error::Body<KeepFor>,
) -> Result<Json<Policy>, ApiError> {
    let changed = chronicle_app::retention::set_policy(&app, &p.tenant, &event_type, b.keep_days, &p.actor).await?;
    Ok(Json(Policy { event_type, keep_days: Some(b.keep_days), changed: Some(changed) }))
}

pub async fn remove_retention(
    State(app): State<Arc<App>>,
    p: super::auth::Principal,
    axum::extract::Path(event_type): axum::extract::Path<String>,
) -> Result<Json<Policy>, ApiError> {
    chronicle_app::retention::remove_policy(&app, &p.tenant, &event_type, &p.actor).await?;
    Ok(Json(Policy { event_type, keep_days: None, changed: None }))
}
