//! The automation engine: runs the tenants' campaigns against the live log.
//!
//! - **React** follows the log (a subscription from the saved cursor). An event of a customer
//!   (or of an order, for its customer) ends the enrolments whose goal or `exit_on` it is, and
//!   enrols the customer in each campaign it triggers — then runs the enrolment's steps until
//!   one waits.
//! - **Clock** fires what is due: waits whose time has come (and sends deferred by quiet
//!   hours), and the outbox's messages (first attempts and retries).
//! - **Deliver** sends one message (SMTP, webhook, SMS or push provider) and records the
//!   outcome: `MessageSent`, or `MessageFailed` with the next attempt after an exponential
//!   backoff with jitter, or after the last attempt `MessageDeadLettered`.
//!
//! Everything the engine does is an event with an id derived from its cause (the trigger event,
//! the enrolment and step, the attempt), and everything it knows comes from the read models
//! that the commit path keeps current. So it can crash at any point and react again to
//! anything: what was already done is found done (the store keeps one event per id). The one
//! effect outside the log — handing a message over — is recorded as intent (`MessageQueued`)
//! before and outcome after; a crash between the two re-sends it after restart with the same
//! idempotency key (`Idempotency-Key` header, e-mail `Message-ID`). Events that campaigns
//! themselves write never trigger campaigns, so no campaign can feed itself.

mod backoff;
pub mod definitions;
pub mod delivery;
pub mod unsubscribe;
pub mod feedback;
pub mod lease;
pub mod parked;
pub mod segments;

use crate::app::App;
use crate::error::AppError;
use chronicle_automation::campaign::{next_local_time, zone, Condition, Op, Reentry, SendSpec, Trigger, Wait};
use chronicle_automation::decision::{self, channel_name, Decision, Recipient};
use chronicle_automation::events::{AutomationEvent as A, Origin, EVENT_TYPES};
use chronicle_automation::{derive_id, template};
use chronicle_core::customer::{self, Channel, Customer, CustomerCommand, CustomerStatus};
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chronicle_projections::automation::{enrolment_key, EnrolmentStatus};
use chronicle_projections::{Projections, SYSTEM_TENANT};
use chronicle_store::Subscription;
use chrono::{DateTime, Utc};
use backoff::doubling;
use delivery::{Delivery, DeliveryConfig};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the engine behaves; `Default` is what `chronicle serve` uses.
#[derive(Clone)]
pub struct EngineConfig {
    pub delivery: DeliveryConfig,
    /// The first retry's delay; each later one doubles it (±25 % jitter), up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Attempts before a message goes to the dead-letter queue.
    pub max_attempts: u32,
    /// How often the absence triggers (`inactive_for`, `deal_stuck_for`) are looked for.
    pub scan_every: Duration,
    /// The instance's key for SendGrid's signed Event Webhook batches (a tenant may set its
    /// own); without either, batches are refused.
    pub sendgrid_key: Option<p256::ecdsa::VerifyingKey>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            delivery: DeliveryConfig { mail_from: "chronicle@localhost".into(), ..Default::default() },
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(600),
            max_attempts: 5,
            scan_every: Duration::from_secs(60),
            sendgrid_key: None,
        }
    }
}

const STRIPES: usize = 64;
/// Due steps run at once.
const TIMERS_IN_FLIGHT: usize = 64;
/// Messages handed over at once.
const DELIVERIES_IN_FLIGHT: usize = 32;

pub struct Engine {
    app: Arc<App>,
    /// Which shards of the campaign work this node holds.
    gate: Arc<lease::Gate>,
    /// Wakes the clock: something in the outbox or a timer changed.
    wake: tokio::sync::Notify,
    /// Reactions to events the engine could not make, waiting for a retry.
    parked: parked::Parked,
    delivery: Delivery,
    config: EngineConfig,
    /// Messages being delivered now (so the clock does not hand one over twice).
    in_flight: Mutex<HashSet<(String, String)>>,
    /// One enrolment is advanced by one task at a time.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// The last position the engine reacted to (or parked), for moving the saved cursor
    /// once parked reactions succeed.
    seen: std::sync::atomic::AtomicU64,
    /// Outcomes of hand-overs that could not be recorded (the store refused the write): the
    /// message is not handed over again while its outcome waits here; the outcome is written
    /// again, with a growing pause, until the store takes it.
    unrecorded: Mutex<std::collections::HashMap<(String, String), Unrecorded>>,
    /// While the store refuses writes, no new message is handed over before this instant.
    paused_until: Mutex<Option<DateTime<Utc>>>,
    /// Per tenant, each customer's RFM group as the last scan computed it (segments with
    /// `rfm_group` conditions; see `segments`).
    rfm: Mutex<std::collections::HashMap<String, Arc<std::collections::HashMap<String, chronicle_automation::segment::RfmFacts>>>>,
    /// Per tenant, the event windows segments read (see `segments::Windows`).
    windows: Mutex<std::collections::HashMap<String, segments::Windows>>,
}

/// A hand-over's outcome that is waiting to be recorded.
#[derive(Clone)]
struct Unrecorded {
    customer: String,
    outcome: (uuid::Uuid, A),
    failures: u32,
    retry_at: DateTime<Utc>,
}

/// The pause after the `failures`-th failed write of an outcome: 1 s doubling to 30 s.
fn record_pause(failures: u32) -> Duration {
    doubling(Duration::from_secs(1), failures, Duration::from_secs(30))
}

