//! The audit chain: intact logs verify; an edited, deleted or reordered record is named; signed
//! checkpoints make a cut tail, a wiped log, a forged append and a re-hashed chain evident.

use nhi_mcp::audit::checkpoint::{CHECKPOINT_ACTION, Checkpoint, CheckpointKey};
use nhi_mcp::audit::{AuditEntry, AuditRecord, Decision};
use nhi_mcp::config::DatabaseConfig;
use nhi_mcp::store::Store;
use sqlx::Connection;

use crate::common::*;

/// A data dir with `n` audit records (each `identities list` is one audited call).
fn env_with_records(n: usize) -> Env {
    let env = Env::new();
    for _ in 0..n {
        assert!(env.cli(&["identities", "list"]).status.success());
    }
    env
}

async fn tamper(env: &Env, sql: &[&str]) {
    let url = format!("sqlite:{}", env.data.join("nhi-mcp.sqlite3").display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open db");
    for s in sql {
        sqlx::query(s).execute(&mut conn).await.expect("tamper");
    }
    conn.close().await.expect("close");
}

fn verify(env: &Env) -> (Option<i32>, String, String) {
    let out = env.cli(&["audit", "verify"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn intact_chain_verifies_and_exports() {
    let env = env_with_records(4);
    let (code, out, _) = verify(&env);
    assert_eq!(code, Some(0));
    assert!(out.contains("4 records"), "{out}");
    let records = env.audit();
    assert_eq!(records.len(), 4);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["hash"].as_str().expect("hash").len(), 64);
        if i > 0 {
            assert_eq!(r["prev_hash"], records[i - 1]["hash"]);
        }
        for key in [
            "at",
            "principal",
            "action",
            "arguments",
            "arguments_digest",
            "decision",
            "policy_ids",
        ] {
            assert!(r.get(key).is_some(), "record lacks {key}: {r}");
        }
    }
}

#[tokio::test]
async fn an_edited_record_is_named() {
    let env = env_with_records(5);
    tamper(
        &env,
        &["UPDATE audit_log SET principal = 'mallory' WHERE seq = 3"],
    )
    .await;
    let (code, _, err) = verify(&env);
    assert_eq!(code, Some(1));
    assert!(err.contains("record 3") && err.contains("edited"), "{err}");
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    let env = env_with_records(5);
    tamper(&env, &["DELETE FROM audit_log WHERE seq = 2"]).await;
    let (code, _, err) = verify(&env);
    assert_eq!(code, Some(1));
    assert!(err.contains("record 3") && err.contains("deleted"), "{err}");
}

#[tokio::test]
async fn reordered_records_are_named() {
    let env = env_with_records(5);
    tamper(
        &env,
        &[
            "UPDATE audit_log SET seq = -1 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE seq = -1",
        ],
    )
    .await;
    let (code, _, err) = verify(&env);
    assert_eq!(code, Some(1));
    assert!(err.contains("record 2"), "{err}");
}

// Signed checkpoints: what a tail cut, a wipe, a forged append or a re-hashed chain leaves
// behind. The attacker here can write the database (sqlx, or the server's own `Store`, which
// re-hashes exactly as the server does) but does not hold the checkpoint key.

fn checkpoint_file(env: &Env) -> std::path::PathBuf {
    env.data.join("audit-checkpoints.jsonl")
}

fn checkpoints(env: &Env) -> Vec<Checkpoint> {
    std::fs::read_to_string(checkpoint_file(env))
        .unwrap_or_default()
        .lines()
        .map(|l| Checkpoint::parse(l).expect("checkpoint line"))
        .collect()
}

fn checkpoint_now(env: &Env) {
    let out = env.cli(&["audit", "checkpoint"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` records, a checkpoint, `after` more records.
fn env_with_checkpoint(n: usize, after: usize) -> Env {
    let env = env_with_records(n);
    checkpoint_now(&env);
    for _ in 0..after {
        assert!(env.cli(&["identities", "list"]).status.success());
    }
    env
}

fn verify_with(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = env.cli(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn fails_with(env: &Env, args: &[&str], needles: &[&str]) {
    let (code, out, err) = verify_with(env, args);
    assert_eq!(code, Some(1), "verify passed: {out}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

fn records(env: &Env) -> Vec<AuditRecord> {
    env.audit()
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("record"))
        .collect()
}

async fn store(env: &Env) -> Store {
    Store::open(&DatabaseConfig::Sqlite(env.data.join("nhi-mcp.sqlite3")))
        .await
        .expect("open store")
}

/// Rewrites the whole log from `entries`, re-hashing it the way the server does.
async fn rewrite(env: &Env, entries: Vec<AuditEntry>) {
    tamper(env, &["DELETE FROM audit_log"]).await;
    let store = store(env).await;
    let mut tx = store.begin().await.expect("begin");
    for e in entries {
        tx.append_audit(e).await.expect("append");
    }
    tx.commit().await.expect("commit");
    store.close().await;
}

/// Appends `entry` as the server would (a correct hash link).
async fn append(env: &Env, entry: AuditEntry) {
    let store = store(env).await;
    let mut tx = store.begin().await.expect("begin");
    tx.append_audit(entry).await.expect("append");
    tx.commit().await.expect("commit");
    store.close().await;
}

fn checkpoint_entry(c: &Checkpoint) -> AuditEntry {
    AuditEntry::new(
        "nhi-mcp",
        CHECKPOINT_ACTION,
        &serde_json::json!({}),
        Decision::Allow,
    )
    .outcome(c.to_line())
}

#[tokio::test]
async fn a_checkpoint_goes_into_the_chain_the_file_and_the_export() {
    use std::os::unix::fs::PermissionsExt;
    let env = env_with_checkpoint(3, 1);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&env.data.join("audit-checkpoint.key")), 0o600);
    assert_eq!(mode(&checkpoint_file(&env)), 0o600);
    let file = checkpoints(&env);
    assert_eq!(file.len(), 1);
    assert_eq!((file[0].count, file[0].prev.as_deref()), (3, None));

    let all = records(&env);
    assert_eq!(all.len(), 5);
    let in_chain = &all[3];
    assert_eq!(
        (
            in_chain.entry.action.as_str(),
            in_chain.entry.principal.as_str()
        ),
        (CHECKPOINT_ACTION, "nhi-mcp")
    );
    assert_eq!(
        in_chain.entry.outcome.as_deref(),
        Some(file[0].to_line().as_str())
    );
    assert_eq!(file[0].head, all[2].hash);

    // The export ends with a checkpoint of exactly what it holds.
    let out = env.cli(&["audit", "export"]);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let last = Checkpoint::parse(text.lines().last().expect("lines")).expect("checkpoint");
    assert_eq!((last.count, last.head.as_str()), (5, all[4].hash.as_str()));
    assert_eq!(last.prev, Some(file[0].digest()));

    let (code, out, err) = verify_with(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("5 records"), "{out}");
    assert!(out.contains("the first 3 records match"), "{out}");
    assert!(out.contains("not yet covered: 2 records"), "{out}");

    // Nothing new (the checkpoint record aside) is not signed again.
    let before = checkpoints(&env).len();
    checkpoint_now(&env);
    checkpoint_now(&env);
    assert_eq!(checkpoints(&env).len(), before + 1);
    let out = env.cli(&["audit", "checkpoint"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to sign"));
    let file = checkpoints(&env);
    assert_eq!(file[1].prev, Some(file[0].digest()), "checkpoints chain");
}

#[tokio::test]
async fn an_auditor_verifies_with_the_public_key_and_a_copy_alone() {
    let env = env_with_checkpoint(3, 2);
    let out = env.cli(&["audit", "public-key"]);
    assert!(out.status.success());
    let pem = String::from_utf8(out.stdout).expect("utf8");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert!(!pem.contains("PRIVATE"), "{pem}");
    let public = env.path("auditor.pem");
    std::fs::write(&public, &pem).expect("write");
    let copy = env.path("auditor-checkpoints.jsonl");
    std::fs::copy(checkpoint_file(&env), &copy).expect("copy");

    // The private key is not needed to verify: move it out of the data dir.
    std::fs::rename(env.data.join("audit-checkpoint.key"), env.path("away.key")).expect("mv");
    let args = [
        "--checkpoint",
        copy.to_str().expect("utf8"),
        "--public-key",
        public.to_str().expect("utf8"),
    ];
    let (code, out, err) = verify_with(&env, &args);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("not yet covered: 3 records"), "{out}");

    // Without a key there is nothing to check the signatures with: that fails, it does not pass.
    fails_with(
        &env,
        &["--checkpoint", copy.to_str().expect("utf8")],
        &["--public-key"],
    );

    // Another key's public half refuses the same checkpoints.
    let other = CheckpointKey::from_signing_key(ed25519_dalek::SigningKey::generate(
        &mut rand::rngs::OsRng,
    ));
    let wrong = env.path("wrong.pem");
    std::fs::write(&wrong, other.public_pem().expect("pem")).expect("write");
    fails_with(
        &env,
        &[
            "--checkpoint",
            copy.to_str().expect("utf8"),
            "--public-key",
            wrong.to_str().expect("utf8"),
        ],
        &["not this key"],
    );
    fails_with(
        &env,
        &["--checkpoint", "/nonexistent/cp.jsonl"],
        &["does not exist"],
    );
}

#[tokio::test]
async fn a_cut_tail_is_evident() {
    // Covered records 1-5, the checkpoint record 6, records 7-8.
    let env = env_with_checkpoint(5, 2);
    // Only the records after the newest checkpoint may go unnoticed (they are not covered).
    tamper(&env, &["DELETE FROM audit_log WHERE seq > 6"]).await;
    let (code, out, err) = verify_with(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("not yet covered: 1 records"), "{out}");
    // Into the covered part: one record is enough.
    tamper(&env, &["DELETE FROM audit_log WHERE seq >= 5"]).await;
    fails_with(&env, &[], &["4 records", "covers 5", "truncated"]);
    // `serve` or `audit checkpoint` refuses to sign over it.
    let out = env.cli(&["audit", "checkpoint"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_wiped_log_is_evident() {
    let env = env_with_checkpoint(3, 1);
    tamper(&env, &["DELETE FROM audit_log"]).await;
    fails_with(&env, &[], &["empty", "covers 3", "wiped"]);

    // The whole database deleted: the server starts a fresh one, the checkpoint still counts.
    let env = env_with_checkpoint(3, 1);
    for f in [
        "nhi-mcp.sqlite3",
        "nhi-mcp.sqlite3-wal",
        "nhi-mcp.sqlite3-shm",
    ] {
        let _ = std::fs::remove_file(env.data.join(f));
    }
    fails_with(&env, &[], &["wiped"]);
}

#[tokio::test]
async fn a_rehashed_chain_is_evident() {
    let env = env_with_checkpoint(4, 2);
    let copy = env.path("auditor.jsonl");
    std::fs::copy(checkpoint_file(&env), &copy).expect("copy");
    let original: Vec<AuditEntry> = records(&env).into_iter().map(|r| r.entry).collect();

    // Record 2 edited, the chain re-hashed after it: the chain itself is consistent again.
    let mut edited = original.clone();
    edited[1].principal = "mallory".into();
    rewrite(&env, edited.clone()).await;
    fails_with(&env, &[], &["record 5", "re-hashed"]);

    // The same, with the checkpoint record dropped from the chain too: the file still holds it.
    let without: Vec<AuditEntry> = edited
        .into_iter()
        .filter(|e| e.action != CHECKPOINT_ACTION)
        .collect();
    rewrite(&env, without.clone()).await;
    fails_with(&env, &[], &["record 4", "re-hashed"]);

    // And the local checkpoint file deleted as well: nothing on this machine remembers, so the
    // plain verify passes; the copy the auditor kept elsewhere does not.
    std::fs::remove_file(checkpoint_file(&env)).expect("rm");
    let (code, out, _) = verify_with(&env, &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no checkpoint yet"), "{out}");
    fails_with(
        &env,
        &["--checkpoint", copy.to_str().expect("utf8")],
        &["re-hashed"],
    );

    // Records appended to a re-hashed prefix to make up the count: still the wrong head.
    let mut padded = without;
    padded.truncate(2);
    for _ in 0..6 {
        padded.push(original[0].clone());
    }
    rewrite(&env, padded).await;
    fails_with(
        &env,
        &["--checkpoint", copy.to_str().expect("utf8")],
        &["record 4", "re-hashed"],
    );
}

#[tokio::test]
async fn a_deleted_checkpoint_file_is_evident_while_the_chain_holds_checkpoints() {
    let env = env_with_checkpoint(2, 1);
    std::fs::remove_file(checkpoint_file(&env)).expect("rm");
    fails_with(
        &env,
        &[],
        &["missing or empty", "1 checkpoints", "--checkpoint"],
    );
    // A line removed from the middle of the file.
    let env = env_with_checkpoint(2, 1);
    checkpoint_now(&env);
    assert!(env.cli(&["identities", "list"]).status.success());
    checkpoint_now(&env);
    let lines: Vec<String> = std::fs::read_to_string(checkpoint_file(&env))
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3);
    std::fs::write(
        checkpoint_file(&env),
        format!("{}\n{}\n", lines[0], lines[2]),
    )
    .expect("w");
    fails_with(&env, &[], &["checkpoint 2", "does not follow checkpoint 1"]);
}

#[tokio::test]
async fn a_forged_append_is_evident() {
    let env = env_with_checkpoint(3, 1);
    let all = records(&env);
    let head = all.last().expect("records").hash.clone();
    let count = all.len() as i64;

    // A checkpoint record signed with a key of the attacker's own.
    let mallory = CheckpointKey::from_signing_key(ed25519_dalek::SigningKey::generate(
        &mut rand::rngs::OsRng,
    ));
    let forged = Checkpoint::sign(&mallory, count, &head, None, chrono::Utc::now());
    append(&env, checkpoint_entry(&forged)).await;
    fails_with(&env, &[], &["record 6", "not this key"]);

    // The real key's id on an edited checkpoint: the signature fails.
    let env = env_with_checkpoint(3, 1);
    let mut edited = checkpoints(&env).remove(0);
    edited.count = 5;
    edited.head = records(&env).last().expect("records").hash.clone();
    append(&env, checkpoint_entry(&edited)).await;
    fails_with(&env, &[], &["record 6", "forged"]);

    // An `audit.checkpoint` record that carries no checkpoint at all.
    let env = env_with_checkpoint(3, 1);
    append(
        &env,
        AuditEntry::new(
            "nhi-mcp",
            CHECKPOINT_ACTION,
            &serde_json::json!({}),
            Decision::Allow,
        )
        .outcome("trust me"),
    )
    .await;
    fails_with(&env, &[], &["record 6", "forged"]);

    // A real checkpoint replayed later in the chain: it does not cover what precedes it.
    let env = env_with_checkpoint(3, 1);
    let real = checkpoints(&env).remove(0);
    append(&env, checkpoint_entry(&real)).await;
    fails_with(&env, &[], &["record 6", "moved"]);
}

#[tokio::test]
async fn checkpoints_written_at_once_with_records_stay_in_order() {
    let env = env_with_records(2);
    let children: Vec<_> = (0..6)
        .map(|i| {
            let args: &[&str] = if i % 2 == 0 {
                &["audit", "checkpoint"]
            } else {
                &["identities", "list"]
            };
            env.command(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let file = checkpoints(&env);
    assert!(!file.is_empty());
    for w in file.windows(2) {
        assert_eq!(
            w[1].prev,
            Some(w[0].digest()),
            "lines out of order: {file:?}"
        );
        assert!(w[1].count > w[0].count);
    }
    let (code, _, err) = verify_with(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn a_readable_checkpoint_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = env_with_checkpoint(1, 0);
    let key = env.data.join("audit-checkpoint.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    for args in [
        &["audit", "public-key"][..],
        &["audit", "checkpoint"][..],
        &["audit", "verify"][..],
    ] {
        let out = env.cli(args);
        assert!(!out.status.success(), "{args:?} accepted a readable key");
        assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    }
}

#[tokio::test]
async fn serve_writes_checkpoints_periodically_only_when_records_were_added_and_at_shutdown() {
    let env = Env::with_config(&format!(
        "[audit]\ncheckpoint_interval = \"1s\"\ncheckpoint_file = \"{}\"\n",
        "elsewhere/cp.jsonl"
    ));
    let file = env.dir.path().join("elsewhere/cp.jsonl");
    let mut server = env.http_server();
    let client = server.client().await;
    for _ in 0..2 {
        client
            .call("list_identities", serde_json::json!({}))
            .await
            .ok();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&file)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Idle: no records but the checkpoint's own, so no new checkpoint.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let idle = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .count();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        std::fs::read_to_string(&file)
            .expect("read")
            .lines()
            .count(),
        idle
    );

    client
        .call("list_identities", serde_json::json!({}))
        .await
        .ok();
    client.close().await;
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.child.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop on SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let lines: Vec<Checkpoint> = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .map(|l| Checkpoint::parse(l).expect("line"))
        .collect();
    let all = records(&env);
    // The shutdown checkpoint covers everything but itself.
    let last = lines.last().expect("checkpoints");
    assert_eq!(last.count as usize, all.len() - 1, "{lines:?}");
    assert_eq!(all.last().expect("records").entry.action, CHECKPOINT_ACTION);
    let (code, out, err) = verify_with(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("not yet covered: 1 records"), "{out}");
}

/// Whoever can write the data dir plants a symbolic link where the checkpoint file goes: the
/// server must not append signed lines to (or create, or lock) a file elsewhere through it.
#[tokio::test]
async fn a_checkpoint_file_that_is_a_symlink_is_not_written_through() {
    let env = env_with_checkpoint(2, 1);
    let file = checkpoint_file(&env);
    let lines = std::fs::read_to_string(&file).expect("read");
    let elsewhere = env.dir.path().join("elsewhere.txt");
    std::fs::write(&elsewhere, "not the server's\n").expect("write");
    std::fs::remove_file(&file).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, &file).expect("symlink");
    for args in [&["audit", "checkpoint"][..], &["audit", "verify"][..]] {
        let out = env.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} went through the link");
        assert!(err.contains("symbolic link"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(&elsewhere).expect("read"),
        "not the server's\n"
    );
    // A dangling link: nothing is created at its target either.
    let target = env.dir.path().join("created-through-link.jsonl");
    std::fs::remove_file(&file).expect("rm");
    std::os::unix::fs::symlink(&target, &file).expect("symlink");
    for args in [&["audit", "checkpoint"][..], &["audit", "verify"][..]] {
        assert!(!env.cli(args).status.success(), "{args:?}");
    }
    assert!(!target.exists(), "created through a dangling link");
    // The file itself back in place: all is well.
    std::fs::remove_file(&file).expect("rm");
    std::fs::write(&file, lines).expect("restore");
    let (code, _, err) = verify_with(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
}

/// Clears the immutable attribute again, even when the test fails.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &std::path::Path) -> Self {
        let out = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .expect("run chattr (e2fsprogs; install it with `apt-get install e2fsprogs`)");
        assert!(
            out.status.success(),
            "chattr +i: {} (needs an ext4/xfs file system and CAP_LINUX_IMMUTABLE)",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// An auditor verifies a checkpoint file nobody may write (an immutable file, as on a read-only
/// mount; permissions do not stop root, the attribute does): `verify` and `export` read it
/// under a shared lock instead of failing to open it for appending.
#[tokio::test]
async fn a_read_only_checkpoint_file_still_verifies_and_exports() {
    let env = env_with_checkpoint(3, 1);
    let file = checkpoint_file(&env);
    let _guard = Immutable::set(&file);
    assert!(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .is_err(),
        "the file is still writable"
    );
    let (code, out, err) = verify_with(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("the first 3 records match"), "{out}");
    let export = env.dir.path().join("export.jsonl");
    let out = env.cli(&[
        "audit",
        "export",
        "--output",
        export.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).expect("export");
    let last = Checkpoint::parse(text.lines().last().expect("lines")).expect("checkpoint");
    assert!(last.count >= 5, "{last:?}");
    // Tampering is still found against it.
    tamper(&env, &["DELETE FROM audit_log WHERE seq >= 3"]).await;
    fails_with(&env, &[], &["truncated"]);
    // Writing a checkpoint fails, saying so.
    let out = env.cli(&["audit", "checkpoint"]);
    assert!(!out.status.success());
}

/// Another local user plants a symbolic link where the admin exports to (a shared `/tmp`): the
/// export must not truncate, overwrite or `chmod` the link's target.
#[tokio::test]
async fn an_export_does_not_write_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let env = env_with_records(2);
    let victim = env.dir.path().join("victim.conf");
    std::fs::write(&victim, "keep me\n").expect("write");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let link = env.dir.path().join("export.jsonl");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let out = env.cli(&["audit", "export", "--output", link.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exported through the link");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me\n");
    let mode = std::fs::metadata(&victim)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    // A dangling link creates nothing at its target either; a plain path still exports.
    let target = env.dir.path().join("made-through-link.jsonl");
    let dangling = env.dir.path().join("dangling.jsonl");
    std::os::unix::fs::symlink(&target, &dangling).expect("symlink");
    let out = env.cli(&[
        "audit",
        "export",
        "--output",
        dangling.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert!(!target.exists(), "created through a dangling link");
    let plain = env.dir.path().join("plain.jsonl");
    let out = env.cli(&["audit", "export", "--output", plain.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&plain)
            .expect("read")
            .lines()
            .count()
            >= 2
    );
}

/// A checkpoint file whose last line lost its newline (copied back, edited by hand): the next
/// checkpoint is a line of its own, not glued to it (which made every later `verify` fail).
#[tokio::test]
async fn a_checkpoint_file_without_a_final_newline_takes_the_next_line_apart() {
    let env = env_with_checkpoint(2, 1);
    let file = checkpoint_file(&env);
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.trim_end()).expect("write");
    assert!(env.cli(&["identities", "list"]).status.success());
    checkpoint_now(&env);
    assert_eq!(checkpoints(&env).len(), 2);
    let (code, out, err) = verify_with(&env, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 checkpoints"), "{out}");
}

/// The newest line of the checkpoint file cut in half, and the covered records cut from the
/// database: the newest line cannot be read, so the server cannot tell whether the log
/// contradicts it, and must not sign (it did, skipping its check).
#[tokio::test]
async fn a_cut_newest_checkpoint_line_is_not_signed_over() {
    let env = env_with_checkpoint(2, 1);
    assert!(env.cli(&["identities", "list"]).status.success());
    checkpoint_now(&env);
    let file = checkpoint_file(&env);
    let text = std::fs::read_to_string(&file).expect("read");
    let cut = text.len() - 40;
    std::fs::write(&file, &text[..cut]).expect("write");
    tamper(&env, &["DELETE FROM audit_log WHERE seq >= 5"]).await;
    assert!(env.cli(&["identities", "list"]).status.success());
    let out = env.cli(&["audit", "checkpoint"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "signed over an unreadable newest line"
    );
    assert!(
        err.contains("not signing") && err.contains("not a signed checkpoint"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), &text[..cut]);
}
