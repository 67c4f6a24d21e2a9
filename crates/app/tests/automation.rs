//! The automation engine in-process over the embedded store: the program's steps (stage, tags,
//! both kinds of branch, a wait until a local time of day) and a send that falls back from
//! e-mail to SMS through the SMS provider's webhook (a real HTTP receiver on loopback).

use chronicle_core::customer::{Channel, ConsentInput, CustomerCommand, Preferences, Purpose};
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent};
use chronicle_app::automation::definitions::{save_campaign, save_template};
use chronicle_app::targets::WebhookTargets;
use chronicle_app::automation::{delivery::DeliveryConfig, Engine, EngineConfig};
use chronicle_app::App;
use chronicle_store::log::LogStore;
use chrono::Utc;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn app(dir: &std::path::Path) -> Arc<App> {
    let app = App::start(Arc::new(LogStore::open(dir).unwrap()), None).await.unwrap();
    app.create_tenant("acme").await.unwrap();
    app
}

async fn register(app: &App, id: &str, traits: Value, phone: Option<&str>, consents: Vec<ConsentInput>) {
    let cmd = CustomerCommand::Register {
        email: Some(format!("{id}@example.com")),
        phone: phone.map(str::to_owned),
        traits: traits.as_object().cloned().unwrap(),
        consents,
    };
    app.customer_command("acme", id, cmd, "test").await.unwrap();
}

async fn track(app: &App, id: &str, name: &str) {
    let data = json!({"kind": "track", "event": name, "properties": {}, "context": {}});
    let ev = NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", data, Utc::now());
    app.append("acme", &format!("customer-{id}"), ExpectedVersion::Any, vec![ev]).await.unwrap();
}

async fn events(app: &App, id: &str) -> Vec<EventEnvelope> {
    app.store().read_stream("acme", &format!("customer-{id}"), 1, usize::MAX).await.unwrap()
}

