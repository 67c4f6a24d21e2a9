//! Helpers the end-to-end tests share: running the real binary, a started server, an HTTP
//! agent, and where `scripts/test` installed the outside tools the tests drive.
#![allow(dead_code)]

use serde_json::Value;
use chronicle_store::contract::allow_skip;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_chronicle");

pub fn chronicle(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("--data").arg(data).args(args).env("CHRONICLE_LOG", "warn").output().expect("run chronicle")
}

/// A started server; killed if a failing test leaves it running.
pub struct Server(pub Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start `chronicle <args>` and read its stdout up to the line containing `marker`; returns
/// the child, its URL and the lines read.
pub fn start_until(data: &Path, args: &[&str], marker: &str) -> (Server, String, Vec<String>) {
    start_logging(data, args, marker, None)
}

/// Like [`start_until`], with the server's log (at debug level) appended to `log`.
pub fn start_logging(data: &Path, args: &[&str], marker: &str, log: Option<&Path>) -> (Server, String, Vec<String>) {
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(p).expect("log file")),
        None => Stdio::null(),
    };
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("CHRONICLE_LOG", if log.is_some() { "debug" } else { "warn" })
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start chronicle");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(i) = line.find("http://127.0.0.1:") {
            // The origin only (the demo shows the web UI's URL, `…/ui/`, first).
            url.get_or_insert_with(|| {
                let u = line[i..].split_whitespace().next().unwrap();
                let end = u["http://".len()..].find('/').map_or(u.len(), |j| j + "http://".len());
                u[..end].to_owned()
            });
        }
        let done = line.contains(marker);
        seen.push(line);
        if done {
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (Server(child), url.expect("a URL before the marker"), seen);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("chronicle exited before printing {marker:?}: {seen:?}");
}

pub fn start(data: &Path, args: &[&str]) -> (Server, String, Vec<String>) {
    start_until(data, args, "listening on")
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

pub fn get(agent: &ureq::Agent, url: &str, key: &str) -> (u16, Value) {
    let mut r = agent.get(url).header("authorization", format!("Bearer {key}")).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null))
}

pub fn sigterm(child: &mut Child) {
    let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server did not stop on SIGTERM");
}

/// Where `scripts/test` installed the official Segment clients (a Python venv and an npm
/// prefix). Missing: a failure, unless `CHRONICLE_TEST_ALLOW_SKIP=1` makes it a printed skip.
pub fn segment_clients() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CHRONICLE_E2E_CLIENTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-clients"));
    let ready = dir.join("venv/bin/python").exists() && dir.join("node/node_modules/@segment/analytics-node").exists();
    if ready {
        return Some(dir);
    }
    assert!(
        allow_skip(),
        "the Segment client tests need the clients (scripts/test installs them into {}; CHRONICLE_TEST_ALLOW_SKIP=1 skips)",
        dir.display()
    );
    eprintln!(
        "SKIPPED: the official Segment clients are not installed in {} (scripts/test installs them)",
        dir.display()
    );
    None
}


/// Runs `script` with the Python of `scripts/test`'s venv (under `clients`), `input` on its stdin.
pub fn python(clients: &Path, script: &str, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(clients.join("venv/bin/python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A real SMTP server (aiosmtpd, installed by `scripts/test`) writing what it receives into a
/// Maildir. Missing: a failure, unless `CHRONICLE_TEST_ALLOW_SKIP=1` makes it a printed skip.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub maildir: std::path::PathBuf,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    pub fn start(dir: &Path) -> Option<SmtpSink> {
        SmtpSink::start_with(dir, &[])
    }

    /// With aiosmtpd's options `args` (`--tlscert C --tlskey K` for STARTTLS, which it then
    /// requires; `--smtpscert C --smtpskey K` for SMTPS).
    pub fn start_with(dir: &Path, args: &[&str]) -> Option<SmtpSink> {
        let tools = std::env::var_os("CHRONICLE_E2E_CLIENTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-clients"));
        let python = tools.join("venv/bin/python");
        let ready = python.exists()
            && Command::new(&python).args(["-c", "import aiosmtpd"]).status().is_ok_and(|s| s.success());
        if !ready {
            assert!(allow_skip(), "the SMTP tests need aiosmtpd (scripts/test installs it; CHRONICLE_TEST_ALLOW_SKIP=1 skips)");
            eprintln!("SKIPPED: aiosmtpd is not installed in {} (scripts/test installs it)", tools.display());
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let maildir = dir.join(format!("maildir-{port}"));
        let child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(args)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(SmtpSink { child, port, maildir })
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// The messages to `to`.
    pub fn to(&self, to: &str) -> Vec<String> {
        let line = format!("\nTo: {to}\n");
        self.messages().into_iter().filter(|m| format!("\n{m}").contains(&line)).collect()
    }

    /// Wait until `to` has received `n` messages (or the timeout); returns them.
    pub fn wait_for(&self, to: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.to(to);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// POST JSON with the API key; (status, body).
pub fn send(agent: &ureq::Agent, method: &str, url: &str, key: &str, body: &Value) -> (u16, Value) {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let mut r = agent.run(req).unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null))
}

/// Every file under `dir` that contains one of `needles`, with the needle (none when `dir` does
/// not exist: a node over PostgreSQL makes no folder).
pub fn scan(dir: &Path, needles: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    found.push((p.display().to_string(), n.to_string()));
                }
            }
        }
    }
    found
}

