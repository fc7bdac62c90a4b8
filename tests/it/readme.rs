//! The README's console examples, run: every ```console block preceded by a
//! `<!-- checked: NAME -->` line is run command by command (`$ ` lines, through `sh`, with the
//! built binary first on the `PATH` and `NHI_MCP_DATA_DIR` set), and its output compared with
//! the README's after normalising what differs from run to run (ids, times, dates, hashes, ages,
//! the data dir). A line `...` in the README stands for any number of lines.

use std::path::Path;
use std::process::Stdio;

use serde_json::json;

use crate::common::*;

/// The proposal id the walkthrough shows; replaced by the real one in commands.
const README_PROPOSAL: &str = "prop_349e0e24ec05434191030a5524e2d2fc";

struct Block {
    name: String,
    /// (command, expected output lines)
    commands: Vec<(String, Vec<String>)>,
}

fn checked_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- checked: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next().map(str::trim),
            Some("```console"),
            "README: `checked: {name}` must be followed by a console block"
        );
        let mut commands: Vec<(String, Vec<String>)> = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            match line.strip_prefix("$ ") {
                Some(cmd) => commands.push((cmd.to_owned(), Vec::new())),
                None => commands
                    .last_mut()
                    .unwrap_or_else(|| panic!("README block `{name}` starts with output"))
                    .1
                    .push(line.to_owned()),
            }
        }
        blocks.push(Block {
            name: name.to_owned(),
            commands,
        });
    }
    blocks
}