async fn wait_for(app: &App, id: &str, what: &str, f: impl Fn(&[EventEnvelope]) -> bool) -> Vec<EventEnvelope> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let evs = events(app, id).await;
        if f(&evs) {
            return evs;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", evs.iter().map(|e| &e.event_type).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tags(evs: &[EventEnvelope]) -> Vec<String> {
    evs.iter().filter(|e| e.event_type == "CustomerTagged").map(|e| e.data["tag"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_set_the_stage_tag_branch_on_traits_and_on_what_happened_and_wait_until_a_local_time() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let flow = json!({"trigger": {"event": "Signed Up"}, "steps": [
        {"set_stage": "lead"},
        {"if": {"trait": "plan", "equals": "pro"}, "then": [{"tag": "pro"}], "else": [{"tag": "free"}]},
        {"wait": "1s"},
        {"if": {"happened": "Checkout Started"}, "then": [{"tag": "checkout"}], "else": [{"tag": "no-checkout"}]},
        {"wait": {"until": "09:30"}}
    ]});
    save_campaign(&app, "acme", "flow", flow, "test").await.unwrap();
    register(&app, "a", json!({"plan": "pro"}), None, vec![]).await;
    register(&app, "b", json!({"plan": "free"}), None, vec![]).await;
    let prefs = Preferences { time_zone: Some("Asia/Tokyo".into()), ..Default::default() };
    app.customer_command("acme", "b", CustomerCommand::UpdatePreferences(prefs), "test").await.unwrap();
    // The one-second wait is passed by moving the application's clock, not by sleeping.
    let clock = Arc::new(chronicle_app::clock::ManualClock::new(Utc::now()));
    assert!(app.set_clock(clock.clone()));
    let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
    track(&app, "a", "Signed Up").await;
    track(&app, "b", "Signed Up").await;
    // "Since the enrolment": the checkout comes after it (the engine may enrol a moment later).
    wait_for(&app, "a", "a's enrolment", |e| e.iter().any(|e| e.event_type == "CampaignEnrolled")).await;
    track(&app, "a", "Checkout Started").await;
    let waiting = |evs: &[EventEnvelope]| evs.iter().any(|e| e.event_type == "CampaignStepScheduled" && e.data["step"] == 5);
    wait_for(&app, "a", "a's one-second wait", waiting).await;
    wait_for(&app, "b", "b's one-second wait", waiting).await;
    clock.advance(chrono::Duration::seconds(2));
    engine.wake();

    // Compiled: 0 stage, 1 branch, 2-3 then + jump, 4 else, 5 wait, 6 branch, 7-8, 9, 10 the wait until.
    let until = |evs: &[EventEnvelope]| evs.iter().any(|e| e.event_type == "CampaignStepScheduled" && e.data["step"] == 10);
    let a = wait_for(&app, "a", "a's last wait", until).await;
    let b = wait_for(&app, "b", "b's last wait", until).await;
    assert_eq!(tags(&a), ["pro", "checkout"]);
    assert_eq!(tags(&b), ["free", "no-checkout"]);
    for evs in [&a, &b] {
        let stage = evs.iter().find(|e| e.event_type == "LifecycleStageChanged").expect("stage set");
        assert_eq!(stage.data["to"], "lead");
    }
    assert_eq!(app.customer("acme", "a").unwrap().tags.len(), 2);
    // 09:30 on the customer's clock: UTC for a, Tokyo (UTC+9) for b.
    let due = |evs: &[EventEnvelope]| {
        let e = evs.iter().rev().find(|e| e.event_type == "CampaignStepScheduled").unwrap();
        chrono::DateTime::parse_from_rfc3339(e.data["due"].as_str().unwrap()).unwrap().with_timezone(&Utc)
    };
    assert_eq!(due(&a).format("%H:%M").to_string(), "09:30");
    assert_eq!(due(&b).format("%H:%M").to_string(), "00:30");
    assert!(due(&a) > Utc::now() && due(&a) <= Utc::now() + chrono::Duration::days(1));
}

/// An HTTP receiver on loopback that records each request's body and answers 200.
fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut line, mut len) = (String::new(), 0usize);
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            s.lock().unwrap().push(String::from_utf8(body).unwrap());
            let mut out = stream;
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_falls_back_from_email_to_sms_through_the_providers_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (url, seen) = receiver();
    save_template(&app, "acme", "code", &json!({"subject": "Your code", "body": "Hi {{ traits.first_name }}, 123456"}), "test")
        .await
        .unwrap();
    let c = json!({"trigger": {"event": "Login Started"}, "reentry": "always", "steps": [
        {"send": {"channel": "email", "purpose": "transactional", "template": "code", "fallback": ["sms"]}}]});
    save_campaign(&app, "acme", "otp", c, "test").await.unwrap();
    let sms_only = ConsentInput {
        channel: Channel::Sms,
        purpose: Purpose::Transactional,
        granted: true,
        source: Some("app".into()),
        legal_basis: None,
        proof: None,
    };
    let no_email = ConsentInput { channel: Channel::Email, granted: false, ..sms_only.clone() };
    register(&app, "p", json!({"first_name": "Pat"}), Some("+351910000000"), vec![sms_only, no_email]).await;
    let config = EngineConfig {
        delivery: DeliveryConfig { sms_webhook_url: Some(url), mail_from: "x@localhost".into(), ..Default::default() },
        ..EngineConfig::default()
    };
    Engine::start(app.clone(), config).unwrap();
    track(&app, "p", "Login Started").await;
    let evs = wait_for(&app, "p", "the SMS to be sent", |e| e.iter().any(|e| e.event_type == "MessageSent")).await;
    let queued = evs.iter().find(|e| e.event_type == "MessageQueued").unwrap();
    assert_eq!(queued.data["channel"], "sms");
    assert_eq!(queued.data["to"], "+351910000000");
    // The message names the consent decision it relied on: the SMS grant, not the e-mail refusal.
    let grant = evs.iter().find(|e| e.event_type == "ConsentGranted" && e.data["channel"] == "sms").unwrap();
    assert_eq!(queued.data["consent_position"], grant.position, "{}", queued.data);
    // The 360's read model has the message, sent, with that decision.
    let record = {
        let v = app.views();
        v.tenant("acme").unwrap().automation.messages["p"].last().cloned().unwrap()
    };
    assert_eq!((record.state.as_str(), record.channel.as_str(), record.consent_position), ("sent", "sms", Some(grant.position)));
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let sent: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!((sent["channel"].as_str(), sent["to"].as_str()), (Some("sms"), Some("+351910000000")));
    assert_eq!(sent["body"], "Hi Pat, 123456", "the SMS body is the rendered template");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_logged_between_the_trigger_and_the_enrolment_still_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let cart = json!({"trigger": {"event": "Product Added"}, "goal": "Order Completed",
                      "steps": [{"wait": "1s"}, {"tag": "reminded"}]});
    save_campaign(&app, "acme", "cart", cart, "test").await.unwrap();
    register(&app, "a", json!({}), None, vec![]).await;
    // Both in the log before the engine reacts to either: the enrolment is written after the
    // order (as under load, when the engine lags the writers).
    track(&app, "a", "Product Added").await;
    track(&app, "a", "Order Completed").await;
    let clock = Arc::new(chronicle_app::clock::ManualClock::new(Utc::now()));
    assert!(app.set_clock(clock.clone()));
    let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
    let evs = wait_for(&app, "a", "the conversion", |e| e.iter().any(|e| e.event_type == "CampaignConverted")).await;
    let order = evs.iter().position(|e| e.event_type == "ActivityTracked" && e.data["event"] == "Order Completed").unwrap();
    let enrolled = evs.iter().position(|e| e.event_type == "CampaignEnrolled").unwrap();
    assert!(order < enrolled, "the order was logged before the enrolment");
    // Past the wait, by the application's clock: the ended enrolment does not go on.
    clock.advance(chrono::Duration::seconds(5));
    engine.wake();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tags(&events(&app, "a").await).is_empty(), "a converted enrolment sends no reminder");
}

