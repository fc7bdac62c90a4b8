//! Scopes: `tools/list` shows only what the caller may call, and every call is checked.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_read_only_principal_sees_and_may_call_only_read_tools() {
    let env = Env::with_config("[stdio]\nprincipal = \"agent:reader\"\nscopes = [\"nhi:read\"]\n");
    let client = env.stdio().await;
    assert_eq!(
        client.tools().await,
        [
            "get_identity",
            "get_proposal",
            "list_findings",
            "list_identities",
            "list_proposals"
        ]
    );
    let msg = client
        .call(
            "propose_rotation",
            json!({"identity_id": "demo-aws:user/ci-deploy", "credential_id": "x", "reason": "r"}),
        )
        .await
        .tool_error();
    assert_eq!(
        msg,
        "this call needs the `nhi:propose` scope, which `agent:reader` does not hold"
    );
    let msg = client
        .call(
            "revoke_identity",
            json!({"identity_id": "demo-aws:user/ci-deploy", "approval_token": "t"}),
        )
        .await
        .tool_error();
    assert!(msg.contains("`nhi:apply`"), "{msg}");
    let audit = env.audit();
    let denied = audit_for(&audit, "propose_rotation");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["decision"], "deny");
    assert_eq!(denied[0]["principal"], "agent:reader");
    let proposals = client.call("list_proposals", json!({})).await.ok();
    assert!(proposals["proposals"].as_array().expect("list").is_empty());
    client.close().await;
}

#[tokio::test]
async fn a_proposer_cannot_apply() {
    let env = Env::with_config("[stdio]\nscopes = [\"nhi:read\", \"nhi:propose\"]\n");
    let client = env.stdio().await;
    let tools = client.tools().await;
    assert!(
        tools.contains(&"revoke_identity".to_owned())
            && !tools.contains(&"apply_proposal".to_owned())
    );
    let msg = client
        .call(
            "apply_proposal",
            json!({"proposal_id": "prop_0123456789abcdef0123456789abcdef", "approval_token": "t"}),
        )
        .await
        .tool_error();
    assert!(msg.contains("`nhi:apply`"), "{msg}");
    client.close().await;
}

#[test]
fn the_approve_scope_cannot_be_given_to_an_mcp_client() {
    let env = Env::with_config("[stdio]\nscopes = [\"nhi:read\", \"nhi:approve\"]\n");
    let out = env.cli(&["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("humans"));
}
