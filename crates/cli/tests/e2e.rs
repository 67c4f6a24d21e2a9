//! End-to-end tests of the real `chronicle` binary: a crash (`kill -9`) under concurrent load
//! loses no acknowledged event and duplicates none, and `verify` passes after it; the demo
//! starts and serves its tenant.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn kill_9_under_load_loses_no_acknowledged_event_and_verify_passes() {
    kill_9_under_load(&[]);
}

/// The same on the PostgreSQL backend (a schema of its own, dropped after).
#[test]
fn kill_9_under_load_on_postgres_loses_no_acknowledged_event_and_verify_passes() {
    let Some(db) = PgSchema::new() else { return };
    kill_9_under_load(&db.args());
}

fn kill_9_under_load(db: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let with_db = |args: &[&str]| -> Vec<String> { args.iter().map(|a| a.to_string()).chain(db.iter().cloned()).collect() };
    let chronicle = |data: &std::path::Path, args: &[&str]| {
        let args = with_db(args);
        chronicle(data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let start = |data: &std::path::Path, args: &[&str]| {
        let args = with_db(args);
        start(data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();

    let (mut server, url, _) = start(&data, &["serve"]);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8u32 {
        let (url, key, acked, stop) = (url.clone(), key.clone(), acked.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let agent = agent();
            for seq in 0u32.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Known ids: client and sequence number in the UUID.
                let id = uuid::Uuid::from_u128(((c as u128 + 1) << 64) | seq as u128).to_string();
                let body = json!({"expected_version": "any", "events": [{"id": id, "type": "LoadTested", "data": {"client": c, "seq": seq, "pad": "x".repeat(200)}}]});
                let res = if seq % 10 == 0 {
                    // Some commands too, so the projections have something to verify.
                    let cust = json!({"id": format!("k{c}-{seq}"), "email": format!("k{c}-{seq}@example.com"),
                        "consents": [{"channel": "email", "purpose": "marketing", "granted": true, "source": "load"}]});
                    agent.post(format!("{url}/v1/customers")).header("authorization", format!("Bearer {key}")).send_json(&cust).map(|r| (r.status().as_u16(), None))
                } else {
                    agent.post(format!("{url}/v1/streams/load-{c}")).header("authorization", format!("Bearer {key}")).send_json(&body).map(|r| (r.status().as_u16(), Some(id)))
                };
                match res {
                    Ok((200, Some(id))) => acked.lock().unwrap().push(id),
                    Ok((201, None)) => {}
                    Ok((status, _)) => panic!("unexpected status {status}"),
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    // Let load build up, then pull the plug mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 1500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1500, "load too small to mean anything: {}", acked.len());

    // verify on the crashed folder: stale checkpoint + log tail must equal a fresh replay.
    let out = chronicle(&data, &["verify"]);
    assert!(out.status.success(), "verify after crash: {}", String::from_utf8_lossy(&out.stdout));

    let (mut server, url, _) = start(&data, &["serve"]);
    let agent = agent();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut after = 0;
    loop {
        let (status, page) = get(&agent, &format!("{url}/v1/events?after={after}&limit=1000"), &key);
        assert_eq!(status, 200);
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        for e in events {
            *seen.entry(e["id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        after = page["next"].as_u64().unwrap();
    }
    for id in &acked {
        assert_eq!(seen.get(id), Some(&1), "acknowledged event {id} must be stored exactly once");
    }
    assert!(seen.values().all(|n| *n == 1), "no event is stored twice");
    // The restarted server keeps taking writes where the log left off.
    let r = agent
        .post(format!("{url}/v1/streams/after-crash"))
        .header("authorization", format!("Bearer {key}"))
        .send_json(json!({"expected_version": "no_stream", "events": [{"type": "Back", "data": {}}]}))
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    sigterm(&mut server);
    let out = chronicle(&data, &["verify"]);
    assert!(out.status.success(), "verify after restart: {}", String::from_utf8_lossy(&out.stdout));
    let summary: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').find(|l| l.starts_with(b"{")).unwrap()).unwrap();
    assert_eq!(summary["ok"], true);
}

#[test]
fn verify_detects_a_tampered_projection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Unsealed, so the test can forge the checkpoint in the clear.
    assert!(chronicle(&data, &["--seal=false", "tenant", "create", "acme"]).status.success());
    assert!(chronicle(&data, &["verify"]).status.success());
    // Forge the checkpoint: the live view now disagrees with the log.
    let path = data.join("projections.json");
    {
        let mut p = chronicle_projections::load_checkpoint(&path).unwrap();
        p.tenants.get_mut("acme").unwrap().events = 999;
        chronicle_projections::save_checkpoint(&path, &p).unwrap();
    }
    let out = chronicle(&data, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DIFF acme: event count"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // rebuild repairs it.
    let out = chronicle(&data, &["rebuild"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("events_per_sec"));
    assert!(chronicle(&data, &["verify"]).status.success());
}

#[test]
fn one_process_per_data_folder_and_duplicate_tenants_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(chronicle(&data, &["tenant", "create", "acme"]).status.success());
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let (mut server, _, _) = start(&data, &["serve"]);
    let out = chronicle(&data, &["verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    sigterm(&mut server);
}

#[test]
fn demo_serves_its_tenant_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let (mut server, url, banner) = start_until(&data, &["demo", "--customers", "300"], "Ctrl-C");
    let key = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("API key:"))
        .expect("the banner shows the API key")
        .trim()
        .to_owned();
    assert!(banner.iter().any(|l| l.contains("as_of=")), "the banner shows an as_of example: {banner:?}");
    // The web UI comes first, with a person to sign in as.
    let ui = banner.iter().find(|l| l.contains("Web UI:")).expect("the banner shows the web UI");
    let first = banner.iter().position(|l| l.contains("http://")).unwrap();
    assert!(banner[first].contains("Web UI:"), "the UI's URL is the first shown: {banner:?}");
    let password = ui.split("password ").nth(1).and_then(|r| r.split(';').next()).expect("the banner shows the password").trim();
    let no_redirects: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let res = no_redirects
        .post(&format!("{url}/ui/sign-in"))
        .send_form([("tenant", "demo"), ("email", "admin@demo.example"), ("password", password)])
        .unwrap();
    assert_eq!(res.status().as_u16(), 303, "the demo's person signs in");
    let cookie = res.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap().split(';').next().unwrap().to_owned();
    let mut page = no_redirects.get(&format!("{url}/ui/customers/c00042")).header("cookie", &cookie).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.body_mut().read_to_string().unwrap().contains("c00042"));
    let agent = agent();
    let (status, now) = get(&agent, &format!("{url}/v1/customers/c00042"), &key);
    assert_eq!(status, 200);
    let week_ago = (chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, then) = get(&agent, &format!("{url}/v1/customers/c00042?as_of={week_ago}"), &key);
    assert_eq!(status, 200);
    assert_ne!(now["traits"]["plan"], then["traits"]["plan"], "the showcase customer's plan changed three days ago");
    let (_, tl) = get(&agent, &format!("{url}/v1/customers/c00042/timeline?limit=5"), &key);
    assert_eq!(tl["events"].as_array().unwrap().len(), 5);
    let (status, check) =
        get(&agent, &format!("{url}/v1/consent-check?customer=c00042&channel=email&purpose=transactional"), &key);
    assert_eq!((status, &check["allowed"]), (200, &json!(true)));
    sigterm(&mut server);
    assert!(chronicle(&data, &["verify"]).status.success());
}

#[test]
fn official_segment_clients_land_on_the_right_customers_and_retries_store_nothing() {
    let Some(clients) = segment_clients() else { return };
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, write_key) =
        (created["api_key"].as_str().unwrap().to_owned(), created["write_key"].as_str().unwrap().to_owned());
    let (mut server, url, _) = start(&data, &["serve"]);
    let agent = agent();
    let count = |agent: &ureq::Agent| {
        let (_, page) = get(agent, &format!("{url}/v1/events?limit=1000"), &key);
        page["events"].as_array().unwrap().len()
    };
    let python = clients.join("venv/bin/python");
    let node_path = clients.join("node/node_modules");
    let run = |prefix: &str| {
        let mut cmd = match prefix {
            "py" => {
                let mut c = Command::new(&python);
                c.arg(scripts.join("segment_client.py"));
                c
            }
            _ => {
                let mut c = Command::new("node");
                c.arg(scripts.join("segment_client.js")).env("NODE_PATH", &node_path);
                c
            }
        };
        let out = cmd.args([url.as_str(), write_key.as_str(), prefix]).output().expect("run the Segment client");
        assert!(
            out.status.success(),
            "{prefix} client failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for prefix in ["py", "node"] {
        run(prefix);
        let (status, profile) = get(&agent, &format!("{url}/v1/customers/{prefix}-user"), &key);
        assert_eq!(
            profile["anonymous_ids"],
            json!([format!("{prefix}-anon"), format!("{prefix}-anon2")]),
            "{prefix}: identities linked"
        );
        assert_eq!(status, 200, "{prefix}: identify registered the customer");
        assert_eq!(
            (&profile["email"], &profile["traits"]["first_name"]),
            (&json!(format!("{prefix}@example.com")), &json!("Ada"))
        );
        let (_, tl) = get(&agent, &format!("{url}/v1/customers/{prefix}-user/timeline?type=ActivityTracked"), &key);
        let names: Vec<&str> = tl["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"]["event"].as_str().or(e["data"]["kind"].as_str()).unwrap())
            .collect();
        // Pages sent anonymously before identify (linked by identify) and before alias are on
        // the customer's timeline, in the order they happened, with the identify and group
        // calls themselves.
        let expected = ["Pricing", "Features", "identify", "group", "Product Added", "Checkout"];
        assert_eq!(names, expected, "{prefix}: timeline");
        // The same messages again (a client retry): nothing new is stored.
        let before = count(&agent);
        run(prefix);
        assert_eq!(count(&agent), before, "{prefix}: resending the same messageIds stores nothing");
    }
    sigterm(&mut server);
    assert!(chronicle(&data, &["verify"]).status.success());
}

/// The `{...}` summary line `chronicle import` prints on stdout.
fn import_summary(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| panic!("no summary in {stdout:?}"))
}

#[test]
fn import_reports_rejected_lines_and_a_rerun_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(chronicle(&data, &["tenant", "create", "acme"]).status.success());
    let ndjson = dir.path().join("export.ndjson");
    std::fs::write(
        &ndjson,
        [
            r#"{"type":"page","anonymousId":"a1","name":"Pricing","timestamp":"2026-10-01T10:00:00Z"}"#,
            r#"{"type":"identify","userId":"u1","anonymousId":"a1","traits":{"email":"u1@example.com","plan":"free"},"messageId":"m1"}"#,
            "",
            r#"{"type":"track","event":"No ids"}"#,
            r#"{"type":"track","userId":"u1","event":"Order Completed","properties":{"order_id":"o1","total":12.5}}"#,
            r#"{"type":"track","userId":"u2","event":"Cut off""#,
            r#"{"type":"identify","userId":"u1","traits":{"plan":"pro"},"messageId":"m2"}"#,
            r#"{"type":"identify","userId":"u3","traits":{"email":"u1@example.com"}}"#,
            r#"{"specversion":"1.0","id":"e1","source":"/crm","type":"com.example.call","subject":"u1","time":"2026-10-02T09:00:00Z"}"#,
            r#"{"specversion":"1.0","id":"e2","source":"/crm","type":"CustomerErased","subject":"u1"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let rejects = dir.path().join("rejects.ndjson");
    let args = ["import", ndjson.to_str().unwrap(), "--tenant", "acme", "--rejects", rejects.to_str().unwrap()];
    let out = chronicle(&data, &args);
    assert_eq!(out.status.code(), Some(1), "some lines were rejected");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["line 4: no_user_anon_id", "line 6: invalid_json", "line 8: email_taken", "line 10: bad_request"] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    let summary = import_summary(&out);
    assert_eq!(
        (summary["lines"].as_u64(), summary["imported"].as_u64(), summary["rejected"].as_u64()),
        (Some(9), Some(5), Some(4))
    );
    let first_events = summary["new_events"].as_u64().unwrap();
    assert!(first_events >= 5, "{summary}");
    let rejected: Vec<Value> =
        std::fs::read_to_string(&rejects).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rejected.iter().map(|r| r["line"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 6, 8, 10]);

    // The same file again: the same lines rejected, nothing new stored (the older identify in
    // it does not undo the newer one).
    let again = import_summary(&chronicle(&data, &args));
    assert_eq!((again["new_events"].as_u64(), again["rejected"].as_u64()), (Some(0), Some(4)));

    // A CSV of contacts: one bad row, one update of a known customer, one new customer.
    let csv = dir.path().join("contacts.csv");
    std::fs::write(
        &csv,
        "id,email,first_name,consent:email:marketing,consent_source\n\
         u1,,Ada,granted,fair-2026\n\
         c2,not-an-email,Bo,,\n\
         c3,c3@example.com,\"Cy, Jr.\",revoked,\n",
    )
    .unwrap();
    let csv_args = ["import", csv.to_str().unwrap(), "--tenant", "acme"];
    let out = chronicle(&data, &csv_args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3: bad_request: invalid e-mail address"));
    assert_eq!(import_summary(&out)["imported"], 2);
    assert_eq!(import_summary(&chronicle(&data, &csv_args))["new_events"], 0, "a rerun adds nothing");

    // An import goes through the data folder's lock like every other command.
    let (mut server, _, _) = start(&data, &["serve"]);
    let out = chronicle(&data, &csv_args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    sigterm(&mut server);

    let history = chronicle(&data, &["history", "u1", "--tenant", "acme"]);
    let events: Vec<Value> =
        String::from_utf8_lossy(&history.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"IdentityLinked") && types.contains(&"com.example.call") && types.contains(&"ConsentGranted")
    );
    let plan_changes: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "CustomerProfileUpdated")
        .filter_map(|e| e["data"]["changes"].get("traits.plan"))
        .collect();
    assert_eq!(plan_changes.len(), 1, "free → pro once, never back: {plan_changes:?}");
    let imported = events.iter().filter(|e| e["type"] == "ContactImported").count();
    assert_eq!(imported, 1);
    assert!(chronicle(&data, &["verify"]).status.success());
}

/// Issue 19, item 5: SIGTERM while three live event streams are open — the streams end, the
/// final checkpoint is written and the process exits 0 within 10 s, whatever the clients do
/// (before, the server waited on them for 20 s).
#[test]
fn sigterm_with_live_streams_open_stops_within_ten_seconds_with_the_checkpoint_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();
    let (mut server, url, _) = start(&data, &["serve"]);
    let (events, ended) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
    for _ in 0..3 {
        let (url, key, connected, ended) = (url.clone(), key.clone(), events.0.clone(), ended.0.clone());
        std::thread::spawn(move || {
            // A client that never hangs up on its own (no time limit).
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut r = agent.get(format!("{url}/v1/events/stream?after=0")).header("authorization", format!("Bearer {key}")).call().unwrap();
            connected.send(r.status().as_u16()).unwrap();
            let _ = std::io::copy(&mut r.body_mut().as_reader(), &mut std::io::sink());
            ended.send(()).unwrap();
        });
    }
    for _ in 0..3 {
        assert_eq!(events.1.recv_timeout(Duration::from_secs(10)).unwrap(), 200, "the stream is open");
    }
    // Something new for the checkpoint to hold.
    let (status, _) = send(&agent(), "POST", &format!("{url}/v1/streams/notes-1"), &key,
        &json!({"expected_version": "no_stream", "events": [{"type": "NoteTaken", "data": {}}]}));
    assert_eq!(status, 200);
    let checkpoint = data.join("projections.json");
    let before = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    let asked = Instant::now();
    assert!(Command::new("kill").arg("-TERM").arg(server.id().to_string()).status().unwrap().success());
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(asked.elapsed() < Duration::from_secs(10), "still running {:?} after SIGTERM", asked.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit 0, got {status}");
    // The streams were ended by the server, not waited out to the drain limit (8 s).
    assert!(asked.elapsed() < Duration::from_secs(5), "stopped {:?} after SIGTERM", asked.elapsed());
    for _ in 0..3 {
        ended.1.recv_timeout(Duration::from_secs(2)).expect("every live stream ended");
    }
    let after = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    assert!(after > before, "the final checkpoint was written");
}

/// Issue 19, item 3: `chronicle customers list` pages through the contact list with the API's
/// filters: every customer once across pages, a search, and a clear refusal of a bad order.
#[test]
fn customers_list_pages_every_customer_once_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = chronicle(&data, &["demo", "--no-serve", "--customers", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = |out: &std::process::Output| -> Vec<Value> {
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let all = chronicle(&data, &["customers", "list", "--limit", "10000"]);
    assert!(all.status.success(), "{}", String::from_utf8_lossy(&all.stderr));
    let everyone = lines(&all);
    assert!(everyone.len() >= 60, "{} customers listed", everyone.len());
    let (mut seen, mut after) = (std::collections::HashSet::new(), None::<String>);
    loop {
        let mut args = vec!["customers", "list", "--limit", "7", "--sort", "name"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = chronicle(&data, &args);
        assert!(page.status.success(), "{}", String::from_utf8_lossy(&page.stderr));
        for c in lines(&page) {
            assert!(seen.insert(c["id"].as_str().unwrap().to_owned()), "{} twice", c["id"]);
        }
        let err = String::from_utf8_lossy(&page.stderr).into_owned();
        match err.lines().find_map(|l| l.strip_prefix("more: --after ")) {
            Some(next) => after = Some(next.trim().to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), everyone.len(), "every customer once across pages");
    // A search by the first name of someone listed finds them.
    let someone = everyone.iter().find(|c| c["traits"]["first_name"].is_string()).expect("a named customer");
    let first = someone["traits"]["first_name"].as_str().unwrap();
    let found = lines(&chronicle(&data, &["customers", "list", "--q", &first[..3.min(first.len())], "--limit", "10000"]));
    assert!(found.iter().any(|c| c["id"] == someone["id"]), "searching {first:?}");
    let bad = chronicle(&data, &["customers", "list", "--sort", "age"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sort is created, name or activity"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// Issue 19, item 11: `chronicle tenant list` shows the tenants; `import` names its tenant — a
/// missing or unknown one is refused with the tenants that exist, and nothing is imported.
#[test]
fn tenant_list_and_import_into_a_named_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for t in ["acme", "globex"] {
        assert!(chronicle(&data, &["tenant", "create", t]).status.success());
    }
    let list = chronicle(&data, &["tenant", "list"]);
    assert!(list.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["tenant"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["acme", "globex"]);
    let file = dir.path().join("one.ndjson");
    std::fs::write(&file, r#"{"type":"identify","userId":"u1","traits":{"plan":"pro"},"messageId":"m1"}"#).unwrap();
    for args in [vec!["import", file.to_str().unwrap()], vec!["import", file.to_str().unwrap(), "--tenant", "acne"]] {
        let out = chronicle(&data, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the tenants here: acme, globex"), "{args:?}: {err}");
    }
    let customers_of = |tenant: &str| -> u64 {
        let list = chronicle(&data, &["tenant", "list"]);
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|t| t["tenant"] == tenant)
            .and_then(|t| t["customers"].as_u64())
            .unwrap()
    };
    assert_eq!(customers_of("acme"), 0, "nothing imported");
    let out = chronicle(&data, &["import", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(customers_of("acme"), 1);
}

/// Issue 19, item 9: every setting of `serve` may come from the config file, under the
/// environment and the command line; `chronicle config` shows the effective settings with the
/// secrets hidden; an unknown setting in the file is refused.
#[test]
fn every_serve_setting_layers_file_under_environment_under_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chronicle.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9123\"\nrate_limit = 77\nmail_from = \"file@example.com\"\nsmtp_url = \"smtp://mailer:hunter2@127.0.0.1:2525\"\n\
         webhook_secret = \"s3cret\"\nallow_private_webhooks = true\nmax_attempts = 9\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data").arg(&data).arg("--config").arg(&file).args(args).env("CHRONICLE_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[("CHRONICLE_MAIL_FROM", "env@example.com")], &["config", "--max-attempts", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["listen"], "127.0.0.1:9123", "from the file");
    assert_eq!(c["rate_limit"], 77, "from the file");
    assert_eq!(c["allow_private_webhooks"], true, "from the file");
    assert_eq!(c["mail_from"], "env@example.com", "the environment beats the file");
    assert_eq!(c["max_attempts"], 3, "a flag beats the file");
    assert_eq!(c["webhook_secret"], "***", "secrets are hidden");
    assert_eq!(c["smtp_url"], "smtp://mailer:***@127.0.0.1:2525", "a URL's password is hidden");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2") && !String::from_utf8_lossy(&out.stdout).contains("s3cret"));
    assert_eq!(c["ingest_rate_limit"], 10_000, "a default where nothing sets it");
    std::fs::write(&file, "listen = \"127.0.0.1:9123\"\ncolour = \"blue\"\n").unwrap();
    let out = run(&[], &["config"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting \"colour\""), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 19, item 11: only `tenant create`, `serve` and `demo` make a data folder; any other
/// command pointed at one that does not exist refuses (a mistyped `--data` is not a new, empty
/// store) and creates nothing.
#[test]
fn only_the_commands_that_start_a_store_make_a_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    for args in [vec!["verify"], vec!["rebuild"], vec!["tenant", "list"], vec!["customers", "list"], vec!["history", "c1"]] {
        let out = chronicle(&missing, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!missing.exists(), "{args:?} made the folder");
    }
    assert!(chronicle(&missing, &["tenant", "create", "acme"]).status.success());
    assert!(chronicle(&missing, &["verify"]).status.success());
}

/// Issue 19, item 11: `chronicle api-key create --tenant T --role R` makes a key offline (for a
/// lost admin key); the key works with its role's rights and no more; an unknown tenant or role
/// is refused and makes nothing.
#[test]
fn an_api_key_made_offline_works_with_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(chronicle(&data, &["tenant", "create", "acme"]).status.success());
    for (args, says) in [
        (["api-key", "create", "--tenant", "acne", "--role", "admin"], "the tenants here: acme"),
        (["api-key", "create", "--tenant", "acme", "--role", "owner"], "admin, writer, reader, ingest"),
    ] {
        let out = chronicle(&data, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let made = |role: &str| -> String {
        let out = chronicle(&data, &["api-key", "create", "--tenant", "acme", "--role", role, "--name", "rescue"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((v["tenant"].as_str(), v["role"].as_str(), v["name"].as_str()), (Some("acme"), Some(role), Some("rescue")));
        v["api_key"].as_str().unwrap().to_owned()
    };
    let (admin, reader) = (made("admin"), made("reader"));
    let (_server, url, _) = start(&data, &["serve"]);
    let agent = agent();
    let (status, keys) = get(&agent, &format!("{url}/v1/api-keys"), &admin);
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2), "the two made are listed (the tenant's first key is not a listed one): {keys}");
    assert_eq!(get(&agent, &format!("{url}/v1/customers"), &reader).0, 200);
    let (status, _) = send(&agent, "POST", &format!("{url}/v1/customers"), &reader, &json!({"id": "c1"}));
    assert_eq!(status, 403, "a reader cannot write");
}
