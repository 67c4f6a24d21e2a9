//! Chronicle's web UI, served by the same binary under `/ui/` (`/` leads there): server-rendered
//! HTML (minijinja templates, HTML-escaped), the project's own small JavaScript and CSS embedded
//! in the binary and cached by content hash, and nothing to build but Rust.
//!
//! The UI is another client of the application service: every page reads the views the API
//! reads, and every action runs the command the API runs (so the timeline shows it at once), as
//! the signed-in person (`user:<e-mail>` on the events and on the audit trail).
//!
//! - `session`: who is signed in (a cookie holding a session token; sessions are events, so
//!   every node honours them), the anti-forgery token of forms, roles.
//! - `pages`: sign-in, the contact list (bulk actions, CSV) and the customer 360 with its actions.
//! - `board`: the pipeline board. `campaigns`: campaigns and dead letters. `live`: the activity
//!   view over server-sent events. `admin`: people, API keys and the audit trail.
//! - `assets`: the embedded CSS and JavaScript.
//! - `render`: the templates, error pages, and the security headers every page carries.
//! - `text`: how values read on a page (names, instants, money, URL parts).

mod admin;
mod analytics;
mod assets;
mod board;
mod campaigns;
mod live;
mod pages;
mod render;
mod session;
mod text;

use axum::routing::{get, post};
use axum::Router;
use chronicle_app::App;
use std::sync::Arc;

/// What the UI's handlers share.
#[derive(Clone)]
pub struct Web {
    pub app: Arc<App>,
    /// The automation engine (dead-letter retries).
    pub engine: Arc<chronicle_app::automation::Engine>,
    /// Whether the session cookie is marked `Secure` (the server serves HTTPS itself, or sits
    /// behind a proxy that does: `--public-url https://…`).
    pub secure_cookies: bool,
    /// Turns true when the server begins to stop: the live view's stream ends then.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// The UI's routes, for the server to merge into its router (under its request layer: body
/// limits, read-your-writes across nodes, metrics).
pub fn router<S: Clone + Send + Sync + 'static>(web: Web) -> Router<S> {
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/ui/") }))
        .route("/ui", get(|| async { axum::response::Redirect::to("/ui/") }))
        .route("/ui/", get(pages::home))
        .route("/ui/sign-in", get(pages::sign_in_page).post(pages::sign_in))
        .route("/ui/sign-in/key", post(pages::sign_in_key))
        .route("/ui/sign-out", post(pages::sign_out))
        .route("/ui/contacts", get(pages::contacts))
        .route("/ui/contacts.csv", get(pages::contacts_csv))
        .route("/ui/contacts/bulk", post(pages::contacts_bulk))
        .route("/ui/customers/{id}", get(pages::customer))
        .route("/ui/customers/{id}/traits", post(pages::set_trait))
        .route("/ui/customers/{id}/notes", post(pages::add_note))
        .route("/ui/customers/{id}/tags", post(pages::add_tag))
        .route("/ui/customers/{id}/untag", post(pages::remove_tag))
        .route("/ui/customers/{id}/owner", post(pages::assign_owner))
        .route("/ui/customers/{id}/consents", post(pages::set_consent))
        .route("/ui/customers/{id}/status", post(pages::set_status))
        .route("/ui/customers/{id}/export", get(pages::export))
        .route("/ui/customers/{id}/erase", post(pages::erase))
        .route("/ui/pipeline", get(board::board))
        .route("/ui/analytics", get(analytics::page))
        .route("/ui/deals/{id}/move", post(board::move_deal))
        .route("/ui/campaigns", get(campaigns::list))
        .route("/ui/campaigns/{name}", get(campaigns::one))
        .route("/ui/dead-letters", get(campaigns::dead_letters))
        .route("/ui/dead-letters/{id}/retry", post(campaigns::retry))
        .route("/ui/live", get(live::page))
        .route("/ui/live/events", get(live::events))
        .route("/ui/admin/people", get(admin::people).post(admin::invite))
        .route("/ui/admin/people/{id}", post(admin::person))
        .route("/ui/admin/keys", get(admin::keys).post(admin::make_key))
        .route("/ui/admin/keys/{id}/revoke", post(admin::revoke_key))
        .route("/ui/admin/audit", get(admin::audit))
        .route("/ui/assets/{name}", get(assets::serve))
        .layer(axum::middleware::map_response(render::security_headers))
        .with_state(web)
}

/// Whether a path is the UI's (its errors are pages, not the API's JSON).
pub fn is_ui_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}
