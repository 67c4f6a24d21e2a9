//! The Customer aggregate: profile, tags, notes, owner, lifecycle stage, consent and
//! preferences, and status (active, deactivated, erased).
//!
//! `decide` checks the rules and returns events; `apply` (evolve) folds one event into the
//! state and cannot fail. Rules: e-mail unique within a tenant (checked through
//! [`EmailIndex`], supplied by the caller); nothing but reads on an erased customer; a consent
//! grant needs a source; lifecycle stages only move forward along [`LifecycleStage::PATH`]; a
//! deactivated customer keeps its history, may withdraw consent, get notes, be reactivated or
//! erased, and nothing else.
//!
//! Merging two known customers (duplicates of one person) is two events: the duplicate records
//! `CustomerMergedInto` (it is frozen from then on, its id resolving to the survivor) and the
//! survivor records `CustomersMerged`, carrying what it took over, so each stream folds on its
//! own. The survivor is the customer the merge names (for Segment's `alias`, the `userId`).
//! What the survivor already has wins; it takes the duplicate's e-mail, phone, owner and traits
//! only where it has none, tags, groups, notes and anonymous ids are unioned, the later
//! lifecycle stage is kept, and per channel and purpose the more recent consent decision wins
//! (it is the person's latest word, with its original source, time and proof).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const EVENT_TYPES: &[&str] = &[
    "CustomerRegistered",
    "CustomerProfileUpdated",
    "CustomerTagged",
    "CustomerUntagged",
    "NoteAdded",
    "OwnerAssigned",
    "LifecycleStageChanged",
    "ConsentGranted",
    "ConsentRevoked",
    "PreferencesUpdated",
    "CustomerDeactivated",
    "CustomerReactivated",
    "CustomerErased",
    "IdentityLinked",
    "CustomerGroupJoined",
    "CustomerMergedInto",
    "CustomersMerged",
];

/// The stream that holds a customer's events.
pub fn stream_of(customer_id: &str) -> String {
    format!("customer-{customer_id}")
}

/// The customer id of a customer stream, if it is one.
pub fn id_of_stream(stream: &str) -> Option<&str> {
    stream.strip_prefix("customer-")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
    InApp,
    Phone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Marketing,
    Transactional,
    Analytics,
    Profiling,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::InApp => "in_app",
            Channel::Phone => "phone",
        }
    }
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Marketing => "marketing",
            Purpose::Transactional => "transactional",
            Purpose::Analytics => "analytics",
            Purpose::Profiling => "profiling",
        }
    }
}

/// Lifecycle stages, in the only order a customer may move through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStage {
    Subscriber,
    Lead,
    Mql,
    Sql,
    Opportunity,
    Customer,
    Evangelist,
}

impl LifecycleStage {
    pub const PATH: [LifecycleStage; 7] = [
        LifecycleStage::Subscriber,
        LifecycleStage::Lead,
        LifecycleStage::Mql,
        LifecycleStage::Sql,
        LifecycleStage::Opportunity,
        LifecycleStage::Customer,
        LifecycleStage::Evangelist,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CustomerStatus {
    #[default]
    Active,
    Deactivated,
    Erased,
    /// A duplicate merged into another customer (`merged_into`); frozen.
    Merged,
}

/// One consent decision as recorded (grant or revocation) with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub channel: Channel,
    pub purpose: Purpose,
    pub source: String,
    pub legal_basis: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Value>,
}

/// A consent decision as a command asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConsentInput {
    pub channel: Channel,
    pub purpose: Purpose,
    pub granted: bool,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub legal_basis: Option<String>,
    #[serde(default)]
    pub proof: Option<Value>,
}

