//! `chronicle-bench`: the benchmarks behind the README's figures. Each prints one JSON object
//! per measurement on stdout. Run in release mode:
//!
//! ```sh
//! cargo run --release -p chronicle-bench -- all          # everything, as in docs/benchmarks.md
//! cargo run --release -p chronicle-bench -- append 64 10 log     # durable appends, 64 writers, 10 s
//! cargo run --release -p chronicle-bench -- append 64 10 sqlite  # the same on the SQLite backend
//! cargo run --release -p chronicle-bench -- rebuild 1000000
//! cargo run --release -p chronicle-bench -- consent
//! cargo run --release -p chronicle-bench -- as-of 10000
//! cargo run --release -p chronicle-bench -- ingest 8 10   # Segment /v1/batch, 100 messages a request
//! cargo run --release -p chronicle-bench -- import 1000000 # bulk import of an NDJSON file, then again
//! cargo run --release -p chronicle-bench -- campaign-latency 2000   # append → e-mail handed to SMTP
//! cargo run --release -p chronicle-bench -- campaign-eval 1000000   # 20 campaigns reacting to the log
//! cargo run --release -p chronicle-bench -- waits 100000            # pending waits across a restart
//! ```
//!
//! Data goes to a temporary folder on the same disk as the system's temp dir (`TMPDIR`), so
//! fsyncs are real.

/// mimalloc: the rebuild and the API allocate many small strings on one thread and free them on
/// another, where it measured markedly faster than the system allocator (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod automation;
mod measure;
mod postgres;

use measure::{drive, open, payload, round2, summary};

use chronicle_core::customer::{self, Channel, ConsentInput, CustomerCommand, CustomerEvent, NoEmails, Purpose};
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chronicle_app::{maintenance, App};
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("append") => print(append(arg(1, 64) as usize, arg(2, 5), args.get(3).map_or("log", String::as_str)).await),
            // PostgreSQL: Chronicle beside a plain INSERT table and message-db (CHRONICLE_BENCH_DATABASE_URL).
            Some("postgres") => {
                for r in postgres::compare(arg(1, 10)).await {
                    print(r)
                }
            }
            Some("rebuild") => print(rebuild(arg(1, 1_000_000)).await),
            Some("consent") => {
                for r in consent().await {
                    print(r)
                }
            }
            Some("as-of") => print(as_of(arg(1, 10_000)).await),
            Some("ingest") => print(ingest(arg(1, 8) as usize, arg(2, 10)).await),
            Some("contacts") => print(contacts(arg(1, 1_000_000))),
            Some("ui360") => print(ui360(arg(1, 10_000)).await),
            // Over a data folder `chronicle demo --no-serve` made (its tenant `demo`).
            Some("funnel") => print(funnel(std::path::Path::new(args.get(1).map_or("chronicle-demo-data", String::as_str))).await),
            Some("import") => print(import(arg(1, 1_000_000)).await),
            Some("campaign-latency") => print(automation::latency(arg(1, 2000)).await),
            Some("campaign-eval") => print(automation::evaluation(arg(1, 1_000_000)).await),
            Some("waits") => print(automation::waits(arg(1, 100_000)).await),
            Some("segments") => {
                for r in automation::segments(arg(1, 1_000_000), arg(2, 5)).await {
                    print(r)
                }
            }
            // The import benchmark's file, for timing the `chronicle import` command itself.
            Some("export-file") => write_export(arg(1, 1_000_000), std::path::Path::new(args.get(2).map_or("export.ndjson", String::as_str))),
            Some("all") => {
                for w in [1, 16, 64] {
                    print(append(w, 10, "log").await);
                }
                for w in [1, 16, 64] {
                    print(append(w, 10, "sqlite").await);
                }
                print(rebuild(1_000_000).await);
                for r in consent().await {
                    print(r)
                }
                print(as_of(10_000).await);
                print(ingest(8, 10).await);
                print(import(1_000_000).await);
                print(automation::latency(2000).await);
                print(automation::evaluation(1_000_000).await);
                print(automation::waits(100_000).await);
            }
            _ => {
                eprintln!("usage: chronicle-bench all | contacts CUSTOMERS | append WRITERS [SECONDS] [log|sqlite] | postgres [SECONDS] | rebuild EVENTS | consent | as-of EVENTS | ingest CLIENTS [SECONDS] | import LINES | export-file LINES PATH | campaign-latency N | campaign-eval EVENTS | waits N | segments EVENTS [SECONDS]");
                std::process::exit(2);
            }
        }
    });
}

