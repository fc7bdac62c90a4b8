//! The audit chain: intact logs verify; an edited, deleted or reordered record is named.

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
