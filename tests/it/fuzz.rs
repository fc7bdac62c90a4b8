//! Fuzz-style tests of the JSON-RPC surface of the real binary, over stdio and Streamable HTTP:
//! random and mutated requests for every tool, seeded (`NHI_FUZZ_SEED` replays a run) and
//! bounded in time (`NHI_FUZZ_SECS`, default 20 per transport). Each request with an id gets
//! exactly one answer carrying it, the server stays up, every error is one bounded line, and a
//! token sent under any name is echoed nowhere: not in an answer, not in the audit log.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::*;

/// The first 300 characters of `s`, for messages.
fn short(s: &str) -> String {
    s.chars().take(300).collect()
}

/// The last lines of the server's log, for messages.
fn log_tail(env: &Env) -> String {
    let log = std::fs::read_to_string(env.stderr_log()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// The longest error message the server may send, in characters.
const MAX_MESSAGE: usize = 501;

/// A `serve` process spoken to in raw JSON-RPC lines over its stdin and stdout.
pub struct RawStdio {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    answers: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl RawStdio {
    /// Spawns `serve` and does the MCP handshake.
    pub async fn start(env: &Env) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.stderr_log())
            .expect("log");
        let mut cmd = tokio::process::Command::from(env.command(&["serve"]));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn serve");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut raw = Self {
            child,
            stdin,
            answers,
        };
        raw.send_line(&init().to_string()).await;
        let first = raw
            .next(Duration::from_secs(30))
            .await
            .expect("initialize answer");
        assert_eq!(first["id"], 1, "{first}");
        raw.send_line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        raw
    }

    pub async fn send_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to serve");
        self.stdin.flush().await.expect("flush");
    }

    /// The next message from the server, if one comes within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.answers.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends `line` and waits for the answer whose id is `id` (10 s at most). Answers to other
    /// ids that arrive first are returned too, for counting.
    pub async fn exchange(&mut self, line: &str, id: &Value) -> (Option<Value>, Vec<Value>) {
        self.send_line(line).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut others = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(a) if &a["id"] == id => return (Some(a), others),
                Some(a) => others.push(a),
                None => break,
            }
        }
        (None, others)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Checks one answer: an error is one bounded line, and nothing carries `secret`.