fn print(v: Value) {
    println!("{v}");
}

/// Durable appends: `writers` tasks, each appending one ~300-byte event at a time to a
/// customer stream of its own share of 100,000, with exact expected versions.
async fn append(writers: usize, seconds: u64, backend: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), backend);
    let bytes = payload(0).to_string().len();
    let (rate, latency, n, secs) = drive(writers, seconds, move |w, s, version, i| {
        let store = store.clone();
        async move {
            let ev = NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", payload(i), Utc::now());
            let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
            store.append("bench", &format!("customer-w{w}-{s}"), expected, vec![ev]).await.expect("append");
        }
    })
    .await;
    json!({"bench": "append", "backend": backend, "writers": writers, "event_bytes": bytes, "events": n, "seconds": round2(secs), "events_per_sec": rate, "latency": latency})
}

fn customer_events(id: &str, n: u64, start: DateTime<Utc>) -> Vec<NewEvent> {
    let mut c = customer::Customer::new(id);
    let mut out = Vec::new();
    let push = |e: CustomerEvent, at: DateTime<Utc>, c: &mut customer::Customer, out: &mut Vec<NewEvent>| {
        c.apply(&e, c.version + 1, at);
        let (ty, data) = e.to_parts();
        out.push(NewEvent::new(uuid::Uuid::now_v7(), ty, data, at));
    };
    let reg = c
        .decide(
            CustomerCommand::Register {
                email: Some(format!("{id}@example.com")),
                phone: None,
                traits: json!({"first_name": "Ada", "plan": "free"}).as_object().unwrap().clone(),
                consents: vec![ConsentInput {
                    channel: Channel::Email,
                    purpose: Purpose::Marketing,
                    granted: true,
                    source: Some("form".into()),
                    legal_basis: None,
                    proof: Some(json!({"ip": "198.51.100.7"})),
                }],
            },
            &NoEmails,
        )
        .expect("valid");
    for e in reg {
        push(e, start, &mut c, &mut out);
    }
    let mut i = out.len() as u64;
    while i < n {
        let at = start + Duration::seconds(i as i64 * 60);
        if i.is_multiple_of(10) {
            let mut traits = Map::new();
            traits.insert("plan".into(), json!(format!("p{i}")));
            let e = c
                .decide(CustomerCommand::UpdateProfile { email: None, phone: None, traits }, &NoEmails)
                .expect("valid")
                .remove(0);
            push(e, at, &mut c, &mut out);
        } else if i.is_multiple_of(25) {
            let e = c
                .decide(
                    CustomerCommand::SetConsent(ConsentInput {
                        channel: Channel::Email,
                        purpose: Purpose::Marketing,
                        granted: i.is_multiple_of(50),
                        source: Some("prefs".into()),
                        legal_basis: None,
                        proof: None,
                    }),
                    &NoEmails,
                )
                .expect("valid")
                .remove(0);
            push(e, at, &mut c, &mut out);
        } else {
            c.version += 1;
            out.push(NewEvent::new(uuid::Uuid::now_v7(), "ActivityTracked", payload(i), at));
        }
        i += 1;
    }
    out
}

