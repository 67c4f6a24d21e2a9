//! Campaigns, templates and the dead-letter queue.

use super::error::{ApiError, Body};
use super::auth::Principal;
use chronicle_app::app::App;
use chronicle_app::automation::{definitions, Engine};
use chronicle_app::error::AppError;
use axum::extract::{Path, State};
use axum::Json;
use chronicle_app::automation::parked::ParkedReaction;
use chronicle_projections::automation::CampaignStats;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

type Res<T> = Result<T, ApiError>;

pub const CAMPAIGN_EXAMPLE: &str = r#"{"trigger":{"event":"Product Added"},"exit_on":["Order Completed"],"goal":"Order Completed","reentry":"after:7d","steps":[{"wait":"1h"},{"send":{"channel":"email","purpose":"marketing","template":"cart-reminder"}}]}"#;

fn stats(app: &App, tenant: &str, name: &str) -> CampaignStats {
    definitions::stats(app, tenant, name).unwrap_or_default()
}

/// A campaign saved.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Saved {
    name: String,
    /// False when the definition was the one in force already (nothing recorded).
    changed: bool,
    #[schemars(with = "chronicle_automation::campaign::Definition")]
    definition: Value,
}

/// A campaign's definition and counters.
#[derive(Serialize, schemars::JsonSchema)]
pub struct CampaignAnswer {
    name: String,
    #[schemars(with = "chronicle_automation::campaign::Definition")]
    definition: Value,
    stats: CampaignStats,
}

/// The campaigns in force, by name.
#[derive(Serialize, schemars::JsonSchema)]
pub struct CampaignList {
    campaigns: Vec<CampaignSummary>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct CampaignSummary {
    name: String,
    /// What starts an enrolment, in words (`Product Added`, `inactive for 60d`).
    trigger: String,
    stats: CampaignStats,
}

/// A campaign or template deleted.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Deleted {
    deleted: String,
}

/// A template saved.
#[derive(Serialize, schemars::JsonSchema)]
pub struct TemplateSaved {
    name: String,
    /// False when it was the same already (nothing recorded).
    changed: bool,
}

/// A message template.
#[derive(Serialize, schemars::JsonSchema)]
pub struct TemplateAnswer {
    name: String,
    subject: String,
    body: String,
}

/// The dead-letter queue, oldest first.
#[derive(Serialize, schemars::JsonSchema)]
pub struct DeadLetters {
    dead_letters: Vec<DeadLetter>,
}

/// A message that failed every attempt.
#[derive(Serialize, schemars::JsonSchema)]
pub struct DeadLetter {
    id: String,
    customer: String,
    channel: String,
    purpose: chronicle_core::customer::Purpose,
    to: String,
    subject: Option<String>,
    attempts: u32,
    last_error: Option<String>,
    queued_at: chrono::DateTime<chrono::Utc>,
    /// The campaign that sent it, if one did.
    campaign: Option<String>,
}

/// A dead letter sent back to the outbox.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Retried {
    retried: String,
}

/// Reactions waiting for a retry, by log position.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ParkedList {
    parked: Vec<ParkedReaction>,
}

/// A parked reaction due now.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Retrying {
    /// Its event's log position.
    retrying: u64,
}

pub async fn put(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>, Body(def): Body<Value>) -> Res<Json<Saved>> {
    let changed = definitions::save_campaign(&app, &p.tenant, &name, def.clone(), &p.actor).await?;
    Ok(Json(Saved { name, changed, definition: def }))
}

pub async fn get_one(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<CampaignAnswer>> {
    let definition = definitions::campaign(&app, &p.tenant, &name).ok_or(AppError::NotFound("campaign"))?;
    let stats = stats(&app, &p.tenant, &name);
    Ok(Json(CampaignAnswer { name, definition, stats }))
}

pub async fn list(State(app): State<Arc<App>>, p: Principal) -> Res<Json<CampaignList>> {
    let campaigns = definitions::campaigns(&app, &p.tenant)
        .into_iter()
        .map(|(name, trigger, stats)| CampaignSummary { name, trigger, stats })
        .collect();
    Ok(Json(CampaignList { campaigns }))
}

pub async fn delete(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<Deleted>> {
    definitions::delete_campaign(&app, &p.tenant, &name, &p.actor).await?;
    Ok(Json(Deleted { deleted: name }))
}

pub async fn get_stats(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<CampaignStats>> {
    Ok(Json(definitions::stats(&app, &p.tenant, &name).ok_or(AppError::NotFound("campaign"))?))
}

pub async fn put_template(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>, Body(t): Body<Value>) -> Res<Json<TemplateSaved>> {
    let changed = definitions::save_template(&app, &p.tenant, &name, &t, &p.actor).await?;
    Ok(Json(TemplateSaved { name, changed }))
}

pub async fn get_template(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<TemplateAnswer>> {
    let t = definitions::template(&app, &p.tenant, &name).ok_or(AppError::NotFound("template"))?;
    Ok(Json(TemplateAnswer { name, subject: t.subject, body: t.body }))
}

pub async fn delete_template(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<Deleted>> {
    definitions::delete_template(&app, &p.tenant, &name, &p.actor).await?;
    Ok(Json(Deleted { deleted: name }))
}

pub async fn dead_letters(State(app): State<Arc<App>>, p: Principal) -> Res<Json<DeadLetters>> {
    let dead_letters = definitions::dead_letters(&app, &p.tenant)
        .into_iter()
        .map(|m| DeadLetter {
            id: m.message,
            customer: m.customer,
            channel: m.channel,
            purpose: m.purpose,
            to: m.to,
            subject: m.subject,
            attempts: m.attempts,
            last_error: m.last_error,
            queued_at: m.queued_at,
            campaign: m.origin.map(|o| o.campaign),
        })
        .collect();
    Ok(Json(DeadLetters { dead_letters }))
}

pub async fn retry(State(engine): State<Arc<Engine>>, p: Principal, Path(id): Path<String>) -> Res<Json<Retried>> {
    engine.retry_dead_letter(&p.tenant, &id, &p.actor).await?;
    Ok(Json(Retried { retried: id }))
}

/// `GET /v1/automation/parked`: reactions to events that kept failing, waiting for a retry
/// (see `automation::parked`).
pub async fn parked(State(engine): State<Arc<Engine>>, p: Principal) -> Res<Json<ParkedList>> {
    Ok(Json(ParkedList { parked: engine.parked().of(&p.tenant) }))
}

/// `POST /v1/automation/parked/{position}/retry`: retry a parked reaction at once.
pub async fn retry_parked(State(engine): State<Arc<Engine>>, p: Principal, Path(position): Path<u64>) -> Res<Json<Retrying>> {
    if !engine.parked().retry_now(&p.tenant, position, engine.app().now()) {
        return Err(chronicle_app::error::AppError::NotFound("parked reaction").into());
    }
    engine.wake();
    Ok(Json(Retrying { retrying: position }))
}
