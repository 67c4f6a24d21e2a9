//! The one error table: every error code the HTTP layer answers with, once, with its status and
//! what it means. The JSON shape is `{"error": {"code", "message"}}` (see `error`).
//!
//! Refusals that come from the application carry their own codes (a business rule's, as
//! `invalid_stage_transition` or `email_taken`; a conflict's, as `event_id_reused`; an invalid
//! Segment message's, as `bad_timestamp`): those are typed in the domain and in `AppError`, and
//! take the status of their class here ([`Code::Rule`] 422, [`Code::Conflict`] 409,
//! [`Code::BadRequest`] 400).

use axum::http::StatusCode;

/// An error code of the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    UnsupportedMediaType,
    UnsupportedEncoding,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    VersionConflict,
    Conflict,
    Rule,
    ReservedStream,
    ReservedType,
    TooLarge,
    MessageTooLarge,
    BatchTooLarge,
    BodyTimeout,
    RateLimited,
    Timeout,
    TooManyConnections,
    Internal,
}

/// (code, its `code` string, status, what it means)
pub const TABLE: &[(Code, &str, StatusCode, &str)] = &[
    (Code::BadRequest, "bad_request", StatusCode::BAD_REQUEST, "the request is malformed or fails validation; nothing was written"),
    (Code::UnsupportedMediaType, "unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body's content type is not one the route takes"),
    (Code::UnsupportedEncoding, "unsupported_encoding", StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body's Content-Encoding is neither gzip nor none"),
    (Code::Unauthorized, "unauthorized", StatusCode::UNAUTHORIZED, "no key, or an unknown or revoked one"),
    (Code::Forbidden, "forbidden", StatusCode::FORBIDDEN, "the key's kind or role may not do this"),
    (Code::NotFound, "not_found", StatusCode::NOT_FOUND, "no such resource in the caller's tenant"),
    (Code::MethodNotAllowed, "method_not_allowed", StatusCode::METHOD_NOT_ALLOWED, "the route exists, but not with this method"),
    (Code::VersionConflict, "version_conflict", StatusCode::CONFLICT, "the stream is not at the expected version"),
    (Code::Conflict, "conflict", StatusCode::CONFLICT, "the class of conflicts the application names (event_id_reused, identity_linked_elsewhere, …)"),
    (Code::Rule, "rule", StatusCode::UNPROCESSABLE_ENTITY, "the class of business-rule refusals the domain names (invalid_stage_transition, email_taken, …)"),
    (Code::ReservedStream, "reserved_stream", StatusCode::UNPROCESSABLE_ENTITY, "the stream is written by Chronicle's commands, not raw appends"),
    (Code::ReservedType, "reserved_type", StatusCode::UNPROCESSABLE_ENTITY, "the event type is written only by Chronicle's own commands"),
    (Code::TooLarge, "too_large", StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MiB"),
    (Code::MessageTooLarge, "message_too_large", StatusCode::BAD_REQUEST, "a Segment message is over 32 KB"),
    (Code::BatchTooLarge, "batch_too_large", StatusCode::BAD_REQUEST, "a Segment batch is over 500 KB"),
    (Code::BodyTimeout, "body_timeout", StatusCode::REQUEST_TIMEOUT, "the body did not arrive within 10 s"),
    (Code::RateLimited, "rate_limited", StatusCode::TOO_MANY_REQUESTS, "the key's or address's budget is spent; see Retry-After"),
    (Code::Timeout, "timeout", StatusCode::SERVICE_UNAVAILABLE, "the request took over 30 s; it may or may not have taken effect"),
    (Code::TooManyConnections, "too_many_connections", StatusCode::SERVICE_UNAVAILABLE, "the server has too many open connections"),
    (Code::Internal, "internal", StatusCode::INTERNAL_SERVER_ERROR, "a fault on the server's side; the log has the cause"),
];

impl Code {
    fn row(self) -> &'static (Code, &'static str, StatusCode, &'static str) {
        TABLE.iter().find(|r| r.0 == self).expect("every code is in the table")
    }

    /// The `code` string of the JSON body.
    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        self.row().2
    }

    /// The code of a bare status (an answer made below the handlers, such as a path
    /// extractor's rejection, is given the JSON shape with it).
    pub fn for_status(status: StatusCode) -> Code {
        match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
            StatusCode::UNAUTHORIZED => Code::Unauthorized,
            StatusCode::FORBIDDEN => Code::Forbidden,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
            StatusCode::CONFLICT => Code::Conflict,
            StatusCode::UNPROCESSABLE_ENTITY => Code::Rule,
            StatusCode::PAYLOAD_TOO_LARGE => Code::TooLarge,
            StatusCode::REQUEST_TIMEOUT => Code::BodyTimeout,
            StatusCode::TOO_MANY_REQUESTS => Code::RateLimited,
            StatusCode::SERVICE_UNAVAILABLE => Code::Timeout,
            s if s.is_server_error() => Code::Internal,
            _ => Code::BadRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_in_the_table_once() {
        let mut seen = std::collections::HashSet::new();
        for (code, text, _, _) in TABLE {
            assert!(seen.insert(*text), "{text} twice");
            assert_eq!(code.as_str(), *text);
        }
        assert_eq!(Code::RateLimited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(Code::ReservedType.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
