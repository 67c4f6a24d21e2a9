//! Cross-origin requests to the ingest routes, for browser tracking (Segment's analytics.js
//! posts from the customer's web pages, another origin than Chronicle's): the origins allowed
//! are the instance's (`--cors-origin`, repeatable) and each tenant's own
//! (`PUT /v1/settings/cors`, recorded as `CorsOriginsSet` on the tenant's `_settings` stream).
//!
//! A preflight carries no write key, so it cannot name a tenant: an origin any tenant allows
//! is allowed. CORS only decides which pages may *read* the answers; the write key, not the
//! origin, is what lets events in (a page can always send a simple request).

use super::error::{ApiError, Body};
use axum::extract::State;
use axum::http::HeaderValue;
use axum::Json;
use chronicle_app::App;
use serde_json::json;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The layer of the ingest routes: `origins` (the instance's) or any tenant's.
pub fn layer(app: Arc<App>, origins: &[String]) -> CorsLayer {
    let instance: Arc<[String]> = origins.iter().map(|o| o.trim_end_matches('/').to_owned()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            let Ok(origin) = origin.to_str() else { return false };
            instance.iter().any(|o| o == origin) || app.views().tenants.values().any(|t| t.cors_origins.iter().any(|o| o == origin))
        }))
        .allow_methods([axum::http::Method::POST])
        .allow_headers([axum::http::header::CONTENT_TYPE, axum::http::header::AUTHORIZATION])
        .max_age(std::time::Duration::from_secs(600))
}

/// Why an origin is refused: it must be `scheme://host[:port]`, as a browser sends it (the
/// check of `--cors-origin` and of `PUT /v1/settings/cors` alike).
pub fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ', '*']) => Ok(()),
        _ => Err(format!("{origin:?} is not an origin (scheme://host[:port], no path)")),
    }
}

/// A tenant's allowed origins (the body of `PUT` and the answer of both routes).
#[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Origins {
    origins: Vec<String>,
}

/// `GET /v1/settings/cors`: the tenant's own allowed origins.
pub async fn get_origins(State(app): State<Arc<App>>, p: super::auth::Principal) -> Result<Json<Origins>, ApiError> {
    let origins = app.views().tenant(&p.tenant).map(|t| t.cors_origins.clone()).unwrap_or_default();
    Ok(Json(Origins { origins }))
}

/// `PUT /v1/settings/cors`: the list, checked whole, replaces the tenant's.
pub async fn set_origins(State(app): State<Arc<App>>, p: super::auth::Principal, Body(b): Body<Origins>) -> Result<Json<Origins>, ApiError> {
    // A trailing `/` (as an address bar shows it) is not part of an origin.
    let origins: Vec<String> = b.origins.iter().map(|o| o.trim_end_matches('/').to_owned()).collect();
    for o in &origins {
        check_origin(o).map_err(|e| ApiError::from(chronicle_app::error::AppError::BadRequest(e)))?;
    }
    super::webhooks::record_setting(&app, &p, "CorsOriginsSet", json!({"origins": origins})).await?;
    Ok(Json(Origins { origins }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for ok in ["https://shop.example.com", "http://127.0.0.1:8080", "http://localhost:3000"] {
            assert!(check_origin(ok).is_ok(), "{ok}");
        }
        for bad in ["shop.example.com", "https://", "https://shop.example.com/page", "*", "https://*.example.com", "ftp://x"] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}
