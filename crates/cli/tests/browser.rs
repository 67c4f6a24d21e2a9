//! Browser tracking, end to end (issue 19, item 2): a page on another origin loads Segment's
//! browser SDK (`@segment/analytics-next` from npm) with Chronicle as its API host, in headless
//! Chromium (Debian's `chromium`, driven by `playwright-core`); its page, track and identify
//! calls — `text/plain` bodies on the short paths `/v1/p`, `/v1/t`, `/v1/i`, cross-origin —
//! land on the customer's timeline. Every request off loopback is blocked and counted: none is
//! made (the SDK's settings are given inline and its own metrics are off).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A static server for the page and the SDK's files (`dist/umd`, found by file name).
fn page_server(page: String, sdk: PathBuf) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (page, sdk) = (page.clone(), sdk.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_owned();
                let (status, kind, body) = if path == "/" {
                    ("200 OK", "text/html", page.into_bytes())
                } else {
                    let name = path.rsplit('/').next().unwrap_or_default();
                    match std::fs::read(sdk.join(name)) {
                        Ok(bytes) if !name.is_empty() && !name.contains("..") => ("200 OK", "application/javascript", bytes),
                        _ => ("404 Not Found", "text/plain", b"not here".to_vec()),
                    }
                };
                let mut out = stream;
                let head = format!("HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = out.write_all(head.as_bytes()).and_then(|()| out.write_all(&body));
            });
        }
    });
    port
}

const DRIVER: &str = r#"
const { chromium } = require('playwright-core');
(async () => {
  const [url, executablePath] = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  const offLoopback = [], failed = [], consoleErrors = [];
  await page.route('**/*', route => {
    const host = new URL(route.request().url()).hostname;
    if (host === '127.0.0.1' || host === 'localhost') return route.continue();
    offLoopback.push(route.request().url());
    return route.abort();
  });
  page.on('requestfailed', r => failed.push(r.url() + ' ' + (r.failure() && r.failure().errorText)));
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  await page.goto(url);
  let state = null;
  try {
    await page.waitForFunction(() => window.__done || window.__error, null, { timeout: 20000 });
    state = await page.evaluate(() => ({ done: !!window.__done, error: window.__error || null }));
  } catch (e) {
    state = { done: false, error: 'timed out: ' + e.message };
  }
  console.log(JSON.stringify({ state, offLoopback, failed, consoleErrors }));
  await browser.close();
})().catch(e => { console.log(JSON.stringify({ fatal: String(e) })); process.exit(1); });
"#;

#[test]
fn the_segment_browser_sdk_in_chromium_sends_page_track_and_identify_from_another_origin() {
    let Some(clients) = segment_clients() else { return };
    let node_modules = clients.join("node/node_modules");
    assert!(
        node_modules.join("@segment/analytics-next").exists() && node_modules.join("playwright-core").exists(),
        "the browser test needs @segment/analytics-next and playwright-core (scripts/test installs them)"
    );
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, write) = tenant_keys(&data);
    let (_server, url, _) = start(&data, &["serve"]);
    let api_host = format!("{}/v1", url.trim_start_matches("http://"));

    let page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><script src="/ajs/index.js"></script></head><body><script>
