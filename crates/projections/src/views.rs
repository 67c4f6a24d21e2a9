//! The fold: [`Projections`], every read model's state, and [`Projections::apply`], the one
//! function the live views, `rebuild` and `verify` fold events with.

use crate::map::Map;
use crate::{automation, retention};
use chronicle_core::customer::{self, Channel, ConsentBits, ConsentDecision, Customer, CustomerEvent, Purpose};
use chronicle_core::deal::{self, Deal, DealEvent, DealStatus};
use chronicle_core::envelope::{EventEnvelope, RawEnvelope};
use chronicle_core::order::{self, Order, OrderEvent};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The version of the read models' shape. A checkpoint of another version is not resumed from
/// (a read model added since would miss everything before it): the views are rebuilt from the
/// log instead. 2: campaigns, audit, API keys with roles. 3: retention; the e-mail index keyed by
/// a hash when sealing. 4: bounced addresses by customer; domain event types folded only from
/// the streams that own them. 5: people and web sessions; each customer's latest messages.
pub const MODELS: u32 = 6;

/// The tenant that holds Chronicle's own records (tenants, keys).
pub const SYSTEM_TENANT: &str = chronicle_core::registry::SYSTEM_TENANT;
/// How many events of a customer stream lie between two time-travel snapshots.
pub const SNAPSHOT_EVERY: u64 = 500;

/// How many audit entries a customer's read model keeps.
pub const AUDIT_KEEP: usize = 1000;

/// One access to a customer's data through the API (an `AuditRecorded` event holds a batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// The key: `key:` and a prefix of its digest.
    pub actor: String,
    /// `read` or `change`.
    pub action: String,
    pub method: String,
    /// The route's template, e.g. `/v1/customers/{id}/timeline`.
    pub route: String,
    pub customer: String,
    pub status: u16,
}

/// One consent decision in the ledger's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// What a key may do. `Reader` < `Writer` < `Admin` for the management API; `Ingest` keys only
/// send events (Segment, CloudEvents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Ingest,
    Reader,
    Writer,
    #[default]
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub tenant: String,
    pub kind: KeyKind,
    /// The tenant's first API key is an admin key; its write key ingests.
    #[serde(default)]
    pub role: Role,
}

/// A key made with `POST /v1/api-keys`: presented as `ck_<id>_<secret>`, kept as an argon2
/// hash of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub tenant: String,
    pub role: Role,
    #[serde(default)]
    pub name: Option<String>,
    /// The PHC string of the argon2id hash of the secret.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A person who works in a tenant's CRM (the web UI): signs in with an e-mail address and a
/// password, kept as an argon2id hash. People are never deleted, only deactivated (the
/// timeline and the audit name them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// Lower-cased; unique within the tenant.
    pub email: String,
    pub role: Role,
    /// The PHC string of the argon2id hash of the password.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub deactivated_at: Option<DateTime<Utc>>,
}

impl User {
    /// How the person is named on the events they cause and on the audit trail.
    pub fn actor(&self) -> String {
        format!("user:{}", self.email)
    }
}

/// Who a session signs in as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOf {
    /// A person, by user id.
    User(String),
    /// An API key (for automation and for tenants with no people yet), by the SHA-256 digest of
    /// the key: the session lasts only while the key is valid.
    Key(String),
}

/// A signed-in session of the web UI. The browser holds a random token in a cookie; only its
/// SHA-256 digest is kept here, in the log (`SessionStarted` on the system tenant), so every node
/// over the same database honours it and a sign-out (`SessionEnded`) ends it everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// SHA-256 (hex) of the token.
    pub digest: String,
    pub tenant: String,
    pub of: SessionOf,
    /// Recorded on the events the session causes: `user:<e-mail>` or `key:<digest prefix>`.
    pub actor: String,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}


