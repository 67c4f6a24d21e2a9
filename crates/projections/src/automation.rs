//! The automation read model of a tenant: the campaigns and templates in force, every
//! enrolment and where it stands, the pending timers (waits and deferred sends, ordered by due
//! time), the outbox (messages queued and not yet sent, by next attempt), the dead letters, what
//! each customer was sent lately (for frequency caps) and each campaign's counters.
//!
//! Everything here is folded from events, so timers and the outbox survive a restart the same
//! way every view does: checkpoint plus the log's tail.

use crate::map::Map;
use chronicle_automation::events::{AutomationEvent as A, Origin};
use chronicle_automation::Campaign;
use chronicle_core::customer::{self, Purpose};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Template {
    pub subject: String,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrolmentStatus {
    Active,
    Exited,
    Converted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Enrolment {
    pub id: String,
    pub campaign: String,
    pub customer: String,
    /// The campaign stream version this enrolment runs.
    pub definition: u64,
    /// The next operation of the program to run.
    pub step: usize,
    /// When the step is due (a wait or a deferred send), if it waits.
    pub due: Option<DateTime<Utc>>,
    pub status: EnrolmentStatus,
    pub enrolled_at: DateTime<Utc>,
    /// The log position of its trigger (of the enrolment itself when that is not recorded): only
    /// later events can end it.
    pub enrolled_position: u64,
    /// What started it (the deal of a stuck-deal alert, say): templates and webhooks see it.
    #[serde(default)]
    pub context: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub message: String,
    pub customer: String,
    pub channel: String,
    pub purpose: Purpose,
    pub to: String,
    pub subject: Option<String>,
    pub body: String,
    pub origin: Option<Origin>,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Times an operator sent it back from the dead-letter queue.
    #[serde(default)]
    pub round: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CampaignStats {
    pub enrolled: u64,
    pub in_progress: u64,
    pub exited: u64,
    pub converted: u64,
    pub sent: u64,
    pub suppressed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AutomationView {
    /// Campaign name → the stream version of the definition in force (deleted ones are absent).
    pub campaigns: Map<String, u64>,
    /// Campaign name → the log position where the definition in force was saved: only events
    /// after it trigger the campaign (so replaying old events never enrols anyone).
    pub saved_at: Map<String, u64>,
    /// Every version of every campaign, compiled: running enrolments keep theirs.
    pub definitions: Map<String, BTreeMap<u64, Campaign>>,
    pub templates: Map<String, Template>,
    pub enrolments: Map<String, Enrolment>,
    /// Customer → their active enrolments.
    pub active: Map<String, Vec<String>>,
    /// `campaign/customer` → when the customer last enrolled (for the re-entry policy).
    pub last_enrolled: Map<String, DateTime<Utc>>,
    pub timers: BTreeSet<(DateTime<Utc>, String)>,
    pub outbox: Map<String, OutboxEntry>,
    pub outbox_due: BTreeSet<(DateTime<Utc>, String)>,
    pub dead_letters: Map<String, OutboxEntry>,
    /// Customer → (channel, when) of the messages queued for them, newest last (frequency caps).
    pub queued: Map<String, Vec<(String, DateTime<Utc>)>>,
    pub stats: Map<String, CampaignStats>,
    /// Messages queued or suppressed so far (a message is decided once).
    pub decided: Map<String, String>,
    /// Normalised e-mail addresses that hard-bounced (never mailed again) → the customer whose
    /// stream recorded the bounce: an erasure forgets every address of the person's, whichever
    /// they had when it bounced.
    #[serde(default)]
    pub bounced: BTreeMap<String, String>,
    /// Customer → when they last did something (a tracked event): for `inactive_for` triggers.
    #[serde(default)]
    pub last_active: Map<String, DateTime<Utc>>,
    /// Open deal → since when it has been in its stage: for `deal_stuck_for` triggers.
    #[serde(default)]
    pub deal_stage_since: Map<String, DateTime<Utc>>,
    /// Customer → their latest messages (at most [`MESSAGES_KEPT`], oldest first), what the
    /// 360 shows: queued, sent, suppressed with the reason, failing, dead-lettered; each with the
    /// consent decision it relied on.
    #[serde(default)]
    pub messages: Map<String, Vec<MessageRecord>>,
    /// The segments in force: name → (definition stream version, segment).
    #[serde(default)]
    pub segments: BTreeMap<String, (u64, chronicle_automation::segment::Segment)>,
    /// Segment → its members and since when (folded from `SegmentEntered` / `SegmentExited`).
    #[serde(default)]
    pub members: BTreeMap<String, BTreeMap<String, DateTime<Utc>>>,
}

/// How many of a customer's latest messages the 360's read model keeps (the log keeps all).
pub const MESSAGES_KEPT: usize = 50;

/// One message to a customer, as the 360 shows it (no address, subject or body: those are in the
/// sealed events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: String,
    pub channel: String,
    pub purpose: Purpose,
    /// `queued`, `sent`, `suppressed`, `failing` or `dead_letter`.
    pub state: String,
    /// Why it was suppressed, or the last error.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    /// When it was decided (queued or suppressed).
    pub at: DateTime<Utc>,
    /// When it was sent.
    #[serde(default)]
    pub sent_at: Option<DateTime<Utc>>,
    /// The log position of the consent decision the send relied on.
    #[serde(default)]
    pub consent_position: Option<u64>,
}

/// How long queue times are kept for frequency caps.
const CAP_HORIZON_DAYS: i64 = 31;

pub fn enrolment_key(campaign: &str, customer: &str) -> String {
    format!("{campaign}/{customer}")
}

impl AutomationView {
    /// The definition an enrolment runs.
    pub fn definition(&self, campaign: &str, version: u64) -> Option<&Campaign> {
        self.definitions.get(campaign)?.get(&version)
    }

    /// The campaigns in force, with their versions.
    pub fn live_campaigns(&self) -> impl Iterator<Item = (&str, u64, &Campaign)> {
        self.campaigns.iter().filter_map(|(n, v)| Some((n.as_str(), *v, self.definition(n, *v)?)))
    }

    pub fn sent_since(&self, customer: &str, channel: &str, since: DateTime<Utc>) -> usize {
        self.queued.get(customer).map_or(0, |q| q.iter().filter(|(c, t)| c == channel && *t >= since).count())
    }

    pub(crate) fn apply(&mut self, stream: &str, version: u64, position: u64, at: DateTime<Utc>, e: A) {
        let customer = customer::id_of_stream(stream).unwrap_or_default();
        match e {
            A::CampaignSaved { name, definition } => {
                if let Ok(c) = Campaign::parse(&definition) {
                    self.definitions.entry(name.clone()).or_default().insert(version, c);
                    self.campaigns.insert(name.clone(), version);
                    self.saved_at.insert(name.clone(), position);
                    self.stats.entry(name).or_default();
                }
            }
            A::CampaignDeleted { name } => {
                self.campaigns.remove(&name);
            }
            A::TemplateSaved { name, subject, body } => {
                self.templates.insert(name, Template { subject, body });
            }
            A::TemplateDeleted { name } => {
                self.templates.remove(&name);
            }
            A::CampaignEnrolled { campaign, enrolment, definition, context, trigger_position, .. } => {
                let stats = self.stats.entry(campaign.clone()).or_default();
                stats.enrolled += 1;
                stats.in_progress += 1;
                self.last_enrolled.insert(enrolment_key(&campaign, customer), at);
                self.active.entry(customer.to_owned()).or_default().push(enrolment.clone());
                let e = Enrolment {
                    id: enrolment.clone(),
                    campaign,
                    customer: customer.to_owned(),
                    definition,
                    step: 0,
                    due: None,
                    status: EnrolmentStatus::Active,
                    enrolled_at: at,
                    enrolled_position: trigger_position.map_or(position, |t| t.min(position)),
                    context,
                };
                self.enrolments.insert(enrolment, e);
            }
            A::CampaignStepScheduled { enrolment, step, due, .. } => {
                if let Some(e) = self.enrolments.get_mut(&enrolment) {
                    if let Some(old) = e.due.replace(due) {
                        self.timers.remove(&(old, enrolment.clone()));
                    }
                    e.step = step;
                    self.timers.insert((due, enrolment));
                }
            }
            A::CampaignStepExecuted { enrolment, next, .. } => {
                if let Some(e) = self.enrolments.get_mut(&enrolment) {
                    if let Some(old) = e.due.take() {
                        self.timers.remove(&(old, enrolment.clone()));
                    }
                    e.step = next;
                }
            }
            A::CampaignExited { enrolment, .. } => self.end(&enrolment, EnrolmentStatus::Exited),
            A::CampaignConverted { enrolment, .. } => self.end(&enrolment, EnrolmentStatus::Converted),
            A::MessageQueued { message, channel, purpose, to, subject, body, origin, consent_position, .. } => {
                self.decided.insert(message.clone(), "queued".into());
                self.note_message(customer, MessageRecord {
                    id: message.clone(),
                    channel: channel.clone(),
                    purpose,
                    state: "queued".into(),
                    reason: None,
                    campaign: origin.as_ref().map(|o| o.campaign.clone()),
                    at,
                    sent_at: None,
                    consent_position,
                });
                let q = self.queued.entry(customer.to_owned()).or_default();
                // Checked: the fold is total, whatever time an event carries.
                let horizon = at.checked_sub_signed(chrono::Duration::days(CAP_HORIZON_DAYS)).unwrap_or(DateTime::<Utc>::MIN_UTC);
                q.retain(|(_, t)| *t > horizon);
                q.push((channel.clone(), at));
                self.outbox_due.insert((at, message.clone()));
                let entry = OutboxEntry {
                    message: message.clone(),
                    customer: customer.to_owned(),
                    channel,
                    purpose,
                    to,
                    subject,
                    body,
                    origin,
                    attempts: 0,
                    next_attempt: at,
                    queued_at: at,
                    last_error: None,
                    round: 0,
                };
                self.outbox.insert(message, entry);
            }
            A::MessageSuppressed { message, channel, purpose, reason, origin } => {
                match self.message_mut(customer, &message) {
                    Some(m) => {
                        m.state = "suppressed".into();
                        m.reason = Some(reason.clone());
                    }
                    None => self.note_message(customer, MessageRecord {
                        id: message.clone(),
                        channel,
                        purpose,
                        state: "suppressed".into(),
                        reason: Some(reason.clone()),
                        campaign: origin.as_ref().map(|o| o.campaign.clone()),
                        at,
                        sent_at: None,
                        consent_position: None,
                    }),
                }
                // Suppressed after it was queued (consent revoked before the send): it leaves the outbox.
                if let Some(m) = self.outbox.remove(&message) {
                    self.outbox_due.remove(&(m.next_attempt, message.clone()));
                }
                self.decided.insert(message, reason);
                if let Some(o) = origin {
                    self.stats.entry(o.campaign).or_default().suppressed += 1;
                }
            }
            A::MessageSent { message, .. } => {
                if let Some(m) = self.message_mut(customer, &message) {
                    m.state = "sent".into();
                    m.reason = None;
                    m.sent_at = Some(at);
                }
                if let Some(m) = self.outbox.remove(&message) {
                    self.outbox_due.remove(&(m.next_attempt, message));
                    if let Some(o) = m.origin {
                        self.stats.entry(o.campaign).or_default().sent += 1;
                    }
                }
            }
            A::MessageFailed { message, attempt, error, retry_at } => {
                if let Some(m) = self.message_mut(customer, &message) {
                    m.state = "failing".into();
                    m.reason = Some(error.clone());
                }
                if let Some(m) = self.outbox.get_mut(&message) {
                    self.outbox_due.remove(&(m.next_attempt, message.clone()));
                    m.attempts = attempt;
                    m.next_attempt = retry_at;
                    m.last_error = Some(error);
                    self.outbox_due.insert((retry_at, message));
                }
            }
            A::MessageDeadLettered { message, attempts, error } => {
                if let Some(m) = self.message_mut(customer, &message) {
                    m.state = "dead_letter".into();
                    m.reason = Some(error.clone());
                }
                if let Some(mut m) = self.outbox.remove(&message) {
                    self.outbox_due.remove(&(m.next_attempt, message.clone()));
                    m.attempts = attempts;
                    m.last_error = Some(error);
                    self.dead_letters.insert(message, m);
                }
            }
            A::MessageRetried { message, .. } => {
                if let Some(m) = self.message_mut(customer, &message) {
                    m.state = "queued".into();
                }
                if let Some(mut m) = self.dead_letters.remove(&message) {
                    m.attempts = 0;
                    m.round += 1;
                    m.next_attempt = at;
                    self.outbox_due.insert((at, message.clone()));
                    self.outbox.insert(message, m);
                }
            }
        }
    }

    pub(crate) fn apply_segment(&mut self, stream: &str, version: u64, at: DateTime<Utc>, e: chronicle_automation::segment::SegmentEvent) {
        use chronicle_automation::segment::{Segment, SegmentEvent as S};
        let customer = customer::id_of_stream(stream).unwrap_or_default();
        match e {
            S::SegmentSaved { name, definition } => {
                if let Ok(s) = Segment::parse(&definition) {
                    self.segments.insert(name, (version, s));
                }
            }
            S::SegmentDeleted { name } => {
                self.segments.remove(&name);
            }
            S::SegmentEntered { segment, .. } => {
                self.members.entry(segment).or_default().insert(customer.to_owned(), at);
            }
            S::SegmentExited { segment, .. } => {
                if let Some(m) = self.members.get_mut(&segment) {
                    m.remove(customer);
                }
            }
        }
    }

    /// An erased customer: their messages leave the outbox and the dead-letter queue (never
    /// sent), their enrolments end (waits with them), what started them is forgotten, and their
    /// addresses (every one that bounced while theirs) leave the bounce list.
    pub(crate) fn forget(&mut self, customer: &str) {
        let gone: Vec<String> = self.outbox.values().filter(|m| m.customer == customer).map(|m| m.message.clone()).collect();
        for id in gone {
            if let Some(m) = self.outbox.remove(&id) {
                self.outbox_due.remove(&(m.next_attempt, id));
            }
        }
        self.dead_letters.retain(|_, m| m.customer != customer);
        for id in self.active.get(customer).cloned().unwrap_or_default() {
            self.end(&id, EnrolmentStatus::Exited);
        }
        for e in self.enrolments.values_mut().filter(|e| e.customer == customer) {
            e.context = serde_json::Value::Null;
        }
        self.bounced.retain(|_, owner| owner != customer);
        self.messages.remove(customer);
        for m in self.members.values_mut() {
            m.remove(customer);
        }
    }

    fn note_message(&mut self, customer: &str, m: MessageRecord) {
        let list = self.messages.entry(customer.to_owned()).or_default();
        list.push(m);
        if list.len() > MESSAGES_KEPT {
            list.remove(0);
        }
    }

    fn message_mut(&mut self, customer: &str, id: &str) -> Option<&mut MessageRecord> {
        self.messages.get_mut(customer)?.iter_mut().rev().find(|m| m.id == id)
    }

    pub(crate) fn note_activity(&mut self, customer: &str, at: DateTime<Utc>) {
        match self.last_active.get_mut(customer) {
            Some(t) => *t = (*t).max(at),
            None => {
                self.last_active.insert(customer.to_owned(), at);
            }
        }
    }

    pub(crate) fn note_deal(&mut self, deal: &str, event_type: &str, at: DateTime<Utc>) {
        match event_type {
            "DealCreated" | "DealStageChanged" => {
                self.deal_stage_since.insert(deal.to_owned(), at);
            }
            "DealWon" | "DealLost" => {
                self.deal_stage_since.remove(deal);
            }
            _ => {}
        }
    }

    pub(crate) fn apply_feedback(&mut self, stream: &str, event_type: &str, f: &chronicle_automation::events::Feedback) {
        let Some(customer) = customer::id_of_stream(stream) else { return };
        if event_type == "MessageBounced" && f.hard_bounce() {
            self.bounced.insert(f.email.trim().to_lowercase(), customer.to_owned());
        }
    }

    pub fn bounced(&self, email: &str) -> bool {
        self.bounced.contains_key(&email.trim().to_lowercase())
    }

    fn end(&mut self, enrolment: &str, status: EnrolmentStatus) {
        let Some(e) = self.enrolments.get_mut(enrolment) else { return };
        if e.status != EnrolmentStatus::Active {
            return;
        }
        e.status = status;
        if let Some(due) = e.due.take() {
            self.timers.remove(&(due, enrolment.to_owned()));
        }
        if let Some(list) = self.active.get_mut(&e.customer) {
            list.retain(|x| x != enrolment);
            if list.is_empty() {
                self.active.remove(&e.customer);
            }
        }
        let stats = self.stats.entry(e.campaign.clone()).or_default();
        stats.in_progress = stats.in_progress.saturating_sub(1);
        match status {
            EnrolmentStatus::Converted => stats.converted += 1,
            _ => stats.exited += 1,
        }
    }
}
