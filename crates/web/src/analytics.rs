//! The analytics page: pipeline velocity and conversion with the stuck deals, RFM groups,
//! signup cohorts as a grid, and a funnel asked in a form; all as of one instant (the page's
//! as-of control), through the same application calls the API uses.

use crate::render::{self, app_error, render};
use crate::session::{page_of, Viewer};
use crate::text::{enc, money};
use crate::Web;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chronicle_analytics::funnel::FunnelSpec;
use chronicle_app::analytics::{CohortQuery, PipelineQuery, RfmQuery};
use minijinja::context;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AnalyticsQuery {
    as_of: String,
    stuck_days: Option<u32>,
    /// Funnel steps, one per line.
    steps: String,
    window: String,
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn days(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_owned(), |d| format!("{d:.1}"))
}

pub async fn page(State(web): State<Web>, viewer: Viewer, Query(q): Query<AnalyticsQuery>) -> Response {
    let app = &web.app;
    let tenant = viewer.tenant();
    let as_of = match q.as_of.trim() {
        "" => None,
        s => match crate::pages::parse_instant(s) {
            Some(t) => Some(t),
            None => return render::error(StatusCode::BAD_REQUEST, "The instant is not a date and time (2026-11-01T10:00:00Z)."),
        },
    };
    let stuck_days = q.stuck_days.unwrap_or(30);
    let pipeline = match app.pipeline_analytics(tenant, &PipelineQuery { as_of, known_at: None, stuck_days: Some(stuck_days) }).await {
        Ok(p) => p,
        Err(e) => return app_error(e),
    };
    let stages: Vec<_> = pipeline
        .stages
        .iter()
        .map(|s| json!({"stage": s.stage, "entered": s.entered, "advanced": s.advanced, "conversion": pct(s.conversion),
                        "bar": (s.conversion * 100.0).round(), "median": days(s.median_days), "p90": days(s.p90_days), "open": s.open_now}))
        .collect();
    let stuck: Vec<_> = pipeline
        .stuck
        .iter()
        .map(|d| json!({"name": d.name.clone().unwrap_or_else(|| d.deal.clone()), "stage": d.stage, "owner": d.owner, "days": format!("{:.0}", d.days_in_stage),
                        "amount": d.amount.map(|a| money(a, d.currency.as_deref().unwrap_or(""))),
                        "customer": d.customer_id, "customer_href": d.customer_id.as_ref().map(|c| format!("/ui/customers/{}", enc(c)))}))
        .collect();
    let win_rate = pipeline.win_rate.map(pct);
    let rfm = match app.rfm(tenant, &RfmQuery { as_of, limit: 1, ..Default::default() }).await {
        Ok(r) => r,
        Err(e) => return app_error(e),
    };
    let rfm_total: u64 = rfm.groups.values().sum();
    let groups: Vec<_> = chronicle_analytics::rfm::GROUPS
        .iter()
        .map(|g| {
            let n = rfm.groups.get(*g).copied().unwrap_or(0);
            json!({"group": g.replace('_', " "), "count": n, "bar": if rfm_total == 0 { 0 } else { n * 100 / rfm_total }})
        })
        .collect();
    let cohorts = match app.cohorts(tenant, &CohortQuery { as_of, ..Default::default() }).await {
        Ok(c) => c,
        Err(e) => return app_error(e),
    };
    let columns = cohorts.cohorts.iter().map(|c| c.converted.len()).max().unwrap_or(0);
    let grid: Vec<_> = cohorts
        .cohorts
        .iter()
        .map(|c| {
            let cells: Vec<_> = c.rates.iter().map(|r| json!({"rate": format!("{:.0} %", r * 100.0), "heat": ((r * 5.0).ceil() as u8).min(5)})).collect();
            json!({"cohort": c.cohort, "size": c.size, "cells": cells, "blank": columns - cells.len()})
        })
        .collect();
    // Attribution of orders by channel, under every model.
    let spec = chronicle_analytics::attribution::AttributionSpec {
        conversion: None,
        lookback: None,
        models: Vec::new(),
        half_life: None,
        as_of,
        known_at: None,
    };
    let attribution = match app.attribution(tenant, &spec).await {
        Ok(a) => a,
        Err(e) => return app_error(e),
    };
    let mut channels: Vec<String> = attribution.models.values().flat_map(|m| m.channels.keys().cloned()).collect();
    channels.sort();
    channels.dedup();
    let models: Vec<String> = attribution.models.keys().map(|m| crate::text::lower(m).replace('_', " ")).collect();
    let credit_rows: Vec<_> = channels
        .iter()
        .map(|ch| {
            let cells: Vec<String> =
                attribution.models.values().map(|m| m.channels.get(ch).map_or_else(|| "—".to_owned(), |c| format!("{:.2}", c.revenue))).collect();
            json!({"channel": ch, "cells": cells})
        })
        .collect();
    let attributed = json!({"conversions": attribution.conversions, "revenue": format!("{:.2}", attribution.revenue),
                            "unattributed": attribution.unattributed.conversions, "models": models, "rows": credit_rows});
    // A funnel, when asked.
    let steps: Vec<&str> = q.steps.lines().map(str::trim).filter(|s| !s.is_empty()).collect();
    let window = if q.window.trim().is_empty() { "7d".to_owned() } else { q.window.trim().to_owned() };
    let (mut funnel, mut funnel_error) = (Vec::new(), None);
    if !steps.is_empty() {
        let spec = json!({"steps": steps.iter().map(|s| json!({"event": s})).collect::<Vec<_>>(), "window": window, "as_of": as_of});
        match serde_json::from_value::<FunnelSpec>(spec) {
            Ok(spec) => match app.funnel(tenant, &spec).await {
                Ok(a) => {
                    funnel = a
                        .steps
                        .iter()
                        .map(|s| json!({"event": s.event, "count": s.count, "conversion": pct(s.conversion), "bar": (s.conversion * 100.0).round(),
                                        "median": s.median_seconds.map(|x| format!("{:.1} h", x / 3600.0))}))
                        .collect()
                }
                Err(e) => funnel_error = Some(e.to_string()),
            },
            Err(e) => funnel_error = Some(e.to_string()),
        }
    }
    let page = page_of(&viewer, "Analytics", "analytics");
    render(
        "analytics.html",
        context! {
            page, as_of => as_of.map(|t| t.format("%Y-%m-%dT%H:%M").to_string()).unwrap_or_default(),
            position => pipeline.position, stuck_days, stages, stuck, win_rate, won => pipeline.won, lost => pipeline.lost,
            groups, rfm_total, grid, attributed, columns => (0..columns).collect::<Vec<_>>(),
            steps => q.steps, window, funnel, funnel_error,
        },
    )
}
