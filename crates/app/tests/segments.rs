//! Segments kept by the engine, on a clock the test moves, across a restart: "no activity for
//! 60 days" enters when the time passes (the scan), exits when activity arrives (the reaction),
//! and a campaign triggered by `SegmentEntered` enrols the member once per entry, also when the
//! restarted engine replays the log. Membership at a past instant comes from the log.

use chronicle_app::automation::definitions::{save_campaign, save_segment, segment_members};
use chronicle_app::automation::{Engine, EngineConfig};
use chronicle_app::clock::{Clock, ManualClock};
use chronicle_app::App;
use chronicle_core::customer::CustomerCommand;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chronicle_store::log::LogStore;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use std::sync::Arc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn track(app: &App, clock: &ManualClock, id: &str) {
    let data = json!({"kind": "track", "event": "Visited", "properties": {}, "context": {}});
    let ev = NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", data, clock.now());
    app.append("acme", &format!("customer-{id}"), ExpectedVersion::Any, vec![ev]).await.unwrap();
}

async fn events(app: &App, id: &str) -> Vec<EventEnvelope> {
    app.store().read_stream("acme", &format!("customer-{id}"), 1, usize::MAX).await.unwrap()
}

fn count(evs: &[EventEnvelope], ty: &str) -> usize {
    evs.iter().filter(|e| e.event_type == ty).count()
}

async fn wait_for(app: &App, engine: &Engine, what: &str, f: impl Fn(&[EventEnvelope]) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let evs = events(app, "c1").await;
        if f(&evs) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {:?}", evs.iter().map(|e| &e.event_type).collect::<Vec<_>>());
        engine.wake();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn no_activity_for_60_days_enters_with_time_exits_on_activity_across_a_restart_and_enrols_once_per_entry() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z").unwrap().with_timezone(&Utc);
    let entered_at = t0 + Duration::days(61);
    let mut stopped_at = t0;
    runtime().block_on(async {
        let app = App::start(Arc::new(LogStore::open(dir.path()).unwrap()), None).await.unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        assert!(app.set_clock(clock.clone()));
        app.create_tenant("acme").await.unwrap();
        let register = CustomerCommand::Register { email: Some("c1@example.com".into()), phone: None, traits: Default::default(), consents: vec![] };
        app.customer_command("acme", "c1", register, "test").await.unwrap();
        assert!(save_segment(&app, "acme", "dormant", json!({"conditions": [{"inactive_for": "60d"}]}), "test").await.unwrap());
        assert!(save_segment(&app, "acme", "dormant", json!({"conditions": [{"inactive_for": "soon"}]}), "test").await.is_err());
        let campaign = json!({"trigger": {"event": "SegmentEntered", "where": {"segment": "dormant"}}, "reentry": "always", "steps": [{"tag": "winback"}]});
        save_campaign(&app, "acme", "winback", campaign, "test").await.unwrap();
        let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
        track(&app, &clock, "c1").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(count(&events(&app, "c1").await, "SegmentEntered"), 0, "active: not in the segment");

        // 61 days pass: the scan finds c1 dormant; the campaign enrols them.
        clock.advance(Duration::days(61));
        wait_for(&app, &engine, "the entry and the campaign's tag", |evs| count(evs, "SegmentEntered") == 1 && count(evs, "CustomerTagged") == 1).await;
        assert_eq!(segment_members(&app, "acme", "dormant", None, 10).unwrap().0.len(), 1);

        // Activity arrives: c1 leaves at once.
        clock.advance(Duration::hours(2));
        track(&app, &clock, "c1").await;
        wait_for(&app, &engine, "the exit", |evs| count(evs, "SegmentExited") == 1).await;
        assert!(segment_members(&app, "acme", "dormant", None, 10).unwrap().0.is_empty());
        stopped_at = clock.now();
    });

    // A restart: the engine replays from its saved place; nothing is recorded twice.
    runtime().block_on(async {
        let app = App::start(Arc::new(LogStore::open(dir.path()).unwrap()), None).await.unwrap();
        let clock = Arc::new(ManualClock::new(stopped_at));
        assert!(app.set_clock(clock.clone()));
        let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        engine.wake();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let evs = events(&app, "c1").await;
        assert_eq!((count(&evs, "SegmentEntered"), count(&evs, "SegmentExited"), count(&evs, "CampaignEnrolled")), (1, 1, 1), "after the restart");

        // Another 61 quiet days: a second entry, found by the restarted engine's scan, and a
        // second enrolment (the campaign re-enters always), each once.
        clock.advance(Duration::days(61));
        wait_for(&app, &engine, "the second entry", |evs| count(evs, "SegmentEntered") == 2 && count(evs, "CampaignEnrolled") == 2).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        engine.wake();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let evs = events(&app, "c1").await;
        assert_eq!((count(&evs, "SegmentEntered"), count(&evs, "SegmentExited"), count(&evs, "CampaignEnrolled")), (2, 1, 2));

        // Membership at past instants, from the log.
        let at = |t: DateTime<Utc>| {
            let app = app.clone();
            async move { app.segment_members_at("acme", "dormant", t, None).await.unwrap().0.into_iter().map(|(id, _)| id).collect::<Vec<_>>() }
        };
        assert_eq!(at(t0 + Duration::days(30)).await, Vec::<String>::new());
        assert_eq!(at(entered_at + Duration::hours(1)).await, ["c1"]);
        assert_eq!(at(entered_at + Duration::hours(3)).await, Vec::<String>::new(), "left when the activity came");
        assert_eq!(at(clock.now()).await, ["c1"]);
    });
}