/// Load `n` events over 10,000 customers (100 each), then time a full replay into fresh
/// projections — exactly what `chronicle rebuild` does.
async fn rebuild(n: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), "log");
    let customers = 10_000u64.min(n.max(1));
    let per = n / customers;
    let start = Utc::now() - Duration::days(30);
    let load_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut i = w;
            while i < customers {
                let id = format!("c{i}");
                store
                    .append(
                        "bench",
                        &customer::stream_of(&id),
                        ExpectedVersion::NoStream,
                        customer_events(&id, per, start),
                    )
                    .await
                    .expect("append");
                i += 16;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let load_secs = load_started.elapsed().as_secs_f64();
    let head = store.head().await.expect("head");
    let started = Instant::now();
    let r = maintenance::replay(&store, |_| {}).await.expect("replay");
    let secs = started.elapsed().as_secs_f64();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.events, head);
    json!({"bench": "rebuild", "backend": "log", "events": r.events, "customers": customers, "seconds": round2(secs), "events_per_sec": (r.events as f64 / secs).round(), "load_seconds": round2(load_secs), "load_events_per_sec": (head as f64 / load_secs).round()})
}

/// Consent check latency: in-process against the live views (10,000 customers), and over
/// HTTP on loopback with a keep-alive client.
async fn consent() -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), "log");
    let app = App::start(store.clone(), None).await.expect("app");
    let (key, _) = app.create_tenant("bench").await.expect("tenant");
    let start = Utc::now() - Duration::days(30);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16u64 {
        let app = app.clone();
        tasks.spawn(async move {
            let mut i = w;
            while i < 10_000 {
                let id = format!("c{i}");
                app.append(
                    "bench",
                    &customer::stream_of(&id),
                    ExpectedVersion::NoStream,
                    customer_events(&id, 10, start),
                )
                .await
                .expect("append");
                i += 16;
            }
        });
    }
    while tasks.join_next().await.is_some() {}

    let mut lat = Vec::with_capacity(1_000_000);
    let mut allowed = 0u64;
    for i in 0..1_000_000u64 {
        let id = format!("c{}", i % 10_000);
        let t = Instant::now();
        let d = app.consent_check("bench", &id, Channel::Email, Purpose::Marketing);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        allowed += u64::from(d.allowed);
    }
    // What the timing itself costs (two clock reads around nothing), to read the figure against.
    let mut empty = Vec::with_capacity(1_000_000);
    for _ in 0..1_000_000 {
        let t = Instant::now();
        empty.push(std::hint::black_box(t).elapsed().as_secs_f64() * 1e6);
    }
    let in_process = json!({"bench": "consent_check_in_process", "checks": lat.len(), "allowed": allowed, "latency": summary(lat), "timer_overhead": summary(empty)});

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(chronicle_server::serve(api(&app), listener, std::future::pending()));
    let over_http = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let auth = format!("Bearer {key}");
        let mut lat = Vec::with_capacity(20_000);
        for i in 0..22_000u64 {
            let url = format!("http://{addr}/v1/consent-check?customer=c{}&channel=email&purpose=marketing", i % 10_000);
            let t = Instant::now();
            let mut r = agent.get(&url).header("authorization", &auth).call().expect("request");
            let _ = r.body_mut().read_to_string().expect("body");
            assert_eq!(r.status().as_u16(), 200);
            if i >= 2_000 {
                lat.push(t.elapsed().as_secs_f64() * 1e6); // after a warm-up
            }
        }
        json!({"bench": "consent_check_http", "requests": lat.len(), "client": "one keep-alive connection, sequential", "latency": summary(lat)})
    })
    .await
    .expect("client");
    server.abort();
    vec![in_process, over_http]
}

/// As-of queries on one customer with `n` events: instants spread across its history.
async fn as_of(n: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), "log");
    let app = App::start(store.clone(), None).await.expect("app");
    let start = Utc::now() - Duration::days(60);
    let events = customer_events("big", n, start);
    for chunk in events.chunks(1000) {
        app.append("bench", &customer::stream_of("big"), ExpectedVersion::Any, chunk.to_vec()).await.expect("append");
    }
    let mut lat = Vec::new();
    for k in 0..200u64 {
        let at = start + Duration::seconds(((k * 7919) % n) as i64 * 60 + 30);
        let t = Instant::now();
        let c = app.customer_as_of("bench", "big", at).await.expect("as_of");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(c.exists);
    }
    json!({"bench": "as_of", "stream_events": n, "snapshot_every": chronicle_projections::SNAPSHOT_EVERY, "queries": lat.len(), "latency": summary(lat)})
}

