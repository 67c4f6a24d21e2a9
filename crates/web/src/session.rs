//! Who is signed in. The browser holds the session token in a cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` under HTTPS); the app knows the session by the token's digest
//! (see `chronicle_app::app::people`). Forms carry an anti-forgery token derived from the
//! session token (SHA-256 of it under a label): a page of another site can neither read the
//! cookie nor compute the token, so a post without it is refused (403) before anything is read.

use crate::render::{self, Page};
use crate::Web;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chronicle_app::app::SignedIn;
use chronicle_projections::Role;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "chronicle_session";

/// The session token of a request's cookie, if any.
pub fn token(parts: &Parts) -> Option<String> {
    parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
    })
}

/// The anti-forgery token of the session whose token is `token`.
pub fn csrf_of(token: &str) -> String {
    let d = Sha256::digest(format!("chronicle-ui-form:{token}").as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The `Set-Cookie` value that starts a session.
pub fn cookie(token: &str, secure: bool) -> String {
    let secs = chronicle_app::app::SESSION_HOURS * 3600;
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={secs}{}", if secure { "; Secure" } else { "" })
}

/// The `Set-Cookie` value that ends one.
pub fn cleared(secure: bool) -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", if secure { "; Secure" } else { "" })
}

/// A signed-in viewer of a page: a page without one leads to the sign-in form.
pub struct Viewer {
    pub signed_in: SignedIn,
    pub token: String,
}

impl Viewer {
    pub fn tenant(&self) -> &str {
        &self.signed_in.session.tenant
    }
    pub fn actor(&self) -> &str {
        &self.signed_in.session.actor
    }
    pub fn can_write(&self) -> bool {
        self.signed_in.role >= Role::Writer
    }
    pub fn is_admin(&self) -> bool {
        self.signed_in.role >= Role::Admin
    }
    pub fn csrf(&self) -> String {
        csrf_of(&self.token)
    }
}

impl FromRequestParts<Web> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Response> {
        let found = token(parts).and_then(|t| Some(Viewer { signed_in: web.app.session(&t)?, token: t }));
        found.ok_or_else(|| {
            // Back to where they were going once signed in (a path of this UI only).
            let next = parts.uri.path_and_query().map_or("/ui/", |p| p.as_str());
            let next = if crate::is_ui_path(next) { next } else { "/ui/" };
            let q = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
            Redirect::to(&format!("/ui/sign-in?{q}")).into_response()
        })
    }
}

/// A form posted by a signed-in viewer whose role may change data (writer or admin), with its
/// anti-forgery token checked before the form is read.
pub struct Posted<T> {
    pub viewer: Viewer,
    pub form: T,
}

#[derive(serde::Deserialize)]
struct Csrf {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

impl<T: DeserializeOwned> FromRequest<Web> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, web: &Web) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let viewer = match Viewer::from_request_parts(&mut parts, web).await {
            Ok(v) => v,
            Err(_) => return Err(render::error(StatusCode::UNAUTHORIZED, "Your session has ended; sign in again.")),
        };
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map_err(|_| render::error(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
        let token: Csrf = serde_urlencoded::from_bytes(&bytes).unwrap_or(Csrf { csrf: String::new() });
        if token.csrf != viewer.csrf() {
            return Err(render::error(StatusCode::FORBIDDEN, "This form is out of date or did not come from Chronicle; reload the page and try again."));
        }
        if !viewer.can_write() {
            return Err(render::error(StatusCode::FORBIDDEN, "Your role may read, not change."));
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| render::error(StatusCode::BAD_REQUEST, &format!("The form is not complete: {e}")))?;
        Ok(Posted { viewer, form })
    }
}

/// What every page's layout needs of its viewer.
pub fn page_of(viewer: &Viewer, title: &str, nav: &str) -> Page {
    Page {
        title: title.to_owned(),
        nav: nav.to_owned(),
        tenant: viewer.tenant().to_owned(),
        name: viewer.signed_in.name.clone(),
        role: format!("{:?}", viewer.signed_in.role).to_lowercase(),
        can_write: viewer.can_write(),
        is_admin: viewer.is_admin(),
        csrf: viewer.csrf(),
    }
}
