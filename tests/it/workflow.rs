//! The whole workflow through a real MCP client over stdio: look, propose, approve from the CLI,
//! apply with the token, read the outcome.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn rotation_end_to_end_over_stdio() {
    let env = Env::new();
    let client = env.stdio().await;

    let tools = client.tools().await;
    assert_eq!(
        tools,
        [
            "apply_proposal",
            "get_identity",
            "get_proposal",
            "list_findings",
            "list_identities",
            "list_proposals",
            "propose_rotation",
            "revoke_identity"
        ]
    );

    // Look: paged identities cover the demo inventory once, in a stable order.
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"limit": 7});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let page = client.call("list_identities", args).await.ok();
        for i in page["identities"].as_array().expect("identities") {
            ids.push(i["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(ids.len() >= 40, "{} identities", ids.len());
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "pages overlap or are out of order");

    let findings = client
        .call("list_findings", json!({"limit": 500}))
        .await
        .ok();
    let all = findings["findings"].as_array().expect("findings");
    for owasp in ["NHI1", "NHI5", "NHI7", "NHI8"] {
        assert!(
            all.iter().any(|f| f["owasp_id"] == owasp),
            "no {owasp} finding"
        );
    }
    assert_eq!(
        findings["summary"]["total"].as_u64(),
        Some(all.len() as u64)
    );
    assert!(
        all.iter()
            .all(|f| f["evidence"].as_str().is_some_and(|e| !e.is_empty()))
    );

    // Ask.
    let (identity, credential) = rotation_target(&client).await;
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": identity, "credential_id": credential, "grace_period": "0s", "reason": "quarterly rotation"}),
        )
        .await
        .ok();
    let p = &proposed["proposal"];
    let id = p["id"].as_str().expect("id").to_owned();
    assert_eq!(p["status"], "pending_approval");
    assert_eq!(proposed["approval"]["status"], "approval_required");
    assert!(
        proposed["approval"]["how_to_approve"]
            .as_str()
            .expect("how")
            .contains(&id)
    );
    assert_eq!(p["digest"].as_str().expect("digest").len(), 64);
    assert_eq!(p["plan"].as_array().expect("plan").len(), 3);

    // Proposing the same change again returns the open proposal instead of a second one.
    let again = client
        .call(
            "propose_rotation",
            json!({"identity_id": identity, "credential_id": credential, "reason": "again"}),
        )
        .await
        .ok();
    assert_eq!(again["proposal"]["id"], id.as_str());
    assert_eq!(again["created"], false);
    assert!(
        again["note"]
            .as_str()
            .expect("note")
            .contains("returned unchanged"),
        "{again}"
    );

    // A human approves on a separate channel; the agent applies.
    let token = env.approve(&id, "alice@example.com");
    let applied = client
        .call(
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        )
        .await
        .ok();
    let p = &applied["proposal"];
    assert_eq!(p["status"], "applied", "{p}");
    assert_eq!(p["sink_ref"], format!("file:secrets/{id}.json"));

    // The outcome: the old credential is gone, exactly one new active one exists.
    let detail = client
        .call("get_identity", json!({"identity_id": identity}))
        .await
        .ok();
    let creds = detail["identity"]["credentials"].as_array().expect("creds");
    assert!(
        creds.iter().all(|c| c["id"] != credential.as_str()),
        "old credential left: {creds:?}"
    );
    assert_eq!(creds.iter().filter(|c| c["status"] == "active").count(), 1);
    assert!(
        detail["open_proposals"]
            .as_array()
            .expect("open")
            .is_empty()
    );

    let read = client
        .call("get_proposal", json!({"proposal_id": id}))
        .await
        .ok();
    let steps = read["proposal"]["execution"].as_array().expect("execution");
    assert_eq!(
        steps.len(),
        6,
        "an intent and an outcome per step: {steps:?}"
    );
    let listed = client
        .call("list_proposals", json!({"status": "applied"}))
        .await
        .ok();
    assert_eq!(listed["proposals"].as_array().expect("list").len(), 1);

    // Every step is audited, and the chain verifies.
    let audit = env.audit();
    assert_eq!(audit_for(&audit, "execute_step").len(), 3);
    assert_eq!(audit_for(&audit, "approve").len(), 1);
    assert_eq!(audit_for(&audit, "apply_proposal").len(), 1);
    let verify = env.cli(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    client.close().await;
}

#[tokio::test]
async fn revocation_end_to_end_with_blast_radius() {
    let env = Env::new();
    let client = env.stdio().await;
    let identity = "demo-aws:user/legacy-backup";
    let proposed = client
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "reason": "stale and ownerless"}),
        )
        .await
        .ok();
    assert_eq!(proposed["executed"], false);
    let p = &proposed["proposal"];
    assert_eq!(p["status"], "pending_approval");
    let blast = &p["blast_radius"];
    assert!(
        !blast["credentials_deactivated"]
            .as_array()
            .expect("creds")
            .is_empty()
    );
    assert!(
        blast["summary"]
            .as_str()
            .expect("summary")
            .contains("stop working")
    );
    let id = p["id"].as_str().expect("id").to_owned();

    let token = env.approve(&id, "bob@example.com");
    let done = client
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(done["executed"], true);
    assert_eq!(done["proposal"]["status"], "applied");
    let detail = client
        .call("get_identity", json!({"identity_id": identity}))
        .await
        .ok();
    assert_eq!(detail["identity"]["disabled"], true);
    assert!(
        detail["identity"]["credentials"]
            .as_array()
            .expect("creds")
            .iter()
            .all(|c| c["status"] == "inactive")
    );
    client.close().await;
}

