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
    // The bad tokens come from one address: the first is recorded, the rest counted (see
    // `a_thousand_requests_without_a_token_add_a_few_counted_records`); each 403 is recorded.
    assert!(denied.len() >= 3, "{denied:?}");
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
    let header = format!("Authorization: Bearer {token}");
    let out = python_workflow_output(&env, &["--http", &server.url, "--header", &header]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["status"], "applied");
}

// ---- sessions bound to their principal ----------------------------------------------------

const SSE: &str = "application/json, text/event-stream";

/// A raw MCP session over HTTP, for requests the rmcp client would never send.
struct RawSession {
    url: String,
    token: String,
    id: String,
}

impl RawSession {
    /// `initialize` and `notifications/initialized` with `token`.
    async fn open(url: &str, token: &str) -> Self {
        let r = post(url, Some(token), &init()).await;
        assert_eq!(r.status(), 200, "initialize");
        let id = r
            .headers()
            .get("mcp-session-id")
            .expect("a session id")
            .to_str()
            .expect("ascii")
            .to_owned();
        let body = r.text().await.expect("body");
        assert!(body.contains("serverInfo"), "{body}");
        let session = Self {
            url: url.to_owned(),
            token: token.to_owned(),
            id,
        };
        let r = session
            .request(reqwest::Method::POST, &session.token, Some(&session.id))
            .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
            .await
            .expect("initialized");
        assert!(r.status().is_success(), "initialized: {}", r.status());
        session
    }

    /// A request with `token` and (if given) the session id `session`.
    fn request(
        &self,
        method: reqwest::Method,
        token: &str,
        session: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let accept = if method == reqwest::Method::GET {
            "text/event-stream"
        } else {
            SSE
        };
        let mut r = reqwest::Client::new()
            .request(method, &self.url)
            .bearer_auth(token)
            .header("Accept", accept)
            .header("MCP-Protocol-Version", "2025-06-18");
        if let Some(s) = session {
            r = r.header("Mcp-Session-Id", s);
        }
        r
    }

    /// `tools/call list_identities` in this session with `token`.
    async fn list_identities(&self, token: &str) -> reqwest::Response {
        self.request(reqwest::Method::POST, token, Some(&self.id))
            .json(&call("list_identities", json!({"limit": 2})))
            .send()
            .await
            .expect("tools/call")
    }

    /// The owner can still use the session: a tool call answers with identities.
    async fn still_works(&self) {
        let r = self.list_identities(&self.token).await;
        assert_eq!(r.status(), 200, "the owner's session broke");
        let body = r.text().await.expect("body");
        assert!(body.contains("identities"), "{body}");
    }
}

/// Reads an SSE body until `needle` appears or `wait` is over; what was read.
async fn read_for(mut r: reqwest::Response, needle: &str, wait: std::time::Duration) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + wait;
    while !text.contains(needle) {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    text
}

/// What the server answers for a session id it has never seen.
async fn unknown_session_answer(session: &RawSession) -> (reqwest::StatusCode, String) {
    let r = session
        .request(
            reqwest::Method::POST,
            &session.token,
            Some("00000000-0000-0000-0000-000000000000"),
        )
        .json(&call("list_identities", json!({})))
        .send()
        .await
        .expect("post");
    (r.status(), r.text().await.expect("body"))
}

async fn assert_refused_like_unknown(
    r: reqwest::Response,
    unknown: &(reqwest::StatusCode, String),
) {
    assert_eq!(r.status(), 404);
    let body = r.text().await.expect("body");
    assert_eq!(body, unknown.1, "refused otherwise than an unknown session");
    assert!(
        !body.contains("identities"),
        "another principal's result leaked"
    );
}

