//! Hosted authorization against a real OAuth server (oidc-provider): bearer tokens on `/mcp`,
//! the challenges of the MCP authorization spec, protected resource metadata, the admin API, and
//! the whole workflow with real tokens.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_bad_token_is_refused_with_the_right_challenge_and_audited() {
    let idp = Idp::start();
    let other_idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let good = idp
        .token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
        .await;
    let metadata =
        "resource_metadata=\"https://nhi.example.com/.well-known/oauth-protected-resource/mcp\"";

    // No token: 401, a challenge without `error`.
    let r = post(&server.url, None, &init()).await;
    assert_eq!(r.status(), 401);
    let c = challenge(&r);
    assert!(
        c.starts_with("Bearer ") && c.contains(metadata) && c.contains("scope=\"nhi:read\""),
        "{c}"
    );
    assert!(!c.contains("error="), "{c}");

    // Each bad token: 401 invalid_token.
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("b64"),
    )
    .expect("json");
    payload["scope"] = json!("nhi:read nhi:propose nhi:apply nhi:approve");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(payload.to_string().as_bytes()),
        parts[2]
    );
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"at+jwt"}"#), parts[1]);
    let jwks: Value = reqwest::get(format!("{}/jwks", idp.issuer))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let public_n = jwks["keys"][0]["n"].as_str().expect("n").to_owned();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(public_n.as_bytes()),
    )
    .expect("hs256");
    let other_audience = idp
        .token("agent", "nhi:read", "http://127.0.0.1:9999/mcp")
        .await;
    let other_issuer = other_idp.token("agent", "nhi:read", RESOURCE).await;
    let mut unknown_kid_header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .expect("b64"),
    )
    .expect("json");
    unknown_kid_header["kid"] = json!("no-such-key");
    let unknown_kid = format!(
        "{}.{}.{}",
        b64(unknown_kid_header.to_string().as_bytes()),
        parts[1],
        parts[2]
    );
    for (case, token, expect) in [
        ("garbage", "not-a-jwt".to_owned(), "malformed"),
        ("alg none", none, "not allowed"),
        ("HS256 keyed with the public key", hs256, "not allowed"),
        ("another audience", other_audience, "another audience"),
        ("another issuer", other_issuer, "unknown key"),
        ("unknown kid", unknown_kid, "unknown key"),
        ("tampered payload", tampered, "signature"),
    ] {
        let r = post(&server.url, Some(&token), &init()).await;
        assert_eq!(r.status(), 401, "{case}");
        let c = challenge(&r);
        assert!(
            c.contains("error=\"invalid_token\"") && c.contains(metadata),
            "{case}: {c}"
        );
        let body: Value = r.json().await.expect("json");
        assert!(
            body["error"].as_str().expect("error").contains(expect),
            "{case}: {body}"
        );
    }

    // A valid token without the tool's scope: 403 insufficient_scope naming it (step-up).
    let reader = idp.token("reader", "nhi:read", RESOURCE).await;
    let args = json!({"identity_id": "demo-aws:user/legacy-backup", "reason": "r"});
    let r = post(&server.url, Some(&reader), &call("propose_rotation", args)).await;
    assert_eq!(r.status(), 403);
    let c = challenge(&r);
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"nhi:propose\""),
        "{c}"
    );
    let r = post(
        &server.url,
        Some(&reader),
        &call(
            "revoke_identity",
            json!({"identity_id": "x:y", "approval_token": "t"}),
        ),
    )
    .await;
    assert!(challenge(&r).contains("scope=\"nhi:apply\""));

    // Every refusal is on the audit record, and no token leaked into it.
    drop(server);
    let audit = env.audit();
    let denied: Vec<&Value> = audit.iter().filter(|r| r["decision"] == "deny").collect();
    assert!(denied.len() >= 10, "{denied:?}");
    assert!(denied.iter().any(|r| r["principal"] == "anonymous"));
    let step_up = denied
        .iter()
        .find(|r| r["action"] == "propose_rotation")
        .expect("403 audited");
    assert_eq!(step_up["principal"], "reader");
    assert_eq!(step_up["issuer"], idp.issuer.as_str());
    assert_eq!(step_up["client_id"], "reader");
    assert_eq!(step_up["scopes"], json!(["nhi:read"]));
    let text = audit.iter().map(Value::to_string).collect::<String>();
    assert!(
        !text.contains(&good) && !text.contains(&reader),
        "a bearer token reached the audit log"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_end_to_end() {
    let idp = Idp::start();
    let env = Env::with_config(
        &idp.config("")
            .replace("[auth]\n", "[auth]\nleeway = \"0s\"\n"),
    );
    let server = env.http_server();
    let token = idp.token("short-lived", "nhi:read", RESOURCE).await;
    let fresh = post(&server.url, Some(&token), &init()).await;
    assert!(
        fresh.status().is_success(),
        "a fresh token works: {}",
        fresh.status()
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = post(&server.url, Some(&token), &init()).await;
    assert_eq!(r.status(), 401);
    assert!(challenge(&r).contains("error=\"invalid_token\""));
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().expect("error").contains("expired"),
        "{body}"
    );
    drop(server);
    let audit = env.audit();
    assert!(
        audit.iter().any(|r| r["decision"] == "deny"
            && r["reason"].as_str().is_some_and(|m| m.contains("expired")))
    );
}

#[tokio::test]
async fn protected_resource_metadata() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let m: Value = reqwest::get(format!("{}{path}", server.base()))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(m["resource"], RESOURCE, "{path}");
        assert_eq!(m["authorization_servers"], json!([idp.issuer]));
        let scopes = m["scopes_supported"].as_array().expect("scopes");
        assert!(scopes.contains(&json!("nhi:propose")) && scopes.contains(&json!("nhi:approve")));
    }
}

