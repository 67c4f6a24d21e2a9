//! Retention end to end on the real binary: a policy set through the API, `chronicle compact`
//! removing the expired events from the data folder (their bytes gone, a tombstone keeping
//! their place), `verify` passing after it, the removal on record, and a redelivery of an
//! expired message not storing it again. Run with and without crypto-shredding.

mod common;

use common::*;
use serde_json::{json, Value};

const OLD: &str = "ancient-visit-4242";
const FRESH: &str = "fresh-visit-4343";

/// `args` with the storage flags of `db`, if any.
fn with_db<'a>(db: &'a [String], args: &[&'a str]) -> Vec<&'a str> {
    args.iter().copied().chain(db.iter().map(String::as_str)).collect()
}

fn compact(data: &std::path::Path, db: &[String], extra: &[&str]) -> Value {
    let mut args = vec!["compact"];
    args.extend_from_slice(extra);
    let out = chronicle(data, &with_db(db, &args));
    assert!(out.status.success(), "compact: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn verify_passes(data: &std::path::Path, db: &[String]) {
    let out = chronicle(data, &with_db(db, &["verify"]));
    assert!(out.status.success(), "verify: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Where the expired text is looked for: the data folder, and every table of the schema.
fn stored_text(data: &std::path::Path, pg: Option<&PgSchema>, needle: &str) -> bool {
    !scan(data, &[needle]).is_empty() || pg.is_some_and(|db| db.dump().contains(needle))
}

fn expired_events_leave_the_store(seal: bool, pg: Option<&PgSchema>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Several nodes over one database run unsealed.
    assert!(!(seal && pg.is_some()), "over PostgreSQL this test runs unsealed");
    let db: Vec<String> = pg.map(|db| [db.args(), vec!["--seal=false".into()]].concat()).unwrap_or_default();
    let create = [if seal { "--seal" } else { "--seal=false" }, "tenant", "create", "acme"];
    let out = chronicle(&data, &with_db(&db, &create));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, write) = (t["api_key"].as_str().unwrap().to_owned(), t["write_key"].as_str().unwrap().to_owned());
    let (mut server, url, _) = start(&data, &with_db(&db, &["serve"]));
    let agent = agent();

    let customer = json!({"id": "c-1", "email": "ret@example.com", "consents": [{"channel": "email", "purpose": "marketing", "granted": true, "source": "form"}]});
    assert_eq!(send(&agent, "POST", &format!("{url}/v1/customers"), &key, &customer).0, 201);
    let long_ago = (chrono::Utc::now() - chrono::Duration::days(400)).to_rfc3339();
    let old_track = json!({"userId": "c-1", "event": "Pricing Viewed", "properties": {"marker": OLD}, "timestamp": long_ago, "messageId": "old-1"});
    segment(&agent, &url, &write, "/v1/track", old_track.clone());
    segment(&agent, &url, &write, "/v1/page", json!({"anonymousId": "anon-1", "name": OLD, "timestamp": long_ago, "messageId": "old-2"}));
    // Someone whose only activity expires: the views' "last active" must follow the compaction.
    segment(&agent, &url, &write, "/v1/track", json!({"userId": "c-2", "event": "Signed In", "timestamp": long_ago, "messageId": "old-3"}));
    segment(&agent, &url, &write, "/v1/track", json!({"userId": "c-1", "event": "Docs Viewed", "properties": {"marker": FRESH}, "messageId": "new-1"}));

    // Policies: only history may expire; the API says what is kept.
    let put = |ty: &str, body: Value| send(&agent, "PUT", &format!("{url}/v1/retention/{ty}"), &key, &body);
    let (status, body) = put("ConsentGranted", json!({"keep_days": 30}));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("not_expirable")), "{body}");
    assert_eq!(put("ActivityTracked", json!({"keep_days": 0})).0, 400);
    assert_eq!(put("ActivityTracked", json!({"days": 365})).0, 400);
    let (status, body) = put("ActivityTracked", json!({"keep_days": 365}));
    assert_eq!(status, 200, "{body}");
    let (_, reader) = send(&agent, "POST", &format!("{url}/v1/api-keys"), &key, &json!({"role": "reader"}));
    let reader = reader["key"].as_str().unwrap().to_owned();
    assert_eq!(send(&agent, "PUT", &format!("{url}/v1/retention/AuditRecorded"), &reader, &json!({"keep_days": 1})).0, 403);
    let (status, v) = get(&agent, &format!("{url}/v1/retention"), &reader);
    assert_eq!((status, &v["policies"]), (200, &json!({"ActivityTracked": 365})));
    let (_, health) = get(&agent, &format!("{url}/healthz"), &key);
    let head_before = health["head"].as_u64().unwrap();

    sigterm(&mut server);

    // Over PostgreSQL another node, with views of its own saved before the compaction.
    let other = dir.path().join("other");
    if pg.is_some() {
        let (mut node, other_url, _) = start(&other, &with_db(&db, &["serve"]));
        let (_, tl) = get(&agent, &format!("{other_url}/v1/customers/c-1/timeline?limit=100"), &key);
        assert!(tl.to_string().contains(OLD), "the other node reads the old visit: {tl}");
        // No compaction while a node has the schema open.
        let out = chronicle(&data, &with_db(&db, &["compact"]));
        assert!(!out.status.success(), "a compaction ran beside a serving node");
        assert!(String::from_utf8_lossy(&out.stderr).contains("open"), "{}", String::from_utf8_lossy(&out.stderr));
        sigterm(&mut node);
    }

    // A dry run reports and changes nothing.
    let dry = compact(&data, &db, &["--dry-run"]);
    assert_eq!(dry["expired"], 3, "{dry}");
    assert_eq!(dry["tenants"]["acme"]["expired"]["ActivityTracked"], 3, "{dry}");
    // (Sealed, the payloads are ciphertext: the text is never stored to look for.)
    assert_eq!(!stored_text(&data, pg, OLD), seal, "a dry run removed data");

    let done = compact(&data, &db, &[]);
    assert_eq!(done["expired"], 3, "{done}");
    // (Over PostgreSQL the other node's reads were audited after `head_before` was read.)
    assert_eq!(done["head"], done["through_position"].as_u64().unwrap() + 1, "the record follows the log: {done}");
    if pg.is_none() {
        assert_eq!(done["head"], head_before + 1, "{done}");
    }
    if !seal {
        // Sealed payloads are ciphertext anyway; in the clear the expired text must be gone.
        assert!(stored_text(&data, pg, FRESH), "the kept event is still there");
    }
    assert!(!stored_text(&data, pg, OLD), "an expired event's data is still stored");
    verify_passes(&data, &db);

    if pg.is_some() {
        // The other node's saved views held the expired events (the last activity of c-2): it
        // builds them again, so they agree with a replay of the compacted log.
        verify_passes(&other, &db);
        let (mut node, other_url, _) = start(&other, &with_db(&db, &["serve"]));
        let (_, tl) = get(&agent, &format!("{other_url}/v1/customers/c-1/timeline?limit=100"), &key);
        assert!(!tl.to_string().contains(OLD) && tl.to_string().contains(FRESH), "the other node's views: {tl}");
        sigterm(&mut node);
        assert!(scan(&other, &[OLD]).is_empty(), "the other node's folder still holds the expired visit");
        verify_passes(&other, &db);
    }

    let (mut server, url, _) = start(&data, &with_db(&db, &["serve"]));
    let (_, tl) = get(&agent, &format!("{url}/v1/customers/c-1/timeline?limit=100"), &key);
    let types: Vec<&str> = tl["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(!types.contains(&"EventExpired"), "tombstones stay out of the timeline: {types:?}");
    assert_eq!(types.iter().filter(|t| **t == "ActivityTracked").count(), 1, "{types:?}");
    assert!(tl.to_string().contains(FRESH));

    // On record: the compaction in the API and in the log, tombstones in the log.
    let (_, v) = get(&agent, &format!("{url}/v1/retention"), &key);
    assert_eq!(v["compactions"][0]["expired"], json!({"ActivityTracked": 3}), "{v}");
    let (_, events) = get(&agent, &format!("{url}/v1/events?limit=1000"), &key);
    let events = events["events"].as_array().unwrap();
    let applied: Vec<&Value> = events.iter().filter(|e| e["type"] == "RetentionApplied").collect();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["stream"], "retention");
    let tombstones: Vec<&Value> = events.iter().filter(|e| e["type"] == "EventExpired").collect();
    assert_eq!(tombstones.len(), 3);
    assert!(tombstones.iter().all(|e| e["data"] == json!({"type": "ActivityTracked"})), "{tombstones:?}");
    // The raw streams API cannot forge a record.
    let forged = json!({"expected_version": "any", "events": [{"type": "RetentionApplied", "data": {}}]});
    assert_eq!(send(&agent, "POST", &format!("{url}/v1/streams/retention"), &key, &forged).0, 422);

    // The producer redelivers the expired message: still a duplicate, nothing stored again.
    let (_, health) = get(&agent, &format!("{url}/healthz"), &key);
    let head_now = health["head"].as_u64().unwrap();
    if pg.is_none() {
        assert_eq!(head_now, head_before + 1, "nothing but the record since");
    }
    segment(&agent, &url, &write, "/v1/track", old_track);
    let (_, health) = get(&agent, &format!("{url}/healthz"), &key);
    assert_eq!(health["head"].as_u64().unwrap(), head_now);
    sigterm(&mut server);

    // A second run finds nothing more to remove and writes nothing.
    let again = compact(&data, &db, &[]);
    assert_eq!(again["expired"], 0, "{again}");
    verify_passes(&data, &db);
}

#[test]
fn compaction_removes_expired_events_and_verify_passes() {
    expired_events_leave_the_store(false, None);
}

#[test]
fn compaction_removes_expired_events_with_crypto_shredding_on() {
    expired_events_leave_the_store(true, None);
}

#[test]
fn compaction_on_postgresql_waits_for_every_node_to_stop_and_the_others_build_their_views_again() {
    let Some(db) = PgSchema::new() else { return };
    expired_events_leave_the_store(false, Some(&db));
}