/// A store whose writes can be refused (a full disk), delegating everything else.
struct Flaky {
    inner: Arc<dyn chronicle_store::EventStore>,
    refuse: std::sync::atomic::AtomicBool,
    refused: std::sync::atomic::AtomicU64,
    /// Which appends are refused while `refuse` is on: (stream, event).
    rule: fn(&str, &NewEvent) -> bool,
}

#[async_trait::async_trait]
impl chronicle_store::EventStore for Flaky {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<chronicle_store::AppendResult, chronicle_store::AppendError> {
        if events.iter().any(|e| (self.rule)(stream, e)) && self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            self.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(chronicle_store::AppendError::Storage("No space left on device (os error 28)".into()));
        }
        self.inner.append(tenant, stream, expected, events).await
    }
    async fn read_stream(&self, tenant: &str, stream: &str, from: u64, limit: usize) -> Result<Vec<EventEnvelope>, chronicle_store::ReadError> {
        self.inner.read_stream(tenant, stream, from, limit).await
    }
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, chronicle_store::ReadError> {
        self.inner.read_all(after, limit).await
    }
    async fn stored(&self, tenant: &str, ids: &[uuid::Uuid]) -> Result<Vec<bool>, chronicle_store::ReadError> {
        self.inner.stored(tenant, ids).await
    }
    async fn head(&self) -> Result<u64, chronicle_store::ReadError> {
        self.inner.head().await
    }
    async fn stream_version(&self, tenant: &str, stream: &str) -> Result<u64, chronicle_store::ReadError> {
        self.inner.stream_version(tenant, stream).await
    }
    fn head_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.head_watch()
    }
    fn set_commit_hook(&self, hook: chronicle_store::CommitHook) {
        self.inner.set_commit_hook(hook)
    }
}