/// The web UI's customer 360 of a customer with `n` events, over HTTP on loopback as a
/// signed-in person: the time to answer (server time plus a loopback round trip) and the page's
/// size, now and as of instants across the history.
async fn ui360(n: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), "log");
    let app = App::start(store.clone(), None).await.expect("app");
    app.create_tenant("bench").await.expect("tenant");
    let start = Utc::now() - Duration::days(60);
    for chunk in customer_events("big", n, start).chunks(1000) {
        app.append("bench", &customer::stream_of("big"), ExpectedVersion::Any, chunk.to_vec()).await.expect("append");
    }
    let pw = "correct horse battery staple";
    app.create_user("bench", "Bench", "bench@example.com", chronicle_projections::Role::Writer, pw, "bench").await.expect("user");
    let (token, _) = app.sign_in("bench", "bench@example.com", pw, None).await.expect("sign in");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(chronicle_server::serve(api(&app), listener, std::future::pending()));
    let measured = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let cookie = format!("chronicle_session={token}");
        let get = |url: &str| {
            let t = Instant::now();
            let mut res = agent.get(url).header("cookie", &cookie).call().expect("GET");
            let body = res.body_mut().read_to_string().expect("body");
            assert_eq!(res.status().as_u16(), 200, "{body}");
            (t.elapsed().as_secs_f64() * 1e6, body.len())
        };
        let base = format!("http://{addr}/ui/customers/big");
        get(&base); // warm-up
        let (mut now_us, mut now_bytes) = (Vec::new(), 0);
        for _ in 0..100 {
            let (us, bytes) = get(&base);
            now_us.push(us);
            now_bytes = now_bytes.max(bytes);
        }
        let (mut past_us, mut past_bytes) = (Vec::new(), 0);
        for k in 0..100u64 {
            let at = start + Duration::seconds(((k * 7919) % n) as i64 * 60 + 30);
            let (us, bytes) = get(&format!("{base}?as_of={}", at.format("%Y-%m-%dT%H:%M:%SZ")));
            past_us.push(us);
            past_bytes = past_bytes.max(bytes);
        }
        (now_us, now_bytes, past_us, past_bytes)
    })
    .await
    .expect("requests");
    server.abort();
    let (now_us, now_bytes, past_us, past_bytes) = measured;
    json!({"bench": "ui360", "customer_events": n, "requests": now_us.len() + past_us.len(),
           "now_latency": summary(now_us), "now_max_bytes": now_bytes, "as_of_latency": summary(past_us), "as_of_max_bytes": past_bytes})
}

