//! Webhooks other systems call: SendGrid's Event Webhook (delivery feedback).

use super::error::ApiError;
use super::segment::ingest_tenant;
use crate::app::App;
use crate::automation::feedback;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// `POST /v1/webhooks/sendgrid`: the tenant's write key as HTTP Basic user name (or `?key=`
/// in the URL configured at SendGrid); the batch signed with SendGrid's key. A batch whose
/// signature does not verify is refused (401) before it is read, and nothing is written.
pub async fn sendgrid(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let tenant = match q.get("key") {
        Some(key) => match app.authenticate(key) {
            Some(rec) if rec.kind == chronicle_projections::KeyKind::Write => rec.tenant,
            _ => return Err(unauthorized("unknown write key")),
        },
        None => ingest_tenant(&app, &headers, &Value::Null)?,
    };
    let Some(key) = app.sendgrid_key.get() else {
        return Err(unauthorized("no SendGrid verification key is configured (--sendgrid-public-key)"));
    };
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (signature, timestamp) = (header(feedback::SIGNATURE_HEADER), header(feedback::TIMESTAMP_HEADER));
    if signature.is_empty() || timestamp.is_empty() || !feedback::verify(key, signature, timestamp, &body) {
        return Err(unauthorized("the SendGrid signature does not verify"));
    }
    // A signed batch is good for a few minutes only, so one captured cannot be replayed later
    // (redelivered within the window, its events store nothing new: their ids derive from
    // SendGrid's event ids).
    if !feedback::fresh(timestamp, chrono::Utc::now()) {
        return Err(unauthorized("the SendGrid signature's timestamp is not within 10 minutes of now"));
    }
    let (applied, ignored) = feedback::apply(&app, &tenant, &body).await?;
    Ok(Json(json!({"applied": applied, "ignored": ignored})))
}