/// Issue 17, item 2: with the log's writes failing, one queued message once reached its
/// receiver ~20,000 times in 20 s (its outcome could not be recorded, so it stayed due and the
/// next wait was 0). Now each message is handed over at most once while the store refuses
/// writes, and every one of them exactly once after it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_sends_each_queued_message_at_most_once_and_all_once_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(Flaky {
        inner: Arc::new(LogStore::open(dir.path()).unwrap()),
        refuse: Default::default(),
        refused: Default::default(),
        // The disk fills up just as the outcomes are to be recorded: the enrolments and the
        // queued messages went in before.
        rule: |_, e| e.event_type.starts_with("Message") && e.event_type != "MessageQueued",
    });
    let app = App::start(flaky.clone(), None).await.unwrap();
    let clock = Arc::new(chronicle_app::clock::ManualClock::new(Utc::now()));
    assert!(app.set_clock(clock.clone()));
    app.create_tenant("acme").await.unwrap();
    app.set_webhook_targets(WebhookTargets::AllowPrivate);
    let (url, seen) = receiver();
    let c = json!({"trigger": {"event": "Signed Up"}, "steps": [{"webhook": {"url": url}}]});
    save_campaign(&app, "acme", "hook", c, "test").await.unwrap();
    let people = ["p1", "p2", "p3"];
    for p in people {
        register(&app, p, json!({}), None, vec![]).await;
    }
    let config = EngineConfig { retry_base: Duration::from_millis(50), ..EngineConfig::default() };
    let engine = Engine::start(app.clone(), config).unwrap();
    flaky.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in people {
        track(&app, p, "Signed Up").await;
    }
    for p in people {
        wait_for(&app, p, "the message queued", |e| e.iter().any(|e| e.event_type == "MessageQueued")).await;
    }
    // Four seconds pass on the application's clock, in steps, the engine woken at each (the
    // pauses between tries to record an outcome are the clock's).
    for _ in 0..40 {
        clock.advance(chrono::Duration::milliseconds(100));
        engine.wake();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(flaky.refused.load(std::sync::atomic::Ordering::SeqCst) > 0, "the outcomes were refused");
    let during = seen.lock().unwrap().clone();
    let ids = |bodies: &[String]| -> Vec<String> {
        let mut ids: Vec<String> =
            bodies.iter().map(|b| serde_json::from_str::<Value>(b).unwrap()["customer"].as_str().unwrap_or("?").to_owned()).collect();
        ids.sort();
        ids
    };
    let during_ids = ids(&during);
    let mut unique = during_ids.clone();
    unique.dedup();
    assert_eq!(during_ids, unique, "no message handed over twice while the store refused writes: {during_ids:?}");
    assert!(flaky.refused.load(std::sync::atomic::Ordering::SeqCst) < 40, "the engine backs off: {} refused writes in 4 s", flaky.refused.load(std::sync::atomic::Ordering::SeqCst));
    flaky.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    // The next tries to record come due as the clock moves on.
    let moving = {
        let (clock, engine) = (clock.clone(), engine.clone());
        tokio::spawn(async move {
            loop {
                clock.advance(chrono::Duration::seconds(1));
                engine.wake();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for p in people {
        wait_for(&app, p, "the outcome recorded", |e| e.iter().any(|e| e.event_type == "MessageSent")).await;
    }
    moving.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&seen.lock().unwrap()), ["p1", "p2", "p3"], "each message handed over exactly once");
    drop(engine);
}

/// A minimal SMTP server on loopback that accepts every message and then takes `quit_delay`
/// to answer `QUIT`; it counts the messages whose data it accepted.
fn slow_quit_smtp(quit_delay: Duration) -> (String, Arc<Mutex<usize>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    let accepted: Arc<Mutex<usize>> = Arc::default();
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let _ = out.write_all(b"220 slow.test ESMTP\r\n");
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.trim_end().to_ascii_uppercase();
                    let answer: &[u8] = if verb.starts_with("EHLO") || verb.starts_with("HELO") {
                        b"250 slow.test\r\n"
                    } else if verb.starts_with("DATA") {
                        let _ = out.write_all(b"354 go ahead\r\n");
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                        }
                        *count.lock().unwrap() += 1;
                        b"250 queued\r\n"
                    } else if verb.starts_with("QUIT") {
                        std::thread::sleep(quit_delay);
                        let _ = out.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = out.write_all(answer);
                }
            });
        }
    });
    (url, accepted)
}