#[tokio::test]
async fn grace_period_keeps_the_old_credential_until_the_server_finishes_it() {
    let env = Env::new();
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let out = client
        .call(
            "propose_rotation",
            json!({"identity_id": identity, "credential_id": credential, "grace_period": "2s", "reason": "grace test"}),
        )
        .await
        .ok();
    let id = out["proposal"]["id"].as_str().expect("id").to_owned();
    let token = env.approve(&id, "alice@example.com");
    let applied = client
        .call(
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(applied["proposal"]["status"], "applying");
    assert!(
        applied["proposal"]["outcome"]
            .as_str()
            .expect("outcome")
            .contains("grace period")
    );
    let detail = client
        .call("get_identity", json!({"identity_id": identity}))
        .await
        .ok();
    let old_active = detail["identity"]["credentials"]
        .as_array()
        .expect("creds")
        .iter()
        .any(|c| c["id"] == credential.as_str() && c["status"] == "active");
    assert!(
        old_active,
        "the old credential must stay valid during the grace period"
    );

    // The server's periodic task finishes the rotation once the grace period is over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let p = client
            .call("get_proposal", json!({"proposal_id": id}))
            .await
            .ok();
        if p["proposal"]["status"] == "applied" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not finished: {p}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    client.close().await;
}

#[tokio::test]
async fn reject_and_multi_approver_paths() {
    let env = Env::with_config("[approval]\nrequired_approvals = 2\n");
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;

    // First approval: recorded, no token yet.
    let first = env.approve_as(&id, "alice@example.com");
    assert!(first.status.success());
    assert!(first.stdout.is_empty(), "no token before the last approval");
    assert!(String::from_utf8_lossy(&first.stderr).contains("1 of 2"));
    // The same approver twice does not count twice.
    let twice = env.approve_as(&id, "alice@example.com");
    assert_eq!(twice.status.code(), Some(1));
    // The requester can never approve.
    let selfie = env.approve_with_key(&id, "agent:local", &env.key("alice@example.com"));
    assert_eq!(selfie.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&selfie.stderr).contains("not a configured approver"),
        "{}",
        String::from_utf8_lossy(&selfie.stderr)
    );
    let token = env.approve(&id, "bob@example.com");
    assert!(!token.is_empty());

    // Rejection ends another proposal; it can no longer be approved.
    let other = client
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "reason": "test reject"}),
        )
        .await
        .ok();
    let other_id = other["proposal"]["id"].as_str().expect("id").to_owned();
    let rej = env.reject_as(&other_id, "carol@example.com", "not now");
    assert!(
        rej.status.success(),
        "{}",
        String::from_utf8_lossy(&rej.stderr)
    );
    let late = env.approve_as(&other_id, "alice@example.com");
    assert_eq!(late.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&late.stderr).contains("rejected"));
    let shown = env.cli(&["proposals", "show", &other_id]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(shown["status"], "rejected");
    assert!(
        shown["outcome"]
            .as_str()
            .expect("outcome")
            .contains("not now")
    );
    client.close().await;
}

/// Issue #8: a 1 MB `reason` was stored whole. Free text is bounded in characters, not bytes:
/// over the limit is refused with a clear error and changes nothing, and the refusal's audit
/// record does not store it either.
#[tokio::test]
async fn reasons_are_bounded_in_characters() {
    let env = Env::new();
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let huge = "x".repeat(1 << 20);
    let answer = client
        .call(
            "propose_rotation",
            json!({"identity_id": identity, "credential_id": credential, "grace_period": "0s", "reason": huge}),
        )
        .await;
    let msg = match &answer {
        Answer::Rpc(_, m) | Answer::ToolError(m) => m.clone(),
        Answer::Ok(v) => panic!("a 1 MB reason was accepted: {}", &v.to_string()[..200]),
    };
    assert!(
        msg.contains("`reason` is longer than 1000 characters"),
        "{msg}"
    );
    assert!(msg.len() < 200, "the error does not echo the reason");
    let listed = client.call("list_proposals", json!({})).await.ok();
    assert_eq!(listed["proposals"], json!([]), "nothing was created");
    let out = env.cli(&["audit", "export"]);
    assert!(
        out.stdout.len() < 64 * 1024,
        "the audit export holds {} bytes after one refused 1 MB call",
        out.stdout.len()
    );

    // 1,000 three-byte characters are 1,000 characters: accepted; one more is refused.
    let euros = "€".repeat(1000);
    let out = client
        .call(
            "propose_rotation",
            json!({"identity_id": identity, "credential_id": credential, "grace_period": "0s", "reason": euros}),
        )
        .await
        .ok();
    let id = out["proposal"]["id"].as_str().expect("id").to_owned();
    assert_eq!(out["proposal"]["reason"], euros.as_str());
    let too_long = "é".repeat(1001);
    let rej = env.cli(&[
        "reject",
        &id,
        "--approver",
        "alice@example.com",
        "--key",
        &env.key_arg("alice@example.com"),
        "--reason",
        &too_long,
    ]);
    assert_eq!(rej.status.code(), Some(1));
    let err = String::from_utf8_lossy(&rej.stderr);
    assert!(err.contains("longer than 1000 characters"), "{err}");
    let shown: serde_json::Value =
        serde_json::from_slice(&env.cli(&["proposals", "show", &id]).stdout).expect("json");
    assert_eq!(
        shown["status"], "pending_approval",
        "the refused reject changed nothing"
    );
    let revoke = client
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "reason": "€".repeat(1001)}),
        )
        .await;
    assert!(
        revoke.text().contains("longer than 1000 characters"),
        "{revoke:?}"
    );
    client.close().await;
}
