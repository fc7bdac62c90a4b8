//! Every way an apply can be refused: each gives a clear tool error, leaves an audit record, and
//! changes nothing.

use std::time::Duration;

use chrono::Utc;
use nhi_mcp::authz::{ApprovalClaims, ApprovalKey};
use serde_json::{Value, json};

use crate::common::*;

struct Approved {
    env: Env,
    client: Client,
    identity: String,
    credential: String,
    id: String,
    token: String,
}

async fn approved() -> Approved {
    let env = Env::new();
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    let token = env.approve(&id, "alice@example.com");
    Approved {
        env,
        client,
        identity,
        credential,
        id,
        token,
    }
}

impl Approved {
    fn server_key(&self) -> ApprovalKey {
        ApprovalKey::load_or_create(
            &self.env.data.join("approval.key"),
            "nhi-mcp",
            Duration::from_secs(900),
        )
        .expect("server key")
    }

    async fn claims(&self) -> ApprovalClaims {
        let p = self
            .client
            .call("get_proposal", json!({"proposal_id": self.id}))
            .await
            .ok();
        let now = Utc::now().timestamp();
        ApprovalClaims {
            iss: "nhi-mcp".into(),
            aud: "nhi-mcp/apply".into(),
            sub: self.id.clone(),
            jti: uuid_like(),
            iat: now,
            nbf: now,
            exp: now + 600,
            digest: p["proposal"]["digest"].as_str().expect("digest").into(),
            approvers: vec!["alice@example.com".into()],
            requester: "agent:local".into(),
        }
    }

    async fn apply(&self, token: &str) -> Answer {
        self.client
            .call(
                "apply_proposal",
                json!({"proposal_id": self.id, "approval_token": token}),
            )
            .await
    }

    /// The refusal changed nothing: still approved, credential untouched, and it was audited.
    async fn assert_unchanged_and_audited(&self, expect_in_reason: &str) {
        let p = self
            .client
            .call("get_proposal", json!({"proposal_id": self.id}))
            .await
            .ok();
        assert_eq!(p["proposal"]["status"], "approved", "{p}");
        assert!(
            p["proposal"]["execution"]
                .as_array()
                .expect("exec")
                .is_empty()
        );
        let d = self
            .client
            .call("get_identity", json!({"identity_id": self.identity}))
            .await
            .ok();
        let creds = d["identity"]["credentials"].as_array().expect("creds");
        assert!(
            creds
                .iter()
                .any(|c| c["id"] == self.credential.as_str() && c["status"] == "active")
        );
        let audit = self.env.audit();
        let denied: Vec<&Value> = audit_for(&audit, "apply_proposal")
            .into_iter()
            .filter(|r| r["decision"] == "deny" || r["decision"] == "error")
            .collect();
        assert!(
            denied.iter().any(|r| r["reason"]
                .as_str()
                .is_some_and(|m| m.contains(expect_in_reason))),
            "no audit record with `{expect_in_reason}`: {denied:?}"
        );
    }
}

