//! Several `chronicle serve` nodes over one PostgreSQL database (a schema of its own per test):
//! a write on one is read on the other, a consent revocation on one is honoured by the other's
//! very next check, racing writers on both get one event per version, and a node killed with
//! SIGKILL under load loses no acknowledged event while the survivor takes over its campaigns
//! and sends nothing twice. The nodes seal personal data with keys shared in the database
//! (one master key for all), and an erasure on one node shreds the keys every node holds.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use chronicle_app::automation::lease::SHARDS;

struct Cluster {
    _dir: tempfile::TempDir,
    db: PgSchema,
    key: String,
    folders: Vec<std::path::PathBuf>,
    /// The master key every node is given (a file).
    master: std::path::PathBuf,
}

/// Tenant `acme` in a fresh schema, and a data folder per node.
fn cluster(nodes: usize) -> Option<Cluster> {
    let db = PgSchema::new()?;
    let dir = tempfile::tempdir().unwrap();
    let folders: Vec<_> = (0..nodes).map(|i| dir.path().join(format!("node{i}"))).collect();
    let master = dir.path().join("master.key");
    std::fs::write(&master, "1:SGVyZSBiZSB0aGUgY2x1c3RlcidzIG1hc3RlciBrZXk=").unwrap();
    let mut c = Cluster { _dir: dir, db, key: String::new(), folders, master };
    let out = chronicle(&c.folders[0], &c.args(&["tenant", "create", "acme"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();
    Some(c)
}

impl Cluster {
    /// `args`, then the database and the master key.
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--database-url", &self.db.url, "--database-schema", &self.db.schema]);
        all.extend(["--master-key-file", self.master.to_str().unwrap()]);
        all
    }

    /// The name of the key the shared views' checkpoint is sealed with (its second line).
    fn checkpoint_key(&self) -> Option<String> {
        self.db
            .first::<String>("SELECT split_part(encode(substring(body FROM 1 FOR 256), 'escape'), E'\\n', 2) FROM checkpoints WHERE name = 'views'")
            .filter(|k| !k.is_empty())
    }

    fn serve(&self, node: usize, extra: &[&str]) -> (Server, String) {
        let mut args = self.args(&["serve"]);
        args.extend(extra);
        let (server, url, _) = start(&self.folders[node], &args);
        (server, url)
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn register(agent: &ureq::Agent, url: &str, key: &str, id: &str, email: &str) {
    let body = json!({"id": id, "email": email, "traits": {"first_name": "Ada"},
        "consents": [{"channel": "email", "purpose": "marketing", "granted": true, "source": "signup-form"}]});
    let (status, v) = send(agent, "POST", &format!("{url}/v1/customers"), key, &body);
    assert_eq!(status, 201, "{v}");
}

#[test]
fn two_nodes_read_each_others_writes_honour_each_others_revocations_and_race_one_event_per_version() {
    let Some(c) = cluster(2) else { return };
    let (_a, a) = c.serve(0, &[]);
    let (_b, b) = c.serve(1, &[]);
    let agent = agent();
    let check = |url: &str, id: &str| get(&agent, &format!("{url}/v1/consent-check?customer={id}&channel=email&purpose=marketing"), &c.key);

    // A write on one node is read on the other, at once.
    for i in 0..20 {
        let id = format!("c{i}");
        let (on, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        register(&agent, on, &c.key, &id, &format!("{id}@example.com"));
        let (status, v) = get(&agent, &format!("{other}/v1/customers/{id}"), &c.key);
        assert_eq!((status, v["email"].as_str()), (200, Some(format!("{id}@example.com").as_str())), "{v}");
        assert_eq!(check(other, &id).1["allowed"], true);
        // A revocation on one node: the other's very next check says no.
        let revoke = json!({"channel": "email", "purpose": "marketing", "granted": false, "source": "preference-center"});
        let (status, v) = send(&agent, "POST", &format!("{other}/v1/customers/{id}/consents"), &c.key, &revoke);
        assert_eq!(status, 201, "{v}");
        let (status, v) = check(on, &id);
        assert_eq!((status, &v["allowed"]), (200, &json!(false)), "the revocation on the other node is honoured: {v}");
    }

    // Racing writers, two per node, on one stream: each appends at the version it knows.
    let won = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (url, key, won) = (if w % 2 == 0 { a.clone() } else { b.clone() }, c.key.clone(), won.clone());
            std::thread::spawn(move || {
                let agent = common::agent();
                let mut known = 0u64;
                let mut conflicts = 0;
                for i in 0..40 {
                    let expected = if known == 0 { json!("no_stream") } else { json!(known) };
                    let id = uuid::Uuid::new_v4().to_string();
                    let body = json!({"expected_version": expected, "events": [{"id": id, "type": "DealNoted", "data": {"w": w, "i": i}}]});
                    let (status, v) = send(&agent, "POST", &format!("{url}/v1/streams/ticket-1"), &key, &body);
                    match status {
                        200 => {
                            known = v["last_version"].as_u64().unwrap_or(known + 1);
                            won.lock().unwrap().push(id);
                        }
                        409 => {
                            conflicts += 1;
                            known = v["error"]["actual_version"].as_u64().expect("a conflict names the actual version");
                        }
                        s => panic!("unexpected {s}: {v}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let won = won.lock().unwrap().clone();
    assert!(conflicts > 0, "the writers did race");
    for url in [&a, &b] {
        let (status, v) = get(&agent, &format!("{url}/v1/streams/ticket-1?limit=1000"), &c.key);
        assert_eq!(status, 200);
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), won.len(), "one event per acknowledged append, read on either node");
        let versions: Vec<u64> = events.iter().map(|e| e["version"].as_u64().unwrap()).collect();
        assert_eq!(versions, (1..=won.len() as u64).collect::<Vec<_>>());
        let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let mut acked: Vec<&str> = won.iter().map(String::as_str).collect();
        ids.sort();
        acked.sort();
        assert_eq!(ids, acked);
    }
}

/// Keys another node made are fetched (a profile written on one node reads whole on the other);
/// an erasure on one node shreds the keys for every node: the other forgets its copies, the
/// database holds none, and neither shows the person again. A node without the cluster's master
/// key, or unsealed, is refused.
#[test]
fn an_erasure_on_one_node_shreds_the_keys_that_every_node_holds() {
    let Some(c) = cluster(2) else { return };
    let (_a, a) = c.serve(0, &[]);
    let (mut b_server, b) = c.serve(1, &[]);
    let agent = agent();
    register(&agent, &a, &c.key, "c-zelda", "zelda.quux@example.com");
    register(&agent, &b, &c.key, "c-otto", "otto.stays@example.com");
    let note = json!({"text": "Zelda called from +15550001234"});
    assert_eq!(send(&agent, "POST", &format!("{a}/v1/customers/c-zelda/notes"), &c.key, &note).0, 200);
    for url in [&a, &b] {
        assert_eq!(get(&agent, &format!("{url}/v1/customers/c-zelda"), &c.key).1["email"], "zelda.quux@example.com");
        assert_eq!(get(&agent, &format!("{url}/v1/customers/c-otto"), &c.key).1["email"], "otto.stays@example.com");
        let (_, all) = get(&agent, &format!("{url}/v1/events?limit=1000"), &c.key);
        assert!(all.to_string().contains("+15550001234"), "the note opens on every node: {all}");
    }
    assert!(!c.db.dump().contains("zelda.quux"), "the database holds the e-mail sealed only");
    let streams = ["customer-c-zelda"];
    assert!(c.db.scalar(&slots_named_by("acme", &streams)) >= 1);
    // The views are checkpointed once for every node, in the database (here at B's clean stop
    // when B keeps the checkpoint, else at A's next one), the person in them.
    sigterm(&mut b_server);
    wait_until("the shared checkpoint", Duration::from_secs(15), || c.checkpoint_key().is_some());
    let b_key = c.checkpoint_key().expect("the shared checkpoint is sealed");
    let (restarted, b) = c.serve(1, &[]);
    b_server = restarted;
    let key_rows = |name: &str| {
        let digest = chronicle_privacy::keystore::owner_digest("_system", name);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        c.db.scalar(&format!("SELECT count(*) FROM keys WHERE owner = '\\x{hex}'::bytea"))
    };
    assert_eq!(key_rows(&b_key), 1, "the checkpoint's key is in the database");

    let (status, erased) = send(&agent, "DELETE", &format!("{a}/v1/customers/c-zelda"), &c.key, &json!({}));
    assert_eq!(status, 200, "{erased}");
    assert!(erased["keys_destroyed"].as_u64() >= Some(1), "{erased}");
    assert_eq!(c.db.scalar(&slots_named_by("acme", &streams)), 0, "no key of theirs is left in the database");
    // The other node held the key (it opened the note): it forgets it when told.
    wait_until("node B forgetting the erased person's key", Duration::from_secs(5), || {
        !get(&agent, &format!("{b}/v1/events?limit=1000"), &c.key).1.to_string().contains("+15550001234")
    });
    // And the node that keeps the checkpoint, having applied the erasure, rewrites it under a
    // new key and destroys the one that sealed the person's data.
    wait_until("the checkpoint's key rotated", Duration::from_secs(5), || key_rows(&b_key) == 0);
    let rotated = c.checkpoint_key().expect("still sealed");
    assert_ne!(rotated, b_key);
    for url in [&a, &b] {
        let (_, profile) = get(&agent, &format!("{url}/v1/customers/c-zelda"), &c.key);
        assert_eq!(profile["status"], "erased", "{profile}");
        let (_, all) = get(&agent, &format!("{url}/v1/events?limit=1000"), &c.key);
        let text = all.to_string();
        assert!(!text.contains("zelda.quux") && !text.contains("+15550001234"), "{text}");
        assert_eq!(get(&agent, &format!("{url}/v1/customers/c-otto"), &c.key).1["email"], "otto.stays@example.com");
    }

    // Restarted, node B builds nothing back: the keys are gone from the database.
    sigterm(&mut b_server);
    let (mut b_server, b) = c.serve(1, &[]);
    assert_eq!(get(&agent, &format!("{b}/v1/customers/c-zelda"), &c.key).1["status"], "erased");
    assert!(!get(&agent, &format!("{b}/v1/events?limit=1000"), &c.key).1.to_string().contains("+15550001234"));

    // An erasure while node B is down: A keeps the checkpoint now (B's lease ran out or was
    // given up) and rotates its key; B starts from it and shows the person erased.
    register(&agent, &a, &c.key, "c-ivy", "ivy@example.com");
    assert_eq!(get(&agent, &format!("{b}/v1/customers/c-ivy"), &c.key).1["email"], "ivy@example.com");
    sigterm(&mut b_server);
    let head = c.db.scalar("SELECT max(position) FROM events");
    wait_until("a checkpoint that holds c-ivy", Duration::from_secs(20), || {
        c.db.scalar(&format!("SELECT count(*) FROM checkpoints WHERE position >= {head}")) == 1
    });
    let before = c.checkpoint_key().expect("sealed");
    assert_eq!(key_rows(&before), 1);
    assert_eq!(send(&agent, "DELETE", &format!("{a}/v1/customers/c-ivy"), &c.key, &json!({})).0, 200);
    wait_until("node A rotating the key of a checkpoint made before the erasure", Duration::from_secs(5), || key_rows(&before) == 0);
    let (_b, b) = c.serve(1, &[]);
    assert_eq!(get(&agent, &format!("{b}/v1/customers/c-ivy"), &c.key).1["status"], "erased");

    // A third node with a master key of its own, or unsealed, cannot join.
    let other = c._dir.path().join("node-other");
    let mut args = c.args(&["verify"]);
    let wrong = c._dir.path().join("wrong.key");
    std::fs::write(&wrong, "1:QSB3cm9uZyBtYXN0ZXIga2V5LCBub3QgdGhlIG9uZSE=").unwrap();
    let n = args.len();
    args[n - 1] = wrong.to_str().unwrap();
    let out = chronicle(&other, &args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("same master key"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = chronicle(&other, &c.args(&["verify", "--seal=false"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("events are sealed"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The nodes' views are checkpointed once, by the node that holds the checkpoint's lease; when
/// that node dies, the survivor takes the lease over and checkpoints in its place.
#[test]
fn one_node_checkpoints_the_views_and_a_survivor_takes_it_over() {
    let Some(c) = cluster(3) else { return };
    let (first, first_url) = c.serve(0, &[]);
    let (second, second_url) = c.serve(1, &[]);
    let agent = agent();
    let written = |url: &str| -> u64 {
        let metrics = agent.get(format!("{url}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
        let line = metrics.lines().find(|l| l.starts_with("chronicle_checkpoints_total ")).expect("the checkpoint counter");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    register(&agent, &first_url, &c.key, "c-1", "one@example.com");
    // The first checkpoint comes within one period (10 s) of the lease being taken.
    wait_until("a shared checkpoint", Duration::from_secs(15), || written(&first_url) + written(&second_url) > 0);
    let ((mut keeper, keeper_url), (_other, other_url)) =
        if written(&first_url) > 0 { ((first, first_url), (second, second_url)) } else { ((second, second_url), (first, first_url)) };
    // Another period: still only the keeper writes.
    std::thread::sleep(Duration::from_secs(11));
    assert!(written(&keeper_url) >= 2, "the keeper checkpoints every period");
    assert_eq!(written(&other_url), 0, "the other node leaves the checkpoint to the keeper");

    keeper.kill().unwrap();
    keeper.wait().unwrap();
    register(&agent, &other_url, &c.key, "c-2", "two@example.com");
    let head = c.db.scalar("SELECT max(position) FROM events");
    let killed = Instant::now();
    // The lease runs out (6 s) and the survivor writes at its next period (10 s).
    wait_until("the survivor checkpointing", Duration::from_secs(25), || written(&other_url) > 0);
    assert!(c.db.scalar(&format!("SELECT count(*) FROM checkpoints WHERE position >= {head}")) == 1);
    eprintln!("the survivor checkpointed {:?} after the kill", killed.elapsed());
    // A node that joins starts from that checkpoint and reads both customers; views an older
    // build kept in its folder are removed (erasures no longer reach them).
    std::fs::create_dir_all(&c.folders[2]).unwrap();
    std::fs::write(c.folders[2].join("projections.json"), "{\"stale\": \"ada@example.com\"}").unwrap();
    let (_third, third) = c.serve(2, &[]);
    assert!(!c.folders[2].join("projections.json").exists(), "the folder's old views are gone");
    for id in ["c-1", "c-2"] {
        assert_eq!(get(&agent, &format!("{third}/v1/customers/{id}"), &c.key).0, 200);
    }
}

#[test]
fn sigkill_of_the_lease_holder_under_load_loses_nothing_and_the_survivor_sends_the_rest_once() {
    let Some(c) = cluster(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(smtp) = SmtpSink::start(dir.path()) else { return };
    let smtp_url = smtp.url();
    let mail = ["--smtp-url", smtp_url.as_str()];
    // The campaign work is shared out by tenant: the nodes hold half the shards each, and the
    // one holding acme's is the one killed below ("a"); the other survives ("b").
    let (first, first_url) = c.serve(0, &mail);
    let (second, second_url) = c.serve(1, &mail);
    let agent = agent();
    let shards = |url: &str| -> Vec<usize> {
        let metrics = agent.get(format!("{url}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
        (0..SHARDS).filter(|s| metrics.contains(&format!("chronicle_automation_shard_held{{shard=\"{s}\"}} 1"))).collect()
    };
    wait_until("the shards shared out between the nodes", Duration::from_secs(15), || {
        let (x, y) = (shards(&first_url), shards(&second_url));
        x.len() == SHARDS / 2 && y.len() == SHARDS / 2 && x.iter().all(|s| !y.contains(s))
    });
    let acme = chronicle_app::automation::lease::shard_of("acme");
    let ((mut a_server, a), (_b_server, b)) =
        if shards(&first_url).contains(&acme) { ((first, first_url), (second, second_url)) } else { ((second, second_url), (first, first_url)) };
    let (status, v) = send(&agent, "PUT", &format!("{a}/v1/templates/nudge"), &c.key, &json!({"subject": "Hello {{ traits.first_name }}", "body": "<p>Hi</p>"}));
    assert_eq!(status, 200, "{v}");
    let campaign = json!({"trigger": "CustomerRegistered", "steps": [
        {"send": {"channel": "email", "purpose": "marketing", "template": "nudge"}},
        {"wait": "4s"},
        {"send": {"channel": "email", "purpose": "marketing", "template": "nudge"}}]});
    let (status, v) = send(&agent, "PUT", &format!("{a}/v1/campaigns/nudge"), &c.key, &campaign);
    assert_eq!(status, 200, "{v}");

    // Customers registered on both nodes; the lease holder sends their first mail.
    for i in 0..6 {
        register(&agent, if i % 2 == 0 { &a } else { &b }, &c.key, &format!("c{i}"), &format!("c{i}@example.com"));
    }
    for i in 0..6 {
        assert_eq!(smtp.wait_for(&format!("c{i}@example.com"), 1, Duration::from_secs(20)).len(), 1, "c{i}'s first mail");
    }

    // Load on the doomed node, then SIGKILL it while the second mails wait.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u32)
        .map(|n| {
            let (url, key, acked, stop) = (a.clone(), c.key.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent = common::agent();
                for seq in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = uuid::Uuid::from_u128(((n as u128 + 1) << 64) | seq as u128).to_string();
                    let body = json!({"expected_version": "any", "events": [{"id": id, "type": "LoadTested", "data": {"n": n, "seq": seq}}]});
                    match send_raw(&agent, &format!("{url}/v1/streams/load-{n}"), &key, &body) {
                        Some(200) => acked.lock().unwrap().push(id),
                        Some(s) => panic!("unexpected status {s}"),
                        None => break, // the node is gone
                    }
                }
            })
        })
        .collect();
    wait_until("load on the first node", Duration::from_secs(20), || acked.lock().unwrap().len() >= 300);
    a_server.kill().unwrap();
    a_server.wait().unwrap();
    let killed_at = Instant::now();
    for i in 0..6 {
        assert_eq!(smtp.to(&format!("c{i}@example.com")).len(), 1, "c{i}'s second mail was still waiting at the kill");
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }

    // Every acknowledged event is on the survivor.
    let acked = acked.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    for n in 0..4 {
        let mut after = 0;
        loop {
            let (status, v) = get(&agent, &format!("{b}/v1/streams/load-{n}?after={after}&limit=1000"), &c.key);
            if status == 404 {
                break;
            }
            let events = v["events"].as_array().unwrap().clone();
            if events.is_empty() {
                break;
            }
            for e in &events {
                assert!(seen.insert(e["id"].as_str().unwrap().to_owned()), "an event stored twice: {e}");
            }
            after = events.last().unwrap()["version"].as_u64().unwrap();
        }
    }
    let lost: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(lost.is_empty(), "{} acknowledged events lost, e.g. {:?}", lost.len(), lost.first());

    // The survivor takes the lease over and sends each second mail, once.
    for i in 0..6 {
        let got = smtp.wait_for(&format!("c{i}@example.com"), 2, Duration::from_secs(30));
        assert_eq!(got.len(), 2, "c{i}'s second mail, from the survivor");
    }
    eprintln!("second mails all out {:?} after the SIGKILL", killed_at.elapsed());
    // And its campaigns keep running for new customers: it holds every shard now.
    assert_eq!(shards(&b).len(), SHARDS, "the survivor took the dead node's share");
    register(&agent, &b, &c.key, "late", "late@example.com");
    assert_eq!(smtp.wait_for("late@example.com", 1, Duration::from_secs(20)).len(), 1);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..6 {
        assert_eq!(smtp.to(&format!("c{i}@example.com")).len(), 2, "nothing sent twice to c{i}");
    }
}

/// POST JSON; the status, or `None` when the connection failed (the node is gone).
fn send_raw(agent: &ureq::Agent, url: &str, key: &str, body: &Value) -> Option<u16> {
    agent
        .post(url)
        .header("authorization", format!("Bearer {key}"))
        .send_json(body)
        .ok()
        .map(|r| r.status().as_u16())
}

/// Issue 19, item 4: a node over PostgreSQL is stateless. Two nodes started from one directory
/// without `--data` both serve (there is no lock to contend for) and nothing is created in that
/// directory; over a sealed database a node without the master key is refused at start, saying
/// how to give it.
#[test]
fn nodes_over_postgres_keep_nothing_locally_and_need_the_shared_master_key() {
    let Some(c) = cluster(1) else { return };
    let cwd = tempfile::tempdir().unwrap();
    let spawn = |args: &[&str]| {
        let mut child = std::process::Command::new(BIN)
            .current_dir(cwd.path())
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("CHRONICLE_LOG", "warn")
            .env_remove("CHRONICLE_DATA")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let line = lines.by_ref().map_while(Result::ok).find(|l| l.contains("listening on")).unwrap_or_default();
        std::thread::spawn(move || lines.for_each(drop));
        (Server(child), line)
    };
    let (_a, la) = spawn(&c.args(&["serve"]));
    let (_b, lb) = spawn(&c.args(&["serve"]));
    let url = |line: &str| line[line.find("http://").expect("a listening line")..].trim().to_owned();
    let (ua, ub) = (url(&la), url(&lb));
    let agent = agent();
    register(&agent, &ua, &c.key, "c1", "ada@example.com");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&agent, &format!("{ub}/v1/customers/c1"), &c.key).0 != 200 {
        assert!(Instant::now() < deadline, "the second node never saw the first's write");
        std::thread::sleep(Duration::from_millis(50));
    }
    let made: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(made.is_empty(), "nothing is created where the nodes started: {made:?}");

    // Without the master key, over the sealed database: refused, and still nothing made.
    let out = std::process::Command::new(BIN)
        .current_dir(cwd.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &c.db.url, "--database-schema", &c.db.schema])
        .env_remove("CHRONICLE_DATA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--master-key-file"), "says how to give the key: {stderr}");
    assert!(std::fs::read_dir(cwd.path()).unwrap().next().is_none(), "a refused node makes nothing either");
}

/// A web UI session made on one node is honoured by another at once, and a sign-out on the
/// other ends it on the first (sessions are events in the shared log).
#[test]
fn a_web_session_made_on_one_node_is_honoured_by_another_and_ended_everywhere() {
    let Some(c) = cluster(2) else { return };
    let mut args = c.args(&["user", "create", "--tenant", "acme", "--email", "ada@example.com", "--name", "Ada"]);
    args.extend(["--role", "writer"]);
    let out = std::process::Command::new(BIN)
        .arg("--data")
        .arg(&c.folders[0])
        .args(&args)
        .env("CHRONICLE_USER_PASSWORD", "correct horse battery staple")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_a, a) = c.serve(0, &[]);
    let (_b, b) = c.serve(1, &[]);
    let browser: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let res = browser
        .post(&format!("{a}/ui/sign-in"))
        .send_form([("tenant", "acme"), ("email", "ada@example.com"), ("password", "correct horse battery staple")])
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let page = |url: &str| {
        let mut r = browser.get(&format!("{url}/ui/contacts")).header("cookie", &cookie).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
    };
    // In a browser: signed in on A, the same browser is signed in on B (cookies are per host,
    // not per port, as a load balancer in front of both would make them).
    let clients = segment_clients().expect("the browser tools (scripts/test installs them)");
    let driver = r#"
const { chromium } = require('playwright-core');
const [a, b, executablePath] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  await page.goto(a + '/ui/sign-in');
  await page.fill('#tenant', 'acme');
  await page.fill('#email', 'ada@example.com');
  await page.fill('#password', 'correct horse battery staple');
  await Promise.all([page.waitForURL('**/ui/contacts**'), page.click('#sign-in button[type=submit]')]);
  await page.goto(b + '/ui/contacts');
  const who = await page.locator('.who').innerText().catch(() => '');
  console.log(JSON.stringify({ url: page.url(), who }));
  await browser.close();
})().catch(e => { console.log(JSON.stringify({ fatal: String(e) })); process.exit(1); });
"#;
    let script = c.folders[0].parent().unwrap().join("nodes-driver.js");
    std::fs::write(&script, driver).unwrap();
    let out = std::process::Command::new("node")
        .arg(&script)
        .args([&a, &b])
        .arg(chromium())
        .env("NODE_PATH", clients.join("node/node_modules"))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(report["url"].as_str().unwrap_or_default().starts_with(&format!("{b}/ui/contacts")), "{report}");
    assert!(report["who"].as_str().unwrap_or_default().contains("Ada"), "signed in on B: {report}");

    // At once on the other node: its request layer syncs with the database first.
    let (status, html) = page(&b);
    assert_eq!(status, 200, "node B honours node A's session: {html}");
    let token = html.split("name=\"_csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
    let out = browser.post(&format!("{b}/ui/sign-out")).header("cookie", &cookie).send_form([("_csrf", token.as_str())]).unwrap();
    assert_eq!(out.status().as_u16(), 303);
    assert_eq!(page(&a).0, 303, "signed out on B, the session is over on A too");
}
