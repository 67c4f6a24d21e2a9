//! Deal endpoints, the pipeline view, and orders (read-only: Segment e-commerce events drive them).

use super::error::{ApiError, Body, OptBody};
use super::auth::Principal;
use chronicle_app::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chronicle_core::deal::{Deal, DealCommand};
use serde::Deserialize;
use std::sync::Arc;

type Res<T> = Result<T, ApiError>;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeal {
    id: Option<String>,
    name: String,
    customer_id: Option<String>,
    owner: Option<String>,
    stage: Option<String>,
    /// Minor currency units (cents).
    amount: Option<i64>,
    currency: Option<String>,
}

pub async fn create(
    State(app): State<Arc<App>>,
    p: Principal,
    Body(b): Body<CreateDeal>,
) -> Res<(StatusCode, Json<Deal>)> {
    let id = b.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let cmd = DealCommand::Create {
        name: b.name,
        customer_id: b.customer_id,
        owner: b.owner,
        stage: b.stage,
        amount: b.amount,
        currency: b.currency,
    };
    let d = app.deal_command(&p.tenant, &id, cmd, &p.actor).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    stage: Option<String>,
    owner: Option<String>,
    status: Option<String>,
    customer: Option<String>,
    after: Option<String>,
    #[serde(rename = "limit")]
    limit_text: Option<String>,
    #[serde(skip)]
    limit: Option<usize>,
}

impl ListQuery {
    /// The query's parameters: a filter by a customer this tenant does not know is a 404 first
    /// (another tenant's ids say nothing here), then an unknown parameter a 400.
    fn read(app: &App, tenant: &str, raw: std::collections::BTreeMap<String, String>) -> Result<ListQuery, ApiError> {
        if raw.get("customer").is_some_and(|c| !app.knows_customer(tenant, c)) {
            return Err(chronicle_app::AppError::NotFound("customer").into());
        }
        let raw = serde_json::to_value(raw).expect("a map of strings");
        let mut q: ListQuery = serde_json::from_value(raw).map_err(|e| ApiError::of(super::codes::Code::BadRequest, e.to_string()))?;
        if let Some(l) = q.limit_text.take() {
            q.limit = Some(l.parse().map_err(|_| ApiError::of(super::codes::Code::BadRequest, format!("limit must be a number, not {l:?}")))?);
        }
        Ok(q)
    }

    fn filter(&self) -> chronicle_app::app::ListFilter {
        chronicle_app::app::ListFilter { stage: self.stage.clone(), owner: self.owner.clone(), status: self.status.clone(), customer: self.customer.clone() }
    }
}

/// One page of deals.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct DealPage {
    deals: Vec<Deal>,
    /// The cursor of the next page (`?after=`), when there is one.
    next: Option<String>,
    has_more: bool,
}

/// One page of orders.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct OrderPage {
    orders: Vec<chronicle_core::order::Order>,
    next: Option<String>,
    has_more: bool,
}

/// `GET /v1/deals`: `{"deals", "next", "has_more"}`.
pub async fn list(State(app): State<Arc<App>>, p: Principal, raw: super::error::Params<std::collections::BTreeMap<String, String>>) -> Res<Json<DealPage>> {
    let q = ListQuery::read(&app, &p.tenant, raw.0)?;
    if let Some(s) = q.status.as_deref().filter(|s| !matches!(*s, "open" | "won" | "lost")) {
        return Err(ApiError::of(super::codes::Code::BadRequest, format!("status is open, won or lost, not {s:?}")));
    }
    let (deals, next) = app.deals_list(&p.tenant, &q.filter(), q.after.as_deref(), super::error::clamp_limit(q.limit));
    Ok(Json(DealPage { deals, has_more: next.is_some(), next }))
}

/// `GET /v1/orders`: `{"orders", "next", "has_more"}`.
pub async fn orders(State(app): State<Arc<App>>, p: Principal, raw: super::error::Params<std::collections::BTreeMap<String, String>>) -> Res<Json<OrderPage>> {
    let q = ListQuery::read(&app, &p.tenant, raw.0)?;
    if q.stage.is_some() || q.owner.is_some() {
        return Err(ApiError::of(super::codes::Code::BadRequest, "orders are filtered by status and customer"));
    }
    let (orders, next) = app.orders_list(&p.tenant, &q.filter(), q.after.as_deref(), super::error::clamp_limit(q.limit));
    Ok(Json(OrderPage { orders, has_more: next.is_some(), next }))
}

pub async fn get_one(State(app): State<Arc<App>>, p: Principal, Path(id): Path<String>) -> Res<Json<Deal>> {
    Ok(Json(app.deal(&p.tenant, &id)?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchDeal {
    stage: Option<String>,
    amount: Option<i64>,
    owner: Option<String>,
}

pub async fn patch(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    Body(b): Body<PatchDeal>,
) -> Res<Json<Deal>> {
    let cmd = DealCommand::Update { stage: b.stage, amount: b.amount, owner: b.owner };
    Ok(Json(app.deal_command(&p.tenant, &id, cmd, &p.actor).await?))
}

pub async fn won(State(app): State<Arc<App>>, p: Principal, Path(id): Path<String>) -> Res<Json<Deal>> {
    Ok(Json(app.deal_command(&p.tenant, &id, DealCommand::Win, &p.actor).await?))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LostBody {
    reason: Option<String>,
}

pub async fn lost(
    State(app): State<Arc<App>>,
    p: Principal,
    Path(id): Path<String>,
    OptBody(body): OptBody<LostBody>,
) -> Res<Json<Deal>> {
    let reason = body.unwrap_or_default().reason;
    Ok(Json(app.deal_command(&p.tenant, &id, DealCommand::Lose { reason }, &p.actor).await?))
}

pub async fn pipeline(State(app): State<Arc<App>>, p: Principal) -> Res<Json<chronicle_projections::Pipeline>> {
    Ok(Json(app.pipeline(&p.tenant)))
}

pub async fn order(State(app): State<Arc<App>>, p: Principal, Path(id): Path<String>) -> Res<Json<chronicle_core::order::Order>> {
    Ok(Json(app.order(&p.tenant, &id)?))
}