#[tokio::test]
async fn another_principals_session_id_is_refused_like_an_unknown_one_on_every_method() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let owner_token = idp
        .token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
        .await;
    let thief = idp.token("reader", "nhi:read", RESOURCE).await;
    let owner = RawSession::open(&server.url, &owner_token).await;
    let unknown = unknown_session_answer(&owner).await;
    assert_eq!(unknown.0, 404);
    owner.still_works().await;

    // POST tools/call in the owner's session.
    assert_refused_like_unknown(owner.list_identities(&thief).await, &unknown).await;
    owner.still_works().await;

    // GET: the owner's standalone SSE stream.
    let r = owner
        .request(reqwest::Method::GET, &thief, Some(&owner.id))
        .send()
        .await
        .expect("get");
    assert_refused_like_unknown(r, &unknown).await;
    owner.still_works().await;

    // GET with Last-Event-ID: resuming the owner's tool-call stream, which is open (only its
    // first event read) when the thief asks.
    let in_flight = owner.list_identities(&owner.token).await;
    assert_eq!(in_flight.status(), 200);
    let first = read_for(in_flight, "\n\n", std::time::Duration::from_secs(5)).await;
    let event_id = first
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .map(str::trim)
        .expect("the stream's first event has an id")
        .to_owned();
    let r = owner
        .request(reqwest::Method::GET, &thief, Some(&owner.id))
        .header("Last-Event-ID", &event_id)
        .send()
        .await
        .expect("resume");
    assert_refused_like_unknown(r, &unknown).await;
    // The owner resuming from the same event is let through to rmcp.
    let r = owner
        .request(reqwest::Method::GET, &owner.token, Some(&owner.id))
        .header("Last-Event-ID", &event_id)
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status(), 200, "the owner may resume its own stream");

    // DELETE: the session survives the thief's attempt, and ends on the owner's.
    let r = owner
        .request(reqwest::Method::DELETE, &thief, Some(&owner.id))
        .send()
        .await
        .expect("delete");
    assert_refused_like_unknown(r, &unknown).await;
    owner.still_works().await;
    let r = owner
        .request(reqwest::Method::DELETE, &owner.token, Some(&owner.id))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204, "DELETE answers 204 No Content");
    assert_eq!(owner.list_identities(&owner.token).await.status(), 404);

    // Each attempt is on the audit record under the thief's name, naming the owner.
    drop(server);
    let audit = env.audit();
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            r["decision"] == "deny"
                && r["reason"]
                    .as_str()
                    .is_some_and(|m| m.contains("session belongs to another principal (`agent`)"))
        })
        .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(refused.iter().all(|r| r["principal"] == "reader"));
    let actions: Vec<&str> = refused
        .iter()
        .map(|r| r["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        ["list_identities", "mcp GET", "mcp GET", "mcp DELETE"]
    );
    let text = audit.iter().map(Value::to_string).collect::<String>();
    assert!(
        !text.contains(&owner.id),
        "a session id reached the audit log"
    );
}

#[tokio::test]
async fn a_session_thief_racing_the_owner_never_gets_a_result() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let owner_token = idp
        .token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
        .await;
    let thief = idp
        .token("proposer", "nhi:read nhi:propose", RESOURCE)
        .await;
    let owner = RawSession::open(&server.url, &owner_token).await;
    let owner = &owner;
    let attempts = (0..20).map(|i| {
        let token = if i % 2 == 0 {
            owner_token.clone()
        } else {
            thief.clone()
        };
        // Each its own JSON-RPC id: rmcp routes answers in a session by request id.
        let mut body = call("list_identities", json!({"limit": 2}));
        body["id"] = json!(100 + i);
        async move {
            let r = owner
                .request(reqwest::Method::POST, &token, Some(&owner.id))
                .json(&body)
                .send()
                .await
                .expect("tools/call");
            (i % 2 == 0, r)
        }
    });
    for (is_owner, r) in futures_util::future::join_all(attempts).await {
        let status = r.status();
        let body = r.text().await.expect("body");
        if is_owner {
            assert_eq!(status, 200);
            assert!(body.contains("identities"), "{body}");
        } else {
            assert_eq!(status, 404);
            assert!(!body.contains("identities"), "{body}");
        }
    }
}

