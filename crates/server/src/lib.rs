//! Chronicle's HTTP API ([`http`]) over the application service (`chronicle-app`), and the
//! running system ([`application`]).
//!
//! This is the only crate that knows HTTP and the JSON shapes of the wire. [`serve`] runs the API
//! on a bound listener until a shutdown future resolves; [`application`] composes the whole
//! running system around it, the same for the binary and the tests.

pub mod application;
pub mod http;


use std::future::Future;

pub use http::serve::ServeOptions;

/// Serve the API on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    api: http::Api,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(api, listener, shutdown, ServeOptions::default()).await
}

/// [`serve`] with the listener's limits and options given.
pub async fn serve_with(
    api: http::Api,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let router = http::router_with(api, &options, closing_rx);
    http::serve::serve_router(router, listener, shutdown, options, closing).await
}
