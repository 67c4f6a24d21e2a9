//! Chronicle's read models, folded from the log: the customer 360 profile, the consent ledger
//! (current state and full history with source and proof), the deal pipeline, orders, the
//! unique-e-mail index, tenants and their keys, and per-customer snapshots for time travel.
//!
//! [`Projections::apply`] is the one fold; the live views, `rebuild` and `verify` all use it,
//! so a replay is the same function over the same events. The whole state serializes to a
//! checkpoint (with the position it reflects), so a restart resumes from there.

pub mod automation;
mod checkpoint;
pub mod contacts;
mod diff;
mod map;
pub mod retention;
mod views;

pub use checkpoint::{
    decode, encode, key_of, load_checkpoint, load_from, resume_from, save_checkpoint, save_to, sealed_key_name, CheckpointError,
    CheckpointFile, CheckpointPlace, CheckpointSeal, Saved,
};
pub use diff::diff;
pub use map::Map;
pub use views::*;