/// A 4-step funnel over the demo tenant (a data folder `chronicle demo --no-serve` made), as
/// `POST /v1/analytics/funnels` runs it: plain, then with a breakdown by plan and an `as_of`;
/// the first answer builds the tenant's analytics index (timed apart). Then the peer: the same
/// funnels run by DuckDB (`peers/funnel_duckdb.py`, with the Python named by `CHRONICLE_PYTHON`,
/// default `python3`) over the same events, loaded in memory first.
async fn funnel(data: &std::path::Path) -> Value {
    let cfg = chronicle_app::storage::StorageConfig::embedded(data, false);
    let st = chronicle_app::storage::open(&cfg).expect("the demo's data folder");
    let app = st.app().await.expect("app");
    let events = app.store().head().await.expect("head");
    let names = ["Page Viewed", "Product Viewed", "Product Added", "Order Completed"];
    let steps: Vec<Value> = names.iter().map(|n| json!({"event": n})).collect();
    let plain: chronicle_analytics::funnel::FunnelSpec = serde_json::from_value(json!({"steps": steps, "window": "7d"})).expect("spec");
    let as_of = Utc::now() - Duration::days(7);
    let split: chronicle_analytics::funnel::FunnelSpec =
        serde_json::from_value(json!({"steps": steps, "window": "7d", "breakdown": {"trait": "plan"}, "as_of": as_of})).expect("spec");
    let t = Instant::now();
    let (rows, index_bytes) = {
        let ix = app.analytics_index("demo").await.expect("index");
        (ix.rows.len(), ix.heap_bytes())
    };
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut answers = Vec::new();
    for spec in [&plain, &split] {
        let mut lat = Vec::new();
        let mut last = None;
        for _ in 0..7 {
            let t = Instant::now();
            last = Some(app.funnel("demo", spec).await.expect("funnel"));
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        answers.push((summary(lat), last.expect("an answer")));
    }
    // RFM over the same index, as `GET /v1/analytics/rfm` computes it (the whole answer, then a page).
    let mut rfm_lat = Vec::new();
    let mut rfm_listed = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let page = app.rfm("demo", &chronicle_app::analytics::RfmQuery { limit: 100, ..Default::default() }).await.expect("rfm");
        rfm_lat.push(t.elapsed().as_secs_f64() * 1e6);
        rfm_listed = page.groups.values().sum::<u64>();
    }
    // Pipeline analytics and monthly cohorts, as their routes compute them.
    let mut pipe_lat = Vec::new();
    let mut cohort_lat = Vec::new();
    let (mut deals, mut cohort_count) = (0, 0);
    for _ in 0..7 {
        let t = Instant::now();
        let p = app.pipeline_analytics("demo", &chronicle_app::analytics::PipelineQuery::default()).await.expect("pipeline");
        pipe_lat.push(t.elapsed().as_secs_f64() * 1e6);
        deals = p.open + p.won + p.lost;
        let t = Instant::now();
        let c = app.cohorts("demo", &chronicle_app::analytics::CohortQuery::default()).await.expect("cohorts");
        cohort_lat.push(t.elapsed().as_secs_f64() * 1e6);
        cohort_count = c.cohorts.len();
    }
    // Attribution of the demo's orders under all five models.
    let mut attr_lat = Vec::new();
    let mut attr_conversions = 0;
    let spec: chronicle_analytics::attribution::AttributionSpec = serde_json::from_value(json!({})).expect("spec");
    for _ in 0..7 {
        let t = Instant::now();
        attr_conversions = app.attribution("demo", &spec).await.expect("attribution").conversions;
        attr_lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let counts = |steps: &[chronicle_analytics::funnel::StepResult]| steps.iter().map(|s| s.count).collect::<Vec<_>>();
    let split_counts: serde_json::Map<String, Value> =
        answers[1].1.breakdown.iter().flatten().map(|(k, v)| (k.clone(), json!(counts(v)))).collect();
    json!({"bench": "funnel", "log_events": events, "index_rows": rows, "index_bytes": index_bytes,
           "index_bytes_per_event": index_bytes as f64 / rows.max(1) as f64, "index_build_ms": build_ms, "steps": 4,
           "plain": answers[0].0, "plain_counts": counts(&answers[0].1.steps),
           "breakdown_as_of": answers[1].0, "breakdown_as_of_counts": split_counts,
           "rfm": summary(rfm_lat), "rfm_customers": rfm_listed, "attribution": summary(attr_lat), "attribution_conversions": attr_conversions,
           "pipeline": summary(pipe_lat), "pipeline_deals": deals, "cohorts": summary(cohort_lat), "cohorts_listed": cohort_count,
           "duckdb": funnel_peer(&app, &names, as_of).await})
}

/// The funnel bench's peer: the tenant's events (person, name, time) and plan history written
/// as CSV, then DuckDB over them.
async fn funnel_peer(app: &App, names: &[&str; 4], as_of: DateTime<Utc>) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut events, mut plans) = (String::from("person,name,t\n"), String::from("person,plan,t\n"));
    let mut after = 0;
    loop {
        let page = app.events("demo", after, 10_000).await.expect("events");
        if page.events.is_empty() {
            break;
        }
        after = page.next;
        for e in &page.events {
            let Some(person) = chronicle_core::customer::id_of_stream(&e.stream) else { continue };
            let t = e.event_time.timestamp_micros();
            let name = if e.event_type == "ActivityTracked" { e.data["event"].as_str().unwrap_or_default() } else { e.event_type.as_str() };
            events.push_str(&format!("{person},\"{}\",{t}\n", name.replace('"', "\"\"")));
            let plan = match e.event_type.as_str() {
                "CustomerRegistered" => e.data["traits"].get("plan"),
                "CustomerProfileUpdated" => e.data["changes"].get("traits.plan").map(|c| &c["new"]),
                _ => None,
            };
            if let Some(p) = plan.and_then(Value::as_str) {
                plans.push_str(&format!("{person},{p},{t}\n"));
            }
        }
    }
    let (ev_file, plan_file) = (dir.path().join("events.csv"), dir.path().join("plans.csv"));
    std::fs::write(&ev_file, events).expect("events.csv");
    std::fs::write(&plan_file, plans).expect("plans.csv");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/funnel_duckdb.py");
    let python = std::env::var("CHRONICLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&ev_file)
        .arg(&plan_file)
        .arg(as_of.timestamp_micros().to_string())
        .args(names)
        .output()
        .expect("python");
    if !out.status.success() {
        return json!({"error": String::from_utf8_lossy(&out.stderr)});
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// Segment ingest over HTTP on loopback: `clients` threads, each with one keep-alive
/// connection, POST `/v1/batch` requests of 100 `track` messages (unique messageIds, 1,000
/// users) for `seconds`; every answer is durable.
async fn ingest(clients: usize, seconds: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), "log");
    let app = App::start(store.clone(), None).await.expect("app");
    let (_, write_key) = app.create_tenant("bench").await.expect("tenant");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(chronicle_server::serve(api(&app), listener, std::future::pending()));
    let started = Instant::now();
    let deadline = started + std::time::Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let write_key = write_key.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let auth = format!("Basic {}", base64_user(&write_key));
                let mut lat = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let batch: Vec<Value> = (0..100)
                        .map(|i| {
                            let k = n * 100 + i;
                            json!({"type": "track", "userId": format!("u{}", (k * 7 + c as u64) % 1000), "event": "Product Viewed",
                                   "properties": {"product_id": format!("sku-{}", k % 500), "price": 349}, "messageId": format!("c{c}-{k}"),
                                   "timestamp": "2026-11-01T10:00:00Z", "context": {"library": {"name": "bench"}}})
                        })
                        .collect();
                    let body = json!({"batch": batch, "sentAt": "2026-11-01T10:00:00Z"}).to_string();
                    let t = Instant::now();
                    let mut r = agent.post(format!("http://{addr}/v1/batch")).header("authorization", &auth).header("content-type", "application/json").send(&body).expect("request");
                    let _ = r.body_mut().read_to_string();
                    assert_eq!(r.status().as_u16(), 200);
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                    n += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(tokio::task::spawn_blocking(move || t.join().expect("client")).await.expect("join"));
    }
    let secs = started.elapsed().as_secs_f64();
    let events = lat.len() as u64 * 100;
    let stored = store.head().await.expect("head");
    server.abort();
    json!({"bench": "ingest_segment_batch", "clients": clients, "messages_per_request": 100, "events": events, "stored_head": stored, "seconds": round2(secs),
           "events_per_sec": (events as f64 / secs).round(), "request_latency": summary(lat)})
}

