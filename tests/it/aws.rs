//! The `aws_iam` provider and the Secrets Manager sink against moto (`./tests/run` starts it and
//! sets `NHI_TEST_MOTO_URL`). Every test works under its own IAM path (and the provider's
//! `path_prefix`), so tests sharing the one moto server do not see each other's users.

use std::time::{Duration, Instant};

use aws_sdk_iam::types::StatusType;
use serde_json::{Value, json};

use crate::common::*;

fn moto_url() -> String {
    peer_path_var("NHI_TEST_MOTO_URL")
}

fn suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_nanos()
    )[6..]
        .to_owned()
}

/// The SDK config a test uses to set up and inspect moto, as `key`/`secret`.
async fn sdk_as(key: &str, secret: &str) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_url())
        .credentials_provider(aws_sdk_iam::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .load()
        .await
}

async fn iam() -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&sdk_as("testing", "testing").await)
}

async fn secrets() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_as("testing", "testing").await)
}

/// One test's corner of moto: an IAM path, a config whose provider `aws` sees only it, and a
/// Secrets Manager prefix of its own.
struct Aws {
    env: Env,
    path: String,
    tag: String,
    iam: aws_sdk_iam::Client,
}

impl Aws {
    async fn new(extra: &str) -> Self {
        Self::with_refresh("0s", extra).await
    }

    async fn with_refresh(refresh: &str, extra: &str) -> Self {
        let tag = suffix();
        let path = format!("/t{tag}/");
        let config = format!(
            "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\npath_prefix = \"{path}\"\nrefresh = \"{refresh}\"\nsink = {{ kind = \"aws_secretsmanager\", prefix = \"nhi-{tag}/\" }}\n{extra}",
            moto_url()
        );
        Self {
            env: Env::with_config(&config),
            path,
            tag,
            iam: iam().await,
        }
    }

    /// A user under this test's path with `keys` access keys; returns the key ids and secrets.
    async fn user(&self, name: &str, keys: usize, tags: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut req = self.iam.create_user().user_name(name).path(&self.path);
        for (k, v) in tags {
            req = req.tags(
                aws_sdk_iam::types::Tag::builder()
                    .key(*k)
                    .value(*v)
                    .build()
                    .expect("tag"),
            );
        }
        req.send().await.expect("create user");
        let mut out = Vec::new();
        for _ in 0..keys {
            let k = self
                .iam
                .create_access_key()
                .user_name(name)
                .send()
                .await
                .expect("create key");
            let k = k.access_key().expect("key");
            out.push((
                k.access_key_id().to_owned(),
                k.secret_access_key().to_owned(),
            ));
        }
        out
    }

    async fn keys(&self, user: &str) -> Vec<(String, StatusType)> {
        let out = self
            .iam
            .list_access_keys()
            .user_name(user)
            .send()
            .await
            .expect("list keys");
        let mut keys: Vec<_> = out
            .access_key_metadata()
            .iter()
            .map(|k| {
                (
                    k.access_key_id().expect("id").to_owned(),
                    k.status().expect("status").clone(),
                )
            })
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    }

    fn secret_name(&self, user: &str) -> String {
        format!("nhi-{}/aws/user/{user}", self.tag)
    }

    async fn secret(&self, user: &str, stage: &str) -> Option<Value> {
        let out = secrets()
            .await
            .get_secret_value()
            .secret_id(self.secret_name(user))
            .version_stage(stage)
            .send()
            .await
            .ok()?;
        serde_json::from_str(out.secret_string()?).ok()
    }
}

async fn approve_and_apply(aws: &Aws, client: &Client, proposal: &Value) -> Answer {
    let pid = proposal["id"].as_str().expect("id").to_owned();
    let token = aws.env.approve(&pid, "alice@example.com");
    client
        .call(
            "apply_proposal",
            json!({"proposal_id": pid, "approval_token": token}),
        )
        .await
}

