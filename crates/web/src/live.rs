//! The live activity view: the tenant's events as they are committed, followed by the page over
//! server-sent events (the same feed as the API's `/v1/events/stream`), each shown as a line.

use crate::text::fmt_time;
use crate::render::render;
use crate::session::{page_of, Viewer};
use crate::Web;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Response;
use futures_util::StreamExt;
use minijinja::context;
use std::convert::Infallible;

pub async fn page(viewer: Viewer) -> Response {
    let page = page_of(&viewer, "Live activity", "live");
    render("live.html", context! { page })
}

/// The events after the head (or `Last-Event-ID` when the browser reconnects), as SSE: each
/// event's data is a small JSON object the page's script shows as a line.
pub async fn events(
    State(web): State<Web>,
    viewer: Viewer,
    headers: axum::http::HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, Response> {
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok());
    let after = match resume {
        Some(a) => a,
        None => web.app.store().head().await.map_err(|e| crate::render::app_error(e.into()))?,
    };
    let stream = web.app.feed(viewer.tenant(), after).map(|ev| {
        let customer = chronicle_core::customer::id_of_stream(&ev.stream).map(str::to_owned);
        let line = serde_json::json!({
            "position": ev.position, "type": ev.event_type, "stream": ev.stream, "at": fmt_time(&ev.event_time),
            "actor": ev.actor, "customer": customer,
        });
        Ok(Event::default().id(ev.position.to_string()).data(line.to_string()))
    });
    let mut closing = web.closing.clone();
    let stream = stream.take_until(async move {
        let _ = closing.wait_for(|c| *c).await;
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
