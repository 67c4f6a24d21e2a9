//! TLS on every outbound connection, end to end on the real binary (issue 19, item 1): campaign
//! mail through an SMTP server that requires STARTTLS and through SMTPS (aiosmtpd), a webhook to
//! an HTTPS receiver that verifies it with the `standardwebhooks` library, PostgreSQL with
//! `sslmode=require` and `verify-full` — all with certificates from a private CA made here,
//! trusted through `--tls-ca-file` or `sslrootcert`; without it, the same servers are refused
//! with a TLS reason.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A private CA, and a server certificate it signed for `localhost` and 127.0.0.1.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("Chronicle test CA {name}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let out = Pki { ca: dir.join(format!("{name}-ca.pem")), cert: dir.join(format!("{name}-cert.pem")), key: dir.join(format!("{name}-key.pem")) };
    std::fs::write(&out.ca, ca_cert.pem()).unwrap();
    std::fs::write(&out.cert, cert.pem()).unwrap();
    std::fs::write(&out.key, key.serialize_pem()).unwrap();
    out
}

struct Tenant {
    api: String,
    write: String,
}

fn tenant(data: &Path) -> Tenant {
    let out = chronicle(data, &["tenant", "create", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Tenant { api: v["api_key"].as_str().unwrap().into(), write: v["write_key"].as_str().unwrap().into() }
}

fn put(agent: &ureq::Agent, url: &str, t: &Tenant, path: &str, body: Value) {
    let (status, v) = send(agent, "PUT", &format!("{url}{path}"), &t.api, &body);
    assert_eq!(status, 200, "{path}: {v}");
}

fn register(agent: &ureq::Agent, url: &str, t: &Tenant, id: &str, email: &str) {
    let body = json!({"id": id, "email": email, "traits": {"first_name": "Ada"},
        "consents": [{"channel": "email", "purpose": "marketing", "granted": true, "source": "signup-form"}]});
    let (status, v) = send(agent, "POST", &format!("{url}/v1/customers"), &t.api, &body);
    assert_eq!(status, 201, "{v}");
}

fn track(agent: &ureq::Agent, url: &str, t: &Tenant, user: &str, event: &str) {
    segment(agent, url, &t.write, "/v1/track", json!({"userId": user, "event": event, "messageId": format!("{user}-{event}")}));
}

/// The customer's message outcome, once there is one: (type, data).
fn outcome(agent: &ureq::Agent, url: &str, t: &Tenant, id: &str) -> (String, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = get(agent, &format!("{url}/v1/customers/{id}/timeline?limit=1000"), &t.api);
        assert_eq!(status, 200, "{v}");
        let found = v["events"].as_array().unwrap().iter().find_map(|e| {
            let ty = e["type"].as_str().unwrap();
            matches!(ty, "MessageSent" | "MessageDeadLettered").then(|| (ty.to_owned(), e["data"].clone()))
        });
        if let Some(f) = found {
            return f;
        }
        assert!(Instant::now() < deadline, "no outcome for {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails fast: two tries, 20 ms apart.
const QUICK: [&str; 4] = ["--max-attempts", "2", "--retry-base-ms", "20"];

#[test]
fn campaign_mail_goes_through_starttls_and_smtps_and_an_untrusted_certificate_dead_letters_with_a_tls_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "mail");
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    let Some(starttls) = SmtpSink::start_with(dir.path(), &["--tlscert", cert, "--tlskey", key]) else { return };
    let smtps = SmtpSink::start_with(dir.path(), &["--smtpscert", cert, "--smtpskey", key]).expect("aiosmtpd is here");
    let data = dir.path().join("data");
    let t = tenant(&data);
    let agent = agent();
    let ca = pki.ca.to_str().unwrap();
    let cases = [
        ("starttls", format!("smtp://localhost:{}?tls=required", starttls.port), Some(ca), &starttls),
        ("smtps", format!("smtps://localhost:{}", smtps.port), Some(ca), &smtps),
        ("untrusted", format!("smtps://localhost:{}", smtps.port), None, &smtps),
    ];
    for (i, (name, smtp_url, ca, sink)) in cases.into_iter().enumerate() {
        let mut args = vec!["serve", "--smtp-url", &smtp_url];
        args.extend(QUICK);
        if let Some(ca) = ca {
            args.extend(["--tls-ca-file", ca]);
        }
        let (_server, url, _) = start(&data, &args);
        if i == 0 {
            put(&agent, &url, &t, "/v1/templates/promo", json!({"subject": "News", "body": "<p>News</p>"}));
            let c = json!({"trigger": {"event": "Promo Clicked"}, "steps": [{"send": {"channel": "email", "purpose": "marketing", "template": "promo"}}]});
            put(&agent, &url, &t, "/v1/campaigns/promo", c);
        }
        let email = format!("{name}@example.com");
        register(&agent, &url, &t, name, &email);
        track(&agent, &url, &t, name, "Promo Clicked");
        let (ty, data) = outcome(&agent, &url, &t, name);
        if ca.is_some() {
            assert_eq!(ty, "MessageSent", "{name}: {data}");
            assert_eq!(sink.wait_for(&email, 1, Duration::from_secs(10)).len(), 1, "{name}: the server received it");
        } else {
            assert_eq!(ty, "MessageDeadLettered", "{name}: {data}");
            let error = data["error"].as_str().unwrap();
            assert!(error.contains("TLS") && error.contains("invalid peer certificate"), "a TLS reason: {error}");
            assert!(sink.to(&email).is_empty(), "nothing was sent to an untrusted server");
        }
    }
    // A server without STARTTLS, when the URL requires it: refused, nothing sent in the clear.
    let plain = SmtpSink::start(dir.path()).unwrap();
    let smtp_url = format!("smtp://localhost:{}?tls=required", plain.port);
    let mut args = vec!["serve", "--smtp-url", &smtp_url, "--tls-ca-file", ca];
    args.extend(QUICK);
    let (_server, url, _) = start(&data, &args);
    register(&agent, &url, &t, "clear", "clear@example.com");
    track(&agent, &url, &t, "clear", "Promo Clicked");
    let (ty, data) = outcome(&agent, &url, &t, "clear");
    assert_eq!(ty, "MessageDeadLettered", "{data}");
    assert!(data["error"].as_str().unwrap().contains("STARTTLS"), "{data}");
    assert!(plain.messages().is_empty());
}

/// An HTTPS server that checks each webhook with the Standard Webhooks library and prints
/// `verified ID` or `refused WHY` per request.
struct HttpsReceiver {
    child: Child,
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RECEIVER: &str = r#"
import http.server, ssl, sys
from standardwebhooks.webhooks import Webhook
cert, key, secret = sys.argv[1:4]
hook = Webhook(secret)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['content-length'])).decode()
        try:
            hook.verify(body, {k: self.headers[k] for k in ('webhook-id', 'webhook-timestamp', 'webhook-signature')})
            print('verified', self.headers['webhook-id'], flush=True)
            code = 204
        except Exception as e:
            print('refused', repr(e), flush=True)
            code = 400
        self.send_response(code)
        self.send_header('content-length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print('port', server.server_address[1], flush=True)
server.serve_forever()
"#;

fn https_receiver(clients: &Path, pki: &Pki, secret: &str) -> HttpsReceiver {
    let mut child = Command::new(clients.join("venv/bin/python"))
        .args(["-c", RECEIVER])
        .args([pki.cert.to_str().unwrap(), pki.key.to_str().unwrap(), secret])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the HTTPS receiver");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the receiver's port").unwrap();
    let port = first.strip_prefix("port ").unwrap().parse().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| s.lock().unwrap().push(l)));
    HttpsReceiver { child, port, seen }
}