pub fn check_answer(answer: &Value, secret: &str, sent: &str) {
    let text = answer.to_string();
    assert!(!text.contains(secret), "secret echoed for {sent}: {text}");
    let mut messages = Vec::new();
    if let Some(m) = answer["error"]["message"].as_str() {
        messages.push(m.to_owned());
    }
    if answer["result"]["isError"] == true {
        for c in answer["result"]["content"].as_array().into_iter().flatten() {
            messages.push(c["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    for m in messages {
        assert!(
            !m.contains(['\n', '\r', '\u{2028}', '\u{2029}']),
            "multi-line error for {sent}: {m:?}"
        );
        assert!(
            m.chars().count() <= MAX_MESSAGE,
            "{} characters of error for {}",
            m.chars().count(),
            short(sent)
        );
    }
}

/// A JWT-shaped token unique to this run.
fn planted_secret(rng: &mut StdRng) -> String {
    let tail: String = (0..43)
        .map(|_| {
            let c = rng.gen_range(0..62u8);
            char::from(match c {
                0..=25 => b'a' + c,
                26..=51 => b'A' + c - 26,
                _ => b'0' + c - 52,
            })
        })
        .collect();
    format!("eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJmdXp6In0.{tail}")
}

const TOOLS: [&str; 8] = [
    "list_identities",
    "get_identity",
    "list_findings",
    "propose_rotation",
    "revoke_identity",
    "apply_proposal",
    "get_proposal",
    "list_proposals",
];

fn valid_args(tool: &str) -> Value {
    match tool {
        "list_identities" => json!({"limit": 5, "kind": "service_user"}),
        "get_identity" => json!({"identity_id": "demo-aws:user/ci-deploy"}),
        "list_findings" => json!({"limit": 5, "severity": "high"}),
        "propose_rotation" => {
            json!({"identity_id": "demo-aws:user/ci-deploy", "reason": "fuzz", "grace_period": "1h"})
        }
        "revoke_identity" => json!({"identity_id": "demo-aws:user/ci-deploy", "reason": "fuzz"}),
        "apply_proposal" => {
            json!({"proposal_id": "prop_0123456789abcdef0123456789abcdef", "approval_token": "x.y.z"})
        }
        "get_proposal" => json!({"proposal_id": "prop_0123456789abcdef0123456789abcdef"}),
        _ => json!({"status": "pending_approval", "limit": 3}),
    }
}

fn hostile_string(rng: &mut StdRng, secret: &str) -> String {
    const PIECES: [&str; 22] = [
        "€",
        "ሴ",
        "🦀",
        "-",
        "+",
        "9",
        "d",
        ":",
        "/",
        "prop_",
        "demo-aws:",
        "\n",
        "\r\n",
        "\u{0}",
        "\u{1b}[31m",
        "\u{2028}",
        "\u{2029}",
        "\u{202e}",
        "`",
        "\"",
        "\\",
        "%00",
    ];
    match rng.gen_range(0..6) {
        0 => "k".repeat(rng.gen_range(60..120_000)),
        1 => secret.to_owned(),
        2 => format!("{}{}d", ["+", "-"][rng.gen_range(0..2)], rng.r#gen::<u64>()),
        _ => (0..rng.gen_range(0..20))
            .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
            .collect(),
    }
}

fn hostile_value(rng: &mut StdRng, secret: &str) -> Value {
    match rng.gen_range(0..10) {
        0 => Value::Null,
        1 => json!(rng.r#gen::<i64>()),
        2 => json!(u64::MAX),
        3 => json!(-1),
        4 => json!(1.5e300),
        5 => json!([hostile_string(rng, secret)]),
        6 => json!({"x": hostile_string(rng, secret)}),
        7 => json!(rng.r#gen::<bool>()),
        _ => Value::String(hostile_string(rng, secret)),
    }
}

/// One line to send and the id its answer must carry: `Some(id)` for a request with a valid id,
/// `Some(null)` when only an `id: null` error can answer it, `None` for a notification.
fn generate(rng: &mut StdRng, n: u64, secret: &str) -> (String, Option<Value>) {
    let tool = TOOLS[rng.gen_range(0..TOOLS.len())];
    let mut args = valid_args(tool);
    let map = args.as_object_mut().expect("object");
    for _ in 0..rng.gen_range(0..3) {
        let keys: Vec<String> = map.keys().cloned().collect();
        match rng.gen_range(0..5) {
            0 if !keys.is_empty() => {
                let k = &keys[rng.gen_range(0..keys.len())];
                // A reason is free text a proposal shows back: not where to plant the token.
                let planted = if k == "reason" {
                    "not-the-token"
                } else {
                    secret
                };
                map.insert(k.clone(), hostile_value(rng, planted));
            }
            1 if !keys.is_empty() => {
                map.remove(&keys[rng.gen_range(0..keys.len())]);
            }
            2 => {
                let name = [
                    "approval_tokens",
                    "approvalToken",
                    "token",
                    "Approval-Token",
                ][rng.gen_range(0..4)];
                map.insert(name.to_owned(), json!(secret));
            }
            3 => {
                map.insert(hostile_string(rng, secret), hostile_value(rng, secret));
            }
            _ => {}
        }
    }
    let id = if rng.gen_bool(0.5) {
        json!(n)
    } else {
        json!(format!("s-{n}"))
    };
    let mut message = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": args}});
    let mut expect = Some(id);
    match rng.gen_range(0..20) {
        0 => message["params"] = hostile_value(rng, secret),
        1 => message["params"]["name"] = hostile_value(rng, secret),
        2 => message["params"]["arguments"] = hostile_value(rng, secret),
        3 => message["method"] = hostile_value(rng, secret),
        4 => message["jsonrpc"] = hostile_value(rng, secret),
        5 => {
            message["id"] = [json!(null), json!({}), json!([1]), json!(1.5), json!(true)]
                [rng.gen_range(0..5)]
            .clone();
            expect = Some(Value::Null);
        }
        6 => {
            if let Some(m) = message.as_object_mut() {
                m.remove("id");
            }
            expect = None;
        }
        7 => {
            // Not JSON at all, or cut short.
            let text = message.to_string();
            let cut = rng.gen_range(1..text.chars().count());
            let line = match rng.gen_range(0..3) {
                // A strict prefix of an object is never JSON.
                0 => text.chars().take(cut).collect(),
                1 => hostile_string(rng, secret).replace(['\n', '\r'], " "),
                _ => format!("{text}}}"),
            };
            if line.trim().is_empty() {
                return (line, None);
            }
            return (line, Some(Value::Null));
        }
        8 => {
            message["method"] =
                json!(["tools/list", "ping", "prompts/list", "no/such"][rng.gen_range(0..4)]);
        }
        _ => {}
    }
    (message.to_string(), expect)
}

fn budget() -> Duration {
    let secs = std::env::var("NHI_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

fn seed() -> u64 {
    std::env::var("NHI_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Issue 8: 16 malformed requests over stdio went unanswered and the client waited forever.
#[tokio::test]
async fn stdio_json_rpc_fuzz_answers_every_request_once() {
    let env = Env::new();
    let mut raw = RawStdio::start(&env).await;
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let secret = planted_secret(&mut rng);
    let started = Instant::now();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut sent = 0u64;
    while started.elapsed() < budget() {
        sent += 1;
        let (line, expect) = generate(&mut rng, sent + 100, &secret);
        let Some(id) = expect else {
            raw.send_line(&line).await;
            continue;
        };
        let (answer, others) = raw.exchange(&line, &id).await;
        let others_seen = others.clone();
        let answer = answer.unwrap_or_else(|| {
            let others = &others_seen;
            panic!(
                "seed {seed}: no answer with id {id} within 10 s to {}; got {others:?}; log: {}",
                short(&line),
                log_tail(&env)
            )
        });
        check_answer(&answer, &secret, &line);
        for a in others.iter().chain([&answer]) {
            if !a["id"].is_null() {
                *counts.entry(a["id"].to_string()).or_default() += 1;
            }
        }
        assert!(raw.alive(), "seed {seed}: serve exited after {line}");
    }
    // Anything still arriving would be a second answer.
    while let Some(a) = raw.next(Duration::from_millis(500)).await {
        if !a["id"].is_null() {
            *counts.entry(a["id"].to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: answered more than once: {twice:?}"
    );
    let (alive, _) = raw
        .exchange(
            r#"{"jsonrpc":"2.0","id":"last","method":"tools/list"}"#,
            &json!("last"),
        )
        .await;
    assert!(
        alive.is_some_and(|a| a["result"]["tools"].is_array()),
        "seed {seed}: not serving after the fuzz"
    );
    assert!(sent > 200, "only {sent} requests in the time budget");
    let audit = serde_json::to_string(&env.audit()).expect("json");
    assert!(
        !audit.contains(&secret),
        "seed {seed}: the token reached the audit log"
    );
    eprintln!("stdio fuzz: {sent} messages, seed {seed}");
}

/// The same over Streamable HTTP: every POST gets its answer in its response.
#[tokio::test]
async fn http_json_rpc_fuzz_answers_every_request_once() {
    let env = Env::new();
    let server = env.http_server();
    let http = reqwest::Client::new();
    let post = async |body: String, session: Option<&str>| {
        let mut request = http
            .post(&server.url)
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .header("MCP-Protocol-Version", "2025-06-18")
            .body(body);
        if let Some(s) = session {
            request = request.header("Mcp-Session-Id", s);
        }
        let response = request.send().await.expect("post");
        let status = response.status().as_u16();
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("body");
        (status, session, json_rpc_messages(&text))
    };
    let (status, session, _) = post(init().to_string(), None).await;
    assert_eq!(status, 200);
    let session = session.expect("session id");
    let (status, _, _) = post(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
        Some(&session),
    )
    .await;
    assert_eq!(status, 202);

    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let secret = planted_secret(&mut rng);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < budget() {
        sent += 1;
        let (line, expect) = generate(&mut rng, sent + 100, &secret);
        let (status, _, answers) = post(line.clone(), Some(&session)).await;
        let short = short(&line);
        match expect {
            None => assert!(
                status == 202 || (400..500).contains(&status),
                "seed {seed}: {status} for notification {short}"
            ),
            Some(id) => {
                let mine: Vec<&Value> = answers.iter().filter(|a| a["id"] == id).collect();
                assert_eq!(
                    mine.len(),
                    1,
                    "seed {seed}: {status} with {answers:?} for {short}"
                );
                check_answer(mine[0], &secret, &line);
            }
        }
    }
    let (_, _, answers) = post(
        r#"{"jsonrpc":"2.0","id":"last","method":"tools/list"}"#.to_owned(),
        Some(&session),
    )
    .await;
    assert!(
        answers.iter().any(|a| a["result"]["tools"].is_array()),
        "seed {seed}: not serving after the fuzz: {answers:?}"
    );
    assert!(sent > 100, "only {sent} requests in the time budget");
    let audit = serde_json::to_string(&env.audit()).expect("json");
    assert!(
        !audit.contains(&secret),
        "seed {seed}: the token reached the audit log"
    );
    eprintln!("http fuzz: {sent} messages, seed {seed}");
}

/// The JSON-RPC messages in a response body: one JSON document, or SSE `data:` lines.
pub fn json_rpc_messages(body: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return vec![v];
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .filter(|v| v.get("jsonrpc").is_some())
        .collect()
}
