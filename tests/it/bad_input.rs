//! Bad input gets a clear one-line error and changes nothing. Argument errors are tool results
//! with `isError` (MCP 2025-11-25, SEP-1303), so the model can read them and correct the call.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn malformed_tool_arguments_are_refused_with_a_readable_error() {
    let env = Env::new();
    let client = env.stdio().await;
    let check = async |tool: &str, args: serde_json::Value, expect: &str| {
        let msg = client.call(tool, args.clone()).await.tool_error();
        assert!(
            msg.contains(expect),
            "{tool} {args}: `{msg}` lacks `{expect}`"
        );
        assert!(!msg.contains('\n'), "multi-line error: {msg}");
    };
    check(
        "get_identity",
        json!({"identity_id": "no-colon"}),
        "<provider>:<native id>",
    )
    .await;
    check(
        "get_identity",
        json!({"identity_id": "demo-aws:a\u{1b}[31mred"}),
        "control character",
    )
    .await;
    check(
        "get_identity",
        json!({"identity_id": format!("demo-aws:{}", "x".repeat(300))}),
        "longer than",
    )
    .await;
    check("get_identity", json!({}), "identity_id").await;
    check(
        "get_identity",
        json!({"identity_id": "demo-aws:x", "extra": 1}),
        "extra",
    )
    .await;
    check("list_identities", json!({"limit": 0}), "out of range").await;
    check("list_identities", json!({"limit": 501}), "1 to 500").await;
    check("list_identities", json!({"limit": -1}), "expected u32").await;
    check(
        "list_identities",
        json!({"cursor": "not-a-cursor"}),
        "cursor",
    )
    .await;
    check("list_identities", json!({"kind": "robot"}), "robot").await;
    check(
        "list_identities",
        json!({"provider": "nope"}),
        "not configured",
    )
    .await;
    check("list_identities", json!({"finding": "NHI99"}), "OWASP").await;
    check(
        "list_identities",
        json!({"text": "x".repeat(201)}),
        "longer than",
    )
    .await;
    check(
        "list_findings",
        json!({"severity": "apocalyptic"}),
        "apocalyptic",
    )
    .await;
    check(
        "get_proposal",
        json!({"proposal_id": "prop_123"}),
        "prop_<32 hex digits>",
    )
    .await;
    check(
        "propose_rotation",
        json!({"identity_id": "demo-aws:user/ci-deploy", "reason": "x".repeat(1001)}),
        "longer than 1000",
    )
    .await;
    check(
        "propose_rotation",
        json!({"identity_id": "demo-aws:user/ci-deploy", "reason": "two\nlines"}),
        "control character",
    )
    .await;
    check(
        "propose_rotation",
        json!({"identity_id": "demo-aws:user/ci-deploy", "reason": "r", "grace_period": "forever"}),
        "grace_period",
    )
    .await;
    check(
        "propose_rotation",
        json!({"identity_id": "demo-aws:user/ci-deploy", "reason": "r", "grace_period": "400d"}),
        "30 days",
    )
    .await;
    // An identity with two active credentials needs `credential_id`.
    check(
        "propose_rotation",
        json!({"identity_id": "demo-aws:user/ci-deploy", "reason": "r"}),
        "credential_id",
    )
    .await;

    // A cursor from one query does not work for another.
    let page = client
        .call("list_identities", json!({"limit": 2}))
        .await
        .ok();
    let cursor = page["next_cursor"].as_str().expect("cursor");
    check(
        "list_identities",
        json!({"limit": 2, "provider": "demo-aws", "cursor": cursor}),
        "different query",
    )
    .await;

    // Nothing was proposed by any of it.
    let proposals = client.call("list_proposals", json!({})).await.ok();
    assert!(proposals["proposals"].as_array().expect("list").is_empty());
    // And every refused call is on the audit record.
    let audit = env.audit();
    assert!(
        audit.iter().filter(|r| r["decision"] == "error").count() >= 20,
        "refusals not audited"
    );
    let logged = audit.iter().map(|r| r.to_string()).collect::<String>();
    assert!(
        !logged.contains('\u{1b}'),
        "a control character reached the audit log unescaped"
    );
    client.close().await;
}