/// The current consent for one channel and purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConsentState {
    pub channel: Channel,
    pub purpose: Purpose,
    pub granted: bool,
    pub source: String,
    pub legal_basis: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Value>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuietHours {
    /// "HH:MM" local time.
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FrequencyCap {
    pub max: u32,
    /// A duration such as "1d" or "12h".
    pub per: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Preferences {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_channels: Option<Vec<Channel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_cap: Option<FrequencyCap>,
}

/// One changed field: `email`, `phone` or `traits.<name>`; `new: null` removes a trait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub old: Value,
    pub new: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Note {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CustomerEvent {
    CustomerRegistered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
        #[serde(default)]
        traits: Map<String, Value>,
    },
    CustomerProfileUpdated {
        changes: BTreeMap<String, Change>,
    },
    CustomerTagged {
        tag: String,
    },
    CustomerUntagged {
        tag: String,
    },
    NoteAdded {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        author: Option<String>,
    },
    OwnerAssigned {
        #[serde(default)]
        from: Option<String>,
        to: String,
    },
    LifecycleStageChanged {
        #[serde(default)]
        from: Option<LifecycleStage>,
        to: LifecycleStage,
    },
    ConsentGranted(ConsentRecord),
    ConsentRevoked(ConsentRecord),
    PreferencesUpdated(Preferences),
    CustomerDeactivated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    CustomerReactivated {},
    CustomerErased {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The anonymous identities linked to the person, whose data goes with theirs (kept on
        /// the erased record, so what belongs to them can still be found and destroyed).
        #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
        anonymous_ids: BTreeSet<String>,
    },
    /// An anonymous identity (Segment `anonymousId`) is this customer: its history is theirs.
    IdentityLinked {
        anonymous_id: String,
    },
    /// The customer belongs to an account (company), with the account's traits as sent.
    CustomerGroupJoined {
        group_id: String,
        #[serde(default)]
        traits: Map<String, Value>,
    },
    /// This customer was a duplicate and now lives on as `survivor`: its record is frozen.
    CustomerMergedInto {
        survivor: String,
    },
    /// This customer absorbed the duplicate `merged` (and the customers `merged` had absorbed
    /// before, `also`); the fields are what it took over.
    CustomersMerged {
        merged: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
        #[serde(default)]
        traits: Map<String, Value>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        anonymous_ids: Vec<String>,
        #[serde(default)]
        consents: Vec<ConsentState>,
        #[serde(default)]
        groups: BTreeMap<String, Map<String, Value>>,
        #[serde(default)]
        notes: Vec<Note>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lifecycle_stage: Option<LifecycleStage>,
    },
}

impl CustomerEvent {
    /// The event's catalogue name and its JSON payload.
    pub fn to_parts(&self) -> (String, Value) {
        crate::to_parts(self)
    }

    /// Decode a stored (already upcast) event; unknown types are an error the caller may skip.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<Self, crate::DecodeError> {
        crate::from_parts(event_type, data)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CustomerCommand {
    Register {
        email: Option<String>,
        phone: Option<String>,
        traits: Map<String, Value>,
        consents: Vec<ConsentInput>,
    },
    UpdateProfile {
        email: Option<String>,
        phone: Option<String>,
        traits: Map<String, Value>,
    },
    Tag {
        tag: String,
    },
    Untag {
        tag: String,
    },
    AddNote {
        text: String,
        author: Option<String>,
    },
    AssignOwner {
        owner: String,
    },
    ChangeStage {
        to: LifecycleStage,
    },
    SetConsent(ConsentInput),
    UpdatePreferences(Preferences),
    Deactivate {
        reason: Option<String>,
    },
    Reactivate,
    Erase {
        reason: Option<String>,
    },
    LinkIdentity {
        anonymous_id: String,
    },
    JoinGroup {
        group_id: String,
        traits: Map<String, Value>,
    },
    /// Mark this customer as a duplicate of `survivor` (the first half of a merge).
    MergeInto {
        survivor: String,
    },
    /// Take over the duplicate `other` (its state after `MergeInto`; the second half).
    Absorb {
        other: Box<Customer>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CustomerError {
    #[error("customer already exists")]
    AlreadyExists,
    #[error("customer not found")]
    NotFound,
    #[error("customer has been erased; no command is accepted")]
    Erased,
    #[error("customer is deactivated; reactivate it first")]
    Deactivated,
    #[error("e-mail address is already used by another customer")]
    EmailTaken,
    #[error("invalid e-mail address")]
    InvalidEmail,
    #[error("invalid phone number")]
    InvalidPhone,
    #[error("a consent grant needs a source")]
    ConsentSourceMissing,
    #[error("lifecycle stage cannot move from {from:?} to {to:?}")]
    InvalidStageTransition { from: LifecycleStage, to: LifecycleStage },
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("trait name {0:?} is reserved or invalid")]
    InvalidTrait(String),
    #[error("customer was merged into {into}; send commands there")]
    Merged { into: String },
    #[error("cannot merge: {0}")]
    InvalidMerge(&'static str),
}

/// Who, if anyone, holds an e-mail address in this tenant (the unique e-mail index).
pub trait EmailIndex {
    fn owner_of(&self, email: &str) -> Option<String>;
}

/// No e-mail is held by anyone (for tests and replays).
pub struct NoEmails;
impl EmailIndex for NoEmails {
    fn owner_of(&self, _: &str) -> Option<String> {
        None
    }
}

/// The Customer aggregate's state, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub exists: bool,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub traits: Map<String, Value>,
    pub lifecycle_stage: Option<LifecycleStage>,
    pub tags: BTreeSet<String>,
    pub owner: Option<String>,
    pub status: CustomerStatus,
    /// Current consent per `"channel:purpose"`.
    pub consents: BTreeMap<String, ConsentState>,
    pub preferences: Preferences,
    pub notes: Vec<Note>,
    /// Anonymous identities linked to this customer.
    #[serde(default)]
    pub anonymous_ids: BTreeSet<String>,
    /// Accounts (Segment groups) the customer belongs to, with the traits last sent for each.
    #[serde(default)]
    pub groups: BTreeMap<String, Map<String, Value>>,
    /// The survivor this duplicate was merged into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    /// Customers merged into this one (directly or through an earlier merge).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub merged_ids: BTreeSet<String>,
    pub version: u64,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Normalise an e-mail address (trim, lower-case) or reject it.
pub fn normalize_email(raw: &str) -> Result<String, CustomerError> {
    let e = raw.trim().to_lowercase();
    let valid = match e.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !e.contains(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    };
    if valid && e.len() <= 254 {
        Ok(e)
    } else {
        Err(CustomerError::InvalidEmail)
    }
}

/// Normalise a phone number to `+digits` / `digits` (spaces, dashes, dots and brackets dropped).
pub fn normalize_phone(raw: &str) -> Result<String, CustomerError> {
    let t = raw.trim();
    let (plus, rest) = match t.strip_prefix('+') {
        Some(r) => ("+", r),
        None => ("", t),
    };
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(CustomerError::InvalidPhone),
        }
    }
    if (5..=15).contains(&digits.len()) {
        Ok(format!("{plus}{digits}"))
    } else {
        Err(CustomerError::InvalidPhone)
    }
}

fn consent_event(input: ConsentInput) -> Result<CustomerEvent, CustomerError> {
    let source = input.source.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let record = |source: String| ConsentRecord {
        channel: input.channel,
        purpose: input.purpose,
        source,
        legal_basis: input.legal_basis.clone().unwrap_or_else(|| "consent".into()),
        proof: input.proof.clone(),
    };
    if input.granted {
        Ok(CustomerEvent::ConsentGranted(record(source.ok_or(CustomerError::ConsentSourceMissing)?)))
    } else {
        Ok(CustomerEvent::ConsentRevoked(record(source.unwrap_or_else(|| "unspecified".into()))))
    }
}

fn check_traits(traits: &Map<String, Value>) -> Result<(), CustomerError> {
    for k in traits.keys() {
        if k.is_empty() || k.len() > 128 || k == "email" || k == "phone" {
            return Err(CustomerError::InvalidTrait(k.clone()));
        }
    }
    Ok(())
}

impl Customer {
    pub fn new(id: impl Into<String>) -> Self {
        Customer { id: id.into(), ..Default::default() }
    }

    /// Decide what a command means for this customer, without changing it.
    pub fn decide(&self, cmd: CustomerCommand, emails: &dyn EmailIndex) -> Result<Vec<CustomerEvent>, CustomerError> {
        use CustomerCommand as C;
        use CustomerEvent as E;
        if let C::Register { email, phone, traits, consents } = cmd {
            if self.exists {
                return Err(CustomerError::AlreadyExists);
            }
            check_traits(&traits)?;
            let email = email.as_deref().map(normalize_email).transpose()?;
            if let Some(e) = &email {
                if emails.owner_of(e).is_some_and(|o| o != self.id) {
                    return Err(CustomerError::EmailTaken);
                }
            }
            let phone = phone.as_deref().map(normalize_phone).transpose()?;
            let mut out = vec![E::CustomerRegistered { email, phone, traits }];
            for c in consents {
                out.push(consent_event(c)?);
            }
            return Ok(out);
        }
        if !self.exists {
            return Err(CustomerError::NotFound);
        }
        if self.status == CustomerStatus::Erased {
            return Err(CustomerError::Erased);
        }
        if let Some(into) = &self.merged_into {
            // The duplicate is frozen; it may still be erased (its stream holds personal data),
            // and marking it again for the same survivor is a no-op (a resumed merge).
            match &cmd {
                C::Erase { .. } => {}
                C::MergeInto { survivor } if survivor == into => return Ok(vec![]),
                _ => return Err(CustomerError::Merged { into: into.clone() }),
            }
        }
        let deactivated = self.status == CustomerStatus::Deactivated;
        let allowed_when_deactivated = matches!(
            &cmd,
            C::Reactivate
                | C::Erase { .. }
                | C::AddNote { .. }
                | C::Deactivate { .. }
                | C::MergeInto { .. }
                | C::SetConsent(ConsentInput { granted: false, .. })
        );
        if deactivated && !allowed_when_deactivated {
            return Err(CustomerError::Deactivated);
        }
        Ok(match cmd {
            C::Register { .. } => unreachable!("handled above"),
            C::UpdateProfile { email, phone, traits } => {
                check_traits(&traits)?;
                let mut changes = BTreeMap::new();
                if let Some(raw) = email {
                    let e = normalize_email(&raw)?;
                    if self.email.as_deref() != Some(e.as_str()) {
                        if emails.owner_of(&e).is_some_and(|o| o != self.id) {
                            return Err(CustomerError::EmailTaken);
                        }
                        changes.insert("email".into(), Change { old: opt_str(&self.email), new: Value::String(e) });
                    }
                }
                if let Some(raw) = phone {
                    let p = normalize_phone(&raw)?;
                    if self.phone.as_deref() != Some(p.as_str()) {
                        changes.insert("phone".into(), Change { old: opt_str(&self.phone), new: Value::String(p) });
                    }
                }
                for (k, new) in traits {
                    let old = self.traits.get(&k).cloned().unwrap_or(Value::Null);
                    if old != new {
                        changes.insert(format!("traits.{k}"), Change { old, new });
                    }
                }
                if changes.is_empty() {
                    vec![]
                } else {
                    vec![E::CustomerProfileUpdated { changes }]
                }
            }
            C::Tag { tag } => {
                let tag = non_empty(tag, "tag")?;
                if self.tags.contains(&tag) {
                    vec![]
                } else {
                    vec![E::CustomerTagged { tag }]
                }
            }
            C::Untag { tag } => {
                if self.tags.contains(&tag) {
                    vec![E::CustomerUntagged { tag }]
                } else {
                    vec![]
                }
            }
            C::AddNote { text, author } => vec![E::NoteAdded { text: non_empty(text, "note")?, author }],
            C::AssignOwner { owner } => {
                let owner = non_empty(owner, "owner")?;
                if self.owner.as_deref() == Some(owner.as_str()) {
                    vec![]
                } else {
                    vec![E::OwnerAssigned { from: self.owner.clone(), to: owner }]
                }
            }
            C::ChangeStage { to } => match self.lifecycle_stage {
                Some(from) if from == to => vec![],
                Some(from) if to < from => return Err(CustomerError::InvalidStageTransition { from, to }),
                from => vec![E::LifecycleStageChanged { from, to }],
            },
            C::SetConsent(input) => vec![consent_event(input)?],
            C::UpdatePreferences(p) => {
                if p == self.preferences {
                    vec![]
                } else {
                    vec![E::PreferencesUpdated(p)]
                }
            }
            C::Deactivate { reason } => {
                if deactivated {
                    vec![]
                } else {
                    vec![E::CustomerDeactivated { reason }]
                }
            }
            C::Reactivate => {
                if deactivated {
                    vec![E::CustomerReactivated {}]
                } else {
                    vec![]
                }
            }
            C::Erase { reason } => vec![E::CustomerErased { reason, anonymous_ids: self.anonymous_ids.clone() }],
            C::JoinGroup { group_id, traits } => {
                let group_id = non_empty(group_id, "group id")?;
                if self.groups.get(&group_id) == Some(&traits) {
                    vec![]
                } else {
                    vec![E::CustomerGroupJoined { group_id, traits }]
                }
            }
            C::LinkIdentity { anonymous_id } => {
                let anonymous_id = non_empty(anonymous_id, "anonymous id")?;
                if self.anonymous_ids.contains(&anonymous_id) {
                    vec![]
                } else {
                    vec![E::IdentityLinked { anonymous_id }]
                }
            }
            C::MergeInto { survivor } => {
                if survivor == self.id {
                    return Err(CustomerError::InvalidMerge("a customer cannot be merged into itself"));
                }
                vec![E::CustomerMergedInto { survivor }]
            }
            C::Absorb { other } => self.absorb(&other)?.into_iter().collect(),
        })
    }

    /// What the survivor takes over from the duplicate `other` (None: already absorbed).
    fn absorb(&self, other: &Customer) -> Result<Option<CustomerEvent>, CustomerError> {
        if other.id == self.id {
            return Err(CustomerError::InvalidMerge("a customer cannot be merged into itself"));
        }
        if self.merged_ids.contains(&other.id) {
            return Ok(None);
        }
        if !other.exists {
            return Err(CustomerError::InvalidMerge("the customer to merge does not exist"));
        }
        if other.status == CustomerStatus::Erased {
            return Err(CustomerError::InvalidMerge("the customer to merge has been erased"));
        }
        if other.merged_into.as_deref() != Some(self.id.as_str()) {
            return Err(CustomerError::InvalidMerge("the duplicate must be marked as merged into this customer first"));
        }
        let consents = other
            .consents
            .iter()
            .filter(|(k, theirs)| self.consents.get(*k).is_none_or(|ours| theirs.at > ours.at))
            .map(|(_, s)| s.clone())
            .collect();
        Ok(Some(CustomerEvent::CustomersMerged {
            merged: other.id.clone(),
            also: other.merged_ids.iter().cloned().collect(),
            email: if self.email.is_none() { other.email.clone() } else { None },
            phone: if self.phone.is_none() { other.phone.clone() } else { None },
            traits: other
                .traits
                .iter()
                .filter(|(k, _)| !self.traits.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tags: other.tags.difference(&self.tags).cloned().collect(),
            anonymous_ids: other.anonymous_ids.difference(&self.anonymous_ids).cloned().collect(),
            consents,
            groups: other
                .groups
                .iter()
                .filter(|(k, _)| !self.groups.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            notes: other.notes.clone(),
            owner: if self.owner.is_none() { other.owner.clone() } else { None },
            lifecycle_stage: other
                .lifecycle_stage
                .filter(|theirs| self.lifecycle_stage.is_none_or(|ours| *theirs > ours)),
        }))
    }

    /// Fold one event into the state (evolve). Never fails: events are facts.
    pub fn apply(&mut self, ev: &CustomerEvent, version: u64, at: DateTime<Utc>) {
        use CustomerEvent as E;
        self.version = version;
        self.updated_at = Some(at);
        match ev {
            E::CustomerRegistered { email, phone, traits } => {
                self.exists = true;
                self.email = email.clone();
                self.phone = phone.clone();
                self.traits = traits.clone();
                self.created_at = Some(at);
            }
            E::CustomerProfileUpdated { changes } => {
                for (field, ch) in changes {
                    match field.as_str() {
                        "email" => self.email = ch.new.as_str().map(str::to_owned),
                        "phone" => self.phone = ch.new.as_str().map(str::to_owned),
                        f => {
                            if let Some(name) = f.strip_prefix("traits.") {
                                if ch.new.is_null() {
                                    self.traits.remove(name);
                                } else {
                                    self.traits.insert(name.to_owned(), ch.new.clone());
                                }
                            }
                        }
                    }
                }
            }
            E::CustomerTagged { tag } => {
                self.tags.insert(tag.clone());
            }
            E::CustomerUntagged { tag } => {
                self.tags.remove(tag);
            }
            E::NoteAdded { text, author } => self.notes.push(Note { text: text.clone(), author: author.clone(), at }),
            E::OwnerAssigned { to, .. } => self.owner = Some(to.clone()),
            E::LifecycleStageChanged { to, .. } => self.lifecycle_stage = Some(*to),
            E::ConsentGranted(r) | E::ConsentRevoked(r) => {
                let granted = matches!(ev, E::ConsentGranted(_));
                self.consents.insert(
                    consent_key(r.channel, r.purpose).to_owned(),
                    ConsentState {
                        channel: r.channel,
                        purpose: r.purpose,
                        granted,
                        source: r.source.clone(),
                        legal_basis: r.legal_basis.clone(),
                        proof: r.proof.clone(),
                        at,
                    },
                );
            }
            E::PreferencesUpdated(p) => self.preferences = p.clone(),
            E::IdentityLinked { anonymous_id } => {
                self.anonymous_ids.insert(anonymous_id.clone());
            }
            E::CustomerGroupJoined { group_id, traits } => {
                self.groups.insert(group_id.clone(), traits.clone());
            }
            E::CustomerMergedInto { survivor } => {
                self.status = CustomerStatus::Merged;
                self.merged_into = Some(survivor.clone());
            }
            E::CustomersMerged {
                merged,
                also,
                email,
                phone,
                traits,
                tags,
                anonymous_ids,
                consents,
                groups,
                notes,
                owner,
                lifecycle_stage,
            } => {
                self.merged_ids.insert(merged.clone());
                self.merged_ids.extend(also.iter().cloned());
                if self.email.is_none() {
                    self.email = email.clone();
                }
                if self.phone.is_none() {
                    self.phone = phone.clone();
                }
                for (k, v) in traits {
                    self.traits.entry(k.clone()).or_insert_with(|| v.clone());
                }
                self.tags.extend(tags.iter().cloned());
                self.anonymous_ids.extend(anonymous_ids.iter().cloned());
                for c in consents {
                    self.consents.insert(consent_key(c.channel, c.purpose).to_owned(), c.clone());
                }
                for (k, v) in groups {
                    self.groups.entry(k.clone()).or_insert_with(|| v.clone());
                }
                self.notes.extend(notes.iter().cloned());
                self.notes.sort_by_key(|n| n.at);
                if self.owner.is_none() {
                    self.owner = owner.clone();
                }
                if lifecycle_stage.is_some() && *lifecycle_stage > self.lifecycle_stage {
                    self.lifecycle_stage = *lifecycle_stage;
                }
            }
            E::CustomerDeactivated { .. } => self.status = CustomerStatus::Deactivated,
            E::CustomerReactivated {} => self.status = CustomerStatus::Active,
            E::CustomerErased { anonymous_ids, .. } => {
                // Erasure redacts the read model; crypto-shredding of the log is the privacy layer's.
                let id = std::mem::take(&mut self.id);
                *self = Customer {
                    id,
                    exists: true,
                    version,
                    status: CustomerStatus::Erased,
                    updated_at: Some(at),
                    anonymous_ids: anonymous_ids.clone(),
                    ..Default::default()
                };
            }
        }
    }

    /// The consent decision for one channel and purpose right now.
    ///
    /// Marketing, analytics and profiling need an explicit, unrevoked grant (opt-in).
    /// Transactional messages rest on the contract and are allowed unless explicitly revoked.
    pub fn consent_check(&self, channel: Channel, purpose: Purpose) -> ConsentDecision {
        ConsentBits::of(self).check(channel, purpose)
    }
}

/// Everything a consent decision reads, packed into a few bytes: per channel and purpose
/// whether a decision was recorded and whether it grants, plus the customer's status. The send
/// path keeps one of these per customer, so a check touches little memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentBits {
    recorded: u32,
    granted: u32,
    /// 0: no such customer, 1: active, 2: deactivated, 3: erased, 4: merged into another.
    status: u8,
}

impl ConsentBits {
    fn bit(channel: Channel, purpose: Purpose) -> u32 {
        1 << (channel as u32 * 4 + purpose as u32)
    }

    pub fn of(c: &Customer) -> Self {
        let mut bits = ConsentBits {
            status: match (c.exists, c.status) {
                (false, _) => 0,
                (true, CustomerStatus::Active) => 1,
                (true, CustomerStatus::Deactivated) => 2,
                (true, CustomerStatus::Erased) => 3,
                (true, CustomerStatus::Merged) => 4,
            },
            ..Default::default()
        };
        for s in c.consents.values() {
            let b = Self::bit(s.channel, s.purpose);
            bits.recorded |= b;
            if s.granted {
                bits.granted |= b;
            }
        }
        bits
    }

    pub fn check(&self, channel: Channel, purpose: Purpose) -> ConsentDecision {
        let deny = |reason| ConsentDecision { allowed: false, reason };
        match self.status {
            0 => return deny("unknown_customer"),
            3 => return deny("customer_erased"),
            2 => return deny("customer_deactivated"),
            // The duplicate's consent lives on with the survivor; ask there.
            4 => return deny("customer_merged"),
            _ => {}
        }
        let b = Self::bit(channel, purpose);
        if self.granted & b != 0 {
            ConsentDecision { allowed: true, reason: "granted" }
        } else if self.recorded & b != 0 {
            deny("revoked")
        } else if purpose == Purpose::Transactional {
            ConsentDecision { allowed: true, reason: "transactional_default" }
        } else {
            deny("no_consent")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConsentDecision {
    pub allowed: bool,
    pub reason: &'static str,
}

/// The consent ledger's key for a channel and purpose, e.g. `"email:marketing"`; static, so
/// the hot consent check never allocates.
pub fn consent_key(channel: Channel, purpose: Purpose) -> &'static str {
    use Channel as C;
    use Purpose as P;
    match (channel, purpose) {
        (C::Email, P::Marketing) => "email:marketing",
        (C::Email, P::Transactional) => "email:transactional",
        (C::Email, P::Analytics) => "email:analytics",
        (C::Email, P::Profiling) => "email:profiling",
        (C::Sms, P::Marketing) => "sms:marketing",
        (C::Sms, P::Transactional) => "sms:transactional",
        (C::Sms, P::Analytics) => "sms:analytics",
        (C::Sms, P::Profiling) => "sms:profiling",
        (C::Push, P::Marketing) => "push:marketing",
        (C::Push, P::Transactional) => "push:transactional",
        (C::Push, P::Analytics) => "push:analytics",
        (C::Push, P::Profiling) => "push:profiling",
        (C::InApp, P::Marketing) => "in_app:marketing",
        (C::InApp, P::Transactional) => "in_app:transactional",
        (C::InApp, P::Analytics) => "in_app:analytics",
        (C::InApp, P::Profiling) => "in_app:profiling",
        (C::Phone, P::Marketing) => "phone:marketing",
        (C::Phone, P::Transactional) => "phone:transactional",
        (C::Phone, P::Analytics) => "phone:analytics",
        (C::Phone, P::Profiling) => "phone:profiling",
    }
}

fn opt_str(s: &Option<String>) -> Value {
    s.clone().map(Value::String).unwrap_or(Value::Null)
}

fn non_empty(s: String, what: &'static str) -> Result<String, CustomerError> {
    let t = s.trim();
    if t.is_empty() {
        Err(CustomerError::Empty(what))
    } else {
        Ok(t.to_owned())
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[test]
fn consent_keys_are_channel_colon_purpose() {
    for c in [Channel::Email, Channel::Sms, Channel::Push, Channel::InApp, Channel::Phone] {
        for p in [Purpose::Marketing, Purpose::Transactional, Purpose::Analytics, Purpose::Profiling] {
            assert_eq!(consent_key(c, p), format!("{}:{}", c.as_str(), p.as_str()));
        }
    }
}
