//! Erasure by crypto-shredding, end to end on the real binary: after `DELETE
//! /v1/customers/{id}`, no byte of the data folder and no line of the server's log holds the
//! person's e-mail, name, phone or IP; the log still replays (`verify` passes) and shows the
//! redaction; commands on the erased customer are refused.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const EMAIL: &str = "zelda.quux@example.com";
const FIRST: &str = "Zelda";
const LAST: &str = "Quuxington";
const PHONE: &str = "+15550001234";
const IP: &str = "203.0.113.77";
/// A second person, whose Segment userId is their e-mail address.
const ID_EMAIL: &str = "yolanda.xyzzy@example.org";

#[test]
fn an_erased_person_leaves_no_plaintext_in_the_data_folder_or_the_log_and_verify_still_passes() {
    erasure(None);
}

/// The same over PostgreSQL (one node, sealed): no table of the schema holds the person either.
#[test]
fn an_erased_person_leaves_no_plaintext_in_any_postgresql_table_either() {
    let Some(db) = PgSchema::new() else { return };
    erasure(Some(&db));
}


fn erasure(db: Option<&PgSchema>) {
    let db_args = db.map(PgSchema::args).unwrap_or_default();
    let with_db = |args: &[&str]| -> Vec<String> { args.iter().map(|a| a.to_string()).chain(db_args.iter().cloned()).collect() };
    let chronicle = |data: &std::path::Path, args: &[&str]| {
        let args = with_db(args);
        chronicle(data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    // Crypto-shredding is on by default: a new folder is sealed (and stays so); over PostgreSQL
    // the keys are in the database, shared by the nodes.
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    assert!(out.status.success());
    assert_eq!(data.join("keys.bin").exists(), db.is_none());
    if let Some(db) = db {
        assert!(db.scalar("SELECT count(*) FROM keys") > 0, "the keys are in the database");
    }
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, write) = (t["api_key"].as_str().unwrap().to_owned(), t["write_key"].as_str().unwrap().to_owned());
    let args = with_db(&["serve", "--retry-base-ms", "20", "--max-attempts", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, url, _) = start_logging(&data, &args, "listening on", Some(&log));
    let agent = agent();

    // Someone else, who stays.
    let other = json!({"id": "c-other", "email": "other@example.com", "traits": {"first_name": "Otto"}});
    assert_eq!(send(&agent, "POST", &format!("{url}/v1/customers"), &key, &other).0, 201);
    // The person: a profile, consent with its proof, a note, a page view before sign-up from
    // their IP, then identify (which links it), tracked activity, and a campaign e-mail that
    // fails into the dead-letter queue (no SMTP server is configured).
    segment(&agent, &url, &write, "/v1/page", json!({"anonymousId": "anon-z", "name": "Pricing", "context": {"ip": IP}, "messageId": "p1"}));
    let body = json!({"id": "c-zelda", "email": EMAIL, "phone": PHONE, "traits": {"first_name": FIRST, "last_name": LAST},
        "consents": [{"channel": "email", "purpose": "marketing", "granted": true, "source": "signup-form", "proof": {"ip": IP}}]});
    let put = |path: &str, body: Value| send(&agent, "PUT", &format!("{url}{path}"), &key, &body);
    assert_eq!(put("/v1/templates/hello", json!({"subject": "Hello {{ traits.first_name }}", "body": "<p>{{ traits.last_name }}</p>"})).0, 200);
    let c = json!({"trigger": {"event": "Plan Viewed"}, "steps": [{"send": {"channel": "email", "purpose": "marketing", "template": "hello"}}]});
    assert_eq!(put("/v1/campaigns/hello", c).0, 200);
    assert_eq!(send(&agent, "POST", &format!("{url}/v1/customers"), &key, &body).0, 201);
    assert_eq!(send(&agent, "POST", &format!("{url}/v1/customers/c-zelda/notes"), &key, &json!({"text": format!("{FIRST} called from {PHONE}")})).0, 200);
    segment(&agent, &url, &write, "/v1/identify", json!({"userId": "c-zelda", "anonymousId": "anon-z", "traits": {"first_name": FIRST}, "context": {"ip": IP}, "messageId": "i1"}));
    // Metadata names the person too (issue 17, item 5): Segment's `integrations` is kept as the
    // event's metadata, sealed like its data.
    let integrations = json!({"Zendesk": {"name": format!("{FIRST} {LAST}"), "email": EMAIL}});
    segment(&agent, &url, &write, "/v1/track", json!({"userId": "c-zelda", "event": "Plan Viewed", "properties": {"name": LAST}, "context": {"ip": IP}, "integrations": integrations, "messageId": "t1"}));
    // A userId that is an e-mail address (issue 17, item 5): kept as a keyed pseudonym, so no
    // stream name, id registry row or audit entry holds it; the API still takes the address.
    segment(&agent, &url, &write, "/v1/identify", json!({"userId": ID_EMAIL, "traits": {"email": ID_EMAIL}, "messageId": "y1"}));
    segment(&agent, &url, &write, "/v1/track", json!({"userId": ID_EMAIL, "event": "Plan Viewed", "messageId": "y2"}));
    let (status, y) = get(&agent, &format!("{url}/v1/customers/{ID_EMAIL}"), &key);
    assert_eq!(status, 200, "{y}");
    assert_eq!(y["email"], ID_EMAIL);
    assert!(y["id"].as_str().unwrap().starts_with("p-"), "stored under its pseudonym: {y}");
    assert!(!get(&agent, &format!("{url}/v1/events?limit=1000"), &key).1.to_string().contains(&format!("customer-{ID_EMAIL}")));
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&agent, &format!("{url}/v1/dead-letters"), &key).1["dead_letters"].as_array().is_none_or(|a| a.is_empty()) {
        assert!(Instant::now() < deadline, "the campaign e-mail never reached the dead-letter queue");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, tl) = get(&agent, &format!("{url}/v1/customers/c-zelda/timeline?limit=100"), &key);
    assert!(tl.to_string().contains(IP), "before erasure the timeline holds the page view from before sign-up");
    let (_, all) = get(&agent, &format!("{url}/v1/events?limit=1000"), &key);
    assert!(all.to_string().contains("Zendesk"), "before erasure the metadata reads back opened");

    // Subject access before the erasure: the profile, the consent proof, the activity (the page
    // view from before sign-up included) and the message waiting in the dead-letter queue.
    let (status, export) = get(&agent, &format!("{url}/v1/customers/c-zelda/export"), &key);
    assert_eq!(status, 200);
    assert_eq!(export["customer"]["email"], EMAIL);
    assert_eq!(export["customer"]["traits"]["last_name"], LAST);
    assert!(export["consents"]["history"].to_string().contains(IP), "consent proof: {}", export["consents"]);
    let types: Vec<&str> = export["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for ty in ["CustomerRegistered", "ConsentGranted", "NoteAdded", "IdentityLinked", "CampaignEnrolled", "MessageQueued"] {
        assert!(types.contains(&ty), "{ty} in the export: {types:?}");
    }
    assert!(export["events"].to_string().contains("Pricing"), "the anonymous page view is in the export");
    assert_eq!(export["messages"][0]["state"], "dead_letter");
    assert_eq!(export["messages"][0]["subject"], format!("Hello {FIRST}"));
    assert_eq!(export["campaign_enrolments"].as_array().unwrap().len(), 1);
    let (status, _) = get(&agent, &format!("{url}/v1/customers/nobody/export"), &key);
    assert_eq!(status, 404);

    if let Some(db) = db {
        assert!(db.scalar(&slots_named_by("acme", &["customer-c-zelda", "anonymous-anon-z"])) >= 2, "their keys are in the database");
    }
    let (status, erased) = send(&agent, "DELETE", &format!("{url}/v1/customers/c-zelda"), &key, &json!({}));
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["keys_destroyed"], 2, "the customer's key and their anonymous identity's: {erased}");
    if let Some(db) = db {
        assert_eq!(db.scalar(&slots_named_by("acme", &["customer-c-zelda", "anonymous-anon-z"])), 0, "no key of theirs is left in the database");
        assert!(db.scalar(&slots_named_by("acme", &["customer-c-other"])) > 0, "the other customer's key is");
    }
    assert_eq!(erased["pending_sends_cancelled"], 1, "{erased}");
    let (status, erased) = send(&agent, "DELETE", &format!("{url}/v1/customers/{ID_EMAIL}"), &key, &json!({}));
    assert_eq!(status, 200, "{erased}");

    // Redacted everywhere the API looks; refused for commands; the other customer intact.
    let (_, profile) = get(&agent, &format!("{url}/v1/customers/c-zelda"), &key);
    assert_eq!(profile["status"], "erased");
    let (_, tl) = get(&agent, &format!("{url}/v1/customers/c-zelda/timeline?limit=100"), &key);
    let text = tl.to_string();
    for secret in [EMAIL, FIRST, LAST, PHONE, IP] {
        assert!(!text.contains(secret), "{secret} still on the timeline");
    }
    assert!(text.contains("\"redacted\":true"), "{text}");
    let (status, export) = get(&agent, &format!("{url}/v1/customers/c-zelda/export"), &key);
    assert_eq!(status, 200);
    let text = export.to_string();
    for secret in [EMAIL, FIRST, LAST, PHONE, IP] {
        assert!(!text.contains(secret), "{secret} in the export after erasure");
    }
    assert_eq!(export["customer"]["status"], "erased");
    let (_, all) = get(&agent, &format!("{url}/v1/events?limit=1000"), &key);
    for secret in [EMAIL, FIRST, LAST, PHONE, IP] {
        assert!(!all.to_string().contains(secret), "{secret} in GET /v1/events (data or metadata) after erasure");
    }
    assert_eq!(get(&agent, &format!("{url}/v1/dead-letters"), &key).1["dead_letters"], json!([]));
    let (status, _) = send(&agent, "PATCH", &format!("{url}/v1/customers/c-zelda"), &key, &json!({"traits": {"x": 1}}));
    assert_eq!(status, 422);
    let (_, o) = get(&agent, &format!("{url}/v1/customers/c-other"), &key);
    assert_eq!(o["traits"]["first_name"], "Otto");

    sigterm(&mut server);
    let found = scan(&data, &[EMAIL, FIRST, LAST, PHONE, IP, ID_EMAIL]);
    assert!(found.is_empty(), "plaintext left in the data folder: {found:?}");
    assert!(scan(&data, &["Otto"]).is_empty(), "nobody's personal data is in the clear on disk");
    if let Some(db) = db {
        let rows = db.dump();
        assert!(rows.contains("CustomerErased"), "the dump holds the events");
        for secret in [EMAIL, FIRST, LAST, PHONE, IP, "Otto", ID_EMAIL] {
            assert!(!rows.contains(secret), "{secret} in a PostgreSQL table");
        }
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("listening") || logged.contains("serving"), "the log was captured");
    for secret in [EMAIL, FIRST, LAST, PHONE, IP, ID_EMAIL] {
        assert!(!logged.contains(secret), "{secret} in the server's log");
    }
    let out = chronicle(&data, &["verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // The CLI twin of the export.
    let out = chronicle(&data, &["export", "c-zelda", "--tenant", "acme"]);
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["customer"]["status"], "erased");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(EMAIL));
    let out = chronicle(&data, &["export", "c-other", "--tenant", "acme"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["customer"]["traits"]["first_name"], "Otto");

    // Restarted from the sealed checkpoint: still erased, the other customer still readable.
    let args = with_db(&["serve"]);
    let (_server, url, _) = start(&data, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, profile) = get(&agent, &format!("{url}/v1/customers/c-zelda"), &key);
    assert_eq!(profile["status"], "erased");
    assert_eq!(get(&agent, &format!("{url}/v1/customers/c-other"), &key).1["traits"]["first_name"], "Otto");
}

#[test]
fn a_folder_keeps_the_sealing_it_was_made_with() {
    let dir = tempfile::tempdir().unwrap();
    let (sealed, plain) = (dir.path().join("sealed"), dir.path().join("plain"));
    assert!(chronicle(&sealed, &["tenant", "create", "acme"]).status.success());
    assert!(sealed.join("keys.bin").exists(), "sealed by default");
    let refused = chronicle(&sealed, &["--seal=false", "verify"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is sealed"), "{}", String::from_utf8_lossy(&refused.stderr));

    let out = std::process::Command::new(BIN)
        .arg("--data")
        .arg(&plain)
        .args(["tenant", "create", "acme"])
        .env("CHRONICLE_SEAL", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!plain.join("keys.bin").exists(), "CHRONICLE_SEAL=0 makes an unsealed folder");
    assert!(chronicle(&plain, &["verify"]).status.success());
    assert!(!plain.join("keys.bin").exists(), "an unsealed folder stays unsealed without --seal");
    assert!(chronicle(&plain, &["--seal", "verify"]).status.success());
    assert!(plain.join("keys.bin").exists(), "--seal turns it on");
}