#[tokio::test]
async fn users_roles_keys_policies_and_tags_are_listed() {
    let aws = Aws::new("").await;
    let keys = aws
        .user(
            "ci-deploy",
            1,
            &[
                ("owner", "team-ci"),
                ("environment", "prod"),
                ("purpose", "deploys"),
            ],
        )
        .await;
    // The key signs a call: moto then reports its last use.
    let as_key = aws_sdk_iam::Client::new(&sdk_as(&keys[0].0, &keys[0].1).await);
    as_key
        .get_user()
        .user_name("ci-deploy")
        .send()
        .await
        .expect("signed call");
    aws.user("admin-bot", 1, &[]).await;
    aws.iam
        .attach_user_policy()
        .user_name("admin-bot")
        .policy_arn("arn:aws:iam::aws:policy/AdministratorAccess")
        .send()
        .await
        .expect("attach");
    aws.iam
        .create_login_profile()
        .user_name("admin-bot")
        .password("Initial-Console-Pw-1")
        .send()
        .await
        .expect("login profile");
    // Privileged through a group's inline `*` policy.
    let group = format!("g{}", aws.tag);
    aws.iam
        .create_group()
        .group_name(&group)
        .path(&aws.path)
        .send()
        .await
        .expect("group");
    aws.iam
        .put_group_policy()
        .group_name(&group)
        .policy_name("everything")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .expect("group policy");
    aws.user("grouped", 0, &[]).await;
    aws.iam
        .add_user_to_group()
        .group_name(&group)
        .user_name("grouped")
        .send()
        .await
        .expect("add to group");
    aws.iam
        .create_role()
        .role_name("gh-deploy")
        .path(&aws.path)
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#,
        )
        .send()
        .await
        .expect("role");

    let client = aws.env.stdio().await;
    let page = client
        .call("list_identities", json!({"provider": "aws"}))
        .await
        .ok();
    let ids: Vec<&str> = page["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [
            "aws:role/gh-deploy",
            "aws:user/admin-bot",
            "aws:user/ci-deploy",
            "aws:user/grouped"
        ],
        "only this test's path, sorted"
    );

    let get = |id: &'static str| {
        let client = &client;
        async move {
            client
                .call("get_identity", json!({"identity_id": id}))
                .await
                .ok()["identity"]
                .clone()
        }
    };
    let ci = get("aws:user/ci-deploy").await;
    assert_eq!(ci["kind"], "service_user");
    assert_eq!(ci["owner"], "team-ci");
    assert_eq!(ci["environment"], "prod");
    assert_eq!(ci["purpose"], "deploys");
    assert_eq!(ci["credentials"][0]["id"], keys[0].0.as_str());
    assert_eq!(ci["credentials"][0]["kind"], "access_key");
    assert!(
        ci["credentials"][0]["last_used_at"].is_string(),
        "GetAccessKeyLastUsed: {ci}"
    );
    assert_eq!(ci["permissions"]["privileged"], false);

    let admin = get("aws:user/admin-bot").await;
    assert_eq!(admin["permissions"]["privileged"], true);
    assert!(
        admin["permissions"]["summary"]
            .as_str()
            .expect("summary")
            .contains("AdministratorAccess")
    );
    let kinds: Vec<&str> = admin["credentials"]
        .as_array()
        .expect("creds")
        .iter()
        .map(|c| c["kind"].as_str().expect("kind"))
        .collect();
    assert!(kinds.contains(&"password"), "login profile: {admin}");

    let grouped = get("aws:user/grouped").await;
    assert_eq!(grouped["permissions"]["wildcard"], true, "{grouped}");
    assert!(
        grouped["permissions"]["summary"]
            .as_str()
            .expect("summary")
            .contains(&format!("via group {group}"))
    );

    let role = get("aws:role/gh-deploy").await;
    assert_eq!(role["kind"], "role");
    assert!(
        role["permissions"]["grants"]
            .as_array()
            .expect("grants")
            .iter()
            .any(|g| g
                .as_str()
                .is_some_and(|g| g.contains("federated") && g.contains("githubusercontent"))),
        "{role}"
    );
    client.close().await;
    // The IAM user's credentials are never in the listing: no secret in what the agent saw.
    assert!(!page.to_string().contains(&keys[0].1));
}