fn uuid_like() -> String {
    format!("{:x}", Utc::now().timestamp_nanos_opt().unwrap_or_default())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn apply_without_a_token_is_refused_and_audited() {
    let a = approved().await;
    let msg = a
        .client
        .call("apply_proposal", json!({"proposal_id": a.id}))
        .await
        .tool_error();
    assert!(msg.contains("approval_token"), "{msg}");
    let msg = a.apply("").await.tool_error();
    assert!(msg.contains("malformed"), "{msg}");
    a.assert_unchanged_and_audited("malformed").await;
    let audit = a.env.audit();
    assert!(
        audit_for(&audit, "apply_proposal")
            .iter()
            .any(|r| r["decision"] == "error"
                && r["reason"]
                    .as_str()
                    .is_some_and(|m| m.contains("approval_token"))),
        "the unparsed call is audited too"
    );
}

#[tokio::test]
async fn token_signed_by_another_key() {
    let a = approved().await;
    let other = ApprovalKey::load_or_create(
        &a.env.path("other.key"),
        "nhi-mcp",
        Duration::from_secs(900),
    )
    .expect("key");
    let forged = other.sign(&a.claims().await).expect("sign");
    let msg = a.apply(&forged).await.tool_error();
    assert!(msg.contains("signature is not valid"), "{msg}");
    a.assert_unchanged_and_audited("signature").await;
}

#[tokio::test]
async fn token_with_alg_changed_or_none() {
    let a = approved().await;
    let claims = a.claims().await;
    // HS256 "signed" with the server's public key, the classic confusion attack.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(a.token.as_bytes()),
    )
    .expect("hs256");
    let msg = a.apply(&hs).await.tool_error();
    assert!(msg.contains("disallowed signing algorithm"), "{msg}");
    // The real token with its header swapped to `none` and the signature dropped.
    let payload = a.token.split('.').nth(1).expect("payload");
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let msg = a.apply(&none).await.tool_error();
    assert!(msg.contains("approval token"), "{msg}");
    // The real token with its header swapped to HS256 and the signature kept.
    let sig = a.token.split('.').nth(2).expect("sig");
    let swapped = format!("{}.{payload}.{sig}", b64(br#"{"alg":"HS256","typ":"JWT"}"#));
    let msg = a.apply(&swapped).await.tool_error();
    assert!(msg.contains("disallowed signing algorithm"), "{msg}");
    a.assert_unchanged_and_audited("algorithm").await;
}

#[tokio::test]
async fn expired_and_tampered_tokens() {
    let a = approved().await;
    let key = a.server_key();
    let mut claims = a.claims().await;
    claims.iat -= 3600;
    claims.nbf -= 3600;
    claims.exp = Utc::now().timestamp() - 60;
    let msg = a
        .apply(&key.sign(&claims).expect("sign"))
        .await
        .tool_error();
    assert!(msg.contains("expired"), "{msg}");

    // A valid signature over a payload edited afterwards.
    let mut parts: Vec<String> = a.token.split('.').map(str::to_owned).collect();
    let mut payload: Value = {
        use base64::Engine as _;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&parts[1])
                .expect("b64"),
        )
        .expect("json")
    };
    payload["approvers"] = json!(["mallory"]);
    parts[1] = b64(payload.to_string().as_bytes());
    let msg = a.apply(&parts.join(".")).await.tool_error();
    assert!(msg.contains("signature"), "{msg}");
    a.assert_unchanged_and_audited("expired").await;
}

#[tokio::test]
async fn token_for_another_proposal_and_digest_mismatch() {
    let a = approved().await;
    // A second proposal, approved with its own token.
    let other = a
        .client
        .call(
            "revoke_identity",
            json!({"identity_id": a.identity, "reason": "other proposal"}),
        )
        .await
        .ok();
    let other_id = other["proposal"]["id"].as_str().expect("id").to_owned();
    let other_token = a.env.approve(&other_id, "bob@example.com");
    let msg = a.apply(&other_token).await.tool_error();
    assert!(msg.contains("another proposal"), "{msg}");

    let mut claims = a.claims().await;
    claims.digest = "0".repeat(64);
    let msg = a
        .apply(&a.server_key().sign(&claims).expect("sign"))
        .await
        .tool_error();
    assert!(msg.contains("digest"), "{msg}");
    a.assert_unchanged_and_audited("another proposal").await;
}

#[tokio::test]
async fn self_approved_token() {
    let a = approved().await;
    let mut claims = a.claims().await;
    claims.approvers = vec!["agent:local".into()];
    let msg = a
        .apply(&a.server_key().sign(&claims).expect("sign"))
        .await
        .tool_error();
    assert!(msg.contains("self-approved"), "{msg}");
    a.assert_unchanged_and_audited("self-approved").await;
}

