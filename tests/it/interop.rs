//! Interop with MCP clients and suites we did not write: the Python SDK (`mcp` 2.3.0) and the
//! MCP conformance suite. `./tests/run` installs both and points these tests at them; run
//! directly, a test whose peer is missing fails and says how to get it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::*;

fn peer(var: &str) -> PathBuf {
    peer_path(var)
}

/// Runs the Python SDK workflow; returns its JSON report.
fn python_workflow(env: &Env, extra: &[&str]) -> Value {
    let out = python_workflow_output(env, extra);
    assert!(
        out.status.success(),
        "python workflow failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report on stdout")
}

fn assert_workflow(report: &Value, transport: &str) {
    assert_eq!(report["transport"], transport);
    assert_eq!(report["tools"].as_array().expect("tools").len(), 8);
    assert_eq!(report["page1"], 5);
    assert_eq!(report["status"], "applied");
    let id = report["proposal_id"].as_str().expect("id");
    assert_eq!(report["sink_ref"], format!("file:secrets/{id}.json"));
    assert!(
        report["replay_error"]
            .as_str()
            .expect("replay")
            .contains("already applied")
    );
}

#[test]
fn python_sdk_full_workflow_over_stdio() {
    let env = Env::new();
    let report = python_workflow(&env, &[]);
    assert_workflow(&report, "stdio");
    // The 2025-11-25 protocol too (the SDK's legacy mode).
    let env = Env::new();
    assert_workflow(&python_workflow(&env, &["--mode", "legacy"]), "stdio");
}

#[test]
fn python_sdk_full_workflow_over_http() {
    let env = Env::new();
    let server = env.http_server();
    let report = python_workflow(&env, &["--http", &server.url]);
    assert_workflow(&report, "http");
    let audit = env.audit();
    assert!(!audit_for(&audit, "apply_proposal").is_empty());
}

/// The scenarios that apply to a server without the suite's fixture tools; the baseline file
/// names each expected failure and why.
#[test]
fn mcp_conformance_suite() {
    let node = peer("NHI_TEST_NODE22_BIN").join("node");
    let suite = peer("NHI_TEST_CONFORMANCE");
    let baseline =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/expected-failures.yml");
    let env = Env::new();
    let server = env.http_server();
    let mut failed = Vec::new();
    for scenario in [
        "server-initialize",
        "ping",
        "tools-list",
        "dns-rebinding-protection",
        "server-sse-multiple-streams",
        "server-session-lifecycle",
        "http-header-validation",
        "sep-2164-resource-not-found",
        "server-stateless",
    ] {
        let out = Command::new(&node)
            .arg(&suite)
            .args([
                "server",
                "--url",
                &server.url,
                "--scenario",
                scenario,
                "--expected-failures",
            ])
            .arg(&baseline)
            .env("NO_COLOR", "1")
            .env("HOME", env.dir.path())
            .output()
            .expect("run conformance suite");
        if !out.status.success() {
            failed.push(format!(
                "{scenario}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "conformance failures:\n{}",
        failed.join("\n")
    );
}
