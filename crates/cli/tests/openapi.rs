//! The API keeps its own contract (issue 19, item 7): schemathesis (from PyPI, installed by
//! `scripts/test`) reads `/openapi.json` from the running binary and calls every operation
//! with generated data — examples, boundary values, fuzzed and stateful sequences, a few of
//! each — and finds no server error, no response that breaks its declared schema, content
//! type or status. The live event stream is left out (it never ends).

mod common;

use common::*;
use serde_json::Value;

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(clients) = segment_clients() else { return };
    let schemathesis = clients.join("venv/bin/schemathesis");
    assert!(schemathesis.exists(), "the contract test needs schemathesis (scripts/test installs it into {})", clients.display());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = chronicle(&data, &["tenant", "create", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();
    // Budgets off: the fuzzer sends hundreds of requests a second from one address.
    let (_server, url, _) =
        start(&data, &["serve", "--rate-limit", "0", "--ingest-rate-limit", "0", "--ingest-rate-limit-per-address", "0"]);
    let out = std::process::Command::new(&schemathesis)
        .args(["run", &format!("{url}/openapi.json")])
        .args(["--checks", "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance"])
        .args(["--max-examples", "3", "--exclude-path", "/v1/events/stream", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("passed"), "{report}");
}
