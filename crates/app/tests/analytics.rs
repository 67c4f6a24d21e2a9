//! Pipeline analytics against a hand-computed case and a naive fold written apart (sharing no
//! code with `chronicle_analytics::pipeline`): deals created and moved under a test clock, the
//! answer now and as of an instant in the middle.

use chronicle_app::analytics::PipelineQuery;
use chronicle_app::clock::{Clock, ManualClock};
use chronicle_app::App;
use chronicle_core::deal::DealCommand;
use chronicle_store::log::LogStore;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

const STAGES: [&str; 4] = ["qualification", "discovery", "proposal", "negotiation"];

async fn deal(app: &App, id: &str, cmd: DealCommand) -> bool {
    app.deal_command("acme", id, cmd, "test").await.is_ok()
}

fn create(stage: &str, owner: &str, amount: Option<i64>) -> DealCommand {
    DealCommand::Create {
        name: "Deal".into(),
        customer_id: None,
        owner: Some(owner.into()),
        stage: Some(stage.into()),
        amount,
        currency: Some("EUR".into()),
    }
}

/// One finished or open stay, as the naive fold sees it.
struct Stay {
    stage: String,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    advanced: bool,
    owner: String,
}

/// The naive fold: every deal's events in version order, cut into stays.
fn stays(events: &[Value], as_of: DateTime<Utc>) -> (Vec<Stay>, u64, u64) {
    let mut by_deal: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in events {
        let t: DateTime<Utc> = e["event_time"].as_str().unwrap().parse().unwrap();
        if e["stream"].as_str().unwrap().starts_with("deal-") && t <= as_of {
            by_deal.entry(e["stream"].as_str().unwrap().to_owned()).or_default().push(e);
        }
    }
    let (mut out, mut won, mut lost) = (Vec::new(), 0, 0);
    for evs in by_deal.values() {
        let mut owner = String::from("(none)");
        let mut open: Option<Stay> = None;
        for e in evs {
            let t: DateTime<Utc> = e["event_time"].as_str().unwrap().parse().unwrap();
            let d = &e["data"];
            let rank = |s: &str| STAGES.iter().position(|x| *x == s);
            match e["type"].as_str().unwrap() {
                "DealCreated" => {
                    owner = d["owner"].as_str().unwrap_or("(none)").to_owned();
                    open = Some(Stay { stage: d["stage"].as_str().unwrap().into(), from: t, to: None, advanced: false, owner: owner.clone() });
                }
                "DealOwnerAssigned" => owner = d["to"].as_str().unwrap().to_owned(),
                "DealStageChanged" => {
                    let mut s = open.take().unwrap();
                    let to = d["to"].as_str().unwrap();
                    s.advanced = rank(to) > rank(&s.stage) && rank(&s.stage).is_some();
                    (s.to, s.owner) = (Some(t), owner.clone());
                    out.push(s);
                    open = Some(Stay { stage: to.into(), from: t, to: None, advanced: false, owner: owner.clone() });
                }
                ty @ ("DealWon" | "DealLost") => {
                    let mut s = open.take().unwrap();
                    (s.to, s.owner, s.advanced) = (Some(t), owner.clone(), ty == "DealWon");
                    out.push(s);
                    if ty == "DealWon" { won += 1 } else { lost += 1 }
                }
                _ => {}
            }
        }
        out.extend(open);
    }
    (out, won, lost)
}

fn rank_of(mut v: Vec<f64>, q: f64) -> Option<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return None;
    }
    let k = ((q * v.len() as f64).ceil() as usize).max(1);
    Some(v[k - 1])
}

