//! The pipeline board: open deals by stage with their amounts and the stage totals, won and lost
//! beside them; a deal moves to another stage, or is won or lost, through the API's own deal
//! commands, as the signed-in person.

use crate::render::app_error;
use crate::text::{enc, lower, money};
use crate::render::{self, render};
use crate::session::{page_of, Posted, Viewer};
use crate::Web;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chronicle_core::deal::{Deal, DealCommand, DealStatus};
use minijinja::context;
use serde::{Deserialize, Serialize};

/// A deal as a card of the board.
#[derive(Serialize)]
struct Card {
    id: String,
    name: String,
    amount: String,
    owner: String,
    customer: Option<String>,
    customer_href: Option<String>,
    move_url: String,
}

#[derive(Serialize)]
struct Column {
    stage: String,
    total: String,
    count: usize,
    cards: Vec<Card>,
}


fn card(d: &Deal) -> Card {
    Card {
        id: d.id.clone(),
        name: d.name.clone(),
        amount: d.amount.map(|a| money(a, &d.currency)).unwrap_or_default(),
        owner: d.owner.clone().unwrap_or_default(),
        customer: d.customer_id.clone(),
        customer_href: d.customer_id.as_ref().map(|c| format!("/ui/customers/{}", enc(c))),
        move_url: format!("/ui/deals/{}/move", enc(&d.id)),
    }
}

/// Deals held on the board at most (the API lists more by page).
const MAX_DEALS: usize = 5000;

pub async fn board(State(web): State<Web>, viewer: Viewer) -> Response {
    let (deals, _) = web.app.deals_list(viewer.tenant(), &Default::default(), None, MAX_DEALS);
    let total = |ds: &[&Deal]| {
        // Totals by currency, as amounts in different currencies do not add up.
        let mut by: std::collections::BTreeMap<&str, i64> = Default::default();
        for d in ds {
            *by.entry(d.currency.as_str()).or_default() += d.amount.unwrap_or(0);
        }
        by.iter().map(|(c, a)| money(*a, c)).collect::<Vec<_>>().join(" + ")
    };
    let mut columns: Vec<Column> = chronicle_core::deal::STAGES
        .iter()
        .map(|stage| {
            let ds: Vec<&Deal> = deals.iter().filter(|d| d.status == DealStatus::Open && d.stage == *stage).collect();
            Column { stage: (*stage).to_owned(), total: total(&ds), count: ds.len(), cards: ds.iter().map(|d| card(d)).collect() }
        })
        .collect();
    for status in [DealStatus::Won, DealStatus::Lost] {
        let ds: Vec<&Deal> = deals.iter().filter(|d| d.status == status).collect();
        columns.push(Column { stage: lower(&status), total: total(&ds), count: ds.len(), cards: ds.iter().map(|d| card(d)).collect() });
    }
    let page = page_of(&viewer, "Pipeline", "pipeline");
    render("pipeline.html", context! { page, columns, stages => chronicle_core::deal::STAGES })
}

#[derive(Deserialize)]
pub struct MoveForm {
    /// A stage, or `won` / `lost`.
    to: String,
    #[serde(default)]
    reason: String,
}

pub async fn move_deal(State(web): State<Web>, Path(id): Path<String>, p: Posted<MoveForm>) -> Response {
    let cmd = match p.form.to.as_str() {
        "won" => DealCommand::Win,
        "lost" => DealCommand::Lose { reason: Some(p.form.reason.trim().to_owned()).filter(|r| !r.is_empty()) },
        stage if chronicle_core::deal::STAGES.contains(&stage) => DealCommand::ChangeStage { to: stage.to_owned() },
        _ => return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Unknown stage."),
    };
    match web.app.deal_command(p.viewer.tenant(), &id, cmd, p.viewer.actor()).await {
        Ok(_) => Redirect::to("/ui/pipeline").into_response(),
        Err(e) => app_error(e),
    }
}
