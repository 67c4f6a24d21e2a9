//! The registry of the event types Chronicle's own code writes, each with its owner: the one
//! place that says which types are reserved and on which streams each may stand.
//!
//! An owned type is written only by the commands of its owner, on its owner's streams. Raw
//! appends and producers (CloudEvents, imports) may not use one at all
//! ([`owner_of`] is `Some`), and the read models fold an owned type only where its owner writes
//! it ([`in_place`]): an event in the wrong place — one written before these rules, say —
//! counts as any other event of its stream, and its payload is never read.
//!
//! Every crate that owns event types adds them here, with the streams they stand on (the
//! automation crate's campaign and message events, the projections' audit and retention
//! records, later work's segments, scores and approvals). A test in each owning crate checks
//! that its list and this one agree.

use crate::{customer, deal, order};

/// The tenant that holds Chronicle's own records (tenants, keys).
pub const SYSTEM_TENANT: &str = "_system";

/// Who writes an owned event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The customer aggregate (`customer-{id}`).
    Customer,
    /// The deal aggregate (`deal-{id}`).
    Deal,
    /// The order aggregate (`order-{id}`), driven by commands and Segment's e-commerce events.
    Order,
    /// Campaign and template definitions (`campaign-{name}`, `template-{name}`).
    AutomationDefinitions,
    /// What campaigns did to a customer: enrolments, steps, messages and their outcomes
    /// (`customer-{id}`).
    Automation,
    /// A provider's reports about a message after it left (`customer-{id}`).
    Feedback,
    /// Segment's track, page and screen calls, written by ingest (`customer-{id}`,
    /// `anonymous-{id}`).
    Activity,
    /// Accesses to customers' data through the API (`_audit`).
    Audit,
    /// Retention policies and compaction records (`retention`).
    Retention,
    /// Tenants and API keys (tenant `_system`).
    System,
    /// What a compaction leaves in an expired event's place (the store writes it).
    Store,
    /// A tenant's settings for outside providers (`_settings`).
    Settings,
    /// Segment definitions (`segment-{name}`) and memberships (`customer-{id}`).
    Segments,
}

pub const CUSTOMER_TYPES: &[&str] = customer::EVENT_TYPES;
pub const DEAL_TYPES: &[&str] = deal::EVENT_TYPES;
pub const ORDER_TYPES: &[&str] = order::EVENT_TYPES;
/// The types of the automation crate's `AutomationEvent`: definitions first (each on its own
/// stream), then what campaigns did to a customer (on the customer's stream).
pub const AUTOMATION_EVENT_TYPES: &[&str] = &[
    "CampaignSaved",
    "CampaignDeleted",
    "TemplateSaved",
    "TemplateDeleted",
    "CampaignEnrolled",
    "CampaignStepScheduled",
    "CampaignStepExecuted",
    "CampaignExited",
    "CampaignConverted",
    "MessageQueued",
    "MessageSuppressed",
    "MessageSent",
    "MessageFailed",
    "MessageDeadLettered",
    "MessageRetried",
];
pub const AUTOMATION_DEFINITION_TYPES: &[&str] = AUTOMATION_EVENT_TYPES.split_at(4).0;
pub const AUTOMATION_TYPES: &[&str] = AUTOMATION_EVENT_TYPES.split_at(4).1;
pub const FEEDBACK_TYPES: &[&str] = &[
    "MessageDelivered",
    "MessageOpened",
    "MessageClicked",
    "MessageBounced",
    "MessageDropped",
    "MessageSpamReported",
    "MessageUnsubscribed",
];
pub const ACTIVITY_TYPES: &[&str] = &["ActivityTracked"];
pub const AUDIT_TYPES: &[&str] = &["AuditRecorded"];
pub const RETENTION_TYPES: &[&str] = &["RetentionPolicySet", "RetentionPolicyRemoved", "RetentionApplied"];
pub const SYSTEM_TYPES: &[&str] = &[
    "TenantCreated",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "UserCreated",
    "UserDeactivated",
    "UserReactivated",
    "UserRoleChanged",
    "SessionStarted",
    "SessionEnded",
];
pub const STORE_TYPES: &[&str] = &[crate::envelope::EXPIRED_TYPE];
pub const SETTINGS_TYPES: &[&str] = &["SendGridKeySet", "SendGridKeyRemoved", "CorsOriginsSet"];
/// The automation crate's `SegmentEvent`: definitions first, then memberships.
pub const SEGMENT_TYPES: &[&str] = &["SegmentSaved", "SegmentDeleted", "SegmentEntered", "SegmentExited"];