/// Issue 17, item 3: the SMTP time limit covered the whole session, `QUIT` included, so a
/// server slow to answer `QUIT` got one message three times and it was then dead-lettered as
/// "timed out". Once the server has answered 250 to the message data, the message is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_smtp_server_accepted_is_sent_however_slow_its_quit() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (smtp_url, accepted) = slow_quit_smtp(Duration::from_secs(30));
    save_template(&app, "acme", "hi", &json!({"subject": "Hi", "body": "Hello"}), "test").await.unwrap();
    let c = json!({"trigger": {"event": "Signed Up"}, "steps": [
        {"send": {"channel": "email", "purpose": "transactional", "template": "hi"}}]});
    save_campaign(&app, "acme", "welcome", c, "test").await.unwrap();
    register(&app, "q", json!({}), None, vec![]).await;
    let config = EngineConfig {
        delivery: DeliveryConfig { smtp_url: Some(smtp_url), mail_from: "x@localhost".into(), ..Default::default() },
        retry_base: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    Engine::start(app.clone(), config).unwrap();
    track(&app, "q", "Signed Up").await;
    let evs = wait_for(&app, "q", "the outcome", |e| {
        e.iter().any(|e| matches!(e.event_type.as_str(), "MessageSent" | "MessageFailed" | "MessageDeadLettered"))
    })
    .await;
    let outcome = evs.iter().find(|e| e.event_type.starts_with("Message") && e.event_type != "MessageQueued").unwrap();
    assert_eq!(outcome.event_type, "MessageSent", "{}", outcome.data);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*accepted.lock().unwrap(), 1, "the message went to the server once");
}