fn days(s: &Stay) -> f64 {
    (s.to.unwrap() - s.from).num_microseconds().unwrap() as f64 / 86_400_000_000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_analytics_equal_a_hand_computed_case_and_a_naive_fold() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(Arc::new(LogStore::open(dir.path()).unwrap()), None).await.unwrap();
    app.create_tenant("acme").await.unwrap();
    let t0 = DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z").unwrap().with_timezone(&Utc);
    let clock = Arc::new(ManualClock::new(t0));
    assert!(app.set_clock(clock.clone()));

    // By hand: h1 2 days in qualification (ann), 3 in discovery, won; h2 1 day in proposal
    // (bob), lost; h3 sits in qualification.
    assert!(deal(&app, "h1", create("qualification", "ann", Some(500))).await);
    assert!(deal(&app, "h2", create("proposal", "bob", None)).await);
    assert!(deal(&app, "h3", create("qualification", "ann", None)).await);
    clock.advance(Duration::days(1));
    assert!(deal(&app, "h2", DealCommand::Lose { reason: None }).await);
    clock.advance(Duration::days(1));
    assert!(deal(&app, "h1", DealCommand::ChangeStage { to: "discovery".into() }).await);
    clock.advance(Duration::days(3));
    assert!(deal(&app, "h1", DealCommand::Win).await);
    clock.advance(Duration::days(35));
    let p = app.pipeline_analytics("acme", &PipelineQuery::default()).await.unwrap();
    let q = &p.stages[0];
    assert_eq!((q.stage.as_str(), q.entered, q.advanced, q.median_days, q.open_now), ("qualification", 2, 1, Some(2.0), 1));
    assert_eq!((p.stages[1].entered, p.stages[1].advanced, p.stages[1].median_days), (1, 1, Some(3.0)));
    assert_eq!((p.stages[2].entered, p.stages[2].advanced, p.stages[2].median_days), (1, 0, Some(1.0)));
    assert_eq!((p.won, p.lost, p.win_rate, p.won_amount["EUR"]), (1, 1, Some(0.5), 500));
    assert_eq!(p.stuck.iter().map(|s| (s.deal.as_str(), s.days_in_stage)).collect::<Vec<_>>(), [("h3", 40.0)]);
    assert_eq!(p.by_owner["bob"][0].stage, "proposal");
    let p = app.pipeline_analytics("acme", &PipelineQuery { stuck_days: Some(45), ..Default::default() }).await.unwrap();
    assert!(p.stuck.is_empty(), "40 days is not stuck at 45");

    // At random: 80 deals, 4 owners, moves forward and back, owner changes, wins and losses.
    let mut seed = 11u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let owners = ["ann", "bob", "cy", "dee"];
    for i in 0..80 {
        let id = format!("d{i}");
        let amount = if next(4) == 0 { None } else { Some(100 * (1 + next(50) as i64)) };
        deal(&app, &id, create(STAGES[next(4) as usize], owners[next(4) as usize], amount)).await;
        for _ in 0..next(6) {
            clock.advance(Duration::minutes(1 + next(5 * 24 * 60) as i64));
            let cmd = match next(10) {
                0..=5 => DealCommand::ChangeStage { to: STAGES[next(4) as usize].into() },
                6 => DealCommand::AssignOwner { owner: owners[next(4) as usize].into() },
                7 => DealCommand::Win,
                8 => DealCommand::Lose { reason: None },
                _ => DealCommand::ChangeAmount { amount: 100 },
            };
            deal(&app, &id, cmd).await;
        }
    }
    let mid = clock.now() - Duration::days(60);
    clock.advance(Duration::days(3));
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = app.events("acme", after, 1000).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        after = page.next;
        events.extend(page.events.iter().map(|e| serde_json::to_value(e).unwrap()));
    }
    for as_of in [None, Some(mid)] {
        let p = app.pipeline_analytics("acme", &PipelineQuery { as_of, stuck_days: Some(7), ..Default::default() }).await.unwrap();
        let now = as_of.unwrap_or_else(|| clock.now());
        let (all, won, lost) = stays(&events, now);
        assert_eq!((p.won, p.lost), (won, lost), "as of {now}");
        for s in &p.stages {
            let mine: Vec<&Stay> = all.iter().filter(|x| x.stage == s.stage).collect();
            let done: Vec<f64> = mine.iter().filter(|x| x.to.is_some()).map(|x| days(x)).collect();
            assert_eq!(s.entered, mine.len() as u64, "{} as of {now}", s.stage);
            assert_eq!(s.advanced, mine.iter().filter(|x| x.advanced).count() as u64, "{}", s.stage);
            assert_eq!(s.open_now, mine.iter().filter(|x| x.to.is_none()).count() as u64);
            assert_eq!((s.median_days, s.p90_days), (rank_of(done.clone(), 0.5), rank_of(done, 0.9)), "{}", s.stage);
        }
        for (owner, rows) in &p.by_owner {
            for r in rows {
                let done: Vec<f64> = all.iter().filter(|x| x.to.is_some() && &x.owner == owner && x.stage == r.stage).map(days).collect();
                assert_eq!((r.stays, r.median_days), (done.len() as u64, rank_of(done, 0.5)), "{owner} {}", r.stage);
            }
        }
        let stuck: Vec<f64> = all.iter().filter(|x| x.to.is_none() && (now - x.from) > Duration::days(7)).map(|x| (now - x.from).num_seconds() as f64).collect();
        assert_eq!(p.stuck.len(), stuck.len(), "as of {now}");
        assert!(p.stuck.len() > 3 && p.won > 3 && p.lost > 3, "the data exercises every part: {} stuck, {} won", p.stuck.len(), p.won);
    }
}
