//! Chronicle's application service ([`app::App`]) and its HTTP API ([`http`]).
//!
//! This is the only crate that knows HTTP and JSON shapes of the wire. [`serve`] runs the API
//! on a bound listener until a shutdown future resolves; tests and the binary share it.

pub mod app;
pub mod application;
pub mod audit;
pub mod automation;
pub mod clock;
pub mod cloudevents;
pub mod error;
pub mod fuzzing;
pub mod http;
pub mod import;
pub mod ingest;
pub mod keys;
pub mod profile;
pub mod pseudonym;
pub mod retention;
pub mod maintenance;
pub mod sealing;

pub use app::App;
pub use error::AppError;

use std::future::Future;
use std::sync::Arc;

pub use http::serve::ServeOptions;

/// Serve the API on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(app, listener, shutdown, ServeOptions::default()).await
}

/// [`serve`] with the listener's limits and options given.
pub async fn serve_with(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let router = http::router_with(app, &options);
    http::serve::serve_router(router, listener, shutdown, options).await
}