#[test]
fn python_sdk_with_a_bearer_header_and_a_session_ends_it_without_warning() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let token = rt.block_on(idp.token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE));
    // `legacy` negotiates 2025-11-25: a session, bound to the token's principal, ended by DELETE.
    let header = format!("Authorization: Bearer {token}");
    let out = python_workflow_output(
        &env,
        &[
            "--mode",
            "legacy",
            "--http",
            &server.url,
            "--header",
            &header,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["status"], "applied");
    assert!(
        !stderr.contains("Session termination failed"),
        "the SDK warned on DELETE: {stderr}"
    );
}

// ---- bearer token checks against the real issuer ---------------------------------------------

#[tokio::test]
async fn require_typ_accepts_the_issuers_at_jwt_and_refuses_another_type() {
    let idp = Idp::start();
    let token = idp.token("reader", "nhi:read", RESOURCE).await;
    for (required, ok) in [
        ("at+jwt", true),
        ("application/AT+JWT", true),
        ("jwt", false),
    ] {
        let env = Env::with_config(&idp.config("").replace(
            "[auth]\n",
            &format!("[auth]\nrequire_typ = \"{required}\"\n"),
        ));
        let server = env.http_server();
        let r = post(&server.url, Some(&token), &init()).await;
        if ok {
            assert_eq!(r.status(), 200, "{required}");
        } else {
            assert_eq!(r.status(), 401, "{required}");
            assert!(challenge(&r).contains("invalid_token"));
            let body: Value = r.json().await.expect("json");
            let e = body["error"].as_str().expect("error");
            assert!(e.contains("`at+jwt`") && e.contains("not `jwt`"), "{e}");
        }
    }
    // oidc-provider's tokens live 300 s: a cap below that refuses them, naming both.
    let env = Env::with_config(
        &idp.config("")
            .replace("[auth]\n", "[auth]\nmax_token_lifetime = \"4m\"\n"),
    );
    let server = env.http_server();
    let r = post(&server.url, Some(&token), &init()).await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("longer than the 4m"),
        "{body}"
    );
}

// ---- unauthenticated refusals cannot fill the disk -------------------------------------------

#[tokio::test]
async fn a_thousand_requests_without_a_token_add_a_few_counted_records() {
    let idp = Idp::start();
    let env = Env::with_config(
        &idp.config("")
            .replace("[auth]\n", "[auth]\nrefusal_audit_interval = \"5s\"\n"),
    );
    let server = env.http_server();
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for chunk in 0..20 {
        let batch = (0..50).map(|i| {
            let http = http.clone();
            let url = server.url.clone();
            async move {
                let mut r = http.post(url).header("Accept", SSE).json(&init());
                // Half without a token, half with a bad one: both are counted.
                if (chunk + i) % 2 == 1 {
                    r = r.bearer_auth("not-a-jwt");
                }
                r.send().await.expect("post").status()
            }
        });
        statuses.extend(futures_util::future::join_all(batch).await);
    }
    assert!(statuses.iter().all(|s| *s == 401));
    let elapsed = started.elapsed().as_secs();
    // After the interval, the next refusal (or the flush) writes the count.
    tokio::time::sleep(std::time::Duration::from_millis(5100)).await;
    assert_eq!(post(&server.url, None, &init()).await.status(), 401);
    drop(server);
    let audit = env.audit();
    let added: Vec<&Value> = audit
        .iter()
        .filter(|r| r["principal"] == "anonymous" || r["principal"] == "unauthenticated")
        .collect();
    // One record and one count per 5 s interval the requests spanned, plus the last refusal.
    let intervals = elapsed / 5 + 2;
    assert!(
        added.len() as u64 <= 2 * intervals + 1,
        "{} records for 1001 refusals in {elapsed} s",
        added.len()
    );
    let counted: u64 = added
        .iter()
        .filter(|r| r["action"] == "refusals_counted")
        .map(|r| r["arguments"]["count"].as_u64().expect("count"))
        .sum();
    let single = added
        .iter()
        .filter(|r| r["action"] != "refusals_counted")
        .count() as u64;
    assert_eq!(counted + single, 1001, "{added:#?}");
    if elapsed < 5 {
        assert!(counted >= 999, "{added:#?}");
    }
    let summary = added
        .iter()
        .find(|r| r["action"] == "refusals_counted")
        .expect("a counted record");
    assert_eq!(summary["decision"], "deny");
    assert_eq!(summary["arguments"]["source"], "127.0.0.1");
    assert!(
        summary["reason"]
            .as_str()
            .expect("reason")
            .contains("more requests without a valid bearer token from `127.0.0.1`"),
        "{summary}"
    );
    assert!(added.iter().any(|r| {
        r["reason"]
            .as_str()
            .is_some_and(|m| m.ends_with("from `127.0.0.1`"))
    }));
}