/// The key the unique e-mail index is kept under: with it, the index holds each address's
/// HMAC-SHA256 (hex), not the address, so the index itself holds no personal data and an
/// entry cannot be guessed from a list of addresses without the key. Not part of the
/// checkpoint: the store layer that seals gives it (`EventStore::index_key`), so the live views
/// and a replay hash alike; without it (an unsealed store) entries are the addresses.
#[derive(Clone, PartialEq, Eq)]
pub struct IndexKey(std::sync::Arc<[u8; 32]>);

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexKey(..)")
    }
}

impl IndexKey {
    pub fn new(bytes: [u8; 32]) -> IndexKey {
        IndexKey(std::sync::Arc::new(bytes))
    }
}

/// The index entry of a (normalised) address.
pub fn email_entry<'a>(key: Option<&IndexKey>, email: &'a str) -> std::borrow::Cow<'a, str> {
    use hmac::Mac;
    let Some(key) = key else { return std::borrow::Cow::Borrowed(email) };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key.0[..]).expect("any key length");
    mac.update(email.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(2 + 64);
    hex.push_str("h:");
    for b in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
    }
    std::borrow::Cow::Owned(hex)
}

/// The read models of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantViews {
    pub customers: Map<String, Customer>,
    /// The consent view: per customer, what a send decision reads, packed (see `ConsentBits`).
    #[serde(default)]
    pub consent_bits: Map<String, ConsentBits>,
    pub consent_history: Map<String, Vec<ConsentEntry>>,
    /// Anonymous id → the customer it is linked to (identity resolution).
    #[serde(default)]
    pub identities: Map<String, String>,
    /// Normalised e-mail (or its keyed hash, see [`IndexKey`]) → customer id (uniqueness and
    /// look-up); read it with [`TenantViews::email_owner`].
    pub emails: Map<String, String>,
    pub deals: Map<String, Deal>,
    pub orders: Map<String, Order>,
    /// Time-travel snapshots per customer, oldest first.
    pub snapshots: Map<String, Vec<Snapshot>>,
    /// Latest event time seen per customer stream (for the next snapshot's bound).
    pub max_event_time: Map<String, DateTime<Utc>>,
    /// Per customer, the earliest event time in each block of `snapshot_every` versions: an
    /// as-of query reads only the blocks that hold an event that happened by its instant.
    #[serde(default)]
    pub time_blocks: Map<String, Vec<DateTime<Utc>>>,
    /// Campaigns, templates, enrolments, timers, the outbox (see [`automation`]).
    #[serde(default)]
    pub automation: automation::AutomationView,
    /// Per customer, who read or changed their data through the API, oldest first (the last
    /// [`AUDIT_KEEP`] entries; the log keeps them all).
    #[serde(default)]
    pub audit: Map<String, Vec<AuditEntry>>,
    /// Retention policies and the record of compactions (see [`retention`]).
    #[serde(default)]
    pub retention: retention::RetentionView,
    /// The contact list's indexes (derived from `customers`; rebuilt on load, see
    /// [`Projections::reindex`]).
    #[serde(skip)]
    pub contacts: crate::contacts::ContactIndex,
    /// The tenant's own SendGrid verification key (base64 DER), when it set one: its feedback
    /// must be signed with it.
    #[serde(default)]
    pub sendgrid_key: Option<String>,
    /// The web origins this tenant's pages send events from (browser tracking, CORS), besides
    /// the instance's.
    #[serde(default)]
    pub cors_origins: Vec<String>,
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
    pub keys: Map<String, KeyRecord>,
    /// Keys made through the API, by id.
    #[serde(default)]
    pub api_keys: Map<String, ApiKey>,
    /// The people of every tenant, by user id.
    #[serde(default)]
    pub users: Map<String, User>,
    /// Web sessions not ended, by the digest of their token (expired ones are dropped as later
    /// sessions start).
    #[serde(default)]
    pub sessions: Map<String, Session>,
    /// Events whose payload could not be decoded (counted, never fatal: events are facts).
    pub undecodable: u64,
    /// Events of a customer stream between two time-travel snapshots.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Not a read model: the automation engine's cursor (the last position it reacted to),
    /// saved with the checkpoint so a restart goes on from there. Reacting again to an event
    /// is harmless (every reaction has a derived id), so an older cursor only costs time.
    #[serde(default)]
    pub reacted: u64,
    /// Not a read model: the names of the checkpoint keys rotated out before this checkpoint
    /// was written (sealed under the new key), so that a crash between writing it and
    /// destroying them cannot leave an old key behind: a start destroys them again.
    #[serde(default)]
    pub retired_keys: Vec<String>,
    /// [`MODELS`] when written (absent: version 1).
    #[serde(default = "models_v1")]
    pub models: u32,
    /// What the e-mail index is keyed with (see [`IndexKey`]); set by whoever builds the views.
    #[serde(skip)]
    pub index_key: Option<IndexKey>,
}

