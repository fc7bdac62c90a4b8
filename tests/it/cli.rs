//! The admin CLI as an admin uses it, through the real binary: what it prints from data cannot
//! drive the terminal, approvers need no provider's credentials, every table has `--json`,
//! completions, `--http localhost:PORT`, and logs that stay as quiet as `NHI_MCP_LOG` says.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// Owner, name, purpose, environment, a tag and a grant that try to drive the terminal: clear
/// the screen, set the window title, forge a line, reverse the text that follows.
const HOSTILE_INVENTORY: &str = r#"
[[identities]]
native_id = "user/hostile"
kind = "service_user"
name = "evil\r\nFORGED demo:user/admin  role  ok"
owner = "\u001b]0;pwned\u0007\u001b[2J\u001b[31mteam-red"
purpose = "\u202egnp.exe\u2028second line\u2029\u009b31m\u007f"
environment = "prod\u001b[8m"
tags = { "k\u001bey" = "v\u202ealue" }
created_at = "-400d"
last_used_at = "-200d"

[identities.permissions]
privileged = true
summary = "admin\u001b[0m"
grants = ["*:* on *\r\n  fake grant"]

[[identities.credentials]]
id = "AKIAHOSTILE000000001"
kind = "access_key"
created_at = "-400d"
status = "active"
"#;

/// What must never reach a terminal raw: ESC, CR, BEL, DEL, C1 controls (CSI U+009B),
/// U+2028/U+2029 and the bidi override U+202E. LF is allowed only as the line terminator, so
/// each output line is checked on its own.
fn assert_terminal_safe(what: &str, bytes: &[u8]) {
    let text = String::from_utf8(bytes.to_vec()).unwrap_or_else(|_| panic!("{what}: not UTF-8"));
    for (n, line) in text.split('\n').enumerate() {
        for c in line.chars() {
            let bad = c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            assert!(
                !bad,
                "{what}: line {n} holds raw {:?}: {line:?}",
                c.escape_unicode().to_string()
            );
        }
    }
}

fn hostile_env() -> Env {
    let mut env = Env::new();
    let inventory = env.path("hostile.toml");
    std::fs::write(&inventory, HOSTILE_INVENTORY).expect("inventory");
    env.set_config(&format!(
        "[[providers]]\nname = \"evil\"\nkind = \"inventory\"\npath = \"{}\"\n",
        inventory.display()
    ));
    env
}

