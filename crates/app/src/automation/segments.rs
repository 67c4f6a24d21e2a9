//! Segment upkeep: after each committed event of a customer, every segment of the tenant is
//! evaluated for them and a change of membership is recorded (`SegmentEntered`,
//! `SegmentExited` on their stream); the engine's scan re-evaluates the segments whose
//! conditions change with time alone (`inactive_for`) or with the population (`rfm_group`: the
//! RFM groups are recomputed once per scan, and per-event upkeep uses the last ones, leaving
//! such segments alone until a scan has computed them). Each record's id derives from its cause
//! (the event, or the scan), so a reaction replayed after a crash records nothing twice; and
//! one customer's changes are computed under their lock from views that hold every earlier
//! record, so the reaction and the scan never record the same change twice.
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
use chronicle_automation::segment::{RfmFacts, SegmentEvent};
use chronicle_core::customer;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// A window a segment condition reads: (event, summed property).
type WindowKey = (String, Option<String>);

/// A tenant's event windows: per window key, per customer, (time µs, value) oldest first, kept
/// for the longest window that reads them. Built from the analytics index (the events up to
/// `built_at`), then fed by the reaction with each later event.
#[derive(Default)]
pub(super) struct Windows {
    /// The tenant's segment definitions it was built for (see [`fingerprint`]).
    fingerprint: u64,
    built_at: u64,
    keys: BTreeMap<WindowKey, chrono::Duration>,
    per: HashMap<WindowKey, HashMap<String, VecDeque<(i64, f64)>>>,
}

impl Windows {
    fn total(&self, id: &str, event: &str, sum: Option<&str>, since: DateTime<Utc>) -> f64 {
        let since = since.timestamp_micros();
        let key = (event.to_owned(), sum.map(str::to_owned));
        self.per.get(&key).and_then(|m| m.get(id)).map_or(0.0, |d| d.iter().filter(|(t, _)| *t > since).map(|(_, v)| v).sum())
    }
}

/// The value an event adds to a window: 1 for a count, else its property (0 when missing).
fn value_of(fields: Option<&Value>, sum: Option<&str>) -> f64 {
    match sum {
        None => 1.0,
        Some(p) => fields.and_then(|f| f.get(p)).and_then(Value::as_f64).unwrap_or(0.0),
    }
}

/// What changes whenever a segment of the tenant is saved or deleted: each definition's stream
/// version (a save moves it), and how many there are. Read per event, so it allocates nothing.
fn fingerprint(app: &App, tenant: &str) -> u64 {
    let v = app.views();
    v.tenant(tenant).map_or(0, |t| {
        let s = &t.automation.segments;
        s.values().fold(s.len() as u64, |acc, (version, _)| acc.wrapping_mul(1_000_003).wrapping_add(*version))
    })
}

/// The windows the tenant's segments read, each with its longest span.
fn needed(app: &App, tenant: &str) -> BTreeMap<WindowKey, chrono::Duration> {
    let v = app.views();
    let mut keys: BTreeMap<WindowKey, chrono::Duration> = BTreeMap::new();
    for (_, s) in v.tenant(tenant).into_iter().flat_map(|t| t.automation.segments.values()) {
        for (event, sum, within) in s.windows() {
            let k = keys.entry((event.to_owned(), sum.map(str::to_owned))).or_insert(within);
            *k = (*k).max(within);
        }
    }
    keys
}

/// How recent a `SegmentEntered` must be to trigger a campaign.
pub const TRIGGER_RECENCY: chrono::Duration = chrono::Duration::days(1);