#[tokio::test]
async fn unknown_ids_are_not_found_tool_errors() {
    let env = Env::new();
    let client = env.stdio().await;
    let msg = client
        .call(
            "get_identity",
            json!({"identity_id": "demo-aws:user/nobody"}),
        )
        .await
        .tool_error();
    assert_eq!(msg, "identity `demo-aws:user/nobody` not found");
    let msg = client
        .call("get_identity", json!({"identity_id": "elsewhere:user/x"}))
        .await
        .tool_error();
    assert_eq!(msg, "identity `elsewhere:user/x` not found");
    let msg = client
        .call(
            "get_proposal",
            json!({"proposal_id": "prop_0123456789abcdef0123456789abcdef"}),
        )
        .await
        .tool_error();
    assert!(msg.contains("not found"), "{msg}");
    let msg = client
        .call(
            "propose_rotation",
            json!({"identity_id": "demo-aws:user/ci-deploy", "credential_id": "AKIANOPE", "reason": "r"}),
        )
        .await
        .tool_error();
    assert!(msg.contains("credential `AKIANOPE` not found"), "{msg}");
    let msg = match client.call("no_such_tool", json!({})).await {
        Answer::Rpc(_, m) => m,
        other => panic!("{other:?}"),
    };
    assert!(!msg.is_empty());
    let audit = env.audit();
    assert!(
        audit_for(&audit, "no_such_tool")
            .iter()
            .any(|r| r["decision"] == "error")
    );
    client.close().await;
}

