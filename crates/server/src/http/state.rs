//! What the handlers work on: the application and the engine (their `State`), and the server's
//! options they read.

use chronicle_app::automation::Engine;
use chronicle_app::App;
use std::sync::Arc;

/// What the handlers work on: the application, and the automation engine beside it (parked
/// reactions, retries, its gate and provider keys). A handler takes either as its `State`.
#[derive(Clone)]
pub struct Api {
    pub app: Arc<App>,
    pub engine: Arc<Engine>,
}

impl axum::extract::FromRef<Api> for Arc<App> {
    fn from_ref(api: &Api) -> Self {
        api.app.clone()
    }
}

impl axum::extract::FromRef<Api> for Arc<Engine> {
    fn from_ref(api: &Api) -> Self {
        api.engine.clone()
    }
}

/// What the handlers need to know of how the server was started.
#[derive(Clone)]
pub(crate) struct Options {
    pub metrics_token: Option<Arc<str>>,
    /// Turns true when the server begins to stop: responses that never end on their own (the
    /// live event stream) end then, so a shutdown does not wait on its clients.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