// ---- the admin API: reads filtered by policy and audited; Host and Origin --------------------

#[tokio::test]
async fn admin_reads_show_only_what_policy_lets_the_admin_decide_and_are_audited() {
    let idp = Idp::start();
    let mut env = Env::new();
    let policy = env.path("bob-only.cedar");
    std::fs::write(
        &policy,
        r#"
@id("agents-read-all")
permit (principal is Nhi::Agent, action == Nhi::Action::"read", resource);
@id("agents-change-all")
permit (
  principal is Nhi::Agent,
  action in [Nhi::Action::"propose_rotation", Nhi::Action::"propose_revocation", Nhi::Action::"apply"],
  resource
);
@id("bob-approves")
permit (principal == Nhi::Admin::"admin-bob", action == Nhi::Action::"approve", resource);
"#,
    )
    .expect("policy");
    let config = env.path("config.toml");
    std::fs::write(
        &config,
        idp.config(&format!("[policy]\nfiles = [\"{}\"]\n", policy.display())),
    )
    .expect("config");
    env.config = Some(config);
    let server = env.http_server();
    let agent = server
        .client_with_token(
            &idp.token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
                .await,
        )
        .await;
    let (identity, credential) = rotation_target(&agent).await;
    let id = propose(&agent, &identity, &credential).await;
    agent.close().await;
    let alice = idp
        .token("admin-alice", "nhi:read nhi:approve", RESOURCE)
        .await;
    let bob = idp
        .token("admin-bob", "nhi:read nhi:approve", RESOURCE)
        .await;
    let http = reqwest::Client::new();
    let get = |path: String, token: String| {
        let http = http.clone();
        let url = format!("{}/admin/v1{path}", server.base());
        async move { http.get(url).bearer_auth(token).send().await.expect("get") }
    };

    let listed: Value = get("/proposals".into(), bob.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["proposals"][0]["id"], id.as_str());
    assert_eq!(
        get(format!("/proposals/{id}"), bob.clone()).await.status(),
        200
    );
    // Alice may not decide on it: she does not see it, and a hidden one is a missing one.
    let listed: Value = get("/proposals".into(), alice.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["proposals"], json!([]), "{listed}");
    let hidden = get(format!("/proposals/{id}"), alice.clone()).await;
    assert_eq!(hidden.status(), 404);
    let hidden: Value = hidden.json().await.expect("json");
    let missing: Value = get(
        "/proposals/prop_0123456789abcdef0123456789abcdef".into(),
        alice.clone(),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(
        hidden["error"].as_str().map(|e| e.replace(&id, "ID")),
        missing["error"]
            .as_str()
            .map(|e| e.replace("prop_0123456789abcdef0123456789abcdef", "ID"))
    );

    drop(server);
    let audit = env.audit();
    let reads = audit_for(&audit, "admin_get_proposal");
    assert!(reads.iter().any(|r| r["principal"] == "admin-bob"
        && r["decision"] == "allow"
        && r["proposal_id"] == id.as_str()));
    assert!(reads.iter().any(|r| r["principal"] == "admin-alice"
        && r["decision"] != "allow"
        && r["proposal_id"] == id.as_str()));
    let lists = audit_for(&audit, "admin_list_proposals");
    assert!(
        lists.iter().any(|r| r["principal"] == "admin-bob"
            && r["outcome"].as_str().is_some_and(|o| o.contains(&id)))
    );
    assert!(
        lists
            .iter()
            .any(|r| r["principal"] == "admin-alice" && r["outcome"] == "0 proposals: ")
    );
}

#[tokio::test]
async fn admin_routes_check_host_and_origin_and_two_host_headers_are_refused() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let alice = idp
        .token("admin-alice", "nhi:read nhi:approve", RESOURCE)
        .await;
    let http = reqwest::Client::new();
    let list = format!("{}/admin/v1/proposals", server.base());
    let ok = http
        .get(&list)
        .bearer_auth(&alice)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), 200);
    let rebinding = http
        .get(&list)
        .bearer_auth(&alice)
        .header("Host", "evil.example.com")
        .send()
        .await
        .expect("get");
    assert_eq!(
        rebinding.status(),
        403,
        "a foreign Host reaches the admin API"
    );
    let page = http
        .get(&list)
        .bearer_auth(&alice)
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 403, "a foreign page reaches the admin API");
    let local_page = http
        .get(&list)
        .bearer_auth(&alice)
        .header("Origin", "http://localhost:3000")
        .send()
        .await
        .expect("get");
    assert_eq!(local_page.status(), 200);
    // No token and a foreign Host: refused for the Host, before any token check.
    let r = http
        .get(&list)
        .header("Host", "evil.example.com")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);

    // Two Host headers, on the admin API and on /mcp, with and without a token: 400.
    for url in [list.clone(), server.url.clone()] {
        let status = two_hosts(&url, &alice).await;
        assert_eq!(status, 400, "{url}");
    }
}

