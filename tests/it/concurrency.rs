//! Decisions under concurrency (issue #8): real `nhi-mcp` CLI processes started at the same
//! instant, against one data dir, with the server running. Each decision is read, checked and
//! written in one transaction that holds the proposal, so exactly one of two racing admins issues
//! the token, and a withdrawal and an apply cannot both win.

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// The default policy, with every change needing two approvers.
const TWO_APPROVERS: &str = r#"
@id("agents-read-all")
permit (principal is Nhi::Agent, action == Nhi::Action::"read", resource);

@id("agents-change-all-two-approvers")
@required_approvals("2")
permit (
  principal is Nhi::Agent,
  action in [Nhi::Action::"propose_rotation", Nhi::Action::"propose_revocation", Nhi::Action::"apply"],
  resource
);

@id("admins-approve-all")
permit (principal is Nhi::Admin, action == Nhi::Action::"approve", resource);
"#;

fn two_approver_env() -> Env {
    let mut env = Env::new();
    let policy = env.path("two.cedar");
    std::fs::write(&policy, TWO_APPROVERS).expect("write policy");
    env.set_config(&format!("[policy]\nfiles = [\"{}\"]\n", policy.display()));
    env
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nhi-mcp")
}

/// Starts one process per argument list, back to back, then waits for all of them.
fn at_once(env: &Env, runs: &[&[&str]]) -> Vec<Output> {
    let children: Vec<Child> = runs.iter().map(|args| spawn(env, args)).collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect()
}

