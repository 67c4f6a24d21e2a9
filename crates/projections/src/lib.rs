//! Chronicle's read models, folded from the log: the customer 360 profile, the consent ledger
//! (current state and full history with source and proof), the deal pipeline, orders, the
//! unique-e-mail index, tenants and their keys, and per-customer snapshots for time travel.
//!
//! [`Projections::apply`] is the one fold; the live views, `rebuild` and `verify` all use it,
//! so a replay is the same function over the same events. The whole state serializes to a
//! checkpoint (with the position it reflects), so a restart resumes from there.

mod checkpoint;
mod diff;

pub use checkpoint::{load_checkpoint, save_checkpoint, CheckpointError};
pub use diff::diff;

use chrono::{DateTime, Utc};
use chronicle_core::customer::{self, Channel, ConsentDecision, Customer, CustomerEvent, Purpose};
use chronicle_core::deal::{self, Deal, DealEvent, DealStatus};
use chronicle_core::envelope::EventEnvelope;
use chronicle_core::order::{self, Order, OrderEvent};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The tenant that holds Chronicle's own records (tenants, keys).
pub const SYSTEM_TENANT: &str = "_system";
/// How many events of a customer stream lie between two time-travel snapshots.
pub const SNAPSHOT_EVERY: u64 = 500;

/// One consent decision in the ledger's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentEntry {
    pub channel: Channel,
    pub purpose: Purpose,
    pub granted: bool,
    pub source: String,
    pub legal_basis: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<serde_json::Value>,
    pub event_id: uuid::Uuid,
    pub event_time: DateTime<Utc>,
    pub position: u64,
}

/// A customer's state at a stream version, for as-of queries: valid for any instant at or after
/// `max_event_time` (every event up to `version` happened by then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    pub max_event_time: DateTime<Utc>,
    pub state: Customer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Management and query API (`Authorization: Bearer`).
    Api,
    /// Ingest only (Segment write key).
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub tenant: String,
    pub kind: KeyKind,
}

/// The read models of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantViews {
    pub customers: HashMap<String, Customer>,
    pub consent_history: HashMap<String, Vec<ConsentEntry>>,
    /// Normalised e-mail → customer id (uniqueness and look-up).
    pub emails: HashMap<String, String>,
    pub deals: HashMap<String, Deal>,
    pub orders: HashMap<String, Order>,
    /// Time-travel snapshots per customer, oldest first.
    pub snapshots: HashMap<String, Vec<Snapshot>>,
    /// Latest event time seen per customer stream (for the next snapshot's bound).
    pub max_event_time: HashMap<String, DateTime<Utc>>,
    /// Events applied for this tenant.
    pub events: u64,
}

/// Every read model, and the log position it reflects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projections {
    /// The position of the last event folded in (the checkpoint).
    pub position: u64,
    pub tenants: BTreeMap<String, TenantViews>,
    /// Key hash (hex SHA-256) → tenant and kind.
    pub keys: HashMap<String, KeyRecord>,
    /// Events whose payload could not be decoded (counted, never fatal: events are facts).
    pub undecodable: u64,
    /// Events of a customer stream between two time-travel snapshots.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

fn default_snapshot_every() -> u64 {
    SNAPSHOT_EVERY
}

impl Default for Projections {
    fn default() -> Self {
        Projections { position: 0, tenants: BTreeMap::new(), keys: HashMap::new(), undecodable: 0, snapshot_every: SNAPSHOT_EVERY }
    }
}

impl Projections {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn tenant(&self, tenant: &str) -> Option<&TenantViews> {
        self.tenants.get(tenant)
    }

    pub fn customer(&self, tenant: &str, id: &str) -> Option<&Customer> {
        self.tenants.get(tenant)?.customers.get(id)
    }

    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.keys.values().any(|k| k.tenant == tenant)
    }

    /// The consent decision for a customer, channel and purpose, from the live ledger.
    pub fn consent_check(&self, tenant: &str, customer_id: &str, channel: Channel, purpose: Purpose) -> ConsentDecision {
        match self.customer(tenant, customer_id) {
            Some(c) => c.consent_check(channel, purpose),
            None => ConsentDecision { allowed: false, reason: "unknown_customer" },
        }
    }

    /// Fold one event into every read model it concerns. Events must come in position order;
    /// an event at or below the checkpoint is ignored, so replaying a tail twice is harmless.
    pub fn apply(&mut self, ev: &EventEnvelope) {
        if ev.position <= self.position {
            return;
        }
        self.position = ev.position;
        if ev.tenant == SYSTEM_TENANT {
            self.apply_system(ev);
            return;
        }
        let snapshot_every = self.snapshot_every;
        // Look up before inserting: the hot path (a known tenant) allocates nothing.
        if !self.tenants.contains_key(&ev.tenant) {
            self.tenants.insert(ev.tenant.clone(), TenantViews::default());
        }
        let views = self.tenants.get_mut(&ev.tenant).expect("inserted above");
        views.events += 1;
        if let Some(id) = customer::id_of_stream(&ev.stream) {
            if !customer::EVENT_TYPES.contains(&ev.event_type.as_str()) {
                // e.g. ActivityTracked: on the timeline, not in the profile; the profile still
                // tracks the stream's version, which commands use for optimistic concurrency.
                match views.customers.get_mut(id) {
                    Some(c) => c.version = ev.version,
                    None => {
                        let mut c = Customer::new(id);
                        c.version = ev.version;
                        views.customers.insert(id.to_owned(), c);
                    }
                }
                return;
            }
            match CustomerEvent::from_parts(&ev.event_type, &ev.data) {
                Ok(e) => views.apply_customer(id, &e, ev, snapshot_every),
                Err(_) => self.undecodable += 1,
            }
        } else if let Some(id) = ev.stream.strip_prefix("deal-") {
            match DealEvent::from_parts(&ev.event_type, &ev.data) {
                Ok(e) => views.deals.entry(id.to_owned()).or_insert_with(|| Deal::new(id)).apply(&e, ev.version),
                Err(_) => self.undecodable += u64::from(deal::EVENT_TYPES.contains(&ev.event_type.as_str())),
            }
        } else if let Some(id) = ev.stream.strip_prefix("order-") {
            match OrderEvent::from_parts(&ev.event_type, &ev.data) {
                Ok(e) => views.orders.entry(id.to_owned()).or_insert_with(|| Order::new(id)).apply(&e, ev.version),
                Err(_) => self.undecodable += u64::from(order::EVENT_TYPES.contains(&ev.event_type.as_str())),
            }
        }
    }

    fn apply_system(&mut self, ev: &EventEnvelope) {
        if ev.event_type != "TenantCreated" {
            return;
        }
        let name = ev.data.get("name").and_then(|v| v.as_str());
        let api = ev.data.get("api_key_sha256").and_then(|v| v.as_str());
        let write = ev.data.get("write_key_sha256").and_then(|v| v.as_str());
        if let (Some(name), Some(api), Some(write)) = (name, api, write) {
            self.keys.insert(api.to_owned(), KeyRecord { tenant: name.to_owned(), kind: KeyKind::Api });
            self.keys.insert(write.to_owned(), KeyRecord { tenant: name.to_owned(), kind: KeyKind::Write });
            self.tenants.entry(name.to_owned()).or_default();
        } else {
            self.undecodable += 1;
        }
    }
}

