//! Attribution: which channels and campaigns earned the revenue of conversions, under five
//! models, as of an instant and as known at a position.
//!
//! Semantics (documented in `docs/analytics.md`):
//! - A **conversion** is an event named `conversion` (default `Order Completed`), valued at its
//!   `total` property, else `revenue` (as RFM values orders); customers as in funnels.
//! - A **touchpoint** is, for the same person:
//!   - an event that carries a source: `utm_source` from its context's `campaign` (Segment's
//!     `context.campaign.source`) or its properties, else a `source` property. Its channel is
//!     that source, and its campaign `utm_campaign` (or the context's `campaign.name`);
//!   - a campaign message opened or clicked (`MessageOpened`, `MessageClicked`). Its channel is
//!     the message's channel, and its campaign the Chronicle campaign that queued it.
//! - The touchpoints that count for a conversion are those at or before it, within `lookback`.
//!   A conversion without any is **unattributed**.
//! - **Models** share each conversion's value, and one conversion, among its touchpoints:
//!   - `first_touch` and `last_touch`: all to one touchpoint;
//!   - `linear`: equally;
//!   - `time_decay`: weights 2^(−age / half_life), age measured back from the conversion,
//!     normalised;
//!   - `position_based`: 40 % to the first, 40 % to the last, 20 % shared by those between.
//!     One touchpoint takes all; two take half each.
//! - Credits add up per channel and per campaign. A touchpoint without a campaign credits
//!   `(none)`.

use crate::index::{Index, Row, NONE};
use crate::Horizon;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    FirstTouch,
    LastTouch,
    Linear,
    TimeDecay,
    PositionBased,
}

pub const MODELS: [Model; 5] = [Model::FirstTouch, Model::LastTouch, Model::Linear, Model::TimeDecay, Model::PositionBased];

