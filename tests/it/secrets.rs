//! Secret material never reaches a tool result, a log line, an audit record or an error.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn the_rotated_secret_and_the_approval_secrets_appear_nowhere_but_the_sink() {
    let env = Env::new();
    // Even with every log turned up: rmcp would log whole requests at debug.
    let client = env.stdio_with_env(&[("NHI_MCP_LOG", "trace")]).await;
    let mut seen = String::new();
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    let token = env.approve(&id, "alice@example.com");
    for (tool, args) in [
        (
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        ),
        (
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        ),
        ("get_proposal", json!({"proposal_id": id})),
        ("get_identity", json!({"identity_id": identity})),
        ("list_identities", json!({"limit": 500})),
        ("list_findings", json!({"limit": 500})),
        ("list_proposals", json!({})),
    ] {
        seen.push_str(&client.call(tool, args).await.text());
    }
    client.close().await;

    let secret = sink_secret(&env.data, &id);
    assert!(secret.len() > 40);
    let sink = env.data.join("secrets").join(format!("{id}.json"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sink).expect("sink").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "sink file mode");

    let key = std::fs::read_to_string(env.data.join("approval.key")).expect("key");
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let audit = env.cli(&["audit", "export"]);
    let audit = String::from_utf8_lossy(&audit.stdout).to_string();
    let log = std::fs::read_to_string(env.stderr_log()).expect("server log");
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log level did not take"
    );
    let cli_out = {
        let o = env.cli(&["proposals", "show", &id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    for (what, text) in [
        ("tool results", &seen),
        ("audit log", &audit),
        ("server log", &log),
        ("CLI", &cli_out),
    ] {
        assert!(
            !text.contains(&secret),
            "the rotated secret leaked into the {what}"
        );
        assert!(
            !text.contains(&key_body),
            "the approval key leaked into the {what}"
        );
    }
    for (what, text) in [
        ("audit log", &audit),
        ("server log", &log),
        ("tool results", &seen),
    ] {
        assert!(
            !text.contains(&token),
            "the approval token leaked into the {what}"
        );
    }
    assert!(
        audit.contains("[redacted]"),
        "the token argument is redacted, not dropped"
    );
    // The database file holds no secret either.
    for file in ["nhi-mcp.sqlite3", "nhi-mcp.sqlite3-wal"] {
        let Ok(bytes) = std::fs::read(env.data.join(file)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&secret) && !text.contains(&token),
            "a secret is stored in {file}"
        );
    }
}