/// Issue 17, item 11: a campaign's webhook could reach internal addresses, and a dead letter's
/// error told which ports answered. Unless the operator allows it, a literal internal address
/// is refused when the campaign is saved, a name that resolves to one is refused when
/// connecting (the receiver on loopback never hears of it), the error names no address or
/// port, and redirects are not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_webhooks_cannot_reach_internal_addresses_unless_the_operator_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (url, seen) = receiver();
    let port = url.trim_start_matches("http://127.0.0.1:").split('/').next().unwrap().to_owned();
    let hook = |u: &str| json!({"trigger": {"event": "Demo Requested"}, "steps": [{"webhook": {"url": u}}]});
    for literal in [url.clone(), format!("http://[::1]:{port}/x"), "http://169.254.169.254/latest".into(), "http://localhost:9/".into()] {
        match save_campaign(&app, "acme", "literal", hook(&literal), "test").await {
            Err(chronicle_app::AppError::Rule { code: "webhook_target_refused", .. }) => {}
            other => panic!("{literal}: expected webhook_target_refused, got {other:?}"),
        }
    }
    // `127.1` is not an address literal to a URL parser, but the resolver makes it 127.0.0.1.
    let sneaky = format!("http://127.1:{port}/sms");
    save_campaign(&app, "acme", "sneaky", hook(&sneaky), "test").await.unwrap();
    register(&app, "c1", json!({}), None, vec![]).await;
    let config = EngineConfig { retry_base: Duration::from_millis(20), max_attempts: 2, ..EngineConfig::default() };
    Engine::start(app.clone(), config).unwrap();
    track(&app, "c1", "Demo Requested").await;
    let evs = wait_for(&app, "c1", "the dead letter", |e| e.iter().any(|e| e.event_type == "MessageDeadLettered")).await;
    let dead = evs.iter().find(|e| e.event_type == "MessageDeadLettered").unwrap();
    let error = dead.data["error"].as_str().unwrap();
    assert!(error.contains("internal address"), "{error}");
    assert!(!error.contains(&port) && !error.contains("127."), "no connection detail: {error}");
    assert!(seen.lock().unwrap().is_empty(), "the internal receiver was never reached");

    // Allowed by the operator: delivered. A redirect is not followed.
    app.set_webhook_targets(WebhookTargets::AllowPrivate);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirect = format!("http://{}/r", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let mut out = stream;
            let _ = out.write_all(format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {url}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    let redirected = json!({"trigger": {"event": "Trial Started"}, "steps": [{"webhook": {"url": redirect}}]});
    save_campaign(&app, "acme", "redirected", redirected, "test").await.unwrap();
    register(&app, "c2", json!({}), None, vec![]).await;
    track(&app, "c2", "Trial Started").await;
    let evs = wait_for(&app, "c2", "the outcome", |e| e.iter().any(|e| e.event_type == "MessageDeadLettered")).await;
    let dead = evs.iter().find(|e| e.event_type == "MessageDeadLettered").unwrap();
    assert!(dead.data["error"].as_str().unwrap().contains("HTTP 307"), "{}", dead.data);
    assert!(seen.lock().unwrap().is_empty(), "the redirect was not followed");
}

/// Issue 17 (suspected, confirmed): a campaign reaction that failed three times was skipped for
/// good — the cursor moved past the event, so an outage of ~0.6 s lost an enrolment. Now it is
/// parked: listed, counted, retried on the engine's clock, and the saved cursor stays before
/// it; later events are reacted to meanwhile (the shard does not stall).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_that_keeps_failing_is_parked_and_retried_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(Flaky {
        inner: Arc::new(LogStore::open(dir.path()).unwrap()),
        refuse: Default::default(),
        refused: Default::default(),
        rule: |stream, e| stream == "customer-p1" && e.event_type == "CampaignEnrolled",
    });
    let app = App::start(flaky.clone(), None).await.unwrap();
    app.create_tenant("acme").await.unwrap();
    let c = json!({"trigger": {"event": "Signed Up"}, "steps": [{"tag": "welcomed"}]});
    save_campaign(&app, "acme", "welcome", c, "test").await.unwrap();
    register(&app, "p1", json!({}), None, vec![]).await;
    register(&app, "p2", json!({}), None, vec![]).await;
    let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
    flaky.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    track(&app, "p1", "Signed Up").await;
    let parked_at = app.store().head().await.unwrap();
    track(&app, "p2", "Signed Up").await;
    // The shard goes on: p2 is enrolled while p1's reaction is parked.
    wait_for(&app, "p2", "p2's enrolment", |e| e.iter().any(|e| e.event_type == "CampaignEnrolled")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.parked().is_empty() {
        assert!(Instant::now() < deadline, "the failing reaction was never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let parked = engine.parked().of("acme");
    assert_eq!((parked.len(), parked[0].position, parked[0].event_type.as_str()), (1, parked_at, "ActivityTracked"));
    assert!(app.reacted() < parked_at, "the saved cursor stays before the parked event: {} vs {parked_at}", app.reacted());
    assert!(!events(&app, "p1").await.iter().any(|e| e.event_type == "CampaignEnrolled"));
    // The store recovers: the retry enrols p1, and the cursor moves on.
    flaky.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(engine.parked().retry_now("acme", parked_at, Utc::now()));
    engine.wake();
    wait_for(&app, "p1", "p1's enrolment after the retry", |e| e.iter().any(|e| e.event_type == "CampaignEnrolled")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.parked().is_empty() || app.reacted() < parked_at {
        assert!(Instant::now() < deadline, "the parked reaction was not cleared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Controlled time (issue 18): the engine's "now" is the application's clock, so a campaign's
/// one-hour wait fires as soon as a test moves the clock on — no sleeping on the wall clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_hour_wait_fires_when_the_clock_is_moved_on() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let clock = Arc::new(chronicle_app::clock::ManualClock::new(Utc::now()));
    assert!(app.set_clock(clock.clone()));
    let c = json!({"trigger": {"event": "Signed Up"}, "steps": [{"wait": "1h"}, {"tag": "an-hour-later"}]});
    save_campaign(&app, "acme", "later", c, "test").await.unwrap();
    register(&app, "c1", json!({}), None, vec![]).await;
    let engine = Engine::start(app.clone(), EngineConfig::default()).unwrap();
    track(&app, "c1", "Signed Up").await;
    wait_for(&app, "c1", "the wait", |e| e.iter().any(|e| e.event_type == "CampaignStepScheduled")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tags(&events(&app, "c1").await).is_empty(), "not before the hour");
    let started = Instant::now();
    clock.advance(chrono::Duration::hours(1) + chrono::Duration::seconds(1));
    engine.wake();
    let evs = wait_for(&app, "c1", "the step after the wait", |e| !tags(e).is_empty()).await;
    assert_eq!(tags(&evs), ["an-hour-later"]);
    assert!(started.elapsed() < Duration::from_secs(1), "fired {:?} after the clock moved", started.elapsed());
}
