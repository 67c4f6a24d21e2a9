//! Analytics answers for a tenant: the events an answer needs, read from the log up to the
//! position it is known at, folded by `chronicle_analytics` (pure) off the async workers.

use crate::app::App;
use crate::error::AppError;
use chronicle_analytics::funnel::{FunnelAnswer, FunnelSpec, KnownAt};
use chronicle_analytics::Horizon;

/// Events read from the log per page while gathering an answer's input.
const PAGE: usize = 10_000;

impl App {
    /// A funnel over the tenant's events as of `spec.as_of` (default now), as known at
    /// `spec.known_at` (a log position or an instant of ingest time; default: everything now).
    pub async fn funnel(&self, tenant: &str, spec: &FunnelSpec) -> Result<FunnelAnswer, AppError> {
        spec.check().map_err(|e| AppError::BadRequest(e.0))?;
        crate::app::check_as_of(spec.as_of)?;
        let head = self.store().head().await?;
        let horizon = match spec.known_at {
            None => Horizon { as_of: spec.as_of.unwrap_or_else(|| self.now()), known_at: head, known_by: None },
            Some(KnownAt::Position(p)) => Horizon { as_of: spec.as_of.unwrap_or_else(|| self.now()), known_at: p.min(head), known_by: None },
            Some(KnownAt::Instant(t)) => Horizon { as_of: spec.as_of.unwrap_or_else(|| self.now()), known_at: head, known_by: Some(t) },
        };
        let mut events = Vec::new();
        let mut after = 0;
        while after < horizon.known_at {
            let page = self.events(tenant, after, PAGE).await?;
            if page.events.is_empty() || page.next <= after {
                break;
            }
            after = page.next;
            events.extend(page.events.into_iter().filter(|e| e.position <= horizon.known_at));
        }
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || chronicle_analytics::funnel::run(&spec, &events, horizon))
            .await
            .map_err(|e| AppError::internal("running a funnel", e))?
            .map_err(|e| AppError::BadRequest(e.0))
    }
}
