//! Benchmarks of campaigns: append → message handed to SMTP latency, campaign evaluation
//! throughput with 20 campaigns, and 100,000 pending waits across a restart.

use crate::measure::{open, round2, summary};
use chronicle_automation::events::AutomationEvent;
use chronicle_automation::derive_id;
use chronicle_core::customer::{self, Channel, ConsentInput, CustomerCommand, Purpose};
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_app::automation::definitions::{save_campaign, save_template};
use chronicle_app::automation::{delivery::DeliveryConfig, Engine, EngineConfig};
use chronicle_app::App;
use chrono::Utc;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "bench";

/// The benchmark's SMTP server: a plain SMTP conversation over loopback (greeting, EHLO,
/// MAIL, RCPT, DATA, QUIT), noting when each message's data ended, by its subject.
struct SmtpSink {
    port: u16,
    received: Arc<Mutex<HashMap<String, Instant>>>,
}

fn smtp_sink() -> SmtpSink {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let r = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let r = r.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut out = conn.try_clone().expect("clone");
                let mut lines = BufReader::new(conn);
                let _ = out.write_all(b"220 bench ESMTP\r\n");
                let mut line = String::new();
                let (mut data, mut subject) = (false, None::<String>);
                while lines.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let l = line.trim_end();
                    if data {
                        if l == "." {
                            data = false;
                            if let Some(s) = subject.take() {
                                r.lock().expect("lock").insert(s, Instant::now());
                            }
                            let _ = out.write_all(b"250 OK queued\r\n");
                        } else if let Some(s) = l.strip_prefix("Subject: ") {
                            subject = Some(s.to_owned());
                        }
                    } else {
                        let verb = l.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250 bench\r\n",
                            "DATA" => {
                                data = true;
                                b"354 go ahead\r\n"
                            }
                            "QUIT" => {
                                let _ = out.write_all(b"221 bye\r\n");
                                break;
                            }
                            _ => b"250 OK\r\n",
                        };
                        let _ = out.write_all(reply);
                    }
                    line.clear();
                }
            });
        }
    });
    SmtpSink { port, received }
}

async fn start(dir: &std::path::Path) -> Arc<App> {
    let app = App::start(open(dir, "log"), None).await.expect("app");
    app.create_tenant(TENANT).await.expect("tenant");
    app
}