/// An import of history enrols no one through the segment entries it causes: an entry carries
/// its cause's time, and campaigns take only entries of the last day. A live change enrols.
#[test]
fn entries_caused_by_old_history_enrol_no_one_live_ones_do() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let app = App::start(Arc::new(LogStore::open(dir.path()).unwrap()), None).await.unwrap();
        app.create_tenant("acme").await.unwrap();
        save_segment(&app, "acme", "pro", json!({"conditions": [{"trait": "plan", "equals": "pro"}]}), "test").await.unwrap();
        let campaign = json!({"trigger": {"event": "SegmentEntered", "where": {"segment": "pro"}}, "steps": [{"tag": "welcome-pro"}]});
        save_campaign(&app, "acme", "pro-welcome", campaign, "test").await.unwrap();
        let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
        // History: an identify from 30 days ago, as an import writes it (its own event time).
        let old = DateTime::from_timestamp_micros((Utc::now() - Duration::days(30)).timestamp_micros()).unwrap();
        let traits = json!({"plan": "pro"}).as_object().cloned().unwrap();
        let register = CustomerCommand::Register { email: None, phone: None, traits: traits.clone(), consents: vec![] };
        let (ty, data) = chronicle_core::customer::Customer::new("old")
            .decide(register, &chronicle_core::customer::NoEmails)
            .unwrap()
            .remove(0)
            .to_parts();
        app.append("acme", "customer-old", ExpectedVersion::Any, vec![NewEvent::new(uuid::Uuid::now_v7(), &ty, data, old)]).await.unwrap();
        // Live: a customer who becomes pro now.
        app.customer_command("acme", "new", CustomerCommand::Register { email: None, phone: None, traits, consents: vec![] }, "test").await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let tagged = |evs: &[EventEnvelope]| evs.iter().any(|e| e.event_type == "CustomerTagged");
        loop {
            let live = app.store().read_stream("acme", "customer-new", 1, 100).await.unwrap();
            if tagged(&live) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the live entry enrols: {:?}", live.iter().map(|e| &e.event_type).collect::<Vec<_>>());
            engine.wake();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let history = app.store().read_stream("acme", "customer-old", 1, 100).await.unwrap();
        let entered: Vec<&EventEnvelope> = history.iter().filter(|e| e.event_type == "SegmentEntered").collect();
        assert_eq!(entered.len(), 1, "the old customer is in the segment");
        assert_eq!(entered[0].event_time, old, "at the time of its cause");
        assert!(!tagged(&history) && count(&history, "CampaignEnrolled") == 0, "and not enrolled: {:?}", history.iter().map(|e| &e.event_type).collect::<Vec<_>>());
    });
}

