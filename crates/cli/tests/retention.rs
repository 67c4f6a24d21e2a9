//! Retention end to end on the real binary: a policy set through the API, `chronicle compact`
//! removing the expired events from the data folder (their bytes gone, a tombstone keeping
//! their place), `verify` passing after it, the removal on record, and a redelivery of an
//! expired message not storing it again. Run with and without crypto-shredding.

mod common;

use common::*;
use serde_json::{json, Value};

const OLD: &str = "ancient-visit-4242";
const FRESH: &str = "fresh-visit-4343";

fn compact(data: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec!["compact"];
    args.extend_from_slice(extra);
    let out = chronicle(data, &args);
    assert!(out.status.success(), "compact: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn verify_passes(data: &std::path::Path) {
    let out = chronicle(data, &["verify"]);
    assert!(out.status.success(), "verify: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn expired_events_leave_the_store(seal: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let create = [if seal { "--seal" } else { "--seal=false" }, "tenant", "create", "acme"];
    let out = chronicle(&data, &create);
    assert!(out.status.success());
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, write) = (t["api_key"].as_str().unwrap().to_owned(), t["write_key"].as_str().unwrap().to_owned());
    let (mut server, url, _) = start(&data, &["serve"]);
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

    // A dry run reports and changes nothing.
    let dry = compact(&data, &["--dry-run"]);
    assert_eq!(dry["expired"], 3, "{dry}");
    assert_eq!(dry["tenants"]["acme"]["expired"]["ActivityTracked"], 3, "{dry}");
    // (Sealed, the payloads are ciphertext: the text is never on disk to look for.)
    assert_eq!(scan(&data, &[OLD]).is_empty(), seal, "a dry run removed data");

    let done = compact(&data, &[]);
    assert_eq!(done["expired"], 3, "{done}");
    assert_eq!(done["head"], head_before + 1, "the record follows the log: {done}");
    if !seal {
        // Sealed payloads are ciphertext anyway; in the clear the expired text must be gone.
        assert!(scan(&data, &[FRESH]).iter().any(|(f, _)| f.ends_with("events.log")), "the kept event is still there");
    }
    assert_eq!(scan(&data, &[OLD]), vec![], "an expired event's data is still in the data folder");
    verify_passes(&data);

    let (mut server, url, _) = start(&data, &["serve"]);
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
    segment(&agent, &url, &write, "/v1/track", old_track);
    let (_, health) = get(&agent, &format!("{url}/healthz"), &key);
    assert_eq!(health["head"].as_u64().unwrap(), head_before + 1);
    sigterm(&mut server);

    // A second run finds nothing more to remove and writes nothing.
    let again = compact(&data, &[]);
    assert_eq!(again["expired"], 0, "{again}");
    verify_passes(&data);
}

#[test]
fn compaction_removes_expired_events_and_verify_passes() {
    expired_events_leave_the_store(false);
}

#[test]
fn compaction_removes_expired_events_with_crypto_shredding_on() {
    expired_events_leave_the_store(true);
}