async fn register(app: &Arc<App>, n: u64) {
    let consent =
        ConsentInput { channel: Channel::Email, purpose: Purpose::Marketing, granted: true, source: Some("bench".into()), legal_basis: None, proof: None };
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32u64 {
        let (app, consent) = (app.clone(), consent.clone());
        tasks.spawn(async move {
            let mut i = w;
            while i < n {
                let cmd = CustomerCommand::Register {
                    email: Some(format!("c{i}@example.com")),
                    phone: None,
                    traits: json!({"first_name": format!("N{i}")}).as_object().cloned().unwrap_or_default(),
                    consents: vec![consent.clone()],
                };
                app.customer_command(TENANT, &format!("c{i}"), cmd, "bench").await.expect("register");
                i += 32;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn tracked(name: &str, properties: Value) -> NewEvent {
    let data = json!({"kind": "track", "event": name, "properties": properties, "context": {}});
    NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", data, Utc::now())
}

/// Append one tracked event to a customer's stream → the campaign's e-mail handed to SMTP, one
/// at a time, `n` times: p50/p99 of the time from the append's start to the end of the SMTP
/// DATA the server received; and the duplicate window, from that moment until the outcome
/// (`MessageSent`) is durable (measured to when the views show it, an upper bound).
pub async fn latency(n: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = start(dir.path()).await;
    register(&app, n).await;
    save_template(&app, TENANT, "t", &json!({"subject": "{{ id }}", "body": "<p>Hi {{ traits.first_name }}</p>"}), "bench")
        .await
        .expect("template");
    let campaign = json!({"trigger": {"event": "Ping"}, "reentry": "always",
                          "steps": [{"send": {"channel": "email", "purpose": "marketing", "template": "t"}}]});
    save_campaign(&app, TENANT, "instant", campaign, "bench").await.expect("campaign");
    let sink = smtp_sink();
    let config = EngineConfig {
        delivery: DeliveryConfig {
            smtp_url: Some(format!("smtp://127.0.0.1:{}", sink.port)),
            mail_from: "bench@localhost".into(),
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    Engine::start(app.clone(), config).expect("engine");
    let (mut samples, mut window) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0..n {
        let id = format!("c{i}");
        let t0 = Instant::now();
        app.append(TENANT, &customer::stream_of(&id), ExpectedVersion::Any, vec![tracked("Ping", json!({}))]).await.expect("append");
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let got = sink.received.lock().expect("lock").get(&id).copied();
            if let Some(at) = got {
                samples.push(at.duration_since(t0).as_secs_f64() * 1e6);
                // The duplicate window: from the SMTP server's acceptance until `MessageSent`
                // is durable (the views apply it only then). A crash inside it re-sends.
                while app.views().tenant(TENANT).is_some_and(|t| !t.automation.outbox.is_empty()) {
                    assert!(Instant::now() < deadline, "message {id} was never recorded as sent");
                    tokio::time::sleep(Duration::from_micros(50)).await;
                }
                window.push(at.elapsed().as_secs_f64() * 1e6);
                break;
            }
            assert!(Instant::now() < deadline, "message {id} never reached SMTP");
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    json!({"bench": "campaign_append_to_smtp", "messages": n, "seconds": round2(secs), "one_at_a_time": true, "latency": summary(samples),
           "duplicate_window": summary(window)})
}

/// How fast the engine reacts to the log with 20 campaigns in force: `events` tracked events
/// (40 names, 1 in 100 with the property the campaigns filter on) over 10,000 customers,
/// appended before the engine starts; the time until its cursor reaches the head.
pub async fn evaluation(events: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = start(dir.path()).await;
    let customers = 10_000u64;
    register(&app, customers).await;
    for k in 0..20 {
        let c = json!({"trigger": {"event": format!("Event {k}"), "where": {"plan": "enterprise"}}, "steps": [{"wait": "1d"}]});
        save_campaign(&app, TENANT, &format!("c{k}"), c, "bench").await.expect("campaign");
    }
    let per_append = 100u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16u64 {
        let app = app.clone();
        tasks.spawn(async move {
            let mut b = w;
            while b * per_append < events {
                let batch = (0..per_append)
                    .map(|j| {
                        let i = b * per_append + j;
                        let plan = if i.is_multiple_of(100) { "enterprise" } else { "free" };
                        tracked(&format!("Event {}", i % 40), json!({"plan": plan, "path": "/pricing"}))
                    })
                    .collect();
                let stream = customer::stream_of(&format!("c{}", b % customers));
                app.store().append(TENANT, &stream, ExpectedVersion::Any, batch).await.expect("append");
                b += 16;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let head = app.store().head().await.expect("head");
    let started = Instant::now();
    Engine::start(app.clone(), EngineConfig::default()).expect("engine");
    while app.reacted() < head {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let enrolled: u64 = {
        let v = app.views();
        v.tenant(TENANT).map_or(0, |t| t.automation.stats.values().map(|s| s.enrolled).sum())
    };
    json!({"bench": "campaign_evaluation", "campaigns": 20, "events": head, "customers": customers, "enrolments": enrolled,
           "seconds": round2(secs), "events_per_sec": (head as f64 / secs).round()})
}

/// `n` enrolments waiting (written as the engine writes them, due over a 30-second window
/// starting 20 seconds on), a checkpoint, the process's state dropped, the store and views
/// reopened and the engine started: how long the restart takes, and how late each wait fires.
pub async fn waits(n: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let checkpoint = dir.path().join("checkpoint.json");
    let customers = 10_000u64.min(n);
    let per_customer = n.div_ceil(customers);
    let campaigns = per_customer;
    let mut due = HashMap::new();
    let written = {
        let app = App::start(open(dir.path(), "log"), Some(checkpoint.clone())).await.expect("app");
        app.create_tenant(TENANT).await.expect("tenant");
        register(&app, customers).await;
        let mut versions = Vec::new();
        for k in 0..campaigns {
            let c = json!({"trigger": {"event": "Never"}, "steps": [{"wait": "1m"}]});
            save_campaign(&app, TENANT, &format!("w{k}"), c, "bench").await.expect("campaign");
            versions.push(1u64);
        }
        let base = Utc::now() + chrono::Duration::seconds(20);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut plan = Vec::new();
        for i in 0..n {
            let (c, k) = (i % customers, i / customers);
            let enrolment = derive_id(&[TENANT, "bench", &i.to_string()]).to_string();
            let at = base + chrono::Duration::milliseconds((i * 30_000 / n) as i64);
            due.insert(enrolment.clone(), at);
            plan.push((format!("c{c}"), format!("w{k}"), enrolment, at));
        }
        let plan = Arc::new(Mutex::new(plan));
        for _ in 0..64 {
            let (app, plan) = (app.clone(), plan.clone());
            tasks.spawn(async move {
                loop {
                    let Some((customer, campaign, enrolment, at)) = plan.lock().expect("lock").pop() else { return };
                    let events = [
                        AutomationEvent::CampaignEnrolled {
                            campaign: campaign.clone(),
                            enrolment: enrolment.clone(),
                            definition: 1,
                            trigger: "bench".into(),
                            trigger_position: None,
                            context: Value::Null,
                        },
                        AutomationEvent::CampaignStepScheduled { campaign, enrolment, step: 0, due: at, reason: None },
                    ]
                    .into_iter()
                    .map(|e| {
                        let (ty, data) = e.to_parts();
                        NewEvent::new(uuid::Uuid::now_v7(), ty, data, Utc::now())
                    })
                    .collect();
                    app.append(TENANT, &customer::stream_of(&customer), ExpectedVersion::Any, events).await.expect("append");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let secs = started.elapsed().as_secs_f64();
        let pending = app.views().tenant(TENANT).map_or(0, |t| t.automation.timers.len());
        assert_eq!(pending as u64, n);
        app.checkpoint().expect("checkpoint");
        secs
    };
    // Everything of the first process is gone; give the store's writer a moment to close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = Instant::now();
    let store = open(dir.path(), "log");
    let head = store.head().await.expect("head");
    let app = App::start(store, Some(checkpoint)).await.expect("restart");
    let pending = app.views().tenant(TENANT).map_or(0, |t| t.automation.timers.len());
    let restart_secs = restarted.elapsed().as_secs_f64();
    assert_eq!(pending as u64, n, "every pending wait survived the restart");
    Engine::start(app.clone(), EngineConfig::default()).expect("engine");
    let deadline = Instant::now() + Duration::from_secs(300);
    while app.views().tenant(TENANT).map_or(0, |t| t.automation.timers.len()) > 0 {
        assert!(Instant::now() < deadline, "waits did not fire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Lateness: when each wait's step was recorded as executed, against its due time.
    let mut late = Vec::new();
    let mut after = head;
    loop {
        let page = app.store().read_all(after, 10_000).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        for ev in page.iter().filter(|e| e.event_type == "CampaignStepExecuted") {
            let id = ev.data["enrolment"].as_str().unwrap_or_default();
            if let Some(d) = due.get(id) {
                late.push((ev.event_time - *d).num_microseconds().unwrap_or(0).max(0) as f64);
            }
        }
    }
    assert_eq!(late.len() as u64, n, "every wait fired once");
    json!({"bench": "pending_waits_across_restart", "waits": n, "write_seconds": round2(written), "restart_seconds": round2(restart_secs),
           "due_window_seconds": 30, "lateness": summary(late)})
}

/// Twenty segments of every kind of condition but RFM (six kinds, one a 7-day window of page
/// views), on the bench tenant's customers.
async fn define_segments(app: &Arc<App>, n: usize) {
    let kinds = [
        json!({"conditions": [{"inactive_for": "30d"}]}),
        json!({"conditions": [{"trait": "first_name", "exists": true}, {"inactive_for": "90d"}]}),
        json!({"conditions": [{"consent": {"channel": "email", "purpose": "marketing"}}]}),
        json!({"conditions": [{"tag": "vip"}]}),
        json!({"conditions": [{"stage": "customer"}]}),
        json!({"conditions": [{"event": "Page Viewed", "within": "7d", "at_least": 3}]}),
    ];
    for k in 0..n {
        let mut def = kinds[k % kinds.len()].clone();
        // Each its own: a different trait value besides the kind's condition.
        def["conditions"].as_array_mut().expect("list").push(json!({"trait": "plan", "exists": k % 2 == 0}));
        chronicle_app::automation::definitions::save_segment(app, TENANT, &format!("s{k}"), def, "bench").await.expect("segment");
    }
}

/// Segment upkeep: (1) the engine's time to react to `events` tracked events of 10,000
/// customers already in the log, with no segment and with 20, the difference per event being
/// the upkeep; (2) durable appends at 64 writers (tracked events of 1,000 registered customers)
/// for `seconds` while the engine runs, with no segment and with 20, twice each, alternated.
pub async fn segments(events: u64, seconds: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut react = Vec::new();
    for n in [0usize, 20] {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = start(dir.path()).await;
        let customers = 10_000u64;
        register(&app, customers).await;
        define_segments(&app, n).await;
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..16u64 {
            let app = app.clone();
            tasks.spawn(async move {
                let mut b = w;
                while b * 100 < events {
                    let batch = (0..100).map(|_| tracked("Page Viewed", json!({"path": "/pricing"}))).collect();
                    let stream = customer::stream_of(&format!("c{}", b % customers));
                    app.store().append(TENANT, &stream, ExpectedVersion::Any, batch).await.expect("append");
                    b += 16;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let head = app.store().head().await.expect("head");
        // The analytics index (which windowed segments are built from at the engine's start) is
        // built before the timing: a one-time cost per tenant and node, measured by `funnel`.
        drop(app.analytics_index(TENANT).await.expect("index"));
        let started = Instant::now();
        Engine::start(app.clone(), EngineConfig::default()).expect("engine");
        while app.reacted() < head {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let members: usize = app.views().tenant(TENANT).map_or(0, |t| t.automation.members.values().map(|m| m.len()).sum());
        react.push((n, head, secs, members));
    }
    let (_, events0, secs0, _) = react[0];
    let (_, events20, secs20, members) = react[1];
    let per_event_us = (secs20 / events20 as f64 - secs0 / events0 as f64) * 1e6;
    out.push(json!({"bench": "segment_upkeep", "segments": 20, "events": events20, "customers": 10_000, "memberships": members,
                    "react_seconds_without": round2(secs0), "react_seconds_with": round2(secs20),
                    "events_per_sec_without": (events0 as f64 / secs0).round(), "events_per_sec_with": (events20 as f64 / secs20).round(),
                    "upkeep_us_per_event": (per_event_us * 100.0).round() / 100.0}));
    let mut rates: Vec<(usize, f64)> = Vec::new();
    for n in [0usize, 20, 0, 20] {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = start(dir.path()).await;
        register(&app, 1000).await;
        define_segments(&app, n).await;
        let engine = Engine::start(app.clone(), EngineConfig::default()).expect("engine");
        let store = app.store().clone();
        let (rate, _, _, _) = crate::measure::drive(64, seconds, move |w, s, version, i| {
            let store = store.clone();
            async move {
                // Registered customers' streams, so the engine evaluates real customers.
                let _ = version;
                let ev = NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", crate::measure::payload(i), Utc::now());
                let stream = customer::stream_of(&format!("c{}", (w * 7919 + s) % 1000));
                store.append(TENANT, &stream, ExpectedVersion::Any, vec![ev]).await.expect("append");
            }
        })
        .await;
        drop(engine);
        rates.push((n, rate));
    }
    let mean = |k: usize| rates.iter().filter(|(n, _)| *n == k).map(|(_, r)| r).sum::<f64>() / 2.0;
    let (without, with) = (mean(0), mean(20));
    out.push(json!({"bench": "append_with_segments", "writers": 64, "seconds_each": seconds,
                    "runs": rates.iter().map(|(n, r)| json!({"segments": n, "events_per_sec": r.round()})).collect::<Vec<_>>(),
                    "events_per_sec_without": without.round(), "events_per_sec_with": with.round(),
                    "change_pct": ((with / without - 1.0) * 1000.0).round() / 10.0}));
    out
}
