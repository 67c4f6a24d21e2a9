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
    for e in all_events(&agent, &url, &api) {
        if e["type"] == "ActivityTracked" {
            let person = e["stream"].as_str().unwrap().trim_start_matches("customer-");
            let row = json!({"person": person, "name": e["data"]["event"], "t": e["event_time"]});
            lines.push_str(&row.to_string());
            lines.push('\n');
        }
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

/// Every event of the tenant, page by page from `GET /v1/events`.
fn all_events(agent: &ureq::Agent, url: &str, api: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (_, page) = get(agent, &format!("{url}/v1/events?after={after}&limit=1000"), api);
        let evs = page["events"].as_array().unwrap();
        if evs.is_empty() {
            return out;
        }
        out.extend(evs.iter().cloned());
        after = page["next"].as_u64().unwrap();
    }
}

fn lines_of(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// RFM of the UCI Online Retail sample in SQL, from the raw CSV (no mapping, no engine code):
/// invoices of known customers, cancellations (`C…`) as refunds, recency in whole days to
/// `as_of`, scores 1 + ⌊5 · (customers strictly worse) / n⌋, the groups by R and F.
const RFM_SQL: &str = r#"
import duckdb, json, sys
path, as_of = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"""CREATE TABLE raw AS SELECT * FROM read_csv('{path}', header=true, nullstr='NA',
  columns={{'InvoiceNo': 'VARCHAR', 'StockCode': 'VARCHAR', 'Description': 'VARCHAR', 'Quantity': 'BIGINT',
            'InvoiceDate': 'TIMESTAMP', 'UnitPrice': 'DOUBLE', 'CustomerID': 'VARCHAR', 'Country': 'VARCHAR'}})""")
guests = con.execute("SELECT count(*) FROM raw WHERE CustomerID IS NULL").fetchone()[0]
rows = con.execute(f"""
WITH inv AS (SELECT CustomerID AS c, InvoiceNo AS inv, min(InvoiceDate) AS t, round(sum(Quantity * UnitPrice), 6) AS v
             FROM raw WHERE CustomerID IS NOT NULL GROUP BY ALL),
refunds AS (SELECT c, round(sum(-v), 6) AS refunds FROM inv WHERE inv LIKE 'C%' GROUP BY c),
per AS (SELECT c, max(t) AS last, count(*) AS f, round(sum(v), 6) AS m FROM inv WHERE inv NOT LIKE 'C%' GROUP BY c),
rec AS (SELECT *, date_diff('second', last, TIMESTAMP '{as_of}') // 86400 AS recency FROM per),
s AS (SELECT *, 1 + (5 * (rank() OVER (ORDER BY recency DESC) - 1)) // count(*) OVER () AS r,
                1 + (5 * (rank() OVER (ORDER BY f) - 1)) // count(*) OVER () AS fs,
                1 + (5 * (rank() OVER (ORDER BY m) - 1)) // count(*) OVER () AS ms FROM rec)
SELECT s.c, recency, f, m, coalesce(refunds, 0), r, fs, ms,
  CASE WHEN r = 5 AND fs >= 4 THEN 'champions' WHEN r IN (3, 4) AND fs >= 4 THEN 'loyal'
       WHEN r >= 4 AND fs IN (2, 3) THEN 'potential_loyalists' WHEN r = 5 THEN 'new_customers'
       WHEN r = 4 THEN 'promising' WHEN r = 3 AND fs = 3 THEN 'need_attention' WHEN r = 3 THEN 'about_to_sleep'
       WHEN fs = 5 THEN 'cannot_lose' WHEN fs >= 3 THEN 'at_risk' ELSE 'hibernating' END
FROM s LEFT JOIN refunds USING (c) ORDER BY s.c
""").fetchall()
con.execute("""CREATE TABLE inv AS SELECT CustomerID AS c, InvoiceNo AS inv, min(InvoiceDate) AS t
               FROM raw WHERE CustomerID IS NOT NULL GROUP BY ALL""")
