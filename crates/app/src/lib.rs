//! Chronicle's application service: everything Chronicle does, with no HTTP server in it.
//!
//! [`App`] runs commands through the pure domain and the store, keeps the read models current in
//! the commit path and answers queries; [`ingest`] and [`import`] turn Segment, CloudEvents and
//! import lines into commands; [`audit`], [`retention`] and [`sealing`] carry the privacy duties;
//! [`automation`] is the campaign engine. The HTTP layer (`chronicle-server`) and the binary drive
//! Chronicle through these; nothing here knows a route, a status code or a header.

pub mod analytics;
pub mod app;
pub mod audit;
pub mod automation;
pub mod clock;
pub mod cloudevents;
pub mod error;
pub mod fuzzing;
pub mod import;
pub mod ingest;
pub mod keys;
pub mod maintenance;
pub mod profile;
pub mod pseudonym;
pub mod retention;
pub mod sealing;
pub mod storage;
pub mod targets;
pub mod telemetry;

pub use app::App;
pub use error::AppError;