impl lease::InFlight for Engine {
    fn busy(&self, shards: u64) -> bool {
        self.in_flight.lock().expect("in-flight lock").iter().any(|(t, _)| shards & (1 << lease::shard_of(t)) != 0)
    }
}

/// What the next step of an enrolment needs.
enum Plan {
    Stop,
    Write(Vec<(uuid::Uuid, A)>),
    Command { cmd: CustomerCommand, executed: Box<(uuid::Uuid, A)> },
    Branch { condition: Condition, since: u64, step: usize, otherwise: usize, campaign: String, enrolment: String },
}

impl Engine {
    /// Start the engine's tasks on the current runtime (the only node: always at work).
    pub fn start(app: Arc<App>, config: EngineConfig) -> Result<Arc<Engine>, delivery::DeliveryError> {
        Engine::start_gated(app, config, lease::Gate::always())
    }

    /// Start the engine's tasks, working only for the tenants whose shard `gate` holds.
    pub fn start_gated(app: Arc<App>, config: EngineConfig, gate: Arc<lease::Gate>) -> Result<Arc<Engine>, delivery::DeliveryError> {
        let engine = Engine::new(app, config, gate)?;
        engine.run();
        Ok(engine)
    }

    /// The engine over `app`, its tasks not yet started (see [`run`](Self::run)): what the
    /// HTTP layer sees of it (parked reactions, the gate, provider keys) is there at once.
    pub fn new(app: Arc<App>, config: EngineConfig, gate: Arc<lease::Gate>) -> Result<Arc<Engine>, delivery::DeliveryError> {
        let delivery = Delivery::new(config.delivery.clone())?;
        Ok(Arc::new(Engine {
            app,
            gate,
            wake: tokio::sync::Notify::new(),
            parked: Default::default(),
            delivery,
            config,
            in_flight: Mutex::new(HashSet::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            seen: Default::default(),
            unrecorded: Mutex::default(),
            paused_until: Mutex::default(),
            rfm: Mutex::default(),
            windows: Mutex::default(),
        }))
    }

    /// Start the engine's tasks (reacting to the log, and the clock) on the current runtime.
    pub fn run(self: &Arc<Self>) {
        tokio::spawn(self.clone().react());
        tokio::spawn(self.clone().clock());
    }

    /// The application the engine works on.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Which shards of the campaign work this node holds.
    pub fn gate(&self) -> &Arc<lease::Gate> {
        &self.gate
    }

    /// Reactions the engine could not make, waiting for a retry.
    pub fn parked(&self) -> &parked::Parked {
        &self.parked
    }

    /// Wake the clock now (an operator's retry, a test that moved time on).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The instance's SendGrid key (a tenant's own, in the views, comes first).
    pub fn sendgrid_key(&self) -> Option<&p256::ecdsa::VerifyingKey> {
        self.config.sendgrid_key.as_ref()
    }

    /// How marketing mail's one-click unsubscribe links are made and checked, when
    /// `--public-url` is set.
    pub fn unsubscribe_links(&self) -> Option<&unsubscribe::Links> {
        self.config.delivery.unsubscribe.as_ref()
    }

    /// Send a dead letter back to the outbox (an operator's retry); the clock picks it up.
    pub async fn retry_dead_letter(&self, tenant: &str, message: &str, by: &str) -> Result<(), AppError> {
        let (customer, round) = {
            let v = self.app.views();
            match v.tenant(tenant).and_then(|t| t.automation.dead_letters.get(message)) {
                Some(m) => (m.customer.clone(), m.round),
                None => return Err(AppError::NotFound("dead letter")),
            }
        };
        let e = A::MessageRetried { message: message.to_owned(), by: by.to_owned() };
        self.write(tenant, &customer, vec![(derive_id(&[tenant, message, "retried", &round.to_string()]), e)]).await
    }


    async fn react(self: Arc<Self>) {
        loop {
            self.gate.wait().await;
            let term = self.gate.term();
            if self.react_while_held(term).await.is_none() {
                return;
            }
        }
    }

    /// Reacts from the progress of the shards held until they change hands (`Some`) or the
    /// store is gone (`None`).
    async fn react_while_held(&self, term: u64) -> Option<()> {
        let mut sub = Subscription::new(self.app.store().clone(), self.gate.start(&self.app));
        loop {
            let next = tokio::time::timeout(lease::TTL / 3, sub.next()).await;
            if !self.gate.held() || self.gate.term() != term {
                return Some(());
            }
            let Ok(next) = next else { continue };
            let ev = match next {
                Ok(Some(ev)) => ev,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, "automation: reading the log failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Another node's shard, or this shard's event reacted to before it came here.
            if !self.gate.wants(&ev.tenant, ev.position) {
                self.gate.advance(&self.app, term, self.parked.safe(ev.position));
                continue;
            }
            let mut tries: u32 = 0;
            while let Err(e) = self.on_event(&ev).await {
                tries += 1;
                tracing::warn!(error = &e as &dyn std::error::Error, position = ev.position, tries, "automation: reacting to an event failed");
                if tries >= 3 {
                    // Parked, not skipped: retried on the clock, and the saved cursor stays
                    // before it (see `parked`).
                    self.parked.park(parked::ParkedReaction {
                        position: ev.position,
                        tenant: ev.tenant.clone(),
                        event_id: ev.id,
                        event_type: ev.event_type.clone(),
                        error: e.to_string(),
                        tries,
                        next_try: self.app.now() + parked::pause(1),
                    });
                    self.app.metrics.reactions_parked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
            }
            self.seen.fetch_max(ev.position, std::sync::atomic::Ordering::SeqCst);
            self.gate.advance(&self.app, term, self.parked.safe(ev.position));
        }
    }

    /// Retry the parked reactions that are due; the saved cursor moves on past those that
    /// succeed.
    async fn retry_parked(&self) {
        let parked = &self.parked;
        parked.retain(|r| self.gate.holds(&r.tenant));
        let due = parked.due(self.app.now());
        if due.is_empty() {
            return;
        }
        for r in due {
            let ev = match self.app.store().read_all(r.position - 1, 1).await {
                Ok(mut page) if page.first().is_some_and(|e| e.position == r.position) => page.remove(0),
                Ok(_) => {
                    // Gone (expired by retention): nothing left to react to.
                    parked.done(r.position);
                    continue;
                }
                Err(e) => {
                    parked.failed(r.position, e.to_string(), self.app.now());
                    continue;
                }
            };
            match self.on_event(&ev).await {
                Ok(()) => parked.done(r.position),
                Err(e) => parked.failed(r.position, e.to_string(), self.app.now()),
            }
        }
        let seen = self.seen.load(std::sync::atomic::Ordering::SeqCst);
        self.gate.advance(&self.app, self.gate.term(), parked.safe(seen));
    }

    /// React to one event: end the enrolments it is the goal or an exit of, then enrol.
    async fn on_event(&self, ev: &EventEnvelope) -> Result<(), AppError> {
        if ev.tenant == SYSTEM_TENANT || EVENT_TYPES.contains(&ev.event_type.as_str()) {
            return Ok(());
        }
        let tenant = ev.tenant.as_str();
        if ev.event_type == "SegmentSaved" && ev.stream.starts_with("segment-") {
            return self.segment_saved(ev).await;
        }
        let customer = match customer::id_of_stream(&ev.stream) {
            Some(c) => c.to_owned(),
            None => match ev.stream.strip_prefix("order-") {
                Some(o) => match self.app.views().tenant(tenant).and_then(|t| t.orders.get(o)) {
                    Some(order) if !order.customer_id.is_empty() => order.customer_id.clone(),
                    _ => return Ok(()),
                },
                None => return Ok(()),
            },
        };
        let (name, fields) = if ev.event_type == "ActivityTracked" {
            (ev.data.get("event").and_then(Value::as_str), ev.data.get("properties").unwrap_or(&Value::Null))
        } else {
            (None, &ev.data)
        };
        let (ends, starts) = {
            let v = self.app.views();
            let Some(t) = v.tenant(tenant) else { return Ok(()) };
            let a = &t.automation;
            let mut ends = Vec::new();
            for id in a.active.get(&customer).into_iter().flatten() {
                let Some(e) = a.enrolments.get(id) else { continue };
                let Some(c) = a.definition(&e.campaign, e.definition) else { continue };
                if ev.position <= e.enrolled_position {
                    continue;
                }
                if c.converts_on(&ev.event_type, name) {
                    ends.push((e.campaign.clone(), id.clone(), true));
                } else if c.exits_on(&ev.event_type, name) {
                    ends.push((e.campaign.clone(), id.clone(), false));
                }
            }
            let mut starts = Vec::new();
            let eligible = t.customers.get(&customer).is_some_and(|c| c.exists && c.status == CustomerStatus::Active);
            for (campaign, version, c) in a.live_campaigns() {
                if !eligible || a.saved_at.get(campaign).is_none_or(|p| ev.position <= *p) {
                    continue;
                }
                if !c.triggered_by(&ev.event_type, name, fields) {
                    continue;
                }
                // A segment entry from history (an import's) enrols no one.
                if ev.event_type == "SegmentEntered" && ev.event_time < self.app.now() - segments::TRIGGER_RECENCY {
                    continue;
                }
                let enrolment = derive_id(&[tenant, campaign, &ev.id.to_string()]).to_string();
                if a.enrolments.contains_key(&enrolment) {
                    continue;
                }
                // An enrolment this very event ends does not keep the customer from a new one.
                let running = a.active.get(&customer).into_iter().flatten().any(|id| {
                    !ends.iter().any(|(_, ending, _)| ending == id)
                        && a.enrolments.get(id).is_some_and(|e| e.campaign == campaign && e.status == EnrolmentStatus::Active)
                });
                let last = a.last_enrolled.get(&enrolment_key(campaign, &customer));
                let again = match (c.reentry, last) {
                    (_, None) => true,
                    (Reentry::Never, Some(_)) => false,
                    (Reentry::Always, Some(_)) => true,
                    (Reentry::After(d), Some(t)) => elapsed(*t, d, ev.event_time),
                };
                if !running && again {
                    starts.push((campaign.to_owned(), version, enrolment));
                }
            }
            (ends, starts)
        };
        for (campaign, enrolment, converted) in ends {
            let _g = self.lock(&enrolment).await;
            let e = if converted {
                A::CampaignConverted { campaign, enrolment: enrolment.clone(), event: ev.id.to_string() }
            } else {
                let what = name.unwrap_or(&ev.event_type);
                A::CampaignExited { campaign, enrolment: enrolment.clone(), reason: format!("exit_on: {what}") }
            };
            self.write(tenant, &customer, vec![(derive_id(&[tenant, &enrolment, "end"]), e)]).await?;
        }
        for (campaign, definition, enrolment) in starts {
            let context = json!({"event": {"id": ev.id, "type": ev.event_type, "name": name, "properties": fields}});
            let e = A::CampaignEnrolled {
                campaign,
                enrolment: enrolment.clone(),
                definition,
                trigger: ev.id.to_string(),
                trigger_position: Some(ev.position),
                context,
            };
            self.write(tenant, &customer, vec![(derive_id(&[tenant, &enrolment, "enrolled"]), e)]).await?;
            self.advance(tenant, &enrolment).await?;
        }
        if customer::id_of_stream(&ev.stream).is_some() {
            self.upkeep_segments(ev, &customer).await?;
        }
        Ok(())
    }

    async fn lock(&self, enrolment: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(7).hash_one(enrolment);
        self.stripes[(h % STRIPES as u64) as usize].lock().await
    }

    /// Run an enrolment's steps from where it stands until one waits or it ends.
    pub async fn advance(&self, tenant: &str, enrolment: &str) -> Result<(), AppError> {
        let _g = self.lock(enrolment).await;
        // A program only jumps forward, so this ends; the bound guards against a bug looping.
        for _ in 0..1000 {
            let now = self.app.now();
            // Planning renders templates (bounded, but CPU all the same): the async worker is
            // given up meanwhile.
            let planned = crate::app::blocking(|| plan(&self.app.views(), tenant, enrolment, now));
            let Some((customer, plan)) = planned else { return Ok(()) };
            match plan_or_branch(self, tenant, &customer, plan).await? {
                Plan::Stop => return Ok(()),
                Plan::Write(events) => self.write(tenant, &customer, events).await?,
                Plan::Command { cmd, executed } => {
                    let (id, e) = *executed;
                    let key = id.to_string();
                    let (ty, data) = e.to_parts();
                    let res = self
                        .app
                        .customer_commands_from(tenant, &customer, vec![cmd], &actor(&e), Some((&key, now)), Some((ty, data)))
                        .await;
                    match res {
                        Ok(_) => {}
                        // The rule refused (the stage is already further on, say): the step is
                        // done all the same, with the refusal on record.
                        Err(AppError::Rule { code, .. }) => {
                            let e = match e {
                                A::CampaignStepExecuted { campaign, enrolment, step, action, next } => {
                                    A::CampaignStepExecuted { campaign, enrolment, step, action: format!("{action} (skipped: {code})"), next }
                                }
                                other => other,
                            };
                            self.write(tenant, &customer, vec![(id, e)]).await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Plan::Branch { .. } => unreachable!("resolved by plan_or_branch"),
            }
        }
        Err(AppError::internal(format!("advancing enrolment {enrolment}"), "it did not settle"))
    }

    /// Append what automation did on the customer's stream, and wake the clock (a timer or
    /// the outbox may have changed).
    async fn write(&self, tenant: &str, customer: &str, events: Vec<(uuid::Uuid, A)>) -> Result<(), AppError> {
        write(&self.app, tenant, customer, events).await?;
        self.wake.notify_one();
        Ok(())
    }


    async fn clock(self: Arc<Self>) {
        // Every instant here is the application's clock's (a test moves it and wakes the engine).
        let mut next_scan = self.app.now();
        loop {
            if !self.gate.held() {
                self.gate.wait().await;
                continue;
            }
            if self.app.now() >= next_scan {
                if let Err(e) = self.scan(self.app.now()).await {
                    tracing::warn!(error = &e as &dyn std::error::Error, "automation: the scan for absence triggers failed");
                }
                if let Err(e) = self.scan_segments(self.app.now()).await {
                    tracing::warn!(error = &e as &dyn std::error::Error, "automation: the scan of time-bound segments failed");
                }
                next_scan = self.app.now() + chrono::Duration::from_std(self.config.scan_every).unwrap_or(chrono::Duration::days(1));
            }
            self.retry_parked().await;
            let now = self.app.now();
            let (timers, messages, next) = self.due(now);
            // Due steps run side by side, so their appends share commits (group commit).
            let failed = futures_util::stream::iter(timers)
                .map(|(tenant, enrolment)| {
                    let this = self.clone();
                    async move {
                        let r = this.advance(&tenant, &enrolment).await;
                        if let Err(e) = &r {
                            tracing::warn!(error = e as &dyn std::error::Error, %enrolment, "automation: a due step failed");
                        }
                        r.is_err()
                    }
                })
                .buffer_unordered(TIMERS_IN_FLIGHT)
                .fold(false, |any, failed| async move { any || failed })
                .await;
            for (tenant, message) in messages {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.deliver(&tenant, &message).await {
                        tracing::warn!(error = &e as &dyn std::error::Error, %message, "automation: recording a delivery failed");
                    }
                    this.in_flight.lock().expect("in-flight lock").remove(&(tenant, message));
                    this.wake.notify_one();
                });
            }
            let wait = if failed {
                Duration::from_secs(1)
            } else {
                next.map_or(Duration::from_secs(1), |t| (t - now).to_std().unwrap_or_default().min(Duration::from_secs(1)))
            }
            .min((next_scan - self.app.now()).to_std().unwrap_or_default());
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Enrol whoever an absence trigger now applies to: customers inactive for the campaign's
    /// span (once per inactive spell: the enrolment id comes from the last activity's time),
    /// and the customers of deals stuck in a stage (once per deal and stage).
    async fn scan(&self, now: DateTime<Utc>) -> Result<(), AppError> {
        let starts: Vec<(String, String, String, u64, String, Value)> = {
            let v = self.app.views();
            let mut out = Vec::new();
            for (tenant, t) in v.tenants.iter().filter(|(tenant, _)| self.gate.holds(tenant)) {
                let a = &t.automation;
                for (campaign, version, c) in a.live_campaigns() {
                    let candidates: Vec<(String, String, Value)> = match c.trigger {
                        Trigger::Event { .. } => continue,
                        Trigger::InactiveFor(d) => a
                            .last_active
                            .iter()
                            .filter(|(_, last)| elapsed(**last, d, now))
                            .map(|(id, last)| (id.clone(), last.to_rfc3339(), json!({"last_active": last})))
                            .collect(),
                        Trigger::DealStuckFor(d) => a
                            .deal_stage_since
                            .iter()
                            .filter(|(_, since)| elapsed(**since, d, now))
                            .filter_map(|(deal, since)| {
                                let dl = t.deals.get(deal)?;
                                let customer = dl.customer_id.clone()?;
                                let ctx = json!({"deal": {"id": dl.id, "name": dl.name, "stage": dl.stage, "owner": dl.owner,
                                                          "amount": dl.amount, "currency": dl.currency, "in_stage_since": since}});
                                Some((customer, format!("{deal}/{}/{}", dl.stage, since.to_rfc3339()), ctx))
                            })
                            .collect(),
                    };
                    for (customer, spell, context) in candidates {
                        let enrolment = derive_id(&[tenant, campaign, &customer, &spell]).to_string();
                        let eligible = t.customers.get(&customer).is_some_and(|c| c.exists && c.status == CustomerStatus::Active);
                        if !eligible || a.enrolments.contains_key(&enrolment) {
                            continue;
                        }
                        let running = a.active.get(&customer).into_iter().flatten().any(|id| {
                            a.enrolments.get(id).is_some_and(|e| e.campaign == campaign && e.status == EnrolmentStatus::Active)
                        });
                        let again = match (c.reentry, a.last_enrolled.get(&enrolment_key(campaign, &customer))) {
                            (_, None) | (Reentry::Always, _) => true,
                            (Reentry::Never, Some(_)) => false,
                            (Reentry::After(d), Some(t)) => elapsed(*t, d, now),
                        };
                        if !running && again {
                            out.push((tenant.clone(), customer, campaign.to_owned(), version, enrolment, context));
                        }
                    }
                }
            }
            out
        };
        for (tenant, customer, campaign, definition, enrolment, context) in starts {
            let e = A::CampaignEnrolled {
                campaign,
                enrolment: enrolment.clone(),
                definition,
                trigger: "scan".into(),
                trigger_position: None,
                context,
            };
            self.write(&tenant, &customer, vec![(derive_id(&[&tenant, &enrolment, "enrolled"]), e)]).await?;
            self.advance(&tenant, &enrolment).await?;
        }
        Ok(())
    }

    /// The waits and messages due at `now`, and when the next one falls due.
    #[allow(clippy::type_complexity)]
    fn due(&self, now: DateTime<Utc>) -> (Vec<(String, String)>, Vec<(String, String)>, Option<DateTime<Utc>>) {
        let v = self.app.views();
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        let mut unrecorded = self.unrecorded.lock().expect("unrecorded lock");
        // An outcome whose message left the outbox some other way (recorded by another node,
        // erased) is not waited for.
        unrecorded.retain(|(tenant, m), _| v.tenant(tenant).is_some_and(|t| t.automation.outbox.contains_key(m)));
        let paused = self.paused_until.lock().expect("pause lock").is_some_and(|until| until > now);
        let (mut timers, mut messages, mut next) = (Vec::new(), Vec::new(), None::<DateTime<Utc>>);
        for (tenant, t) in v.tenants.iter().filter(|(tenant, _)| self.gate.holds(tenant)) {
            let a = &t.automation;
            for (due, e) in &a.timers {
                if *due > now {
                    next = Some(next.map_or(*due, |n| n.min(*due)));
                    break;
                }
                timers.push((tenant.clone(), e.clone()));
            }
            for (due, m) in &a.outbox_due {
                if *due > now {
                    next = Some(next.map_or(*due, |n| n.min(*due)));
                    break;
                }
                if in_flight.len() >= DELIVERIES_IN_FLIGHT {
                    break;
                }
                let key = (tenant.clone(), m.clone());
                // Handed over already, its outcome not yet recorded: only the record is tried
                // again, when its pause is over. While the store refuses writes, nothing new
                // is handed over (its outcome could not be recorded either).
                let ready = match unrecorded.get(&key) {
                    Some(u) => u.retry_at <= now,
                    None => !paused,
                };
                if ready && in_flight.insert(key.clone()) {
                    messages.push(key);
                }
            }
        }
        (timers, messages, next)
    }

    /// Hand one message over and record the outcome — or, when it was handed over already and
    /// only its outcome is missing, record that.
    async fn deliver(&self, tenant: &str, message: &str) -> Result<(), AppError> {
        let key = (tenant.to_owned(), message.to_owned());
        let waiting = self.unrecorded.lock().expect("unrecorded lock").get(&key).cloned();
        if let Some(u) = waiting {
            return self.record(key, u.customer, u.outcome).await;
        }
        let (m, allowed) = {
            let v = self.app.views();
            let Some(m) = v.tenant(tenant).and_then(|t| t.automation.outbox.get(message)).cloned() else { return Ok(()) };
            // Consent is checked again right before the hand-over: a revocation committed
            // while the message waited in the outbox still wins.
            let allowed = match channel_of(&m.channel) {
                Some(c) => {
                    let d = v.consent_check(tenant, &m.customer, c, m.purpose);
                    if d.allowed { None } else { Some(d.reason) }
                }
                None => None,
            };
            (m, allowed)
        };
        if let Some(reason) = allowed {
            let e = A::MessageSuppressed {
                message: m.message.clone(),
                channel: m.channel.clone(),
                purpose: m.purpose,
                reason: format!("{reason} (before sending)"),
                origin: m.origin.clone(),
            };
            return self.write(tenant, &m.customer, vec![(derive_id(&[tenant, message, "suppressed"]), e)]).await;
        }
        let attempt = m.attempts + 1;
        let outcome = self.delivery.deliver(tenant, &m, self.app.webhook_targets()).await;
        let counted = match &outcome {
            Ok(_) => ("sent", ""),
            Err(e) if attempt >= self.config.max_attempts => ("dead_lettered", e.as_str()),
            Err(e) => ("failed", e.as_str()),
        };
        self.app.metrics.labelled.message(&m.channel, counted.0, counted.1);
        let round = m.round.to_string();
        let event = match outcome {
            Ok(provider_id) => {
                (derive_id(&[tenant, message, "sent"]), A::MessageSent { message: m.message.clone(), channel: m.channel.clone(), attempt, provider_id })
            }
            Err(error) if attempt >= self.config.max_attempts => (
                derive_id(&[tenant, message, "dead", &round]),
                A::MessageDeadLettered { message: m.message.clone(), attempts: attempt, error },
            ),
            Err(error) => {
                let retry_at = self.app.now() + backoff(&self.config, attempt);
                (
                    derive_id(&[tenant, message, "failed", &round, &attempt.to_string()]),
                    A::MessageFailed { message: m.message.clone(), attempt, error, retry_at },
                )
            }
        };
        self.record(key, m.customer, event).await
    }

    /// Write a hand-over's outcome; when the store refuses it, keep it to write again after a
    /// pause (the message is not handed over again meanwhile) and pause new hand-overs.
    async fn record(&self, key: (String, String), customer: String, outcome: (uuid::Uuid, A)) -> Result<(), AppError> {
        match self.write(&key.0, &customer, vec![outcome.clone()]).await {
            Ok(()) => {
                self.unrecorded.lock().expect("unrecorded lock").remove(&key);
                *self.paused_until.lock().expect("pause lock") = None;
                Ok(())
            }
            Err(e) => {
                let mut unrecorded = self.unrecorded.lock().expect("unrecorded lock");
                let failures = unrecorded.get(&key).map_or(0, |u| u.failures) + 1;
                let retry_at = self.app.now() + chrono::Duration::from_std(record_pause(failures)).unwrap_or(chrono::Duration::seconds(30));
                unrecorded.insert(key, Unrecorded { customer, outcome, failures, retry_at });
                *self.paused_until.lock().expect("pause lock") = Some(retry_at);
                self.app.metrics.outcomes_unrecorded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// Append what automation did on the customer's stream.
async fn write(app: &App, tenant: &str, customer: &str, events: Vec<(uuid::Uuid, A)>) -> Result<(), AppError> {
    let now = app.now();
    let suppressed: Vec<(String, String)> = events
        .iter()
        .filter_map(|(_, e)| match e {
            A::MessageSuppressed { channel, reason, .. } => Some((channel.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    let batch = events
        .into_iter()
        .map(|(id, e)| {
            let who = actor(&e);
            let (ty, data) = e.to_parts();
            NewEvent::new(id, ty, data, now).with_actor(&who)
        })
        .collect();
    match app.append(tenant, &customer::stream_of(customer), ExpectedVersion::Any, batch).await {
        Ok(_) => {
            for (channel, reason) in suppressed {
                app.metrics.labelled.message(&channel, "suppressed", &reason);
            }
            Ok(())
        }
        // Ids derive from causes: a stored id means this was already done.
        Err(AppError::IdReused(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The next retry's delay: `base · 2^(attempt-1)`, ±25 % so retries of many messages spread
/// out, at most `retry_max`.
fn backoff(config: &EngineConfig, attempt: u32) -> chrono::Duration {
    let exp = doubling(config.retry_base, attempt, config.retry_max);
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    let jitter = 0.75 + (u16::from_le_bytes(r) as f64 / u16::MAX as f64) * 0.5;
    chrono::Duration::from_std(exp.mul_f64(jitter)).unwrap_or(chrono::Duration::seconds(1))
}

fn actor(e: &A) -> String {
    let campaign = match e {
        A::CampaignEnrolled { campaign, .. }
        | A::CampaignStepScheduled { campaign, .. }
        | A::CampaignStepExecuted { campaign, .. }
        | A::CampaignExited { campaign, .. }
        | A::CampaignConverted { campaign, .. } => Some(campaign.as_str()),
        A::MessageQueued { origin, .. } | A::MessageSuppressed { origin, .. } => origin.as_ref().map(|o| o.campaign.as_str()),
        _ => None,
    };
    match campaign {
        Some(c) => format!("campaign:{c}"),
        None => "automation".into(),
    }
}

/// Whether `span` has passed since `since` by `now` (never, when the sum is past the end of
/// time: an event's time is bounded, but the engine does not rely on it).
fn elapsed(since: DateTime<Utc>, span: chrono::Duration, now: DateTime<Utc>) -> bool {
    since.checked_add_signed(span).is_some_and(|t| t <= now)
}

fn channel_of(name: &str) -> Option<Channel> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}

/// Resolve a branch (it may read the customer's stream) into what it writes.
async fn plan_or_branch(engine: &Engine, tenant: &str, customer: &str, plan: Plan) -> Result<Plan, AppError> {
    let Plan::Branch { condition, since, step, otherwise, campaign, enrolment } = plan else { return Ok(plan) };
    let holds = match &condition {
        Condition::TraitEquals(name, value) => {
            engine.app.views().customer(tenant, customer).is_some_and(|c| c.traits.get(name) == Some(value))
        }
        Condition::Happened(wanted) => {
            let events = engine.app.store().read_stream(tenant, &customer::stream_of(customer), 1, usize::MAX).await?;
            events.iter().filter(|e| e.position > since).any(|e| {
                let name = (e.event_type == "ActivityTracked").then(|| e.data.get("event").and_then(Value::as_str)).flatten();
                chronicle_automation::campaign::names_match(wanted, &e.event_type, name)
            })
        }
    };
    let next = if holds { step + 1 } else { otherwise };
    let action = if holds { "if: true" } else { "if: false" };
    let e = A::CampaignStepExecuted { campaign, enrolment: enrolment.clone(), step, action: action.into(), next };
    Ok(Plan::Write(vec![(derive_id(&[tenant, &enrolment, "executed", &step.to_string()]), e)]))
}

/// Decide the next step of an enrolment from the read models (pure but for `now`): the
/// customer it concerns and what to do; `None` when the enrolment is unknown.
fn plan(v: &Projections, tenant: &str, enrolment: &str, now: DateTime<Utc>) -> Option<(String, Plan)> {
    let t = v.tenant(tenant)?;
    let a = &t.automation;
    let e = a.enrolments.get(enrolment)?;
    let customer = e.customer.clone();
    if e.status != EnrolmentStatus::Active {
        return Some((customer, Plan::Stop));
    }
    let end = |reason: &str| {
        let ev = A::CampaignExited { campaign: e.campaign.clone(), enrolment: e.id.clone(), reason: reason.into() };
        Plan::Write(vec![(derive_id(&[tenant, enrolment, "end"]), ev)])
    };
    let Some(c) = a.definition(&e.campaign, e.definition) else { return Some((customer, end("definition_missing"))) };
    if !a.campaigns.contains_key(&e.campaign) {
        return Some((customer, end("campaign_deleted")));
    }
    let person = t.customers.get(&customer);
    if person.is_none_or(|p| p.status == CustomerStatus::Erased) {
        return Some((customer, end("erased")));
    }
    let step = e.step;
    let Some(op) = c.program.get(step) else { return Some((customer, end("completed"))) };
    let step_s = step.to_string();
    let executed = |action: &str, next: usize| {
        let ev = A::CampaignStepExecuted { campaign: e.campaign.clone(), enrolment: e.id.clone(), step, action: action.into(), next };
        (derive_id(&[tenant, enrolment, "executed", &step_s]), ev)
    };
    let schedule = |due: DateTime<Utc>, reason: Option<&str>| {
        let ev = A::CampaignStepScheduled {
            campaign: e.campaign.clone(),
            enrolment: e.id.clone(),
            step,
            due,
            reason: reason.map(str::to_owned),
        };
        (derive_id(&[tenant, enrolment, "scheduled", &step_s, &due.to_rfc3339()]), ev)
    };
    let waiting = e.due.is_some_and(|d| d > now);
    let plan = match op {
        _ if waiting => Plan::Stop,
        Op::Jump(to) => Plan::Write(vec![executed("jump", *to)]),
        Op::Wait(w) => match e.due {
            Some(_) => Plan::Write(vec![executed("wait", step + 1)]),
            None => {
                let due = match w {
                    Wait::For(d) => now.checked_add_signed(*d).unwrap_or(chronicle_core::time::latest()),
                    Wait::Until(time) => {
                        next_local_time(now, zone(person.and_then(|p| p.preferences.time_zone.as_deref())), *time)
                    }
                };
                Plan::Write(vec![schedule(due, None)])
            }
        },
        Op::Send(spec) => {
            let person = person.expect("checked above");
            let origin = Origin { campaign: e.campaign.clone(), enrolment: e.id.clone(), step };
            let key = derive_id(&[tenant, enrolment, "message", &step_s]);
            let suppressed = |channel: Channel, reason: String| A::MessageSuppressed {
                message: key.to_string(),
                channel: channel_name(channel).into(),
                purpose: spec.purpose,
                reason,
                origin: Some(origin.clone()),
            };
            match send_decision(v, tenant, person, spec, now) {
                Decision::Defer { until, .. } => Plan::Write(vec![schedule(until, Some("quiet_hours"))]),
                Decision::Suppress { channel, reason } => {
                    Plan::Write(vec![(key, suppressed(channel, reason)), executed("send: suppressed", step + 1)])
                }
                Decision::Send { channel } => {
                    let consent = consent_position(v, tenant, &person.id, channel, spec.purpose);
                    let queued = queue(a, person, &e.context, spec, channel, key.to_string(), origin.clone(), consent)
                        .unwrap_or_else(|reason| suppressed(channel, reason));
                    Plan::Write(vec![(key, queued), executed("send", step + 1)])
                }
            }
        }
        Op::Webhook { url } => {
            let person = person.expect("checked above");
            let key = derive_id(&[tenant, enrolment, "message", &step_s]);
            let body = json!({"customer": customer, "campaign": e.campaign, "traits": person.traits,
                              "lifecycle_stage": person.lifecycle_stage, "owner": person.owner, "context": e.context});
            let ev = A::MessageQueued {
                message: key.to_string(),
                channel: "webhook".into(),
                purpose: chronicle_core::customer::Purpose::Transactional,
                to: url.clone(),
                subject: None,
                body: body.to_string(),
                template: None,
                origin: Some(Origin { campaign: e.campaign.clone(), enrolment: e.id.clone(), step }),
                consent_position: None,
            };
            Plan::Write(vec![(key, ev), executed("webhook", step + 1)])
        }
        Op::Tag(tag) => Plan::Command { cmd: CustomerCommand::Tag { tag: tag.clone() }, executed: Box::new(executed("tag", step + 1)) },
        Op::SetStage(to) => Plan::Command { cmd: CustomerCommand::ChangeStage { to: *to }, executed: Box::new(executed("set_stage", step + 1)) },
        Op::Branch { condition, otherwise } => {
            Plan::Branch {
                condition: condition.clone(),
                since: e.enrolled_position,
                step,
                otherwise: *otherwise,
                campaign: e.campaign.clone(),
                enrolment: e.id.clone(),
            }
        }
    };
    Some((customer, plan))
}

fn send_decision(v: &Projections, tenant: &str, person: &Customer, spec: &SendSpec, now: DateTime<Utc>) -> Decision {
    let a = &v.tenant(tenant).expect("the tenant exists").automation;
    let r = Recipient {
        status: person.status,
        email: person.email.as_deref(),
        email_bounced: person.email.as_deref().is_some_and(|e| a.bounced(e)),
        phone: person.phone.as_deref(),
        preferences: &person.preferences,
    };
    decision::decide(
        spec,
        &r,
        |c, p| v.consent_check(tenant, &person.id, c, p),
        |c, since| a.sent_since(&person.id, channel_name(c), since),
        now,
    )
}

/// The position of the customer's latest consent grant for this channel and purpose: what a send
/// the decision allowed relied on (`None` when no grant is on record, as for a purpose that
/// needs none).
fn consent_position(v: &Projections, tenant: &str, customer: &str, channel: Channel, purpose: chronicle_core::customer::Purpose) -> Option<u64> {
    let history = v.tenant(tenant)?.consent_history.get(customer)?;
    history.iter().rev().find(|h| h.channel == channel && h.purpose == purpose).filter(|h| h.granted).map(|h| h.position)
}

/// The `MessageQueued` for a send, rendered now (so every retry sends the same text); a
/// missing template or a render error suppresses the message with that reason.
#[allow(clippy::too_many_arguments)]
fn queue(
    a: &chronicle_projections::automation::AutomationView,
    person: &Customer,
    context: &Value,
    spec: &SendSpec,
    channel: Channel,
    message: String,
    origin: Origin,
    consent_position: Option<u64>,
) -> Result<A, String> {
    let Some(t) = a.templates.get(&spec.template) else { return Err(format!("template_missing: {}", spec.template)) };
    let ctx = template::Context { id: &person.id, email: person.email.as_deref(), phone: person.phone.as_deref(), traits: &person.traits, context };
    let (subject, body) = template::render(&t.subject, &t.body, &ctx).map_err(|e| format!("template_error: {e}"))?;
    let to = match channel {
        Channel::Email => person.email.clone(),
        Channel::Sms | Channel::Phone => person.phone.clone(),
        Channel::Push | Channel::InApp => Some(person.id.clone()),
    };
    Ok(A::MessageQueued {
        message,
        channel: channel_name(channel).into(),
        purpose: spec.purpose,
        to: to.unwrap_or_default(),
        subject: Some(subject),
        body,
        template: Some(spec.template.clone()),
        origin: Some(origin),
        consent_position,
    })
}

/// Counts for `/metrics`: outbox depth, how late its oldest due message is, dead letters,
/// pending waits.
pub fn gauges(v: &Projections, now: DateTime<Utc>) -> (usize, f64, usize, usize) {
    let (mut depth, mut lag, mut dead, mut timers) = (0, 0.0f64, 0, 0);
    for t in v.tenants.values() {
        let a = &t.automation;
        depth += a.outbox.len();
        dead += a.dead_letters.len();
        timers += a.timers.len();
        if let Some((due, _)) = a.outbox_due.first() {
            lag = lag.max((now - *due).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
    (depth, lag, dead, timers)
}
