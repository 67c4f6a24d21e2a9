//! The HTTP API, end to end in-process: a real server on 127.0.0.1:0 over the default embedded
//! store (the append-only log) in a temporary folder, driven by a real HTTP client.

use chronicle_app::App;
use chronicle_server::application::Application;
use serde_json::{json, Value};
use std::sync::Arc;

struct TestApp {
    base: String,
    key: String,
    other_key: String,
    write_key: String,
    agent: ureq::Agent,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: u16,
    body: Value,
}

/// Start the API on its own runtime thread, with tenants `acme` and `rival`.
fn spawn_app() -> TestApp {
    spawn_app_with(0)
}

/// [`spawn_app`] with a per-key rate limit (requests per second; 0: none).
fn spawn_app_with(rate_limit: u64) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let application = build(&path, rate_limit).await;
            let app = application.app();
            let (key, write_key) = app.create_tenant("acme").await.unwrap();
            let (other_key, _) = app.create_tenant("rival").await.unwrap();
            tx.send((application.address(), key, other_key, write_key)).unwrap();
            application.run_until_stopped(std::future::pending()).await.unwrap();
        });
    });
    let (addr, key, other_key, write_key) = rx.recv().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    TestApp { base: format!("http://{addr}"), key, other_key, write_key, agent, _dir: dir }
}

/// The running system as `chronicle serve` builds it (storage in `data`, sealed as a new
/// folder is; listener limits, checkpointing, the automation engine), on a free port.
async fn build(data: &std::path::Path, rate_limit: u64) -> Application {
    let storage = chronicle_app::storage::StorageConfig::embedded(data, true);
    let mut config = chronicle_server::application::Config::new(storage, "127.0.0.1:0".parse().unwrap());
    config.limits.per_key = rate_limit;
    Application::build(config).await.unwrap()
}

impl TestApp {
    fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Resp {
        let url = format!("{}{}", self.base, path);
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut res = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), &auth).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), &auth).call(),
            (m, b) => {
                let req = match m {
                    "POST" => self.agent.post(&url),
                    "PATCH" => self.agent.patch(&url),
                    "PUT" => self.agent.put(&url),
                    _ => unreachable!(),
                };
                with_auth(req, &auth).header("content-type", "application/json").send(b.unwrap_or(""))
            }
        }
        .unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, body }
    }
    fn get(&self, path: &str) -> Resp {
        self.call("GET", path, Some(&self.key), None)
    }
    fn post(&self, path: &str, body: Value) -> Resp {
        self.call("POST", path, Some(&self.key), Some(&body.to_string()))
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("authorization", a),
        None => req,
    }
}

fn register(app: &TestApp, id: &str, email: &str) -> Resp {
    app.post(
        "/v1/customers",
        json!({"id": id, "email": email, "traits": {"first_name": "Ada", "plan": "free"},
               "consents": [{"channel": "email", "purpose": "marketing", "granted": true, "source": "signup-form", "proof": {"ip": "192.0.2.1"}}]}),
    )
}