#[test]
fn an_unreachable_issuer_stops_the_start_with_a_clear_error() {
    let env = Env::with_config(
        "[http]\nresource = \"https://nhi.example.com/mcp\"\n[auth]\nissuer = \"http://127.0.0.1:9\"\n",
    );
    let out = env.cli(&["serve", "--http", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the OAuth issuer `http://127.0.0.1:9`"),
        "{err}"
    );
}

#[tokio::test]
async fn full_workflow_with_real_tokens_and_two_admins() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config("[approval]\nrequired_approvals = 2\n"));
    let server = env.http_server();
    let agent_token = idp
        .token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
        .await;
    let agent = server.client_with_token(&agent_token).await;
    assert_eq!(agent.tools().await.len(), 8);

    let (identity, credential) = rotation_target(&agent).await;
    let id = propose(&agent, &identity, &credential).await;
    let proposal = agent
        .call("get_proposal", json!({"proposal_id": id}))
        .await
        .ok();
    assert_eq!(
        proposal["proposal"]["requester"], "agent",
        "the requester is the token's subject"
    );

    let admin = |who: &'static str| {
        let idp = &idp;
        async move { idp.token(who, "nhi:read nhi:approve", RESOURCE).await }
    };
    let alice = admin("admin-alice").await;
    let bob = admin("admin-bob").await;
    let http = reqwest::Client::new();
    let approve = |token: String| {
        let url = format!("{}/admin/v1/proposals/{id}/approve", server.base());
        let http = http.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("approve")
        }
    };

    // The agent cannot approve its own proposal: the admin API wants `nhi:approve`.
    let r = approve(agent_token.clone()).await;
    assert_eq!(r.status(), 403);
    assert!(challenge(&r).contains("insufficient_scope"));
    // No token at all: 401.
    let r = http
        .get(format!("{}/admin/v1/proposals", server.base()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);

    // Admins list and show with plan, blast radius and digest.
    let listed: Value = http
        .get(format!(
            "{}/admin/v1/proposals?status=pending_approval",
            server.base()
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["proposals"][0]["id"], id.as_str());
    assert!(
        listed["proposals"][0]["digest"].is_string() && listed["proposals"][0]["plan"].is_array()
    );

    // First approval: recorded, no token. Same admin again: refused. Second admin: the token.
    let first: Value = approve(alice.clone()).await.json().await.expect("json");
    assert_eq!(first["status"], "pending_approval");
    assert!(first["approval_token"].is_null());
    let again = approve(alice.clone()).await;
    assert_eq!(again.status(), 409);
    let second: Value = approve(bob).await.json().await.expect("json");
    assert_eq!(second["status"], "approved");
    let token = second["approval_token"].as_str().expect("token").to_owned();

    let applied = agent
        .call(
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(applied["proposal"]["status"], "applied");
    let approvers: Vec<&str> = applied["proposal"]["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .map(|a| a["approver"].as_str().expect("approver"))
        .collect();
    assert_eq!(approvers.len(), 2);
    assert!(approvers.contains(&"admin-alice") && approvers.contains(&"admin-bob"));

    // Rejection through the API; a bad body is a 400 with a JSON error.
    let other = agent
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "reason": "to reject"}),
        )
        .await
        .ok();
    let other_id = other["proposal"]["id"].as_str().expect("id").to_owned();
    let url = format!("{}/admin/v1/proposals/{other_id}/reject", server.base());
    let bad = http
        .post(&url)
        .bearer_auth(&alice)
        .body("nope")
        .send()
        .await
        .expect("reject");
    assert_eq!(bad.status(), 400);
    assert!(bad.json::<Value>().await.expect("json")["error"].is_string());
    let ok: Value = http
        .post(&url)
        .bearer_auth(&alice)
        .json(&json!({"reason": "not during the freeze"}))
        .send()
        .await
        .expect("reject")
        .json()
        .await
        .expect("json");
    assert_eq!(ok["status"], "rejected");
    let missing = http
        .get(format!(
            "{}/admin/v1/proposals/prop_0123456789abcdef0123456789abcdef",
            server.base()
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    // The audit record names issuer, subject, client and scopes of each caller.
    agent.close().await;
    drop(server);
    let audit = env.audit();
    let approvals = audit_for(&audit, "approve");
    assert!(
        approvals
            .iter()
            .any(|r| r["principal"] == "admin-bob" && r["issuer"] == idp.issuer.as_str())
    );
    let apply = audit_for(&audit, "apply_proposal");
    assert!(
        apply
            .iter()
            .any(|r| r["decision"] == "allow" && r["client_id"] == "agent")
    );
}

#[tokio::test]
async fn a_reader_sees_only_read_tools() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let reader = server
        .client_with_token(&idp.token("reader", "nhi:read", RESOURCE).await)
        .await;
    assert_eq!(
        reader.tools().await,
        [
            "get_identity",
            "get_proposal",
            "list_findings",
            "list_identities",
            "list_proposals"
        ]
    );
    let page = reader
        .call("list_identities", json!({"limit": 3}))
        .await
        .ok();
    assert_eq!(page["identities"].as_array().expect("ids").len(), 3);
    reader.close().await;
}

#[test]
fn python_sdk_with_a_bearer_header() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let token = rt.block_on(idp.token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE));
    let out = std::process::Command::new(peer_path("NHI_TEST_PYTHON"))
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/workflow.py"))
        .args(["--binary", BIN, "--data-dir"])
        .arg(&env.data)
        .arg("--config")
        .arg(env.config.as_ref().expect("config"))
        .arg("--approver-key")
        .arg(env.key("alice@example.com"))
        .args([
            "--http",
            &server.url,
            "--header",
            &format!("Authorization: Bearer {token}"),
        ])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["status"], "applied");
}