#[tokio::test]
async fn replayed_token_runs_once() {
    let a = approved().await;
    assert_eq!(
        a.apply(&a.token).await.ok()["proposal"]["status"],
        "applied"
    );
    let msg = a.apply(&a.token).await.tool_error();
    assert!(msg.contains("already applied"), "{msg}");
    // Through revoke_identity too: the token is for a rotation, not a revocation.
    let msg = a
        .client
        .call(
            "revoke_identity",
            json!({"identity_id": a.identity, "approval_token": a.token}),
        )
        .await
        .tool_error();
    assert!(msg.contains("not for revoking"), "{msg}");
    let d = a
        .client
        .call("get_identity", json!({"identity_id": a.identity}))
        .await
        .ok();
    let active = d["identity"]["credentials"]
        .as_array()
        .expect("creds")
        .iter()
        .filter(|c| c["status"] == "active")
        .count();
    assert_eq!(active, 1, "replay must not rotate twice");
}

#[tokio::test]
async fn concurrent_applies_run_once() {
    let env = Env::new();
    let server = env.http_server();
    let first = server.client().await;
    let second = server.client().await;
    let (identity, credential) = rotation_target(&first).await;
    let id = propose(&first, &identity, &credential).await;
    let token = env.approve(&id, "alice@example.com");
    let args = json!({"proposal_id": id, "approval_token": token});
    let (x, y) = tokio::join!(
        first.call("apply_proposal", args.clone()),
        second.call("apply_proposal", args)
    );
    let oks = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Answer::Ok(_)))
        .count();
    assert_eq!(oks, 1, "exactly one apply may run: {x:?} / {y:?}");
    let refused = if matches!(x, Answer::Ok(_)) { y } else { x };
    let msg = refused.tool_error();
    assert!(
        msg.contains("already") || msg.contains("no longer approved"),
        "{msg}"
    );
    let d = first
        .call("get_identity", json!({"identity_id": identity}))
        .await
        .ok();
    let creds = d["identity"]["credentials"].as_array().expect("creds");
    assert_eq!(creds.len(), 1, "one rotation happened: {creds:?}");
    let audit = env.audit();
    assert_eq!(audit_for(&audit, "execute_step").len(), 3);
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn target_changed_since_the_snapshot_makes_the_proposal_stale() {
    let a = approved().await;
    // Another approved change to the same identity lands first.
    let revoke = a
        .client
        .call(
            "revoke_identity",
            json!({"identity_id": a.identity, "reason": "lands first"}),
        )
        .await
        .ok();
    let revoke_id = revoke["proposal"]["id"].as_str().expect("id").to_owned();
    let revoke_token = a.env.approve(&revoke_id, "bob@example.com");
    let done = a
        .client
        .call(
            "revoke_identity",
            json!({"identity_id": a.identity, "approval_token": revoke_token}),
        )
        .await
        .ok();
    assert_eq!(done["proposal"]["status"], "applied");

    let msg = a.apply(&a.token).await.tool_error();
    assert!(msg.contains("stale"), "{msg}");
    let p = a
        .client
        .call("get_proposal", json!({"proposal_id": a.id}))
        .await
        .ok();
    assert_eq!(p["proposal"]["status"], "expired");
    assert!(
        p["proposal"]["outcome"]
            .as_str()
            .expect("outcome")
            .contains("stale")
    );
    assert!(
        p["proposal"]["execution"]
            .as_array()
            .expect("exec")
            .is_empty(),
        "nothing ran"
    );
    let audit = a.env.audit();
    assert!(
        audit_for(&audit, "apply_proposal")
            .iter()
            .any(|r| r["decision"] == "deny"
                && r["reason"].as_str().is_some_and(|m| m.contains("stale")))
    );
}

