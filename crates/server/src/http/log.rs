//! The log: the tenant's events in commit order, live as server-sent events, and raw streams
//! (read forward; append with an expected version).

use super::error::{ApiError, Body, Params};
use super::error::clamp_limit;
use super::auth::Principal;
use chronicle_app::app::{App, RESERVED_PREFIXES};
use chronicle_app::error::AppError;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

type Res<T> = Result<T, ApiError>;

/// Most events one append may carry.
pub const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
pub struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn events(State(app): State<Arc<App>>, p: Principal, Params(q): Params<PageQuery>) -> Res<Json<chronicle_app::app::Page>> {
    Ok(Json(app.events(&p.tenant, q.after.unwrap_or(0), clamp_limit(q.limit)).await?))
}

#[derive(Deserialize)]
pub struct LiveQuery {
    after: Option<u64>,
}

/// Catch up from `after` (or `Last-Event-ID`, or the current head), then follow. Each SSE
/// event's id is the envelope's position, so a reconnecting client resumes without a gap.
pub async fn stream_live(
    State(app): State<Arc<App>>,
    axum::Extension(options): axum::Extension<super::state::Options>,
    p: Principal,
    headers: HeaderMap,
    Params(q): Params<LiveQuery>,
) -> Res<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok());
    let after = match q.after.or(resume) {
        Some(a) => a,
        None => app.store().head().await.map_err(AppError::from)?,
    };
    let stream = futures_util::StreamExt::map(app.feed(&p.tenant, after), |ev| {
        let data = serde_json::to_string(&ev).unwrap_or_default();
        Ok(Event::default().id(ev.position.to_string()).event(ev.event_type.clone()).data(data))
    });
    // The stream ends when the server begins to stop (else a shutdown waits on the client).
    let mut closing = options.closing;
    let stream = futures_util::StreamExt::take_until(stream, async move {
        let _ = closing.wait_for(|c| *c).await;
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn read_stream(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(stream): Path<String>,
    Params(q): Params<PageQuery>,
) -> Res<Json<chronicle_app::app::Page>> {
    // A stream that does not exist (in this tenant) is not found, like any other resource.
    if app.store().stream_version(&p.tenant, &stream).await.map_err(chronicle_app::error::AppError::from)? == 0 {
        return Err(chronicle_app::error::AppError::NotFound("stream").into());
    }
    Ok(Json(app.read_stream(&p.tenant, &stream, q.after.unwrap_or(0), clamp_limit(q.limit)).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    /// `"any"`, `"no_stream"`, `"stream_exists"` or the stream's version.
    #[schemars(with = "Value")]
    expected_version: ExpectedVersion,
    events: Vec<IncomingEvent>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncomingEvent {
    #[schemars(with = "Option<String>")]
    id: Option<uuid::Uuid>,
    r#type: String,
    data: Value,
    metadata: Option<Value>,
    event_time: Option<DateTime<Utc>>,
    schema_version: Option<u32>,
    source: Option<String>,
    #[schemars(with = "Option<String>")]
    causation_id: Option<uuid::Uuid>,
    #[schemars(with = "Option<String>")]
    correlation_id: Option<uuid::Uuid>,
}

/// Validate the whole batch, then append it in one atomic write.
pub async fn append(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(stream): Path<String>,
    Body(b): Body<AppendBody>,
) -> Res<Json<Appended>> {
    let bad = |m: String| -> ApiError { AppError::BadRequest(m).into() };
    if stream.is_empty() || stream.len() > 200 || stream.chars().any(|c| c.is_control() || c == '/') {
        return Err(bad("stream names are 1-200 characters, no control characters or '/'".into()));
    }
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| stream.starts_with(**p)) {
        return Err(ApiError::of(super::codes::Code::ReservedStream,
            format!("streams starting with {prefix:?} are written by Chronicle's commands, not raw appends"),
        ));
    }
    if b.events.is_empty() || b.events.len() > MAX_BATCH {
        return Err(bad(format!("events must hold 1 to {MAX_BATCH} events")));
    }
    let now = app.now();
    let mut batch = Vec::with_capacity(b.events.len());
    for (i, e) in b.events.into_iter().enumerate() {
        if e.r#type.trim().is_empty() || e.r#type.len() > 128 {
            return Err(bad(format!("events[{i}].type must be 1-128 characters")));
        }
        if let Some(owner) = chronicle_core::registry::owner_of(&e.r#type) {
            return Err(ApiError::of(super::codes::Code::ReservedType,
                format!("events[{i}].type {:?} is written only by Chronicle's own commands ({owner:?})", e.r#type),
            ));
        }
        if let Some(t) = e.event_time {
            chronicle_core::time::check(&format!("events[{i}].event_time"), t).map_err(|e| bad(e.to_string()))?;
        }
        let metadata = e.metadata.unwrap_or_else(|| json!({}));
        if !metadata.is_object() {
            return Err(bad(format!("events[{i}].metadata must be an object")));
        }
        let mut ev =
            NewEvent::new(e.id.unwrap_or_else(uuid::Uuid::now_v7), e.r#type, e.data, e.event_time.unwrap_or(now))
                .with_actor(p.actor.clone());
        ev.metadata = metadata;
        ev.schema_version = e.schema_version.unwrap_or(ev.schema_version);
        ev.source = e.source.unwrap_or_else(|| "api".into());
        ev.causation_id = e.causation_id;
        ev.correlation_id = e.correlation_id;
        batch.push(ev);
    }
    let r = app.append(&p.tenant, &stream, b.expected_version, batch).await?;
    Ok(Json(Appended { first_version: r.first_version, last_version: r.last_version, position: r.position }))
}

/// Where an append landed: the stream versions of its first and last events, and the log
/// position of its last.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Appended {
    first_version: u64,
    last_version: u64,
    position: u64,
}