const host = {api_host:?};
AnalyticsNext.AnalyticsBrowser.load(
  {{ writeKey: {write:?}, cdnURL: location.origin,
     cdnSettings: {{ integrations: {{ "Segment.io": {{ apiKey: {write:?}, apiHost: host, protocol: "http" }} }}, metrics: {{ sampleRate: 0 }} }} }},
  {{ integrations: {{ "Segment.io": {{ apiHost: host, protocol: "http" }} }} }}
).then(async ([analytics]) => {{
  await analytics.identify("browser-ada", {{ email: "ada@example.com", first_name: "Ada" }});
  await analytics.page("Pricing");
  await analytics.track("Plan Selected", {{ plan: "pro" }});
  window.__done = true;
}}).catch(e => {{ window.__error = String(e); }});
</script></body></html>"#
    );
    let page_port = page_server(page, node_modules.join("@segment/analytics-next/dist/umd"));
    let origin = format!("http://127.0.0.1:{page_port}");
    let agent = agent();
    // The page's origin is this tenant's (the instance allows none here).
    let (status, v) = send(&agent, "PUT", &format!("{url}/v1/settings/cors"), &api, &json!({"origins": [origin]}));
    assert_eq!(status, 200, "{v}");

    let script = dir.path().join("driver.js");
    std::fs::write(&script, DRIVER).unwrap();
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg(format!("{origin}/"))
        .arg(&chromium)
        .env("NODE_PATH", &node_modules)
        .output()
        .expect("run node");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("the driver's report: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}");
    assert_eq!(report["state"]["done"], true, "the SDK's calls resolved: {report}");
    assert_eq!(report["offLoopback"], json!([]), "no request left loopback: {report}");
    // Without the origin allowed, the browser blocks each answer ("blocked by CORS policy") and
    // the requests fail: none may.
    assert_eq!(report["failed"], json!([]), "every request succeeded: {report}");
    assert_eq!(report["consoleErrors"], json!([]), "{report}");

    // The three calls are on the customer's timeline, with the traits the identify sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let types = loop {
        let (status, v) = get(&agent, &format!("{url}/v1/customers/browser-ada/timeline?limit=100"), &api);
        let types: Vec<String> = if status == 200 {
            v["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
        } else {
            Vec::new()
        };
        let tracked = types.iter().filter(|t| *t == "ActivityTracked").count();
        if types.iter().any(|t| t == "CustomerRegistered" || t == "TraitsUpdated") && tracked >= 2 {
            break types;
        }
        assert!(Instant::now() < deadline, "the browser's events did not arrive: {status} {v} {report}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (status, profile) = get(&agent, &format!("{url}/v1/customers/browser-ada"), &api);
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["email"], "ada@example.com", "{profile}");
    assert!(types.len() >= 3, "{types:?}");
}

/// The request's answer head, lower-cased, over a raw connection (for `OPTIONS`).
fn raw(url: &str, request: &str) -> String {
    use std::io::Read;
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.replace("HOST", addr).as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.to_lowercase()
}

fn preflight(url: &str, path: &str, origin: &str) -> String {
    raw(
        url,
        &format!(
            "OPTIONS {path} HTTP/1.1\r\nhost: HOST\r\norigin: {origin}\r\naccess-control-request-method: POST\r\n\
             access-control-request-headers: content-type\r\nconnection: close\r\n\r\n"
        ),
    )
}

/// `--cors-origin` (the instance's) and `PUT /v1/settings/cors` (a tenant's) allow an origin on
/// the Segment routes, preflight included; another origin gets no allowance; a bad origin is
/// refused whole and changes nothing; routes other than ingest take no cross-origin calls.
#[test]
fn allowed_origins_come_from_the_instance_and_from_each_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    let api = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();
    let (_server, url, _) = start(&data, &["serve", "--cors-origin", "https://www.example.com"]);
    let allowed = |origin: &str, path: &str| preflight(&url, path, origin).contains(&format!("access-control-allow-origin: {origin}"));
    assert!(allowed("https://www.example.com", "/v1/t"));
    assert!(allowed("https://www.example.com", "/v1/batch"));
    assert!(!allowed("https://shop.example.com", "/v1/t"), "not allowed yet");
    assert!(!allowed("https://www.example.com", "/v1/customers"), "only the ingest routes");
    let agent = agent();
    let (status, v) = send(&agent, "PUT", &format!("{url}/v1/settings/cors"), &api, &json!({"origins": ["https://shop.example.com", "shop.example.com/x"]}));
    assert_eq!(status, 400, "{v}");
    assert_eq!(get(&agent, &format!("{url}/v1/settings/cors"), &api).1, json!({"origins": []}), "nothing changed");
    let (status, v) = send(&agent, "PUT", &format!("{url}/v1/settings/cors"), &api, &json!({"origins": ["https://shop.example.com/"]}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(get(&agent, &format!("{url}/v1/settings/cors"), &api).1, json!({"origins": ["https://shop.example.com"]}));
    assert!(allowed("https://shop.example.com", "/v1/t"), "the tenant's origin");
    assert!(!allowed("https://evil.example.com", "/v1/t"));
}
