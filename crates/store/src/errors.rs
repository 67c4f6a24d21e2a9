//! What an append reports, and what an append or a read can fail with.

use chronicle_core::envelope::ExpectedVersion;

/// What a successful append reports. For an idempotent replay (all ids already stored) it is
/// the original append's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub first_version: u64,
    pub last_version: u64,
    /// Global position of the last event of the batch.
    pub position: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// The stream is not at the expected version; `actual` is its version now (0 = no stream).
    #[error("version conflict on stream {stream}: expected {expected:?}, actual {actual}")]
    Conflict { stream: String, expected: ExpectedVersion, actual: u64 },
    /// Some, but not all, of the batch's event ids are already stored, or an id is stored on
    /// another stream: the batch is neither new nor a replay of an earlier one.
    #[error("event id {id} is already stored {detail}")]
    IdReused { id: uuid::Uuid, detail: String },
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage failure: {0}")]
    Storage(String),
}