/// An attribution question, as `POST /v1/analytics/attribution` takes it.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributionSpec {
    /// The conversion event (default `Order Completed`).
    #[serde(default)]
    pub conversion: Option<String>,
    /// How far back from a conversion touchpoints count (`30d`, the default).
    #[serde(default)]
    pub lookback: Option<String>,
    /// The models to run (default all five).
    #[serde(default)]
    pub models: Vec<Model>,
    /// The time-decay half-life (`7d`, the default).
    #[serde(default)]
    pub half_life: Option<String>,
    #[serde(default)]
    pub as_of: Option<DateTime<Utc>>,
    #[serde(default)]
    pub known_at: Option<crate::funnel::KnownAt>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Credit {
    pub conversions: f64,
    pub revenue: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Credits {
    pub channels: BTreeMap<String, Credit>,
    pub campaigns: BTreeMap<String, Credit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Attribution {
    pub conversions: u64,
    pub revenue: f64,
    /// Conversions with no touchpoint in the lookback window.
    pub unattributed: Credit,
    pub models: BTreeMap<Model, Credits>,
    /// The log position the answer reflects.
    pub position: u64,
    pub as_of: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AttributionError(pub String);

/// The spec checked whole: (conversion, lookback, half-life, models).
pub fn check(spec: &AttributionSpec) -> Result<(String, Duration, Duration, Vec<Model>), AttributionError> {
    let dur = |name: &str, v: &Option<String>, default: &str| {
        let d = chronicle_automation::campaign::parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| AttributionError(format!("{name}: {e}")))?;
        if d <= Duration::zero() {
            return Err(AttributionError(format!("{name} must be positive")));
        }
        Ok(d)
    };
    let conversion = spec.conversion.clone().unwrap_or_else(|| "Order Completed".into());
    if conversion.trim().is_empty() {
        return Err(AttributionError("conversion names an event".into()));
    }
    let models = if spec.models.is_empty() { MODELS.to_vec() } else { spec.models.clone() };
    Ok((conversion, dur("lookback", &spec.lookback, "30d")?, dur("half_life", &spec.half_life, "7d")?, models))
}

/// One touchpoint: its time, channel and campaign.
#[derive(Debug, Clone)]
struct Touch {
    time: i64,
    position: u64,
    channel: String,
    campaign: String,
}

/// The weights a model gives to `n` touchpoints (times in µs, oldest first) of a conversion at
/// `at`.
fn weights(model: Model, touches: &[i64], at: i64, half_life_us: f64) -> Vec<f64> {
    let n = touches.len();
    let mut w = vec![0.0; n];
    match model {
        Model::FirstTouch => w[0] = 1.0,
        Model::LastTouch => w[n - 1] = 1.0,
        Model::Linear => w.iter_mut().for_each(|x| *x = 1.0 / n as f64),
        Model::TimeDecay => {
            for (x, t) in w.iter_mut().zip(touches) {
                *x = 2f64.powf(-((at - t) as f64) / half_life_us);
            }
            let sum: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= sum);
        }
        Model::PositionBased => match n {
            1 => w[0] = 1.0,
            2 => (w[0], w[1]) = (0.5, 0.5),
            _ => {
                w.iter_mut().for_each(|x| *x = 0.2 / (n - 2) as f64);
                (w[0], w[n - 1]) = (0.4, 0.4);
            }
        },
    }
    w
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Attribution over a tenant's analytics index.
pub fn run_on(spec: &AttributionSpec, ix: &Index, horizon: Horizon) -> Result<Attribution, AttributionError> {
    let (conversion, lookback, half_life, models) = check(spec)?;
    let lookback = lookback.num_microseconds().unwrap_or(i64::MAX);
    let half_life = half_life.num_microseconds().unwrap_or(i64::MAX) as f64;
    let vis = horizon.visible();
    let seen = |r: &Row| vis.sees(r);
    let people = ix.people(seen);
    let [k_source, k_utm_source, k_utm_campaign, k_message, k_channel, k_origin] =
        ["source", "utm_source", "utm_campaign", "message", "channel", "origin"].map(|k| ix.key(k));
    let text = |r: &Row, k: u32| -> Option<String> {
        match ix.value(r, k)? {
            Value::String(s) if !s.is_empty() => Some(s),
            Value::Null | Value::String(_) => None,
            other => Some(other.to_string()),
        }
    };
    let (wanted, queued, opened, clicked) = (ix.name(&conversion), ix.name("MessageQueued"), ix.name("MessageOpened"), ix.name("MessageClicked"));
    // Messages' channel and campaign, from their queueing.
    let mut messages: HashMap<String, (String, String)> = HashMap::new();
    let mut touches: HashMap<u32, Vec<Touch>> = HashMap::new();
    let mut conversions: Vec<(u32, i64, u64, f64)> = Vec::new();
    let mut position = 0;
    for r in &ix.rows {
        if !seen(r) {
            continue;
        }
        position = position.max(r.position);
        let person = people[r.stream as usize];
        if person == NONE {
            continue;
        }
        if r.ty == queued {
            if let Some(m) = text(r, k_message) {
                let campaign = text(r, k_origin)
                    .and_then(|o| serde_json::from_str::<Value>(&o).ok())
                    .and_then(|o| o.get("campaign").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| "(none)".into());
                messages.insert(m, (text(r, k_channel).unwrap_or_else(|| "(unknown)".into()), campaign));
            }
            continue;
        }
        if r.ty == opened || r.ty == clicked {
            if let Some((channel, campaign)) = text(r, k_message).and_then(|m| messages.get(&m).cloned()) {
                touches.entry(person).or_default().push(Touch { time: r.time, position: r.position, channel, campaign });
            }
            continue;
        }
        if let Some(source) = text(r, k_utm_source).or_else(|| text(r, k_source)) {
            let campaign = text(r, k_utm_campaign).unwrap_or_else(|| "(none)".into());
            touches.entry(person).or_default().push(Touch { time: r.time, position: r.position, channel: source, campaign });
        }
        if wanted != NONE && (r.ty == wanted || r.name == wanted) {
            conversions.push((person, r.time, r.position, ix.order_value(r)));
        }
    }
    for t in touches.values_mut() {
        t.sort_by_key(|t| (t.time, t.position));
    }
    let mut out: BTreeMap<Model, Credits> = models.iter().map(|m| (*m, Credits::default())).collect();
    let mut unattributed = Credit::default();
    let mut revenue = 0.0;
    for (person, at, pos, value) in &conversions {
        revenue += value;
        let mine: Vec<&Touch> = touches
            .get(person)
            .into_iter()
            .flatten()
            .filter(|t| (t.time, t.position) <= (*at, *pos) && at - t.time <= lookback)
            .collect();
        if mine.is_empty() {
            unattributed.conversions += 1.0;
            unattributed.revenue += value;
            continue;
        }
        let times: Vec<i64> = mine.iter().map(|t| t.time).collect();
        for (model, credits) in out.iter_mut() {
            for (t, w) in mine.iter().zip(weights(*model, &times, *at, half_life)) {
                for (map, k) in [(&mut credits.channels, &t.channel), (&mut credits.campaigns, &t.campaign)] {
                    let c = map.entry(k.clone()).or_default();
                    c.conversions += w;
                    c.revenue += w * value;
                }
            }
        }
    }
    for credits in out.values_mut() {
        for c in credits.channels.values_mut().chain(credits.campaigns.values_mut()) {
            (c.conversions, c.revenue) = (round6(c.conversions), round6(c.revenue));
        }
    }
    unattributed.revenue = round6(unattributed.revenue);
    Ok(Attribution { conversions: conversions.len() as u64, revenue: round6(revenue), unattributed, models: out, position, as_of: horizon.as_of })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_core::envelope::EventEnvelope;
    use serde_json::json;

    fn ev(position: u64, hours: i64, data: Value) -> EventEnvelope {
        let t0 = DateTime::parse_from_rfc3339("2026-05-01T00:00:00Z").unwrap().with_timezone(&Utc);
        crate::test_event("customer-a", position, t0 + Duration::hours(hours), "ActivityTracked", data)
    }

    /// By hand: touches from google (hour 0), the newsletter (hour 24, campaign "spring") and
    /// google again (hour 48), then an order of 100 at hour 48 + 7 days = 216. A second order
    /// 60 days later has no touch in its 30-day window.
    #[test]
    fn a_hand_computed_attribution() {
        let page = |p, h, src: &str, camp: Option<&str>| {
            let mut c = json!({"source": src});
            if let Some(n) = camp {
                c["name"] = json!(n);
            }
            ev(p, h, json!({"kind": "page", "event": null, "properties": {}, "context": {"campaign": c}}))
        };
        let order = |p, h, total: f64| ev(p, h, json!({"kind": "track", "event": "Order Completed", "properties": {"total": total}}));
        let evs = vec![page(1, 0, "google", None), page(2, 24, "newsletter", Some("spring")), page(3, 48, "google", None), order(4, 216, 100.0), order(5, 216 + 60 * 24, 50.0)];
        let spec: AttributionSpec = serde_json::from_value(json!({"lookback": "30d", "half_life": "1d"})).unwrap();
        let a = run_on(&spec, &Index::of(&evs), Horizon { as_of: DateTime::<Utc>::MAX_UTC, known_at: u64::MAX, known_by: None }).unwrap();
        assert_eq!((a.conversions, a.revenue, a.unattributed.conversions, a.unattributed.revenue), (2, 150.0, 1.0, 50.0));
        let ch = |m: Model, c: &str| a.models[&m].channels.get(c).map(|x| x.revenue).unwrap_or(0.0);
        assert_eq!((ch(Model::FirstTouch, "google"), ch(Model::FirstTouch, "newsletter")), (100.0, 0.0));
        assert_eq!((ch(Model::LastTouch, "google"), ch(Model::LastTouch, "newsletter")), (100.0, 0.0));
        assert_eq!((ch(Model::Linear, "google"), ch(Model::Linear, "newsletter")), (66.666667, 33.333333));
        assert_eq!((ch(Model::PositionBased, "google"), ch(Model::PositionBased, "newsletter")), (80.0, 20.0));
        // Ages 9, 8 and 7 days with a 1-day half-life: weights 1/512, 1/256, 1/128, so 1 : 2 : 4.
        assert_eq!((ch(Model::TimeDecay, "google"), ch(Model::TimeDecay, "newsletter")), (71.428571, 28.571429));
        assert_eq!(a.models[&Model::Linear].campaigns["spring"].conversions, 0.333333);
        assert_eq!(a.models[&Model::Linear].campaigns["(none)"].revenue, 66.666667);
        // As of before the first order: nothing converted yet.
        let early = Horizon { as_of: evs[2].event_time, known_at: u64::MAX, known_by: None };
        assert_eq!(run_on(&spec, &Index::of(&evs), early).unwrap().conversions, 0);
        assert!(check(&serde_json::from_value(json!({"lookback": "0d"})).unwrap()).is_err());
        assert!(serde_json::from_value::<AttributionSpec>(json!({"models": ["last_click"]})).is_err());
    }

    /// A campaign message opened credits the campaign that queued it, on the message's channel.
    #[test]
    fn an_opened_message_credits_its_campaign() {
        let mut queued = ev(1, 0, json!({"message": "m1", "channel": "email", "origin": {"campaign": "welcome", "enrolment": "e1", "step": 0}}));
        queued.event_type = "MessageQueued".into();
        let mut opened = ev(2, 1, json!({"message": "m1", "email": "a@example.com"}));
        opened.event_type = "MessageOpened".into();
        let evs = vec![queued, opened, ev(3, 2, json!({"kind": "track", "event": "Order Completed", "properties": {"revenue": 40}}))];
        let spec: AttributionSpec = serde_json::from_value(json!({"models": ["last_touch"]})).unwrap();
        let a = run_on(&spec, &Index::of(&evs), Horizon { as_of: DateTime::<Utc>::MAX_UTC, known_at: u64::MAX, known_by: None }).unwrap();
        let m = &a.models[&Model::LastTouch];
        assert_eq!((m.channels["email"].revenue, m.campaigns["welcome"].conversions), (40.0, 1.0));
        assert_eq!(a.models.len(), 1);
    }
}
