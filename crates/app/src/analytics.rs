//! Analytics answers for a tenant, folded by `chronicle_analytics` (pure) over the tenant's
//! analytics index (kept by `app::indexes`: caught up with the log before each answer, so an
//! answer reflects every event appended before it was asked; erasures reach it as events), off
//! the async workers.

use crate::app::App;
use crate::error::AppError;
use chronicle_analytics::funnel::{FunnelAnswer, FunnelSpec, KnownAt};
use chronicle_analytics::index::Index;
use chronicle_analytics::rfm::RfmPage;
use chronicle_analytics::Horizon;
use chrono::{DateTime, Utc};
use tokio::sync::OwnedMutexGuard;

/// What an RFM page asks: the horizon, a group, a cursor and a size.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RfmQuery {
    pub as_of: Option<DateTime<Utc>>,
    /// A log position or an RFC 3339 instant of ingest time.
    pub known_at: Option<String>,
    pub group: Option<String>,
    pub after: Option<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

/// What pipeline analytics asks: the horizon and the days after which a deal is stuck
/// (default 30).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineQuery {
    pub as_of: Option<DateTime<Utc>>,
    pub known_at: Option<String>,
    pub stuck_days: Option<u32>,
}

/// What a cohort answer asks: the horizon, the period (`week` | `month`, default month), the
/// conversion event (default `Order Completed`) and which occurrence of it converts (default
/// 1), the columns (default 12).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CohortQuery {
    pub as_of: Option<DateTime<Utc>>,
    pub known_at: Option<String>,
    pub period: Option<chronicle_analytics::cohorts::Period>,
    pub event: Option<String>,
    pub occurrence: Option<u32>,
    pub periods: Option<u32>,
}

/// What re-engagement asks: the horizon, how engaged (default 5 tracked events), how silent
/// (default 30 days), how many to list (default 100).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReengagementQuery {
    pub as_of: Option<DateTime<Utc>>,
    pub known_at: Option<String>,
    pub min_events: Option<u64>,
    pub silent_days: Option<u32>,
    pub limit: Option<usize>,
}

fn default_limit() -> usize {
    100
}

impl App {
    /// The tenant's analytics index, caught up with the log's head.
    pub async fn analytics_index(&self, tenant: &str) -> Result<OwnedMutexGuard<Index>, AppError> {
        self.analytics.caught_up(&**self.store(), tenant).await
    }