fn models_v1() -> u32 {
    1
}

fn default_snapshot_every() -> u64 {
    SNAPSHOT_EVERY
}

impl Default for Projections {
    fn default() -> Self {
        Projections {
            position: 0,
            tenants: BTreeMap::new(),
            keys: Map::default(),
            api_keys: Map::default(),
            users: Map::default(),
            sessions: Map::default(),
            undecodable: 0,
            snapshot_every: SNAPSHOT_EVERY,
            reacted: 0,
            retired_keys: Vec::new(),
            models: MODELS,
            index_key: None,
        }
    }
}

/// What a fold needs of an event to decide whether its payload matters.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub tenant: &'a str,
    pub stream: &'a str,
    pub event_type: &'a str,
    pub version: u64,
    pub position: u64,
    pub event_time: DateTime<Utc>,
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
    pub fn consent_check(
        &self,
        tenant: &str,
        customer_id: &str,
        channel: Channel,
        purpose: Purpose,
    ) -> ConsentDecision {
        match self.tenants.get(tenant).and_then(|t| t.consent_bits.get(customer_id)) {
            Some(bits) => bits.check(channel, purpose),
            None => ConsentDecision { allowed: false, reason: "unknown_customer" },
        }
    }

    /// Rebuild what the views derive and do not keep in a checkpoint (the contact list's
    /// indexes): called when views are loaded.
    pub fn reindex(&mut self) {
        for t in self.tenants.values_mut() {
            t.contacts = crate::contacts::ContactIndex::rebuild(t.customers.values(), t.automation.last_active.iter());
        }
    }

    /// Fold one event into every read model it concerns. Events must come in position order;
    /// an event at or below the checkpoint is ignored, so replaying a tail twice is harmless.
    pub fn apply(&mut self, ev: &EventEnvelope) {
        if ev.position <= self.position {
            return;
        }
        if !needs_payload(&ev.tenant, &ev.stream, &ev.event_type) {
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            return;
        }
        if is_redacted(&ev.data) {
            // Sealed with a key that was destroyed (an erased person's): only its header counts,
            // as for the live views, which the erasure redacted.
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            return;
        }
        if chronicle_automation::events::EVENT_TYPES.contains(&ev.event_type.as_str()) {
            // On a customer stream these move its version like any event the customer fold skips.
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            match chronicle_automation::AutomationEvent::from_parts(&ev.event_type, &ev.data) {
                Ok(e) => self.tenant_mut(&ev.tenant).automation.apply(&ev.stream, ev.version, ev.position, ev.event_time, e),
                Err(_) => self.undecodable += 1,
            }
            return;
        }
        if chronicle_automation::segment::EVENT_TYPES.contains(&ev.event_type.as_str()) {
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            match chronicle_automation::segment::SegmentEvent::from_parts(&ev.event_type, &ev.data) {
                Ok(e) => self.tenant_mut(&ev.tenant).automation.apply_segment(&ev.stream, ev.version, ev.event_time, e),
                Err(_) => self.undecodable += 1,
            }
            return;
        }
        if chronicle_core::registry::AUDIT_TYPES.contains(&ev.event_type.as_str()) {
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            let entries: Vec<AuditEntry> =
                ev.data.get("entries").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
            let views = self.tenant_mut(&ev.tenant);
            for e in entries {
                let list = views.audit.entry(e.customer.clone()).or_default();
                list.push(e);
                if list.len() > AUDIT_KEEP {
                    list.remove(0);
                }
            }
            return;
        }
        if ev.stream == chronicle_core::registry::SETTINGS_STREAM
            && chronicle_core::registry::SETTINGS_TYPES.contains(&ev.event_type.as_str())
        {
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            let t = self.tenant_mut(&ev.tenant);
            if ev.event_type == "CorsOriginsSet" {
                let origins = ev.data.get("origins").and_then(serde_json::Value::as_array);
                t.cors_origins = origins.into_iter().flatten().filter_map(|o| o.as_str().map(str::to_owned)).collect();
                return;
            }
            let key = ev.data.get("public_key").and_then(serde_json::Value::as_str).map(str::to_owned);
            t.sendgrid_key = if ev.event_type == "SendGridKeySet" { key } else { None };
            return;
        }
        if ev.stream == retention::STREAM && retention::EVENT_TYPES.contains(&ev.event_type.as_str()) {
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            if !self.tenant_mut(&ev.tenant).retention.apply(&ev.event_type, &ev.data) {
                self.undecodable += 1;
            }
            return;
        }
        if chronicle_automation::events::FEEDBACK_TYPES.contains(&ev.event_type.as_str()) {
            self.apply_header(&ev.tenant, &ev.stream, &ev.event_type, ev.version, ev.position, ev.event_time);
            match serde_json::from_value::<chronicle_automation::events::Feedback>(ev.data.clone()) {
                Ok(f) => self.tenant_mut(&ev.tenant).automation.apply_feedback(&ev.stream, &ev.event_type, &f),
                Err(_) => self.undecodable += 1,
            }
            return;
        }
        self.position = ev.position;
        if ev.tenant == SYSTEM_TENANT {
            self.apply_system(ev);
            return;
        }
        let snapshot_every = self.snapshot_every;
        let key = self.index_key.clone();
        let views = self.tenant_mut(&ev.tenant);
        views.events += 1;
        let decoded = if let Some(id) = customer::id_of_stream(&ev.stream) {
            // An older schema is upcast here too, so the live fold sees what a replay sees.
            let data = chronicle_core::upcast::upcast_ref(&ev.event_type, ev.schema_version, &ev.data);
            CustomerEvent::from_parts(&ev.event_type, &data)
                .map(|e| views.apply_customer(id, &e, ev, snapshot_every, key.as_ref()))
        } else if let Some(id) = ev.stream.strip_prefix("deal-") {
            DealEvent::from_parts(&ev.event_type, &ev.data).map(|e| {
                views.automation.note_deal(id, &ev.event_type, ev.event_time);
                views.deals.entry(id.to_owned()).or_insert_with(|| Deal::new(id)).apply(&e, ev.version)
            })
        } else if let Some(id) = ev.stream.strip_prefix("order-") {
            OrderEvent::from_parts(&ev.event_type, &ev.data)
                .map(|e| views.orders.entry(id.to_owned()).or_insert_with(|| Order::new(id)).apply(&e, ev.version))
        } else {
            // needs_payload admits only domain streams; counted rather than trusted.
            Err(chronicle_core::DecodeError { event_type: ev.event_type.clone(), reason: "not a domain stream".into() })
        };
        if decoded.is_err() {
            self.undecodable += 1;
        }
    }

    /// Like [`apply`](Self::apply) for an event whose payload is still text: the payload is
    /// parsed only when a read model uses it (most events, such as page views, only move the
    /// stream's version), which is what makes a rebuild fast.
    pub fn apply_raw(&mut self, raw: &RawEnvelope) {
        self.apply_raw_with(raw, |r| r.decode());
    }

    /// [`apply_raw`](Self::apply_raw), with `decode` making the whole event when a read model
    /// needs it (a store layer that seals payloads opens them there).
    pub fn apply_raw_with<E>(&mut self, raw: &RawEnvelope, decode: impl FnOnce(&RawEnvelope) -> Result<EventEnvelope, E>) {
        let head = Head {
            tenant: &raw.tenant,
            stream: &raw.stream,
            event_type: &raw.event_type,
            version: raw.version,
            position: raw.position,
            event_time: raw.event_time,
        };
        self.apply_lazy(head, || decode(raw));
    }

    /// Fold an event known by its header; `whole` builds the full event, called only when a
    /// read model uses the payload. The commit hook and the rebuild both come through here.
    pub fn apply_lazy<E>(&mut self, head: Head<'_>, whole: impl FnOnce() -> Result<EventEnvelope, E>) {
        if head.position <= self.position {
            return;
        }
        if !needs_payload(head.tenant, head.stream, head.event_type) {
            self.apply_header(head.tenant, head.stream, head.event_type, head.version, head.position, head.event_time);
            return;
        }
        match whole() {
            Ok(ev) => self.apply(&ev),
            Err(_) => {
                self.apply_header(head.tenant, head.stream, head.event_type, head.version, head.position, head.event_time);
                self.undecodable += 1;
            }
        }
    }

    /// The part of applying an event that needs no payload: the position, the tenant's event
    /// count, a customer stream's version (which commands use for optimistic concurrency), and
    /// when the customer was last active (for campaigns that react to inactivity).
    fn apply_header(&mut self, tenant: &str, stream: &str, event_type: &str, version: u64, position: u64, at: DateTime<Utc>) {
        self.position = position;
        if tenant == SYSTEM_TENANT {
            return;
        }
        let snapshot_every = self.snapshot_every;
        let views = self.tenant_mut(tenant);
        views.events += 1;
        if let Some(id) = customer::id_of_stream(stream) {
            match views.customers.get_mut(id) {
                Some(c) => c.version = version,
                None => {
                    let mut c = Customer::new(id);
                    c.version = version;
                    views.customers.insert(id.to_owned(), c);
                }
            }
            views.track_customer_stream(id, version, at, snapshot_every);
            if event_type == "ActivityTracked" {
                views.automation.note_activity(id, at);
                views.contacts.note_activity(id, at);
            }
        }
    }

    /// The tenant's views, created on first use; the hot path (a known tenant) allocates nothing.
    fn tenant_mut(&mut self, tenant: &str) -> &mut TenantViews {
        if !self.tenants.contains_key(tenant) {
            self.tenants.insert(tenant.to_owned(), TenantViews::default());
        }
        self.tenants.get_mut(tenant).expect("inserted above")
    }

    fn apply_system(&mut self, ev: &EventEnvelope) {
        match ev.event_type.as_str() {
            "ApiKeyCreated" => {
                match serde_json::from_value::<ApiKey>(ev.data.clone()) {
                    Ok(k) => {
                        self.api_keys.insert(k.id.clone(), k);
                    }
                    Err(_) => self.undecodable += 1,
                }
                return;
            }
            "ApiKeyRevoked" => {
                let id = ev.data.get("id").and_then(|v| v.as_str()).unwrap_or_default();
                if let Some(k) = self.api_keys.get_mut(id) {
                    k.revoked_at.get_or_insert(ev.event_time);
                }
                return;
            }
            "UserCreated" => {
                match serde_json::from_value::<User>(ev.data.clone()) {
                    Ok(u) => {
                        self.users.insert(u.id.clone(), u);
                    }
                    Err(_) => self.undecodable += 1,
                }
                return;
            }
            "UserDeactivated" | "UserReactivated" | "UserRoleChanged" => {
                let id = ev.data.get("id").and_then(|v| v.as_str()).unwrap_or_default();
                let role = ev.data.get("role").and_then(|r| serde_json::from_value::<Role>(r.clone()).ok());
                let Some(u) = self.users.get_mut(id) else {
                    self.undecodable += 1;
                    return;
                };
                match (ev.event_type.as_str(), role) {
                    ("UserDeactivated", _) => u.deactivated_at = Some(ev.event_time),
                    ("UserReactivated", _) => u.deactivated_at = None,
                    (_, Some(role)) => u.role = role,
                    (_, None) => self.undecodable += 1,
                }
                return;
            }
            "SessionStarted" => {
                match serde_json::from_value::<Session>(ev.data.clone()) {
                    Ok(s) => {
                        // Sessions past their expiry are dropped here, by the event's time, so
                        // the fold stays a function of the log.
                        self.sessions.retain(|_, old| old.expires_at > ev.event_time);
                        self.sessions.insert(s.digest.clone(), s);
                    }
                    Err(_) => self.undecodable += 1,
                }
                return;
            }
            "SessionEnded" => {
                let digest = ev.data.get("digest").and_then(|v| v.as_str()).unwrap_or_default();
                self.sessions.remove(digest);
                return;
            }
            "TenantCreated" => {}
            _ => return,
        }
        let name = ev.data.get("name").and_then(|v| v.as_str());
        let api = ev.data.get("api_key_sha256").and_then(|v| v.as_str());
        let write = ev.data.get("write_key_sha256").and_then(|v| v.as_str());
        if let (Some(name), Some(api), Some(write)) = (name, api, write) {
            self.keys.insert(api.to_owned(), KeyRecord { tenant: name.to_owned(), kind: KeyKind::Api, role: Role::Admin });
            self.keys.insert(write.to_owned(), KeyRecord { tenant: name.to_owned(), kind: KeyKind::Write, role: Role::Ingest });
            self.tenants.entry(name.to_owned()).or_default();
        } else {
            self.undecodable += 1;
        }
    }
}

