//! Segment's HTTP Tracking API: `/v1/identify`, `/v1/track`, `/v1/page`, `/v1/screen`,
//! `/v1/group`, `/v1/alias` and `/v1/batch`, authenticated by the tenant's write key as HTTP Basic user name (empty
//! password) or as `writeKey` in the body, answering `200 {"success": true}` as Segment does.

use super::error::ApiError;
use chronicle_app::app::App;
use chronicle_app::ingest::{self, Kind};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine;
use chronicle_projections::KeyKind;
use serde_json::{json, Value};
use std::sync::Arc;

type Res = Result<Json<Ack>, ApiError>;

/// What an ingest call answers: `success`, and when a rule refused some messages of a batch,
/// how many events were written and which messages were refused.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Ack {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    written: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<Vec<Rejected>>,
}

/// One message of Segment's Tracking API, as its clients send it (the schema of the single-call
/// routes; `/v1/batch` takes a [`Batch`] of them). The ingest module reads it field by field,
/// as Segment does, and is the authority: it also takes numeric ids and checks the timestamps.
pub struct Call;

/// A batch of messages, with the context and integrations every message inherits.
pub struct Batch;

impl schemars::JsonSchema for Call {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SegmentCall".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let id = json!({"type": ["string", "number"]});
        let time = json!({"type": "string", "format": "date-time"});
        schemars::json_schema!({
            "description": "A Segment message: identify, track, page, screen, group or alias. It names a userId or an anonymousId; a track names its event.",
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["identify", "track", "page", "screen", "group", "alias"], "description": "In a batch; a single call's path says it"},
                "userId": id, "anonymousId": id, "previousId": id, "groupId": id,
                "messageId": {"type": "string", "description": "Makes a retry idempotent"},
                "event": {"type": "string", "description": "A track's event name"},
                "name": {"type": "string", "description": "A page's or screen's name"},
                "traits": {"type": "object"},
                "properties": {"type": "object"},
                "context": {"type": "object", "description": "context.traits stand in for an identify's missing traits"},
                "integrations": {"type": "object"},
                "timestamp": time, "sentAt": time, "originalTimestamp": time,
                "writeKey": {"type": "string", "description": "The write key, when it is not the Basic user"}
            }
        })
    }
}

impl schemars::JsonSchema for Batch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SegmentBatch".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let call = generator.subschema_for::<Call>();
        schemars::json_schema!({
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {"type": "array", "items": call},
                "context": {"type": "object"},
                "integrations": {"type": "object"},
                "sentAt": {"type": "string", "format": "date-time"},
                "writeKey": {"type": "string"}
            }
        })
    }
}

/// A message a business rule refused at write time.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Rejected {
    index: usize,
    code: String,
    message: String,
}

pub async fn identify(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    single(app, headers, body, Kind::Identify).await
}
pub async fn track(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    single(app, headers, body, Kind::Track).await
}
pub async fn page(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    single(app, headers, body, Kind::Page).await
}
pub async fn screen(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    single(app, headers, body, Kind::Screen).await
}
pub async fn alias(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    single(app, headers, body, Kind::Alias).await
}
pub async fn group(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    single(app, headers, body, Kind::Group).await
}

pub async fn batch(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Res {
    let body = decoded(&headers, body, ingest::MAX_BATCH_BYTES)?;
    if body.len() > ingest::MAX_BATCH_BYTES {
        return Err(ApiError::of(super::codes::Code::BatchTooLarge, "a batch is limited to 500 KB"));
    }
    let mut value = parse_json(&body)?;
    let (tenant, actor, sender) = authenticate(&app, &headers, &value)?;
    ingest::pseudonymize(&app.pseudonyms, &mut value);
    let messages = ingest::parse_batch(&tenant, value, app.now()).map_err(refused)?;
    answer(ingest::write(&app, &tenant, &actor, sender, messages).await?)
}

async fn single(app: Arc<App>, headers: HeaderMap, body: Bytes, kind: Kind) -> Res {
    let body = decoded(&headers, body, ingest::MAX_MESSAGE_BYTES)?;
    if body.len() > ingest::MAX_MESSAGE_BYTES {
        return Err(ApiError::of(super::codes::Code::MessageTooLarge, "a message is limited to 32 KB"));
    }
    let mut value = parse_json(&body)?;
    let (tenant, actor, sender) = authenticate(&app, &headers, &value)?;
    ingest::pseudonymize(&app.pseudonyms, &mut value);
    let msg = ingest::parse_message(&tenant, 0, value, Some(kind), app.now(), None, None).map_err(refused)?;
    answer(ingest::write(&app, &tenant, &actor, sender, vec![msg]).await?)
}

/// The body, gunzipped when `Content-Encoding: gzip` (as Segment's clients may send it). At most
/// `limit + 1` bytes are inflated, so a small compressed body cannot expand without bound.
fn decoded(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let encoding =
        headers.get(axum::http::header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(body),
        "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| {
                ApiError::of(super::codes::Code::BadRequest, format!("invalid gzip body: {e}"))
            })?;
            Ok(Bytes::from(out))
        }
        other => Err(ApiError::of(super::codes::Code::UnsupportedEncoding,
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::of(super::codes::Code::BadRequest, format!("invalid JSON body: {e}")))
}

