//! Cedar policy scenarios from `tests/policy/scenarios.toml`, run through the engine with the
//! demo inventory; plus the start-up checks on policy files.

use std::path::{Path, PathBuf};

use nhi_mcp::authz::{Principal, Scope};
use nhi_mcp::config::{Config, Overrides};
use nhi_mcp::engine::{Caller, Engine, EngineError, IdentityQuery};
use nhi_mcp::model::IdentityId;
use serde::Deserialize;

use crate::common::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    policy: Vec<String>,
    principal: String,
    scopes: Vec<String>,
    tool: String,
    target: String,
    expect: String,
    required_approvals: Option<u32>,
    policy_ids: Option<Vec<String>>,
    only_owner: Option<String>,
}

#[derive(Deserialize)]
struct Scenarios {
    scenario: Vec<Scenario>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn engine(dir: &Path, policy: &[String]) -> Engine {
    let files: Vec<String> = policy
        .iter()
        .map(|f| format!("\"{}\"", root().join("examples/policy").join(f).display()))
        .collect();
    let toml = format!("[policy]\nfiles = [{}]\n", files.join(", "));
    let overrides = Overrides {
        config_file: None,
        data_dir: Some(dir.to_path_buf()),
    };
    let config = Config::from_toml(&toml, None, &overrides).expect("config");
    nhi_mcp::cli::compose::open_engine(&config)
        .await
        .expect("engine")
}

#[tokio::test]
async fn policy_scenarios() {
    let text =
        std::fs::read_to_string(root().join("tests/policy/scenarios.toml")).expect("scenarios");
    let scenarios: Scenarios = toml::from_str(&text).expect("parse scenarios");
    assert!(scenarios.scenario.len() >= 10);
    for s in scenarios.scenario {
        let dir = tempfile::tempdir().expect("dir");
        let engine = engine(dir.path(), &s.policy).await;
        let scopes = s.scopes.iter().map(|x| Scope::parse(x).expect("scope"));
        let principal = Principal::new(&s.principal, scopes);
        let caller = Caller::new(&principal, &s.tool, serde_json::Value::Null);
        let outcome: Result<Option<u32>, EngineError> = match s.tool.as_str() {
            "get_identity" => {
                let id = IdentityId::parse(&s.target).expect("id");
                engine.get_identity(&caller, &id).await.map(|_| None)
            }
            "propose_rotation" => {
                let id = IdentityId::parse(&s.target).expect("id");
                engine
                    .propose_rotation(&caller, &id, None, Some("0s"), "policy scenario")
                    .await
                    .map(|o| Some(o.proposal.body.required_approvals))
            }
            "revoke_identity" => {
                let id = IdentityId::parse(&s.target).expect("id");
                engine
                    .revoke_identity(&caller, &id, Some("policy scenario"), None)
                    .await
                    .map(|o| Some(o.proposal.body.required_approvals))
            }
            "list_identities" => {
                let query = IdentityQuery {
                    limit: Some(500),
                    ..Default::default()
                };
                let page = engine.list_identities(&caller, query).await.expect("list");
                assert!(!page.items.is_empty(), "{}: nothing listed", s.name);
                if let Some(owner) = &s.only_owner {
                    assert!(
                        page.items.iter().all(|i| i.owner.as_deref() == Some(owner)),
                        "{}: listed another owner's identity",
                        s.name
                    );
                }
                Ok(None)
            }
            other => panic!("{}: unknown tool {other}", s.name),
        };
        let got = match &outcome {
            Ok(_) => "allow",
            Err(EngineError::NotFound(_)) => "not_found",
            Err(EngineError::MissingScope { .. } | EngineError::Refused(_)) => "deny",
            Err(e) => panic!("{}: unexpected {e}", s.name),
        };
        assert_eq!(got, s.expect, "{}: {outcome:?}", s.name);
        if let (Some(want), Ok(Some(have))) = (s.required_approvals, &outcome) {
            assert_eq!(*have, want, "{}: required approvals", s.name);
        }
        // The decision's policy ids are on the audit record of the call.
        if let Some(ids) = &s.policy_ids {
            let records = engine.store().audit_records().await.expect("audit");
            let last = records
                .iter()
                .rev()
                .find(|r| r.entry.action == s.tool)
                .expect("audited");
            for id in ids {
                assert!(
                    last.entry.policy_ids.contains(id),
                    "{}: {:?} lacks {id}",
                    s.name,
                    last.entry.policy_ids
                );
            }
        }
        engine.store().close().await;
    }
}

#[test]
fn an_invalid_policy_stops_the_server_naming_the_policy() {
    let env = Env::with_raw_config("[policy]\nfiles = [\"bad.cedar\"]\n");
    let bad = env.path("bad.cedar");
    std::fs::write(
        &bad,
        "@id(\"typo\")\npermit (principal is Nhi::Agent, action == Nhi::Action::\"read\", resource)\nwhen { resource.enviroment == \"prod\" };\n",
    )
    .expect("write");
    let out = env.command(&["serve"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("policy `typo` is invalid") && err.contains("enviroment"),
        "{err}"
    );

    std::fs::write(&bad, "permit (principal, action, resource").expect("write");
    let out = env.command(&["config", "check"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.cedar"));
}

#[tokio::test]
async fn the_proposal_rate_limit_holds() {
    let dir = tempfile::tempdir().expect("dir");
    let overrides = Overrides {
        config_file: None,
        data_dir: Some(dir.path().to_path_buf()),
    };
    let config = Config::from_toml("[policy]\nmax_proposals_per_hour = 2\n", None, &overrides)
        .expect("config");
    let engine = nhi_mcp::cli::compose::open_engine(&config)
        .await
        .expect("engine");
    let agent = Principal::new("agent", [Scope::Read, Scope::Propose]);
    let caller = Caller::new(&agent, "revoke_identity", serde_json::Value::Null);
    let mut results = Vec::new();
    for target in [
        "demo-aws:user/billing-exporter",
        "demo-aws:user/ci-deploy",
        "demo-aws:user/legacy-backup",
    ] {
        let id = IdentityId::parse(target).expect("id");
        results.push(
            engine
                .revoke_identity(&caller, &id, Some("rate test"), None)
                .await,
        );
    }
    assert!(results[0].is_ok() && results[1].is_ok());
    let err = results[2].as_ref().expect_err("third refused").to_string();
    assert!(err.contains("the limit is 2"), "{err}");
    // Returning an open proposal is not a new one.
    let id = IdentityId::parse("demo-aws:user/billing-exporter").expect("id");
    assert!(
        engine
            .revoke_identity(&caller, &id, Some("again"), None)
            .await
            .is_ok()
    );
}

/// The rate limit is counted inside the inserting transaction: three proposals at the same
/// moment against a limit of two make exactly two.
#[tokio::test]
async fn the_proposal_rate_limit_holds_for_proposals_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let overrides = Overrides {
        config_file: None,
        data_dir: Some(dir.path().to_path_buf()),
    };
    let config = Config::from_toml("[policy]\nmax_proposals_per_hour = 2\n", None, &overrides)
        .expect("config");
    let engine = nhi_mcp::cli::compose::open_engine(&config)
        .await
        .expect("engine");
    let agent = Principal::new("agent", [Scope::Read, Scope::Propose]);
    let caller = Caller::new(&agent, "revoke_identity", serde_json::Value::Null);
    let ids: Vec<IdentityId> = [
        "demo-aws:user/billing-exporter",
        "demo-aws:user/ci-deploy",
        "demo-aws:user/legacy-backup",
    ]
    .iter()
    .map(|t| IdentityId::parse(t).expect("id"))
    .collect();
    let (a, b, c) = tokio::join!(
        engine.revoke_identity(&caller, &ids[0], Some("at once"), None),
        engine.revoke_identity(&caller, &ids[1], Some("at once"), None),
        engine.revoke_identity(&caller, &ids[2], Some("at once"), None),
    );
    let made = [&a, &b, &c].iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 2, "{a:?} / {b:?} / {c:?}");
}
