//! The `postgres` provider against a real PostgreSQL cluster (`./tests/run` starts one and sets
//! `NHI_TEST_PG_URL` to its admin role). Each test makes its own roles, so tests do not meet.

use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::common::*;

fn admin_url() -> String {
    peer_path_var("NHI_TEST_PG_URL")
}

/// The admin URL as the given role with the given password.
fn url_as(role: &str, password: &str) -> String {
    let admin = admin_url();
    let (_, rest) = admin.split_once('@').expect("url");
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!("postgres://{}:{}@{rest}", enc(role), enc(password))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates login roles for one test, each with password `initial`; returns their names.
async fn make_roles(names: &[String], comment: &str) {
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .expect("admin connects");
    for name in names {
        admin
            .execute(format!("CREATE ROLE {} LOGIN PASSWORD 'initial'", quote(name)).as_str())
            .await
            .expect("create role");
        admin
            .execute(format!("COMMENT ON ROLE {} IS '{comment}'", quote(name)).as_str())
            .await
            .expect("comment");
    }
}

async fn can_login(role: &str, password: &str) -> Result<(), String> {
    PgConnection::connect(&url_as(role, password))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid_suffix())
}

fn uuid_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_nanos()
    )[6..]
        .to_owned()
}

fn pg_env() -> Env {
    let env = Env::new();
    let url_file = env.path("pg-url");
    std::fs::write(&url_file, admin_url()).expect("url file");
    // The providers go before the `[[approvers]]` the harness configured.
    let config = env.config.clone().expect("config");
    let approvers = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"pg\"\nkind = \"postgres\"\nurl_file = \"{}\"\n{approvers}",
            url_file.display()
        ),
    )
    .expect("config");
    env
}

fn identity_id(role: &str) -> String {
    let enc: String = role
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("pg:role/{enc}")
}

