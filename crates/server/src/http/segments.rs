//! Audience segments (`/v1/segments`; not the Segment ingest protocol, which is `segment`):
//! definitions as data, and their members now or as of an instant.

use super::auth::Principal;
use super::error::{ApiError, Body, Params};
use axum::extract::{Path, State};
use axum::Json;
use chronicle_app::app::App;
use chronicle_app::automation::definitions::{self, SegmentInfo};
use chronicle_app::error::AppError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

type Res<T> = Result<T, ApiError>;

pub const SEGMENT_EXAMPLE: &str =
    r#"{"description":"Gone quiet","conditions":[{"inactive_for":"60d"},{"consent":{"channel":"email","purpose":"marketing"}}]}"#;

/// A segment's definition: conditions that must all hold, each one of `{"trait", "equals"}`,
/// `{"trait", "exists"}`, `{"tag"}`, `{"stage"}`, `{"consent": {"channel", "purpose"}}`,
/// `{"inactive_for": "60d"}` (the parser checks each whole).
#[derive(Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
pub struct Definition {
    description: Option<String>,
    conditions: Vec<serde_json::Map<String, Value>>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Saved {
    name: String,
    /// False when the definition was the one in force already (nothing recorded).
    changed: bool,
}

pub async fn put(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>, Body(def): Body<Value>) -> Res<Json<Saved>> {
    let changed = definitions::save_segment(&app, &p.tenant, &name, def, &p.actor).await?;
    Ok(Json(Saved { name, changed }))
}

pub async fn get_one(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>) -> Res<Json<SegmentInfo>> {
    Ok(Json(definitions::segment_info(&app, &p.tenant, &name).ok_or(AppError::NotFound("segment"))?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersQuery {
    /// Members as of this instant, from the log's entries and exits (default: now).
    as_of: Option<DateTime<Utc>>,
    /// With `as_of`: as known at this log position or ingest instant.
    known_at: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Member {
    id: String,
    since: DateTime<Utc>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Members {
    members: Vec<Member>,
    next: Option<String>,
    has_more: bool,
    /// The log position the answer reflects (the views' now; the analytics index's with as_of).
    position: u64,
}

pub async fn members(State(app): State<Arc<App>>, p: Principal, Path(name): Path<String>, Params(q): Params<MembersQuery>) -> Res<Json<Members>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let (list, next, position) = match q.as_of {
        None => {
            let position = app.views().position;
            let (list, next) = definitions::segment_members(&app, &p.tenant, &name, q.after.as_deref(), limit)?;
            (list, next, position)
        }
        Some(t) => {
            definitions::segment_info(&app, &p.tenant, &name).ok_or(AppError::NotFound("segment"))?;
            let (all, position) = app.segment_members_at(&p.tenant, &name, t, q.known_at.as_deref()).await?;
            let mut rest = all.into_iter().filter(|(id, _)| q.after.as_deref().is_none_or(|a| id.as_str() > a));
            let page: Vec<_> = rest.by_ref().take(limit).collect();
            let next = rest.next().and(page.last().map(|(id, _)| id.clone()));
            (page, next, position)
        }
    };
    let members = list.into_iter().map(|(id, since)| Member { id, since }).collect();
    Ok(Json(Members { members, has_more: next.is_some(), next, position }))
}
