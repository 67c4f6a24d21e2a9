//! Segment-compatible ingest: parsing and validating Segment messages (identify, track, page,
//! screen, batch) and mapping them onto the domain.
//!
//! - `identify` registers the customer (`userId`) or updates its traits (old and new values);
//!   `traits.email` / `traits.phone` become the profile's e-mail and phone. The call itself is
//!   recorded on the timeline (`ActivityTracked`, kind `identify`) in the same append, which
//!   is what makes a redelivery a no-op even after newer identifies changed the traits.
//! - `track` / `page` / `screen` become `ActivityTracked` on the customer's stream, or on
//!   `anonymous-<anonymousId>` when there is no `userId`.
//! - Identity resolution: `identify` (or any call) carrying both `userId` and `anonymousId`,
//!   and `alias` (`previousId` → `userId`), record `IdentityLinked` on the customer; the
//!   customer's timeline then includes the anonymous stream's history. An anonymous id linked
//!   to one customer is never moved to another (409 `identity_linked_elsewhere`).
//! - `alias` whose `previousId` is itself a known customer merges the two (`previousId` into
//!   `userId`, which survives; see `App::merge_customers`) — when sent with a secret key (an
//!   `ingest`-role key, as Segment's server SDKs send their write key). The public write key,
//!   which sits in web pages, may not merge two known customers: such an alias is rejected
//!   (`merge_not_allowed`, reported per message in the 200 answer).
//! - Segment's e-commerce events also drive the Order aggregate: "Order Completed" places and
//!   pays the order, "Order Refunded" refunds it (the given total, else what remains), "Order
//!   Cancelled" cancels it; their events' ids derive from the messageId, so a redelivery never
//!   acts twice.
//! - `group` records `CustomerGroupJoined` (the account and its traits) on the customer.
//! - `messageId` deduplicates: the event ids are derived from (tenant, messageId), so a client
//!   retrying after a timeout stores nothing new (an identify delivered again changes nothing,
//!   even after later identifies changed the traits it set).
//! - Event time corrects the client's clock as Segment does:
//!   `receivedAt − (sentAt − timestamp)` when both are given.
//! - A batch is validated whole first (400 and nothing written on any bad message); business
//!   rules that only the write can check (an e-mail held by another customer, an erased
//!   customer) reject just that message, reported in the answer with its index.

use crate::app::App;
use crate::error::AppError;
use chronicle_core::customer::{self, CustomerCommand};
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Segment's limits: 32 KB a message, 500 KB a batch.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// A validated message, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub message_id: String,
    pub event_time: DateTime<Utc>,
    pub event_id: uuid::Uuid,
    /// The message as received (with batch-level context merged in), kept as the payload.
    pub raw: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Identify,
    Track,
    Page,
    Screen,
    Alias,
    Group,
}

/// A refused message, with Segment's error name where it has one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("message {index}: {message}")]
pub struct Invalid {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

fn invalid(index: usize, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { index, code, message: message.into() }
}

/// The event id for a message (see `chronicle_core::ids`, where every derivation lives).
pub use chronicle_core::ids::event_id;

pub(crate) fn time_field(m: &Map<String, Value>, key: &str, index: usize) -> Result<Option<DateTime<Utc>>, Invalid> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| invalid(index, "bad_timestamp", format!("{key} is not an ISO-8601 timestamp: {s:?}"))),
        Some(_) => Err(invalid(index, "bad_timestamp", format!("{key} must be a string"))),
    }
}

fn id_field(m: &Map<String, Value>, key: &str, index: usize) -> Result<Option<String>, Invalid> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Segment accepts numeric ids and stringifies them.
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(index, "bad_request", format!("{key} must be a string"))),
    }
}

/// Segment's clock-skew correction: `receivedAt − (sentAt − timestamp)`; `None` when the
/// result falls outside the accepted range of instants ([`chronicle_core::time`]).
fn corrected_time(
    timestamp: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let t = match (timestamp, sent_at) {
        (Some(ts), Some(sent)) => received_at.checked_sub_signed(sent.signed_duration_since(ts))?,
        (Some(ts), None) => ts,
        _ => received_at,
    };
    chronicle_core::time::in_range(t).then_some(t)
}

/// Ids are at most 128 characters, without control characters.
fn acceptable_id(id: &str) -> bool {
    id.len() <= 128 && !id.chars().any(char::is_control)
}