/// Issue #8: another agent applied the requester's approved proposal with its token. With real
/// tokens from the OAuth server: `agent` proposes, an admin approves through the admin API,
/// `applier` (holding `nhi:apply`) presents the token and is refused, audited, nothing changes;
/// the requester then applies with the same token. A policy that permits `apply_for_others`
/// lets `applier` apply another proposal.
#[tokio::test]
async fn an_approval_token_works_only_for_its_requester() {
    let idp = Idp::start();
    let policy_dir = tempfile::tempdir().expect("dir");
    let policy = policy_dir.path().join("for-others.cedar");
    std::fs::write(
        &policy,
        format!(
            "{}\n@id(\"applier-for-others\")\npermit (principal == Nhi::Agent::\"applier\", action == Nhi::Action::\"apply_for_others\", resource);\n",
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/default.cedar"))
                .expect("default policy")
        ),
    )
    .expect("write policy");
    for permitted in [false, true] {
        let extra = if permitted {
            format!("[policy]\nfiles = [\"{}\"]\n", policy.display())
        } else {
            String::new()
        };
        let env = Env::with_config(&idp.config(&extra));
        let server = env.http_server();
        let agent = server
            .client_with_token(
                &idp.token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
                    .await,
            )
            .await;
        let applier = server
            .client_with_token(&idp.token("applier", "nhi:read nhi:apply", RESOURCE).await)
            .await;
        let (identity, credential) = rotation_target(&agent).await;
        let id = propose(&agent, &identity, &credential).await;
        let admin = idp
            .token("admin-alice", "nhi:read nhi:approve", RESOURCE)
            .await;
        let approve = |id: String| {
            let url = format!("{}/admin/v1/proposals/{id}/approve", server.base());
            let admin = admin.clone();
            async move {
                let v: Value = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(admin)
                    .send()
                    .await
                    .expect("approve")
                    .json()
                    .await
                    .expect("json");
                v["approval_token"].as_str().expect("token").to_owned()
            }
        };
        let token = approve(id.clone()).await;
        let args = json!({"proposal_id": id, "approval_token": token});
        let by_other = applier.call("apply_proposal", args.clone()).await;
        if permitted {
            let v = by_other.ok();
            assert_eq!(v["proposal"]["status"], "applied", "{v}");
        } else {
            let msg = by_other.tool_error();
            assert!(
                msg.contains("requested by `agent`") && msg.contains("apply for others"),
                "{msg}"
            );
            let p = agent
                .call("get_proposal", json!({"proposal_id": id}))
                .await
                .ok();
            assert_eq!(p["proposal"]["status"], "approved", "unchanged: {p}");
            assert!(
                p["proposal"]["execution"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
            );
            let audit = env.audit();
            assert!(
                audit_for(&audit, "apply_proposal")
                    .iter()
                    .any(|r| r["principal"] == "applier"
                        && r["decision"] == "deny"
                        && r["reason"]
                            .as_str()
                            .is_some_and(|m| m.contains("requested by"))),
                "the refusal is audited as `applier`"
            );
            // The token is still good for its requester.
            let v = agent.call("apply_proposal", args).await.ok();
            assert_eq!(v["proposal"]["status"], "applied", "{v}");
            // revoke_identity with a token is bound the same way.
            let revoke = agent
                .call(
                    "revoke_identity",
                    json!({"identity_id": identity, "reason": "bound to its requester"}),
                )
                .await
                .ok();
            let rid = revoke["proposal"]["id"].as_str().expect("id").to_owned();
            let rtoken = approve(rid.clone()).await;
            let msg = applier
                .call(
                    "revoke_identity",
                    json!({"identity_id": identity, "approval_token": rtoken}),
                )
                .await
                .tool_error();
            assert!(msg.contains("requested by `agent`"), "{msg}");
            let p = agent
                .call("get_proposal", json!({"proposal_id": rid}))
                .await
                .ok();
            assert_eq!(p["proposal"]["status"], "approved", "unchanged: {p}");
            // The admin API withdraws an approval too; the requester's token is then refused.
            let withdrawn = reqwest::Client::new()
                .post(format!("{}/admin/v1/proposals/{rid}/reject", server.base()))
                .bearer_auth(&admin)
                .json(&json!({"reason": "withdrawn over the admin API"}))
                .send()
                .await
                .expect("reject");
            assert_eq!(withdrawn.status(), 200);
            let body: Value = withdrawn.json().await.expect("json");
            assert_eq!(body["status"], "rejected", "{body}");
            let msg = agent
                .call(
                    "revoke_identity",
                    json!({"identity_id": identity, "approval_token": rtoken}),
                )
                .await
                .tool_error();
            assert!(msg.contains("withdrawn"), "{msg}");
        }
        agent.close().await;
        applier.close().await;
    }
}
