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