fn shown(env: &Env, id: &str) -> Value {
    let out = env.cli(&["proposals", "show", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

fn is_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && !s.contains(char::is_whitespace)
}

/// Issue #8: two admins approving a two-approver proposal at the same moment both recorded
/// their approval and the proposal stayed `pending_approval` without a token (7 of 7 rounds).
#[tokio::test]
async fn two_admins_approving_at_once_issue_exactly_one_token() {
    let env = two_approver_env();
    let client = env.stdio().await;
    for round in 0..10 {
        let (identity, credential) = rotation_target(&client).await;
        let id = propose(&client, &identity, &credential).await;
        let p = shown(&env, &id);
        assert_eq!(p["required_approvals"], 2, "{p}");
        let outs = at_once(
            &env,
            &[
                &[
                    "approve",
                    &id,
                    "--approver",
                    "bob@example.com",
                    "--key",
                    &env.key_arg("bob@example.com"),
                ],
                &[
                    "approve",
                    &id,
                    "--approver",
                    "carol@example.com",
                    "--key",
                    &env.key_arg("carol@example.com"),
                ],
            ],
        );
        for o in &outs {
            assert!(o.status.success(), "round {round}: {}", stderr(o));
        }
        let tokens: Vec<String> = outs.iter().map(stdout).filter(|s| is_jwt(s)).collect();
        assert_eq!(
            tokens.len(),
            1,
            "round {round}: exactly one token: {:?}",
            outs.iter().map(stdout).collect::<Vec<_>>()
        );
        assert!(
            outs.iter()
                .any(|o| stdout(o).is_empty() && stderr(o).contains("1 of 2")),
            "round {round}: the other recorded approval 1 of 2: {:?}",
            outs.iter().map(stderr).collect::<Vec<_>>()
        );
        let p = shown(&env, &id);
        assert_eq!(p["status"], "approved", "round {round}: {p}");
        assert_eq!(p["approvals"].as_array().map(Vec::len), Some(2), "{p}");

        // Withdraw it (an admin's reject of an approved proposal), freeing the identity for
        // the next round; the token is refused from then on.
        let withdrawn = env.cli(&[
            "reject",
            &id,
            "--approver",
            "dave@example.com",
            "--key",
            &env.key_arg("dave@example.com"),
            "--reason",
            "next round",
        ]);
        assert!(withdrawn.status.success(), "{}", stderr(&withdrawn));
        let refused = client
            .call(
                "apply_proposal",
                json!({"proposal_id": id, "approval_token": tokens[0]}),
            )
            .await
            .tool_error();
        assert!(refused.contains("withdrawn"), "{refused}");
    }
    client.close().await;
    assert!(env.cli(&["audit", "verify"]).status.success());
}

/// The same approver twice at the same instant counts once.
#[tokio::test]
async fn the_same_approver_twice_at_once_counts_once() {
    let env = two_approver_env();
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    let outs = at_once(
        &env,
        &[
            &[
                "approve",
                &id,
                "--approver",
                "bob@example.com",
                "--key",
                &env.key_arg("bob@example.com"),
            ],
            &[
                "approve",
                &id,
                "--approver",
                "bob@example.com",
                "--key",
                &env.key_arg("bob@example.com"),
            ],
        ],
    );
    let ok: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        ok.len(),
        1,
        "{:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    assert!(stdout(ok[0]).is_empty(), "no token from one approver");
    let refused = outs.iter().find(|o| !o.status.success()).expect("refused");
    assert!(
        stderr(refused).contains("already approved"),
        "{}",
        stderr(refused)
    );
    let p = shown(&env, &id);
    assert_eq!(p["status"], "pending_approval", "{p}");
    assert_eq!(p["approvals"].as_array().map(Vec::len), Some(1), "{p}");
    // A second, different approver completes it.
    let token = env.approve(&id, "carol@example.com");
    let applied = client
        .call(
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(applied["proposal"]["status"], "applied", "{applied}");
    client.close().await;
}

/// An admin withdraws an approval: the proposal is `rejected`, the token refused (audited), the
/// credential untouched.
#[tokio::test]
async fn a_withdrawn_approval_refuses_its_token() {
    let env = Env::new();
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    let token = env.approve(&id, "alice@example.com");
    let out = env.cli(&[
        "reject",
        &id,
        "--approver",
        "bob@example.com",
        "--key",
        &env.key_arg("bob@example.com"),
        "--reason",
        "changed my mind",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The admin is told it was a withdrawal, not the rejection of a pending proposal.
    assert!(
        stderr(&out).contains("withdrawn") && stderr(&out).contains("refused"),
        "{}",
        stderr(&out)
    );
    let p = shown(&env, &id);
    assert_eq!(p["status"], "rejected");
    let outcome = p["outcome"].as_str().expect("outcome");
    assert!(
        outcome.contains("approval withdrawn by bob@example.com")
            && outcome.contains("changed my mind"),
        "{outcome}"
    );
    let refused = client
        .call(
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        )
        .await
        .tool_error();
    assert!(refused.contains("withdrawn"), "{refused}");
    let d = client
        .call("get_identity", json!({"identity_id": identity}))
        .await
        .ok();
    assert!(
        d["identity"]["credentials"]
            .as_array()
            .expect("creds")
            .iter()
            .any(|c| c["id"] == credential.as_str() && c["status"] == "active"),
        "{d}"
    );
    let audit = env.audit();
    assert!(
        audit_for(&audit, "reject").iter().any(|r| r["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("approval withdrawn"))),
        "withdrawal audited"
    );
    assert!(
        audit_for(&audit, "apply_proposal")
            .iter()
            .any(|r| r["decision"] == "deny"
                && r["reason"]
                    .as_str()
                    .is_some_and(|m| m.contains("withdrawn"))),
        "refusal audited"
    );
    // Once applied, nothing is withdrawn any more.
    let id2 = {
        let (identity, credential) = rotation_target(&client).await;
        propose(&client, &identity, &credential).await
    };
    let token2 = env.approve(&id2, "alice@example.com");
    client
        .call(
            "apply_proposal",
            json!({"proposal_id": id2, "approval_token": token2}),
        )
        .await
        .ok();
    let late = env.cli(&[
        "reject",
        &id2,
        "--approver",
        "bob@example.com",
        "--key",
        &env.key_arg("bob@example.com"),
        "--reason",
        "late",
    ]);
    assert_eq!(late.status.code(), Some(1));
    assert!(stderr(&late).contains("applied"), "{}", stderr(&late));
    client.close().await;
}

/// A withdrawal and an apply at the same instant: exactly one wins (approved -> rejected and
/// approved -> applying are compare-and-set on the same row), and the other is refused.
#[tokio::test]
async fn withdrawal_and_apply_at_once_exactly_one_wins() {
    let mut outcomes = Vec::new();
    for round in 0..6u64 {
        let env = Env::new();
        let client = env.stdio().await;
        let (identity, credential) = rotation_target(&client).await;
        let id = propose(&client, &identity, &credential).await;
        let token = env.approve(&id, "alice@example.com");
        let reject = spawn(
            &env,
            &[
                "reject",
                &id,
                "--approver",
                "bob@example.com",
                "--key",
                &env.key_arg("bob@example.com"),
                "--reason",
                "race",
            ],
        );
        // Vary who is first: the CLI needs a moment to start.
        tokio::time::sleep(Duration::from_millis(40 * round)).await;
        let applied = client
            .call(
                "apply_proposal",
                json!({"proposal_id": id, "approval_token": token}),
            )
            .await;
        let rejected = reject.wait_with_output().expect("wait");
        let p = shown(&env, &id);
        match (&applied, rejected.status.success()) {
            (Answer::Ok(v), false) => {
                assert_eq!(v["proposal"]["status"], "applied", "round {round}: {v}");
                assert_eq!(p["status"], "applied");
                assert!(
                    stderr(&rejected).contains("applying") || stderr(&rejected).contains("applied"),
                    "round {round}: {}",
                    stderr(&rejected)
                );
                outcomes.push("applied");
            }
            (Answer::ToolError(m), true) => {
                assert!(
                    m.contains("withdrawn") || m.contains("rejected"),
                    "round {round}: {m}"
                );
                assert_eq!(p["status"], "rejected", "round {round}: {p}");
                assert!(p["execution"].as_array().is_some_and(Vec::is_empty), "{p}");
                let d = client
                    .call("get_identity", json!({"identity_id": identity}))
                    .await
                    .ok();
                assert!(
                    d["identity"]["credentials"]
                        .as_array()
                        .expect("creds")
                        .iter()
                        .any(|c| c["id"] == credential.as_str() && c["status"] == "active"),
                    "round {round}: credential untouched: {d}"
                );
                outcomes.push("rejected");
            }
            other => panic!(
                "round {round}: not exactly one winner: {other:?}; reject said {}; proposal {p}",
                stderr(&rejected)
            ),
        }
        client.close().await;
        assert!(env.cli(&["audit", "verify"]).status.success());
    }
    eprintln!("withdrawal vs apply outcomes: {outcomes:?}");
}

/// A withdrawn approval of a revocation: its token is refused through `revoke_identity` too (the
/// other way in), the identity is untouched, and asking again makes a new proposal that needs a
/// new approval (the old token is no good for it either).
#[tokio::test]
async fn a_withdrawn_revocation_token_is_refused_through_revoke_identity() {
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
    let id = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    let token = env.approve(&id, "alice@example.com");
    let out = env.cli(&[
        "reject",
        &id,
        "--approver",
        "bob@example.com",
        "--key",
        &env.key_arg("bob@example.com"),
        "--reason",
        "not this one",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = client
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "approval_token": token}),
        )
        .await
        .tool_error();
    assert!(refused.contains("withdrawn"), "{refused}");
    let d = client
        .call("get_identity", json!({"identity_id": identity}))
        .await
        .ok();
    assert!(
        d["identity"]["credentials"]
            .as_array()
            .expect("creds")
            .iter()
            .any(|c| c["status"] == "active"),
        "{d}"
    );
    // A new proposal for the same revocation: the withdrawn token does not carry over.
    let again = client
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "reason": "asking again"}),
        )
        .await
        .ok();
    let id2 = again["proposal"]["id"].as_str().expect("id").to_owned();
    assert_ne!(id2, id);
    let refused = client
        .call(
            "revoke_identity",
            json!({"identity_id": identity, "approval_token": token}),
        )
        .await
        .tool_error();
    assert!(refused.contains("withdrawn"), "{refused}");
    assert_eq!(shown(&env, &id2)["status"], "pending_approval");
    client.close().await;
}