/// Validate one message (`kind` from the endpoint, or from `type` inside a batch).
pub fn parse_message(
    tenant: &str,
    index: usize,
    value: Value,
    kind: Option<Kind>,
    received_at: DateTime<Utc>,
    batch_sent_at: Option<DateTime<Utc>>,
    text_len: Option<usize>,
) -> Result<Message, Invalid> {
    let Value::Object(m) = value else { return Err(invalid(index, "bad_request", "a message must be a JSON object")) };
    // `text_len`: the length of the JSON text the message was parsed from, when known. Compact
    // serialization never outgrows its source text, so a short text needs no measuring.
    let size = match text_len {
        Some(n) if n <= MAX_MESSAGE_BYTES => n,
        _ => serde_json::to_vec(&m).map(|v| v.len()).unwrap_or(usize::MAX),
    };
    if size > MAX_MESSAGE_BYTES {
        return Err(invalid(index, "message_too_large", format!("message is {size} bytes; the limit is 32 KB")));
    }
    let kind = match kind {
        Some(k) => k,
        None => match m.get("type").and_then(Value::as_str) {
            Some("identify") => Kind::Identify,
            Some("track") => Kind::Track,
            Some("page") => Kind::Page,
            Some("screen") => Kind::Screen,
            Some("alias") => Kind::Alias,
            Some("group") => Kind::Group,
            Some(other) => return Err(invalid(index, "unknown_type", format!("unsupported message type {other:?}"))),
            None => return Err(invalid(index, "unknown_type", "a batch message needs a type")),
        },
    };
    let user_id = id_field(&m, "userId", index)?;
    let anonymous_id = id_field(&m, "anonymousId", index)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(invalid(index, "no_user_anon_id", "either userId or anonymousId is required"));
    }
    for id in user_id.iter().chain(&anonymous_id) {
        if !acceptable_id(id) {
            return Err(invalid(index, "bad_request", "ids are at most 128 characters, no control characters"));
        }
    }
    if kind == Kind::Alias && (user_id.is_none() || id_field(&m, "previousId", index)?.is_none()) {
        return Err(invalid(index, "bad_request", "alias needs userId and previousId"));
    }
    if kind == Kind::Group && (user_id.is_none() || id_field(&m, "groupId", index)?.is_none()) {
        return Err(invalid(index, "bad_request", "group needs userId and groupId"));
    }
    if kind == Kind::Track && m.get("event").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(invalid(index, "bad_request", "track needs an event name"));
    }
    if kind == Kind::Identify {
        if user_id.is_none() {
            // Anonymous identify: traits for a visitor not yet known; kept as activity.
        } else if let Some(traits) = identify_traits(&m) {
            let Value::Object(t) = traits else {
                return Err(invalid(index, "bad_request", "traits must be an object"));
            };
            if let Some(Value::String(e)) = t.get("email") {
                customer::normalize_email(e).map_err(|e| invalid(index, "bad_request", e.to_string()))?;
            }
            if let Some(Value::String(p)) = t.get("phone") {
                customer::normalize_phone(p).map_err(|e| invalid(index, "bad_request", e.to_string()))?;
            }
        }
    }
    let timestamp = time_field(&m, "timestamp", index)?;
    let sent_at = time_field(&m, "sentAt", index)?.or(batch_sent_at);
    let event_time = corrected_time(timestamp, sent_at, received_at).ok_or_else(|| {
        invalid(index, "bad_timestamp", "the event's time (timestamp, corrected by sentAt) is outside 1900-01-01..9999-12-31")
    })?;
    let message_id = match id_field(&m, "messageId", index)? {
        Some(id) => id,
        // No messageId: the message can't be deduplicated; give it a fresh one.
        None => uuid::Uuid::now_v7().to_string(),
    };
    Ok(Message { kind, event_id: event_id(tenant, &message_id), user_id, anonymous_id, message_id, event_time, raw: m })
}

/// Validate a whole `/v1/batch` body; batch-level `context` and `integrations` are merged into
/// each message (the message's own keys win).
pub fn parse_batch(tenant: &str, body: Value, received_at: DateTime<Utc>) -> Result<Vec<Message>, Invalid> {
    let Value::Object(mut b) = body else { return Err(invalid(0, "bad_request", "the body must be a JSON object")) };
    let Some(Value::Array(batch)) = b.remove("batch") else {
        return Err(invalid(0, "bad_request", "batch must be an array"));
    };
    let sent_at = time_field(&b, "sentAt", 0)?;
    let shared: Vec<(String, Value)> =
        ["context", "integrations"].iter().filter_map(|k| b.get(*k).map(|v| ((*k).to_owned(), v.clone()))).collect();
    batch
        .into_iter()
        .enumerate()
        .map(|(i, mut msg)| {
            if let Value::Object(m) = &mut msg {
                for (k, v) in &shared {
                    merge_into(m, k, v);
                }
            }
            parse_message(tenant, i, msg, None, received_at, sent_at, None)
        })
        .collect()
}

