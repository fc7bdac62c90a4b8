//! Files the server writes are its owner's alone, whatever the umask (issue #8: the inventory
//! overlay was 0644, 0666 under umask 000).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rmcp::ServiceExt;
use rmcp::model::ClientConfig;
use rmcp::transport::TokioChildProcess;

use crate::common::{self, Client, Env};

/// `cmd` run by `sh` after `umask MASK`, with the same arguments and environment.
fn under_umask(cmd: &std::process::Command, mask: &str) -> std::process::Command {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

/// Every file under `dir` is 0600 (or stricter) and every folder 0700 (or stricter).
fn assert_private(dir: &Path, seen: &mut usize) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", entry.path().display());
            assert_private(&entry.path(), seen);
        } else {
            assert_eq!(mode & 0o177, 0, "{} is {mode:o}", entry.path().display());
            *seen += 1;
        }
    }
}

#[tokio::test]
async fn every_file_in_the_data_dir_is_private_under_umask_000() {
    let env = Env::new();
    let cmd = under_umask(&env.command(&["serve"]), "000");
    let (transport, _) = TokioChildProcess::builder(tokio::process::Command::from(cmd))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    let client = Client {
        service: ClientConfig::default()
            .serve(transport)
            .await
            .expect("MCP handshake"),
    };
    // A full rotation writes every kind of file: database, keys, overlay, sink.
    let (identity, credential) = common::rotation_target(&client).await;
    let proposal = common::propose(&client, &identity, &credential).await;
    let approve = under_umask(
        &env.command(&[
            "approve",
            &proposal,
            "--approver",
            "alice@example.com",
            "--key",
            &env.key_arg("alice@example.com"),
        ]),
        "000",
    )
    .output()
    .expect("approve");
    assert!(approve.status.success(), "{approve:?}");
    let token = String::from_utf8(approve.stdout).expect("utf8");
    let applied = client
        .call(
            "apply_proposal",
            serde_json::json!({"proposal_id": proposal, "approval_token": token.trim()}),
        )
        .await
        .ok();
    assert_eq!(applied["proposal"]["status"], "applied", "{applied}");
    client.close().await;

    let export = env.path("export.jsonl");
    let out = under_umask(
        &env.command(&[
            "audit",
            "export",
            "--output",
            export.to_str().expect("utf8"),
        ]),
        "000",
    )
    .output()
    .expect("export");
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&export)
        .expect("export")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "audit export is {mode:o}");

    let mut seen = 0;
    assert_private(&env.data, &mut seen);
    assert!(
        env.data
            .join("inventory")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "the rotation wrote no inventory overlay"
    );
    assert!(seen >= 4, "only {seen} files in the data dir");
}
