//! Retention: which event types a tenant keeps for how long, which types may expire at all,
//! and the record of each compaction that removed expired events.
//!
//! Policies are events on the tenant's [`STREAM`] (`RetentionPolicySet`,
//! `RetentionPolicyRemoved`); a compaction (`chronicle compact`) replaces every event older than
//! its type's period with a tombstone and appends `RetentionApplied` saying what it removed.
//! Only types that no read model folds into *state* may expire: expiring them loses history,
//! never a customer, a consent decision or a pending message (see [`can_expire`]).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The tenant stream that holds the policies and the compaction records.
pub const STREAM: &str = chronicle_core::registry::RETENTION_STREAM;
pub const POLICY_SET: &str = "RetentionPolicySet";
pub const POLICY_REMOVED: &str = "RetentionPolicyRemoved";
pub const APPLIED: &str = "RetentionApplied";
/// Registered in `chronicle_core::registry` (a test checks the two agree).
pub const EVENT_TYPES: &[&str] = chronicle_core::registry::RETENTION_TYPES;
/// The longest period a policy may name (100 years); anything longer is "keep forever".
pub const MAX_DAYS: u32 = 36_500;
/// How many compaction records the view keeps (the log keeps them all).
const RUNS_KEPT: usize = 20;

/// Whether events of `event_type` may expire, and if not, why. Types a read model folds into
/// state (customer, deal and order events, campaign and message events, provider feedback,
/// tenants and keys, retention itself) may not: a replay without them would be another state
/// (a customer gone, a sent message back in the outbox). Behaviour (`ActivityTracked`), the
/// audit trail (`AuditRecorded`) and types of the tenant's own may.
pub fn can_expire(event_type: &str) -> Result<(), String> {
    use chronicle_core::{customer, deal, order};
    let state = [
        customer::EVENT_TYPES,
        deal::EVENT_TYPES,
        order::EVENT_TYPES,
        chronicle_automation::events::EVENT_TYPES,
        chronicle_automation::events::FEEDBACK_TYPES,
        EVENT_TYPES,
        chronicle_core::registry::SYSTEM_TYPES,
        &["MessageBounced", chronicle_core::envelope::EXPIRED_TYPE],
    ];
    if event_type.trim().is_empty() {
        return Err("name an event type".into());
    }
    if state.iter().any(|types| types.contains(&event_type)) {
        return Err(format!(
            "{event_type} events make up state (a profile, a consent decision, a deal, an order, a campaign or message, \
             a key); they are kept for as long as that state exists and cannot expire"
        ));
    }
    Ok(())
}

/// A tenant's policies and its last compactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetentionView {
    /// Event type → days kept (by event time).
    pub policies: BTreeMap<String, u32>,
    /// The latest compactions, oldest first.
    pub runs: Vec<RetentionRun>,
}

/// The record of one compaction (the data of `RetentionApplied`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RetentionRun {
    /// When the compaction ran: events that happened before `at - days` expired.
    pub at: DateTime<Utc>,
    /// The policies it applied.
    pub policies: BTreeMap<String, u32>,
    /// Events removed, by type.
    pub expired: BTreeMap<String, u64>,
    /// The last position the compaction looked at.
    pub through_position: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySet {
    pub event_type: String,
    pub keep_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRemoved {
    pub event_type: String,
}

impl RetentionView {
    /// Folds one event of the retention stream; `false` when its data does not decode.
    pub fn apply(&mut self, event_type: &str, data: &serde_json::Value) -> bool {
        match event_type {
            POLICY_SET => match serde_json::from_value::<PolicySet>(data.clone()) {
                Ok(p) => {
                    self.policies.insert(p.event_type, p.keep_days);
                    true
                }
                Err(_) => false,
            },
            POLICY_REMOVED => match serde_json::from_value::<PolicyRemoved>(data.clone()) {
                Ok(p) => {
                    self.policies.remove(&p.event_type);
                    true
                }
                Err(_) => false,
            },
            APPLIED => match serde_json::from_value::<RetentionRun>(data.clone()) {
                Ok(run) => {
                    self.runs.push(run);
                    if self.runs.len() > RUNS_KEPT {
                        self.runs.remove(0);
                    }
                    true
                }
                Err(_) => false,
            },
            _ => false,
        }
    }

    /// Per event type, the instant before which its events have expired at `now`.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> BTreeMap<String, DateTime<Utc>> {
        self.policies.iter().map(|(t, &days)| (t.clone(), now - Duration::days(i64::from(days)))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_owns_exactly_these_types() {
        assert_eq!(EVENT_TYPES, [POLICY_SET, POLICY_REMOVED, APPLIED]);
        for t in EVENT_TYPES {
            assert_eq!(chronicle_core::registry::owner_of(t), Some(chronicle_core::registry::Owner::Retention));
        }
    }

    #[test]
    fn only_history_may_expire() {
        assert!(can_expire("ActivityTracked").is_ok());
        assert!(can_expire("AuditRecorded").is_ok());
        assert!(can_expire("TicketOpened").is_ok(), "a tenant's own event type");
        for t in ["ConsentGranted", "CustomerRegistered", "OrderPlaced", "DealWon", "MessageQueued", "MessageSent",
                  "MessageBounced", "CampaignEnrolled", "RetentionApplied", "EventExpired", "ApiKeyCreated", " "] {
            assert!(can_expire(t).is_err(), "{t} must not expire");
        }
    }

    #[test]
    fn folds_policies_and_runs() {
        let mut v = RetentionView::default();
        assert!(v.apply(POLICY_SET, &serde_json::json!({"event_type": "ActivityTracked", "keep_days": 365})));
        assert!(v.apply(POLICY_SET, &serde_json::json!({"event_type": "AuditRecorded", "keep_days": 30})));
        assert!(v.apply(POLICY_REMOVED, &serde_json::json!({"event_type": "AuditRecorded"})));
        assert!(!v.apply(POLICY_SET, &serde_json::json!({"keep_days": "x"})));
        let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(v.cutoffs(now), BTreeMap::from([("ActivityTracked".to_owned(), "2025-12-01T00:00:00Z".parse().unwrap())]));
        let run = serde_json::json!({"at": now, "policies": {"ActivityTracked": 365}, "expired": {"ActivityTracked": 3},
                                     "through_position": 9});
        assert!(v.apply(APPLIED, &run));
        assert_eq!(v.runs[0].expired["ActivityTracked"], 3);
    }
}
