//! Kill -9 in the middle of an apply, restart, and the proposal is recovered with no credential
//! lost or left behind.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const PAUSED: &str = "[debug]\nstep_pause = \"3s\"\n";

/// Starts an apply over HTTP, kills the server `after` into it, restarts without the pause and
/// returns the recovered proposal, the identity after, and the old credential id.
async fn kill_during_apply(after: Duration) -> (Env, Value, Value, String) {
    let env = Env::with_config(PAUSED);
    let server = env.http_server();
    let client = server.client().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    let token = env.approve(&id, "alice@example.com");
    let apply = tokio::spawn({
        let client = server.client().await;
        let args = json!({"proposal_id": id, "approval_token": token});
        async move { client.call("apply_proposal", args).await }
    });
    tokio::time::sleep(after).await;
    let mut server = server;
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reap");
    // The client's call never completes once its server is gone.
    apply.abort();

    let shown = env.cli(&["proposals", "show", &id]);
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["status"], "applying", "killed mid-apply: {shown}");

    // Restart without the pause: recovery runs at start.
    std::fs::write(env.config.as_ref().expect("config"), "").expect("rewrite config");
    let server = env.http_server();
    let client = server.client().await;
    let p = wait_for_status(&client, &id, "applied").await;
    let d = client
        .call("get_identity", json!({"identity_id": identity}))
        .await
        .ok();
    client.close().await;
    drop(server);
    (env, p, d["identity"].clone(), credential)
}

fn assert_rotated_cleanly(env: &Env, p: &Value, identity: &Value, old: &str) {
    let creds = identity["credentials"].as_array().expect("creds");
    assert_eq!(
        creds.len(),
        1,
        "exactly one credential after recovery: {creds:?}"
    );
    assert_ne!(creds[0]["id"], old, "the old credential is gone");
    assert_eq!(creds[0]["status"], "active");
    let id = p["id"].as_str().expect("id");
    let sink = sink_secret(&env.data, id);
    assert!(!sink.is_empty(), "the new secret is in the sink");
    let audit = env.audit();
    assert_eq!(audit_for(&audit, "recover").len(), 1);
    assert!(env.cli(&["audit", "verify"]).status.success());
}

#[tokio::test]
async fn killed_while_creating_the_credential_rolls_back_and_reruns_it() {
    let (env, p, identity, old) = kill_during_apply(Duration::from_millis(1500)).await;
    let outcome = p["outcome"].as_str().expect("outcome");
    assert!(
        outcome.contains("recovered after a restart: step 0 (create credential) was interrupted, rolled back and run again"),
        "{outcome}"
    );
    let rolled_back = p["execution"]
        .as_array()
        .expect("execution")
        .iter()
        .any(|r| r["index"] == 0 && r["status"] == "rolled_back");
    assert!(rolled_back, "{p}");
    assert_rotated_cleanly(&env, &p, &identity, &old);
}

#[tokio::test]
async fn killed_while_deactivating_the_old_credential_resumes() {
    let (env, p, identity, old) = kill_during_apply(Duration::from_millis(4500)).await;
    let outcome = p["outcome"].as_str().expect("outcome");
    assert!(
        outcome.contains("step 1 (deactivate credential) was interrupted"),
        "{outcome}"
    );
    assert_rotated_cleanly(&env, &p, &identity, &old);
}
