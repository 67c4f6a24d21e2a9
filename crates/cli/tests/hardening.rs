//! Issue 17's defects, found by an adversarial review of the release binary, each reproduced
//! against the real `chronicle serve`: slow clients that held every connection, an open
//! `/metrics`, and raw appends that stopped the instance for good.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tenant(data: &Path) -> (String, String) {
    tenant_keys(data)
}

/// `chronicle serve` under `ulimit -n <fds>`, up to its "listening" line.
fn serve_with_fd_limit(data: &Path, fds: u32, args: &[&str]) -> (Server, String) {
    let mut cmd = format!("ulimit -n {fds} && exec '{BIN}' --data '{}' serve --listen 127.0.0.1:0", data.display());
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("sh")
        .args(["-c", &cmd])
        .env("CHRONICLE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    out.read_line(&mut line).unwrap();
    let i = line.find("http://").unwrap_or_else(|| panic!("no URL in {line:?}"));
    let url = line[i..].trim().to_owned();
    std::thread::spawn(move || out.lines().for_each(drop));
    (Server(child), url)
}

/// A raw request on a fresh connection: (status, body), or the error.
fn raw_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status in {text:?}"))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// Item 8: 300 connections that send half a request, on a server with 256 descriptors. Before:
/// every new request waited ~48 s and the checkpoint failed. Now: more connections than the cap
/// are refused at once with a clear 503, the slow ones are cut after the header time limit, a
/// request that comes then is served, and the checkpoint is written meanwhile.
#[test]
fn slow_clients_cannot_exhaust_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, _) = tenant(&data);
    let (server, url) = serve_with_fd_limit(&data, 256, &[]);
    let addr = url.trim_start_matches("http://").to_owned();
    let agent = agent();
    let (status, _) = send(&agent, "POST", &format!("{url}/v1/customers"), &key, &json!({"id": "c1", "email": "c1@example.com"}));
    assert_eq!(status, 201);

    let checkpoint = data.join("projections.json");
    let before = std::fs::metadata(&checkpoint).and_then(|m| m.modified()).ok();
    let mut slow = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(&addr) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                slow.push(s);
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // A new client is answered at once: served, or refused with the JSON error.
    let t = Instant::now();
    let (status, body) = raw_get(&addr, "/healthz", Duration::from_secs(5)).expect("an answer, not a hang");
    assert!(t.elapsed() < Duration::from_secs(2), "answered in {:?}", t.elapsed());
    assert_eq!(status, 503, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "too_many_connections");

    // The checkpoint (every 10 s) is still written while the slow clients hang on.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let now = std::fs::metadata(&checkpoint).and_then(|m| m.modified()).ok();
        if now.is_some() && now != before {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint written while the slow clients were connected");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The slow clients are cut after the header time limit (10 s), and the server serves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = raw_get(&addr, "/healthz", Duration::from_secs(5)) {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover after the header time limit");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Every one of them is closed by the server by now: refused at once, or cut.
    let open = slow
        .iter()
        .filter(|s| {
            let mut s: &TcpStream = s;
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut b = [0u8; 512];
            loop {
                match s.read(&mut b) {
                    Ok(0) => return false,
                    Ok(_) => continue,
                    Err(e) => return !matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
                }
            }
        })
        .count();
    assert_eq!(open, 0, "slow connections still open after the header time limit");
    drop(slow);
    drop(server);
}

/// Item 8: a body sent too slowly is answered 408 within the body time limit; the connection
/// does not stay open for as long as the client likes.
#[test]
fn a_body_that_trickles_in_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, _) = tenant(&data);
    let (_server, url, _) = start(&data, &["serve"]);
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\""
    )
    .unwrap();
    let t = Instant::now();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

/// Item 12: with `--metrics-token`, `/metrics` answers only that bearer token.
#[test]
fn metrics_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, _) = tenant(&data);
    let (_server, url, _) = start(&data, &["serve", "--metrics-token", "s3cret-metrics"]);
    let agent = agent();
    let r = agent.get(format!("{url}/metrics")).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, body) = get(&agent, &format!("{url}/metrics"), "wrong");
    assert_eq!((status, &body["error"]["code"]), (401, &json!("unauthorized")));
    // An API key is not the metrics token either.
    assert_eq!(get(&agent, &format!("{url}/metrics"), &key).0, 401);
    let mut r = agent.get(format!("{url}/metrics")).header("authorization", "Bearer s3cret-metrics").call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains("chronicle_customers"));
}