# Cohorts: signup month (the customer's first invoice, a cancellation too), converted at the
# second order (not a cancellation), cumulative per month after, up to as_of's month, 12 at most.
cohort_rows = con.execute(f"""
WITH signup AS (SELECT c, min(t) AS s FROM inv GROUP BY c),
second AS (SELECT c, t FROM (SELECT c, t, row_number() OVER (PARTITION BY c ORDER BY t) AS n FROM inv WHERE inv NOT LIKE 'C%') WHERE n = 2)
SELECT strftime(s, '%Y-%m'), date_diff('month', date_trunc('month', s), date_trunc('month', TIMESTAMP '{as_of}')) + 1,
       list(date_diff('month', date_trunc('month', s), date_trunc('month', second.t)))
FROM signup LEFT JOIN second USING (c) GROUP BY ALL ORDER BY 1
""").fetchall()
cohorts = []
for label, width, ks in cohort_rows:
    width = min(width, 12)
    cohorts.append({"cohort": label, "size": len(ks), "converted": [sum(1 for k in ks if k is not None and k <= j) for j in range(width)]})
print(json.dumps({"guests": guests, "customers": [list(r) for r in rows], "cohorts": cohorts}))
"#;

/// The online-retail example: the UCI sample imported through its mapping (an invoice's lines,
/// spread over the file, become one order; cancellations become refunds; guest lines are
/// skipped and counted, nothing else rejected; a rerun stores nothing), then RFM over HTTP, page
/// by page, equals the SQL above; the CLI gives the same offline; bad queries are refused.
#[test]
fn the_online_retail_example_imports_and_its_rfm_equals_duckdb() {
    let Some(clients) = segment_clients() else { return };
    let python = clients.join("venv/bin/python");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/online-retail");
    let (csv, mapping) = (root.join("online-retail-sample.csv"), root.join("mapping.toml"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, _) = tenant_keys(&data);
    let import = || {
        let out = chronicle(&data, &["import", csv.to_str().unwrap(), "--tenant", "acme", "--mapping", mapping.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = import();
    let script = dir.path().join("rfm.py");
    std::fs::write(&script, RFM_SQL).unwrap();
    let as_of = "2011-12-10 00:00:00";
    let out = std::process::Command::new(&python).arg(&script).arg(&csv).arg(as_of).output().unwrap();
    assert!(out.status.success(), "duckdb: {}", String::from_utf8_lossy(&out.stderr));
    let sql: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((first["lines"].as_u64(), first["rejected"].as_u64()), (Some(20_000), Some(0)), "{first}");
    assert_eq!(first["skipped"], sql["guests"], "only the guest lines are left out: {first}");
    assert_eq!(first["imported"].as_u64().unwrap() + first["skipped"].as_u64().unwrap(), 20_000);
    assert_eq!(import()["new_events"], 0, "a rerun stores nothing new");

    let (mut server, url, _) = start(&data, &["serve"]);
    let agent = agent();
    let mut engine = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let (status, page) = get(&agent, &format!("{url}/v1/analytics/rfm?as_of=2011-12-10T00:00:00Z&limit=1000{cursor}"), &api);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        engine.extend(page["customers"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let want = sql["customers"].as_array().unwrap();
    assert!(pages > 2 && want.len() > 2500, "{pages} pages, {} customers", want.len());
    assert_eq!(engine.len(), want.len());
    for (e, w) in engine.iter().zip(want) {
        let w = w.as_array().unwrap();
        let got = (e["id"].as_str().unwrap(), e["recency_days"].as_i64().unwrap(), e["frequency"].as_i64().unwrap());
        assert_eq!(got, (w[0].as_str().unwrap(), w[1].as_i64().unwrap(), w[2].as_i64().unwrap()), "{e} vs {w:?}");
        assert!((e["monetary"].as_f64().unwrap() - w[3].as_f64().unwrap()).abs() < 1e-6, "{e} vs {w:?}");
        assert!((e["refunds"].as_f64().unwrap() - w[4].as_f64().unwrap()).abs() < 1e-6, "{e} vs {w:?}");
        assert_eq!((&e["r"], &e["f"], &e["m"], &e["group"]), (&w[5], &w[6], &w[7], &w[8]), "{e} vs {w:?}");
    }
    assert!(engine.iter().any(|e| e["refunds"].as_f64().unwrap() > 0.0), "the sample has refunds");

    // One group's members only; unknown groups and bad horizons are refused.
    let (status, champions) = get(&agent, &format!("{url}/v1/analytics/rfm?as_of=2011-12-10T00:00:00Z&group=champions"), &api);
    assert_eq!(status, 200);
    let n = want.iter().filter(|w| w[8] == "champions").count();
    assert_eq!(champions["groups"]["champions"], n);
    assert!(champions["customers"].as_array().unwrap().iter().all(|c| c["group"] == "champions"));
    for bad in ["group=vip", "known_at=yesterday", "as_of=soon", "limit=x"] {
        let (status, v) = get(&agent, &format!("{url}/v1/analytics/rfm?{bad}"), &api);
        assert_eq!(status, 400, "{bad}: {v}");
    }
    // Cohorts by signup month, converted at the second order: equal the SQL too.
    let (status, cohorts) = get(&agent, &format!("{url}/v1/analytics/cohorts?as_of=2011-12-10T00:00:00Z&period=month&occurrence=2"), &api);
    assert_eq!(status, 200, "{cohorts}");
    let engine_cohorts: Vec<Value> =
        cohorts["cohorts"].as_array().unwrap().iter().map(|c| json!({"cohort": c["cohort"], "size": c["size"], "converted": c["converted"]})).collect();
    assert_eq!(Value::Array(engine_cohorts), sql["cohorts"]);
    assert!(sql["cohorts"].as_array().unwrap().len() >= 12);
    for bad in ["period=year", "periods=0", "occurrence=0", "event="] {
        let (status, v) = get(&agent, &format!("{url}/v1/analytics/cohorts?{bad}"), &api);
        assert_eq!(status, 400, "{bad}: {v}");
    }
    // Known at position 1 (nothing imported yet): no customers.
    let (_, empty) = get(&agent, &format!("{url}/v1/analytics/rfm?known_at=1"), &api);
    assert_eq!(empty["customers"].as_array().unwrap().len(), 0);
    sigterm(&mut server);

    // The CLI, offline, the same.
    let out = chronicle(&data, &["analytics", "rfm", "--tenant", "acme", "--as-of", "2011-12-10T00:00:00Z", "--limit", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offline: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offline["customers"].as_array().unwrap()[..], engine[..5]);
}

/// A mapping that names a column the file lacks refuses the whole file before anything is
/// written; a row with a bad number rejects its event whole (reported at its line) and the rest
/// goes in.
#[test]
fn a_mapping_is_checked_whole_and_a_bad_row_rejects_only_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tenant_keys(&data);
    let csv = dir.path().join("orders.csv");
    std::fs::write(&csv, "order,who,when,amount\no1,c1,2026-01-01T10:00:00Z,5\no1,c1,2026-01-01T10:00:00Z,7\no2,c2,2026-01-02T10:00:00+01:00,x\no3,,2026-01-02T10:00:00Z,1\n").unwrap();
    let mapping = dir.path().join("m.toml");
    let run = |m: &str| {
        std::fs::write(&mapping, m).unwrap();
        chronicle(&data, &["import", csv.to_str().unwrap(), "--tenant", "acme", "--mapping", mapping.to_str().unwrap()])
    };
    let out = run("customer = \"who\"\ntime = \"when\"\ngroup_by = \"order\"\n[[events]]\nevent = \"Order Completed\"\nsums = { total = \"amount * price\" }\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no column \"price\""), "{}", String::from_utf8_lossy(&out.stderr));
    let history = |who: &str| {
        let out = chronicle(&data, &["history", who, "--tenant", "acme"]);
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>()
    };
    assert!(history("c1").is_empty(), "nothing written");
    let out = run("customer = \"who\"\ntime = \"when\"\ngroup_by = \"order\"\n[[events]]\nevent = \"Order Completed\"\nproperties = { order_id = \"order\" }\nsums = { total = \"amount\" }\n");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success(), "a rejected row makes the exit code 1");
    assert_eq!((report["lines"].as_u64(), report["imported"].as_u64(), report["rejected"].as_u64(), report["skipped"].as_u64()), (Some(4), Some(2), Some(1), Some(1)), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 4") && stderr.contains("\"x\" is not a number"), "{stderr}");
    let c1 = history("c1");
    let order = c1.iter().find(|e| e["data"]["event"] == "Order Completed").expect("o1 imported");
    assert_eq!(order["data"]["properties"]["total"].as_f64(), Some(12.0), "one order of its two lines: {order}");
    assert!(history("c2").iter().all(|e| e["data"]["event"] != "Order Completed"), "o2 rejected whole");
}

/// Attribution written apart in Python (no engine code): touchpoints are events whose context
/// names a campaign source, conversions are orders valued at their total; five models over a
/// lookback window.
const ATTRIBUTION_PY: &str = r#"
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
lookback, half = float(sys.argv[2]), float(sys.argv[3])
touches, orders = {}, []
for e in events:
    if e["kind"] == "touch":
        touches.setdefault(e["person"], []).append((e["t"], e["pos"], e["channel"], e["campaign"]))
    else:
        orders.append(e)
models = {m: {"channels": {}, "campaigns": {}} for m in ["first_touch", "last_touch", "linear", "time_decay", "position_based"]}
unattributed = 0
for o in orders:
    mine = sorted(x for x in touches.get(o["person"], []) if (x[0], x[1]) <= (o["t"], o["pos"]) and o["t"] - x[0] <= lookback)
    if not mine:
        unattributed += 1
        continue
    n = len(mine)
    decay = [2 ** (-(o["t"] - x[0]) / half) for x in mine]
    ws = {
        "first_touch": [1.0] + [0.0] * (n - 1),
        "last_touch": [0.0] * (n - 1) + [1.0],
        "linear": [1.0 / n] * n,
        "time_decay": [d / sum(decay) for d in decay],
        "position_based": [1.0] if n == 1 else [0.5, 0.5] if n == 2 else [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4],
    }
    for m, w in ws.items():
        for x, wi in zip(mine, w):
            for kind, k in (("channels", x[2]), ("campaigns", x[3])):
                c = models[m][kind].setdefault(k, [0.0, 0.0])
                c[0] += wi
                c[1] += wi * o["total"]
print(json.dumps({"conversions": len(orders), "unattributed": unattributed, "models": models}))
"#;

/// Attribution over HTTP equals the Python fold above: pages with UTM context (Segment's
/// `context.campaign`) and orders, for 60 people over 40 days; bad questions are refused.
#[test]
fn attribution_equals_a_fold_written_apart() {
    let Some(clients) = segment_clients() else { return };
    let python = clients.join("venv/bin/python");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, write) = tenant_keys(&data);
    let (_server, url, _) = start(&data, &["serve"]);
    let agent = agent();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let at = |secs: u64| (t0 + chrono::Duration::seconds(secs as i64)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut rng = Rng(21);
    let mut batch = Vec::new();
    let sources = [("google", Some("brand")), ("facebook", Some("spring")), ("newsletter", Some("spring")), ("partner", None)];
    for i in 0..60u64 {
        let person = format!("p{i}");
        for k in 0..(1 + rng.next(6)) {
            let t = rng.next(40 * 86_400);
            let (src, camp) = sources[rng.next(4) as usize];
            let mut campaign = json!({"source": src, "medium": "cpc"});
            if let Some(c) = camp {
                campaign["name"] = json!(c);
            }
            batch.push(json!({"type": "page", "userId": person, "name": "Landing", "timestamp": at(t), "context": {"campaign": campaign},
                              "messageId": format!("pg-{i}-{k}")}));
        }
        for k in 0..rng.next(3) {
            let t = rng.next(40 * 86_400);
            batch.push(json!({"type": "track", "userId": person, "event": "Order Completed", "timestamp": at(t),
                              "properties": {"order_id": format!("o-{i}-{k}"), "total": 10 + rng.next(90)}, "messageId": format!("o-{i}-{k}")}));
        }
    }
    for chunk in batch.chunks(200) {
        segment(&agent, &url, &write, "/v1/batch", json!({"batch": chunk}));
    }
    // The same events, from the API, for the fold.
    let mut lines = String::new();
    for e in all_events(&agent, &url, &api) {
        let Some(person) = e["stream"].as_str().unwrap().strip_prefix("customer-") else { continue };
        let t = chrono::DateTime::parse_from_rfc3339(e["event_time"].as_str().unwrap()).unwrap().timestamp() as f64;
        let pos = e["position"].as_u64().unwrap();
        let c = &e["data"]["context"]["campaign"];
        if c.is_object() {
            let row = json!({"kind": "touch", "person": person, "t": t, "pos": pos, "channel": c["source"], "campaign": c.get("name").cloned().unwrap_or(json!("(none)"))});
            lines.push_str(&format!("{row}\n"));
        }
        if e["data"]["event"] == "Order Completed" {
            let row = json!({"kind": "order", "person": person, "t": t, "pos": pos, "total": e["data"]["properties"]["total"]});
            lines.push_str(&format!("{row}\n"));
        }
    }
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, lines).unwrap();
    let script = dir.path().join("attribution.py");
    std::fs::write(&script, ATTRIBUTION_PY).unwrap();
    let out = std::process::Command::new(&python).arg(&script).arg(&file).arg((14 * 86_400).to_string()).arg((3 * 86_400).to_string()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();

    let (status, got) = send(&agent, "POST", &format!("{url}/v1/analytics/attribution"), &api, &json!({"lookback": "14d", "half_life": "3d"}));
    assert_eq!(status, 200, "{got}");
    assert_eq!((&got["conversions"], &got["unattributed"]["conversions"].as_f64().map(|x| x as u64)), (&want["conversions"], &want["unattributed"].as_u64()));
    assert!(want["conversions"].as_u64().unwrap() > 30 && want["unattributed"].as_u64().unwrap() > 0, "{want}");
    for (model, kinds) in want["models"].as_object().unwrap() {
        for kind in ["channels", "campaigns"] {
            let w = kinds[kind].as_object().unwrap();
            let g = got["models"][model][kind].as_object().unwrap();
            assert_eq!(g.len(), w.len(), "{model} {kind}: {g:?} vs {w:?}");
            for (k, pair) in w {
                let (conv, rev) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
                assert!((g[k]["conversions"].as_f64().unwrap() - conv).abs() < 1e-5, "{model} {kind} {k}: {} vs {conv}", g[k]);
                assert!((g[k]["revenue"].as_f64().unwrap() - rev).abs() < 1e-4, "{model} {kind} {k}: {} vs {rev}", g[k]);
            }
        }
    }
    // Re-engagement over the same events, by a fold written here: at least 3 tracked events
    // (the pages and orders above), none in the 7 days before day 45.
    let as_of = t0 + chrono::Duration::days(45);
    let mut per: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
    for l in std::fs::read_to_string(&file).unwrap().lines() {
        let e: Value = serde_json::from_str(l).unwrap();
        let p = per.entry(e["person"].as_str().unwrap().to_owned()).or_insert((0, f64::MIN));
        p.0 += 1;
        p.1 = p.1.max(e["t"].as_f64().unwrap());
    }
    let mut want: Vec<(String, u64)> =
        per.into_iter().filter(|(_, (n, last))| *n >= 3 && as_of.timestamp() as f64 - last >= 7.0 * 86_400.0).map(|(p, (n, _))| (p, n)).collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let (status, got) = get(&agent, &format!("{url}/v1/analytics/reengagement?min_events=3&silent_days=7&limit=1000&as_of={}", as_of.to_rfc3339().replace('+', "%2B")), &api);
    assert_eq!(status, 200, "{got}");
    let got: Vec<(String, u64)> = got["candidates"].as_array().unwrap().iter().map(|c| (c["id"].as_str().unwrap().to_owned(), c["events"].as_u64().unwrap())).collect();
    assert_eq!(got, want);
    assert!(!want.is_empty() && want.len() < 60, "the data exercises it: {}", want.len());
    assert_eq!(get(&agent, &format!("{url}/v1/analytics/reengagement?min_events=0"), &api).0, 400);
    for bad in [json!({"lookback": "soon"}), json!({"models": ["last_click"]}), json!({"half_life": "0d"}), json!({"conversion": ""})] {
        let (status, v) = send(&agent, "POST", &format!("{url}/v1/analytics/attribution"), &api, &bad);
        assert_eq!(status, 400, "{bad}: {v}");
    }
}

/// `chronicle segment put|show|members` offline: a definition checked whole (a bad one is a
/// clear error and saves nothing), saved once, shown; the members it gains once served.
#[test]
fn segments_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, _) = tenant_keys(&data);
    let file = dir.path().join("pro.json");
    std::fs::write(&file, r#"{"conditions": [{"trait": "plan", "equals": "pro"}, {"inactive_for": "never"}]}"#).unwrap();
    let out = chronicle(&data, &["segment", "put", "pro", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("conditions[1]"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!chronicle(&data, &["segment", "show", "pro", "--tenant", "acme"]).status.success(), "nothing saved");
    std::fs::write(&file, r#"{"conditions": [{"trait": "plan", "equals": "pro"}]}"#).unwrap();
    let out = chronicle(&data, &["segment", "put", "pro", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["changed"], true);
    // Served: the engine keeps the members.
    let (mut server, url, _) = start(&data, &["serve"]);
    let agent = agent();
    let (status, v) = send(&agent, "POST", &format!("{url}/v1/customers"), &api, &json!({"id": "c1", "traits": {"plan": "pro"}}));
    assert_eq!(status, 201, "{v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while get(&agent, &format!("{url}/v1/segments/pro"), &api).1["members"] != 1 {
        assert!(std::time::Instant::now() < deadline, "c1 enters");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    sigterm(&mut server);
    let out = chronicle(&data, &["segment", "members", "pro", "--tenant", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], "c1");
    let out = chronicle(&data, &["segment", "members", "pro", "--tenant", "acme", "--as-of", "2000-01-01T00:00:00Z"]);
    assert!(out.status.success() && out.stdout.is_empty(), "nobody then");
}