    /// Every answer: `as_of` checked, the index caught up, the horizon (events by `as_of`,
    /// default now; as known at `known_at`, default everything the index holds), and `fold` run
    /// over the index off the async workers.
    async fn answer<T: Send + 'static>(
        &self,
        tenant: &str,
        as_of: Option<DateTime<Utc>>,
        known_at: Option<KnownAt>,
        what: &'static str,
        fold: impl FnOnce(&Index, Horizon) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        crate::app::check_as_of(as_of)?;
        let ix = self.analytics_index(tenant).await?;
        let as_of = as_of.unwrap_or_else(|| self.now());
        let horizon = match known_at {
            None => Horizon { as_of, known_at: ix.position, known_by: None },
            Some(KnownAt::Position(p)) => Horizon { as_of, known_at: p.min(ix.position), known_by: None },
            Some(KnownAt::Instant(t)) => Horizon { as_of, known_at: ix.position, known_by: Some(t) },
        };
        tokio::task::spawn_blocking(move || fold(&ix, horizon)).await.map_err(|e| AppError::internal(what, e))
    }

    /// RFM per customer over their orders, as of `as_of` and as known at `known_at`; one page
    /// of it (see [`chronicle_analytics::rfm::page`]).
    pub async fn rfm(&self, tenant: &str, q: &RfmQuery) -> Result<RfmPage, AppError> {
        let all = self.answer(tenant, q.as_of, known_at(&q.known_at)?, "computing RFM", chronicle_analytics::rfm::run_on).await?;
        chronicle_analytics::rfm::page(all, q.group.as_deref(), q.after.as_deref(), q.limit.clamp(1, 10_000)).map_err(AppError::BadRequest)
    }

    /// Pipeline analytics (velocity, conversion, win rate, deals stuck over `stuck_days`).
    pub async fn pipeline_analytics(&self, tenant: &str, q: &PipelineQuery) -> Result<chronicle_analytics::pipeline::Pipeline, AppError> {
        let stuck_days = q.stuck_days.unwrap_or(30);
        self.answer(tenant, q.as_of, known_at(&q.known_at)?, "computing pipeline analytics", move |ix, h| {
            chronicle_analytics::pipeline::run_on(ix, h, stuck_days)
        })
        .await
    }

    /// Signup cohorts and their conversion over time.
    pub async fn cohorts(&self, tenant: &str, q: &CohortQuery) -> Result<chronicle_analytics::cohorts::Cohorts, AppError> {
        let event = q.event.clone().unwrap_or_else(|| "Order Completed".into());
        if event.trim().is_empty() {
            return Err(AppError::BadRequest("event names an event type or a tracked event".into()));
        }
        let periods = q.periods.unwrap_or(12);
        if !(1..=120).contains(&periods) {
            return Err(AppError::BadRequest("periods is 1 to 120".into()));
        }
        let occurrence = q.occurrence.unwrap_or(1);
        if !(1..=1000).contains(&occurrence) {
            return Err(AppError::BadRequest("occurrence is 1 to 1000".into()));
        }
        let period = q.period.unwrap_or_default();
        self.answer(tenant, q.as_of, known_at(&q.known_at)?, "computing cohorts", move |ix, h| {
            chronicle_analytics::cohorts::run_on(ix, h, period, &event, occurrence, periods)
        })
        .await
    }

    /// Revenue of conversions credited to channels and campaigns under the models asked.
    pub async fn attribution(
        &self,
        tenant: &str,
        spec: &chronicle_analytics::attribution::AttributionSpec,
    ) -> Result<chronicle_analytics::attribution::Attribution, AppError> {
        chronicle_analytics::attribution::check(spec).map_err(|e| AppError::BadRequest(e.0))?;
        let s = spec.clone();
        self.answer(tenant, spec.as_of, spec.known_at, "computing attribution", move |ix, h| chronicle_analytics::attribution::run_on(&s, ix, h))
            .await?
            .map_err(|e| AppError::BadRequest(e.0))
    }

    /// A segment's members as of an instant (and as known at a position), from the entries
    /// and exits on the log, with the position the answer reflects.
    pub async fn segment_members_at(
        &self,
        tenant: &str,
        segment: &str,
        as_of: DateTime<Utc>,
        known: Option<&str>,
    ) -> Result<(Vec<(String, DateTime<Utc>)>, u64), AppError> {
        let segment = segment.to_owned();
        self.answer(tenant, Some(as_of), known_at(&known.map(str::to_owned))?, "reading a segment's members", move |ix, h| {
            chronicle_analytics::segments::members_with_position(ix, h, &segment)
        })
        .await
    }

    /// Re-engagement candidates: at least `min_events` tracked events, none in the last
    /// `silent_days`.
    pub async fn reengagement(&self, tenant: &str, q: &ReengagementQuery) -> Result<chronicle_analytics::reengagement::Reengagement, AppError> {
        let (min_events, silent_days, limit) = (q.min_events.unwrap_or(5), q.silent_days.unwrap_or(30), q.limit.unwrap_or(100).clamp(1, 10_000));
        if min_events == 0 || silent_days > 3650 {
            return Err(AppError::BadRequest("min_events is at least 1 and silent_days at most 3650".into()));
        }
        self.answer(tenant, q.as_of, known_at(&q.known_at)?, "finding re-engagement candidates", move |ix, h| {
            chronicle_analytics::reengagement::run_on(ix, h, min_events, silent_days, limit)
        })
        .await
    }

    /// Every customer's RFM group and scores now (for segments with RFM conditions).
    pub async fn rfm_facts(&self, tenant: &str) -> Result<std::collections::HashMap<String, chronicle_automation::segment::RfmFacts>, AppError> {
        let all = self.answer(tenant, None, None, "computing RFM groups", chronicle_analytics::rfm::run_on).await?;
        Ok(all.customers.into_iter().map(|c| (c.id, chronicle_automation::segment::RfmFacts { group: c.group, r: c.r, f: c.f, m: c.m })).collect())
    }

    /// A funnel over the tenant's events as of `spec.as_of` (default now), as known at
    /// `spec.known_at` (a log position or an instant of ingest time; default: everything now).
    pub async fn funnel(&self, tenant: &str, spec: &FunnelSpec) -> Result<FunnelAnswer, AppError> {
        spec.check().map_err(|e| AppError::BadRequest(e.0))?;
        let s = spec.clone();
        self.answer(tenant, spec.as_of, spec.known_at, "running a funnel", move |ix, h| chronicle_analytics::funnel::run_on(&s, ix, h))
            .await?
            .map_err(|e| AppError::BadRequest(e.0))
    }
}

/// A query parameter's `known_at`: a log position or an RFC 3339 instant of ingest time.
fn known_at(s: &Option<String>) -> Result<Option<KnownAt>, AppError> {
    s.as_deref().map(str::parse::<KnownAt>).transpose().map_err(AppError::BadRequest)
}
