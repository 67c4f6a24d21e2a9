//! Campaigns and the dead-letter queue: the campaigns in force with their counters, one
//! campaign's definition, and the messages that failed every attempt with their error and a
//! retry button (the engine's own retry, as the signed-in person).

use crate::render::app_error;
use crate::text::{enc, fmt_time, lower};
use crate::render::{self, render};
use crate::session::{page_of, Posted, Viewer};
use crate::Web;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chronicle_app::automation::definitions;
use minijinja::context;
use serde_json::json;

pub async fn list(State(web): State<Web>, viewer: Viewer) -> Response {
    let campaigns: Vec<_> = definitions::campaigns(&web.app, viewer.tenant())
        .into_iter()
        .map(|(name, trigger, stats)| json!({"href": format!("/ui/campaigns/{}", enc(&name)), "name": name, "trigger": trigger, "stats": stats}))
        .collect();
    let dead = definitions::dead_letters(&web.app, viewer.tenant()).len();
    let page = page_of(&viewer, "Campaigns", "campaigns");
    render("campaigns.html", context! { page, campaigns, dead })
}

pub async fn one(State(web): State<Web>, viewer: Viewer, Path(name): Path<String>) -> Response {
    let Some(definition) = definitions::campaign(&web.app, viewer.tenant(), &name) else {
        return render::error(StatusCode::NOT_FOUND, "No such campaign.");
    };
    let stats = definitions::stats(&web.app, viewer.tenant(), &name).unwrap_or_default();
    let definition = serde_json::to_string_pretty(&definition).unwrap_or_default();
    let page = page_of(&viewer, &name, "campaigns");
    render("campaign.html", context! { page, name, definition, stats })
}

pub async fn dead_letters(State(web): State<Web>, viewer: Viewer) -> Response {
    let letters: Vec<_> = definitions::dead_letters(&web.app, viewer.tenant())
        .into_iter()
        .map(|m| {
            json!({
                "id": m.message, "customer": m.customer, "customer_href": format!("/ui/customers/{}", enc(&m.customer)),
                "channel": m.channel, "purpose": lower(&m.purpose), "to": m.to, "subject": m.subject,
                "attempts": m.attempts, "error": m.last_error, "queued_at": fmt_time(&m.queued_at),
                "campaign": m.origin.map(|o| o.campaign),
                "retry": format!("/ui/dead-letters/{}/retry", enc(&m.message)),
            })
        })
        .collect();
    let page = page_of(&viewer, "Dead letters", "campaigns");
    render("dead_letters.html", context! { page, letters })
}

pub async fn retry(State(web): State<Web>, Path(id): Path<String>, p: Posted<serde_json::Map<String, serde_json::Value>>) -> Response {
    match web.engine.retry_dead_letter(p.viewer.tenant(), &id, p.viewer.actor()).await {
        Ok(_) => Redirect::to("/ui/dead-letters").into_response(),
        Err(e) => app_error(e),
    }
}
