//! Issue #8, "the two-person rule is defeated by name variants": principal ids are normalised
//! and restricted everywhere, the server's own names are reserved, and a CLI approval proves who
//! approves (an `[[approvers]]` key). Driven through real CLI processes and the engine.

use std::path::Path;

use nhi_mcp::authz::{Principal, Scope};
use nhi_mcp::config::{Config, Overrides};
use nhi_mcp::engine::{Caller, Engine};
use nhi_mcp::model::IdentityId;
use serde_json::Value;

use crate::common::{Env, audit_for, propose, rotation_target};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn show(env: &Env, id: &str) -> Value {
    let out = env.cli(&["proposals", "show", id]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn approvers_of(proposal: &Value) -> Vec<String> {
    proposal["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .map(|a| a["approver"].as_str().expect("approver").to_owned())
        .collect()
}

/// `Alice`, `alice `, `alice\u200b`, Cyrillic `аlice` never count as a second approver next to
/// `alice`, even when the one holding alice's key tries them (real CLI processes).
#[tokio::test]
async fn issue_8_spellings_of_one_approver_are_one_approval() {
    let env = Env::with_config("[approval]\nrequired_approvals = 2\n");
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    client.close().await;

    let alice = "alice@example.com";
    let first = env.approve_as(&id, alice);
    assert!(first.status.success(), "{}", stderr(&first));
    let key = env.key(alice);
    for (variant, want) in [
        ("Alice@example.com", "already approved"),
        ("ALICE@EXAMPLE.COM", "already approved"),
        ("alice@example.com ", "already approved"),
        (" alice@example.com", "already approved"),
        ("ａｌｉｃｅ@example.com", "already approved"),
        ("alice@example.com\u{200b}", "may not contain"),
        ("al\u{200d}ice@example.com", "may not contain"),
        ("\u{430}lice@example.com", "may not contain"),
        ("\u{3b1}lice@example.com", "may not contain"),
    ] {
        let out = env.approve_with_key(&id, variant, &key);
        assert_eq!(out.status.code(), Some(1), "{variant:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(want), "{variant:?}: `{err}` lacks `{want}`");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let p = show(&env, &id);
    assert_eq!(p["status"], "pending_approval", "{p}");
    assert_eq!(approvers_of(&p), vec![alice]);

    // A second, real approver completes it.
    let out = env.approve_with_key(&id, "Bob@Example.com", &env.key("bob@example.com"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split('.')
            .count(),
        3
    );
    let p = show(&env, &id);
    assert_eq!(approvers_of(&p), vec![alice, "bob@example.com"]);
}

/// The requester never approves its own proposal, however it spells itself, even when it is a
/// configured approver with a key of its own.
#[tokio::test]
async fn issue_8_the_requester_never_approves_its_own_proposal() {
    let env = Env::with_config("");
    // Make the requester (`agent:local`) an approver too: the worst case.
    let agent_key = env.path("agent.key");
    let public = nhi_mcp::authz::approvers::generate_key_file(&agent_key).expect("keygen");
    let pem = nhi_mcp::authz::approvers::public_key_pem(&public).expect("pem");
    let config = env.config.as_ref().expect("config");
    let mut text = std::fs::read_to_string(config).expect("config");
    text.push_str(&format!(
        "[[approvers]]\nid = \"agent:local\"\npublic_key = \"\"\"\n{pem}\"\"\"\n"
    ));
    std::fs::write(config, text).expect("config");

    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    client.close().await;

    let spellings = [
        "agent:local",
        "Agent:Local",
        "AGENT:LOCAL",
        "agent:local ",
        " agent:local",
        "agent:local\t",
        "agent:local\u{a0}",
        "\u{3000}agent:local",
        "ａｇｅｎｔ:ｌｏｃａｌ",
        "agent\u{ff1a}local",
        "agent:loca\u{217c}",
        "agent:\u{2113}ocal",
        "Ａｇｅｎｔ：Ｌｏｃａｌ",
        "agent\u{200b}:local",
        "agent:local\u{feff}",
        "\u{430}gent:local",
        "agent:l\u{3bf}cal",
        "agent:loc\u{251}l",
        "agent:local\u{301}",
    ];
    for who in spellings {
        let out = env.approve_with_key(&id, who, &agent_key);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{who:?} approved its own proposal"
        );
        let err = stderr(&out);
        assert!(
            err.contains("cannot approve") || err.contains("may not contain"),
            "{who:?}: {err}"
        );
    }
    let p = show(&env, &id);
    assert_eq!(p["status"], "pending_approval");
    assert!(approvers_of(&p).is_empty(), "{p}");
    let audit = env.audit();
    assert!(
        audit_for(&audit, "approve")
            .iter()
            .all(|r| r["decision"] != "allow"),
        "an approval was recorded"
    );
    // Someone else can.
    env.approve(&id, "carol@example.com");
}

/// The engine refuses an approver id that is not in normal form, whoever built the principal.
#[tokio::test]
async fn issue_8_the_engine_compares_normal_forms() {
    let dir = tempfile::tempdir().expect("dir");
    let engine = engine(dir.path()).await;
    let agent = Principal::new("agent:local", [Scope::Read, Scope::Propose, Scope::Apply]);
    let identity = IdentityId::parse("demo-aws:user/sftp-partner-acmebank").expect("id");
    let proposed = engine
        .propose_rotation(
            &Caller::new(&agent, "propose_rotation", Value::Null),
            &identity,
            None,
            Some("0s"),
            "issue 8",
        )
        .await
        .expect("propose");
    let id = proposed.proposal.body.id.clone();
    let admin = |who: &str| Principal::new(who, [Scope::Approve]);
    for who in [
        "Agent:Local",
        "agent:local ",
        "\u{430}gent:local",
        "alice\u{200b}",
    ] {
        let e = engine
            .approve(&admin(who), &id)
            .await
            .expect_err(who)
            .to_string();
        assert!(
            e.contains("normal form") || e.contains("may not contain"),
            "{who:?}: {e}"
        );
    }
    let e = engine
        .approve(&admin("agent:local"), &id)
        .await
        .expect_err("self")
        .to_string();
    assert!(e.contains("cannot approve"), "{e}");
    engine.approve(&admin("alice"), &id).await.expect("alice");
    let e = engine
        .approve(&admin("Alice"), &id)
        .await
        .expect_err("twice")
        .to_string();
    assert!(e.contains("normal form"), "{e}");
}

async fn engine(dir: &Path) -> Engine {
    let overrides = Overrides {
        config_file: None,
        data_dir: Some(dir.to_path_buf()),
    };
    let config = Config::from_toml("[approval]\nrequired_approvals = 2\n", None, &overrides)
        .expect("config");
    nhi_mcp::cli::compose::open_engine(&config)
        .await
        .expect("engine")
}

/// The server's own names are refused as configured principals or approvers, in any spelling.
#[test]
fn issue_8_reserved_names_are_refused_in_config() {
    for (section, name) in [
        ("stdio", "nhi-mcp"),
        ("stdio", "CLI:local"),
        ("http", "Anonymous "),
        ("http", "unauthenticated"),
        ("stdio", "ｎｈｉ-ｍｃｐ"),
    ] {
        let env = Env::with_raw_config(&format!("[{section}]\nprincipal = \"{name}\"\n"));
        let out = env.cli(&["proposals", "list"]);
        assert_eq!(out.status.code(), Some(1), "{section} {name:?}");
        let err = stderr(&out);
        assert!(
            err.contains("reserved") && err.contains(&format!("`{section}.principal`")),
            "{err}"
        );
    }
    let env = Env::with_raw_config("[[approvers]]\nid = \"cli:local\"\n");
    let out = env.cli(&["proposals", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reserved"), "{}", stderr(&out));
}

/// A CLI approval is not anonymous: with no `[[approvers]]` it is refused with how to configure
/// one; an unknown approver and a wrong key are refused and audited.
#[tokio::test]
async fn issue_8_cli_approvals_need_a_configured_approver_and_their_key() {
    let env = Env::with_raw_config("");
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    client.close().await;
    // A key that exists, but nobody is configured.
    let key = env.path("someone.key");
    nhi_mcp::authz::approvers::generate_key_file(&key).expect("keygen");
    let out = env.approve_with_key(&id, "alice@example.com", &key);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no approvers are configured") && err.contains("approvers keygen"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Without `--key` and without `[auth]`, nothing to prove with.
    let out = env.cli(&["approve", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--key"), "{}", stderr(&out));

    // `approvers keygen` through the real CLI: a 0600 key and the lines for the config.
    let alice_key = env.path("alice.key");
    let out = env.cli(&[
        "approvers",
        "keygen",
        "--out",
        alice_key.to_str().expect("path"),
        "--id",
        "Alice@Example.com",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = String::from_utf8(out.stdout).expect("utf8");
    assert!(lines.contains("id = \"alice@example.com\""), "{lines}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&alice_key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = env.cli(&[
        "approvers",
        "keygen",
        "--out",
        alice_key.to_str().expect("path"),
    ]);
    assert_eq!(again.status.code(), Some(1), "keygen overwrote a key");
    std::fs::write(env.config.as_ref().expect("config"), &lines).expect("config");

    // Unknown approver; alice with someone else's key; then alice for real.
    let out = env.approve_with_key(&id, "mallory@example.com", &key);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a configured approver"),
        "{}",
        stderr(&out)
    );
    let out = env.approve_with_key(&id, "alice@example.com", &key);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    let out = env.approve_with_key(&id, "alice@example.com", &alice_key);
    assert!(out.status.success(), "{}", stderr(&out));

    let audit = env.audit();
    let approvals = audit_for(&audit, "approve");
    let denied: Vec<&str> = approvals
        .iter()
        .filter(|r| r["decision"] != "allow")
        .map(|r| r["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(
        denied
            .iter()
            .any(|r| r.contains("no approvers are configured")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|r| r.contains("not a configured approver")),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|r| r.contains("does not verify")),
        "{denied:?}"
    );
    let allowed: Vec<&&Value> = approvals
        .iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["principal"], "alice@example.com");

    // Reject needs the same proof: a wrong key is refused, and the proposal stays approved.
    let out = env.cli(&[
        "reject",
        &id,
        "--approver",
        "alice@example.com",
        "--key",
        key.to_str().expect("path"),
        "--reason",
        "no",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
}

/// Two spellings of one approver at the same moment, from two real CLI processes: one approval.
#[tokio::test]
async fn issue_8_two_spellings_at_once_are_one_approval() {
    let env = Env::with_config("[approval]\nrequired_approvals = 2\n");
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    client.close().await;
    let key = env.key("alice@example.com");
    let key = key.to_str().expect("path");
    let spawn = |who: &str| {
        env.command(&["approve", &id, "--approver", who, "--key", key])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn approve")
    };
    let a = spawn("Alice@Example.com");
    let b = spawn("alice@example.com ");
    let outs = [
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    ];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{:?}", outs.iter().map(stderr).collect::<Vec<_>>());
    let p = show(&env, &id);
    assert_eq!(p["status"], "pending_approval", "{p}");
    assert_eq!(approvers_of(&p), vec!["alice@example.com"]);
}