fn merge_into(m: &mut Map<String, Value>, key: &str, shared: &Value) {
    match (m.get_mut(key), shared) {
        (Some(Value::Object(own)), Value::Object(base)) => {
            for (k, v) in base {
                own.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        (None, v) => {
            m.insert(key.to_owned(), v.clone());
        }
        _ => {}
    }
}

/// What happened to a batch: the messages refused at write time, by index.
#[derive(Debug, Default)]
pub struct Outcome {
    pub written: usize,
    pub rejected: Vec<(usize, &'static str, String)>,
}

/// A validated message as `write` takes it: an activity (track, page, screen, or an identify
/// that only describes a visitor) already in the form it is stored in, or a call that changes
/// a customer (identify, alias, group).
pub enum Call {
    Activity(Activity),
    Change(Message),
}

impl Call {
    pub fn of(actor: &str, msg: Message) -> Call {
        // An identify without a userId only describes a visitor: kept as activity.
        if matches!(msg.kind, Kind::Alias | Kind::Group) || (msg.kind == Kind::Identify && msg.user_id.is_some()) {
            Call::Change(msg)
        } else {
            Call::Activity(Activity::of(actor, msg))
        }
    }
}

/// An activity message as the `ActivityTracked` event it becomes, with what it implies.
pub struct Activity {
    pub stream: String,
    pub event: NewEvent,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// For Segment's e-commerce events: what the message does to an order.
    order: Option<Box<OrderEffect>>,
}

impl Activity {
    fn of(actor: &str, msg: Message) -> Activity {
        let order = order_effect(&msg).map(Box::new);
        let (user_id, anonymous_id) = (msg.user_id.clone(), msg.anonymous_id.clone());
        let (stream, event) = activity_event(actor, msg);
        Activity { stream, event, user_id, anonymous_id, order }
    }

    /// The order the message moves, if any.
    pub fn order_id(&self) -> Option<&str> {
        self.order.as_ref().map(|o| o.order_id.as_str())
    }
}

/// Replace the customer ids of a message or a batch (`{"batch": [...]}`) that are personal
/// data by their pseudonyms, before it is parsed (see [`crate::pseudonym`]).
pub fn pseudonymize(p: &crate::pseudonym::Pseudonyms, value: &mut Value) {
    match value.get_mut("batch") {
        Some(Value::Array(batch)) => {
            for m in batch.iter_mut().filter_map(Value::as_object_mut) {
                p.apply(m, &["userId", "previousId"]);
            }
        }
        _ => {
            if let Some(m) = value.as_object_mut() {
                p.apply(m, &["userId", "previousId"]);
            }
        }
    }
}

/// Who sent the messages, as far as merging known customers goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A public write key (it sits in web pages): it may link anonymous ids to a customer,
    /// but an `alias` that would merge two known customers is rejected.
    Public,
    /// A secret the sender keeps (an `ingest`-role or writer API key, an import from a file):
    /// an `alias` between two known customers merges them.
    Trusted,
}

/// Write validated messages in order (see [`write_calls`]).
pub async fn write(app: &App, tenant: &str, actor: &str, sender: Sender, messages: Vec<Message>) -> Result<Outcome, AppError> {
    write_calls(app, tenant, actor, sender, messages.into_iter().map(|m| Call::of(actor, m)).collect()).await
}

/// Write calls in order. Runs of activity between identify/alias/group calls are written
/// together: one append per stream, the streams concurrently, so a batch costs a few group
/// commits instead of one per message.
pub async fn write_calls(app: &App, tenant: &str, actor: &str, sender: Sender, calls: Vec<Call>) -> Result<Outcome, AppError> {
    let mut out = Outcome::default();
    let mut run: Vec<(usize, Activity)> = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        match call {
            Call::Change(msg) => {
                write_activity_run(app, tenant, actor, std::mem::take(&mut run), &mut out).await?;
                let result = write_one(app, tenant, actor, sender, msg).await;
                record(&mut out, i, result)?;
            }
            Call::Activity(a) => run.push((i, a)),
        }
    }
    write_activity_run(app, tenant, actor, run, &mut out).await?;
    out.rejected.sort_by_key(|r| r.0);
    Ok(out)
}

fn record(out: &mut Outcome, index: usize, result: Result<(), AppError>) -> Result<(), AppError> {
    match result {
        Ok(()) => out.written += 1,
        Err(e @ AppError::Internal { .. }) => return Err(e),
        Err(e) => out.rejected.push((index, e.code(), e.to_string())),
    }
    Ok(())
}

async fn write_activity_run(
    app: &App,
    tenant: &str,
    actor: &str,
    run: Vec<(usize, Activity)>,
    out: &mut Outcome,
) -> Result<(), AppError> {
    if run.is_empty() {
        return Ok(());
    }
    let done = write_activity_runs(app, tenant, actor, vec![run]).await?;
    for (i, r) in done.into_iter().flatten() {
        record(out, i, r)?;
    }
    Ok(())
}

/// Write runs of activity from independent senders (no two runs share a stream, visitor or
/// order): every run's events go out together, one append per stream, all streams at once, so
/// a bulk import pays for one look-up of already stored ids and few group commits per chunk.
/// Then, run by run, what the messages imply: identity links and order effects. Returns each
/// run's results by message index.
pub(crate) async fn write_activity_runs(
    app: &App,
    tenant: &str,
    actor: &str,
    runs: Vec<Vec<(usize, Activity)>>,
) -> Result<Vec<Vec<(usize, Result<(), AppError>)>>, AppError> {
    // Group by stream, keeping each stream's messages in order.
    let mut streams: Vec<StreamRun<(usize, usize)>> = Vec::new();
    let mut slot: HashMap<String, usize, foldhash::fast::RandomState> = HashMap::default();
    // Per run: the (userId, anonymousId) pairs to link, and the order effects.
    let mut effects: Vec<(Links, Vec<OrderEffect>)> = Vec::with_capacity(runs.len());
    for (r, run) in runs.into_iter().enumerate() {
        let (mut links, mut orders) = (Vec::new(), Vec::new());
        for (i, a) in run {
            orders.extend(a.order.map(|o| *o));
            if let (Some(u), Some(an)) = (a.user_id, a.anonymous_id) {
                if !links.iter().any(|(lu, la)| *lu == u && *la == an) {
                    links.push((u, an));
                }
            }
            match slot.get(&a.stream) {
                Some(&k) => streams[k].1.push(((r, i), a.event)),
                None => {
                    slot.insert(a.stream.clone(), streams.len());
                    streams.push((a.stream, vec![((r, i), a.event)]));
                }
            }
        }
        effects.push((links, orders));
    }
    let mut done: Vec<Vec<(usize, Result<(), AppError>)>> = effects.iter().map(|_| Vec::new()).collect();
    // Whatever the appends need made first (the data keys of new customers and visitors), in
    // one durable step for all of them.
    let names: Vec<&str> = streams.iter().map(|(s, _)| s.as_str()).collect();
    app.store().prepare_streams(tenant, &names).await.map_err(AppError::from)?;
    for ((r, i), result) in append_runs(app, tenant, streams).await {
        if let Err(e @ AppError::Internal { .. }) = result {
            return Err(e);
        }
        done[r].push((i, result));
    }
    let follow_ups = effects.into_iter().map(|(links, orders)| async move {
        // Activity sent with both ids links them once the customer is known (never stealing
        // an identity already linked to someone else: the activity itself is kept either way).
        for (user, anon) in links {
            if app.customer(tenant, &user).is_ok() && app.identity_owner(tenant, &anon).is_none() {
                app.link_identity(tenant, &user, &anon, actor).await?;
            }
        }
        for effect in orders {
            apply_order_effect(app, tenant, actor, effect).await?;
        }
        Ok::<(), AppError>(())
    });
    for r in futures_util::future::join_all(follow_ups).await {
        r?;
    }
    Ok(done)
}

/// A stream and the events to append to it, each tagged with where it came from.
type StreamRun<T> = (String, Vec<(T, NewEvent)>);
type Links = Vec<(String, String)>;

/// Append a run of events (each tagged with its message's index) to one stream in one append
/// (see [`append_runs`]).
pub(crate) async fn append_run(
    app: &App,
    tenant: &str,
    stream: String,
    evs: Vec<(usize, NewEvent)>,
) -> Vec<(usize, Result<(), AppError>)> {
    append_runs(app, tenant, vec![(stream, evs)]).await
}

/// Append runs of events, one append per stream, all streams at once. Events already stored (a
/// client retry, an import run again) are left out: their messages were delivered before.
/// Asking first, rather than retrying after a refusal, spares copying every batch just in case.
async fn append_runs<T: Copy>(app: &App, tenant: &str, streams: Vec<StreamRun<T>>) -> Vec<(T, Result<(), AppError>)> {
    let ids: Vec<uuid::Uuid> = streams.iter().flat_map(|(_, evs)| evs.iter().map(|(_, e)| e.id)).collect();
    let mut stored = match app.store().stored(tenant, &ids).await {
        Ok(s) => s.into_iter(),
        Err(e) => {
            let e = AppError::from(e);
            let all = streams.into_iter().flat_map(|(_, evs)| evs.into_iter().map(|(t, _)| t));
            return all.map(|t| (t, Err(e.duplicate()))).collect();
        }
    };
    let mut results = Vec::with_capacity(ids.len());
    let mut appends = Vec::with_capacity(streams.len());
    for (stream, evs) in streams {
        let mut batch = Vec::with_capacity(evs.len());
        let mut tags = Vec::with_capacity(evs.len());
        for (t, e) in evs {
            if stored.next().unwrap_or(false) {
                results.push((t, Ok(())));
            } else {
                tags.push(t);
                batch.push(e);
            }
        }
        if !batch.is_empty() {
            appends.push(async move { (tags, app.append(tenant, &stream, ExpectedVersion::Any, batch).await) });
        }
    }
    for (tags, outcome) in futures_util::future::join_all(appends).await {
        match outcome {
            Ok(_) => results.extend(tags.into_iter().map(|t| (t, Ok(())))),
            Err(e) => {
                // Internal errors abort the request; anything else (another delivery of the same
                // messages racing this one) refuses these messages, which the sender may retry.
                let err = || match &e {
                    AppError::Internal { .. } => e.duplicate(),
                    _ => AppError::Conflict { code: "retry", message: format!("{e}; send it again") },
                };
                results.extend(tags.into_iter().map(|t| (t, Err(err()))));
            }
        }
    }
    results
}

/// What a Segment e-commerce event means for the Order aggregate.
struct OrderEffect {
    order_id: String,
    customer_id: String,
    kind: &'static str,
    amount: Option<i64>,
    currency: String,
    items: Vec<Value>,
    reason: Option<String>,
    message_id: String,
    at: DateTime<Utc>,
}

/// Segment's e-commerce names that move an order: "Order Completed" (placed and paid),
/// "Order Refunded", "Order Cancelled". Money is in the currency's major unit on the wire and
/// in minor units (cents) in the domain.
fn order_effect(msg: &Message) -> Option<OrderEffect> {
    if msg.kind != Kind::Track {
        return None;
    }
    let kind = match msg.raw.get("event")?.as_str()? {
        "Order Completed" => "completed",
        "Order Refunded" => "refunded",
        "Order Cancelled" => "cancelled",
        _ => return None,
    };
    let props = msg.raw.get("properties")?.as_object()?;
    let order_id = match props.get("order_id")? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let amount =
        props.get("total").or(props.get("revenue")).and_then(Value::as_f64).map(|x| (x * 100.0).round() as i64);
    let customer_id = msg.user_id.clone().or_else(|| msg.anonymous_id.as_ref().map(|a| format!("anonymous:{a}")))?;
    Some(OrderEffect {
        order_id,
        customer_id,
        kind,
        amount,
        currency: props.get("currency").and_then(Value::as_str).unwrap_or("USD").to_uppercase(),
        items: props.get("products").and_then(Value::as_array).cloned().unwrap_or_default(),
        reason: props.get("reason").and_then(Value::as_str).map(str::to_owned),
        message_id: msg.message_id.clone(),
        at: msg.event_time,
    })
}

/// Apply an order effect. Its events' ids derive from the message, so a redelivered message
/// replays instead of acting twice (a refund is never paid out twice). An effect the order's
/// rules refuse (a refund of an unknown order, an order completed twice) leaves the order as it
/// is; the tracked event itself is stored either way.
async fn apply_order_effect(app: &App, tenant: &str, actor: &str, e: OrderEffect) -> Result<(), AppError> {
    use chronicle_core::order::OrderCommand as C;
    let mut cmds = Vec::new();
    match e.kind {
        "completed" => {
            cmds.push((
                "place",
                C::Place {
                    customer_id: e.customer_id,
                    items: e.items,
                    total: e.amount.unwrap_or(0),
                    currency: e.currency,
                },
            ));
            cmds.push(("paid", C::MarkPaid));
        }
        "refunded" => {
            let full = app.views().tenant(tenant).and_then(|t| t.orders.get(&e.order_id)).map(|o| o.total - o.refunded);
            if let Some(amount) = e.amount.or(full) {
                cmds.push(("refund", C::Refund { amount }));
            }
        }
        _ => cmds.push(("cancel", C::Cancel { reason: e.reason })),
    }
    for (step, cmd) in cmds {
        let key = format!("{}/order/{step}", e.message_id);
        match app.order_command(tenant, &e.order_id, cmd, actor, (&key, e.at)).await {
            Ok(()) => {}
            Err(e @ AppError::Internal { .. }) => return Err(e),
            Err(err) => {
                tracing::debug!(step, error = %err, "order effect refused by the order's rules");
                break;
            }
        }
    }
    Ok(())
}

/// The stream and the `ActivityTracked` event of a track, page or screen message.
fn activity_event(actor: &str, msg: Message) -> (String, NewEvent) {
    let Message { kind, user_id, anonymous_id, message_id, event_time, event_id, raw: mut m } = msg;
    let stream = match (&user_id, &anonymous_id) {
        (Some(u), _) => customer::stream_of(u),
        (None, Some(a)) => format!("anonymous-{a}"),
        (None, None) => unreachable!("validated: one of the ids is present"),
    };
    let kind_name = match kind {
        Kind::Identify => "identify",
        Kind::Track => "track",
        Kind::Page => "page",
        Kind::Screen => "screen",
        Kind::Alias => "alias",
        Kind::Group => "group",
    };
    // The message is ours: its parts move into the event instead of being copied.
    let name = m.remove(if kind == Kind::Track { "event" } else { "name" }).unwrap_or(Value::Null);
    let properties = m.remove("properties").or_else(|| m.remove("traits")).unwrap_or_else(|| json!({}));
    let mut data = Map::with_capacity(7);
    data.insert("kind".into(), Value::String(kind_name.into()));
    data.insert("event".into(), name);
    data.insert("properties".into(), properties);
    data.insert("context".into(), m.remove("context").unwrap_or_else(|| json!({})));
    data.insert("message_id".into(), Value::String(message_id));
    data.insert("user_id".into(), user_id.map_or(Value::Null, Value::String));
    data.insert("anonymous_id".into(), anonymous_id.map_or(Value::Null, Value::String));
    let mut ev = NewEvent::new(event_id, "ActivityTracked", Value::Object(data), event_time)
        .with_source("segment")
        .with_actor(actor);
    ev.metadata = activity_metadata(m.remove("integrations"));
    (stream, ev)
}

/// The fields of an activity message, borrowed from its JSON text: no tree is built, and the
/// payload is assembled from the text of its parts. Stricter than [`parse_message`] (ids and
/// times must be plain strings without escapes, no key twice): whatever does not fit goes the
/// general way, which also names every error.
#[derive(serde::Deserialize)]
struct ActivityText<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "userId", default)]
    user_id: Option<&'a str>,
    #[serde(rename = "anonymousId", default)]
    anonymous_id: Option<&'a str>,
    #[serde(rename = "messageId", default, borrow, deserialize_with = "present")]
    message_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    properties: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    traits: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    context: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    integrations: Option<&'a RawValue>,
    #[serde(default)]
    timestamp: Option<&'a str>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<&'a str>,
    #[serde(rename = "receivedAt", default)]
    received_at: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "present")]
    specversion: Option<&'a RawValue>,
}

