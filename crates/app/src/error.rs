//! The application's error type: what a command or query can fail with, independent of HTTP.
//! The HTTP layer maps it to a status and the JSON error shape in one place (`http::error`).

use chronicle_core::customer::CustomerError;
use chronicle_core::deal::DealError;
use chronicle_core::envelope::ExpectedVersion;
use chronicle_core::order::OrderError;
use chronicle_store::{AppendError, ReadError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("version conflict on stream {stream}: expected {expected:?}, actual {actual}")]
    VersionConflict { stream: String, expected: ExpectedVersion, actual: u64 },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// An event with this id is stored already (ids derive from causes: the effect was had).
    #[error("{0}")]
    IdReused(String),
    /// The customer was erased: nothing more is written for them.
    #[error("{0}")]
    Erased(String),
    /// The anonymous id is linked to another customer already (moving it would be a merge).
    #[error("this anonymous id is already linked to another customer")]
    IdentityLinkedElsewhere,
    /// A business rule refused the command.
    #[error("{message}")]
    Rule { code: &'static str, message: String },
    #[error("{0}")]
    TooLarge(String),
    /// A fault on Chronicle's side: what was being done, and its cause (kept as the source,
    /// logged once at the boundary; a client is told no detail).
    #[error("internal error: {context}")]
    Internal {
        context: String,
        #[source]
        cause: Cause,
    },
}

/// The cause of an internal error (shared: ingest reports one store failure for every message
/// of a batch).
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

impl AppError {
    /// An internal error: `context` says what was being done, `cause` why it failed.
    pub fn internal(context: impl Into<String>, cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> AppError {
        AppError::Internal { context: context.into(), cause: std::sync::Arc::from(cause.into()) }
    }

    /// The same error again (an internal one shares its cause).
    pub fn duplicate(&self) -> AppError {
        match self {
            AppError::BadRequest(m) => AppError::BadRequest(m.clone()),
            AppError::Unauthorized => AppError::Unauthorized,
            AppError::NotFound(w) => AppError::NotFound(w),
            AppError::VersionConflict { stream, expected, actual } => {
                AppError::VersionConflict { stream: stream.clone(), expected: *expected, actual: *actual }
            }
            AppError::Conflict { code, message } => AppError::Conflict { code, message: message.clone() },
            AppError::Rule { code, message } => AppError::Rule { code, message: message.clone() },
            AppError::TooLarge(m) => AppError::TooLarge(m.clone()),
            AppError::IdReused(m) => AppError::IdReused(m.clone()),
            AppError::Erased(m) => AppError::Erased(m.clone()),
            AppError::IdentityLinkedElsewhere => AppError::IdentityLinkedElsewhere,
            AppError::Internal { context, cause } => AppError::Internal { context: context.clone(), cause: cause.clone() },
        }
    }
}

impl AppError {
    /// The error's machine-readable code: the `code` of the HTTP error shape, and what ingest
    /// and import report for a refused message or line.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::Unauthorized => "unauthorized",
            AppError::NotFound(_) => "not_found",
            AppError::VersionConflict { .. } => "version_conflict",
            AppError::Conflict { code, .. } | AppError::Rule { code, .. } => code,
            AppError::TooLarge(_) => "too_large",
            AppError::IdReused(_) => "event_id_reused",
            AppError::Erased(_) => "customer_erased",
            AppError::IdentityLinkedElsewhere => "identity_linked_elsewhere",
            AppError::Internal { .. } => "internal",
        }
    }
}

impl From<CustomerError> for AppError {
    fn from(e: CustomerError) -> Self {
        use CustomerError as E;
        let message = e.to_string();
        match e {
            E::NotFound => AppError::NotFound("customer"),
            E::AlreadyExists => AppError::Conflict { code: "customer_exists", message },
            E::EmailTaken => AppError::Conflict { code: "email_taken", message },
            E::InvalidEmail | E::InvalidPhone | E::Empty(_) | E::InvalidTrait(_) => AppError::BadRequest(message),
            E::Erased => AppError::Erased(message),
            E::Merged { .. } => AppError::Rule { code: "customer_merged", message },
            E::InvalidMerge(_) => AppError::Rule { code: "invalid_merge", message },
            E::Deactivated => AppError::Rule { code: "customer_deactivated", message },
            E::ConsentSourceMissing => AppError::Rule { code: "consent_source_missing", message },
            E::InvalidStageTransition { .. } => AppError::Rule { code: "invalid_stage_transition", message },
        }
    }
}

impl From<DealError> for AppError {
    fn from(e: DealError) -> Self {
        use DealError as E;
        let message = e.to_string();
        match e {
            E::NotFound => AppError::NotFound("deal"),
            E::AlreadyExists => AppError::Conflict { code: "deal_exists", message },
            E::Closed(_) => AppError::Rule { code: "deal_closed", message },
            E::WonWithoutAmount => AppError::Rule { code: "deal_amount_missing", message },
            E::UnknownStage(_) | E::NegativeAmount | E::Empty(_) => AppError::BadRequest(message),
        }
    }
}

impl From<OrderError> for AppError {
    fn from(e: OrderError) -> Self {
        let message = e.to_string();
        match e {
            OrderError::NotFound => AppError::NotFound("order"),
            OrderError::AlreadyPlaced => AppError::Conflict { code: "order_exists", message },
            OrderError::InvalidTransition { .. } => AppError::Rule { code: "invalid_order_transition", message },
            OrderError::RefundTooLarge { .. } => AppError::Rule { code: "refund_too_large", message },
            OrderError::NonPositiveAmount => AppError::BadRequest(message),
        }
    }
}

impl From<AppendError> for AppError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { stream, expected, actual } => {
                AppError::VersionConflict { stream, expected, actual }
            }
            AppendError::IdReused { .. } => AppError::IdReused(e.to_string()),
            AppendError::Invalid(m) => AppError::BadRequest(m),
            e @ AppendError::Storage(_) => AppError::internal("writing to the event store", e),
        }
    }
}

impl From<ReadError> for AppError {
    fn from(e: ReadError) -> Self {
        AppError::internal("reading the event store", e)
    }
}
