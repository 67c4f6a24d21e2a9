//! Customer endpoints: registration, profile (now and as of an instant), timeline, consents
//! and the consent check, status changes, tags, notes, owner, stage, preferences.

use super::error::{ApiError, Body, OptBody, Params};
use super::error::clamp_limit;
use super::auth::Principal;
use chronicle_app::profile::Profile;
use chronicle_app::app::{App, ConsentLedger};
use chronicle_app::error::AppError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chronicle_core::customer::{
    Channel, ConsentInput, CustomerCommand, LifecycleStage, Preferences, Purpose,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The `{id}` of a customer route, as stored: an id that is personal data (an e-mail address,
/// a phone number) is looked up by its keyed pseudonym (see [`chronicle_app::pseudonym`]).
pub struct CustomerId(pub String);

impl axum::extract::FromRequestParts<super::state::Api> for CustomerId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, api: &super::state::Api) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError::of(super::codes::Code::BadRequest, e.to_string()))?;
        Ok(CustomerId(api.app.pseudonyms.id(&id).into_owned()))
    }
}

pub const CREATE_EXAMPLE: &str = r#"{"id":"c-42","email":"ada@example.com","traits":{"first_name":"Ada","plan":"pro"},"consents":[{"channel":"email","purpose":"marketing","granted":true,"source":"signup-form","proof":{"form":"newsletter","ip":"192.0.2.1"}}]}"#;

type Res<T> = Result<T, ApiError>;


#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    id: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    #[serde(default)]
    traits: Map<String, Value>,
    #[serde(default)]
    consents: Vec<ConsentInput>,
}

pub async fn create(
    State(app): State<Arc<App>>,
    p: Principal,
    Body(b): Body<CreateCustomer>,
) -> Res<(StatusCode, Json<Profile>)> {
    let id = b.id.map_or_else(|| uuid::Uuid::now_v7().to_string(), |id| app.pseudonyms.id(&id).into_owned());
    let cmd = CustomerCommand::Register { email: b.email, phone: b.phone, traits: b.traits, consents: b.consents };
    let c = app.customer_command(&p.tenant, &id, cmd, &p.actor).await?;
    Ok((StatusCode::CREATED, Json(Profile::from(&c))))
}

#[derive(Deserialize)]
pub struct AsOf {
    as_of: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    q: Option<String>,
    email: Option<String>,
    tag: Option<String>,
    stage: Option<String>,
    owner: Option<String>,
    /// Members of this segment only.
    segment: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// One page of the contact list.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct CustomerPage {
    customers: Vec<chronicle_app::profile::Profile>,
    /// The cursor of the next page (`?after=`), when there is one.
    next: Option<String>,
    has_more: bool,
}

/// `GET /v1/customers`: one page of the contact list, `{"customers", "next", "has_more"}`.
pub async fn list(State(app): State<Arc<App>>, p: Principal, Params(l): Params<ListQuery>) -> Res<Json<CustomerPage>> {
    use chronicle_projections::contacts::ContactQuery;
    let sort = l.sort.as_deref().map(str::parse).transpose().map_err(|e: String| ApiError::of(super::codes::Code::BadRequest, e))?;
    let query = ContactQuery {
        q: l.q,
        email: l.email,
        tag: l.tag,
        stage: l.stage,
        owner: l.owner,
        segment: l.segment,
        status: l.status,
        sort: sort.unwrap_or_default(),
        after: l.after,
        limit: clamp_limit(l.limit),
    };
    let (customers, next) = app.contacts(&p.tenant, &query)?;
    Ok(Json(CustomerPage { customers: customers.iter().map(chronicle_app::profile::Profile::from).collect(), has_more: next.is_some(), next }))
}

pub async fn get_one(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Params(q): Params<AsOf>,
) -> Res<Json<Profile>> {
    let c = match q.as_of {
        Some(t) => app.customer_as_of(&p.tenant, &id, t).await?,
        None => app.customer(&p.tenant, &id)?,
    };
    Ok(Json(Profile::from(&c)))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCustomer {
    email: Option<String>,
    phone: Option<String>,
    #[serde(default)]
    traits: Map<String, Value>,
}

pub async fn patch(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<PatchCustomer>,
) -> Res<Json<Profile>> {
    command(&app, &p, &id, CustomerCommand::UpdateProfile { email: b.email, phone: b.phone, traits: b.traits }).await
}

#[derive(Deserialize)]
pub struct AuditQuery {
    customer: String,
}

/// A customer's access audit trail.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct AuditTrail {
    customer: String,
    /// Oldest first.
    entries: Vec<chronicle_projections::AuditEntry>,
}

pub async fn audit(State(app): State<Arc<App>>, p: Principal, Params(q): Params<AuditQuery>) -> Res<Json<AuditTrail>> {
    let customer = app.pseudonyms.id(&q.customer).into_owned();
    app.customer(&p.tenant, &customer)?;
    // Written every fraction of a second; make what is pending visible to this answer.
    app.flush_audit().await?;
    let entries = app.audit_trail(&p.tenant, &customer);
    Ok(Json(AuditTrail { customer, entries }))
}

pub async fn export(State(app): State<Arc<App>>, p: Principal, CustomerId(id): CustomerId) -> Res<Json<chronicle_app::app::Export>> {
    Ok(Json(app.export_customer(&p.tenant, &id).await?))
}

