//! Pipeline analytics over the deals' events: stage velocity (overall and by owner), stage
//! conversion, win rate, and the deals stuck in their stage, as of an instant and as known at a
//! position.
//!
//! Semantics (documented in `docs/analytics.md`):
//! - A **stay** is a deal's time in one stage: from `DealCreated` or the `DealStageChanged` into
//!   it, to the next stage change, `DealWon` or `DealLost`. A stay still open at `as_of` has no
//!   duration yet: it counts in `open_now` and may be **stuck**.
//! - **Velocity**: per stage, the median and p90 (nearest rank) of the finished stays' days;
//!   **by owner**, the same per the deal's owner when the stay ended (`(none)` without one).
//! - **Conversion** per stage: of the stays begun in it (`entered`), those that ended by moving
//!   to a later stage of the pipeline's order or by a win (`advanced`). Moving back, or to a
//!   stage outside the order, is not advancing.
//! - **Win rate**: won / (won + lost) over the deals closed by `as_of`; won amounts per currency
//!   (minor units, as deals keep them).
//! - **Stuck**: open deals whose current stay is longer than `stuck_days` days, longest first.

use crate::index::{Index, Row};
use crate::{nearest_rank, Horizon};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StageStats {
    pub stage: String,
    /// Stays begun in this stage.
    pub entered: u64,
    /// Of those, the ones that moved on to a later stage or were won.
    pub advanced: u64,
    pub conversion: f64,
    /// Finished stays' days: median and p90.
    pub median_days: Option<f64>,
    pub p90_days: Option<f64>,
    /// Open deals in this stage at `as_of`.
    pub open_now: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct OwnerStage {
    pub stage: String,
    /// Finished stays.
    pub stays: u64,
    pub median_days: Option<f64>,
    pub p90_days: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StuckDeal {
    pub deal: String,
    pub name: Option<String>,
    pub stage: String,
    pub owner: Option<String>,
    pub customer_id: Option<String>,
    pub days_in_stage: f64,
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Pipeline {
    /// The pipeline's stages in order, then any other stage deals used.
    pub stages: Vec<StageStats>,
    pub by_owner: BTreeMap<String, Vec<OwnerStage>>,
    pub open: u64,
    pub won: u64,
    pub lost: u64,
    pub win_rate: Option<f64>,
    /// Won amounts per currency, in minor units.
    pub won_amount: BTreeMap<String, i64>,
    pub stuck_days: u32,
    pub stuck: Vec<StuckDeal>,
    /// The log position the answer reflects.
    pub position: u64,
    pub as_of: DateTime<Utc>,
}

/// A deal as the fold walks it.
#[derive(Default)]
struct Walk {
    name: Option<String>,
    customer: Option<String>,
    owner: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    stage: Option<String>,
    since: i64,
    closed: bool,
}

const DAY_US: f64 = 86_400_000_000.0;

/// Pipeline analytics over a tenant's analytics index.
pub fn run_on(ix: &Index, horizon: Horizon, stuck_days: u32) -> Pipeline {
    let as_of = horizon.as_of.timestamp_micros();
    let vis = horizon.visible();
    let seen = |r: &Row| vis.sees(r);
    let [k_name, k_customer, k_owner, k_stage, k_amount, k_currency, k_to] =
        ["name", "customer_id", "owner", "stage", "amount", "currency", "to"].map(|k| ix.key(k));
    let text = |r: &Row, k: u32| ix.value(r, k).and_then(|v| v.as_str().map(str::to_owned));
    let int = |r: &Row, k: u32| ix.value(r, k).and_then(|v| v.as_i64());
    let order: HashMap<&str, usize> = chronicle_core::deal::STAGES.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let advances = |from: &str, to: &str| matches!((order.get(from), order.get(to)), (Some(a), Some(b)) if b > a);

    let mut deals: BTreeMap<u32, Walk> = BTreeMap::new();
    let mut entered: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut days: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut owner_days: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let (mut won, mut lost) = (0u64, 0u64);
    let mut won_amount: BTreeMap<String, i64> = BTreeMap::new();
    let mut position = 0;
    let [created, moved, owned, amounted, won_ty, lost_ty] =
        ["DealCreated", "DealStageChanged", "DealOwnerAssigned", "DealAmountChanged", "DealWon", "DealLost"].map(|n| ix.name(n));
    for r in &ix.rows {
        if !seen(r) {
            continue;
        }
        position = position.max(r.position);
        if ![created, moved, owned, amounted, won_ty, lost_ty].contains(&r.ty) || !ix.streams.text(r.stream).starts_with("deal-") {
            continue;
        }
        let d = deals.entry(r.stream).or_default();
        if d.closed {
            continue;
        }
        // The stay that ends here, if one does: its stage, its days, whether it advanced.
        let mut ended: Option<(String, bool)> = None;
        if r.ty == created {
            d.name = text(r, k_name);
            d.customer = text(r, k_customer);
            d.owner = text(r, k_owner);
            d.amount = int(r, k_amount);
            d.currency = text(r, k_currency);
            d.stage = text(r, k_stage);
            d.since = r.time;
            if let Some(s) = &d.stage {
                entered.entry(s.clone()).or_default().0 += 1;
            }
        } else if r.ty == moved {
            let to = text(r, k_to);
            if let (Some(from), Some(to)) = (d.stage.clone(), to) {
                ended = Some((from.clone(), advances(&from, &to)));
                entered.entry(to.clone()).or_default().0 += 1;
                d.stage = Some(to);
            }
        } else if r.ty == owned {
            d.owner = text(r, k_to);
        } else if r.ty == amounted {
            d.amount = int(r, k_to);
        } else {
            d.closed = true;
            if r.ty == won_ty {
                won += 1;
                let amount = int(r, k_amount).or(d.amount).unwrap_or(0);
                *won_amount.entry(d.currency.clone().unwrap_or_default()).or_default() += amount;
            } else {
                lost += 1;
            }
            ended = d.stage.clone().map(|s| (s, r.ty == won_ty));
        }
        if let Some((stage, advanced)) = ended {
            let span = (r.time - d.since) as f64 / DAY_US;
            if advanced {
                entered.entry(stage.clone()).or_default().1 += 1;
            }
            days.entry(stage.clone()).or_default().push(span);
            owner_days.entry((d.owner.clone().unwrap_or_else(|| "(none)".into()), stage)).or_default().push(span);
            d.since = r.time;
        }
    }
    let mut open_now: BTreeMap<String, u64> = BTreeMap::new();
    let mut stuck = Vec::new();
    let mut open = 0;
    for (stream, d) in &deals {
        let (false, Some(stage)) = (d.closed, &d.stage) else { continue };
        open += 1;
        *open_now.entry(stage.clone()).or_default() += 1;
        let age = (as_of - d.since) as f64 / DAY_US;
        if age > f64::from(stuck_days) {
            stuck.push(StuckDeal {
                deal: ix.streams.text(*stream).trim_start_matches("deal-").to_owned(),
                name: d.name.clone(),
                stage: stage.clone(),
                owner: d.owner.clone(),
                customer_id: d.customer.clone(),
                days_in_stage: (age * 100.0).round() / 100.0,
                amount: d.amount,
                currency: d.currency.clone(),
            });
        }
    }
    stuck.sort_by(|a, b| b.days_in_stage.total_cmp(&a.days_in_stage).then_with(|| a.deal.cmp(&b.deal)));
    // The pipeline's order first, then other stages by name.
    let mut names: Vec<String> = chronicle_core::deal::STAGES.iter().map(|s| (*s).to_owned()).collect();
    names.extend(entered.keys().filter(|s| !order.contains_key(s.as_str())).cloned());
    let stats = |v: Option<&Vec<f64>>| {
        let mut v = v.cloned().unwrap_or_default();
        v.sort_by(f64::total_cmp);
        (nearest_rank(&v, 0.5), nearest_rank(&v, 0.9), v.len() as u64)
    };
    let stages = names
        .iter()
        .map(|s| {
            let (e, a) = entered.get(s).copied().unwrap_or_default();
            let (median_days, p90_days, _) = stats(days.get(s));
            StageStats {
                stage: s.clone(),
                entered: e,
                advanced: a,
                conversion: if e == 0 { 0.0 } else { a as f64 / e as f64 },
                median_days,
                p90_days,
                open_now: open_now.get(s).copied().unwrap_or(0),
            }
        })
        .collect();
    let mut by_owner: BTreeMap<String, Vec<OwnerStage>> = BTreeMap::new();
    for ((owner, stage), v) in &owner_days {
        let (median_days, p90_days, stays) = stats(Some(v));
        by_owner.entry(owner.clone()).or_default().push(OwnerStage { stage: stage.clone(), stays, median_days, p90_days });
    }
    for v in by_owner.values_mut() {
        v.sort_by_key(|o| names.iter().position(|n| *n == o.stage));
    }
    Pipeline {
        stages,
        by_owner,
        open,
        won,
        lost,
        win_rate: (won + lost > 0).then(|| won as f64 / (won + lost) as f64),
        won_amount,
        stuck_days,
        stuck,
        position,
        as_of: horizon.as_of,
    }
}