fn ok(env: &Env, args: &[&str]) -> Vec<u8> {
    let out = env.cli(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_terminal_safe(&format!("{args:?} stderr"), &out.stderr);
    out.stdout
}

/// Issue #8, terminal injection: an identity's owner, name, purpose, environment, tags and
/// grants with escape sequences, CR/LF, C1 controls and U+202E, and a proposal reason with
/// U+2028 and U+202E, come out of every command escaped, in tables, plain text and JSON.
#[tokio::test]
async fn issue_8_cli_output_never_carries_raw_terminal_controls() {
    let env = hostile_env();
    let client = env.stdio().await;
    let reason = "rotate \u{202e}txet desrever\u{2028}and more \u{2066}isolate\u{2069}";
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": "evil:user/hostile", "reason": reason}),
        )
        .await
        .ok();
    let id = proposed["proposal"]["id"]
        .as_str()
        .expect("proposal id")
        .to_owned();
    client.close().await;

    let table = ok(&env, &["identities", "list"]);
    let table = String::from_utf8(table).expect("utf8");
    assert_eq!(table.lines().count(), 2, "one header, one row: {table}");
    assert!(
        table.contains("\\x1b]0;pwned\\x07\\x1b[2J"),
        "the owner is shown, escaped: {table}"
    );
    for args in [
        &["identities", "list", "--json"][..],
        &["identities", "show", "evil:user/hostile"],
        &["identities", "show", "evil:user/hostile", "--json"],
        &["findings", "list"],
        &["findings", "list", "--json"],
        &["proposals", "list"],
        &["proposals", "list", "--json"],
        &["proposals", "show", id.as_str()],
        &["audit", "export"],
        &["audit", "verify"],
        &["config", "check"],
    ] {
        ok(&env, args);
    }
    let shown =
        String::from_utf8(ok(&env, &["identities", "show", "evil:user/hostile"])).expect("utf8");
    for want in [
        "evil\\r\\nFORGED",
        "\\u{202e}gnp.exe\\u{2028}second line\\u{2029}\\u{9b}31m\\x7f",
        "prod\\x1b[8m",
        "k\\x1bey=v\\u{202e}alue",
        "*:* on *\\r\\n  fake grant",
    ] {
        assert!(shown.contains(want), "`{want}` not in: {shown}");
    }
    let proposals = String::from_utf8(ok(&env, &["proposals", "list"])).expect("utf8");
    assert!(
        proposals.contains("rotate \\u{202e}txet desrever\\u{2028}and more"),
        "{proposals}"
    );
    // JSON output stays valid JSON with the same values.
    let shown: Value =
        serde_json::from_slice(&ok(&env, &["proposals", "show", &id])).expect("json");
    assert_eq!(shown["reason"], reason);
    assert_eq!(
        shown["snapshot"]["owner"],
        "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mteam-red"
    );
    // An error that quotes data is one escaped line too.
    let out = env.cli(&["identities", "show", "evil:user/\u{202e}nope"]);
    assert!(!out.status.success());
    assert_terminal_safe("error", &out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// Issue #8, admins without the keys to the kingdom: with a `postgres` provider whose URL
/// variable is unset, the approval commands and the audit log work; the commands that call
/// providers fail with one line naming the variable.
#[tokio::test]
async fn issue_8_approvers_need_no_provider_credentials() {
    let inventory =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory/aws.toml");
    let env = Env::with_config(&format!(
        "[[providers]]\nname = \"demo\"\nkind = \"inventory\"\npath = \"{}\"\n\n\
         [[providers]]\nname = \"pg\"\nkind = \"postgres\"\nurl_env = \"NHI_TEST_CLI_UNSET_PG_URL\"\n",
        inventory.display()
    ));
    // The server holds the credential (never connected to: the URL is only parsed here).
    let client = env
        .stdio_with_env(&[(
            "NHI_TEST_CLI_UNSET_PG_URL",
            "postgres://nobody:pw@127.0.0.1:1/none",
        )])
        .await;
    let identity = "demo:user/sftp-partner-acmebank";
    let first = propose(&client, identity, "AKIADBV3DWYA6ZUT4HFF").await;
    let second = client
        .call(
            "revoke_identity",
            json!({"identity_id": "demo:user/legacy-backup", "reason": "unused"}),
        )
        .await
        .ok();
    let second = second["proposal"]["id"].as_str().expect("id").to_owned();
    client.close().await;

    let run = |args: &[&str]| {
        env.command(args)
            .env_remove("NHI_TEST_CLI_UNSET_PG_URL")
            .output()
            .expect("run")
    };
    for args in [
        &["proposals", "list"][..],
        &["proposals", "list", "--json"],
        &["proposals", "show", first.as_str()],
        &[
            "approve",
            first.as_str(),
            "--approver",
            "alice@example.com",
            "--key",
            &env.key_arg("alice@example.com"),
        ],
        &[
            "reject",
            second.as_str(),
            "--approver",
            "bob@example.com",
            "--key",
            &env.key_arg("bob@example.com"),
            "--reason",
            "no",
        ],
        &["audit", "verify"],
        &["audit", "export"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?} needs no provider: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = String::from_utf8(run(&["proposals", "show", &first]).stdout).expect("utf8");
    assert!(token.contains("\"approved\""), "{token}");
    for args in [
        &["identities", "list"][..],
        &["identities", "show", identity],
        &["findings", "list"],
        &["config", "check"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("`NHI_TEST_CLI_UNSET_PG_URL`") && err.contains("not set"),
            "{args:?}: {err}"
        );
    }
}

/// `--json` on every table, the new `identities show` and `findings list` with the tool's
/// filters, and `proposals list` with approvals n/m, age and reason.
#[tokio::test]
async fn tables_have_json_and_the_columns_an_admin_needs() {
    let env = Env::with_config("[approval]\nrequired_approvals = 2\n");
    let client = env.stdio().await;
    let (identity, credential) = rotation_target(&client).await;
    let id = propose(&client, &identity, &credential).await;
    client.close().await;

    let lines = |args: &[&str]| -> Vec<Value> {
        String::from_utf8(ok(&env, args))
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: {e}: {l}")))
            .collect()
    };
    let all = lines(&["identities", "list", "--json"]);
    assert_eq!(all.len(), 50, "the demo's 50 identities");
    let aws = lines(&[
        "identities",
        "list",
        "--json",
        "--provider",
        "demo-aws",
        "--kind",
        "role",
    ]);
    assert!(!aws.is_empty());
    assert!(
        aws.iter()
            .all(|i| i["provider"] == "demo-aws" && i["kind"] == "role")
    );
    let out = env.cli(&["identities", "list", "--kind", "rôle"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`--kind`: unknown value `rôle`"));

    let high = lines(&["findings", "list", "--json", "--severity", "high"]);
    assert!(!high.is_empty());
    assert!(
        high.iter()
            .all(|f| f["severity"] == "high" || f["severity"] == "critical"),
        "{high:?}"
    );
    let nhi7 = lines(&[
        "findings",
        "list",
        "--json",
        "--finding",
        "NHI7",
        "--identity",
        &identity,
    ]);
    assert!(!nhi7.is_empty());
    assert!(
        nhi7.iter()
            .all(|f| f["owasp_id"] == "NHI7" && f["identity_id"] == identity.as_str())
    );
    let table =
        String::from_utf8(ok(&env, &["findings", "list", "--provider", "demo-k8s"])).expect("utf8");
    assert!(table.starts_with("SEVERITY OWASP RULE"), "{table}");
    assert!(
        table.lines().skip(1).all(|l| l.contains("demo-k8s:")),
        "{table}"
    );

    let shown: Value =
        serde_json::from_slice(&ok(&env, &["identities", "show", &identity, "--json"]))
            .expect("json");
    assert_eq!(shown["identity"]["id"], identity.as_str());
    assert_eq!(shown["open_proposals"][0]["id"], id.as_str());
    let plain = String::from_utf8(ok(&env, &["identities", "show", &identity])).expect("utf8");
    assert!(
        plain.starts_with(&format!("id:          {identity}\n")),
        "{plain}"
    );
    assert!(
        plain.contains(&credential) && plain.contains(&id),
        "{plain}"
    );

    let table = String::from_utf8(ok(&env, &["proposals", "list"])).expect("utf8");
    let mut rows = table.lines();
    let header = rows.next().expect("header");
    for col in ["ID", "STATUS", "REQUESTER", "APPROVALS", "AGE", "REASON"] {
        assert!(header.contains(col), "{header}");
    }
    let row = rows.next().expect("row");
    assert!(row.starts_with(&id), "{row}");
    assert!(row.contains(" 0/2 "), "{row}");
    assert!(row.ends_with(" integration test"), "{row}");
    let age = row.split_whitespace().nth(6).expect("age");
    assert!(age.ends_with('s') || age.ends_with('m'), "{row}");
    ok(
        &env,
        &[
            "approve",
            &id,
            "--approver",
            "alice@example.com",
            "--key",
            &env.key_arg("alice@example.com"),
        ],
    );
    let table = String::from_utf8(ok(&env, &["proposals", "list"])).expect("utf8");
    assert!(table.contains(" 1/2 "), "{table}");
    let json = lines(&[
        "proposals",
        "list",
        "--json",
        "--status",
        "pending_approval",
    ]);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["approvals"][0]["approver"], "alice@example.com");
    assert!(lines(&["proposals", "list", "--json", "--status", "applied"]).is_empty());
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = env.cli(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).expect("utf8");
        for word in ["nhi-mcp", "proposals", "approve", "--approver", "findings"] {
            let word = if shell == "fish" {
                word.trim_start_matches("--")
            } else {
                word
            };
            assert!(script.contains(word), "{shell} completion lacks `{word}`");
        }
    }
    let out = env.cli(&["completions", "powershell-but-not"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    // No data dir is needed to print a script.
    assert!(!env.data.exists());
}

/// `serve --http localhost:PORT` listens on the loopback address; a name is never taken to be
/// loopback without being it.
#[test]
fn serve_http_accepts_localhost() {
    let env = Env::new();
    let mut child = env
        .command(&["serve", "--http", "localhost:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("listening on http://127.0.0.1:") => break true,
            Ok(line) => seen.push(line),
            Err(_) if std::time::Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "no loopback listener: {seen:?}");
    for bad in ["localhost", "localhost:", "localhost:70000", ":80"] {
        let out = env.cli(&["serve", "--http", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not an address like"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue #8, logs: `off` is silent and `warn` prints no INFO line over a whole stdio session
/// (rmcp logs the client's initialize parameters at info), and even `trace` gets no debug or
/// trace line from rmcp, whose debug logs carry whole requests.
#[tokio::test]
async fn issue_8_log_levels_are_ceilings_for_rmcp() {
    for (level, check) in [
        ("off", "silent"),
        ("warn", "no info"),
        ("info,rmcp=trace", "rmcp capped"),
        ("trace", "rmcp capped"),
    ] {
        let env = Env::new();
        let client = env.stdio_with_env(&[("NHI_MCP_LOG", level)]).await;
        let (identity, credential) = rotation_target(&client).await;
        let id = propose(&client, &identity, &credential).await;
        let token = env.approve(&id, "alice@example.com");
        client
            .call(
                "apply_proposal",
                json!({"proposal_id": id, "approval_token": token}),
            )
            .await
            .ok();
        client.close().await;
        // The child may still be writing its last lines.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = std::fs::read_to_string(env.stderr_log()).unwrap_or_default();
        assert!(!log.contains(&token), "{level}: the token is in the log");
        match check {
            "silent" => assert!(log.is_empty(), "{level}: {log}"),
            "no info" => assert!(
                !log.lines().any(|l| l.contains(" INFO ")
                    || l.contains(" DEBUG ")
                    || l.contains(" TRACE ")),
                "{level}: {log}"
            ),
            _ => {
                assert!(log.contains(" INFO "), "{level}: the level did not take");
                let loud = log.lines().find(|l| {
                    (l.contains(" DEBUG ") || l.contains(" TRACE ")) && l.contains("rmcp")
                });
                assert!(loud.is_none(), "{level}: {loud:?}");
            }
        }
    }
}
