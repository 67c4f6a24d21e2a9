//! Funnels against an independent computation (issue 21, first slice): people identified with a
//! plan and tracking a purchase path through the real binary's Segment ingest; the funnel
//! `POST /v1/analytics/funnels` answers — counts per step and a breakdown by the plan each person
//! had when they entered — equals SQL run by DuckDB (PyPI) over the same events, sharing no code
//! with the engine. A backfilled event (old event time, learnt later) changes the answer known
//! now and leaves the answer known before it unchanged; the CLI gives the same answer offline.

mod common;

use common::*;
use serde_json::{json, Value};

const STEPS: [&str; 3] = ["Product Viewed", "Product Added", "Order Completed"];

/// The funnel in SQL: entry at each person's first step-1 event; each next step the first
/// matching event after the previous one, within two days of the entry; the plan as it was at
/// the entry (an ASOF join on the plan's history).
const DUCKDB: &str = r#"
import duckdb, json, sys
events, plans = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"CREATE TABLE e AS SELECT person, name, CAST(t AS TIMESTAMP) AS t FROM read_json_auto('{events}')")
con.execute(f"CREATE TABLE p AS SELECT person, plan, CAST(t AS TIMESTAMP) AS t FROM read_json_auto('{plans}')")
con.execute("""
CREATE TABLE f AS
WITH s1 AS (SELECT person, min(t) AS t1 FROM e WHERE name = 'Product Viewed' GROUP BY person),
s2 AS (SELECT s1.person, s1.t1, min(e.t) AS t2 FROM s1 JOIN e ON e.person = s1.person AND e.name = 'Product Added'
       AND e.t > s1.t1 AND e.t <= s1.t1 + INTERVAL 2 DAY GROUP BY ALL),
s3 AS (SELECT s2.person, min(e.t) AS t3 FROM s2 JOIN e ON e.person = s2.person AND e.name = 'Order Completed'
       AND e.t > s2.t2 AND e.t <= s2.t1 + INTERVAL 2 DAY GROUP BY ALL)
SELECT s1.person, s1.t1, s2.t2, s3.t3 FROM s1 LEFT JOIN s2 USING (person) LEFT JOIN s3 USING (person)
""")
steps = con.execute("SELECT count(t1), count(t2), count(t3) FROM f").fetchone()
rows = con.execute("""
SELECT coalesce(p.plan, '(none)') AS plan, count(f.t1), count(f.t2), count(f.t3)
FROM f ASOF LEFT JOIN p ON f.person = p.person AND f.t1 >= p.t GROUP BY ALL ORDER BY 1
""").fetchall()
print(json.dumps({"steps": list(steps), "breakdown": {r[0]: [r[1], r[2], r[3]] for r in rows}}))
"#;