pub fn segment(agent: &ureq::Agent, url: &str, write_key: &str, path: &str, body: serde_json::Value) {
    let mut body = body;
    body["writeKey"] = serde_json::json!(write_key);
    let r = agent.post(format!("{url}{path}")).header("content-type", "application/json").send(body.to_string()).unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
}

/// A PostgreSQL schema of its own for a test (`CHRONICLE_TEST_DATABASE_URL`, else the machine's
/// server), dropped when the test ends. `None` (with the reason printed) when there is no
/// server and skipping is allowed (`CHRONICLE_TEST_ALLOW_SKIP=1`); otherwise its absence fails the test.
pub struct PgSchema {
    pub url: String,
    pub schema: String,
    /// The master key file the nodes over it share (a node over PostgreSQL makes none).
    pub master: std::path::PathBuf,
}

/// A query counting the rows of table `keys` whose slot a sealed value (`enc:v2:<slot>:`) of
/// these streams' events names.
pub fn slots_named_by(tenant: &str, streams: &[&str]) -> String {
    let streams = streams.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
    format!(
        "SELECT count(*) FROM keys WHERE slot IN (SELECT (regexp_matches(data, 'enc:v2:([0-9]+):', 'g'))[1]::bigint \
         FROM events WHERE tenant = '{tenant}' AND stream IN ({streams}))"
    )
}

impl PgSchema {
    pub fn new() -> Option<PgSchema> {
        let url = std::env::var("CHRONICLE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("e2e_{}_{}", std::process::id(), unique_nanos());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match rt.block_on(chronicle_store::postgres::PgStore::connect_in(&url, &schema)) {
            Ok(_) => {
                let master = std::env::temp_dir().join(format!("chronicle-{schema}.key"));
                std::fs::write(&master, "1:SGVyZSBiZSB0aGUgY2x1c3RlcidzIG1hc3RlciBrZXk=").unwrap();
                Some(PgSchema { url, schema, master })
            }
            Err(e) if allow_skip() => {
                eprintln!("skipped: no PostgreSQL at {url} ({e})");
                None
            }
            Err(e) => panic!("PostgreSQL at {url} is required (CHRONICLE_TEST_ALLOW_SKIP=1 skips): {e}"),
        }
    }

    /// The one number a query in the schema gives (a count, say).
    pub fn scalar(&self, sql: &str) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            client.batch_execute(&format!("SET search_path TO {}", self.schema)).await.unwrap();
            client.query_one(sql, &[]).await.unwrap().get(0)
        })
    }

    /// Every row of every table in the schema, as text.
    /// The first column of the first row of `sql`, if it has a row.
    pub fn first<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> Option<T> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            client.batch_execute(&format!("SET search_path TO {}", self.schema)).await.unwrap();
            client.query_opt(sql, &[]).await.unwrap().map(|r| r.get(0))
        })
    }

    pub fn dump(&self) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let tables = client
                .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1", &[&self.schema])
                .await
                .unwrap();
            assert!(tables.len() >= 4, "the schema's tables: events, leases, settings, schema_migrations");
            let mut out = String::new();
            for t in tables {
                let table: String = t.get(0);
                let sql = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM \"{}\".\"{table}\" t", self.schema);
                let rows: String = client.query_one(&sql, &[]).await.unwrap().get(0);
                out.push_str(&rows);
            }
            out
        })
    }

    /// The storage flags that select it.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--database-url".into(),
            self.url.clone(),
            "--database-schema".into(),
            self.schema.clone(),
            "--master-key-file".into(),
            self.master.display().to_string(),
        ]
    }
}

fn unique_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _ = rt.block_on(chronicle_store::postgres::PgStore::drop_schema(&self.url, &self.schema));
        let _ = std::fs::remove_file(&self.master);
    }
}

/// Debian's chromium, which the browser tests drive with playwright-core.
pub fn chromium() -> std::path::PathBuf {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(std::path::PathBuf::from).find(|p| p.exists());
    found.expect("the browser tests need Debian's chromium (scripts/test installs it)")
}

/// `chronicle tenant create acme` in `data`: its (API key, write key).
pub fn tenant_keys(data: &Path) -> (String, String) {
    let out = chronicle(data, &["tenant", "create", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["api_key"].as_str().unwrap().to_owned(), v["write_key"].as_str().unwrap().to_owned())
}