/// The payload an event reads as when it was sealed with a key that no longer exists.
fn is_redacted(data: &serde_json::Value) -> bool {
    matches!(data, serde_json::Value::Object(m) if m.len() == 1 && m.get("redacted") == Some(&serde_json::Value::Bool(true)))
}

/// Whether any read model uses this event's payload (else only its header counts). An owned
/// type counts only where its owner writes it (see `chronicle_core::registry`): a
/// `MessageQueued` on a stream of one's own, say, is not a message.
fn needs_payload(tenant: &str, stream: &str, event_type: &str) -> bool {
    if !chronicle_core::registry::in_place(tenant, stream, event_type) {
        return false;
    }
    if tenant == SYSTEM_TENANT {
        return chronicle_core::registry::SYSTEM_TYPES.contains(&event_type);
    }
    if chronicle_automation::events::EVENT_TYPES.contains(&event_type)
        || chronicle_automation::segment::EVENT_TYPES.contains(&event_type)
        || event_type == "MessageBounced"
        || chronicle_core::registry::AUDIT_TYPES.contains(&event_type)
    {
        return true;
    }
    if stream == retention::STREAM {
        retention::EVENT_TYPES.contains(&event_type)
    } else if stream == chronicle_core::registry::SETTINGS_STREAM {
        chronicle_core::registry::SETTINGS_TYPES.contains(&event_type)
    } else if customer::id_of_stream(stream).is_some() {
        customer::EVENT_TYPES.contains(&event_type)
    } else if stream.starts_with("deal-") {
        deal::EVENT_TYPES.contains(&event_type)
    } else if stream.starts_with("order-") {
        order::EVENT_TYPES.contains(&event_type)
    } else {
        false
    }
}

