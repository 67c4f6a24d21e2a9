//! The events of automation: definitions (campaigns and templates, each on its own stream) and
//! what campaigns did to a customer (on the customer's stream, so the timeline shows it).

use chronicle_core::customer::Purpose;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The types of [`AutomationEvent`], as `chronicle_core::registry` lists them (definitions on
/// their own streams, the rest on customers' streams).
pub const EVENT_TYPES: &[&str] = chronicle_core::registry::AUTOMATION_EVENT_TYPES;

pub fn campaign_stream(name: &str) -> String {
    format!("campaign-{name}")
}

pub fn template_stream(name: &str) -> String {
    format!("template-{name}")
}

/// Where a message came from, when a campaign sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub campaign: String,
    pub enrolment: String,
    pub step: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AutomationEvent {
    CampaignSaved {
        name: String,
        definition: Value,
    },
    CampaignDeleted {
        name: String,
    },
    TemplateSaved {
        name: String,
        subject: String,
        body: String,
    },
    TemplateDeleted {
        name: String,
    },
    CampaignEnrolled {
        campaign: String,
        enrolment: String,
        /// The campaign stream's version the enrolment runs (a later edit does not move it).
        definition: u64,
        trigger: String,
        /// The log position of the trigger event: the goal and exit events (and "happened
        /// since enrolment" branches) count from there, so one appended between the trigger and
        /// this enrolment still ends it. Absent in enrolments recorded before it was added (and
        /// in scans): counted from the enrolment's own position then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trigger_position: Option<u64>,
        /// What started it, for templates and webhooks (e.g. the stuck deal).
        #[serde(default, skip_serializing_if = "Value::is_null")]
        context: Value,
    },
    /// A wait began (or a send was deferred): the step runs at `due`.
    CampaignStepScheduled {
        campaign: String,
        enrolment: String,
        step: usize,
        due: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A step ran; `next` is where the program goes on (a branch jumps).
    CampaignStepExecuted {
        campaign: String,
        enrolment: String,
        step: usize,
        action: String,
        next: usize,
    },
    CampaignExited {
        campaign: String,
        enrolment: String,
        reason: String,
    },
    CampaignConverted {
        campaign: String,
        enrolment: String,
        event: String,
    },
    /// The intent to send, recorded before any attempt; `message` is the idempotency key.
    MessageQueued {
        message: String,
        /// `email`, `sms`, `push`, `in_app`, `phone`, or `webhook`.
        channel: String,
        purpose: Purpose,
        /// Personal: sealed, and absent once the person is erased (so are subject and body).
        #[serde(default)]
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        #[serde(default)]
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
        /// The log position of the consent decision the send relied on (the customer's latest
        /// grant for this channel and purpose), so the message can show what allowed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consent_position: Option<u64>,
    },
    MessageSuppressed {
        message: String,
        channel: String,
        purpose: Purpose,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    MessageSent {
        message: String,
        channel: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_id: Option<String>,
    },
    MessageFailed {
        message: String,
        attempt: u32,
        #[serde(default)]
        error: String,
        retry_at: DateTime<Utc>,
    },
    MessageDeadLettered {
        message: String,
        attempts: u32,
        #[serde(default)]
        error: String,
    },
    /// An operator sent a dead letter back to the outbox.
    MessageRetried {
        message: String,
        by: String,
    },
}

impl AutomationEvent {
    pub fn to_parts(&self) -> (String, Value) {
        chronicle_core::to_parts(self)
    }

    pub fn from_parts(event_type: &str, data: &Value) -> Result<Self, chronicle_core::DecodeError> {
        chronicle_core::from_parts(event_type, data)
    }
}

/// Ids derived from their causes (see `chronicle_core::ids`, where every derivation lives).
pub use chronicle_core::ids::derive_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_wire_parts() {
        let e = AutomationEvent::MessageSuppressed {
            message: "m1".into(),
            channel: "email".into(),
            purpose: Purpose::Marketing,
            reason: "no_consent".into(),
            origin: Some(Origin { campaign: "welcome".into(), enrolment: "e".into(), step: 0 }),
        };
        let (t, d) = e.to_parts();
        assert_eq!(t, "MessageSuppressed");
        assert_eq!(AutomationEvent::from_parts(&t, &d).unwrap(), e);
        assert!(EVENT_TYPES.contains(&t.as_str()));
    }

    #[test]
    fn definitions_and_what_campaigns_did_are_told_apart_by_the_registry() {
        use chronicle_core::registry::{self, Owner};
        for t in EVENT_TYPES {
            let expected = if t.starts_with("Campaign") && (t.ends_with("Saved") || t.ends_with("Deleted")) || t.starts_with("Template") {
                Owner::AutomationDefinitions
            } else {
                Owner::Automation
            };
            assert_eq!(registry::owner_of(t), Some(expected), "{t}");
        }
        for t in FEEDBACK_TYPES {
            assert_eq!(registry::owner_of(t), Some(Owner::Feedback), "{t}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derive_id(&["a", "b"]), derive_id(&["a", "b"]));
        assert_ne!(derive_id(&["a", "b"]), derive_id(&["ab", ""]));
        assert_eq!(derive_id(&["x"]).get_version_num(), 8);
    }
}

/// What a provider reported about a message after it left (SendGrid's Event Webhook):
/// recorded on the customer's stream. Unlike the events above, these may trigger campaigns
/// (a click can start a follow-up).
pub const FEEDBACK_TYPES: &[&str] = chronicle_core::registry::FEEDBACK_TYPES;

/// The payload of every feedback event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// Our message id, when the provider's report names it (its `smtp-id`, our Message-ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub email: String,
    pub provider: String,
    pub provider_event_id: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For a bounce: a hard bounce (`bounce`), after which the address is not mailed again, or
    /// a soft one (`blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl Feedback {
    pub fn hard_bounce(&self) -> bool {
        self.kind.as_deref() == Some("bounce")
    }
}