/// A key that is present, `null` included (an absent key is `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// The activity a bulk line describes, without building its JSON tree: `Some` for a plain
/// track, page or screen call (or an identify without userId) that passes every check
/// [`parse_message`] makes, giving exactly the event that [`Call::of`] would; `None` for
/// anything else, which the caller sends the general way. A line without a messageId gets
/// `derived_id` (see `import`), as the general way would after inserting it.
pub(crate) fn activity_from_text(
    tenant: &str,
    text: &str,
    now: DateTime<Utc>,
    actor: &str,
    derived_id: impl FnOnce() -> String,
) -> Option<Activity> {
    let m: ActivityText<'_> = serde_json::from_str(text).ok()?;
    if m.specversion.is_some() {
        return None;
    }
    let user_id = m.user_id.filter(|u| !u.is_empty());
    let anonymous_id = m.anonymous_id.filter(|a| !a.is_empty());
    if user_id.is_none() && anonymous_id.is_none() || !user_id.into_iter().chain(anonymous_id).all(acceptable_id) {
        return None;
    }
    let (kind, name) = match m.kind {
        "track" => {
            // A track needs a name, and the e-commerce names also move an order.
            let name = m.event?;
            let event: &str = serde_json::from_str(name.get()).ok()?;
            if event.is_empty() || matches!(event, "Order Completed" | "Order Refunded" | "Order Cancelled") {
                return None;
            }
            ("track", Some(name))
        }
        "page" => ("page", m.name),
        "screen" => ("screen", m.name),
        "identify" if user_id.is_none() => ("identify", m.name),
        _ => return None,
    };
    // A messageId that is a non-empty string is the line's; anything else gets the derived one.
    let given = match m.message_id {
        Some(raw) if raw.get().starts_with('"') => Some(serde_json::from_str::<String>(raw.get()).ok()?),
        _ => None,
    };
    let (message_id, extra) = match given {
        Some(id) if !id.is_empty() => (id, 0),
        _ => (derived_id(), 64),
    };
    if text.len() + extra > MAX_MESSAGE_BYTES {
        return None;
    }
    // Absent: `Some(None)`; not a timestamp: `None` (the general way names the error).
    let time =
        |t: Option<&str>| t.map(|s| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))).transpose().ok();
    let received_at = time(m.received_at)?.unwrap_or(now);
    let event_time = corrected_time(time(m.timestamp)?, time(m.sent_at)?, received_at)?;
    let null = RawValue::NULL;
    let empty: &RawValue = serde_json::from_str("{}").ok()?;
    let data = serde_json::value::to_raw_value(&ActivityData {
        kind,
        event: name.unwrap_or(null),
        properties: m.properties.or(m.traits).unwrap_or(empty),
        context: m.context.unwrap_or(empty),
        message_id: &message_id,
        user_id,
        anonymous_id,
    })
    .ok()?;
    let integrations = match m.integrations {
        Some(raw) => Some(serde_json::from_str(raw.get()).ok()?),
        None => None,
    };
    let stream = match (user_id, anonymous_id) {
        (Some(u), _) => customer::stream_of(u),
        (None, Some(a)) => format!("anonymous-{a}"),
        (None, None) => unreachable!("checked above"),
    };
    let mut event = NewEvent::from_json_text(event_id(tenant, &message_id), "ActivityTracked", data, event_time)
        .with_source("segment")
        .with_actor(actor);
    event.metadata = activity_metadata(integrations);
    Some(Activity {
        stream,
        event,
        user_id: user_id.map(str::to_owned),
        anonymous_id: anonymous_id.map(str::to_owned),
        order: None,
    })
}