fn refused(e: ingest::Invalid) -> ApiError {
    ApiError { extra: Some(json!({"index": e.index})), ..ApiError::named(super::codes::Code::BadRequest, e.code, e.message) }
}

fn answer(outcome: ingest::Outcome) -> Res {
    if outcome.rejected.is_empty() {
        return Ok(Json(Ack { success: true, written: None, rejected: None }));
    }
    let rejected = outcome
        .rejected
        .iter()
        .map(|(i, code, message)| Rejected { index: *i, code: code.to_string(), message: message.to_string() })
        .collect();
    Ok(Json(Ack { success: true, written: Some(outcome.written), rejected: Some(rejected) }))
}

/// The tenant of an ingest request: a write key (HTTP Basic user name) or an API key (Bearer).
pub(crate) fn ingest_tenant(app: &App, auth: Option<&super::auth::Authenticated>, headers: &HeaderMap, body: &Value) -> Result<String, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    if let Some(key) = bearer {
        // Authenticated once per request, by the request layer.
        let rec = match auth {
            Some(a) => a.0.as_ref().map(|(rec, _)| rec.clone()),
            None => app.authenticate(key.trim()),
        };
        return match rec {
            Some(rec) if rec.kind == KeyKind::Api && rec.role != chronicle_projections::Role::Reader => Ok(rec.tenant),
            Some(rec) if rec.kind == KeyKind::Api => Err(ApiError::of(super::codes::Code::Forbidden, "a reader key may not send events")),
            _ => Err(ApiError::of(super::codes::Code::Unauthorized, "unknown API key")),
        };
    }
    authenticate(app, headers, body).map(|(tenant, _, _)| tenant)
}

/// The write key: HTTP Basic user name (Segment's clients), else `writeKey` in the body. The
/// tenant, the actor, and whether the key is the public write key or a secret one.
fn authenticate(app: &App, headers: &HeaderMap, body: &Value) -> Result<(String, String, ingest::Sender), ApiError> {
    let unauthorized = |m: &str| ApiError::of(super::codes::Code::Unauthorized, m);
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|userpass| userpass.split(':').next().unwrap_or_default().to_owned());
    let key = from_header
        .or_else(|| body.get("writeKey").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| unauthorized("a write key is required (HTTP Basic user name or writeKey)"))?;
    let rec = app.authenticate(&key);
    if rec.is_some() {
        app.ingest_rate_check(Some(&key), None).map_err(|wait| super::error::rate_limited(wait, "too many ingest requests for this write key"))?;
    }
    match rec {
        Some(rec) if rec.kind == KeyKind::Write => {
            Ok((rec.tenant, format!("writekey:{}", &chronicle_app::keys::digest(&key)[..12]), ingest::Sender::Public))
        }
        // A key made with the ingest role is a write key too.
        Some(rec) if rec.role == chronicle_projections::Role::Ingest => {
            Ok((rec.tenant, format!("key:{}", &chronicle_app::keys::digest(&key)[..12]), ingest::Sender::Trusted))
        }
        Some(rec) if rec.role == chronicle_projections::Role::Reader => {
            Err(ApiError::of(super::codes::Code::Forbidden, "a reader key may not send events"))
        }
        _ => Err(unauthorized("unknown write key (an API key is not a write key; make one with the ingest role)")),
    }
}
