//! Campaigns, templates and the dead-letter queue.

use super::error::{ApiError, Body};
use super::auth::Principal;
use chronicle_app::app::App;
use chronicle_app::automation::{definitions, Engine};
use chronicle_app::error::AppError;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

type Res<T> = Result<T, ApiError>;

pub const CAMPAIGN_EXAMPLE: &str = r#"{"trigger":{"event":"Product Added"},"exit_on":["Order Completed"],"goal":"Order Completed","reentry":"after:7d","steps":[{"wait":"1h"},{"send":{"channel":"email","purpose":"marketing","template":"cart-reminder"}}]}"#;

fn stats(app: &App, tenant: &str, name: &str) -> Value {
    let v = app.views();
    json!(v.tenant(tenant).and_then(|t| t.automation.stats.get(name)).cloned().unwrap_or_default())
}

pub async fn put(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>, Body(def): Body<Value>) -> Res<Json<Value>> {
    let changed = definitions::save_campaign(&app, &p.tenant, &name, def.clone(), &p.actor).await?;
    Ok(Json(json!({"name": name, "changed": changed, "definition": def})))
}

pub async fn get_one(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<Value>> {
    let def = definitions::campaign(&app, &p.tenant, &name).ok_or(AppError::NotFound("campaign"))?;
    Ok(Json(json!({"name": name, "definition": def, "stats": stats(&app, &p.tenant, &name)})))
}

pub async fn list(State(app): State<Arc<App>>, p: Principal) -> Res<Json<Value>> {
    let v = app.views();
    let mut out: Vec<Value> = match v.tenant(&p.tenant) {
        Some(t) => t
            .automation
            .live_campaigns()
            .map(|(name, _, c)| json!({"name": name, "trigger": c.trigger.describe(), "stats": t.automation.stats.get(name).cloned().unwrap_or_default()}))
            .collect(),
        None => Vec::new(),
    };
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({"campaigns": out})))
}

pub async fn delete(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<Value>> {
    definitions::delete_campaign(&app, &p.tenant, &name, &p.actor).await?;
    Ok(Json(json!({"deleted": name})))
}

pub async fn get_stats(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<Value>> {
    let known = app.views().tenant(&p.tenant).is_some_and(|t| t.automation.stats.contains_key(&name));
    if !known {
        return Err(AppError::NotFound("campaign").into());
    }
    Ok(Json(stats(&app, &p.tenant, &name)))
}

pub async fn put_template(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>, Body(t): Body<Value>) -> Res<Json<Value>> {
    let changed = definitions::save_template(&app, &p.tenant, &name, &t, &p.actor).await?;
    Ok(Json(json!({"name": name, "changed": changed})))
}

pub async fn get_template(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<Value>> {
    let t = definitions::template(&app, &p.tenant, &name).ok_or(AppError::NotFound("template"))?;
    Ok(Json(json!({"name": name, "subject": t.subject, "body": t.body})))
}

pub async fn delete_template(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<Value>> {
    definitions::delete_template(&app, &p.tenant, &name, &p.actor).await?;
    Ok(Json(json!({"deleted": name})))
}

pub async fn dead_letters(State(app): State<Arc<App>>, p: Principal) -> Res<Json<Value>> {
    let v = app.views();
    let mut out: Vec<Value> = v
        .tenant(&p.tenant)
        .map(|t| {
            t.automation
                .dead_letters
                .values()
                .map(|m| {
                    json!({"id": m.message, "customer": m.customer, "channel": m.channel, "purpose": m.purpose, "to": m.to,
                           "subject": m.subject, "attempts": m.attempts, "last_error": m.last_error, "queued_at": m.queued_at,
                           "campaign": m.origin.as_ref().map(|o| &o.campaign)})
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a["queued_at"].as_str().cmp(&b["queued_at"].as_str()));
    Ok(Json(json!({"dead_letters": out})))
}

pub async fn retry(State(engine): State<Arc<Engine>>, p: Principal, Path(id): Path<String>) -> Res<Json<Value>> {
    engine.retry_dead_letter(&p.tenant, &id, &p.actor).await?;
    Ok(Json(json!({"retried": id})))
}

/// `GET /v1/automation/parked`: reactions to events that kept failing, waiting for a retry
/// (see `automation::parked`).
pub async fn parked(State(engine): State<Arc<Engine>>, p: Principal) -> Res<Json<Value>> {
    Ok(Json(json!({"parked": engine.parked().of(&p.tenant)})))
}

/// `POST /v1/automation/parked/{position}/retry`: retry a parked reaction at once.
pub async fn retry_parked(State(engine): State<Arc<Engine>>, p: Principal, Path(position): Path<u64>) -> Res<Json<Value>> {
    if !engine.parked().retry_now(&p.tenant, position, engine.app().now()) {
        return Err(chronicle_app::error::AppError::NotFound("parked reaction").into());
    }
    engine.wake();
    Ok(Json(json!({"retrying": position})))
}