/// An activity's metadata: the message's `integrations`, when it has them.
fn activity_metadata(integrations: Option<Value>) -> Value {
    let mut meta = Map::new();
    if let Some(i) = integrations {
        meta.insert("integrations".into(), i);
    }
    Value::Object(meta)
}

/// An activity's payload, as `activity_event` builds it, from the parts' JSON text.
#[derive(serde::Serialize)]
struct ActivityData<'a> {
    kind: &'a str,
    event: &'a RawValue,
    properties: &'a RawValue,
    context: &'a RawValue,
    message_id: &'a str,
    user_id: Option<&'a str>,
    anonymous_id: Option<&'a str>,
}

/// An identify or group call as the `ActivityTracked` event that records it on the customer's
/// timeline (written with the profile change it causes; see `App::customer_commands_from`).
fn call_record(actor: &str, msg: Message) -> (String, Value) {
    let (_, ev) = activity_event(actor, msg);
    (ev.event_type, ev.data.into_value())
}

/// An identify's traits: top-level `traits`, else `context.traits` (where some Segment-protocol
/// SDKs put them); absent or empty top-level traits fall back to the context's.
fn identify_traits(m: &Map<String, Value>) -> Option<&Value> {
    match m.get("traits") {
        Some(Value::Object(t)) if t.is_empty() => m.get("context").and_then(|c| c.get("traits")).or(m.get("traits")),
        Some(t) => Some(t),
        None => m.get("context").and_then(|c| c.get("traits")),
    }
}

