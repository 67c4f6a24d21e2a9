//! A customer's profile as a document: what the API answers for a customer and what a subject
//! access export carries (shared by the HTTP layer and the CLI, so it lives outside both). The
//! type is the answer's schema in `/openapi.json` too.

use chrono::{DateTime, Utc};
use chronicle_core::customer::{ConsentState, Customer, CustomerStatus, LifecycleStage, Note, Preferences};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The profile as clients see it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Profile {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub traits: Map<String, Value>,
    pub lifecycle_stage: Option<LifecycleStage>,
    pub tags: BTreeSet<String>,
    pub owner: Option<String>,
    pub status: CustomerStatus,
    pub consents: Vec<ConsentState>,
    pub preferences: Preferences,
    pub notes: Vec<Note>,
    pub anonymous_ids: BTreeSet<String>,
    pub groups: BTreeMap<String, Map<String, Value>>,
    pub merged_into: Option<String>,
    pub merged_ids: BTreeSet<String>,
    pub version: u64,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<&Customer> for Profile {
    fn from(c: &Customer) -> Profile {
        Profile {
            id: c.id.clone(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            traits: c.traits.clone(),
            lifecycle_stage: c.lifecycle_stage,
            tags: c.tags.clone(),
            owner: c.owner.clone(),
            status: c.status,
            consents: c.consents.values().cloned().collect(),
            preferences: c.preferences.clone(),
            notes: c.notes.clone(),
            anonymous_ids: c.anonymous_ids.clone(),
            groups: c.groups.clone(),
            merged_into: c.merged_into.clone(),
            merged_ids: c.merged_ids.clone(),
            version: c.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// The profile as a JSON value.
pub fn profile_json(c: &Customer) -> Value {
    serde_json::to_value(Profile::from(c)).expect("a profile serializes")
}
