//! The one place where errors become HTTP: status, and the body `{"error": {"code", "message"}}`;
//! plus extractors whose rejections (bad JSON, bad query, too large) take the same shape.

use super::codes::Code;
use chronicle_app::error::AppError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    /// An error of the table ([`super::codes`]): its code and status come from there.
    pub fn of(code: Code, message: impl Into<String>) -> Self {
        ApiError { status: code.status(), code: code.as_str(), message: message.into(), extra: None }
    }

    /// An error whose code the application or the domain names (a business rule's, a
    /// conflict's, an invalid message's), with the status of its class in the table.
    pub fn named(class: Code, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: class.status(), code, message: message.into(), extra: None }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let (message, code) = (e.to_string(), e.code());
        let class = match &e {
            AppError::BadRequest(_) => Code::BadRequest,
            AppError::Unauthorized => Code::Unauthorized,
            AppError::NotFound(_) => Code::NotFound,
            AppError::VersionConflict { .. } => Code::VersionConflict,
            AppError::Conflict { .. } | AppError::IdReused(_) | AppError::IdentityLinkedElsewhere => Code::Conflict,
            AppError::Erased(_) => Code::Rule,
            AppError::Rule { .. } => Code::Rule,
            AppError::TooLarge(_) => Code::TooLarge,
            AppError::Internal { .. } => {
                // Logged once, here at the boundary, with its causes; the client gets no detail.
                tracing::error!(error = &e as &dyn std::error::Error, "internal error");
                return ApiError::of(Code::Internal, "internal error; see the server log");
            }
        };
        let extra = match e {
            AppError::VersionConflict { actual, .. } => Some(json!({"actual_version": actual})),
            _ => None,
        };
        ApiError { extra, ..ApiError::named(class, code, message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A rate-limited answer says when to come back, as a header too.
        let retry_after = self.extra.as_ref().and_then(|e| e.get("retry_after_seconds")).and_then(|v| v.as_u64());
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (self.extra, error.as_object_mut()) {
            obj.extend(extra);
        }
        let mut res = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(s) = retry_after {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        res
    }
}

/// A JSON body; malformed, mistyped or oversized bodies become our error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::of(Code::TooLarge, r.body_text());
    }
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::of(Code::UnsupportedMediaType, r.body_text()),
        _ => ApiError::of(Code::BadRequest, r.body_text()),
    }
}

/// Query parameters; bad ones become our error shape.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Params(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::of(Code::BadRequest, r.body_text())
}

/// An optional JSON body: absent or empty is `None`; present but malformed is a 400.
pub struct OptBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            ApiError::of(if r.status() == StatusCode::PAYLOAD_TOO_LARGE { Code::TooLarge } else { Code::BadRequest }, r.body_text())
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptBody(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptBody(Some(v)))
            .map_err(|e| ApiError::of(Code::BadRequest, format!("invalid JSON body: {e}")))
    }
}

/// A `429 rate_limited` answer with `Retry-After`.
pub(crate) fn rate_limited(wait: u64, message: &str) -> ApiError {
    let mut e = ApiError::of(Code::RateLimited, format!("{message}; retry in {wait} s"));
    e.extra = Some(serde_json::json!({"retry_after_seconds": wait}));
    e
}

/// A page size: 100 unless given, between 1 and 1,000.
pub(crate) fn clamp_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(100).clamp(1, 1000)
}