/// `user:` in base64, as an HTTP Basic credential with an empty password.
fn base64_user(user: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
}

/// One line of a Segment export: per 100 lines about 3 identifies (with the visitor's
/// anonymous id, so they link it), 10 anonymous page views, 1 "Order Completed" (which also
/// drives an order) and 86 tracks, over `users` users; every tenth line has no messageId (the
/// import derives one from the line).
fn export_line(k: u64, users: u64) -> String {
    const PLANS: [&str; 3] = ["free", "pro", "team"];
    const EVENTS: [&str; 4] = ["Product Viewed", "Product Added", "Cart Viewed", "Checkout Started"];
    let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let u = h % users;
    let ts = format!("2026-10-{:02}T{:02}:{:02}:00Z", 1 + (k * 29 / 1_000_000) % 28, (h >> 8) % 24, (h >> 16) % 60);
    let context = json!({"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "192.0.2.10", "userAgent": "Mozilla/5.0"});
    let mut m = match k % 100 {
        0..=2 => json!({"type": "identify", "userId": format!("u{u}"), "anonymousId": format!("anon-{u}"),
                        "traits": {"email": format!("u{u}@example.com"), "first_name": format!("Name{u}"), "plan": PLANS[(k % 3) as usize]}}),
        3..=12 => {
            json!({"type": "page", "anonymousId": format!("anon-{u}"), "name": "Pricing", "properties": {"path": "/pricing", "referrer": "https://search.example/"}})
        }
        13 => json!({"type": "track", "userId": format!("u{u}"), "event": "Order Completed",
                     "properties": {"order_id": format!("o-{k}"), "total": 49.5, "currency": "EUR", "products": [{"product_id": format!("sku-{}", h % 500), "price": 49.5, "quantity": 1}]}}),
        _ => {
            json!({"type": "track", "userId": format!("u{u}"), "event": EVENTS[(h % 4) as usize],
                    "properties": {"product_id": format!("sku-{}", h % 500), "price": 349, "category": "shoes"}})
        }
    };
    m["timestamp"] = json!(ts);
    m["receivedAt"] = json!(ts);
    m["context"] = context;
    if k % 10 != 7 {
        m["messageId"] = json!(format!("msg-{k}"));
    }
    m.to_string()
}

struct Quiet;
impl chronicle_app::import::Observer for Quiet {
    fn progress(&mut self, _: u64) {}
    fn rejected(&mut self, r: chronicle_app::import::Rejected) {
        panic!("the generated file has a bad line: {r:?}");
    }
}

fn write_export(lines: u64, path: &std::path::Path) {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("file"));
    for k in 0..lines {
        writeln!(w, "{}", export_line(k, (lines / 100).max(1))).expect("write");
    }
    // On disk before the timing starts, so its write-back does not compete with the import's fsyncs.
    w.into_inner().expect("flush").sync_all().expect("sync");
}

/// `chronicle import` of an NDJSON Segment export of `lines` lines, then the same file again.
async fn import(lines: u64) -> Value {
    use chronicle_app::import::{self, Format};
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("export.ndjson");
    write_export(lines, &file);
    let bytes = std::fs::metadata(&file).expect("size").len();
    let data = dir.path().join("data");
    let store = open(&data, "log");
    let app = App::start(store.clone(), None).await.expect("app");
    app.create_tenant("bench").await.expect("tenant");
    let run = || async {
        let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file).expect("open"));
        let t = Instant::now();
        let report =
            import::import(&app, "bench", Format::Ndjson, input, "export.ndjson", &mut Quiet).await.expect("import");
        (report, t.elapsed().as_secs_f64())
    };
    let (first, secs) = run().await;
    let (again, again_secs) = run().await;
    json!({"bench": "import_ndjson", "lines": first.lines, "file_mb": round2(bytes as f64 / 1e6), "new_events": first.new_events,
           "seconds": round2(secs), "lines_per_sec": (first.lines as f64 / secs).round(), "new_events_per_sec": (first.new_events as f64 / secs).round(),
           "rerun_new_events": again.new_events, "rerun_seconds": round2(again_secs), "rerun_lines_per_sec": (again.lines as f64 / again_secs).round()})
}

