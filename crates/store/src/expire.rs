//! Retention at the storage level: replacing expired events with *tombstones*, offline (the
//! caller holds the data folder's lock, so no store is open on it).
//!
//! A tombstone keeps what the log's invariants and idempotency need — position, id, tenant,
//! stream, version, event and ingest time, source — and loses the rest: its type becomes
//! [`EXPIRED_TYPE`], its data `{"type": <the expired type>}`, and causation, correlation, actor
//! and metadata go. So positions stay gap-free, stream versions stay 1, 2, 3…, and a producer
//! redelivering an expired event (same id) is still told it is stored instead of writing it
//! again. The record of the compaction (`records`) is appended in the same atomic step: either
//! the tombstones and their record are on disk, or neither is.
//!
//! Each backend implements it over its own files ([`LogStore::expire`](crate::log::LogStore::expire),
//! [`SqliteStore::expire`](crate::sqlite::SqliteStore::expire)).

use chronicle_core::envelope::NewEvent;
use std::path::PathBuf;

pub use chronicle_core::envelope::EXPIRED_TYPE;

/// The data of a tombstone for an event of `expired_type`.
pub fn tombstone_data(expired_type: &str) -> serde_json::Value {
    serde_json::json!({ "type": expired_type })
}

/// What to expire, and what to append as the record of it.
pub struct Expiry<'a> {
    /// Positions of the events to replace by tombstones, ascending, no duplicates. A position
    /// that already holds a tombstone is left as it is.
    pub positions: &'a [u64],
    /// Appended after the tombstones, atomically with them: `(tenant, stream, event)`, each
    /// event's id new to the store.
    pub records: Vec<(String, String, NewEvent)>,
}

/// What an expiry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Events replaced by a tombstone now (tombstones already there are not counted).
    pub expired: u64,
    /// The position of the last record appended (the head after the expiry).
    pub head: u64,
    /// The store's size before and after, in bytes.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    /// The request does not fit the store (positions out of order or beyond the head, a
    /// record's id already stored); nothing was changed.
    #[error("invalid expiry: {0}")]
    Invalid(String),
    /// Reading or writing the store failed; the store is as it was before (the old files are
    /// replaced only by a complete, synced new one).
    #[error("expiring events in {path} failed: {reason}")]
    Failed { path: PathBuf, reason: String },
}

/// Checks the positions are ascending without duplicates.
pub(crate) fn check_positions(positions: &[u64]) -> Result<(), ExpireError> {
    if positions.first() == Some(&0) {
        return Err(ExpireError::Invalid("position 0 does not exist".into()));
    }
    match positions.windows(2).find(|w| w[0] >= w[1]) {
        Some(w) => Err(ExpireError::Invalid(format!("positions must ascend: {} then {}", w[0], w[1]))),
        None => Ok(()),
    }
}