#[test]
fn malformed_config_names_file_line_and_key() {
    let env = Env::with_config("[findings]\nunused_days = 30\nstale_days = 3\n");
    let out = env.cli(&["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("config.toml") && err.contains("line 3") && err.contains("stale_days"),
        "{err}"
    );
    assert!(!env.data.exists(), "a bad config must not create anything");

    let env = Env::with_config("[approval]\ntoken_ttl = \"soon\"\n");
    let err = String::from_utf8_lossy(&env.cli(&["config", "check"]).stderr).to_string();
    assert!(
        err.contains("approval.token_ttl") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn malformed_inventory_names_file_line_and_key() {
    let env = Env::with_raw_config(
        "[[providers]]\nname = \"mine\"\nkind = \"inventory\"\npath = \"inv.toml\"\n",
    );
    let inv = env.path("inv.toml");
    std::fs::write(
        &inv,
        "[[identities]]\nnative_id = \"a\"\nkind = \"service_user\"\nname = \"a\"\ncreated_at = \"-1d\"\n\n[identities.permissions]\nprivileged = \"yes\"\n",
    )
    .expect("write");
    let out = env.command(&["config", "check"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("inv.toml") && err.contains("line 8") && err.contains("bool"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let env = Env::new();
    assert_eq!(env.cli(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        env.cli(&["approve", "prop_x", "--approver", "a"])
            .status
            .code(),
        Some(2),
        "--approver without --key"
    );
    let out = env.approve_as("prop_0123456789abcdef0123456789abcdef", "alice@example.com");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = env.cli(&["serve", "--http", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

const GOOD_INVENTORY: &str = "[[identities]]\nnative_id = \"a\"\nkind = \"role\"\nname = \"a\"\ncreated_at = \"-5d\"\n[identities.permissions]\n";

fn inventory(created_at: &str) -> String {
    GOOD_INVENTORY.replace("-5d", created_at)
}

/// An env whose one provider reads `inv.toml` (cached for an hour) holding `text`.
fn inventory_env(text: &str) -> Env {
    let env = Env::with_config(
        "[[providers]]\nname = \"mine\"\nkind = \"inventory\"\npath = \"inv.toml\"\nrefresh = \"1h\"\n",
    );
    std::fs::write(env.path("inv.toml"), text).expect("write inventory");
    env
}

/// Issue 8: 62 of 168 hostile inventory files panicked the process at start (a byte slice
/// inside `€`, chrono overflow on `+999999999d`).
#[test]
fn a_hostile_inventory_at_start_is_a_one_line_error_and_exit_1() {
    for created_at in ["-5€", "+999999999d", "-99999999999999999999h", "+€d", "-"] {
        let env = inventory_env(&inventory(created_at));
        let out = env.cli(&["serve"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{created_at}: {err}");
        assert!(!err.contains("panicked"), "{created_at}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("nhi-mcp:")).collect();
        assert_eq!(lines.len(), 1, "{created_at}: {err}");
        assert!(
            lines[0].contains("inv.toml") && lines[0].contains("`created_at`"),
            "{created_at}: {err}"
        );
    }
}

/// Issue 8: a hostile file swapped in under a running server panicked a worker, and the
/// client's `list_identities` never got an answer.
#[tokio::test]
async fn a_hostile_inventory_swapped_in_gets_list_identities_an_error_answer() {
    let env = inventory_env(GOOD_INVENTORY);
    let client = env.stdio().await;
    let page = client
        .call("list_identities", json!({"refresh": true}))
        .await
        .ok();
    assert_eq!(page["identities"].as_array().map(Vec::len), Some(1));
    for created_at in ["-5€", "+999999999d"] {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(env.path("inv.toml"), inventory(created_at)).expect("swap");
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            client.call("list_identities", json!({"refresh": true})),
        )
        .await
        .unwrap_or_else(|_| panic!("{created_at}: no answer to list_identities"));
        let msg = match answer {
            Answer::ToolError(m) | Answer::Rpc(_, m) => m,
            Answer::Ok(v) => panic!("{created_at}: a hostile file was served: {v}"),
        };
        assert!(!msg.contains('\n') && msg.chars().count() <= 501, "{msg}");
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(env.path("inv.toml"), GOOD_INVENTORY).expect("swap back");
    client
        .call("list_identities", json!({"refresh": true}))
        .await
        .ok();
    let log = std::fs::read_to_string(env.stderr_log()).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    client.close().await;
}

/// Issue 8: malformed requests over stdio got no answer carrying their id.
#[tokio::test]
async fn malformed_json_rpc_over_stdio_gets_one_answer_per_id() {
    let env = Env::new();
    let mut raw = crate::fuzz::RawStdio::start(&env).await;
    let call = |id: u64, params: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{params}}}"#)
    };
    let malformed = [
        (call(11, "[]"), -32602),
        (call(12, r#""x""#), -32602),
        (call(13, "5"), -32602),
        (call(14, "null"), -32602),
        (call(15, r#"{"name":5}"#), 0),
        (call(16, r#"{"name":"list_identities","arguments":[]}"#), 0),
        (call(17, r#"{"name":"list_identities","arguments":"x"}"#), 0),
        (call(18, "{}"), 0),
        (
            r#"{"jsonrpc":"2.0","id":19,"method":"tools/list","params":[]}"#.to_owned(),
            -32602,
        ),
        (r#"{"jsonrpc":"2.0","id":20,"method":5}"#.to_owned(), -32600),
        (
            r#"{"jsonrpc":"2.0","id":21,"method":null}"#.to_owned(),
            -32600,
        ),
        (
            r#"{"jsonrpc":"1.0","id":22,"method":"ping"}"#.to_owned(),
            -32600,
        ),
        (r#"{"id":23,"method":"ping"}"#.to_owned(), -32600),
        (r#"{"jsonrpc":"2.0","id":24}"#.to_owned(), -32600),
        (
            r#"{"jsonrpc":"2.0","id":25,"method":"ping","params":[1]}"#.to_owned(),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"s26","method":"tools/call","params":{"name":["x"]}}"#
                .to_owned(),
            0,
        ),
    ];
    for (line, code) in &malformed {
        let id: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(line).expect("json")["id"].clone();
        let (answer, others) = raw.exchange(line, &id).await;
        let answer = answer.unwrap_or_else(|| panic!("no answer to {line}"));
        assert!(others.is_empty(), "{others:?}");
        // 0: any answer rmcp gives a request it parses (an error or an `isError` result).
        if *code != 0 {
            assert_eq!(answer["error"]["code"], *code, "{line}: {answer}");
        } else {
            assert!(
                answer["error"].is_object() || answer["result"]["isError"] == true,
                "{line}: {answer}"
            );
        }
        crate::fuzz::check_answer(&answer, "never-sent", line);
    }
    for (line, code) in [
        ("{not json", -32700),
        ("[1, 2]", -32600),
        (r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, -32600),
    ] {
        let (answer, _) = raw.exchange(line, &serde_json::Value::Null).await;
        let answer = answer.unwrap_or_else(|| panic!("no answer to {line}"));
        assert_eq!(answer["error"]["code"], code, "{line}: {answer}");
    }
    // No second answer to any of them, and the session still serves.
    let (alive, others) = raw
        .exchange(
            r#"{"jsonrpc":"2.0","id":99,"method":"tools/list"}"#,
            &json!(99),
        )
        .await;
    assert!(others.is_empty(), "late answers: {others:?}");
    assert!(alive.is_some_and(|a| a["result"]["tools"].is_array()));
}

/// The same over Streamable HTTP: a JSON-RPC error carrying the id, not a plain-text 415.
#[tokio::test]
async fn malformed_json_rpc_over_http_gets_an_answer_with_its_id() {
    let env = Env::new();
    let server = env.http_server();
    let http = reqwest::Client::new();
    for (body, id, code) in [
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":[]}"#,
            json!(7),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"x","method":5}"#,
            json!("x"),
            -32600,
        ),
        ("{not json", serde_json::Value::Null, -32700),
        ("[]", serde_json::Value::Null, -32600),
    ] {
        let response = http
            .post(&server.url)
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400, "{body}");
        let answer: serde_json::Value = response.json().await.expect("a JSON-RPC body");
        assert_eq!(answer["id"], id, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    // An unknown method is 404 with -32601 (SEP-2575), its name quoted, not echoed raw.
    let response = http
        .post(&server.url)
        .header("Accept", "application/json, text/event-stream")
        .header("Content-Type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":3,"method":"no/such\u2028x"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 404);
    let answer: serde_json::Value = response.json().await.expect("a JSON-RPC body");
    assert_eq!(answer["error"]["code"], -32601, "{answer}");
    assert!(
        !answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains('\u{2028}')
    );
}

/// Issue 8: 100,162 characters of one `kind` came back in the error, with raw CR/LF and
/// U+2028/U+2029.
#[tokio::test]
async fn echoed_input_is_bounded_and_one_line() {
    let env = Env::new();
    let client = env.stdio().await;
    let long = "k".repeat(100_162);
    for args in [
        json!({"kind": long}),
        json!({"kind": "a\r\nSet-Cookie: x"}),
        json!({"kind": "a\u{2028}b\u{2029}c"}),
        json!({"provider": format!("{long}\u{2028}")}),
        json!({"limit": "x".repeat(5000)}),
        json!({long.clone(): 1}),
    ] {
        let msg = client
            .call("list_identities", args.clone())
            .await
            .tool_error();
        assert!(
            msg.chars().count() <= 501 && !msg.contains(['\n', '\r', '\u{2028}', '\u{2029}']),
            "{} characters: {}",
            msg.chars().count(),
            &msg[..msg.len().min(300)]
        );
    }
    let msg = client
        .call(
            "get_identity",
            json!({"identity_id": format!("demo-aws:{long}")}),
        )
        .await
        .tool_error();
    assert!(msg.chars().count() < 200, "{msg}");
    client.close().await;
}

/// Issue 8: an approval token under a mistyped name was audited verbatim, in the database and
/// in the export.
#[tokio::test]
async fn a_token_under_a_wrong_name_is_stored_nowhere() {
    let env = Env::new();
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    let token = env.approve(&id, "alice@example.com");
    for name in ["approval_tokens", "approvalToken", "ApprovalToken", "tok"] {
        let answer = client
            .call("apply_proposal", json!({"proposal_id": id, name: token}))
            .await;
        assert!(!answer.text().contains(&token), "{name}: token echoed");
    }
    // And as the value of an argument that takes none.
    let answer = client
        .call(
            "get_identity",
            json!({"identity_id": identity, "note": format!("see {token}")}),
        )
        .await;
    assert!(!answer.text().contains(&token));
    client.close().await;
    let export = serde_json::to_string(&env.audit()).expect("json");
    assert!(!export.contains(&token), "the token is in `audit export`");
    assert!(
        export.contains("[redacted]"),
        "nothing was redacted: {export}"
    );
    let mut files = vec![env.data.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for e in std::fs::read_dir(&path).expect("dir") {
                files.push(e.expect("entry").path());
            }
        } else if !path.ends_with("approval.key") {
            let bytes = std::fs::read(&path).expect("read");
            let found = bytes.windows(token.len()).any(|w| w == token.as_bytes());
            assert!(!found, "the token is stored in {}", path.display());
        }
    }
}

/// Issue 8: `how_to_approve` named the admin API where none is served.
#[tokio::test]
async fn how_to_approve_names_only_the_channels_served() {
    let how = async |client: &Client| {
        let (identity, credential) = rotation_target(client).await;
        let out = client
            .call(
                "propose_rotation",
                json!({"identity_id": identity, "credential_id": credential, "reason": "r"}),
            )
            .await
            .ok();
        out["approval"]["how_to_approve"]
            .as_str()
            .expect("how_to_approve")
            .to_owned()
    };
    let env = Env::new();
    let client = env.stdio().await;
    let text = how(&client).await;
    assert!(
        text.contains("nhi-mcp approve") && !text.contains("/admin/v1"),
        "{text}"
    );
    client.close().await;

    let env = Env::new();
    let server = env.http_server();
    let text = how(&server.client().await).await;
    assert!(
        !text.contains("/admin/v1"),
        "no `[auth]`, no admin API: {text}"
    );

    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let token = idp
        .token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
        .await;
    let text = how(&server.client_with_token(&token).await).await;
    assert!(text.contains("/admin/v1/proposals/"), "{text}");
}