/// Write one identify or alias message.
async fn write_one(app: &App, tenant: &str, actor: &str, sender: Sender, msg: Message) -> Result<(), AppError> {
    if let (Kind::Group, Some(user)) = (msg.kind, &msg.user_id) {
        let group_id = msg
            .raw
            .get("groupId")
            .and_then(|v| v.as_str().map(str::to_owned).or_else(|| v.as_number().map(|n| n.to_string())));
        let group_id = group_id.expect("validated: group has a groupId");
        let traits = match msg.raw.get("traits") {
            Some(Value::Object(t)) => t.clone(),
            _ => Map::new(),
        };
        if app.customer(tenant, user).is_err() {
            let cmd = CustomerCommand::Register { email: None, phone: None, traits: Map::new(), consents: vec![] };
            app.customer_command(tenant, user, cmd, actor).await?;
        }
        let cmd = CustomerCommand::JoinGroup { group_id, traits };
        let key = format!("{}/group", msg.message_id);
        let at = msg.event_time;
        let record = Some(call_record(actor, msg.clone()));
        app.customer_commands_from(tenant, user, vec![cmd], actor, Some((&key, at)), record).await?;
        return Ok(());
    }
    if let (Kind::Alias, Some(user)) = (msg.kind, &msg.user_id) {
        let previous = msg
            .raw
            .get("previousId")
            .and_then(|v| v.as_str().map(str::to_owned).or_else(|| v.as_number().map(|n| n.to_string())));
        let previous = previous.expect("validated: alias has a previousId");
        let previous_is_customer = previous != *user && app.customer(tenant, &previous).is_ok();
        if previous_is_customer && sender == Sender::Public && app.customer(tenant, user).is_ok() {
            return Err(AppError::Rule {
                code: "merge_not_allowed",
                message: "a public write key may not merge two known customers; send the alias with an ingest key".into(),
            });
        }
        if !previous_is_customer {
            refuse_foreign_identity(app, tenant, user, &previous)?;
        }
        if app.customer(tenant, user).is_err() {
            let cmd = CustomerCommand::Register { email: None, phone: None, traits: Map::new(), consents: vec![] };
            app.customer_command(tenant, user, cmd, actor).await?;
        }
        if previous_is_customer {
            // Both ids are known customers: one person, two records. `userId` survives.
            app.merge_customers(tenant, user, &previous, actor).await?;
            return Ok(());
        }
        return app.link_identity(tenant, user, &previous, actor).await;
    }
    if let (Kind::Identify, Some(user)) = (msg.kind, &msg.user_id) {
        if let Some(anon) = &msg.anonymous_id {
            refuse_foreign_identity(app, tenant, user, anon)?;
        }
        let mut traits = match identify_traits(&msg.raw) {
            Some(Value::Object(t)) => t.clone(),
            _ => Map::new(),
        };
        let email = traits.remove("email").and_then(|v| v.as_str().map(str::to_owned));
        let phone = traits.remove("phone").and_then(|v| v.as_str().map(str::to_owned));
        let exists = app.customer(tenant, user).is_ok();
        let cmd = if exists {
            CustomerCommand::UpdateProfile { email, phone, traits }
        } else {
            CustomerCommand::Register { email, phone, traits, consents: vec![] }
        };
        let key = format!("{}/profile", msg.message_id);
        let record = Some(call_record(actor, msg.clone()));
        app.customer_commands_from(tenant, user, vec![cmd], actor, Some((&key, msg.event_time)), record).await?;
        if let Some(anon) = &msg.anonymous_id {
            app.link_identity(tenant, user, anon, actor).await?;
        }
        return Ok(());
    }
    unreachable!("activity messages are written in runs")
}