/// Every owned type, by owner.
pub const OWNED: &[(Owner, &[&str])] = &[
    (Owner::Customer, CUSTOMER_TYPES),
    (Owner::Deal, DEAL_TYPES),
    (Owner::Order, ORDER_TYPES),
    (Owner::AutomationDefinitions, AUTOMATION_DEFINITION_TYPES),
    (Owner::Automation, AUTOMATION_TYPES),
    (Owner::Feedback, FEEDBACK_TYPES),
    (Owner::Activity, ACTIVITY_TYPES),
    (Owner::Audit, AUDIT_TYPES),
    (Owner::Retention, RETENTION_TYPES),
    (Owner::System, SYSTEM_TYPES),
    (Owner::Store, STORE_TYPES),
    (Owner::Settings, SETTINGS_TYPES),
    (Owner::Segments, SEGMENT_TYPES),
];

/// The stream that holds the tenant's audit trail.
pub const AUDIT_STREAM: &str = "_audit";
/// The stream that holds the tenant's retention policies and compaction records.
pub const RETENTION_STREAM: &str = "retention";
/// The stream that holds the tenant's settings for outside providers.
pub const SETTINGS_STREAM: &str = "_settings";

/// Who owns `event_type`, if Chronicle's code does.
pub fn owner_of(event_type: &str) -> Option<Owner> {
    OWNED.iter().find(|(_, types)| types.contains(&event_type)).map(|(o, _)| *o)
}

impl Owner {
    /// Whether this owner writes its `event_type` on `stream` of `tenant`.
    pub fn writes_on(self, tenant: &str, stream: &str, event_type: &str) -> bool {
        if (tenant == SYSTEM_TENANT) != (self == Owner::System) {
            return false;
        }
        match self {
            Owner::System => true,
            Owner::Customer | Owner::Automation | Owner::Feedback => stream.starts_with("customer-"),
            Owner::Deal => stream.starts_with("deal-"),
            Owner::Order => stream.starts_with("order-"),
            Owner::AutomationDefinitions => match event_type {
                "CampaignSaved" | "CampaignDeleted" => stream.starts_with("campaign-"),
                _ => stream.starts_with("template-"),
            },
            Owner::Activity => stream.starts_with("customer-") || stream.starts_with("anonymous-"),
            Owner::Audit => stream == AUDIT_STREAM,
            Owner::Retention => stream == RETENTION_STREAM,
            Owner::Settings => stream == SETTINGS_STREAM,
            Owner::Segments => match event_type {
                "SegmentSaved" | "SegmentDeleted" => stream.starts_with("segment-"),
                _ => stream.starts_with("customer-"),
            },
            // Tombstones keep the place of whatever expired.
            Owner::Store => true,
        }
    }
}

/// Whether an event of `event_type` on `stream` of `tenant` stands where its owner writes it
/// (always, for a type no one owns): only such events are folded by their type.
pub fn in_place(tenant: &str, stream: &str, event_type: &str) -> bool {
    owner_of(event_type).is_none_or(|o| o.writes_on(tenant, stream, event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_owned_type_has_one_owner() {
        let mut seen = std::collections::HashSet::new();
        for (_, types) in OWNED {
            for t in *types {
                assert!(seen.insert(*t), "{t} is registered twice");
            }
        }
    }

    #[test]
    fn owned_types_stand_only_on_their_owners_streams() {
        assert!(in_place("acme", "customer-c1", "ConsentGranted"));
        assert!(!in_place("acme", "notes-x", "ConsentGranted"));
        assert!(in_place("acme", "customer-c1", "MessageQueued"));
        assert!(!in_place("acme", "poison", "MessageQueued"));
        assert!(!in_place("acme", "notes-x", "AuditRecorded"));
        assert!(in_place("acme", "_audit", "AuditRecorded"));
        assert!(in_place("acme", "campaign-x", "CampaignSaved"));
        assert!(!in_place("acme", "template-x", "CampaignSaved"));
        assert!(in_place("acme", "anonymous-a", "ActivityTracked"));
        assert!(in_place("acme", "segment-dormant", "SegmentSaved") && !in_place("acme", "customer-c1", "SegmentSaved"));
        assert!(in_place("acme", "customer-c1", "SegmentEntered") && !in_place("acme", "segment-dormant", "SegmentEntered"));
        assert!(!in_place("acme", "deal-d", "ActivityTracked"));
        assert!(in_place("_system", "tenant-acme", "TenantCreated"));
        assert!(!in_place("acme", "tenant-acme", "TenantCreated"));
        assert!(!in_place("_system", "customer-c1", "ConsentGranted"));
        // A type no one owns may stand anywhere.
        assert!(in_place("acme", "tickets", "TicketOpened"));
        assert_eq!(owner_of("TicketOpened"), None);
    }
}