#[tokio::test]
async fn roles_are_listed_with_owner_privilege_and_sessions() {
    let plain = unique("svc_");
    let odd = unique("weird \"role\" name ");
    make_roles(
        &[plain.clone(), odd.clone()],
        "owner=team-payments; purpose=orders; env=prod; tier=1",
    )
    .await;
    let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
    admin
        .execute(format!("ALTER ROLE {} CREATEROLE", quote(&plain)).as_str())
        .await
        .expect("createrole");
    let _session = PgConnection::connect(&url_as(&odd, "initial"))
        .await
        .expect("session");

    let env = pg_env();
    let client = env.stdio().await;
    let page = client
        .call("list_identities", json!({"provider": "pg", "limit": 500}))
        .await
        .ok();
    let ids: Vec<&str> = page["identities"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert!(
        ids.contains(&identity_id(&plain).as_str()) && ids.contains(&identity_id(&odd).as_str()),
        "{ids:?}"
    );

    let d = client
        .call("get_identity", json!({"identity_id": identity_id(&odd)}))
        .await
        .ok();
    let i = &d["identity"];
    assert_eq!(i["name"], odd.as_str());
    assert_eq!(i["kind"], "database_role");
    assert_eq!(i["owner"], "team-payments");
    assert_eq!(i["environment"], "prod");
    assert_eq!(i["tags"]["tier"], "1");
    assert!(
        i["last_used_at"].is_string(),
        "a live session counts as use: {i}"
    );
    assert_eq!(i["credentials"][0]["kind"], "password");
    let d = client
        .call("get_identity", json!({"identity_id": identity_id(&plain)}))
        .await
        .ok();
    assert_eq!(d["identity"]["permissions"]["privileged"], true);
    assert!(
        d["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["rule"] == "privileged")
    );
    client.close().await;

    // `config check` says who nhi-mcp is and what that role may do.
    let check = env.cli(&["config", "check"]);
    let out = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(check.status.success(), "{out}");
    assert!(
        out.contains("connects as role \"nhi_admin\" (never changed by nhi-mcp)")
            && out
                .contains("has CREATEROLE: it can rotate and revoke roles that are not superusers"),
        "{out}"
    );
    assert!(!out.contains("nhi-admin-pw"), "{out}");
}

#[tokio::test]
async fn rotation_sets_a_new_password_that_only_the_sink_knows() {
    // A name that would inject if it were not quoted.
    let role = unique("svc\"; DROP ROLE nhi_admin; -- ");
    make_roles(std::slice::from_ref(&role), "owner=team-data").await;
    let held = PgConnection::connect(&url_as(&role, "initial"))
        .await
        .expect("old session");

    let env = pg_env();
    let client = env.stdio().await;
    let id = identity_id(&role);
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": id, "grace_period": "0s", "reason": "postgres rotation test"}),
        )
        .await
        .ok();
    let plan = proposed["proposal"]["plan"].as_array().expect("plan");
    assert_eq!(plan[0]["kind"], "set_password");
    assert_eq!(plan[1]["kind"], "terminate_sessions");
    let pid = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    let token = env.approve(&pid, "alice@example.com");
    let applied = client
        .call(
            "apply_proposal",
            json!({"proposal_id": pid, "approval_token": token}),
        )
        .await;
    let text = applied.text();
    let applied = applied.ok();
    assert_eq!(applied["proposal"]["status"], "applied", "{applied}");

    let secret = sink_secret(&env.data, &pid);
    let old = can_login(&role, "initial")
        .await
        .expect_err("the old password must fail");
    assert!(old.contains("password authentication failed"), "{old}");
    can_login(&role, &secret)
        .await
        .expect("the new password from the sink logs in");
    // The session opened with the old password was terminated by the plan's second step.
    let mut held = held;
    assert!(
        held.execute("SELECT 1").await.is_err(),
        "the old session survived"
    );

    // The role name did not inject, and the secret is nowhere but the sink.
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .expect("admin still exists");
    admin.execute("SELECT 1").await.expect("admin works");
    client.close().await;
    let audit = String::from_utf8_lossy(&env.cli(&["audit", "export"]).stdout).to_string();
    let log = std::fs::read_to_string(env.stderr_log()).unwrap_or_default();
    for (what, hay) in [("tool results", &text), ("audit", &audit), ("log", &log)] {
        assert!(
            !hay.contains(&secret),
            "the new password leaked into the {what}"
        );
        assert!(
            !hay.contains("nhi-admin-pw"),
            "the admin URL's password leaked into the {what}"
        );
    }
}

#[tokio::test]
async fn revocation_is_nologin_plus_terminated_sessions() {
    let role = unique("select ");
    make_roles(std::slice::from_ref(&role), "owner=team-web").await;
    let mut held = PgConnection::connect(&url_as(&role, "initial"))
        .await
        .expect("session");
    let env = pg_env();
    let client = env.stdio().await;
    let id = identity_id(&role);
    let proposed = client
        .call(
            "revoke_identity",
            json!({"identity_id": id, "reason": "decommissioned"}),
        )
        .await
        .ok();
    assert!(
        proposed["proposal"]["blast_radius"]["summary"]
            .as_str()
            .expect("summary")
            .contains("can no longer log in")
    );
    let pid = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    let token = env.approve(&pid, "bob@example.com");
    let done = client
        .call(
            "revoke_identity",
            json!({"identity_id": id, "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(done["proposal"]["status"], "applied");
    let err = can_login(&role, "initial").await.expect_err("NOLOGIN");
    assert!(err.contains("not permitted to log in"), "{err}");
    assert!(
        held.execute("SELECT 1").await.is_err(),
        "the live session survived revocation"
    );
    let d = client
        .call("get_identity", json!({"identity_id": id}))
        .await
        .ok();
    assert_eq!(
        d["identity"]["disabled"], true,
        "the revoked role is still listed, disabled"
    );
    client.close().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let env = Env::new();
    let url_file = env.path("pg-url");
    std::fs::write(
        &url_file,
        "postgres://nhi_admin:s3cret-pw@127.0.0.1:9/postgres",
    )
    .expect("write");
    let config = env.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"pg\"\nkind = \"postgres\"\nurl_file = \"{}\"\n",
            url_file.display()
        ),
    )
    .expect("write");
    let env = Env {
        config: Some(config),
        ..env
    };
    let client = env.stdio().await;
    let started = std::time::Instant::now();
    let msg = client
        .call("list_identities", json!({"provider": "pg"}))
        .await
        .tool_error();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(msg.starts_with("provider `pg` is unavailable"), "{msg}");
    assert!(!msg.contains("s3cret-pw"), "{msg}");
    client.close().await;
    let check = env.cli(&["config", "check"]);
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        out.contains("provider pg: NOT OK") && !out.contains("s3cret-pw"),
        "{out}"
    );
}

#[tokio::test]
async fn the_role_nhi_mcp_connects_as_is_never_changed() {
    let env = pg_env();
    let client = env.stdio().await;
    for (tool, args) in [
        (
            "propose_rotation",
            json!({"identity_id": "pg:role/nhi_admin", "reason": "r"}),
        ),
        (
            "revoke_identity",
            json!({"identity_id": "pg:role/nhi_admin", "reason": "r"}),
        ),
    ] {
        let msg = client.call(tool, args).await.tool_error();
        assert!(
            msg.contains("the role nhi-mcp connects as"),
            "{tool}: {msg}"
        );
    }
    client.close().await;
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .expect("admin still logs in");
    admin.execute("SELECT 1").await.expect("admin works");
}

/// Inline-URL config is refused: the URL holds a password.
#[test]
fn postgres_config_needs_a_referenced_url() {
    let env = Env::with_config("[[providers]]\nname = \"pg\"\nkind = \"postgres\"\n");
    let err = String::from_utf8_lossy(&env.cli(&["config", "check"]).stderr).to_string();
    assert!(
        err.contains("exactly one of `url_env` or `url_file`"),
        "{err}"
    );
}

/// Kills the server with SIGKILL while step `step` of a password rotation is between its SQL and
/// its recorded outcome, restarts it, and checks the rotation finished: the old password fails
/// and the password in the sink logs in.
async fn killed_at_step(step: u64) {
    let role = unique(&format!("crash{step}_"));
    make_roles(std::slice::from_ref(&role), "owner=team-data").await;
    let env = pg_env();
    let config = env.config.clone().expect("config");
    let base = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{base}[debug]\nstep_pause = \"2s\"\n")).expect("config");
    let server = env.http_server();
    let client = server.client().await;
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": identity_id(&role), "grace_period": "0s", "reason": "crash test"}),
        )
        .await
        .ok();
    let pid = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    let token = env.approve(&pid, "alice@example.com");
    let apply = tokio::spawn({
        let client = server.client().await;
        let args = json!({"proposal_id": pid, "approval_token": token});
        async move { client.call("apply_proposal", args).await }
    });
    wait_for_step_in_flight(&env, &pid, step).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut server = server;
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reap");
    apply.abort();

    std::fs::write(&config, base).expect("config without the pause");
    let server = env.http_server();
    let client = server.client().await;
    let p = wait_for_status(&client, &pid, "applied").await;
    client.close().await;
    drop(server);
    let outcome = p["outcome"].as_str().expect("outcome");
    assert!(
        outcome.contains(&format!("step {step}")) && outcome.contains("interrupted"),
        "{outcome}"
    );
    can_login(&role, "initial")
        .await
        .expect_err("the old password must fail");
    can_login(&role, &sink_secret(&env.data, &pid))
        .await
        .expect("the password in the sink logs in");
}

#[tokio::test]
async fn killed_while_setting_the_password_sets_a_fresh_one_on_restart() {
    killed_at_step(0).await;
}

#[tokio::test]
async fn killed_while_terminating_sessions_resumes() {
    killed_at_step(1).await;
}