/// An anonymous id already linked to another customer is not moved (that would be a merge).
fn refuse_foreign_identity(app: &App, tenant: &str, user: &str, anon: &str) -> Result<(), AppError> {
    match app.identity_owner(tenant, anon) {
        Some(owner) if owner != user => Err(AppError::IdentityLinkedElsewhere),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn clock_skew_is_corrected_as_segment_defines_it() {
        let m = json!({"type": "track", "userId": "u1", "event": "X", "timestamp": "2026-01-01T10:00:00Z", "sentAt": "2026-01-01T10:05:00Z"});
        let msg = parse_message("t", 0, m, None, at("2026-01-01T12:00:10Z"), None, None).unwrap();
        // The client's clock runs 2 h 5 s behind: the event happened 5 min before receipt.
        assert_eq!(msg.event_time, at("2026-01-01T11:55:10Z"));
        let no_sent = parse_message(
            "t",
            0,
            json!({"type": "page", "anonymousId": "a", "timestamp": "2026-01-01T10:00:00Z"}),
            None,
            at("2026-01-02T00:00:00Z"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(no_sent.event_time, at("2026-01-01T10:00:00Z"));
    }

    #[test]
    fn message_ids_give_stable_event_ids_per_tenant() {
        assert_eq!(event_id("t", "m1"), event_id("t", "m1"));
        assert_ne!(event_id("t", "m1"), event_id("u", "m1"));
        assert_ne!(event_id("t", "m1"), event_id("t", "m2"));
    }

    #[test]
    fn bad_messages_are_named() {
        let r = |v: Value| parse_message("t", 3, v, None, Utc::now(), None, None).unwrap_err();
        assert_eq!(r(json!({"type": "track", "event": "X"})).code, "no_user_anon_id");
        assert_eq!(r(json!({"type": "teleport", "userId": "u"})).code, "unknown_type");
        assert_eq!(r(json!({"type": "track", "userId": "u"})).code, "bad_request");
        assert_eq!(r(json!({"type": "page", "userId": "u", "timestamp": "yesterday"})).code, "bad_timestamp");
        assert_eq!(r(json!({"type": "identify", "userId": "u", "traits": {"email": "nope"}})).code, "bad_request");
        let big = json!({"type": "track", "userId": "u", "event": "X", "properties": {"blob": "x".repeat(40_000)}});
        let e = r(big);
        assert_eq!((e.code, e.index), ("message_too_large", 3));
    }

    #[test]
    fn batch_context_is_merged_and_one_bad_message_fails_the_batch() {
        let body = json!({"batch": [
            {"type": "track", "userId": "u", "event": "A", "context": {"ip": "192.0.2.9"}},
            {"type": "page", "anonymousId": "a"}
        ], "context": {"ip": "192.0.2.1", "library": {"name": "test"}}, "integrations": {"All": true}});
        let msgs = parse_batch("t", body, Utc::now()).unwrap();
        assert_eq!(msgs[0].raw["context"], json!({"ip": "192.0.2.9", "library": {"name": "test"}}));
        assert_eq!(msgs[1].raw["context"]["ip"], "192.0.2.1");
        assert_eq!(msgs[1].raw["integrations"], json!({"All": true}));
        let bad = json!({"batch": [{"type": "track", "userId": "u", "event": "A"}, {"type": "track", "event": "B"}]});
        assert_eq!(parse_batch("t", bad, Utc::now()).unwrap_err().index, 1);
    }
}
