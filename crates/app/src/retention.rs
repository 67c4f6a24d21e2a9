//! Retention: a tenant's policies (how many days each expirable event type is kept, as events
//! on its `retention` stream, checked before they are written) and the plan of a compaction —
//! which stored events have expired under the policies in force, and the `RetentionApplied`
//! record that says so. The compaction itself runs offline (`chronicle compact`): the store
//! replaces the planned events with tombstones and appends the records in one atomic step
//! (`chronicle_store::expire`), then the views are rebuilt from the compacted log.

use crate::app::App;
use crate::error::AppError;
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_projections::retention::{self, PolicyRemoved, PolicySet, RetentionRun, RetentionView};
use chronicle_projections::Projections;
use chronicle_store::EventStore;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Keep `event_type` events `keep_days` days (by event time). Returns whether it changed.
pub async fn set_policy(app: &App, tenant: &str, event_type: &str, keep_days: u32, actor: &str) -> Result<bool, AppError> {
    retention::can_expire(event_type).map_err(|message| AppError::Rule { code: "not_expirable", message })?;
    if !(1..=retention::MAX_DAYS).contains(&keep_days) {
        return Err(AppError::BadRequest(format!("keep_days must be 1 to {}", retention::MAX_DAYS)));
    }
    if policies(app, tenant).policies.get(event_type) == Some(&keep_days) {
        return Ok(false);
    }
    let data = serde_json::to_value(PolicySet { event_type: event_type.to_owned(), keep_days }).expect("serializable");
    record(app, tenant, retention::POLICY_SET, data, actor).await?;
    Ok(true)
}

/// Keep `event_type` events forever again.
pub async fn remove_policy(app: &App, tenant: &str, event_type: &str, actor: &str) -> Result<(), AppError> {
    if !policies(app, tenant).policies.contains_key(event_type) {
        return Err(AppError::NotFound("retention policy"));
    }
    let data = serde_json::to_value(PolicyRemoved { event_type: event_type.to_owned() }).expect("serializable");
    record(app, tenant, retention::POLICY_REMOVED, data, actor).await
}

/// The tenant's policies and its latest compactions.
pub fn policies(app: &App, tenant: &str) -> RetentionView {
    app.views().tenant(tenant).map(|t| t.retention.clone()).unwrap_or_default()
}

async fn record(app: &App, tenant: &str, event_type: &str, data: serde_json::Value, actor: &str) -> Result<(), AppError> {
    let ev = NewEvent::new(Uuid::now_v7(), event_type, data, app.now()).with_actor(actor);
    app.append(tenant, retention::STREAM, ExpectedVersion::Any, vec![ev]).await?;
    Ok(())
}

/// What a compaction at `at` would remove.
#[derive(Debug, Default)]
pub struct Plan {
    pub at: DateTime<Utc>,
    /// The expired events' positions, ascending.
    pub positions: Vec<u64>,
    /// Per tenant with a policy.
    pub tenants: BTreeMap<String, TenantPlan>,
    /// The head when planned: every event up to it was looked at.
    pub through: u64,
}

/// One tenant's part of a [`Plan`].
#[derive(Debug, Default, serde::Serialize)]
pub struct TenantPlan {
    /// The policies applied: event type → days kept.
    pub policies: BTreeMap<String, u32>,
    /// What expired, by event type.
    pub expired: BTreeMap<String, u64>,
}

const PAGE: usize = 10_000;

/// Scans the log for events that expired by `at` under the policies in `views` (events already
/// expired are tombstones of another type, so never chosen twice).
pub async fn plan(store: &dyn EventStore, views: &Projections, at: DateTime<Utc>) -> Result<Plan, AppError> {
    let cutoffs: BTreeMap<&str, BTreeMap<String, DateTime<Utc>>> = views
        .tenants
        .iter()
        .filter(|(_, t)| !t.retention.policies.is_empty())
        .map(|(name, t)| (name.as_str(), t.retention.cutoffs(at)))
        .collect();
    let mut plan = Plan { at, ..Plan::default() };
    for tenant in cutoffs.keys() {
        let policies = views.tenants[*tenant].retention.policies.clone();
        plan.tenants.insert((*tenant).to_owned(), TenantPlan { policies, expired: BTreeMap::new() });
    }
    if cutoffs.is_empty() {
        return Ok(plan);
    }
    let mut after = 0;
    loop {
        let page = store.read_all_raw(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for ev in &page {
            let expired = cutoffs
                .get(ev.tenant.as_str())
                .and_then(|c| c.get(&ev.event_type))
                .is_some_and(|cutoff| ev.event_time < *cutoff);
            if expired {
                plan.positions.push(ev.position);
                let counts = &mut plan.tenants.get_mut(&ev.tenant).expect("a tenant with cutoffs").expired;
                *counts.entry(ev.event_type.clone()).or_default() += 1;
            }
        }
    }
    plan.through = after;
    Ok(plan)
}

impl Plan {
    /// The `RetentionApplied` record for each tenant that loses events: `(tenant, stream, event)`.
    pub fn records(&self, actor: &str) -> Vec<(String, String, NewEvent)> {
        self.tenants
            .iter()
            .filter(|(_, t)| !t.expired.is_empty())
            .map(|(tenant, t)| {
                let run = RetentionRun {
                    at: self.at,
                    policies: t.policies.clone(),
                    expired: t.expired.clone(),
                    through_position: self.through,
                };
                let data = serde_json::to_value(run).expect("serializable");
                let ev = NewEvent::new(Uuid::now_v7(), retention::APPLIED, data, self.at).with_actor(actor);
                (tenant.clone(), retention::STREAM.to_owned(), ev)
            })
            .collect()
    }
}
