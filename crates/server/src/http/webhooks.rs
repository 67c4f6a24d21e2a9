//! Webhooks other systems call: SendGrid's Event Webhook (delivery feedback).

use super::error::ApiError;
use super::segment::ingest_tenant;
use chronicle_app::app::App;
use chronicle_app::automation::feedback;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// `POST /v1/webhooks/sendgrid`: the tenant's write key as HTTP Basic user name (or `?key=`
/// in the URL configured at SendGrid); the batch signed with SendGrid's key. A batch whose
/// signature does not verify is refused (401) before it is read, and nothing is written.
pub async fn sendgrid(
    State(app): State<Arc<App>>,
    State(engine): State<Arc<chronicle_app::automation::Engine>>,
    auth: Option<axum::Extension<super::auth::Authenticated>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Feedback>, ApiError> {
    let unauthorized = |m: &str| ApiError::of(super::codes::Code::Unauthorized, m);
    let tenant = match q.get("key") {
        Some(key) => match app.authenticate(key) {
            Some(rec) if rec.kind == chronicle_projections::KeyKind::Write => rec.tenant,
            _ => return Err(unauthorized("unknown write key")),
        },
        None => ingest_tenant(&app, auth.as_ref().map(|a| &a.0), &headers, &Value::Null)?,
    };
    // The tenant's own key when it set one (then a batch signed for another tenant's account
    // cannot be replayed here), else the instance's.
    let own = app.views().tenant(&tenant).and_then(|t| t.sendgrid_key.clone());
    let key = match own {
        Some(b64) => feedback::parse_public_key(&b64).map_err(|e| ApiError::from(chronicle_app::error::AppError::internal("reading the tenant's SendGrid key", e)))?,
        None => match engine.sendgrid_key() {
            Some(k) => *k,
            None => return Err(unauthorized("no SendGrid verification key is configured (--sendgrid-public-key, or PUT /v1/settings/sendgrid)")),
        },
    };
    let key = &key;
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (signature, timestamp) = (header(feedback::SIGNATURE_HEADER), header(feedback::TIMESTAMP_HEADER));
    if signature.is_empty() || timestamp.is_empty() || !feedback::verify(key, signature, timestamp, &body) {
        return Err(unauthorized("the SendGrid signature does not verify"));
    }
    // A signed batch is good for a few minutes only, so one captured cannot be replayed later
    // (redelivered within the window, its events store nothing new: their ids derive from
    // SendGrid's event ids).
    if !feedback::fresh(timestamp, app.now()) {
        return Err(unauthorized("the SendGrid signature's timestamp is not within 10 minutes of now"));
    }
    let (applied, ignored) = feedback::apply(&app, &tenant, &body).await?;
    Ok(Json(Feedback { applied, ignored }))
}

/// What a SendGrid batch did.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Feedback {
    /// Events recorded (deliveries, opens, bounces, …).
    applied: usize,
    /// Events of a kind it does not record, or for an address no customer of the tenant has.
    ignored: usize,
}

/// A batch of SendGrid's Event Webhook, as SendGrid posts it (the schema of the body;
/// `automation::feedback` reads it and is the authority).
pub struct SendGridBatch;

impl schemars::JsonSchema for SendGridBatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SendGridBatch".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "array",
            "items": {
                "type": "object",
                "required": ["email", "event", "sg_event_id", "timestamp"],
                "properties": {
                    "email": {"type": "string"},
                    "event": {"type": "string", "description": "delivered, open, click, bounce, dropped, spamreport, unsubscribe and group_unsubscribe are recorded; others are ignored"},
                    "sg_event_id": {"type": "string"},
                    "smtp-id": {"type": "string", "description": "The Message-ID Chronicle sent, <id@chronicle>"},
                    "timestamp": {"type": "integer", "description": "Unix seconds"},
                    "reason": {"type": "string"},
                    "response": {"type": "string"},
                    "type": {"type": "string", "description": "A bounce's kind"},
                    "url": {"type": "string"}
                }
            }
        })
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendGridKey {
    public_key: String,
}

/// The tenant's SendGrid verification key (null: the instance's is used).
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct SendGridSetting {
    public_key: Option<String>,
}

/// `GET /v1/settings/sendgrid`.
pub async fn get_sendgrid_key(State(app): State<Arc<App>>, p: super::auth::Principal) -> Result<Json<SendGridSetting>, ApiError> {
    let public_key = app.views().tenant(&p.tenant).and_then(|t| t.sendgrid_key.clone());
    Ok(Json(SendGridSetting { public_key }))
}

/// `PUT /v1/settings/sendgrid`: checked whole (a P-256 public key, base64 DER, as SendGrid's
/// settings show it), then recorded (`SendGridKeySet` on the tenant's `_settings` stream).
pub async fn set_sendgrid_key(
    State(app): State<Arc<App>>,
    p: super::auth::Principal,
    super::error::Body(b): super::error::Body<SendGridKey>,
) -> Result<Json<SendGridSetting>, ApiError> {
    feedback::parse_public_key(&b.public_key).map_err(|e| ApiError::from(chronicle_app::error::AppError::BadRequest(e.to_string())))?;
    record_setting(&app, &p, "SendGridKeySet", json!({"public_key": b.public_key.trim()})).await?;
    Ok(Json(SendGridSetting { public_key: Some(b.public_key.trim().to_owned()) }))
}

/// `DELETE /v1/settings/sendgrid`: back to the instance's key.
pub async fn remove_sendgrid_key(State(app): State<Arc<App>>, p: super::auth::Principal) -> Result<Json<SendGridSetting>, ApiError> {
    record_setting(&app, &p, "SendGridKeyRemoved", json!({})).await?;
    Ok(Json(SendGridSetting { public_key: None }))
}

pub(super) async fn record_setting(app: &App, p: &super::auth::Principal, event_type: &str, data: Value) -> Result<(), ApiError> {
    let ev = chronicle_core::envelope::NewEvent::new(uuid::Uuid::now_v7(), event_type, data, app.now()).with_actor(&p.actor);
    app.append(&p.tenant, chronicle_core::registry::SETTINGS_STREAM, chronicle_core::envelope::ExpectedVersion::Any, vec![ev])
        .await
        .map_err(ApiError::from)?;
    Ok(())
}
