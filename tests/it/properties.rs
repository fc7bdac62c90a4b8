//! Property test of the proposal state machine and the token checks: random sequences of
//! approve / self-approve / apply / replay / reject (or withdraw), driven through the real engine (SQLite, the
//! demo inventory), against a tiny model of what must happen.

use std::path::Path;

use nhi_mcp::authz::Principal;
use nhi_mcp::config::{Config, Overrides};
use nhi_mcp::engine::{Caller, Engine};
use nhi_mcp::model::{IdentityId, ProposalStatus};
use proptest::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
enum Op {
    Approve(usize),
    SelfApprove,
    Apply,
    ReplayFirstToken,
    Reject,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3).prop_map(Op::Approve),
        Just(Op::SelfApprove),
        Just(Op::Apply),
        Just(Op::ReplayFirstToken),
        Just(Op::Reject),
    ]
}

fn admin(name: &str) -> Principal {
    Principal::new(name, [nhi_mcp::authz::Scope::Approve])
}

const APPROVERS: [&str; 3] = ["alice", "bob", "carol"];

async fn engine(dir: &Path, required: u32) -> Engine {
    let overrides = Overrides {
        config_file: None,
        data_dir: Some(dir.to_path_buf()),
    };
    let toml = format!("[approval]\nrequired_approvals = {required}\n");
    let config = Config::from_toml(&toml, None, &overrides).expect("config");
    nhi_mcp::cli::compose::open_engine(&config)
        .await
        .expect("engine")
}

async fn run(ops: Vec<Op>, required: u32) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("dir");
    let engine = engine(dir.path(), required).await;
    let agent = Principal::new(
        "agent:local",
        nhi_mcp::authz::Scope::ALL
            .into_iter()
            .filter(|s| *s != nhi_mcp::authz::Scope::Approve),
    );
    let caller = |tool: &str| Caller::new(&agent, tool, Value::Null);
    let identity = IdentityId::parse("demo-aws:user/sftp-partner-acmebank").expect("id");
    let proposed = engine
        .propose_rotation(
            &caller("propose_rotation"),
            &identity,
            None,
            Some("0s"),
            "property test",
        )
        .await
        .expect("propose");
    let id = proposed.proposal.body.id.clone();
    let original = proposed
        .proposal
        .body
        .credential_id
        .clone()
        .expect("credential");

    // The model.
    let mut status = ProposalStatus::PendingApproval;
    let mut approvers: Vec<&str> = Vec::new();
    let mut token: Option<String> = None;
    let mut first_token: Option<String> = None;

    for op in ops {
        match op {
            Op::Approve(i) => {
                let who = APPROVERS[i];
                let r = engine.approve(&admin(who), &id).await;
                let ok = status == ProposalStatus::PendingApproval && !approvers.contains(&who);
                prop_assert_eq!(r.is_ok(), ok, "approve by {} in {:?}", who, status);
                if let Ok(r) = r {
                    approvers.push(who);
                    let complete = approvers.len() as u32 >= required;
                    prop_assert_eq!(r.token.is_some(), complete);
                    if complete {
                        status = ProposalStatus::Approved;
                        token = r.token.clone();
                        first_token.get_or_insert(r.token.unwrap_or_default());
                    }
                }
            }
            Op::SelfApprove => {
                prop_assert!(
                    engine.approve(&admin("agent:local"), &id).await.is_err(),
                    "self-approval accepted"
                );
            }
            Op::Apply => {
                let Some(t) = &token else { continue };
                let r = engine
                    .apply_proposal(&caller("apply_proposal"), &id, t)
                    .await;
                prop_assert_eq!(
                    r.is_ok(),
                    status == ProposalStatus::Approved,
                    "apply in {:?}",
                    status
                );
                if r.is_ok() {
                    status = ProposalStatus::Applied;
                }
            }
            Op::ReplayFirstToken => {
                let Some(t) = &first_token else { continue };
                if status == ProposalStatus::Applied {
                    let r = engine
                        .apply_proposal(&caller("apply_proposal"), &id, t)
                        .await;
                    prop_assert!(r.is_err(), "a used token applied twice");
                }
            }
            Op::Reject => {
                // A pending proposal is rejected; an approved one has its approval withdrawn.
                let r = engine.reject(&admin("dave"), &id, "no").await;
                prop_assert_eq!(
                    r.is_ok(),
                    matches!(
                        status,
                        ProposalStatus::PendingApproval | ProposalStatus::Approved
                    ),
                    "reject in {:?}",
                    status
                );
                if r.is_ok() {
                    status = ProposalStatus::Rejected;
                }
            }
        }
        let stored = engine.proposal(&id).await.expect("read");
        prop_assert_eq!(stored.status, status);
    }

    // The credential was replaced exactly when the model says applied, and only once.
    let detail = engine
        .get_identity(&caller("get_identity"), &identity)
        .await
        .expect("identity");
    prop_assert_eq!(detail.identity.credentials.len(), 1);
    let replaced = detail.identity.credentials[0].id != original;
    prop_assert_eq!(replaced, status == ProposalStatus::Applied);
    let records = engine.store().audit_records().await.expect("audit");
    prop_assert!(nhi_mcp::audit::verify(&records).is_ok());
    engine.store().close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn the_workflow_follows_its_state_machine(ops in prop::collection::vec(op(), 1..10), required in 1u32..3) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(ops, required))?;
    }
}