#[test]
fn a_webhook_over_https_verifies_at_the_receiver_and_an_untrusted_certificate_dead_letters_with_a_tls_reason() {
    let Some(clients) = segment_clients() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "hook");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = https_receiver(&clients, &pki, secret);
    let data = dir.path().join("data");
    let t = tenant(&data);
    let agent = agent();
    let hook = format!("https://localhost:{}/hook", receiver.port);
    let ca = pki.ca.to_str().unwrap();
    for (i, (name, ca)) in [("trusted", Some(ca)), ("untrusted", None)].into_iter().enumerate() {
        let mut args = vec!["serve", "--allow-private-webhooks", "--webhook-secret", secret];
        args.extend(QUICK);
        if let Some(ca) = ca {
            args.extend(["--tls-ca-file", ca]);
        }
        let (_server, url, _) = start(&data, &args);
        if i == 0 {
            put(&agent, &url, &t, "/v1/campaigns/alert", json!({"trigger": {"event": "Demo Requested"}, "steps": [{"webhook": {"url": hook}}]}));
        }
        register(&agent, &url, &t, name, &format!("{name}@example.com"));
        track(&agent, &url, &t, name, "Demo Requested");
        let (ty, data) = outcome(&agent, &url, &t, name);
        if ca.is_some() {
            assert_eq!(ty, "MessageSent", "{data}");
            let seen = receiver.seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 1, "one delivery: {seen:?}");
            assert!(seen[0].starts_with("verified "), "the library verified it: {seen:?}");
        } else {
            assert_eq!(ty, "MessageDeadLettered", "{data}");
            let error = data["error"].as_str().unwrap();
            assert!(error.starts_with("webhook: TLS: invalid peer certificate"), "a TLS reason: {error}");
            assert_eq!(receiver.seen.lock().unwrap().len(), 1, "no request got through");
        }
    }
}