impl TenantViews {
    /// The customer a (normalised) address belongs to.
    pub fn email_owner(&self, key: Option<&IndexKey>, email: &str) -> Option<&String> {
        self.emails.get(&*email_entry(key, email))
    }

    fn apply_customer(&mut self, id: &str, e: &CustomerEvent, ev: &EventEnvelope, snapshot_every: u64, key: Option<&IndexKey>) {
        if !self.customers.contains_key(id) {
            self.customers.insert(id.to_owned(), Customer::new(id));
        }
        let c = self.customers.get_mut(id).expect("inserted above");
        let old_email = c.email.clone();
        c.apply(e, ev.version, ev.event_time);
        self.contacts.update(c);
        let bits = ConsentBits::of(c);
        match self.consent_bits.get_mut(id) {
            Some(b) => *b = bits,
            None => {
                self.consent_bits.insert(id.to_owned(), bits);
            }
        }
        if old_email != c.email {
            if let Some(old) = &old_email {
                // An erased duplicate's address may point at its survivor by now: it goes too.
                let erased = matches!(e, CustomerEvent::CustomerErased { .. });
                let entry = email_entry(key, old);
                if erased || self.emails.get(&*entry).map(String::as_str) == Some(id) {
                    self.emails.remove(&*entry);
                }
            }
            if let Some(new) = &c.email {
                self.emails.insert(email_entry(key, new).into_owned(), id.to_owned());
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
            CustomerEvent::IdentityLinked { anonymous_id } => {
                self.identities.insert(anonymous_id.clone(), id.to_owned());
            }
            CustomerEvent::CustomersMerged { merged, also, anonymous_ids, consents, .. } => {
                for a in anonymous_ids {
                    self.identities.insert(a.clone(), id.to_owned());
                }
                // The duplicates' addresses now find the survivor (and stay taken).
                let gone: Vec<&String> = std::iter::once(merged).chain(also).collect();
                for m in &gone {
                    if let Some(e) = self.customers.get(m.as_str()).and_then(|c| c.email.as_deref()) {
                        let entry = email_entry(key, e).into_owned();
                        if self.emails.get(&entry).is_some_and(|owner| gone.contains(&owner)) {
                            self.emails.insert(entry, id.to_owned());
                        }
                    }
                }
                // Carried decisions join the survivor's ledger with their original evidence.
                let history = self.consent_history.entry(id.to_owned()).or_default();
                for c in consents {
                    history.push(ConsentEntry {
                        channel: c.channel,
                        purpose: c.purpose,
                        granted: c.granted,
                        source: format!("merged from {merged}: {}", c.source),
                        legal_basis: c.legal_basis.clone(),
                        proof: c.proof.clone(),
                        event_id: ev.id,
                        event_time: c.at,
                        position: ev.position,
                    });
                }
            }
            CustomerEvent::CustomerErased { .. } => {
                // Everything folded from the person's (now unreadable) events goes: the consent
                // ledger, their anonymous identities, the time-travel copies, their messages and
                // enrolments — so the live views equal a replay after the keys are destroyed.
                self.consent_history.remove(id);
                self.identities.retain(|_, owner| owner != id);
                self.snapshots.remove(id);
                self.automation.forget(id);
            }
            _ => {}
        }
        self.track_customer_stream(id, ev.version, ev.event_time, snapshot_every);
    }

    /// Time-travel bookkeeping for every event of a customer stream (whatever its type, since
    /// every event moves the stream's version): the latest event time so far, each block's
    /// earliest event time, and a snapshot of the profile at every block boundary.
    fn track_customer_stream(&mut self, id: &str, version: u64, at: DateTime<Utc>, snapshot_every: u64) {
        let max_t = match self.max_event_time.get_mut(id) {
            Some(t) => {
                if at > *t {
                    *t = at;
                }
                *t
            }
            None => {
                self.max_event_time.insert(id.to_owned(), at);
                at
            }
        };
        let snapshot_every = snapshot_every.max(1);
        let block = ((version.max(1) - 1) / snapshot_every) as usize;
        let blocks = match self.time_blocks.get_mut(id) {
            Some(b) => b,
            None => self.time_blocks.entry(id.to_owned()).or_default(),
        };
        // Versions are dense, so a block is at most one past the last; a version far beyond
        // (not one a store assigns) is not tracked rather than allocated for.
        if block <= blocks.len() {
            if blocks.len() == block {
                blocks.push(DateTime::<Utc>::MAX_UTC);
            }
            if at < blocks[block] {
                blocks[block] = at;
            }
        }
        if version.is_multiple_of(snapshot_every) {
            if let Some(c) = self.customers.get(id).filter(|c| c.exists && c.status != customer::CustomerStatus::Erased)
            {
                let snap = Snapshot { version, max_event_time: max_t, state: c.clone() };
                self.snapshots.entry(id.to_owned()).or_default().push(snap);
            }
        }
    }

    /// The stream versions an as-of query at `t` must read on top of `base` (the snapshot it
    /// starts from): the version ranges `[from, to]` of the blocks holding an event that
    /// happened by `t`.
    pub fn as_of_ranges(
        &self,
        customer_id: &str,
        base: Option<&Snapshot>,
        t: DateTime<Utc>,
        snapshot_every: u64,
    ) -> Vec<(u64, u64)> {
        let after = base.map_or(0, |s| s.version);
        let Some(blocks) = self.time_blocks.get(customer_id) else { return Vec::new() };
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (b, min) in blocks.iter().enumerate() {
            let (from, to) = (b as u64 * snapshot_every + 1, (b as u64 + 1) * snapshot_every);
            if *min > t || to <= after {
                continue;
            }
            let from = from.max(after + 1);
            match ranges.last_mut() {
                Some(last) if last.1 + 1 == from => last.1 = to,
                _ => ranges.push((from, to)),
            }
        }
        ranges
    }

    /// The latest snapshot usable for an as-of query at `t`.
    pub fn snapshot_for(&self, customer_id: &str, t: DateTime<Utc>) -> Option<&Snapshot> {
        self.snapshots.get(customer_id)?.iter().rev().find(|s| s.max_event_time <= t)
    }

    /// The deal pipeline: per open stage, the count and summed amount; plus won and lost.
    pub fn pipeline(&self) -> Pipeline {
        let mut p = Pipeline {
            won: StageSummary { stage: "won".into(), ..Default::default() },
            lost: StageSummary { stage: "lost".into(), ..Default::default() },
            ..Default::default()
        };
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
            bucket.amount = bucket.amount.saturating_add(d.amount.unwrap_or(0));
        }
        p
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StageSummary {
    pub stage: String,
    pub count: u64,
    pub amount: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Pipeline {
    pub stages: Vec<StageSummary>,
    pub won: StageSummary,
    pub lost: StageSummary,
}

/// Fold a customer's events (already filtered to those that count) onto an optional snapshot:
/// the state as of an instant.
pub fn fold_customer<'a>(
    id: &str,
    base: Option<&Snapshot>,
    events: impl IntoIterator<Item = &'a EventEnvelope>,
) -> Customer {
    let mut c = base.map(|s| s.state.clone()).unwrap_or_else(|| Customer::new(id));
    for ev in events {
        fold_one(&mut c, &ev.event_type, ev.version, || Some(ev.clone()));
    }
    c
}

/// [`fold_customer`] over events as stored: only the customer's own events are opened (`open`,
/// for a sealing layer) and parsed; the rest (page views…) only move the version.
pub fn fold_customer_raw(
    id: &str,
    base: Option<&Snapshot>,
    events: Vec<RawEnvelope>,
    open: impl Fn(&mut RawEnvelope),
) -> Customer {
    let mut c = base.map(|s| s.state.clone()).unwrap_or_else(|| Customer::new(id));
    for mut raw in events {
        let (event_type, version) = (raw.event_type.clone(), raw.version);
        fold_one(&mut c, &event_type, version, || {
            open(&mut raw);
            raw.decode().ok()
        });
    }
    c
}

fn fold_one(c: &mut Customer, event_type: &str, version: u64, whole: impl FnOnce() -> Option<EventEnvelope>) {
    let decoded = if customer::EVENT_TYPES.contains(&event_type) {
        whole().and_then(|ev| CustomerEvent::from_parts(&ev.event_type, &ev.data).ok().map(|e| (e, ev.event_time)))
    } else {
        None
    };
    match decoded {
        Some((e, at)) => c.apply(&e, version, at),
        // Other events on the stream (page views…) only move its version.
        None => c.version = version,
    }
}

#[cfg(test)]
mod tests;