fn run_shell(env: &Env, cmd: &str) -> String {
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // One file for stdout and stderr, so their lines keep their order.
    let out_path = env.path("readme.out");
    let out = std::fs::File::create(&out_path).expect("out");
    let mut sh = std::process::Command::new("sh");
    // The examples run on the embedded demo defaults, as the README shows them; an approval
    // also needs the approvers, which the harness's config names (tests/it/common.rs).
    match env.config.as_ref().filter(|_| cmd.contains("--key")) {
        Some(config) => sh.env("NHI_MCP_CONFIG", config),
        None => sh.env_remove("NHI_MCP_CONFIG"),
    };
    let status = sh
        .arg("-c")
        .arg(cmd)
        .current_dir(env.dir.path())
        .env("PATH", path)
        .env("NHI_MCP_DATA_DIR", &env.data)
        .env_remove("NHI_MCP_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .status()
        .expect("run sh");
    let _ = status;
    std::fs::read_to_string(&out_path).expect("output")
}

fn hex_run(s: &str) -> usize {
    s.bytes()
        .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        .count()
}

fn digits(s: &str, n: usize) -> bool {
    s.len() >= n && s.as_bytes()[..n].iter().all(u8::is_ascii_digit)
}

/// `YYYY-MM-DD`: its length, if `s` starts with one.
fn date(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (digits(s, 4) && b.get(4) == Some(&b'-') && digits(&s[5..], 2) && b.get(7) == Some(&b'-'))
        .then_some(())
        .filter(|()| digits(&s[8..], 2))
        .map(|()| 10)
}

/// Replaces what differs from run to run with placeholders.
fn normalise(text: &str, data_dir: &str) -> String {
    let text = text.replace(data_dir, "/tmp/nhi-demo");
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let boundary = i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric();
        if let Some(r) = rest.strip_prefix("prop_")
            && hex_run(r) == 32
        {
            out.push_str("prop_ID");
            i += 5 + 32;
            continue;
        }
        if boundary {
            if let Some(n) = date(rest) {
                let mut end = n;
                if rest[n..].starts_with('T') {
                    end += 1 + rest[n + 1..]
                        .bytes()
                        .take_while(|b| b.is_ascii_digit() || *b == b':' || *b == b'.')
                        .count();
                    if rest[end..].starts_with('Z') {
                        end += 1;
                    } else if rest[end..].starts_with("+00:00") {
                        end += 6;
                    }
                    out.push_str("TIME");
                } else {
                    out.push_str("DATE");
                }
                i += end;
                continue;
            }
            let hex = hex_run(rest);
            if hex == 8 && rest[8..].starts_with('-') {
                // A UUID: 8-4-4-4-12.
                let uuid = rest.bytes().take(36).filter(|b| *b == b'-').count() == 4
                    && hex_run(&rest[..36.min(rest.len())].replace('-', "")) == 32;
                if uuid {
                    out.push_str("UUID");
                    i += 36;
                    continue;
                }
            }
            if hex >= 32 {
                out.push_str("HEX");
                i += hex;
                continue;
            }
            // An age or a count of seconds: `0s`, `12m`, `3h`, `9d`.
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            if n > 0
                && rest[n..].starts_with(['s', 'm', 'h', 'd'])
                && rest[n + 1..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric())
            {
                out.push_str("AGE");
                i += n + 1;
                continue;
            }
        }
        let c = rest.chars().next().expect("char");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Whether `actual` matches `expected`, where an expected `...` line matches any lines.
fn matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((e, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| a == e && matches(rest, more)),
    }
}

fn check_block(env: &Env, block: &Block, proposal: &str) {
    let data = env.data.display().to_string();
    for (cmd, expected) in &block.commands {
        // The README's approver keeps her key under ~/.config; the harness keeps it in its dir.
        let cmd = cmd.replace(README_PROPOSAL, proposal).replace(
            "~/.config/nhi-mcp/alice.key",
            &env.key("alice@example.com").display().to_string(),
        );
        let actual = run_shell(env, &cmd);
        let norm = |lines: &mut dyn Iterator<Item = &str>| -> Vec<String> {
            lines
                .map(|l| normalise(l, &data).trim_end().to_owned())
                .collect()
        };
        let want = norm(&mut expected.iter().map(String::as_str));
        let got = norm(&mut actual.lines());
        assert!(
            matches(&want, &got),
            "README block `{}`: `{cmd}` printed\n{}\nbut the README shows\n{}",
            block.name,
            got.join("\n"),
            want.join("\n")
        );
    }
}

#[test]
fn the_normaliser_and_the_matcher() {
    assert_eq!(
        normalise(
            "approved prop_349e0e24ec05434191030a5524e2d2fc; valid until 2026-11-24T00:41:55+00:00 in /d/x",
            "/d/x"
        ),
        "approved prop_ID; valid until TIME in /tmp/nhi-demo"
    );
    assert_eq!(
        normalise(
            "2026-04-24  12m 15m0 token 374961d3-70d1-4620-8596-8ca0921c60d6 head cd63cb5458e6168c22e3fea629085545ce6e90d570ea91b5788080b3d9091e52 NHI7 at 2026-11-24T00:26:55.365Z",
            "/nowhere"
        ),
        "DATE  AGE 15m0 token UUID head HEX NHI7 at TIME"
    );
    let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
    assert!(matches(&lines("a\n...\nd"), &lines("a\nb\nc\nd")));
    assert!(matches(&lines("a\n...\nd"), &lines("a\nd")));
    assert!(!matches(&lines("a\n...\nd"), &lines("a\nb")));
    assert!(!matches(&lines("a\nb"), &lines("a\nb\nc")));
}

/// Issue #8, README drift: the walkthrough's and the configuration section's console examples
/// are what the binary prints.
#[tokio::test]
async fn readme_console_examples_are_what_the_binary_prints() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let blocks = checked_blocks(&readme);
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    // In this order: the requester's own approval is refused as such only while the proposal
    // is pending.
    let order = [
        "http-refused",
        "config-check",
        "identities-list",
        "self-approval",
        "approve",
    ];
    for name in &names {
        assert!(
            order.contains(name),
            "README block `{name}` is not run by this test"
        );
    }
    for want in order {
        assert!(
            names.contains(&want),
            "README lost its checked block `{want}`: {names:?}"
        );
    }
    let mut env = Env::new();
    // The self-approval example: the requester is an approver too, with `agent.key` in the
    // working directory, and is still refused.
    let public = nhi_mcp::authz::approvers::generate_key_file(&env.path("agent.key")).expect("key");
    let agent_pub = env.path("agent.pub");
    std::fs::write(
        &agent_pub,
        nhi_mcp::authz::approvers::public_key_pem(&public).expect("pem"),
    )
    .expect("write");
    env.set_config(&format!(
        "[[approvers]]\nid = \"agent:local\"\npublic_key_file = \"{}\"\n",
        agent_pub.display()
    ));
    // The walkthrough's step 2, done by an agent over MCP.
    let client = env.stdio().await;
    let proposed = client
        .call(
            "propose_rotation",
            json!({"identity_id": "demo-aws:user/sftp-partner-acmebank",
                   "reason": "access key is 505 days old (NHI7)"}),
        )
        .await
        .ok();
    client.close().await;
    let proposal = proposed["proposal"]["id"].as_str().expect("id").to_owned();
    for name in order {
        for block in blocks.iter().filter(|b| b.name == name) {
            check_block(&env, block, &proposal);
        }
    }
}