/// The HTTP API over `app`, its automation engine made but not running (as before the engine
/// moved off the app: these benchmarks measure ingest and reads, not campaigns).
fn api(app: &Arc<App>) -> chronicle_server::http::Api {
    use chronicle_app::automation::{lease::Gate, Engine, EngineConfig};
    let engine = Engine::new(app.clone(), EngineConfig::default(), Gate::always()).expect("engine");
    chronicle_server::http::Api { app: app.clone(), engine }
}

/// The contact list over `n` customers folded into the views (one `CustomerRegistered` each,
/// with a first and last name drawn from 1,000 × 1,000 made-up names, a tag on every 100th):
/// the latency of a search by a 3-letter first-name prefix, of a tag filter, and of the first
/// and a later page of the whole list, each 1,000 times.
fn contacts(n: u64) -> Value {
    use chronicle_core::envelope::EventEnvelope;
    use chronicle_projections::contacts::{ContactQuery, SortBy};
    const A: [&str; 20] = ["ka", "lo", "mi", "ne", "ra", "si", "to", "vu", "be", "da", "fe", "gi", "ho", "ju", "pa", "qi", "sa", "te", "wo", "ze"];
    let name = |i: u64| format!("{}{}{}", A[(i % 20) as usize], A[(i / 20 % 20) as usize], A[(i / 400 % 20) as usize]);
    let start = Utc::now();
    let mut views = chronicle_projections::Projections::new();
    let started = Instant::now();
    let mut position = 0;
    for i in 0..n {
        let id = format!("c{i:07}");
        position += 1;
        let mut traits = Map::new();
        traits.insert("first_name".into(), json!(name(i % 1000)));
        traits.insert("last_name".into(), json!(name(i / 1000 % 1000)));
        let mut data = json!({"email": format!("{id}@example.com"), "traits": traits});
        if i % 100 == 0 {
            data["traits"]["vip"] = json!(true);
        }
        let ev = EventEnvelope {
            id: uuid::Uuid::now_v7(),
            tenant: "bench".into(),
            stream: customer::stream_of(&id),
            version: 1,
            position,
            event_type: "CustomerRegistered".into(),
            schema_version: 2,
            event_time: start,
            ingest_time: start,
            source: "bench".into(),
            causation_id: None,
            correlation_id: None,
            actor: None,
            data,
            metadata: json!({}),
        };
        views.apply(&ev);
        if i % 100 == 0 {
            position += 1;
            let tag = EventEnvelope { version: 2, position, event_type: "CustomerTagged".into(), data: json!({"tag": "vip"}), ..ev };
            views.apply(&tag);
        }
    }
    let fold_secs = started.elapsed().as_secs_f64();
    let index = &views.tenant("bench").expect("tenant").contacts;
    assert_eq!(index.len() as u64, n, "every customer is listed");
    let time = |q: &ContactQuery| {
        let t = Instant::now();
        let page = index.query(q).expect("query");
        (t.elapsed().as_secs_f64() * 1e6, page)
    };
    let (mut search, mut tag, mut first, mut later, mut found) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0usize);
    let mut cursor = None;
    for i in 0..1000u64 {
        let prefix = name(i * 7919 % 1000)[..3].to_owned();
        let (us, page) = time(&ContactQuery { q: Some(prefix), sort: SortBy::Name, limit: 100, ..Default::default() });
        found += page.ids.len();
        search.push(us);
        tag.push(time(&ContactQuery { tag: Some("vip".into()), limit: 100, ..Default::default() }).0);
        first.push(time(&ContactQuery { sort: SortBy::Name, limit: 100, ..Default::default() }).0);
        let (us, page) = time(&ContactQuery { sort: SortBy::Created, limit: 100, after: cursor.clone(), ..Default::default() });
        cursor = page.next;
        later.push(us);
    }
    json!({"bench": "contacts", "customers": n, "fold_seconds": round2(fold_secs), "search_results_per_query": found / 1000,
           "search_first_name_prefix": summary(search), "filter_tag": summary(tag), "first_page_by_name": summary(first), "next_pages_by_created": summary(later)})
}
