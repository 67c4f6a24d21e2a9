//! The templates (compiled once, HTML-escaped: a trait whose value is `<script>` shows as text)
//! and the headers every UI answer carries: a Content-Security-Policy that runs only the app's
//! own scripts and styles, no framing, no sniffing, and pages never cached.

use axum::http::{header, HeaderValue, StatusCode};
use chronicle_app::error::AppError;
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;
use std::sync::LazyLock;

/// What the layout shows of the signed-in viewer.
#[derive(Serialize, Default)]
pub struct Page {
    pub title: String,
    /// The navigation entry to mark as current.
    pub nav: String,
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub can_write: bool,
    pub is_admin: bool,
    pub csrf: String,
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("sign_in.html", include_str!("../templates/sign_in.html")),
        ("contacts.html", include_str!("../templates/contacts.html")),
        ("contact_rows.html", include_str!("../templates/contact_rows.html")),
        ("customer.html", include_str!("../templates/customer.html")),
        ("error.html", include_str!("../templates/error.html")),
        ("pipeline.html", include_str!("../templates/pipeline.html")),
        ("campaigns.html", include_str!("../templates/campaigns.html")),
        ("campaign.html", include_str!("../templates/campaign.html")),
        ("dead_letters.html", include_str!("../templates/dead_letters.html")),
        ("live.html", include_str!("../templates/live.html")),
        ("admin_nav.html", include_str!("../templates/admin_nav.html")),
        ("people.html", include_str!("../templates/people.html")),
        ("keys.html", include_str!("../templates/keys.html")),
        ("audit.html", include_str!("../templates/audit.html")),
        ("analytics.html", include_str!("../templates/analytics.html")),
    ] {
        env.add_template(name, source).expect("the UI's templates parse");
    }
    env.add_global("css", crate::assets::url("app.css"));
    env.add_global("js", crate::assets::url("app.js"));
    env
});

/// A template rendered into a page (a template error is a bug: logged, answered 500).
pub fn render(name: &str, ctx: impl Serialize) -> Response {
    match TEMPLATES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "a UI template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("<!doctype html><title>Error</title><p>This page could not be shown.")).into_response()
        }
    }
}

/// An error page.
pub fn error(status: StatusCode, message: &str) -> Response {
    let page = Page { title: status.canonical_reason().unwrap_or("Error").to_owned(), ..Page::default() };
    let mut res = render("error.html", minijinja::context! { page, message, status => status.as_u16() });
    *res.status_mut() = status;
    res
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// An application error as a page.
pub(crate) fn app_error(e: AppError) -> Response {
    let status = match &e {
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::BadRequest(_) | AppError::Rule { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        AppError::Conflict { .. } | AppError::VersionConflict { .. } | AppError::Erased(_) => StatusCode::CONFLICT,
        AppError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "a UI action failed");
        return error(status, "Something went wrong; it has been logged.");
    }
    error(status, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_escapes() {
        let names: Vec<&str> = TEMPLATES.templates().map(|(n, _)| n).collect();
        assert!(names.len() >= 15, "{names:?}");
        let page = Page { title: "<b>".into(), tenant: "t".into(), ..Page::default() };
        let res = TEMPLATES.get_template("error.html").unwrap().render(minijinja::context! { page, message => "<script>x</script>" }).unwrap();
        assert!(res.contains("&lt;script&gt;x&lt;&#x2f;script&gt;") && !res.contains("<script>x"), "{res}");
    }
}