/// A segment on an RFM group (relative to everyone, so recomputed on the engine's scan): its
/// members are the customers the RFM answer puts in that group; an unknown group is refused.
#[test]
fn an_rfm_group_segment_follows_the_rfm_answer_on_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let app = App::start(Arc::new(LogStore::open(dir.path()).unwrap()), None).await.unwrap();
        app.create_tenant("acme").await.unwrap();
        let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
        let clock = Arc::new(ManualClock::new(now));
        assert!(app.set_clock(clock.clone()));
        // Customer i: i + 1 orders, the last 20 - i days ago (the most frequent the most recent).
        for i in 0..20i64 {
            let id = format!("r{i}");
            let register = CustomerCommand::Register { email: None, phone: None, traits: Default::default(), consents: vec![] };
            app.customer_command("acme", &id, register, "test").await.unwrap();
            let orders = (0..=i)
                .map(|k| {
                    let data = json!({"kind": "track", "event": "Order Completed", "properties": {"order_id": format!("{id}-{k}"), "total": 10 * (k + 1)}, "context": {}});
                    NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", data, now - Duration::days(20 - i + k))
                })
                .collect();
            app.append("acme", &format!("customer-{id}"), ExpectedVersion::Any, orders).await.unwrap();
        }
        assert!(save_segment(&app, "acme", "vip", json!({"conditions": [{"rfm_group": "vips"}]}), "test").await.is_err(), "no such group");
        save_segment(&app, "acme", "best", json!({"conditions": [{"rfm_group": "champions"}]}), "test").await.unwrap();
        let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
        let q = chronicle_app::analytics::RfmQuery { group: Some("champions".into()), limit: 100, ..Default::default() };
        let want: Vec<String> = app.rfm("acme", &q).await.unwrap().customers.into_iter().map(|c| c.id).collect();
        assert!(!want.is_empty() && want.len() < 20, "{want:?}");
        // The engine's scan (at its start, then every minute of the clock) computes the groups.
        clock.advance(Duration::minutes(2));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let got: Vec<String> = segment_members(&app, "acme", "best", None, 100).unwrap().0.into_iter().map(|(id, _)| id).collect();
            if got == want {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "members {got:?}, champions {want:?}");
            engine.wake();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
}

async fn order(app: &App, clock: &ManualClock, id: &str, n: u32, total: f64) {
    let data = json!({"kind": "track", "event": "Order Completed", "properties": {"order_id": format!("{id}-{n}"), "total": total}, "context": {}});
    let ev = NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", data, clock.now());
    app.append("acme", &format!("customer-{id}"), ExpectedVersion::Any, vec![ev]).await.unwrap();
}

/// "Orders worth at least 100 in the last 30 days": entered when the second order brings the
/// window's sum to 110, kept across a restart (the window rebuilt from the log), left when the
/// first order ages out of the window (the scan, on a moved clock).
#[test]
fn a_windowed_sum_enters_on_an_event_and_exits_as_the_window_slides_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z").unwrap().with_timezone(&Utc);
    let mut stopped_at = t0;
    let def = json!({"conditions": [{"event": "Order Completed", "within": "30d", "sum": "total", "at_least": 100}]});
    runtime().block_on(async {
        let app = App::start(Arc::new(LogStore::open(dir.path()).unwrap()), None).await.unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        assert!(app.set_clock(clock.clone()));
        app.create_tenant("acme").await.unwrap();
        let register = CustomerCommand::Register { email: None, phone: None, traits: Default::default(), consents: vec![] };
        app.customer_command("acme", "c1", register, "test").await.unwrap();
        save_segment(&app, "acme", "big", def.clone(), "test").await.unwrap();
        // A window over events on other streams than customers' (a deal's) is built too.
        let deal = chronicle_core::deal::DealCommand::Create {
            name: "Renewal".into(),
            customer_id: Some("c1".into()),
            owner: None,
            stage: None,
            amount: None,
            currency: None,
        };
        app.deal_command("acme", "d1", deal, "test").await.unwrap();
        save_segment(&app, "acme", "dealing", json!({"conditions": [{"event": "DealCreated", "within": "30d", "at_least": 1}]}), "test").await.unwrap();
        let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
        order(&app, &clock, "c1", 1, 60.0).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(count(&events(&app, "c1").await, "SegmentEntered"), 0, "60 is not 100");
        clock.advance(Duration::days(1));
        order(&app, &clock, "c1", 2, 50.0).await;
        wait_for(&app, &engine, "the entry at 110", |evs| count(evs, "SegmentEntered") == 1).await;
        stopped_at = clock.now();
    });
    runtime().block_on(async {
        let app = App::start(Arc::new(LogStore::open(dir.path()).unwrap()), None).await.unwrap();
        let clock = Arc::new(ManualClock::new(stopped_at + Duration::days(1)));
        assert!(app.set_clock(clock.clone()));
        let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        engine.wake();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let evs = events(&app, "c1").await;
        assert_eq!((count(&evs, "SegmentEntered"), count(&evs, "SegmentExited")), (1, 0), "still in after the restart");
        // Day 30 after the first order: it leaves the window, 50 is left.
        clock.advance(Duration::days(28) + Duration::minutes(5));
        wait_for(&app, &engine, "the exit as the window slides", |evs| count(evs, "SegmentExited") == 1).await;
        assert!(segment_members(&app, "acme", "big", None, 10).unwrap().0.is_empty());
    });
}