/// Sends GET `url` with two `Host` headers over a raw connection (HTTP clients send one).
async fn two_hosts(url: &str, token: &str) -> u16 {
    let (url, token) = (url.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").expect("http url");
        let (authority, path) = rest.split_once('/').expect("path");
        let mut tcp = std::net::TcpStream::connect(authority).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nHost: evil.example.com\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).expect("write");
        let mut answer = [0u8; 512];
        let n = tcp.read(&mut answer).unwrap_or(0);
        let text = String::from_utf8_lossy(&answer[..n]).into_owned();
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text}"))
    })
    .await
    .expect("raw request")
}

#[tokio::test]
async fn one_principal_cannot_hold_more_than_a_hundred_sessions() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let hog = idp
        .token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
        .await;
    let other = idp.token("reader", "nhi:read", RESOURCE).await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = post(&server.url, Some(&hog), &init()).await;
        assert_eq!(r.status(), 200);
        ids.push(
            r.headers()
                .get("mcp-session-id")
                .expect("session")
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
    }
    let r = post(&server.url, Some(&hog), &init()).await;
    assert_eq!(r.status(), 503, "the 101st session");
    assert!(r.headers().get("mcp-session-id").is_none());
    // Another principal is not locked out.
    assert_eq!(post(&server.url, Some(&other), &init()).await.status(), 200);
    // Ending one makes room again.
    let r = reqwest::Client::new()
        .delete(&server.url)
        .bearer_auth(&hog)
        .header("Mcp-Session-Id", &ids[0])
        .header("MCP-Protocol-Version", "2025-06-18")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(post(&server.url, Some(&hog), &init()).await.status(), 200);
    drop(server);
    let audit = env.audit();
    assert!(audit.iter().any(|r| r["principal"] == "agent"
        && r["decision"] == "deny"
        && r["reason"] == "too many open sessions"));
}