impl TenantViews {
    fn apply_customer(&mut self, id: &str, e: &CustomerEvent, ev: &EventEnvelope, snapshot_every: u64) {
        if !self.customers.contains_key(id) {
            self.customers.insert(id.to_owned(), Customer::new(id));
        }
        let c = self.customers.get_mut(id).expect("inserted above");
        let old_email = c.email.clone();
        c.apply(e, ev.version, ev.event_time);
        if old_email != c.email {
            if let Some(old) = old_email {
                if self.emails.get(&old).map(String::as_str) == Some(id) {
                    self.emails.remove(&old);
                }
            }
            if let Some(new) = &c.email {
                self.emails.insert(new.clone(), id.to_owned());
            }
        }
        match e {
            CustomerEvent::ConsentGranted(r) | CustomerEvent::ConsentRevoked(r) => {
                self.consent_history.entry(id.to_owned()).or_default().push(ConsentEntry {
                    channel: r.channel,
                    purpose: r.purpose,
                    granted: matches!(e, CustomerEvent::ConsentGranted(_)),
                    source: r.source.clone(),
                    legal_basis: r.legal_basis.clone(),
                    proof: r.proof.clone(),
                    event_id: ev.id,
                    event_time: ev.event_time,
                    position: ev.position,
                });
            }
            CustomerEvent::CustomerErased { .. } => {
                // Redact the ledger's evidence and the time-travel copies of the profile.
                for entry in self.consent_history.get_mut(id).into_iter().flatten() {
                    entry.proof = None;
                }
                self.snapshots.remove(id);
            }
            _ => {}
        }
        let max_t = match self.max_event_time.get_mut(id) {
            Some(t) => {
                if ev.event_time > *t {
                    *t = ev.event_time;
                }
                *t
            }
            None => {
                self.max_event_time.insert(id.to_owned(), ev.event_time);
                ev.event_time
            }
        };
        if ev.version % snapshot_every == 0 && c.status != customer::CustomerStatus::Erased {
            let snap = Snapshot { version: ev.version, max_event_time: max_t, state: c.clone() };
            self.snapshots.entry(id.to_owned()).or_default().push(snap);
        }
    }

    /// The latest snapshot usable for an as-of query at `t`.
    pub fn snapshot_for(&self, customer_id: &str, t: DateTime<Utc>) -> Option<&Snapshot> {
        self.snapshots.get(customer_id)?.iter().rev().find(|s| s.max_event_time <= t)
    }

    /// The deal pipeline: per open stage, the count and summed amount; plus won and lost.
    pub fn pipeline(&self) -> Pipeline {
        let mut p = Pipeline::default();
        for s in deal::STAGES {
            p.stages.push(StageSummary { stage: (*s).to_owned(), count: 0, amount: 0 });
        }
        for d in self.deals.values().filter(|d| d.exists) {
            let bucket = match d.status {
                DealStatus::Won => &mut p.won,
                DealStatus::Lost => &mut p.lost,
                DealStatus::Open => match p.stages.iter_mut().find(|s| s.stage == d.stage) {
                    Some(s) => s,
                    None => continue,
                },
            };
            bucket.count += 1;
            bucket.amount += d.amount.unwrap_or(0);
        }
        p
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub count: u64,
    pub amount: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pipeline {
    pub stages: Vec<StageSummary>,
    pub won: StageSummary,
    pub lost: StageSummary,
}

/// Fold a customer's events (already filtered to those that count) onto an optional snapshot:
/// the state as of an instant.
pub fn fold_customer<'a>(id: &str, base: Option<&Snapshot>, events: impl IntoIterator<Item = &'a EventEnvelope>) -> Customer {
    let mut c = base.map(|s| s.state.clone()).unwrap_or_else(|| Customer::new(id));
    for ev in events {
        if let Ok(e) = CustomerEvent::from_parts(&ev.event_type, &ev.data) {
            c.apply(&e, ev.version, ev.event_time);
        }
    }
    c
}

#[cfg(test)]
mod tests;