#[tokio::test]
async fn rotation_replaces_the_key_and_delivers_it_to_secrets_manager() {
    let aws = Aws::new("").await;
    let keys = aws.user("app", 2, &[("owner", "team-app")]).await;
    let (old, inactive) = (keys[0].0.clone(), keys[1].0.clone());
    // The second key is inactive: the plan must delete it first, in plain sight.
    aws.iam
        .update_access_key()
        .user_name("app")
        .access_key_id(&inactive)
        .status(StatusType::Inactive)
        .send()
        .await
        .expect("deactivate");
    // A value already in the secret: after the rotation it is AWSPREVIOUS.
    secrets()
        .await
        .create_secret()
        .name(aws.secret_name("app"))
        .secret_string(r#"{"secret":"before"}"#)
        .send()
        .await
        .expect("create secret");

    // The most verbose logs the server can write: the secret must not be in them either.
    let client = aws.env.stdio_with_env(&[("NHI_MCP_LOG", "trace")]).await;
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": "aws:user/app", "credential_id": old, "grace_period": "0s", "reason": "aws rotation test"}),
        )
        .await
        .ok();
    let plan: Vec<(String, String)> = proposed["proposal"]["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().expect("kind").to_owned(),
                s["credential_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        plan,
        [
            ("delete_credential".to_owned(), inactive.clone()),
            ("create_credential".to_owned(), String::new()),
            ("deactivate_credential".to_owned(), old.clone()),
            ("delete_credential".to_owned(), old.clone()),
        ]
    );
    let applied = approve_and_apply(&aws, &client, &proposed["proposal"]).await;
    let text = applied.text();
    let applied = applied.ok();
    assert_eq!(applied["proposal"]["status"], "applied", "{applied}");
    let sink_ref = applied["proposal"]["sink_ref"].as_str().unwrap_or_default();
    assert!(
        sink_ref.starts_with("aws-secretsmanager:arn:aws:secretsmanager:"),
        "{applied}"
    );

    // In moto: the old and the inactive key are gone, one new active key exists.
    let now = aws.keys("app").await;
    assert_eq!(now.len(), 1, "{now:?}");
    let (new, status) = &now[0];
    assert!(new != &old && new != &inactive);
    assert_eq!(status, &StatusType::Active);
    // Secrets Manager holds the new key as AWSCURRENT and the value before as AWSPREVIOUS.
    let current = aws.secret("app", "AWSCURRENT").await.expect("AWSCURRENT");
    assert_eq!(current["credential_id"], new.as_str());
    let secret = current["secret"].as_str().expect("secret").to_owned();
    assert!(secret.len() >= 20);
    let previous = aws.secret("app", "AWSPREVIOUS").await.expect("AWSPREVIOUS");
    assert_eq!(previous["secret"], "before");
    // The new key works.
    let as_new = aws_sdk_iam::Client::new(&sdk_as(new, &secret).await);
    as_new
        .get_user()
        .user_name("app")
        .send()
        .await
        .expect("the new key signs calls");
    // The secret is in no tool result, log or audit record.
    let listed = client
        .call("get_identity", json!({"identity_id": "aws:user/app"}))
        .await
        .text();
    client.close().await;
    let audit = String::from_utf8_lossy(&aws.env.cli(&["audit", "export"]).stdout).to_string();
    let log = std::fs::read_to_string(aws.env.stderr_log()).unwrap_or_default();
    for (what, hay) in [
        ("apply result", &text),
        ("get_identity", &listed),
        ("audit", &audit),
        ("log", &log),
    ] {
        assert!(
            !hay.contains(&secret),
            "the new secret leaked into the {what}"
        );
    }
    assert!(!audit.contains("nhi-") || audit.contains("aws-secretsmanager:"));
}

#[tokio::test]
async fn rotation_with_two_active_keys_is_refused_with_the_reason() {
    let aws = Aws::new("").await;
    let keys = aws.user("busy", 2, &[]).await;
    let client = aws.env.stdio().await;
    let msg = client
        .call(
            "propose_rotation",
            json!({"identity_id": "aws:user/busy", "credential_id": keys[0].0, "reason": "r"}),
        )
        .await
        .tool_error();
    assert!(
        msg.contains("second active access key") && msg.contains(&keys[1].0),
        "{msg}"
    );
    client.close().await;
    assert_eq!(aws.keys("busy").await.len(), 2, "nothing changed");
}

#[tokio::test]
async fn revocation_deactivates_keys_and_deletes_the_login_profile() {
    let aws = Aws::new("").await;
    aws.user("old-svc", 2, &[]).await;
    aws.iam
        .create_login_profile()
        .user_name("old-svc")
        .password("Initial-Console-Pw-1")
        .send()
        .await
        .expect("login profile");
    let client = aws.env.stdio().await;
    let proposed = client
        .call(
            "revoke_identity",
            json!({"identity_id": "aws:user/old-svc", "reason": "decommissioned"}),
        )
        .await
        .ok();
    let blast = &proposed["proposal"]["blast_radius"];
    assert_eq!(blast["sign_in_disabled"], true);
    assert_eq!(
        blast["credentials_deactivated"]
            .as_array()
            .expect("creds")
            .len(),
        2
    );
    let pid = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    let token = aws.env.approve(&pid, "bob@example.com");
    let done = client
        .call(
            "revoke_identity",
            json!({"identity_id": "aws:user/old-svc", "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(done["proposal"]["status"], "applied", "{done}");
    client.close().await;

    let keys = aws.keys("old-svc").await;
    assert_eq!(keys.len(), 2, "keys are kept");
    assert!(
        keys.iter().all(|(_, s)| s == &StatusType::Inactive),
        "{keys:?}"
    );
    let profile = aws
        .iam
        .get_login_profile()
        .user_name("old-svc")
        .send()
        .await;
    assert!(profile.is_err(), "the login profile is deleted");
    aws.iam
        .get_user()
        .user_name("old-svc")
        .send()
        .await
        .expect("the user itself is kept");
}

#[tokio::test]
async fn the_identity_nhi_mcp_runs_as_is_never_changed() {
    let aws = Aws::new("").await;
    let keys = aws.user("nhi-runner", 1, &[]).await;
    let (key, secret) = &keys[0];
    let client = aws
        .env
        .stdio_with_env(&[
            ("AWS_ACCESS_KEY_ID", key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ])
        .await;
    for (tool, args) in [
        (
            "propose_rotation",
            json!({"identity_id": "aws:user/nhi-runner", "reason": "r"}),
        ),
        (
            "revoke_identity",
            json!({"identity_id": "aws:user/nhi-runner", "reason": "r"}),
        ),
    ] {
        let msg = client.call(tool, args).await.tool_error();
        assert!(
            msg.contains("the identity nhi-mcp runs as"),
            "{tool}: {msg}"
        );
        assert!(!msg.contains(secret.as_str()));
    }
    client.close().await;
    assert_eq!(
        aws.keys("nhi-runner").await,
        vec![(key.clone(), StatusType::Active)]
    );
}

#[tokio::test]
async fn config_check_says_who_nhi_mcp_is_and_what_it_can_see() {
    let aws = Aws::new("").await;
    aws.user("seen", 1, &[]).await;
    let out = aws.env.cli(&["config", "check"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("provider aws: ok, sees 1 identities"),
        "{text}"
    );
    assert!(text.contains("runs as arn:aws:"), "{text}");
    // moto answers SimulatePrincipalPolicy with HTTP 500: the check says it could not tell.
    assert!(
        text.contains("could not check its permissions") || text.contains("its policies allow"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_clear_error() {
    let env = Env::with_config(
        "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\ntimeout = \"3s\"\n",
    );
    let client = env.stdio().await;
    let started = Instant::now();
    let msg = client
        .call("list_identities", json!({"provider": "aws"}))
        .await
        .tool_error();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(msg.starts_with("provider `aws` is unavailable"), "{msg}");
    assert!(!msg.contains("testing"), "{msg}");
    client.close().await;
}

/// Config errors name the key.
#[test]
fn aws_config_is_validated() {
    for (toml, want) in [
        (
            "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nurl_env = \"X\"\n",
            "line 1: `providers[0]`: unknown field `url_env`, expected one of `name`, `region`",
        ),
        (
            "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nendpoint_url = \"localhost:5000\"\n",
            "must start with `http://` or `https://`",
        ),
        (
            "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nsink = { kind = \"vault\" }\n",
            "`providers[0]`: `sink`: unknown variant `vault`, expected `file` or `aws_secretsmanager`",
        ),
        (
            "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\npath_prefix = \"svc\"\n",
            "`path_prefix`",
        ),
    ] {
        let env = Env::with_config(toml);
        let out = env.cli(&["config", "check"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{toml}");
        assert!(err.contains(want), "{toml}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// Kills the server with SIGKILL while step `step` of a rotation is between its AWS call and its
/// recorded outcome, restarts it, and checks the rotation finished with exactly one new key
/// in moto and in Secrets Manager.
async fn killed_at_step(step: u64) {
    let aws = Aws::new("[debug]\nstep_pause = \"2s\"\n").await;
    // IAM user names are unique in the account, whatever their path.
    let user = format!("svc{step}");
    let keys = aws.user(&user, 1, &[]).await;
    let old = keys[0].0.clone();
    let server = aws.env.http_server();
    let client = server.client().await;
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": format!("aws:user/{user}"), "grace_period": "0s", "reason": "crash test"}),
        )
        .await
        .ok();
    let pid = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    let token = aws.env.approve(&pid, "alice@example.com");
    let apply = tokio::spawn({
        let client = server.client().await;
        let args = json!({"proposal_id": pid, "approval_token": token});
        async move { client.call("apply_proposal", args).await }
    });
    // Wait until step `step` has its intent and no outcome: its AWS call is done or under way.
    wait_for_step_in_flight(&aws.env, &pid, step).await;
    // Inside the pause after the AWS call.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut server = server;
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reap");
    apply.abort();

    // Restart without the pause: recovery runs at start.
    let config = aws.env.config.as_ref().expect("config");
    let text = std::fs::read_to_string(config).expect("config");
    std::fs::write(config, text.replace("step_pause = \"2s\"", "")).expect("rewrite");
    let server = aws.env.http_server();
    let client = server.client().await;
    let p = wait_for_status(&client, &pid, "applied").await;
    client.close().await;
    drop(server);
    let outcome = p["outcome"].as_str().expect("outcome");
    assert!(
        outcome.contains(&format!("step {step}")) && outcome.contains("interrupted"),
        "{outcome}"
    );
    let now = aws.keys(&user).await;
    assert_eq!(now.len(), 1, "no orphaned key: {now:?}");
    assert_ne!(now[0].0, old, "the old key is gone");
    assert_eq!(now[0].1, StatusType::Active);
    let current = aws.secret(&user, "AWSCURRENT").await.expect("AWSCURRENT");
    assert_eq!(
        current["credential_id"],
        now[0].0.as_str(),
        "the sink holds the key that exists"
    );
    assert!(aws.env.cli(&["audit", "verify"]).status.success());
}

#[tokio::test]
async fn killed_while_creating_the_key_rolls_back_and_recreates_it() {
    killed_at_step(0).await;
}

#[tokio::test]
async fn killed_while_deactivating_the_old_key_resumes() {
    killed_at_step(1).await;
}

#[tokio::test]
async fn killed_while_deleting_the_old_key_resumes() {
    killed_at_step(2).await;
}

/// A provider that stops answering mid-apply: the step fails with a clear error, the proposal
/// stays `applying` with a retry time, and once the provider is back the retry finishes it.
/// The provider is a moto of this test's own, stopped with SIGSTOP (it accepts connections and
/// never answers: a real timeout).
#[tokio::test]
async fn a_provider_that_times_out_leaves_a_recoverable_proposal() {
    let dir = tempfile::tempdir().expect("dir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/moto");
    let started = std::process::Command::new(script)
        .arg("start")
        .arg(dir.path())
        .arg(port.to_string())
        .output()
        .expect("tests/peers/moto start");
    assert!(
        started.status.success(),
        "own moto did not start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let url = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
        .expect("moto pid")
        .trim()
        .parse()
        .expect("pid");
    struct Stop(std::path::PathBuf, i32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.1.to_string()])
                .status();
            let _ = std::process::Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/moto"
            ))
            .arg("stop")
            .arg(&self.0)
            .status();
        }
    }
    let _stop = Stop(dir.path().to_path_buf(), pid);

    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&url)
        .credentials_provider(aws_sdk_iam::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let iam = aws_sdk_iam::Client::new(&sdk);
    iam.create_user()
        .user_name("slow")
        .send()
        .await
        .expect("user");
    let old = iam
        .create_access_key()
        .user_name("slow")
        .send()
        .await
        .expect("key")
        .access_key()
        .expect("key")
        .access_key_id()
        .to_owned();

    let env = Env::with_config(&format!(
        "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\ntimeout = \"2s\"\nrefresh = \"0s\"\n[debug]\nstep_pause = \"1s\"\n"
    ));
    let client = env.stdio().await;
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": "aws:user/slow", "grace_period": "0s", "reason": "timeout test"}),
        )
        .await
        .ok();
    let pid_s = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    let token = env.approve(&pid_s, "alice@example.com");
    // Apply; once the first step (create the key) has made its call, freeze moto: the next
    // step's call times out.
    let freeze = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shown: Value =
                serde_json::from_slice(&env.cli(&["proposals", "show", &pid_s]).stdout)
                    .unwrap_or(Value::Null);
            if shown["execution"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["index"] == 0))
            {
                break;
            }
            assert!(Instant::now() < deadline, "step 0 never started: {shown}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .expect("kill")
                .success()
        );
    };
    let (answer, ()) = tokio::join!(
        client.call(
            "apply_proposal",
            json!({"proposal_id": pid_s, "approval_token": token}),
        ),
        freeze
    );
    let msg = answer.tool_error();
    assert!(msg.contains("provider `aws` is unavailable"), "{msg}");
    let shown: Value =
        serde_json::from_slice(&env.cli(&["proposals", "show", &pid_s]).stdout).expect("json");
    assert_eq!(shown["status"], "applying", "recoverable: {shown}");
    assert!(
        shown["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("retrying at")),
        "{shown}"
    );
    // Back again: the retry (30 s after the failure, run by the server's tick) finishes it.
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let p = client
            .call("get_proposal", json!({"proposal_id": pid_s}))
            .await
            .ok();
        if p["proposal"]["status"] == "applied" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never applied after the retry: {p}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client.close().await;
    let keys = iam
        .list_access_keys()
        .user_name("slow")
        .send()
        .await
        .expect("keys");
    let ids: Vec<&str> = keys
        .access_key_metadata()
        .iter()
        .filter_map(|k| k.access_key_id())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], old);
}

/// Side by side with AWS Labs' IAM MCP server (PyPI `awslabs-iam-mcp-server`) on the same moto
/// data: both, driven by the MCP Python SDK over stdio, list the same users.
#[test]
fn the_same_users_are_listed_by_nhi_mcp_and_the_aws_labs_server() {
    let python = peer_path("NHI_TEST_PYTHON");
    let awslabs = peer_path("NHI_TEST_AWSLABS_IAM");
    let moto_python = peer_path("NHI_TEST_MOTO_PYTHON");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/iam_side_by_side.py"
    );
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--moto", &moto_url(), "--nhi-mcp", BIN, "--awslabs"])
        .arg(awslabs)
        .args(["--users", "25", "--path", &format!("/sbs{}/", suffix())])
        .arg("--moto-python")
        .arg(moto_python)
        .args(["--timeout", "120"])
        .output()
        .expect("run the side-by-side script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value =
        serde_json::from_str(stdout.lines().next().expect("a JSON line")).expect("JSON");
    assert_eq!(result["same"], true, "{result}");
    assert_eq!(result["nhi_mcp"], 25, "{result}");
    assert_eq!(result["awslabs"], 25, "{result}");
}

/// A listing is served from the inventory cache until it is due or the caller asks for a live
/// read, and every result says which it got.
#[tokio::test]
async fn the_inventory_is_cached_and_read_live_on_demand() {
    let aws = Aws::with_refresh("1h", "").await;
    aws.user("first", 1, &[]).await;
    let client = aws.env.stdio().await;
    let list = |refresh: bool| {
        let client = &client;
        async move {
            client
                .call(
                    "list_identities",
                    json!({"provider": "aws", "refresh": refresh}),
                )
                .await
                .ok()
        }
    };
    let names = |page: &Value| -> Vec<String> {
        page["identities"]
            .as_array()
            .expect("identities")
            .iter()
            .map(|i| i["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let first = list(false).await;
    assert_eq!(first["freshness"][0]["source"], "live", "{first}");
    assert_eq!(names(&first), ["first"]);

    aws.user("second", 1, &[]).await;
    let cached = list(false).await;
    assert_eq!(cached["freshness"][0]["provider"], "aws");
    assert_eq!(cached["freshness"][0]["source"], "cache", "{cached}");
    assert_eq!(names(&cached), ["first"], "served from the cache");

    let live = list(true).await;
    assert_eq!(live["freshness"][0]["source"], "live");
    assert_eq!(names(&live), ["first", "second"]);
    assert_eq!(
        names(&list(false).await),
        ["first", "second"],
        "the live read refreshed the cache"
    );
    let one = client
        .call("get_identity", json!({"identity_id": "aws:user/second"}))
        .await
        .ok();
    assert!(one["as_of"].is_string(), "{one}");
    client.close().await;
}
