//! Marketing automation, pure (no I/O, no clock: time comes in as an argument):
//! - [`campaign`]: a campaign's definition, checked whole and compiled into a flat program;
//! - [`events`]: the events automation records (definitions, enrolments, steps, messages) and
//!   the derived ids that make each of them happen once;
//! - [`decision`]: the send decision (status, consent, channel preference, quiet hours, cap);
//! - [`template`]: rendering a message from a template and the customer's profile;
//! - [`segment`]: a segment's definition, checked whole, and whether a customer is in it.
//!
//! The engine that runs campaigns against the live log lives in the server; the read model of
//! enrolments, timers and the outbox in the projections.

pub mod campaign;
pub mod decision;
pub mod events;
pub mod segment;
pub mod template;

pub use campaign::{Campaign, CampaignError, Op};
pub use events::{derive_id, AutomationEvent};