#[test]
fn register_get_patch_and_profile_shape() {
    let app = spawn_app();
    let r = register(&app, "c1", "Ada@Example.com");
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["email"], "ada@example.com");
    assert_eq!(r.body["version"], 2, "registration and its consent are one append of two events");
    let r = app.call("PATCH", "/v1/customers/c1", Some(&app.key), Some(r#"{"traits":{"plan":"pro"}}"#));
    assert_eq!((r.status, &r.body["traits"]["plan"]), (200, &json!("pro")));
    let r = app.get("/v1/customers/c1");
    for field in ["id", "email", "phone", "traits", "lifecycle_stage", "tags", "owner", "status", "consents", "version"]
    {
        assert!(r.body.get(field).is_some(), "profile lacks {field}: {}", r.body);
    }
    assert_eq!(r.body["status"], "active");
    // Same e-mail for another customer: refused, nothing written.
    let r = register(&app, "c2", "ada@example.com");
    assert_eq!((r.status, &r.body["error"]["code"]), (409, &json!("email_taken")));
    assert_eq!(app.get("/v1/customers/c2").status, 404);
}

/// Issue 19, item 3: the contact list. Among 10,000 customers, a search by first name finds Ada
/// whose e-mail does not start with it; paging returns every customer exactly once, in order;
/// filters by tag and stage are exact; erased customers are not listed; a bad cursor is a 400.
#[test]
fn the_contact_list_searches_filters_and_pages_every_customer_once() {
    let app = spawn_app();
    let names = ["Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances"];
    for b in 0..100 {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                let n = b * 100 + i;
                json!({"type": "identify", "userId": format!("c{n:05}"), "messageId": format!("m{n}"),
                       "traits": {"email": format!("user{n}@example.com"), "first_name": names[n % names.len()], "last_name": format!("L{n}")}})
            })
            .collect();
        let r = segment(&app, "/v1/batch", &json!({"batch": batch}).to_string(), Some(&app.write_key));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = register(&app, "ada", "countess@example.com");
    assert_eq!(r.status, 201);
    assert_eq!(app.call("PATCH", "/v1/customers/ada", Some(&app.key), Some(r#"{"traits":{"first_name":"Ada","last_name":"Lovelace"}}"#)).status, 200);
    // Search: a prefix of the first name, any case; of the last name; of the e-mail.
    let found = app.get("/v1/customers?q=ADA").body;
    let ids: Vec<&str> = found["customers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ada"], "{found}");
    assert_eq!(app.get("/v1/customers?q=lovel").body["customers"][0]["id"], "ada");
    assert_eq!(app.get("/v1/customers?q=countess@").body["customers"][0]["id"], "ada");
    assert_eq!(app.get("/v1/customers?email=Countess@Example.com").body["customers"][0]["id"], "ada");
    // Paging: every customer once, in creation order, by name too.
    for sort in ["created", "name"] {
        let (mut seen, mut after) = (std::collections::HashSet::new(), None::<String>);
        let mut pages = 0;
        loop {
            let path = match &after {
                Some(a) => format!("/v1/customers?sort={sort}&limit=1000&after={a}"),
                None => format!("/v1/customers?sort={sort}&limit=1000"),
            };
            let page = app.get(&path).body;
            pages += 1;
            for c in page["customers"].as_array().unwrap() {
                assert!(seen.insert(c["id"].as_str().unwrap().to_owned()), "{sort}: {} twice", c["id"]);
            }
            match page["next"].as_str() {
                Some(n) => {
                    assert_eq!(page["has_more"], true);
                    after = Some(n.to_owned());
                }
                None => break,
            }
        }
        assert_eq!((seen.len(), pages), (10_001, 11), "{sort}");
    }
    let by_name = app.get("/v1/customers?sort=name&limit=3").body;
    let first: Vec<&str> = by_name["customers"].as_array().unwrap().iter().map(|c| c["traits"]["first_name"].as_str().unwrap()).collect();
    assert_eq!(first, ["Ada", "Alan", "Alan"]);
    // Filters: exact.
    for id in ["c00007", "c00070", "c00700"] {
        assert_eq!(app.post(&format!("/v1/customers/{id}/tags"), json!({"tag": "vip"})).status, 200);
    }
    assert_eq!(app.call("PUT", "/v1/customers/c00070/lifecycle-stage", Some(&app.key), Some(r#"{"stage":"mql"}"#)).status, 200);
    let vip = app.get("/v1/customers?tag=vip").body;
    let ids: Vec<&str> = vip["customers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c00007", "c00070", "c00700"]);
    let vip_mql = app.get("/v1/customers?tag=vip&stage=mql").body;
    assert_eq!(vip_mql["customers"].as_array().unwrap().len(), 1);
    assert_eq!(vip_mql["customers"][0]["id"], "c00070");
    assert_eq!(app.get("/v1/customers?tag=nobody").body["customers"], json!([]));
    // Erased: gone from the list (and from the search).
    assert_eq!(app.call("DELETE", "/v1/customers/ada", Some(&app.key), None).status, 200);
    assert_eq!(app.get("/v1/customers?q=ada").body["customers"], json!([]));
    // Bad input: a clear 400.
    for bad in ["/v1/customers?after=zz", "/v1/customers?sort=age", "/v1/customers?status=gone", "/v1/customers?colour=red"] {
        let r = app.get(bad);
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("bad_request")), "{bad}: {}", r.body);
    }
}

/// Issue 19, item 6: every refusal at the edge is the API's JSON error shape, with the status
/// of the one error table — an unknown route (404), a known route with another method (405), a
/// JSON route without a JSON content type (415), a body over the limit (413).
#[test]
fn the_edges_answer_in_the_error_shape() {
    let app = spawn_app();
    let raw = |method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>| -> Resp {
        let url = format!("{}{}", app.base, path);
        let auth = format!("Bearer {}", app.key);
        let mut res = match method {
            "GET" | "DELETE" => {
                let req = if method == "GET" { app.agent.get(&url) } else { app.agent.delete(&url) };
                req.header("authorization", &auth).call()
            }
            _ => {
                let mut req = if method == "PUT" { app.agent.put(&url) } else { app.agent.post(&url) };
                req = req.header("authorization", &auth);
                if let Some(ct) = content_type {
                    req = req.header("content-type", ct);
                }
                req.send(&body[..])
            }
        }
        .unwrap();
        Resp { status: res.status().as_u16(), body: res.body_mut().read_json().unwrap_or(Value::Null) }
    };
    let cases = [
        ("GET", "/v1/no-such-route", None, vec![], 404, "not_found"),
        ("PUT", "/healthz", Some("application/json"), b"{}".to_vec(), 405, "method_not_allowed"),
        ("DELETE", "/v1/pipeline", None, vec![], 405, "method_not_allowed"),
        ("POST", "/v1/customers", Some("text/plain"), br#"{"id":"c9"}"#.to_vec(), 415, "unsupported_media_type"),
        ("POST", "/v1/customers", None, br#"{"id":"c9"}"#.to_vec(), 415, "unsupported_media_type"),
        ("POST", "/v1/customers", Some("application/json"), vec![b' '; 2 * 1024 * 1024], 413, "too_large"),
    ];
    for (method, path, ct, body, status, code) in cases {
        let r = raw(method, path, ct, body);
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{method} {path}: {}", r.body);
        assert!(r.body["error"]["message"].is_string(), "{method} {path}: {}", r.body);
    }
    assert_eq!(app.get("/v1/customers/c9").status, 404, "nothing written");
}

#[test]
fn registration_with_a_bad_consent_writes_nothing() {
    let app = spawn_app();
    let r = app.post("/v1/customers", json!({"id": "c1", "email": "a@example.com", "consents": [{"channel": "email", "purpose": "marketing", "granted": true}]}));
    assert_eq!((r.status, &r.body["error"]["code"]), (422, &json!("consent_source_missing")));
    assert_eq!(app.get("/v1/customers/c1").status, 404);
    assert_eq!(app.get("/v1/events").body["events"].as_array().unwrap().len(), 0);
}

#[test]
fn as_of_returns_the_older_trait_value() {
    let app = spawn_app();
    register(&app, "c1", "a@example.com");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let between = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = app.call("PATCH", "/v1/customers/c1", Some(&app.key), Some(r#"{"traits":{"plan":"pro"}}"#));
    assert_eq!(r.status, 200);
    let at = between.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let old = app.get(&format!("/v1/customers/c1?as_of={at}"));
    assert_eq!((old.status, &old.body["traits"]["plan"]), (200, &json!("free")), "{}", old.body);
    assert_eq!(app.get("/v1/customers/c1").body["traits"]["plan"], "pro");
    // Before the customer existed: not found.
    let r = app.get("/v1/customers/c1?as_of=2001-01-01T00:00:00Z");
    assert_eq!(r.status, 404);
    // The timeline as of then holds only the registration.
    let t = app.get(&format!("/v1/customers/c1/timeline?as_of={at}"));
    assert_eq!(t.body["events"].as_array().unwrap().len(), 2);
    assert_eq!(app.get("/v1/customers/c1?as_of=yesterday").status, 400);
}

#[test]
fn consent_revocation_is_seen_by_the_next_check() {
    let app = spawn_app();
    register(&app, "c1", "a@example.com");
    let check = "/v1/consent-check?customer=c1&channel=email&purpose=marketing";
    assert_eq!(app.get(check).body, json!({"allowed": true, "reason": "granted"}));
    for i in 0..10 {
        let granted = i % 2 == 1;
        let r = app.post(
            "/v1/customers/c1/consents",
            json!({"channel": "email", "purpose": "marketing", "granted": granted, "source": "preference-center"}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(app.get(check).body["allowed"], json!(granted), "round {i}");
    }
    let ledger = app.get("/v1/customers/c1/consents").body;
    assert_eq!(ledger["history"].as_array().unwrap().len(), 11);
    assert_eq!(ledger["history"][0]["proof"], json!({"ip": "192.0.2.1"}));
    assert_eq!(app.get("/v1/consent-check?customer=nobody&channel=email&purpose=marketing").status, 404);
    assert_eq!(app.get("/v1/consent-check?customer=c1&channel=pigeon&purpose=marketing").status, 400);
}

#[test]
fn consent_revocation_wins_under_concurrent_load() {
    let app = spawn_app();
    for i in 0..8 {
        register(&app, &format!("c{i}"), &format!("p{i}@example.com"));
    }
    std::thread::scope(|s| {
        // Background load: other customers' profile changes and checks.
        for w in 0..4 {
            let app = &app;
            s.spawn(move || {
                for j in 0..40 {
                    let id = format!("c{}", 1 + (w + j) % 7);
                    app.call(
                        "PATCH",
                        &format!("/v1/customers/{id}"),
                        Some(&app.key),
                        Some(&format!(r#"{{"traits":{{"n":{j}}}}}"#)),
                    );
                    app.get(&format!("/v1/consent-check?customer={id}&channel=email&purpose=marketing"));
                }
            });
        }
        for round in 0..20 {
            let r = app.post(
                "/v1/customers/c0/consents",
                json!({"channel": "email", "purpose": "marketing", "granted": false, "source": "unsubscribe"}),
            );
            assert_eq!(r.status, 201);
            let d = app.get("/v1/consent-check?customer=c0&channel=email&purpose=marketing").body;
            assert_eq!(d, json!({"allowed": false, "reason": "revoked"}), "round {round}");
            app.post(
                "/v1/customers/c0/consents",
                json!({"channel": "email", "purpose": "marketing", "granted": true, "source": "resubscribe"}),
            );
        }
    });
}

#[test]
fn stream_append_conflicts_and_idempotency() {
    let app = spawn_app();
    let id = "0190f3c2-0000-7000-8000-000000000001";
    let body = json!({"expected_version": "no_stream", "events": [{"id": id, "type": "TicketOpened", "data": {"subject": "Login"}}]});
    let r = app.post("/v1/streams/ticket-1", body.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((&r.body["first_version"], &r.body["last_version"]), (&json!(1), &json!(1)));
    let position = r.body["position"].clone();
    // The same event id again: stored once, the original position reported.
    let again = app.post("/v1/streams/ticket-1", body);
    assert_eq!((again.status, &again.body["position"]), (200, &position));
    assert_eq!(app.get("/v1/streams/ticket-1").body["events"].as_array().unwrap().len(), 1);
    // Wrong expected version: 409 naming the actual version.
    let r = app
        .post("/v1/streams/ticket-1", json!({"expected_version": 5, "events": [{"type": "TicketClosed", "data": {}}]}));
    assert_eq!(
        (r.status, &r.body["error"]["code"], &r.body["error"]["actual_version"]),
        (409, &json!("version_conflict"), &json!(1))
    );
    let r = app
        .post("/v1/streams/ticket-1", json!({"expected_version": 1, "events": [{"type": "TicketClosed", "data": {}}]}));
    assert_eq!(r.status, 200);
    let page = app.get("/v1/streams/ticket-1?after=1").body;
    assert_eq!(page["events"][0]["type"], "TicketClosed");
    assert_eq!(page["next"], 2);
    // Domain streams are written by commands only.
    let r = app.post(
        "/v1/streams/customer-x",
        json!({"expected_version": "any", "events": [{"type": "CustomerTagged", "data": {"tag": "x"}}]}),
    );
    assert_eq!((r.status, &r.body["error"]["code"]), (422, &json!("reserved_stream")));
}

#[test]
fn bad_input_gets_a_json_error_and_changes_nothing() {
    let app = spawn_app();
    let before = app.get("/v1/events").body["events"].as_array().unwrap().len();
    for (path, body) in [
        ("/v1/customers", "{\"id\": \"c1\", "),
        ("/v1/customers", "[1,2,3]"),
        ("/v1/customers", r#"{"id":"c1","email":"not-an-email"}"#),
        ("/v1/customers", r#"{"id":"c1","surprise":true}"#),
        ("/v1/streams/s1", r#"{"expected_version":"whenever","events":[{"type":"X","data":{}}]}"#),
        ("/v1/streams/s1", r#"{"expected_version":"any","events":[]}"#),
        ("/v1/streams/s1", r#"{"expected_version":"any","events":[{"type":"Ok","data":{}},{"type":"","data":{}}]}"#),
    ] {
        let r = app.call("POST", path, Some(&app.key), Some(body));
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        assert!(r.body["error"]["code"].is_string() && r.body["error"]["message"].is_string(), "{}", r.body);
    }
    let big = format!(r#"{{"id":"c1","traits":{{"blob":"{}"}}}}"#, "x".repeat(1024 * 1024 + 1000));
    let r = app.call("POST", "/v1/customers", Some(&app.key), Some(&big));
    assert_eq!((r.status, &r.body["error"]["code"]), (413, &json!("too_large")));
    assert_eq!(app.get("/v1/events").body["events"].as_array().unwrap().len(), before);
}

#[test]
fn tenants_are_walls_and_keys_are_required() {
    let app = spawn_app();
    register(&app, "c1", "a@example.com");
    app.post("/v1/streams/notes-1", json!({"expected_version": "any", "events": [{"type": "Noted", "data": {}}]}));
    let other = Some(app.other_key.as_str());
    for path in [
        "/v1/customers/c1",
        "/v1/customers/c1/timeline",
        "/v1/customers/c1/consents",
        "/v1/consent-check?customer=c1&channel=email&purpose=marketing",
    ] {
        assert_eq!(app.call("GET", path, other, None).status, 404, "{path}");
    }
    assert_eq!(app.call("PATCH", "/v1/customers/c1", other, Some(r#"{"traits":{"x":1}}"#)).status, 404);
    assert_eq!(app.call("DELETE", "/v1/customers/c1", other, None).status, 404);
    assert_eq!(app.call("GET", "/v1/streams/notes-1", other, None).status, 404, "another tenant's stream is not found");
    assert_eq!(app.call("GET", "/v1/events", other, None).body["events"], json!([]));
    assert_eq!(app.get("/v1/customers/c1").status, 200, "the owner still sees it");
    let r = app.call("GET", "/v1/customers/c1", None, None);
    assert_eq!((r.status, &r.body["error"]["code"]), (401, &json!("unauthorized")));
    assert_eq!(app.call("GET", "/v1/customers/c1", Some("ck_forged"), None).status, 401);
}

#[test]
fn lifecycle_status_and_erasure_rules() {
    let app = spawn_app();
    register(&app, "c1", "a@example.com");
    let put = |path: &str, body: &str| app.call("PUT", path, Some(&app.key), Some(body));
    assert_eq!(put("/v1/customers/c1/lifecycle-stage", r#"{"stage":"sql"}"#).status, 200);
    let r = put("/v1/customers/c1/lifecycle-stage", r#"{"stage":"lead"}"#);
    assert_eq!((r.status, &r.body["error"]["code"]), (422, &json!("invalid_stage_transition")));
    assert_eq!(app.post("/v1/customers/c1/tags", json!({"tag": "vip"})).body["tags"], json!(["vip"]));
    assert_eq!(app.call("POST", "/v1/customers/c1/deactivate", Some(&app.key), None).body["status"], "deactivated");
    let r = app.post("/v1/customers/c1/tags", json!({"tag": "x"}));
    assert_eq!((r.status, &r.body["error"]["code"]), (422, &json!("customer_deactivated")));
    assert_eq!(app.get("/v1/customers/c1").body["tags"], json!(["vip"]), "history kept");
    assert_eq!(app.call("POST", "/v1/customers/c1/reactivate", Some(&app.key), None).body["status"], "active");
    let r = app.call("DELETE", "/v1/customers/c1", Some(&app.key), None);
    assert_eq!((r.status, &r.body["erased"]), (200, &json!(true)));
    let p = app.get("/v1/customers/c1").body;
    assert_eq!((&p["status"], &p["email"], &p["traits"]), (&json!("erased"), &json!(null), &json!({})));
    let r = app.post("/v1/customers/c1/tags", json!({"tag": "x"}));
    assert_eq!((r.status, &r.body["error"]["code"]), (422, &json!("customer_erased")));
    // The address is free again after erasure.
    assert_eq!(register(&app, "c2", "a@example.com").status, 201);
}

/// Issue 19, item 3: deals and orders are listed and filtered like contacts: by id, every one
/// once across pages, filters exact, a bad status a 400.
#[test]
fn deals_and_orders_are_listed_filtered_and_paged() {
    let app = spawn_app();
    for i in 0..25 {
        let owner = if i % 5 == 0 { "sam" } else { "kim" };
        let body = json!({"id": format!("d{i:02}"), "name": format!("Deal {i}"), "customer_id": format!("c{}", i % 3), "amount": 100 + i, "owner": owner});
        assert_eq!(app.post("/v1/deals", body).status, 201);
    }
    assert_eq!(app.call("POST", "/v1/deals/d03/won", Some(&app.key), None).status, 200);
    let (mut ids, mut after) = (Vec::new(), None::<String>);
    loop {
        let path = match &after {
            Some(a) => format!("/v1/deals?limit=10&after={a}"),
            None => "/v1/deals?limit=10".to_owned(),
        };
        let page = app.get(&path).body;
        ids.extend(page["deals"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("d{i:02}")).collect();
    assert_eq!(ids, expected, "every deal once, by id");
    let won = app.get("/v1/deals?status=won").body;
    assert_eq!(won["deals"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect::<Vec<_>>(), ["d03"]);
    let sams = app.get("/v1/deals?owner=sam&customer=c0").body;
    assert_eq!(sams["deals"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect::<Vec<_>>(), ["d00", "d15"]);
    assert_eq!(app.get("/v1/deals?status=pending").status, 400);
    let wk = Some(app.write_key.as_str());
    for (n, user) in [("A1", "u1"), ("A2", "u2"), ("A3", "u1")] {
        let body = json!({"batch": [{"type": "track", "userId": user, "event": "Order Completed", "properties": {"order_id": n, "total": 10}, "messageId": format!("m-{n}")}]});
        assert_eq!(segment(&app, "/v1/batch", &body.to_string(), wk).status, 200);
    }
    let mine = app.get("/v1/orders?customer=u1").body;
    assert_eq!(mine["orders"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect::<Vec<_>>(), ["A1", "A3"], "{mine}");
    assert_eq!(app.get("/v1/orders?limit=2").body["has_more"], true);
    assert_eq!(app.get("/v1/orders?stage=x").status, 400);
}

#[test]
fn deals_and_pipeline() {
    let app = spawn_app();
    let r = app.post("/v1/deals", json!({"id": "d1", "name": "Acme renewal", "customer_id": "c1"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.call("POST", "/v1/deals/d1/won", Some(&app.key), None);
    assert_eq!((r.status, &r.body["error"]["code"]), (422, &json!("deal_amount_missing")));
    // A PATCH is validated whole: a bad stage writes no amount either.
    let r = app.call("PATCH", "/v1/deals/d1", Some(&app.key), Some(r#"{"stage":"dreaming","amount":5}"#));
    assert_eq!(r.status, 400);
    assert_eq!(app.get("/v1/deals/d1").body["amount"], json!(null));
    let r = app.call("PATCH", "/v1/deals/d1", Some(&app.key), Some(r#"{"stage":"proposal","amount":120000}"#));
    assert_eq!((r.status, &r.body["stage"], &r.body["amount"]), (200, &json!("proposal"), &json!(120000)));
    let p = app.get("/v1/pipeline").body;
    assert_eq!(p["stages"][2], json!({"stage": "proposal", "count": 1, "amount": 120000}));
    assert_eq!(app.call("POST", "/v1/deals/d1/won", Some(&app.key), None).body["status"], "won");
    assert_eq!(app.get("/v1/pipeline").body["won"]["amount"], 120000);
}

#[test]
fn timeline_pages_and_filters() {
    let app = spawn_app();
    register(&app, "c1", "a@example.com");
    for i in 0..5 {
        app.post("/v1/customers/c1/tags", json!({"tag": format!("t{i}")}));
    }
    let p1 = app.get("/v1/customers/c1/timeline?limit=3").body;
    assert_eq!(p1["events"].as_array().unwrap().len(), 3);
    let next = p1["next"].as_u64().unwrap();
    assert_eq!(next, p1["events"][2]["position"].as_u64().unwrap(), "next is the last position scanned");
    let p2 = app.get(&format!("/v1/customers/c1/timeline?after={next}&limit=10")).body;
    assert_eq!(
        p2["events"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    let p3 = app.get(&format!("/v1/customers/c1/timeline?after={}", p2["next"])).body;
    assert_eq!(p3["events"], json!([]));
    let tags = app.get("/v1/customers/c1/timeline?type=CustomerTagged").body;
    assert_eq!(tags["events"].as_array().unwrap().len(), 5);
    let e = &p1["events"][0];
    for f in [
        "id",
        "tenant",
        "stream",
        "version",
        "position",
        "type",
        "schema_version",
        "event_time",
        "ingest_time",
        "source",
        "causation_id",
        "correlation_id",
        "actor",
        "data",
        "metadata",
    ] {
        assert!(e.get(f).is_some(), "envelope lacks {f}");
    }
}

#[test]
fn health_metrics_and_openapi() {
    let app = spawn_app();
    assert_eq!(app.call("GET", "/healthz", None, None).body["status"], "ok");
    register(&app, "c1", "a@example.com");
    let m = app.call("GET", "/metrics", None, None).body;
    let m = m.as_str().unwrap();
    assert!(m.contains("# TYPE chronicle_log_head_position gauge"), "{m}");
    assert!(m.contains("chronicle_customers 1"), "{m}");
    let doc = app.call("GET", "/openapi.json", None, None).body;
    assert_eq!(doc["openapi"], "3.1.0");
    for path in
        ["/v1/customers", "/v1/customers/{id}", "/v1/consent-check", "/v1/streams/{stream}", "/v1/events/stream"]
    {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(doc["paths"]["/v1/customers/{id}"].get("patch").is_some());
    // Issue 19, item 7: every operation has a unique operationId and a tag; the write key is a
    // Basic scheme beside the bearer key; media types say what the metrics and the live stream
    // are; query parameters are typed; the error answers are declared.
    let mut ids = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            assert!(op["tags"][0].is_string(), "{method} {path} has no tag");
            for status in ["400", "404", "503"] {
                assert!(op["responses"].get(status).is_some(), "{method} {path} does not declare {status}");
            }
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["writeKey"]["scheme"], "basic");
    assert_eq!(doc["paths"]["/v1/t"]["post"]["security"], json!([{"writeKey": []}, {}]));
    assert_eq!(doc["paths"]["/v1/t"]["post"]["tags"], json!(["ingest"]));
    for status in ["401", "403", "413", "415", "429"] {
        assert!(doc["paths"]["/v1/customers"]["post"]["responses"].get(status).is_some(), "POST /v1/customers lacks {status}");
    }
    assert!(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"].get("application/openmetrics-text").is_some());
    assert!(doc["paths"]["/v1/events/stream"]["get"]["responses"]["200"]["content"].get("text/event-stream").is_some());
    let limit = doc["paths"]["/v1/customers"]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "limit").cloned().unwrap();
    assert_eq!(limit["schema"]["type"], "integer");
    assert_eq!(doc["paths"]["/v1/customers/{id}/timeline"]["get"]["operationId"], "get_customers_by_id_timeline");
    // Bodies and answers are described by the handlers' own types (schemars).
    assert_eq!(doc["paths"]["/v1/customers"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/CreateCustomer");
    assert_eq!(doc["paths"]["/v1/customers/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Profile");
    let required: Vec<&str> = doc["components"]["schemas"]["Profile"]["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for field in ["id", "traits", "tags", "status", "consents", "version"] {
        assert!(required.contains(&field), "Profile requires {field}: {required:?}");
    }
    assert_eq!(doc["components"]["schemas"]["ConsentInput"]["properties"]["channel"]["$ref"], "#/components/schemas/Channel");
    let answer = |path: &str, method: &str, status: &str| doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"].clone();
    assert_eq!(answer("/v1/customers/{id}/timeline", "get", "200"), "#/components/schemas/Page");
    assert_eq!(answer("/v1/deals", "post", "201"), "#/components/schemas/Deal");
    assert_eq!(answer("/v1/streams/{stream}", "post", "200"), "#/components/schemas/Appended");
    assert_eq!(answer("/healthz", "get", "200"), "#/components/schemas/Health");
    assert_eq!(answer("/v1/t", "post", "200"), "#/components/schemas/Ack");
    assert_eq!(answer("/v1/api-keys", "get", "200"), "#/components/schemas/KeyList");
    assert!(doc["components"]["schemas"]["EventEnvelope"]["required"].as_array().unwrap().contains(&json!("position")));
    // No JSON body or answer is left a bare object: each names its type (the document itself
    // excepted).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if let Some(body) = op.get("requestBody") {
                let schema = &body["content"]["application/json"]["schema"];
                assert!(schema["$ref"].is_string(), "{method} {path}: the body is untyped: {schema}");
            }
            let (status, ok) = op["responses"].as_object().unwrap().iter().find(|(s, _)| s.starts_with('2')).unwrap();
            if let Some(schema) = ok["content"].get("application/json").map(|c| &c["schema"]) {
                assert!(schema["$ref"].is_string() || path == "/openapi.json", "{method} {path}: the {status} answer is untyped: {schema}");
            }
        }
    }
    let body = |path: &str, method: &str| doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"].clone();
    assert_eq!(body("/v1/campaigns/{name}", "put"), "#/components/schemas/CampaignDefinition");
    assert_eq!(body("/v1/batch", "post"), "#/components/schemas/SegmentBatch");
    assert_eq!(answer("/v1/customers/{id}/export", "get", "200"), "#/components/schemas/Export");
    assert_eq!(answer("/v1/dead-letters", "get", "200"), "#/components/schemas/DeadLetters");
    let step = &doc["components"]["schemas"]["CampaignStep"]["oneOf"];
    assert_eq!(step.as_array().unwrap().len(), 6, "{step}");
    assert_eq!(app.call("GET", "/v1/nope", Some(&app.key), None).body["error"]["code"], "not_found");
}

#[test]
fn live_stream_catches_up_then_follows_without_gaps() {
    use std::io::{BufRead, BufReader};
    let app = spawn_app();
    for i in 0..3 {
        app.post("/v1/streams/s", json!({"expected_version": "any", "events": [{"type": "Before", "data": {"i": i}}]}));
    }
    // Another tenant's events must not leak into this stream.
    app.call(
        "POST",
        "/v1/streams/s",
        Some(&app.other_key),
        Some(r#"{"expected_version":"any","events":[{"type":"Secret","data":{}}]}"#),
    );
    let res = app
        .agent
        .get(format!("{}/v1/events/stream?after=0", app.base))
        .header("authorization", format!("Bearer {}", app.key))
        .call()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut lines = BufReader::new(res.into_body().into_reader()).lines();
    let mut next_event = || -> (u64, String) {
        let (mut id, mut ty) = (None, None);
        loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse::<u64>().unwrap());
            } else if let Some(v) = line.strip_prefix("event:") {
                ty = Some(v.trim().to_owned());
            } else if let (true, Some(id)) = (line.is_empty(), id) {
                return (id, ty.expect("every event names its type"));
            }
        }
    };
    let caught_up: Vec<_> = (0..3).map(|_| next_event()).collect();
    assert!(caught_up.iter().all(|(_, t)| t == "Before"), "{caught_up:?}");
    // Live: appended after the subscriber caught up.
    for i in 0..3 {
        app.post("/v1/streams/s", json!({"expected_version": "any", "events": [{"type": "After", "data": {"i": i}}]}));
    }
    let live: Vec<_> = (0..3).map(|_| next_event()).collect();
    assert!(live.iter().all(|(_, t)| t == "After"), "{live:?}");
    let ids: Vec<u64> = caught_up.iter().chain(&live).map(|(p, _)| *p).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "positions ascend, no duplicate: {ids:?}");
}

/// Segment's clients send the write key as the HTTP Basic user name with an empty password.
fn segment(app: &TestApp, path: &str, body: &str, write_key: Option<&str>) -> Resp {
    segment_raw(app, path, body.as_bytes().to_vec(), write_key, None)
}

fn segment_raw(app: &TestApp, path: &str, body: Vec<u8>, write_key: Option<&str>, encoding: Option<&str>) -> Resp {
    use base64::Engine;
    let mut req = app.agent.post(format!("{}{}", app.base, path)).header("content-type", "application/json");
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    if let Some(k) = write_key {
        req = req.header(
            "authorization",
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{k}:"))),
        );
    }
    let mut res = req.send(&body[..]).unwrap();
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string().unwrap();
    Resp { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn segment_gzip_bodies_are_accepted_and_bombs_refused() {
    let app = spawn_app();
    let wk = Some(app.write_key.as_str());
    let body = json!({"batch": [{"type": "track", "userId": "u1", "event": "Zipped", "messageId": "z1"}]}).to_string();
    let r = segment_raw(&app, "/v1/batch", gzip(body.as_bytes()), wk, Some("gzip"));
    assert_eq!((r.status, &r.body), (200, &json!({"success": true})));
    let tl = app.get("/v1/streams/customer-u1").body;
    assert_eq!(tl["events"][0]["data"]["event"], "Zipped");
    let before = event_count(&app);
    // 10 MB of JSON whitespace compresses to a few KB: refused as too large, nothing written.
    let mut bomb = b"{\"batch\":[".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 10 * 1024 * 1024));
    bomb.extend(b"]}");
    let r = segment_raw(&app, "/v1/batch", gzip(&bomb), wk, Some("gzip"));
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("batch_too_large")));
    let r = segment_raw(&app, "/v1/batch", b"not gzip at all".to_vec(), wk, Some("gzip"));
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("bad_request")));
    let r = segment_raw(&app, "/v1/batch", body.into_bytes(), wk, Some("br"));
    assert_eq!(r.status, 415);
    assert_eq!(event_count(&app), before);
}

fn event_count(app: &TestApp) -> usize {
    app.get("/v1/events?limit=1000").body["events"].as_array().unwrap().len()
}

#[test]
fn segment_batch_lands_on_customers_and_retries_store_nothing() {
    let app = spawn_app();
    let batch = json!({"batch": [
        {"type": "page", "anonymousId": "anon-1", "name": "Pricing", "messageId": "m0"},
        {"type": "identify", "userId": "u1", "traits": {"email": "Ada@Example.com", "first_name": "Ada"}, "messageId": "m1"},
        {"type": "track", "userId": "u1", "event": "Product Added", "properties": {"sku": "a"}, "messageId": "m2",
         "timestamp": "2026-01-01T10:00:00Z"},
        {"type": "screen", "userId": "u1", "name": "Dashboard", "messageId": "m3"}
    ], "context": {"library": {"name": "test"}}, "sentAt": "2026-01-01T10:00:00Z"}).to_string();
    let r = segment(&app, "/v1/batch", &batch, Some(&app.write_key));
    assert_eq!((r.status, &r.body), (200, &json!({"success": true})));
    let c = app.get("/v1/customers/u1").body;
    assert_eq!((&c["email"], &c["traits"]["first_name"]), (&json!("ada@example.com"), &json!("Ada")));
    let tl = app.get("/v1/customers/u1/timeline?type=ActivityTracked").body;
    let events = tl["events"].as_array().unwrap();
    // The identify call is on the timeline too, written with the profile change it made.
    let kinds: Vec<&str> = events.iter().map(|e| e["data"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["identify", "track", "screen"]);
    assert_eq!(events[1]["data"]["event"], "Product Added");
    assert_eq!(events[1]["data"]["context"]["library"]["name"], "test", "batch context merged");
    assert_eq!(events[1]["source"], "segment");
    let anon = app.get("/v1/streams/anonymous-anon-1").body;
    assert_eq!(anon["events"][0]["data"]["event"], "Pricing");
    // A client retrying the same batch (same messageIds) stores nothing new.
    let before = event_count(&app);
    let r = segment(&app, "/v1/batch", &batch, Some(&app.write_key));
    assert_eq!(r.status, 200);
    assert_eq!(event_count(&app), before);
    // A retry that overlaps an earlier request only partly stores just the new messages.
    let overlap = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Product Added", "properties": {"sku": "a"}, "messageId": "m2", "timestamp": "2026-01-01T10:00:00Z"},
        {"type": "track", "userId": "u1", "event": "Cart Viewed", "messageId": "m9"}
    ], "sentAt": "2026-01-01T10:00:00Z"}).to_string();
    let r = segment(&app, "/v1/batch", &overlap, Some(&app.write_key));
    assert_eq!((r.status, &r.body), (200, &json!({"success": true})));
    assert_eq!(event_count(&app), before + 1);
    let before = before + 1;
    // Single-message endpoints, and writeKey in the body.
    let r = segment(
        &app,
        "/v1/track",
        &json!({"userId": "u1", "event": "Order Completed", "writeKey": app.write_key}).to_string(),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(event_count(&app), before + 1);
}

/// Issue 19, item 2 (first slice): the browser SDK's short paths take a `text/plain` JSON body
/// with the write key in it, and land where the long paths do.
#[test]
fn the_browser_sdks_short_paths_take_text_plain_bodies() {
    let app = spawn_app();
    let post = |path: &str, body: Value| -> u16 {
        let url = format!("{}{}", app.base, path);
        app.agent.post(&url).header("content-type", "text/plain").send(body.to_string()).unwrap().status().as_u16()
    };
    let wk = app.write_key.clone();
    assert_eq!(post("/v1/i", json!({"type": "identify", "userId": "b1", "traits": {"first_name": "Bea"}, "messageId": "b-i", "writeKey": wk})), 200);
    assert_eq!(post("/v1/t", json!({"type": "track", "userId": "b1", "event": "Signed Up", "messageId": "b-t", "writeKey": wk})), 200);
    assert_eq!(post("/v1/p", json!({"type": "page", "userId": "b1", "name": "Pricing", "messageId": "b-p", "writeKey": wk})), 200);
    assert_eq!(post("/v1/s", json!({"type": "screen", "userId": "b1", "name": "Home", "messageId": "b-s", "writeKey": wk})), 200);
    assert_eq!(post("/v1/g", json!({"type": "group", "userId": "b1", "groupId": "acme", "messageId": "b-g", "writeKey": wk})), 200);
    assert_eq!(post("/v1/a", json!({"type": "alias", "userId": "b1", "previousId": "anon-b", "messageId": "b-a", "writeKey": wk})), 200);
    assert_eq!(post("/v1/t", json!({"type": "track", "userId": "b1", "event": "X", "messageId": "b-x", "writeKey": "wk_wrong"})), 401);
    assert_eq!(app.get("/v1/customers/b1").body["traits"]["first_name"], "Bea");
    let tl = app.get("/v1/customers/b1/timeline?type=ActivityTracked").body;
    let kinds: Vec<&str> = tl["events"].as_array().unwrap().iter().map(|e| e["data"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["identify", "track", "page", "screen", "group"], "{tl}");
}

/// Some Segment-protocol SDKs send an identify's traits in `context.traits` only: they are
/// recorded, not dropped; top-level traits, when given, win; a bad e-mail there is refused.
#[test]
fn identify_traits_only_in_context_are_recorded() {
    let app = spawn_app();
    let m = json!({"type": "identify", "userId": "ctx-1", "messageId": "c1",
        "context": {"traits": {"email": "Grace@Example.com", "first_name": "Grace"}}}).to_string();
    let r = segment(&app, "/v1/identify", &m, Some(&app.write_key));
    assert_eq!(r.status, 200, "{}", r.body);
    let c = app.get("/v1/customers/ctx-1").body;
    assert_eq!((&c["email"], &c["traits"]["first_name"]), (&json!("grace@example.com"), &json!("Grace")), "{c}");
    let both = json!({"type": "identify", "userId": "ctx-2", "messageId": "c2", "traits": {"first_name": "Top"},
        "context": {"traits": {"first_name": "Context"}}}).to_string();
    assert_eq!(segment(&app, "/v1/identify", &both, Some(&app.write_key)).status, 200);
    assert_eq!(app.get("/v1/customers/ctx-2").body["traits"]["first_name"], "Top");
    let bad = json!({"type": "identify", "userId": "ctx-3", "messageId": "c3",
        "context": {"traits": {"email": "not-an-email"}}}).to_string();
    let r = segment(&app, "/v1/identify", &bad, Some(&app.write_key));
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("bad_request")), "{}", r.body);
    assert_eq!(app.get("/v1/customers/ctx-3").status, 404, "nothing written");
}

#[test]
fn segment_bad_input_is_refused_whole() {
    let app = spawn_app();
    let wk = Some(app.write_key.as_str());
    let before = event_count(&app);
    for (path, body, status, code) in [
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","userId":"u","event":"A"},{"type":"track","event":"B"}]}"#,
            400,
            "no_user_anon_id",
        ),
        ("/v1/batch", r#"{"batch":[{"type":"teleport","userId":"u"}]}"#, 400, "unknown_type"),
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","userId":"u","event":"A","timestamp":"soon"}]}"#,
            400,
            "bad_timestamp",
        ),
        ("/v1/batch", r#"{"batch":[{"type":"track","userId":"u","#, 400, "bad_request"),
        ("/v1/track", r#"{"event":"A"}"#, 400, "no_user_anon_id"),
        ("/v1/identify", r#"{"userId":"u","traits":{"email":"not-an-email"}}"#, 400, "bad_request"),
    ] {
        let r = segment(&app, path, body, wk);
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{path} {body}: {}", r.body);
    }
    let big = json!({"userId": "u", "event": "A", "properties": {"blob": "x".repeat(40_000)}}).to_string();
    assert_eq!(segment(&app, "/v1/track", &big, wk).body["error"]["code"], "message_too_large");
    let ok = r#"{"batch":[{"type":"track","userId":"u","event":"A"}]}"#;
    assert_eq!(segment(&app, "/v1/batch", ok, Some("wk_wrong")).status, 401);
    assert_eq!(segment(&app, "/v1/batch", ok, Some(&app.key)).status, 401, "an API key is not a write key");
    assert_eq!(segment(&app, "/v1/batch", ok, None).status, 401);
    assert_eq!(event_count(&app), before, "nothing written by any refused call");
}

#[test]
fn segment_rule_refusals_are_reported_per_message() {
    let app = spawn_app();
    register(&app, "c1", "taken@example.com");
    let body = json!({"batch": [
        {"type": "identify", "userId": "u2", "traits": {"email": "taken@example.com"}, "messageId": "x1"},
        {"type": "track", "userId": "u2", "event": "Signed Up", "messageId": "x2"}
    ]})
    .to_string();
    let r = segment(&app, "/v1/batch", &body, Some(&app.write_key));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["rejected"],
        json!([{"index": 0, "code": "email_taken", "message": "e-mail address is already used by another customer"}])
    );
    assert_eq!(r.body["written"], 1);
}

#[test]
fn anonymous_history_joins_the_customer_on_identify_and_alias() {
    let app = spawn_app();
    let wk = Some(app.write_key.as_str());
    let send = |body: Value| segment(&app, "/v1/batch", &json!({"batch": [body]}).to_string(), wk);
    assert_eq!(send(json!({"type": "page", "anonymousId": "a1", "name": "Pricing"})).status, 200);
    assert_eq!(send(json!({"type": "track", "anonymousId": "a2", "event": "Product Added"})).status, 200);
    for i in 0..3 {
        send(json!({"type": "page", "anonymousId": "a1", "name": format!("Blog {i}")}));
    }
    let r = send(json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"first_name": "Ada"}}));
    assert_eq!((r.status, &r.body), (200, &json!({"success": true})));
    send(json!({"type": "track", "userId": "u1", "event": "Signed Up"}));
    assert_eq!(send(json!({"type": "alias", "previousId": "a2", "userId": "u1"})).status, 200);
    let tl = app.get("/v1/customers/u1/timeline?type=ActivityTracked").body;
    let names: Vec<&str> = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["event"].as_str().or(e["data"]["kind"].as_str()).unwrap())
        .collect();
    assert_eq!(names, vec!["Pricing", "Product Added", "Blog 0", "Blog 1", "Blog 2", "identify", "Signed Up"]);
    // Paging through the merged timeline gives the same sequence, no gap, no repeat.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = app.get(&format!("/v1/customers/u1/timeline?type=ActivityTracked&limit=2&after={after}")).body;
        let evs = page["events"].as_array().unwrap().clone();
        if evs.is_empty() {
            break;
        }
        paged
            .extend(evs.iter().map(|e| e["data"]["event"].as_str().or(e["data"]["kind"].as_str()).unwrap().to_owned()));
        after = page["next"].as_u64().unwrap();
    }
    assert_eq!(paged, names);
    assert_eq!(app.get("/v1/customers/u1").body["anonymous_ids"], json!(["a1", "a2"]));
    // An anonymous id already linked stays with its customer.
    register(&app, "u2", "u2@example.com");
    let r = send(json!({"type": "alias", "previousId": "a1", "userId": "u2"}));
    assert_eq!(r.body["rejected"][0]["code"], "identity_linked_elsewhere");
    assert_eq!(app.get("/v1/customers/u2").body["anonymous_ids"], json!([]));
    assert_eq!(send(json!({"type": "alias", "userId": "u2"})).body["error"]["code"], "bad_request");
}

#[test]
fn segment_ecommerce_events_drive_orders_once() {
    let app = spawn_app();
    let wk = Some(app.write_key.as_str());
    let track = |mid: &str, event: &str, props: Value| {
        let body = json!({"batch": [{"type": "track", "userId": "u1", "event": event, "properties": props, "messageId": mid}]});
        segment(&app, "/v1/batch", &body.to_string(), wk)
    };
    let r = track(
        "o1",
        "Order Completed",
        json!({"order_id": "A17", "total": 49.90, "currency": "eur", "products": [{"sku": "a"}]}),
    );
    assert_eq!(r.status, 200);
    let o = app.get("/v1/orders/A17").body;
    assert_eq!(
        (&o["status"], &o["total"], &o["currency"], &o["customer_id"]),
        (&json!("paid"), &json!(4990), &json!("EUR"), &json!("u1"))
    );
    // A partial refund, redelivered: paid out once.
    for _ in 0..2 {
        assert_eq!(track("o2", "Order Refunded", json!({"order_id": "A17", "total": 10})).status, 200);
    }
    assert_eq!(app.get("/v1/orders/A17").body["refunded"], 1000);
    // The rest (no total given: what remains).
    track("o3", "Order Refunded", json!({"order_id": "A17"}));
    let o = app.get("/v1/orders/A17").body;
    assert_eq!((&o["refunded"], &o["status"]), (&json!(4990), &json!("refunded")));
    // A completed order redelivered stays one order; an unknown order's refund changes nothing.
    track("o1", "Order Completed", json!({"order_id": "A17", "total": 49.90}));
    assert_eq!(app.get("/v1/orders/A17").body["version"], 4);
    assert_eq!(track("o4", "Order Refunded", json!({"order_id": "nope", "total": 1})).status, 200);
    assert_eq!(app.get("/v1/orders/nope").status, 404);
    // Cancelled before payment is a cancellation.
    track("o5", "Order Cancelled", json!({"order_id": "B1"}));
    assert_eq!(app.get("/v1/orders/B1").status, 404, "cancelling an order never placed changes nothing");
    let tl = app.get("/v1/customers/u1/timeline").status;
    assert_eq!(tl, 404, "u1 was never identified: its activity is on its stream, not a profile");
    assert_eq!(
        app.get("/v1/streams/customer-u1").body["events"].as_array().unwrap().len(),
        5,
        "every tracked event is kept"
    );
}

#[test]
fn segment_group_links_the_customer_to_an_account() {
    let app = spawn_app();
    let wk = Some(app.write_key.as_str());
    let body = json!({"userId": "u1", "groupId": "acme", "traits": {"name": "Acme", "employees": 40}}).to_string();
    assert_eq!(segment(&app, "/v1/group", &body, wk).status, 200);
    assert_eq!(segment(&app, "/v1/group", &body, wk).status, 200);
    let c = app.get("/v1/customers/u1").body;
    assert_eq!(c["groups"], json!({"acme": {"name": "Acme", "employees": 40}}));
    let joined = app.get("/v1/customers/u1/timeline?type=CustomerGroupJoined").body;
    assert_eq!(joined["events"].as_array().unwrap().len(), 1, "the same traits again change nothing");
    // Registered, joined, and both calls recorded (each had its own messageId).
    assert_eq!(c["version"], 4);
    assert_eq!(segment(&app, "/v1/group", r#"{"userId":"u1"}"#, wk).body["error"]["code"], "bad_request");
}

fn cloudevents(app: &TestApp, content_type: &str, headers: &[(&str, &str)], body: &str, key: Option<&str>) -> Resp {
    let mut req = app.agent.post(format!("{}/v1/cloudevents", app.base)).header("content-type", content_type);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut res = req.send(body).unwrap();
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string().unwrap();
    Resp { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

#[test]
fn cloudevents_in_structured_binary_and_batch_modes() {
    let app = spawn_app();
    let key = Some(app.key.as_str());
    let structured = json!({"specversion": "1.0", "id": "e-1", "source": "/billing", "type": "com.example.invoice.paid",
                            "subject": "c-42", "time": "2026-11-01T10:00:00Z", "data": {"amount": 4990}, "traceparent": "00-abc"}).to_string();
    let r = cloudevents(&app, "application/cloudevents+json", &[], &structured, key);
    assert_eq!((r.status, &r.body["accepted"]), (200, &json!(1)), "{}", r.body);
    let ev = &app.get("/v1/streams/customer-c-42").body["events"][0];
    assert_eq!(
        (&ev["type"], &ev["source"], &ev["event_time"]),
        (&json!("com.example.invoice.paid"), &json!("/billing"), &json!("2026-11-01T10:00:00Z"))
    );
    assert_eq!(
        (&ev["data"]["data"]["amount"], &ev["data"]["cloudevent"]["traceparent"]),
        (&json!(4990), &json!("00-abc"))
    );
    // Redelivery of the same (source, id): nothing new.
    let before = event_count(&app);
    cloudevents(&app, "application/cloudevents+json", &[], &structured, key);
    assert_eq!(event_count(&app), before);
    // Binary mode.
    let hdrs =
        [("ce-specversion", "1.0"), ("ce-id", "b-1"), ("ce-source", "/shop"), ("ce-type", "com.example.cart.viewed")];
    let r = cloudevents(&app, "application/json", &hdrs, r#"{"items":2}"#, key);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get("/v1/streams/source-%2Fshop").body["events"][0]["data"]["data"], json!({"items": 2}));
    // Batch mode, and the write key works too.
    let batch = json!([
        {"specversion": "1.0", "id": "k-1", "source": "/crm", "type": "com.example.call", "subject": "c-1"},
        {"specversion": "1.0", "id": "k-2", "source": "/crm", "type": "com.example.call", "subject": "c-2"}
    ])
    .to_string();
    let mut req = app
        .agent
        .post(format!("{}/v1/cloudevents", app.base))
        .header("content-type", "application/cloudevents-batch+json");
    use base64::Engine;
    req = req.header(
        "authorization",
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:", app.write_key))),
    );
    assert_eq!(req.send(&batch).unwrap().status().as_u16(), 200);
    assert_eq!(event_count(&app), before + 3);
}

/// Issue 19, item 11: binary-mode headers are percent-decoded (as the HTTP binding encodes
/// them), and data that is not JSON is kept byte for byte as `data_base64`.
#[test]
fn cloudevents_binary_mode_headers_are_percent_decoded_and_other_data_kept_as_base64() {
    let app = spawn_app();
    let key = Some(app.key.as_str());
    let hdrs = [("ce-specversion", "1.0"), ("ce-id", "b-2"), ("ce-source", "/caf%C3%A9"), ("ce-type", "com.example.image")];
    let r = cloudevents(&app, "application/octet-stream", &hdrs, "\u{1}\u{2}raw", key);
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = &app.get("/v1/streams/source-%2Fcaf%C3%A9").body["events"][0];
    assert_eq!(ev["source"], "/café", "{ev}");
    assert_eq!(ev["data"]["cloudevent"]["data_base64"], "AQJyYXc=", "{ev}");
    let before = event_count(&app);
    let hdrs = [("ce-specversion", "1.0"), ("ce-id", "b-3"), ("ce-source", "/x%zz"), ("ce-type", "t")];
    assert_eq!(cloudevents(&app, "application/json", &hdrs, "{}", key).status, 400);
    assert_eq!(event_count(&app), before, "nothing written");
}

#[test]
fn cloudevents_bad_input_writes_nothing() {
    let app = spawn_app();
    let key = Some(app.key.as_str());
    let before = event_count(&app);
    let ok = r#"{"specversion":"1.0","id":"a","source":"/s","type":"t.x"}"#;
    for (ct, body) in [
        ("application/cloudevents+json", r#"{"specversion":"0.3","id":"a","source":"/s","type":"t"}"#),
        ("application/cloudevents+json", r#"{"specversion":"1.0","source":"/s","type":"t"}"#),
        (
            "application/cloudevents+json",
            r#"{"specversion":"1.0","id":"a","source":"/s","type":"CustomerErased","subject":"c1"}"#,
        ),
        ("application/cloudevents+json", r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","time":"later"}"#),
        ("application/cloudevents+json", "{not json"),
        ("application/cloudevents-batch+json", &format!("[{ok}, {{\"specversion\":\"1.0\"}}]")),
        ("application/cloudevents-batch+json", "[]"),
    ] {
        let r = cloudevents(&app, ct, &[], body, key);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body["error"]["code"].is_string());
    }
    assert_eq!(cloudevents(&app, "text/plain", &[], "hello", key).status, 415);
    assert_eq!(cloudevents(&app, "application/cloudevents+json", &[], ok, Some("ck_forged")).status, 401);
    assert_eq!(cloudevents(&app, "application/cloudevents+json", &[], ok, None).status, 401);
    assert_eq!(event_count(&app), before);
}

#[test]
fn two_known_customers_merge_with_a_defined_survivor() {
    let app = spawn_app();
    register(&app, "u1", "one@example.com");
    register(&app, "u2", "two@example.com");
    app.call("PATCH", "/v1/customers/u2", Some(&app.key), Some(r#"{"traits":{"city":"Oslo","plan":"pro"}}"#));
    app.post("/v1/customers/u2/notes", json!({"text": "prefers phone"}));
    let wk = Some(app.write_key.as_str());
    let track = json!({"batch": [{"type": "track", "userId": "u2", "event": "Webinar Joined"}]});
    assert_eq!(segment(&app, "/v1/batch", &track.to_string(), wk).status, 200);

    // Refusals first: they write nothing.
    let before = event_count(&app);
    assert_eq!(app.post("/v1/customers/u1/merge", json!({"from": "u1"})).body["error"]["code"], "invalid_merge");
    assert_eq!(app.post("/v1/customers/u1/merge", json!({"from": "nobody"})).status, 404);
    assert_eq!(app.post("/v1/customers/u1/merge", json!({"form": "u2"})).status, 400);
    assert_eq!(app.call("POST", "/v1/customers/u1/merge", Some(&app.other_key), Some(r#"{"from":"u2"}"#)).status, 404);
    assert_eq!(event_count(&app), before);

    let r = app.post("/v1/customers/u1/merge", json!({"from": "u2"}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The survivor keeps its own values and takes what it lacked.
    assert_eq!(r.body["email"], "one@example.com");
    assert_eq!(r.body["traits"]["plan"], "free");
    assert_eq!(r.body["traits"]["city"], "Oslo");
    assert_eq!(r.body["notes"][0]["text"], "prefers phone");
    assert_eq!(r.body["merged_ids"], json!(["u2"]));
    let dup = app.get("/v1/customers/u2").body;
    assert_eq!((dup["status"].as_str(), dup["merged_into"].as_str()), (Some("merged"), Some("u1")));
    // The duplicate is frozen and its address still taken (it finds the survivor).
    let r = app.call("PATCH", "/v1/customers/u2", Some(&app.key), Some(r#"{"traits":{"x":1}}"#));
    assert_eq!(r.body["error"]["code"], "customer_merged");
    assert_eq!(register(&app, "u9", "two@example.com").body["error"]["code"], "email_taken");
    let check = app.get("/v1/consent-check?customer=u2&channel=email&purpose=marketing").body;
    assert_eq!(check["reason"], "customer_merged");
    // The duplicate's history is on the survivor's timeline.
    let tl = app.get("/v1/customers/u1/timeline?type=ActivityTracked").body;
    assert_eq!(tl["events"][0]["data"]["event"], "Webinar Joined");
    // Merging again changes nothing.
    let before = event_count(&app);
    assert_eq!(app.post("/v1/customers/u1/merge", json!({"from": "u2"})).status, 200);
    assert_eq!(event_count(&app), before);

    // Segment: an alias whose previousId is a known customer merges it into the userId — sent
    // with a secret ingest key. The public write key (it sits in web pages) may not merge two
    // known customers (issue 17, item 10: it froze the victim and moved their consents).
    register(&app, "u3", "three@example.com");
    register(&app, "u4", "four@example.com");
    let alias = json!({"batch": [{"type": "alias", "previousId": "u3", "userId": "u4"}]});
    let before = event_count(&app);
    let r = segment(&app, "/v1/batch", &alias.to_string(), wk);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["rejected"][0]["code"], "merge_not_allowed", "{}", r.body);
    assert_eq!(event_count(&app), before, "nothing merged");
    assert_eq!(app.get("/v1/customers/u3").body["status"], "active");
    // The write key may still link an anonymous id to a customer.
    let link = json!({"batch": [{"type": "alias", "previousId": "anon-7", "userId": "u4"}]});
    assert_eq!(segment(&app, "/v1/batch", &link.to_string(), wk).body, json!({"success": true}));
    let ingest = app.post("/v1/api-keys", json!({"role": "ingest", "name": "server"})).body["key"].as_str().unwrap().to_owned();
    assert_eq!(segment(&app, "/v1/batch", &alias.to_string(), Some(&ingest)).body, json!({"success": true}));
    assert_eq!(app.get("/v1/customers/u4").body["merged_ids"], json!(["u3"]));
    assert_eq!(app.get("/v1/customers/u3").body["merged_into"], "u4");

    // Erasing the survivor erases the person's duplicate records too.
    let r = app.call("DELETE", "/v1/customers/u1", Some(&app.key), None);
    assert_eq!(r.body["merged_customers_erased"], json!(["u2"]));
    let dup = app.get("/v1/customers/u2").body;
    assert_eq!((dup["status"].as_str(), dup["email"].clone()), (Some("erased"), Value::Null));
    assert_eq!(register(&app, "u9", "two@example.com").status, 201, "the erased addresses are released");
}

#[test]
fn every_read_and_change_of_a_customer_is_on_the_audit_trail_with_its_key() {
    let app = spawn_app();
    assert_eq!(register(&app, "c1", "ada@example.com").status, 201);
    assert_eq!(app.get("/v1/customers/c1").status, 200);
    assert_eq!(app.get("/v1/customers/c1/timeline").status, 200);
    let r = app.call("PATCH", "/v1/customers/c1", Some(&app.key), Some(r#"{"traits":{"plan":"pro"}}"#));
    assert_eq!(r.status, 200);
    assert_eq!(app.get("/v1/consent-check?customer=c1&channel=email&purpose=marketing").status, 200);
    assert_eq!(app.get("/v1/customers/c1/export").status, 200);
    let r = app.get("/v1/audit?customer=c1");
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.body["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = entries.iter().map(|e| (e["action"].as_str().unwrap(), e["route"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        [
            ("read", "/v1/customers/{id}"),
            ("read", "/v1/customers/{id}/timeline"),
            ("change", "/v1/customers/{id}"),
            ("read", "/v1/consent-check"),
            ("read", "/v1/customers/{id}/export"),
        ]
    );
    assert!(entries.iter().all(|e| e["actor"].as_str().unwrap().starts_with("key:") && e["customer"] == "c1"));
    assert!(entries.iter().all(|e| e["status"] == 200));
    // The trail is the tenant's: another tenant sees nothing of it, and it is not in the event feed.
    assert_eq!(app.call("GET", "/v1/audit?customer=c1", Some(&app.other_key), None).status, 404);
    assert!(!app.get("/v1/events?limit=1000").body.to_string().contains("AuditRecorded"));
    assert_eq!(app.call("GET", "/v1/audit?customer=c1", None, None).status, 401);
}

#[test]
fn roles_limit_what_a_key_may_do_revoked_keys_are_refused_and_rates_are_limited() {
    let app = spawn_app();
    assert_eq!(register(&app, "c1", "ada@example.com").status, 201);
    let make = |role: &str| {
        let r = app.post("/v1/api-keys", json!({"role": role, "name": format!("{role} key")}));
        assert_eq!(r.status, 201, "{}", r.body);
        (r.body["id"].as_str().unwrap().to_owned(), r.body["key"].as_str().unwrap().to_owned())
    };
    let (reader_id, reader) = make("reader");
    let (_, writer) = make("writer");
    let (_, ingest) = make("ingest");
    let call = |m: &str, p: &str, k: &str, b: Option<&str>| app.call(m, p, Some(k), b).status;
    // A reader reads, and may neither write nor erase nor manage keys.
    assert_eq!(call("GET", "/v1/customers/c1", &reader, None), 200);
    assert_eq!(call("GET", "/v1/customers/c1/timeline", &reader, None), 200);
    assert_eq!(call("PATCH", "/v1/customers/c1", &reader, Some(r#"{"traits":{"x":1}}"#)), 403);
    assert_eq!(call("DELETE", "/v1/customers/c1", &reader, None), 403);
    assert_eq!(call("POST", "/v1/api-keys", &reader, Some(r#"{"role":"admin"}"#)), 403);
    assert_eq!(call("GET", "/v1/customers/c1/export", &reader, None), 403, "the export is an admin's");
    // A writer writes, and may not erase.
    assert_eq!(call("PATCH", "/v1/customers/c1", &writer, Some(r#"{"traits":{"x":1}}"#)), 200);
    assert_eq!(call("DELETE", "/v1/customers/c1", &writer, None), 403);
    // An ingest key only sends events.
    assert_eq!(call("GET", "/v1/customers/c1", &ingest, None), 403);
    let track = |k: &str| json!({"writeKey": k, "userId": "c1", "event": "Ping", "messageId": "m-ingest"}).to_string();
    assert_eq!(app.call("POST", "/v1/track", None, Some(&track(&ingest))).status, 200);
    assert_eq!(app.call("POST", "/v1/track", None, Some(&track(&reader))).status, 403);
    // Keys are listed without their secrets, and a revoked key is refused.
    let listed = app.get("/v1/api-keys").body;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 3);
    assert!(!listed.to_string().contains(&reader[20..]), "no secret in the list");
    assert_eq!(app.call("DELETE", &format!("/v1/api-keys/{reader_id}"), Some(&app.key), None).status, 200);
    assert_eq!(call("GET", "/v1/customers/c1", &reader, None), 401);
    assert_eq!(app.call("DELETE", "/v1/api-keys/0000000000000000", Some(&app.key), None).status, 404);
    assert_eq!(app.call("GET", "/v1/api-keys", Some(&app.other_key), None).body["keys"], json!([]), "another tenant's keys are not listed");
    // The admin key erases.
    assert_eq!(app.call("DELETE", "/v1/customers/c1", Some(&app.key), None).status, 200);

    // Rate limits: a key that spends its budget gets 429 with Retry-After.
    let limited = spawn_app_with(5);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..30 {
        let res = limited.agent.get(format!("{}/v1/pipeline", limited.base)).header("authorization", format!("Bearer {}", limited.key)).call().unwrap();
        statuses.push(res.status().as_u16());
        if res.status().as_u16() == 429 {
            retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert!(statuses[..10].iter().all(|s| *s == 200), "a burst of twice the rate is allowed: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let other = limited.agent.get(format!("{}/v1/pipeline", limited.base)).header("authorization", format!("Bearer {}", limited.other_key)).call().unwrap();
    assert_eq!(other.status().as_u16(), 200, "budgets are per key");
}

/// Walks every route of `/openapi.json` that names a resource (a path parameter, or the
/// `customer` query parameter) and calls it with the other tenant's key on this tenant's ids:
/// 404 every time, except where the route creates under the caller's own tenant (an upsert by
/// name, an append to a stream by name) — and then this tenant's resource is left as it was.
#[test]
fn every_route_called_with_another_tenants_ids_answers_404_and_changes_nothing() {
    let app = spawn_app();
    assert_eq!(register(&app, "c1", "ada@example.com").status, 201);
    assert_eq!(app.post("/v1/deals", json!({"id": "d1", "name": "Renewal", "customer_id": "c1", "amount": 100})).status, 201);
    let order = r#"{"userId":"c1","event":"Order Completed","properties":{"order_id":"o1","total":30},"messageId":"o1-m"}"#;
    assert_eq!(segment(&app, "/v1/track", order, Some(&app.write_key)).status, 200);
    assert_eq!(app.get("/v1/orders/o1").status, 200);
    assert_eq!(app.call("PUT", "/v1/templates/t1", Some(&app.key), Some(r#"{"subject":"Hi","body":"Hi"}"#)).status, 200);
    let c = r#"{"trigger":"Never","steps":[{"send":{"channel":"email","purpose":"marketing","template":"t1"}}]}"#;
    assert_eq!(app.call("PUT", "/v1/campaigns/welcome", Some(&app.key), Some(c)).status, 200);
    assert_eq!(app.call("PUT", "/v1/segments/dormant", Some(&app.key), Some(r#"{"conditions":[{"inactive_for":"60d"}]}"#)).status, 200);
    let key_id = app.post("/v1/api-keys", json!({"role": "reader"})).body["id"].as_str().unwrap().to_owned();
    let append = r#"{"expected_version":"any","events":[{"type":"NoteTaken","data":{"text":"mine"}}]}"#;
    assert_eq!(app.call("POST", "/v1/streams/notes-1", Some(&app.key), Some(append)).status, 200);
    assert_eq!(app.call("PUT", "/v1/retention/ActivityTracked", Some(&app.key), Some(r#"{"keep_days":90}"#)).status, 200);
    let snapshot = |app: &TestApp| {
        ["/v1/customers/c1", "/v1/customers/c1/timeline", "/v1/customers/c1/consents", "/v1/deals/d1", "/v1/orders/o1",
         "/v1/campaigns/welcome", "/v1/templates/t1", "/v1/api-keys", "/v1/streams/notes-1", "/v1/retention", "/v1/segments/dormant"]
            .map(|p| app.get(p).body)
    };
    let before = snapshot(&app);

    let doc = app.call("GET", "/openapi.json", None, None).body;
    let mut walked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("security").is_none() {
                continue; // open routes: health, metrics, Segment and webhook ingest (write keys)
            }
            let has_query_customer = op["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "customer");
            if !path.contains('{') && !has_query_customer {
                continue; // lists and creations: the caller's own tenant only
            }
            let concrete = path
                .replace("/v1/customers/{id}", "/v1/customers/c1")
                .replace("/v1/deals/{id}", "/v1/deals/d1")
                .replace("/v1/orders/{id}", "/v1/orders/o1")
                .replace("/v1/dead-letters/{id}", "/v1/dead-letters/dl-1")
                .replace("/v1/api-keys/{id}", &format!("/v1/api-keys/{key_id}"))
                .replace("/v1/campaigns/{name}", "/v1/campaigns/welcome")
                .replace("/v1/templates/{name}", "/v1/templates/t1")
                .replace("/v1/segments/{name}", "/v1/segments/dormant")
                .replace("/v1/streams/{stream}", "/v1/streams/notes-1")
                .replace("/v1/retention/{event_type}", "/v1/retention/ActivityTracked")
                .replace("/v1/automation/parked/{position}", "/v1/automation/parked/5")
                .replace("{tag}", "vip");
            assert!(!concrete.contains('{'), "no id for {path}");
            let query = if has_query_customer { "?customer=c1&channel=email&purpose=marketing" } else { "" };
            let body = op.pointer("/requestBody/content/application~1json/example").map(|e| e.to_string());
            let r = app.call(&method.to_uppercase(), &format!("{concrete}{query}"), Some(&app.other_key), body.as_deref());
            let creates_own = matches!(
                (method.as_str(), path.as_str()),
                ("put", "/v1/campaigns/{name}")
                    | ("put", "/v1/segments/{name}")
                    | ("put", "/v1/templates/{name}")
                    | ("put", "/v1/retention/{event_type}")
                    | ("post", "/v1/streams/{stream}")
            );
            if creates_own {
                assert!(r.status != 500, "{method} {path}: {}", r.body);
            } else if path == "/v1/events/stream" {
                continue;
            } else if path == "/v1/segments/{name}/members" && r.status == 200 {
                // The other tenant's own segment of that name (its PUT above made it): none of ours.
                assert_eq!(r.body["members"], json!([]), "{method} {path}: {}", r.body);
            } else {
                assert_eq!(r.status, 404, "{method} {path} with another tenant's ids: {}", r.body);
            }
            walked += 1;
        }
    }
    assert!(walked >= 30, "walked {walked} routes");
    assert_eq!(snapshot(&app), before, "nothing of this tenant changed");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Any sequence of requests another tenant's key can make — any route of `/openapi.json`,
    /// with this tenant's ids, its own, or made-up ones, with the route's example body or a
    /// body naming this tenant's ids — never shows this tenant's data and never changes it.
    #[test]
    fn no_request_with_another_tenants_key_reads_or_changes_this_tenants_data(
        requests in proptest::collection::vec((0usize..64, 0usize..6, 0usize..3), 1..24)
    ) {
        // A connection per request: a server may close a kept-alive connection after answering
        // early (a 404 before the body was read), and a reused one would then fail on the next
        // request — a test-harness race, not what is under test. A panic in a handler still
        // shows, as a dropped connection.
        let fresh: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).build().into();
        let app = TestApp { agent: fresh, ..spawn_app() };
        assert_eq!(app.post("/v1/customers", json!({"id": "c1", "email": "secret-a@example.com", "traits": {"first_name": "Secreta"}})).status, 201);
        assert_eq!(app.post("/v1/deals", json!({"id": "d1", "name": "Secret deal", "customer_id": "c1"})).status, 201);
        assert_eq!(app.call("PUT", "/v1/templates/t1", Some(&app.key), Some(r#"{"subject":"Secret","body":"Secret"}"#)).status, 200);
        let snapshot = |app: &TestApp| ["/v1/customers/c1", "/v1/customers/c1/timeline", "/v1/deals/d1", "/v1/templates/t1", "/v1/pipeline"].map(|p| app.get(p).body);
        let before = snapshot(&app);
        let doc = app.call("GET", "/openapi.json", None, None).body;
        let mut routes: Vec<(String, String, Option<String>)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                if op.get("security").is_some() && path != "/v1/events/stream" {
                    let body = op.pointer("/requestBody/content/application~1json/example").map(|e| e.to_string());
                    routes.push((method.to_uppercase(), path.clone(), body));
                }
            }
        }
        let ids = ["c1", "d1", "t1", "welcome", "nobody", "c-42"];
        for (r, i, b) in requests {
            let (method, path, example) = &routes[r % routes.len()];
            let id = ids[i];
            let concrete = ["{id}", "{name}", "{stream}", "{tag}"].iter().fold(path.clone(), |p, k| p.replace(k, id));
            let query = if path == "/v1/consent-check" || path == "/v1/audit" { format!("?customer={id}&channel=email&purpose=marketing") } else { String::new() };
            let body = match b {
                0 => example.clone(),
                1 => example.as_ref().map(|e| e.replace("c1", id).replace("c-42", id).replace("u1", id)),
                _ => Some(json!({"id": id, "customer_id": id, "from": id, "name": id}).to_string()),
            };
            let res = app.call(method, &format!("{concrete}{query}"), Some(&app.other_key), body.as_deref());
            let text = res.body.to_string();
            proptest::prop_assert!(!text.contains("secret-a") && !text.contains("Secret"), "{method} {concrete}: {text}");
            proptest::prop_assert!(res.status != 500, "{method} {concrete}: {text}");
        }
        proptest::prop_assert_eq!(snapshot(&app), before);
    }
}

#[test]
fn a_request_refused_before_its_body_arrived_tells_the_client_the_connection_closes() {
    use std::io::{Read, Write};
    let app = spawn_app();
    let reader = app.post("/v1/api-keys", json!({"role": "reader"})).body["key"].as_str().unwrap().to_owned();
    let mut s = std::net::TcpStream::connect(app.base.strip_prefix("http://").unwrap()).unwrap();
    let body = r#"{"role":"admin"}"#;
    write!(s, "POST /v1/api-keys HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {reader}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).unwrap();
    // The body comes late (as under load): the 403 is answered before it, the server will not
    // read it and closes the connection, so the answer must say so, or a client's next request
    // on this connection is lost.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _ = s.write_all(body.as_bytes());
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_lowercase();
    assert!(out.starts_with("http/1.1 403"), "{out}");
    assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
}

/// Issue 17, item 1: an event time far outside any calendar (`-262143-01-01`) once panicked
/// the commit hook, poisoned the views and stopped the instance for good. Every entry refuses
/// instants outside 1900-01-01..9999-12-31 now, and the server keeps serving.
#[test]
fn instants_outside_the_accepted_range_are_refused_everywhere_they_enter() {
    let app = spawn_app();
    register(&app, "c1", "a@example.com");
    let before = event_count(&app);
    let poison = json!({"expected_version": "any", "events": [
        {"type": "MessageQueued", "event_time": "-262143-01-01T00:00:00Z", "data": {"customer": "c1", "channel": "email", "message_id": "m1", "campaign": "k", "step": 0}},
        {"type": "MessageQueued", "event_time": "-262143-01-01T00:00:00Z", "data": {"customer": "c1", "channel": "email", "message_id": "m2", "campaign": "k", "step": 0}}
    ]});
    let r = app.post("/v1/streams/poison", poison);
    assert!((400..500).contains(&r.status), "{}", r.body);
    for t in ["-262143-01-01T00:00:00Z", "1899-12-31T23:59:59Z", "+10000-01-01T00:00:00Z"] {
        let r = app.post("/v1/streams/notes-1", json!({"expected_version": "any", "events": [{"type": "Noted", "event_time": t, "data": {}}]}));
        assert_eq!(r.status, 400, "{t}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains("event_time"), "{}", r.body);
    }
    // Old history stays importable.
    let r = app.post("/v1/streams/notes-1", json!({"expected_version": "any", "events": [{"type": "Noted", "event_time": "2008-03-01T00:00:00Z", "data": {}}]}));
    assert_eq!(r.status, 200, "{}", r.body);
    for q in ["as_of=1800-01-01T00:00:00Z", "as_of=-262143-01-01T00:00:00Z"] {
        assert_eq!(app.get(&format!("/v1/customers/c1?{q}")).status, 400, "{q}");
        assert_eq!(app.get(&format!("/v1/customers/c1/timeline?{q}")).status, 400, "{q}");
    }
    let ce = r#"{"specversion":"1.0","id":"old","source":"/s","type":"t.x","time":"0001-01-01T00:00:00Z"}"#;
    assert_eq!(cloudevents(&app, "application/cloudevents+json", &[], ce, Some(&app.key)).status, 400);
    let track = r#"{"userId":"u1","event":"A","timestamp":"0001-01-01T00:00:00Z"}"#;
    let r = segment(&app, "/v1/track", track, Some(&app.write_key));
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("bad_timestamp")), "{}", r.body);
    // Clock-skew correction that would land outside the range is refused, not overflowed.
    let skewed = r#"{"userId":"u1","event":"A","timestamp":"1900-01-01T00:00:00Z","sentAt":"9999-01-01T00:00:00Z"}"#;
    assert_eq!(segment(&app, "/v1/track", skewed, Some(&app.write_key)).status, 400);
    assert_eq!(event_count(&app), before + 1, "only the 2008 note was written");
    assert_eq!(app.call("GET", "/healthz", None, None).status, 200, "the server still serves");
    assert_eq!(app.get("/v1/customers/c1").status, 200);
}

/// Issue 17, items 1 and 7: the domain's own event types are written only by the commands
/// that own them — a writer key can neither forge an audit entry nor queue a message (which
/// the engine would have sent, signed, to any URL) through a raw append or a CloudEvent.
#[test]
fn owned_event_types_are_refused_on_raw_appends_and_cloudevents() {
    let app = spawn_app();
    register(&app, "c1", "a@example.com");
    let before = event_count(&app);
    let forged_audit = json!({"expected_version": "any", "events": [{"type": "AuditRecorded", "data": {
        "at": "2026-01-01T00:00:00Z", "actor": "key:someone", "action": "read", "method": "GET",
        "route": "/forged", "customer": "c1", "status": 200}}]});
    let r = app.post("/v1/streams/notes-x", forged_audit);
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("reserved_type")), "{}", r.body);
    let trail = app.get("/v1/audit?customer=c1");
    assert!(!trail.body.to_string().contains("/forged"), "a forged entry is not on the audit trail: {}", trail.body);
    let webhook = json!({"expected_version": "any", "events": [{"type": "MessageQueued", "data": {
        "customer": "c1", "channel": "webhook", "message_id": "m1", "campaign": "k", "step": 0,
        "url": "http://127.0.0.1:9/hook", "body": "{}"}}]});
    let r = app.post("/v1/streams/outbox-x", webhook);
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("reserved_type")), "{}", r.body);
    for ty in ["MessageQueued", "AuditRecorded", "CampaignSaved", "RetentionPolicySet", "MessageBounced", "ActivityTracked"] {
        let ce = format!(r#"{{"specversion":"1.0","id":"{ty}","source":"/s","type":"{ty}","subject":"c1"}}"#);
        let r = cloudevents(&app, "application/cloudevents+json", &[], &ce, Some(&app.key));
        assert_eq!(r.status, 400, "{ty}: {}", r.body);
    }
    assert_eq!(event_count(&app), before, "nothing written");
    assert_eq!(app.get("/v1/customers/c1").body["id"], "c1");
}

/// An in-process server whose `App` the test keeps, to compare its live views with a replay.
fn spawn_kept() -> (TestApp, Arc<App>, tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (app, key, other_key, write_key, addr) = rt.block_on(async {
        let application = build(dir.path(), 0).await;
        let app = application.app().clone();
        let (key, write_key) = app.create_tenant("acme").await.unwrap();
        let (other_key, _) = app.create_tenant("rival").await.unwrap();
        let addr = application.address();
        tokio::spawn(application.run_until_stopped(std::future::pending()));
        (app, key, other_key, write_key, addr)
    });
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).build().into();
    (TestApp { base: format!("http://{addr}"), key, other_key, write_key, agent, _dir: dir }, app, rt)
}

fn hostile_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(1e308)),
        prop::sample::select(vec![
            "-262143-01-01T00:00:00Z", "+262142-12-31T23:59:59Z", "2026-01-01T00:00:00Z", "email", "webhook",
            "c1", "a@example.com", "http://127.0.0.1:9/", "", "{{#each x}}",
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        let fields = vec![
            "customer", "customer_id", "channel", "message_id", "campaign", "step", "at", "due", "email", "amount",
            "stage", "route", "url", "properties", "traits", "previousId", "userId", "items", "keep_days",
        ];
        prop::collection::vec((prop::sample::select(fields), inner), 0..6)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    })
}

/// Chronicle's own events in their own shape (type and payload), with times at and past every
/// edge: what the read models would fold as they are (issue 17's poison was two `MessageQueued`
/// at `-262143-01-01`).
fn plausible_event() -> impl proptest::strategy::Strategy<Value = (Option<&'static str>, Value, Option<&'static str>)> {
    use proptest::prelude::*;
    let time = prop::sample::select(vec!["-262143-01-01T00:00:00Z", "+262142-12-31T23:59:59Z", "1900-01-01T00:00:00Z", "2026-01-01T00:00:00Z"]);
    (time, 0usize..6).prop_map(|(t, k)| {
        let (ty, data) = match k {
            0 => ("MessageQueued", json!({"message": "m1", "channel": "email", "purpose": "marketing", "to": "a@example.com", "body": "hi"})),
            1 => ("MessageQueued", json!({"message": "m2", "channel": "webhook", "purpose": "transactional", "to": "http://127.0.0.1:9/", "body": "{}"})),
            2 => ("MessageFailed", json!({"message": "m1", "attempt": 1, "error": "x", "retry_at": t})),
            3 => ("CampaignStepScheduled", json!({"campaign": "k", "enrolment": "e1", "step": 0, "due": t})),
            4 => ("CampaignEnrolled", json!({"campaign": "k", "enrolment": "e1", "definition": 1, "trigger": "x"})),
            _ => ("AuditRecorded", json!({"at": t, "actor": "key:x", "action": "read", "method": "GET", "route": "/forged", "customer": "c1", "status": 200})),
        };
        (Some(ty), data, Some(t))
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    /// Issue 17: arbitrary appends through every public path that takes events (raw appends,
    /// CloudEvents, Segment) never answer 500, never stop the server, and the views they leave
    /// are the views a replay of the log gives (what `chronicle verify` checks).
    #[test]
    fn arbitrary_appends_through_every_public_path_leave_a_server_that_serves_and_verifies(
        requests in proptest::collection::vec(
            (0usize..3, 0usize..48, 0usize..6, 0usize..6, proptest::prop_oneof![1 => proptest::strategy::Strategy::prop_map(hostile_json(), |d| (None, d, None)), 3 => plausible_event()]),
            1..16,
        )
    ) {
        let types: Vec<&str> = chronicle_core::registry::OWNED.iter().flat_map(|(_, t)| t.iter().copied()).chain(["Noted", "X"]).collect();
        let times = [None, Some("-262143-01-01T00:00:00Z"), Some("1900-01-01T00:00:00Z"), Some("9999-12-31T23:59:59Z"), Some("2010-05-01T12:00:00Z"), Some("0001-01-01T00:00:00Z")];
        let streams = ["notes-x", "poison", "customer-c1", "_audit", "outbox-1", "x"];
        let (app, kept, rt) = spawn_kept();
        register(&app, "c1", "a@example.com");
        for (path, t, time, stream, (own, data, at)) in requests {
            let ty = own.unwrap_or(types[t % types.len()]);
            let time_given = at.or(times[time]);
            let res = match path {
                0 => {
                    let mut ev = json!({"type": ty, "data": data});
                    if let Some(at) = time_given { ev["event_time"] = json!(at); }
                    // Twice: some folds break only on a second event of a kind.
                    app.post(&format!("/v1/streams/{}", streams[stream]), json!({"expected_version": "any", "events": [ev.clone(), ev]}))
                }
                1 => {
                    let mut ce = json!({"specversion": "1.0", "id": format!("e{t}"), "source": "/s", "type": ty, "data": data});
                    if stream % 2 == 0 { ce["subject"] = json!("c1"); }
                    if let Some(at) = time_given { ce["time"] = json!(at); }
                    cloudevents(&app, "application/cloudevents+json", &[], &ce.to_string(), Some(&app.key))
                }
                _ => {
                    let kind = ["track", "identify", "alias", "page", "group", "screen"][stream];
                    let mut m = json!({"type": kind, "userId": "c1", "event": ty, "previousId": "anon-1", "groupId": "g1", "properties": data, "messageId": format!("m{t}{time}")});
                    if let Some(at) = time_given { m["timestamp"] = json!(at); }
                    segment(&app, "/v1/batch", &json!({"batch": [m]}).to_string(), Some(&app.write_key))
                }
            };
            proptest::prop_assert!(res.status < 500, "{path} {ty}: {} {}", res.status, res.body);
            proptest::prop_assert_eq!(app.call("GET", "/healthz", None, None).status, 200);
        }
        proptest::prop_assert_eq!(app.get("/v1/customers/c1").status, 200);
        let replay = rt.block_on(chronicle_app::maintenance::replay(kept.store(), |_| ())).unwrap();
        proptest::prop_assert!(replay.problems.is_empty(), "{:?}", replay.problems);
        let differences = chronicle_projections::diff(&kept.views(), &replay.projections);
        proptest::prop_assert!(differences.is_empty(), "{:?}", differences);
    }
}

/// Issue 17, item 4: event ids are a public function of tenant and message id, and were unique
/// across tenants — so a tenant could pre-store the id another tenant's `messageId` would get
/// (the victim's track answered success and was never stored; its CloudEvent got 409), and a
/// wrong expected version told whether another tenant had received a message. Idempotency is
/// per tenant now.
#[test]
fn one_tenant_can_neither_suppress_nor_probe_another_tenants_events() {
    let app = spawn_app();
    let attacker = Some(app.other_key.as_str());
    let victim_track = chronicle_app::ingest::event_id("acme", "m-1");
    let victim_ce = chronicle_app::ingest::event_id("acme", "cloudevents\0/shop\0ce-1");
    let squat = json!({"expected_version": "any", "events": [
        {"id": victim_track, "type": "Squat", "data": {}},
        {"id": victim_ce, "type": "Squat", "data": {}}
    ]})
    .to_string();
    assert_eq!(app.call("POST", "/v1/streams/squat", attacker, Some(&squat)).status, 200);
    let before = event_count(&app);
    let r = segment(&app, "/v1/track", r#"{"userId":"u1","event":"Paid","messageId":"m-1"}"#, Some(&app.write_key));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(event_count(&app), before + 1, "the victim's track is stored");
    let ce = r#"{"specversion":"1.0","id":"ce-1","source":"/shop","type":"com.example.paid","subject":"u1"}"#;
    let r = cloudevents(&app, "application/cloudevents+json", &[], ce, Some(&app.key));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(event_count(&app), before + 2, "the victim's CloudEvent is stored");
    // Retries are still recognised, per tenant.
    segment(&app, "/v1/track", r#"{"userId":"u1","event":"Paid","messageId":"m-1"}"#, Some(&app.write_key));
    cloudevents(&app, "application/cloudevents+json", &[], ce, Some(&app.key));
    assert_eq!(event_count(&app), before + 2);
    // Probing with a wrong expected version answers the same for an id the victim holds and
    // for one nobody holds.
    let probe = |id: uuid::Uuid| {
        let body = json!({"expected_version": 7, "events": [{"id": id, "type": "Probe", "data": {}}]}).to_string();
        let r = app.call("POST", "/v1/streams/probe", attacker, Some(&body));
        (r.status, r.body["error"]["code"].clone())
    };
    segment(&app, "/v1/track", r#"{"userId":"u1","event":"Paid","messageId":"m-9"}"#, Some(&app.write_key));
    assert_eq!(event_count(&app), before + 3);
    assert_eq!(probe(chronicle_app::ingest::event_id("acme", "m-9")), probe(uuid::Uuid::now_v7()));
}

/// Issue 17, item 9: a template whose rendering runs away (nested loops) is refused when it is
/// saved, and the API stays responsive.
#[test]
fn a_runaway_template_is_refused_at_save_and_the_api_stays_responsive() {
    let app = spawn_app();
    let nested = r#"{"subject":"Hi","body":"{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{{ b }}{% endfor %}{% endfor %}"}"#;
    let started = std::time::Instant::now();
    let r = app.call("PUT", "/v1/templates/bomb", Some(&app.key), Some(nested));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("too many steps"), "{}", r.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(app.get("/v1/templates/bomb").status, 404, "nothing saved");
    assert_eq!(app.call("GET", "/healthz", None, None).status, 200);
}

/// Issue 17 (suspected, confirmed): ingest had no rate limit at all, and a key
/// `ck_<known id>_<wrong secret>` cost a full argon2 verification on an async worker per
/// request. Ingest is limited per client address and per write key; a key id whose secret
/// keeps failing is refused without another verification for a while.
#[test]
fn ingest_is_rate_limited_and_guessing_a_keys_secret_is_cheap_to_refuse() {
    let (app, kept, _rt) = spawn_kept();
    kept.set_ingest_rate_limits(3, 1000);
    let wk = Some(app.write_key.as_str());
    let statuses: Vec<u16> = (0..12)
        .map(|i| segment(&app, "/v1/track", &format!(r#"{{"userId":"u1","event":"A","messageId":"r{i}"}}"#), wk).status)
        .collect();
    assert!(statuses.contains(&200) && statuses.contains(&429), "per write key: {statuses:?}");
    let r = segment(&app, "/v1/track", r#"{"userId":"u1","event":"A"}"#, wk);
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (429, Some("rate_limited")), "{}", r.body);
    kept.set_ingest_rate_limits(0, 3);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let statuses: Vec<u16> = (0..12).map(|_| segment(&app, "/v1/track", "{}", Some("wk_unknown")).status).collect();
    assert!(statuses.contains(&401) && statuses.contains(&429), "per address, before the key is looked at: {statuses:?}");
    kept.set_ingest_rate_limits(0, 0);

    let id = app.post("/v1/api-keys", json!({"role": "reader"})).body["id"].as_str().unwrap().to_owned();
    let forged = format!("ck_{id}_{}", "x".repeat(64));
    let before = kept.metrics.key_verifications.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..40 {
        assert_eq!(app.call("GET", "/v1/customers/c1", Some(&forged), None).status, 401);
    }
    let verified = kept.metrics.key_verifications.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!((1..=5).contains(&verified), "40 guesses cost {verified} argon2 verifications");
    assert_eq!(app.get("/v1/customers/nobody").status, 404, "the real key still works");
}

/// Issue 17 (suspected SendGrid replay, confirmed): one verification key served every tenant,
/// so a batch signed for one tenant's SendGrid account could be posted to another's URL. A
/// tenant may verify its feedback with its own key; a batch signed with another then fails.
#[test]
fn a_tenant_with_its_own_sendgrid_key_refuses_batches_signed_with_another() {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;
    let app = spawn_app();
    register(&app, "c1", "ada@example.com");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let ours = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let theirs = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let public = b64(ours.verifying_key().to_public_key_der().unwrap().as_bytes());
    let put = |body: &str| app.call("PUT", "/v1/settings/sendgrid", Some(&app.key), Some(body));
    assert_eq!(put(r#"{"public_key":"not a key"}"#).status, 400);
    assert_eq!(app.call("PUT", "/v1/settings/sendgrid", Some(&app.other_key), Some(&json!({"public_key": public}).to_string())).status, 200, "each tenant its own");
    assert_eq!(put(&json!({"public_key": public}).to_string()).status, 200);
    assert_eq!(app.get("/v1/settings/sendgrid").body["public_key"], json!(public));
    let batch = json!([{"email": "ada@example.com", "event": "open", "sg_event_id": "e1", "timestamp": chrono::Utc::now().timestamp()}]).to_string();
    let ts = chrono::Utc::now().timestamp().to_string();
    let post = |key: &p256::ecdsa::SigningKey| {
        let sig: p256::ecdsa::Signature = key.sign(&[ts.as_bytes(), batch.as_bytes()].concat());
        let mut res = app
            .agent
            .post(format!("{}/v1/webhooks/sendgrid?key={}", app.base, app.write_key))
            .header("content-type", "application/json")
            .header("X-Twilio-Email-Event-Webhook-Signature", &b64(sig.to_der().as_bytes()))
            .header("X-Twilio-Email-Event-Webhook-Timestamp", &ts)
            .send(&batch)
            .unwrap();
        let status = res.status().as_u16();
        let _ = res.body_mut().read_to_string();
        status
    };
    assert_eq!(post(&theirs), 401, "signed for another account");
    assert_eq!(post(&ours), 200);
    assert_eq!(app.call("DELETE", "/v1/settings/sendgrid", Some(&app.key), None).status, 200);
    assert_eq!(post(&ours), 401, "back to the instance's key, which this server has none of");
}

/// Issue 19, item 6 (found by schemathesis): a path segment the route cannot read (not a
/// number where one is expected) was axum's plain-text 400; every error is the JSON shape.
#[test]
fn an_unreadable_path_segment_is_a_json_400() {
    let app = spawn_app();
    let r = app.call("POST", "/v1/automation/parked/%C2%93%C2%BC/retry", Some(&app.key), Some("{}"));
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "bad_request", "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("Cannot parse"), "{}", r.body);
}

/// Segments over HTTP: a definition is checked whole, saved once, answered; the engine keeps its
/// members (a customer matching now enters on their next event); the members list and the
/// contact list's segment filter show them; an unknown segment is 404.
#[test]
fn segments_are_saved_checked_and_list_their_members() {
    let app = spawn_app();
    let bad = app.call("PUT", "/v1/segments/pro", Some(&app.key), Some(r#"{"conditions":[{"trait":"plan"}]}"#));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(app.get("/v1/segments/pro").status, 404);
    let def = r#"{"description":"Pro plan","conditions":[{"trait":"plan","equals":"pro"}]}"#;
    let saved = app.call("PUT", "/v1/segments/pro", Some(&app.key), Some(def));
    assert_eq!((saved.status, &saved.body["changed"]), (200, &json!(true)), "{}", saved.body);
    assert_eq!(app.call("PUT", "/v1/segments/pro", Some(&app.key), Some(def)).body["changed"], json!(false));
    assert_eq!(app.call("PUT", "/v1/segments/a%2Fb", Some(&app.key), Some(def)).status, 400);
    for (id, plan) in [("c1", "pro"), ("c2", "free"), ("c3", "pro")] {
        let r = app.post("/v1/customers", json!({"id": id, "traits": {"plan": plan}}));
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let members = loop {
        let m = app.get("/v1/segments/pro/members");
        if m.body["members"].as_array().is_some_and(|a| a.len() == 2) || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let ids: Vec<&str> = members.body["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c1", "c3"], "{}", members.body);
    assert_eq!(app.get("/v1/segments/pro").body["members"], 2);
    let page = app.get("/v1/segments/pro/members?limit=1");
    assert_eq!((page.body["members"].as_array().unwrap().len(), &page.body["next"]), (1, &json!("c1")));
    let listed = app.get("/v1/customers?segment=pro");
    let ids: Vec<&str> = listed.body["customers"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c1", "c3"], "{}", listed.body);
    assert_eq!(app.get("/v1/customers?segment=nope").status, 404);
    // c3 changes plan: leaves.
    assert_eq!(app.call("PATCH", "/v1/customers/c3", Some(&app.key), Some(r#"{"traits":{"plan":"free"}}"#)).status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while app.get("/v1/segments/pro").body["members"] != 1 {
        assert!(std::time::Instant::now() < deadline, "c3 leaves");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // As of an instant before anyone entered: no member.
    let past = app.get("/v1/segments/pro/members?as_of=2000-01-01T00:00:00Z");
    assert_eq!(past.body["members"], json!([]), "{}", past.body);
    assert!(members.body["position"].as_u64().unwrap() > 0 && past.body["position"] == 0, "{} {}", members.body, past.body);
}
