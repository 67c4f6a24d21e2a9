//! Segment upkeep: after each committed event of a customer, every segment of the tenant is
//! evaluated for them and a change of membership is recorded (`SegmentEntered`,
//! `SegmentExited` on their stream); the engine's scan re-evaluates the segments whose
//! conditions change with time alone (`inactive_for`). Each record's id derives from its cause
//! (the event, or the inactive spell), so a reaction replayed after a crash records nothing
//! twice.
//!
//! A segment saved is evaluated for every customer of the tenant at once, so those who match
//! already enter (at the save's time).
//!
//! Times: an entry or exit caused by an event carries that event's time (an imported history's
//! entries carry its old times); one found by the scan carries the scan's time. Campaigns that
//! trigger on `SegmentEntered` take only entries from the last [`TRIGGER_RECENCY`], so an import
//! of history enrols no one through the entries it causes.

use super::Engine;
use crate::app::App;
use crate::error::AppError;
use chronicle_automation::derive_id;
use chronicle_automation::segment::SegmentEvent;
use chronicle_core::customer;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chrono::{DateTime, Utc};

/// How recent a `SegmentEntered` must be to trigger a campaign.
pub const TRIGGER_RECENCY: chrono::Duration = chrono::Duration::days(1);

/// The membership changes of one customer at `now`: (segment, entered?); with `timed`, only of
/// the segments that change with time alone.
fn changes(app: &App, tenant: &str, id: &str, now: DateTime<Utc>, timed: bool) -> Vec<(String, bool)> {
    let v = app.views();
    let Some(t) = v.tenant(tenant) else { return Vec::new() };
    let a = &t.automation;
    let Some(c) = t.customers.get(id) else { return Vec::new() };
    let last = a.last_active.get(id).copied();
    a.segments
        .iter()
        .filter(|(_, (_, s))| !timed || s.elapses())
        .filter_map(|(name, (_, s))| {
            let should = s.holds(c, last, now);
            let is = a.members.get(name).is_some_and(|m| m.contains_key(id));
            (should != is).then(|| (name.clone(), should))
        })
        .collect()
}

async fn record(app: &App, tenant: &str, id: &str, cause: &str, at: DateTime<Utc>, changes: Vec<(String, bool)>) -> Result<(), AppError> {
    if changes.is_empty() {
        return Ok(());
    }
    let batch = changes
        .into_iter()
        .map(|(segment, entered)| {
            let key = derive_id(&[tenant, &segment, id, cause, if entered { "entered" } else { "exited" }]);
            let e = if entered {
                SegmentEvent::SegmentEntered { segment, cause: cause.to_owned() }
            } else {
                SegmentEvent::SegmentExited { segment, cause: cause.to_owned() }
            };
            let (ty, data) = e.to_parts();
            NewEvent::new(key, ty, data, at).with_actor("segments")
        })
        .collect();
    match app.append(tenant, &customer::stream_of(id), ExpectedVersion::Any, batch).await {
        Ok(_) | Err(AppError::IdReused(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Engine {
    /// Upkeep after one committed event of a customer.
    pub(super) async fn upkeep_segments(&self, ev: &EventEnvelope, id: &str) -> Result<(), AppError> {
        if chronicle_automation::segment::EVENT_TYPES.contains(&ev.event_type.as_str()) {
            return Ok(());
        }
        self.settle(&ev.tenant, id, &ev.id.to_string(), ev.event_time, false).await
    }

    /// Record a customer's membership changes, one writer per customer at a time: the changes
    /// are computed under the customer's lock, from views that hold every earlier writer's
    /// record (an append returns once folded), so the reaction and the scan never record the
    /// same change twice.
    async fn settle(&self, tenant: &str, id: &str, cause: &str, at: DateTime<Utc>, timed: bool) -> Result<(), AppError> {
        let _g = self.lock(&format!("segments/{tenant}/{id}")).await;
        let found = changes(&self.app, tenant, id, self.app.now(), timed);
        record(&self.app, tenant, id, cause, at, found).await
    }

    /// A segment saved (or changed): every customer of the tenant is evaluated for the tenant's
    /// segments, so those who match already enter now (at the save's time).
    pub(super) async fn segment_saved(&self, ev: &EventEnvelope) -> Result<(), AppError> {
        let ids: Vec<String> = self.app.views().tenant(&ev.tenant).map(|t| t.customers.keys().cloned().collect()).unwrap_or_default();
        for id in ids {
            self.settle(&ev.tenant, &id, &ev.id.to_string(), ev.event_time, false).await?;
        }
        Ok(())
    }

    /// Re-evaluate the segments that change with time alone, for every customer of the tenants
    /// this node serves. The cause is the inactive spell (the last activity's time), so each
    /// spell records its entry once.
    pub(super) async fn scan_segments(&self, now: DateTime<Utc>) -> Result<(), AppError> {
        let work: Vec<(String, String, String)> = {
            let v = self.app.views();
            let mut out = Vec::new();
            for (tenant, t) in v.tenants.iter().filter(|(tenant, _)| self.gate.holds(tenant)) {
                let a = &t.automation;
                let timed: Vec<_> = a.segments.iter().filter(|(_, (_, s))| s.elapses()).collect();
                if timed.is_empty() {
                    continue;
                }
                for (id, c) in &t.customers {
                    let last = a.last_active.get(id).copied();
                    let differs = timed.iter().any(|(name, (_, s))| s.holds(c, last, now) != a.members.get(*name).is_some_and(|m| m.contains_key(id)));
                    if differs {
                        let spell = last.or(c.created_at).map(|t| t.to_rfc3339()).unwrap_or_default();
                        out.push((tenant.clone(), id.clone(), format!("scan:{spell}")));
                    }
                }
            }
            out
        };
        for (tenant, id, cause) in work {
            self.settle(&tenant, &id, &cause, now, true).await?;
        }
        Ok(())
    }
}
