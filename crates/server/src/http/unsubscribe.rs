//! The one-click unsubscribe route of marketing mail (RFC 8058; see
//! `chronicle_app::automation::unsubscribe`): `POST /v1/unsubscribe?t=TOKEN` revokes the
//! customer's e-mail marketing consent (a mail client's one-click `List-Unsubscribe=One-Click`,
//! or the confirmation form); `GET` only shows that form, since link scanners fetch links.
//! The signed token is the authority: no key is needed.

use super::error::{ApiError, Params};
use axum::extract::State;
use axum::response::Html;
use chronicle_app::automation::{unsubscribe, Engine};
use chronicle_app::error::AppError;
use chronicle_app::App;
use std::sync::Arc;

#[derive(serde::Deserialize)]
pub struct Token {
    t: String,
}

fn claim(engine: &Engine, token: &str) -> Result<unsubscribe::Claim, ApiError> {
    let links = engine
        .unsubscribe_links()
        .ok_or_else(|| ApiError::from(AppError::NotFound("unsubscribe links (no --public-url)")))?;
    links.verify(token).map_err(|e| ApiError::from(AppError::BadRequest(e.to_string())))
}

fn page(body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>Unsubscribe</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">{body}</body></html>"
    ))
}

/// `GET /v1/unsubscribe?t=`: a confirmation form (nothing changes).
pub async fn confirm(State(engine): State<Arc<Engine>>, Params(q): Params<Token>) -> Result<Html<String>, ApiError> {
    claim(&engine, &q.t)?;
    // The token is base64url and '.', safe in an attribute as it is.
    Ok(page(&format!(
        "<h1>Unsubscribe</h1><p>Stop receiving marketing e-mail from us?</p>\
         <form method=\"post\" action=\"/v1/unsubscribe?t={}\"><button name=\"confirm\" value=\"1\">Unsubscribe</button></form>",
        q.t
    )))
}

/// `POST /v1/unsubscribe?t=`: revokes e-mail marketing consent, with the message as proof.
pub async fn unsubscribe(
    State(app): State<Arc<App>>,
    State(engine): State<Arc<Engine>>,
    Params(q): Params<Token>,
    body: axum::body::Bytes,
) -> Result<Html<String>, ApiError> {
    let claim = claim(&engine, &q.t)?;
    if !app.tenant_names().contains(&claim.tenant) {
        return Err(AppError::NotFound("tenant").into());
    }
    let one_click = body.as_ref() == b"List-Unsubscribe=One-Click";
    unsubscribe::apply(&app, &claim, one_click).await?;
    Ok(page("<h1>Unsubscribed</h1><p>You will receive no more marketing e-mail from us.</p>"))
}
