//! Analytics on the log (issue 21): answers as of an instant of event time and as known at a
//! log position. Reads: a reader key may ask.

use super::auth::Principal;
use super::error::{ApiError, Body, Params};
use axum::extract::State;
use axum::Json;
use chronicle_analytics::funnel::{FunnelAnswer, FunnelSpec};
use chronicle_analytics::rfm::RfmPage;
use chronicle_app::analytics::{CohortQuery, PipelineQuery, ReengagementQuery, RfmQuery};
use chronicle_app::App;
use std::sync::Arc;

pub const FUNNEL_EXAMPLE: &str = r#"{"steps":[{"event":"Product Viewed"},{"event":"Product Added"},{"event":"Order Completed"}],"window":"7d","breakdown":{"trait":"plan"}}"#;

/// `POST /v1/analytics/funnels`.
pub async fn funnel(State(app): State<Arc<App>>, p: Principal, Body(spec): Body<FunnelSpec>) -> Result<Json<FunnelAnswer>, ApiError> {
    Ok(Json(app.funnel(&p.tenant, &spec).await?))
}

/// `GET /v1/analytics/rfm`: one page of RFM per customer.
pub async fn rfm(State(app): State<Arc<App>>, p: Principal, Params(q): Params<RfmQuery>) -> Result<Json<RfmPage>, ApiError> {
    Ok(Json(app.rfm(&p.tenant, &q).await?))
}

/// `GET /v1/analytics/pipeline`: stage velocity, conversion, win rate, stuck deals.
pub async fn pipeline(
    State(app): State<Arc<App>>,
    p: Principal,
    Params(q): Params<PipelineQuery>,
) -> Result<Json<chronicle_analytics::pipeline::Pipeline>, ApiError> {
    Ok(Json(app.pipeline_analytics(&p.tenant, &q).await?))
}

/// `GET /v1/analytics/cohorts`: signup cohorts and their conversion over time.
pub async fn cohorts(
    State(app): State<Arc<App>>,
    p: Principal,
    Params(q): Params<CohortQuery>,
) -> Result<Json<chronicle_analytics::cohorts::Cohorts>, ApiError> {
    Ok(Json(app.cohorts(&p.tenant, &q).await?))
}

pub const ATTRIBUTION_EXAMPLE: &str = r#"{"conversion":"Order Completed","lookback":"30d","models":["first_touch","last_touch","linear","time_decay","position_based"],"half_life":"7d"}"#;

/// `POST /v1/analytics/attribution`: revenue credited to channels and campaigns.
pub async fn attribution(
    State(app): State<Arc<App>>,
    p: Principal,
    Body(spec): Body<chronicle_analytics::attribution::AttributionSpec>,
) -> Result<Json<chronicle_analytics::attribution::Attribution>, ApiError> {
    Ok(Json(app.attribution(&p.tenant, &spec).await?))
}

/// `GET /v1/analytics/reengagement`: engaged customers gone silent.
pub async fn reengagement(
    State(app): State<Arc<App>>,
    p: Principal,
    Params(q): Params<ReengagementQuery>,
) -> Result<Json<chronicle_analytics::reengagement::Reengagement>, ApiError> {
    Ok(Json(app.reengagement(&p.tenant, &q).await?))
}
