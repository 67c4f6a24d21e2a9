//! A customer's profile as a document: what the API answers for a customer and what a subject
//! access export carries (shared by the HTTP layer and the CLI, so it lives outside both).

use chronicle_core::customer::Customer;
use serde_json::{json, Value};

/// The profile as clients see it.
pub fn profile_json(c: &Customer) -> Value {
    json!({
        "id": c.id,
        "email": c.email,
        "phone": c.phone,
        "traits": c.traits,
        "lifecycle_stage": c.lifecycle_stage,
        "tags": c.tags,
        "owner": c.owner,
        "status": c.status,
        "consents": c.consents.values().collect::<Vec<_>>(),
        "preferences": c.preferences,
        "notes": c.notes,
        "anonymous_ids": c.anonymous_ids,
        "groups": c.groups,
        "merged_into": c.merged_into,
        "merged_ids": c.merged_ids,
        "version": c.version,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    })
}