/// A deterministic stream of numbers (the data is the same on every run).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn funnels_equal_duckdb_and_a_backfill_changes_only_the_answer_known_after_it() {
    let Some(clients) = segment_clients() else { return };
    let python = clients.join("venv/bin/python");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, write) = tenant_keys(&data);
    let (mut server, url, _) = start(&data, &["serve"]);
    let agent = agent();

    // 120 people over 20 days: an identify with a plan, some change plan later, and a path
    // through the steps at random gaps (some past the two-day window, some out of order).
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let at = |secs: u64| (t0 + chrono::Duration::seconds(secs as i64)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut rng = Rng(7);
    let mut batch = Vec::new();
    let mut plans = Vec::new();
    for i in 0..120u64 {
        let person = format!("u{i}");
        let plan = ["free", "pro", "team"][rng.next(3) as usize];
        let start = i * 10_000;
        batch.push(json!({"type": "identify", "userId": person, "traits": {"plan": plan}, "timestamp": at(start), "messageId": format!("id-{i}")}));
        plans.push(json!({"person": person, "plan": plan, "t": at(start)}));
        let mut t = start + 60 + rng.next(600);
        for (k, step) in STEPS.iter().enumerate() {
            if rng.next(10) < 2 {
                break;
            }
            // Now and then a step before the first (never counted) or a long gap.
            let gap = if rng.next(8) == 0 { 3 * 86_400 } else { 60 + rng.next(40_000) };
            batch.push(json!({"type": "track", "userId": person, "event": step, "properties": {"step": k},
                              "timestamp": at(t), "messageId": format!("t-{i}-{k}")}));
            t += gap;
        }
        if rng.next(4) == 0 {
            // The plan changes after the entry: the breakdown must not see it.
            batch.push(json!({"type": "identify", "userId": person, "traits": {"plan": "enterprise"}, "timestamp": at(t + 10),
                              "messageId": format!("id2-{i}")}));
            plans.push(json!({"person": person, "plan": "enterprise", "t": at(t + 10)}));
        }
    }
    for chunk in batch.chunks(200) {
        segment(&agent, &url, &write, "/v1/batch", json!({"batch": chunk}));
    }
    let spec = json!({"steps": STEPS.iter().map(|s| json!({"event": s})).collect::<Vec<_>>(), "window": "2d", "breakdown": {"trait": "plan"}});
    let funnel = |spec: &Value| {
        let (status, v) = send(&agent, "POST", &format!("{url}/v1/analytics/funnels"), &api, spec);
        assert_eq!(status, 200, "{v}");
        v
    };
    let answer = funnel(&spec);

    // The same events, from the API, for DuckDB.
    let mut lines = String::new();
    let mut after = 0;
    loop {
        let (_, page) = get(&agent, &format!("{url}/v1/events?after={after}&limit=1000"), &api);
        let evs = page["events"].as_array().unwrap();
        if evs.is_empty() {
            break;
        }
        for e in evs {
            if e["type"] == "ActivityTracked" {
                let person = e["stream"].as_str().unwrap().trim_start_matches("customer-");
                let row = json!({"person": person, "name": e["data"]["event"], "t": e["event_time"]});
                lines.push_str(&row.to_string());
                lines.push('\n');
            }
        }
        after = page["next"].as_u64().unwrap();
    }
    let events_file = dir.path().join("events.ndjson");
    let plans_file = dir.path().join("plans.ndjson");
    std::fs::write(&events_file, lines).unwrap();
    std::fs::write(&plans_file, plans.iter().map(|p| p.to_string() + "\n").collect::<String>()).unwrap();
    let script = dir.path().join("funnel.py");
    std::fs::write(&script, DUCKDB).unwrap();
    let out = std::process::Command::new(&python).arg(&script).arg(&events_file).arg(&plans_file).output().unwrap();
    assert!(out.status.success(), "duckdb: {}", String::from_utf8_lossy(&out.stderr));
    let sql: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = |steps: &Value| steps.as_array().unwrap().iter().map(|s| s["count"].as_u64().unwrap()).collect::<Vec<_>>();
    let want: Vec<u64> = sql["steps"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(counts(&answer["steps"]), want, "engine {answer}\nduckdb {sql}");
    assert!(want[0] > 50 && want[2] > 10 && want[2] < want[0], "the data exercises the funnel: {want:?}");
    let engine_breakdown: serde_json::Map<String, Value> =
        answer["breakdown"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), json!(counts(v)))).collect();
    assert_eq!(Value::Object(engine_breakdown), sql["breakdown"], "breakdown by the plan at entry");
    assert!(answer["breakdown"].get("enterprise").is_none(), "nobody entered on the later plan");

    // A backfill: learnt now, happened long ago — completes someone's funnel.
    let position = answer["position"].as_u64().unwrap();
    let who = (0..120).find(|i| {
        let p = format!("u{i}");
        !lines_of(&events_file).iter().any(|l| l["person"] == p.as_str() && l["name"] == "Product Viewed")
    });
    let who = who.map(|i| format!("u{i}")).unwrap_or_else(|| "late".into());
    let start = 5_000_000;
    for (k, step) in STEPS.iter().enumerate() {
        let msg = json!({"type": "track", "userId": who, "event": step, "timestamp": at(start + k as u64 * 60), "messageId": format!("late-{k}")});
        segment(&agent, &url, &write, "/v1/track", msg);
    }
    let mut before = spec.clone();
    before["known_at"] = json!(position);
    let then = funnel(&before);
    assert_eq!(counts(&then["steps"]), counts(&answer["steps"]), "known before the backfill: unchanged");
    assert_eq!(then["position"], position);
    let now = funnel(&spec);
    let (a, b) = (counts(&answer["steps"]), counts(&now["steps"]));
    assert_eq!(b, a.iter().map(|c| c + 1).collect::<Vec<_>>(), "known now: one more person through every step");
    assert!(now["position"].as_u64().unwrap() > position);

    // The CLI, offline, answers the same.
    sigterm(&mut server);
    let file = dir.path().join("funnel.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = chronicle(&data, &["analytics", "funnel", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offline: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts(&offline["steps"]), b);
    // Bad input: a clear error, exit non-zero.
    std::fs::write(&file, r#"{"steps": [], "window": "2d"}"#).unwrap();
    let out = chronicle(&data, &["analytics", "funnel", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 20 steps"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn lines_of(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