/// The membership changes of one customer at `now`: (segment, entered?); with `timed`, only of
/// the segments that change with time alone or on a schedule. `rfm`: the customers' RFM groups
/// as last computed; without them, segments with RFM conditions are left as they are.
fn changes(
    app: &App,
    tenant: &str,
    id: &str,
    now: DateTime<Utc>,
    timed: bool,
    rfm: Option<&HashMap<String, RfmFacts>>,
    windows: Option<&Windows>,
) -> Vec<(String, bool)> {
    let window = |event: &str, sum: Option<&str>, since: DateTime<Utc>| windows.map_or(0.0, |w| w.total(id, event, sum, since));
    let facts = chronicle_automation::segment::Facts { now, last_active: None, rfm: rfm.and_then(|r| r.get(id)), window: &window };
    let v = app.views();
    let Some(t) = v.tenant(tenant) else { return Vec::new() };
    let a = &t.automation;
    let Some(c) = t.customers.get(id) else { return Vec::new() };
    let facts = chronicle_automation::segment::Facts { last_active: a.last_active.get(id).copied(), ..facts };
    a.segments
        .iter()
        .filter(|(_, (_, s))| !timed || s.elapses() || s.scheduled())
        .filter(|(_, (_, s))| rfm.is_some() || !s.scheduled())
        .filter(|(_, (_, s))| windows.is_some() || s.windows().next().is_none())
        .filter_map(|(name, (_, s))| {
            let should = s.holds(c, &facts);
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
        if ev.event_type == "CustomerErased" {
            // What the windows hold of the person (their events' times and amounts) goes too.
            if let Some(w) = self.windows.lock().expect("windows lock").get_mut(&ev.tenant) {
                for per in w.per.values_mut() {
                    per.remove(id);
                }
            }
        }
        // A tenant without segments (the common case) costs one look at the views.
        if self.app.views().tenant(&ev.tenant).is_none_or(|t| t.automation.segments.is_empty()) {
            return Ok(());
        }
        self.ensure_windows(&ev.tenant).await?;
        self.feed_windows(ev, id);
        self.settle(&ev.tenant, id, &ev.id.to_string(), ev.event_time, false).await
    }

    /// The tenant's event windows, built from the analytics index when its segments read
    /// windows that are not built yet (at the engine's start, or after a segment changed).
    async fn ensure_windows(&self, tenant: &str) -> Result<(), AppError> {
        let fp = fingerprint(&self.app, tenant);
        if self.windows.lock().expect("windows lock").get(tenant).is_some_and(|x| x.fingerprint == fp) {
            return Ok(());
        }
        let keys = needed(&self.app, tenant);
        {
            let mut w = self.windows.lock().expect("windows lock");
            if keys.is_empty() {
                w.insert(tenant.to_owned(), Windows { fingerprint: fp, ..Default::default() });
                return Ok(());
            }
            if let Some(x) = w.get_mut(tenant).filter(|x| x.keys == keys) {
                x.fingerprint = fp;
                return Ok(());
            }
        }
        let now = self.app.now().timestamp_micros();
        let ix = self.app.analytics_index(tenant).await?;
        let people = ix.people(|_| true);
        let mut built = Windows { fingerprint: fp, built_at: ix.position, keys: keys.clone(), per: HashMap::new() };
        for (key, within) in &keys {
            let Some(name) = ix.names.get(&key.0) else { continue };
            let since = now - within.num_microseconds().unwrap_or(i64::MAX / 2);
            let prop = key.1.as_deref().map(|p| ix.key(p));
            let per = built.per.entry(key.clone()).or_default();
            for r in ix.rows.iter().filter(|r| (r.ty == name || r.name == name) && r.time > since) {
                let Some(id) = ix.customer(people[r.stream as usize]) else { continue };
                // As `value_of` reads a live event: 1 for a count, else the property (0 when missing).
                let value = prop.map_or(1.0, |k| ix.number(r, k).unwrap_or(0.0));
                per.entry(id.to_owned()).or_default().push_back((r.time, value));
            }
        }
        drop(ix);
        self.windows.lock().expect("windows lock").insert(tenant.to_owned(), built);
        Ok(())
    }

    /// An event the windows have not seen yet goes into those it matches.
    fn feed_windows(&self, ev: &EventEnvelope, id: &str) {
        let mut w = self.windows.lock().expect("windows lock");
        let Some(t) = w.get_mut(&ev.tenant) else { return };
        if t.keys.is_empty() || ev.position <= t.built_at {
            return;
        }
        let tracked = ev.event_type == "ActivityTracked";
        let name = ev.data.get("event").and_then(Value::as_str).filter(|_| tracked);
        let fields = if tracked { ev.data.get("properties") } else { Some(&ev.data) };
        let now = self.app.now();
        for (key, within) in &t.keys {
            if key.0 != ev.event_type && Some(key.0.as_str()) != name {
                continue;
            }
            let list = t.per.entry(key.clone()).or_default().entry(id.to_owned()).or_default();
            list.push_back((ev.event_time.timestamp_micros(), value_of(fields, key.1.as_deref())));
            let horizon = now.checked_sub_signed(*within).map_or(i64::MIN, |h| h.timestamp_micros());
            while list.front().is_some_and(|(t, _)| *t <= horizon) {
                list.pop_front();
            }
        }
    }

    /// Record a customer's membership changes, one writer per customer at a time: the changes
    /// are computed under the customer's lock, from views that hold every earlier writer's
    /// record (an append returns once folded), so the reaction and the scan never record the
    /// same change twice.
    async fn settle(&self, tenant: &str, id: &str, cause: &str, at: DateTime<Utc>, timed: bool) -> Result<(), AppError> {
        let rfm = self.rfm.lock().expect("rfm lock").get(tenant).cloned();
        let _g = self.lock(&format!("segments/{tenant}/{id}")).await;
        let found = {
            // The windows' lock, then the views' (in `changes`): the one order they are taken in.
            let w = self.windows.lock().expect("windows lock");
            changes(&self.app, tenant, id, self.app.now(), timed, rfm.as_deref(), w.get(tenant))
        };
        record(&self.app, tenant, id, cause, at, found).await
    }

    /// A segment saved (or changed): every customer of the tenant is evaluated for the tenant's
    /// segments, so those who match already enter now (at the save's time).
    pub(super) async fn segment_saved(&self, ev: &EventEnvelope) -> Result<(), AppError> {
        self.ensure_windows(&ev.tenant).await?;
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
        // RFM groups, relative to the whole population: recomputed here, once per scan, for the
        // tenants with segments that name one.
        let scheduled: Vec<String> = {
            let v = self.app.views();
            v.tenants
                .iter()
                .filter(|(tenant, t)| self.gate.holds(tenant) && t.automation.segments.values().any(|(_, s)| s.scheduled()))
                .map(|(tenant, _)| tenant.clone())
                .collect()
        };
        for tenant in scheduled {
            let groups = self.app.rfm_facts(&tenant).await?;
            self.rfm.lock().expect("rfm lock").insert(tenant, Arc::new(groups));
        }
        let windowed: Vec<String> = {
            let v = self.app.views();
            v.tenants
                .iter()
                .filter(|(tenant, t)| self.gate.holds(tenant) && t.automation.segments.values().any(|(_, s)| s.windows().next().is_some()))
                .map(|(tenant, _)| tenant.clone())
                .collect()
        };
        for tenant in &windowed {
            self.ensure_windows(tenant).await?;
        }
        let work: Vec<(String, String, String)> = {
            let v = self.app.views();
            let mut out = Vec::new();
            for (tenant, t) in v.tenants.iter().filter(|(tenant, _)| self.gate.holds(tenant)) {
                let a = &t.automation;
                let rfm = self.rfm.lock().expect("rfm lock").get(tenant.as_str()).cloned();
                let timed: Vec<_> = a.segments.iter().filter(|(_, (_, s))| s.elapses() || s.scheduled()).collect();
                if timed.is_empty() {
                    continue;
                }
                for (id, c) in &t.customers {
                    let last = a.last_active.get(id).copied();
                    // Windows are read under their own lock, in `settle`: every customer of a
                    // tenant with windowed segments is settled there.
                    let nothing = |_: &str, _: Option<&str>, _: DateTime<Utc>| 0.0;
                    let facts = chronicle_automation::segment::Facts { now, last_active: last, rfm: rfm.as_ref().and_then(|r| r.get(id)), window: &nothing };
                    let differs = windowed.contains(tenant)
                        || timed.iter().any(|(name, (_, s))| s.holds(c, &facts) != a.members.get(*name).is_some_and(|m| m.contains_key(id)));
                    if differs {
                        // The scan's instant is the cause: a change found again later (back in a
                        // group, say) is a new record. Nothing is recorded twice all the same:
                        // the change is recomputed under the customer's lock from the views.
                        out.push((tenant.clone(), id.clone(), format!("scan:{}", now.to_rfc3339())));
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
