//! The UI's own CSS and JavaScript, embedded in the binary and served under a name carrying a
//! hash of their content (`app.3f2a….css`), so a browser keeps them for a year and a new build
//! is fetched at once.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const FILES: &[(&str, &str, &str)] = &[
    ("app.css", "text/css; charset=utf-8", include_str!("../assets/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../assets/app.js")),
];

/// Each file's name with its hash: (hashed name, media type, content).
static HASHED: LazyLock<Vec<(String, &'static str, &'static str)>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(name, kind, body)| {
            let hash: String = Sha256::digest(body.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
            let (stem, ext) = name.rsplit_once('.').expect("asset names have an extension");
            (format!("{stem}.{hash}.{ext}"), *kind, *body)
        })
        .collect()
});

/// The URL of an asset, by its plain name.
pub fn url(name: &str) -> String {
    let i = FILES.iter().position(|(n, _, _)| *n == name).expect("a known asset");
    format!("/ui/assets/{}", HASHED[i].0)
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match HASHED.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => {
            ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], *body).into_response()
        }
        // A plain page (this module needs nothing of the templates).
        None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], "<!doctype html><title>Not found</title><p>No such file.")
            .into_response(),
    }
}