/// The local server's certificate is not signed by this CA.
#[test]
fn nodes_over_postgres_with_sslmode_require_follow_each_other_and_verify_full_against_the_wrong_ca_refuses_to_start() {
    let Some(db) = PgSchema::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?sslmode=require", db.url);
    let master = dir.path().join("master.key");
    std::fs::write(&master, "1:SGVyZSBiZSB0aGUgY2x1c3RlcidzIG1hc3RlciBrZXk=").unwrap();
    let storage = || {
        vec![
            "--database-url".to_owned(),
            url.clone(),
            "--database-schema".to_owned(),
            db.schema.clone(),
            "--master-key-file".to_owned(),
            master.to_str().unwrap().to_owned(),
        ]
    };
    let args = |cmd: &[&str]| -> Vec<String> { cmd.iter().map(|s| s.to_string()).chain(storage()).collect() };
    let a = args(&["tenant", "create", "acme"]);
    let out = chronicle(&dir.path().join("a"), &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();
    let serve = |node: &str| {
        let a = args(&["serve"]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        start(&dir.path().join(node), &a)
    };
    let (_n1, u1, _) = serve("a");
    let (_n2, u2, _) = serve("b");
    let agent = agent();
    let body = json!({"id": "c1", "email": "ada@example.com", "traits": {"first_name": "Ada"}});
    let (status, v) = send(&agent, "POST", &format!("{u1}/v1/customers"), &key, &body);
    assert_eq!(status, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&agent, &format!("{u2}/v1/customers/c1"), &key).0 != 200 {
        assert!(Instant::now() < deadline, "node b never saw node a's write");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every connection of both nodes is encrypted.
    let app = format!("chronicle_{}", db.schema);
    let plain = db.scalar(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = '{app}' AND NOT s.ssl"
    ));
    let encrypted = db.scalar(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = '{app}' AND s.ssl"
    ));
    assert_eq!(plain, 0, "no connection in the clear");
    assert!(encrypted >= 2, "both nodes' connections are TLS ({encrypted})");

    // verify-full against a CA that did not sign the server's certificate: refused at start.
    let wrong = pki(dir.path(), "wrong");
    let bad = format!("{}?sslmode=verify-full&sslrootcert={}", db.url, wrong.ca.display());
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &bad, "--database-schema", &db.schema])
        .args(["--master-key-file", master.to_str().unwrap(), "--data", dir.path().join("c").to_str().unwrap()])
        .env("CHRONICLE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "start-up is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid peer certificate") && stderr.contains("UnknownIssuer"), "a clear reason: {stderr}");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &format!("{}?sslmode=sometimes", db.url)])
        .args(["--data", dir.path().join("d").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sslmode \"sometimes\""), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 19, item 1 (optional part): `serve --tls-cert --tls-key` serves HTTPS itself; a client
/// trusting the CA gets answers, plain HTTP to the port gets none.
#[test]
fn serve_answers_https_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "serve");
    let data = dir.path().join("data");
    let t = tenant(&data);
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert", pki.cert.to_str().unwrap(), "--tls-key", pki.key.to_str().unwrap()])
        .env("CHRONICLE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.by_ref().map_while(Result::ok).find(|l| l.contains("listening on")).expect("a listening line");
    let _server = Server(child);
    let url = line[line.find("https://").expect("an https URL")..].trim().to_owned();
    let roots = std::sync::Arc::new({
        let mut r = rustls::RootCertStore::empty();
        r.add_parsable_certificates(chronicle_tls::read_pem(&pki.ca).unwrap());
        r
    });
    let tls = chronicle_tls::client_config(chronicle_tls::Verify::Full, roots).unwrap();
    let client = reqwest::Client::builder().use_preconfigured_tls(tls).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = client.get(format!("{url}/v1/customers")).bearer_auth(&t.api).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(body["customers"].is_array(), "{body}");
        let plain = url.replacen("https://", "http://", 1);
        assert!(client.get(format!("{plain}/health")).send().await.is_err(), "no plain HTTP on the HTTPS port");
        // The web UI's session cookie is marked Secure under HTTPS (issue 20).
        let r = client
            .post(format!("{url}/ui/sign-in/key"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("api_key={}", t.api))
            .send()
            .await
            .unwrap();
        let cookie = r.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
        let cookie = cookie.expect("the sign-in sets the session cookie (redirects are not followed)");
        assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    });
}
