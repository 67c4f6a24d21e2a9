//! Who is calling: the request's Bearer key authenticated once per request (by the request
//! layer; its result rides on the request as [`Authenticated`]), and the [`Principal`] extractor
//! that checks the key's kind, the role its route requires and the key's rate budget.

use super::codes::Code;
use super::error::ApiError;
use super::route::RequiredRole;
use super::state::Api;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chronicle_app::App;
use chronicle_projections::{KeyKind, Role};

/// What the request's `Authorization: Bearer` key is — its record and the actor it is recorded
/// as — authenticated once per request by the request layer; `None` without such a key or for
/// an unknown or revoked one.
#[derive(Clone, Debug)]
pub(crate) struct Authenticated(pub Option<(chronicle_projections::KeyRecord, String)>);

/// The bearer key of `headers`, if any.
fn bearer_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

pub(crate) fn authenticate_bearer(app: &App, headers: &axum::http::HeaderMap) -> Authenticated {
    Authenticated(bearer_key(headers).and_then(|k| Some((app.authenticate(k)?, format!("key:{}", &chronicle_app::keys::digest(k)[..12])))))
}

impl Authenticated {
    /// The request's authentication, from the request layer (or done now, when the layer did
    /// not run).
    pub(crate) fn of(app: &App, extensions: &axum::http::Extensions, headers: &axum::http::HeaderMap) -> Authenticated {
        extensions.get::<Authenticated>().cloned().unwrap_or_else(|| authenticate_bearer(app, headers))
    }
}

/// The caller, authenticated by `Authorization: Bearer <api_key>`.
pub struct Principal {
    pub tenant: String,
    /// Recorded on the events the caller causes: `key:` and a prefix of the key's digest.
    pub actor: String,
}

impl FromRequestParts<Api> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let app = &api.app;
        let unauthorized = |m: &str| ApiError::of(Code::Unauthorized, m);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <api_key>"))?;
        header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("expected Authorization: Bearer <api_key>"))?;
        let (rec, actor) = match Authenticated::of(app, &parts.extensions, &parts.headers).0 {
            Some((rec, actor)) if rec.kind == KeyKind::Api => (rec, actor),
            Some(_) => {
                return Err(ApiError::of(Code::Forbidden, "a write key may only ingest; use an API key"))
            }
            None => return Err(unauthorized("unknown or revoked API key")),
        };
        let needed = parts.extensions.get::<RequiredRole>().map_or(Role::Admin, |r| r.0);
        if rec.role == Role::Ingest || rec.role < needed {
            let msg = format!("this key's role ({:?}) may not do this; it needs {:?}", rec.role, needed).to_lowercase();
            return Err(ApiError::of(Code::Forbidden, msg));
        }
        if let Err(wait) = app.rate_check(&actor) {
            let mut e = ApiError::of(Code::RateLimited, format!("too many requests for this key; retry in {wait} s"));
            e.extra = Some(serde_json::json!({"retry_after_seconds": wait}));
            return Err(e);
        }
        Ok(Principal { tenant: rec.tenant, actor })
    }
}

