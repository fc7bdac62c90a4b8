//! Streamable HTTP at /mcp: the workflow through the rmcp client, health, Host validation.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn workflow_over_http() {
    let env = Env::new();
    let server = env.http_server();
    let client = server.client().await;
    assert_eq!(client.tools().await.len(), 8);
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    let token = env.approve(&id, "alice@example.com");
    let applied = client
        .call(
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(applied["proposal"]["status"], "applied");
    client.close().await;
}

#[tokio::test]
async fn health_and_dns_rebinding_protection() {
    let env = Env::new();
    let server = env.http_server();
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/healthz", server.base()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let init = init();
    let evil = http
        .post(&server.url)
        .header("Host", "evil.example.com")
        .header("Accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .expect("post");
    assert!(
        evil.status().is_client_error(),
        "a foreign Host header must be refused: {}",
        evil.status()
    );
}

#[tokio::test]
async fn browser_origins_other_than_loopback_are_refused() {
    let env = Env::new();
    let server = env.http_server();
    let http = reqwest::Client::new();
    let init = init();
    let post = |origin: &'static str| {
        http.post(&server.url)
            .header("Origin", origin)
            .header("Accept", "application/json, text/event-stream")
            .json(&init)
            .send()
    };
    let foreign = post("https://evil.example.com").await.expect("post");
    assert_eq!(
        foreign.status(),
        403,
        "a page elsewhere must not reach the server through a browser"
    );
    let local = post("http://localhost:3000").await.expect("post");
    assert!(
        local.status().is_success(),
        "a loopback page is allowed: {}",
        local.status()
    );
}

#[tokio::test]
async fn one_server_per_data_dir() {
    let env = Env::new();
    let _first = env.http_server();
    let second = env.cli(&["serve", "--http", "127.0.0.1:0"]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another `nhi-mcp serve` is using data dir"),
        "{err}"
    );
}

#[test]
fn python_sdk_ends_its_session_without_a_warning() {
    let env = Env::new();
    let server = env.http_server();
    // `legacy` negotiates 2025-11-25, which has sessions; the SDK ends its session with DELETE
    // and warns unless the answer is 200 or 204 (rmcp's own is 202).
    let out = python_workflow_output(&env, &["--mode", "legacy", "--http", &server.url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["status"], "applied");
    assert_eq!(report["protocol_version"], "2025-11-25");
    assert!(
        !stderr.contains("Session termination failed"),
        "the SDK warned on DELETE: {stderr}"
    );
}

#[tokio::test]
async fn delete_answers_no_content() {
    let env = Env::new();
    let server = env.http_server();
    let r = post(&server.url, None, &init()).await;
    let id = r
        .headers()
        .get("mcp-session-id")
        .expect("session")
        .to_str()
        .expect("ascii")
        .to_owned();
    let delete = reqwest::Client::new()
        .delete(&server.url)
        .header("Mcp-Session-Id", &id)
        .send()
        .await
        .expect("delete");
    assert_eq!(delete.status(), 204);
    let again = reqwest::Client::new()
        .post(&server.url)
        .header("Mcp-Session-Id", &id)
        .header("Accept", "application/json, text/event-stream")
        .json(&call("list_identities", json!({})))
        .send()
        .await
        .expect("post");
    assert_eq!(again.status(), 404, "the session is gone");
}
