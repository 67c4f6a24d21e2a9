//! The event store contract: one trait every backend implements, the errors an append can
//! return, and the live subscription built on top of any backend.
//!
//! Backends: [`log::LogStore`] (the embedded default: an append-only log in a data folder),
//! [`postgres::PgStore`] (the server backend, shared by many nodes), [`sqlite::SqliteStore`]
//! (embedded, the earlier default: a folder that holds `events.sqlite` keeps it) and [`memory::MemoryStore`] (the reference model, used by
//! property tests). [`contract`] holds the suite that pins the behaviour; every backend runs it.

pub mod contract;
pub mod log;
pub mod memory;
pub mod postgres;
pub mod expire;
mod rules;
pub mod sqlite;
mod subscription;
mod errors;
mod event_store;

pub use event_store::*;
pub use subscription::Subscription;