/// What an erasure did.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Erased {
    id: String,
    status: chronicle_core::customer::CustomerStatus,
    erased: bool,
    profile_redacted: bool,
    version: u64,
    /// Duplicates merged into this customer, erased with it.
    merged_customers_erased: Vec<String>,
    /// Data keys destroyed: the customer's, their anonymous identities', their duplicates'.
    keys_destroyed: usize,
    /// Messages waiting in the outbox or the dead-letter queue, dropped.
    pending_sends_cancelled: usize,
    enrolments_ended: usize,
}

pub async fn erase(State(app): State<Arc<App>>, p: Principal, CustomerId(id): CustomerId) -> Res<Json<Erased>> {
    let e = app.erase_customer(&p.tenant, &id, &p.actor).await?;
    let c = e.customer;
    Ok(Json(Erased {
        id: c.id,
        status: c.status,
        erased: true,
        profile_redacted: true,
        version: c.version,
        merged_customers_erased: e.merged_customers_erased,
        keys_destroyed: e.keys_destroyed,
        pending_sends_cancelled: e.pending_sends_cancelled,
        enrolments_ended: e.enrolments_ended,
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeBody {
    /// The duplicate to merge into the customer in the path (the survivor).
    from: String,
}

pub async fn merge(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<MergeBody>,
) -> Res<Json<Profile>> {
    let c = app.merge_customers(&p.tenant, &id, &app.pseudonyms.id(&b.from), &p.actor).await?;
    Ok(Json(Profile::from(&c)))
}

#[derive(Deserialize)]
pub struct TimelineQuery {
    after: Option<u64>,
    limit: Option<usize>,
    as_of: Option<DateTime<Utc>>,
    /// Comma-separated event types.
    r#type: Option<String>,
}

pub async fn timeline(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Params(q): Params<TimelineQuery>,
) -> Res<Json<chronicle_app::app::Page>> {
    let types: Vec<String> = q
        .r#type
        .map(|t| t.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    Ok(Json(app.timeline(&p.tenant, &id, q.after.unwrap_or(0), clamp_limit(q.limit), q.as_of, &types).await?))
}

pub async fn consents(State(app): State<Arc<App>>, p: Principal, CustomerId(id): CustomerId) -> Res<Json<ConsentLedger>> {
    Ok(Json(app.consents(&p.tenant, &id)?))
}

pub async fn set_consent(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<ConsentInput>,
) -> Res<(StatusCode, Json<ConsentLedger>)> {
    app.customer_command(&p.tenant, &id, CustomerCommand::SetConsent(b), &p.actor).await?;
    Ok((StatusCode::CREATED, Json(app.consents(&p.tenant, &id)?)))
}

#[derive(Deserialize)]
pub struct CheckQuery {
    customer: String,
    channel: Channel,
    purpose: Purpose,
}

pub async fn consent_check(
    State(app): State<Arc<App>>,
    p: Principal,
    Params(q): Params<CheckQuery>,
) -> Res<Json<ConsentCheck>> {
    let d = app.consent_check(&p.tenant, &app.pseudonyms.id(&q.customer), q.channel, q.purpose);
    if d.reason == "unknown_customer" {
        return Err(AppError::NotFound("customer").into());
    }
    Ok(Json(ConsentCheck { allowed: d.allowed, reason: d.reason.to_owned() }))
}

/// The answer of a consent check.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ConsentCheck {
    allowed: bool,
    /// Why: `granted`, or the refusal's code (`no_consent`, `revoked`, …).
    reason: String,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    reason: Option<String>,
}

pub async fn deactivate(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    OptBody(body): OptBody<Reason>,
) -> Res<Json<Profile>> {
    let reason = body.unwrap_or_default().reason;
    command(&app, &p, &id, CustomerCommand::Deactivate { reason }).await
}

pub async fn reactivate(State(app): State<Arc<App>>, p: Principal, CustomerId(id): CustomerId) -> Res<Json<Profile>> {
    command(&app, &p, &id, CustomerCommand::Reactivate).await
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagBody {
    tag: String,
}

pub async fn tag(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<TagBody>,
) -> Res<Json<Profile>> {
    command(&app, &p, &id, CustomerCommand::Tag { tag: b.tag }).await
}

pub async fn untag(
    State(app): State<Arc<App>>,
    p: Principal,
    Path((id, tag)): Path<(String, String)>,
) -> Res<Json<Profile>> {
    command(&app, &p, &app.pseudonyms.id(&id), CustomerCommand::Untag { tag }).await
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    text: String,
}

pub async fn note(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<NoteBody>,
) -> Res<Json<Profile>> {
    let author = Some(p.actor.clone());
    command(&app, &p, &id, CustomerCommand::AddNote { text: b.text, author }).await
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerBody {
    owner: String,
}

pub async fn owner(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<OwnerBody>,
) -> Res<Json<Profile>> {
    command(&app, &p, &id, CustomerCommand::AssignOwner { owner: b.owner }).await
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageBody {
    stage: LifecycleStage,
}

pub async fn stage(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<StageBody>,
) -> Res<Json<Profile>> {
    command(&app, &p, &id, CustomerCommand::ChangeStage { to: b.stage }).await
}

pub async fn preferences(
    State(app): State<Arc<App>>,
    p: Principal,
    CustomerId(id): CustomerId,
    Body(b): Body<Preferences>,
) -> Res<Json<Profile>> {
    chronicle_automation::decision::check_preferences(&b).map_err(AppError::BadRequest)?;
    command(&app, &p, &id, CustomerCommand::UpdatePreferences(b)).await
}

async fn command(app: &App, p: &Principal, id: &str, cmd: CustomerCommand) -> Res<Json<Profile>> {
    let c = app.customer_command(&p.tenant, id, cmd, &p.actor).await?;
    Ok(Json(Profile::from(&c)))
}
