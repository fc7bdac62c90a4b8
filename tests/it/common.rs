//! Test harness: a temporary data dir and config, the CLI, and real MCP clients.

#![allow(
    dead_code,
    reason = "each test module uses a different part of the harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_nhi-mcp");

/// The approvers every `Env` configures (`[[approvers]]`), each with a key in `Env::key`.
pub const APPROVERS: [&str; 4] = [
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "dave@example.com",
];

/// A fresh data dir and a config file; the config names the test approvers.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
}

impl Env {
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// `toml` plus `[[approvers]]` for [`APPROVERS`], whose keys it creates.
    pub fn with_config(toml: &str) -> Self {
        let mut env = Self::bare();
        env.set_config(toml);
        env
    }

    /// Replaces the config with `toml` plus `[[approvers]]` for [`APPROVERS`] (keys created
    /// once, kept across calls).
    pub fn set_config(&mut self, toml: &str) {
        let mut text = format!("{toml}\n");
        for id in APPROVERS {
            let pub_file = self.path(&format!("{id}.pub"));
            if !pub_file.exists() {
                let public =
                    nhi_mcp::authz::approvers::generate_key_file(&self.key(id)).expect("keygen");
                std::fs::write(
                    &pub_file,
                    nhi_mcp::authz::approvers::public_key_pem(&public).expect("pem"),
                )
                .expect("write public key");
            }
            text.push_str(&format!(
                "[[approvers]]\nid = \"{id}\"\npublic_key_file = \"{}\"\n",
                pub_file.display()
            ));
        }
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write config");
        self.config = Some(path);
    }

    /// The `--key` argument for a test approver.
    pub fn key_arg(&self, id: &str) -> String {
        self.key(id).display().to_string()
    }

    /// `toml` alone: no approvers unless it names them.
    pub fn with_raw_config(toml: &str) -> Self {
        Self::bare().write_config(toml.to_owned())
    }

    fn bare() -> Self {
        nhi_mcp::auth::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Self {
            dir,
            data,
            config: None,
        }
    }

    fn write_config(mut self, text: String) -> Self {
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write config");
        self.config = Some(path);
        self
    }

    /// The private key of a test approver (or where one for `id` would be).
    pub fn key(&self, id: &str) -> PathBuf {
        self.path(&format!("{id}.key"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `nhi-mcp --data-dir D [--config C] ARGS...`
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("--data-dir").arg(&self.data);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(args)
            .env_remove("NHI_MCP_CONFIG")
            .env_remove("NHI_MCP_DATA_DIR");
        // AWS providers in tests talk to moto only: its dummy credentials, and never a
        // developer's own profile or an instance role.
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent/nhi-mcp-test")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/nhi-mcp-test")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run nhi-mcp")
    }

    /// `approve PROPOSAL --approver APPROVER --key KEY-OF-APPROVER`, as it went.
    pub fn approve_as(&self, proposal: &str, approver: &str) -> Output {
        let key = self.key(approver);
        self.approve_with_key(proposal, approver, &key)
    }

    /// `approve PROPOSAL --approver APPROVER --key KEY`, as it went.
    pub fn approve_with_key(&self, proposal: &str, approver: &str, key: &Path) -> Output {
        let key = key.to_str().expect("utf8 path");
        self.cli(&["approve", proposal, "--approver", approver, "--key", key])
    }

    /// `reject PROPOSAL --approver APPROVER --key KEY-OF-APPROVER --reason REASON`.
    pub fn reject_as(&self, proposal: &str, approver: &str, reason: &str) -> Output {
        let key = self.key(approver);
        let key = key.to_str().expect("utf8 path");
        self.cli(&[
            "reject",
            proposal,
            "--approver",
            approver,
            "--key",
            key,
            "--reason",
            reason,
        ])
    }

    /// Approves `proposal` as `approver`; returns the token printed on stdout.
    pub fn approve(&self, proposal: &str, approver: &str) -> String {
        let out = self.approve_as(proposal, approver);
        assert!(
            out.status.success(),
            "approve failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned();
        assert_eq!(
            token.split('.').count(),
            3,
            "stdout is not a JWT alone: {token:?}"
        );
        token
    }

    /// The audit log as exported for a SIEM (its records; not the signed checkpoint line).
    pub fn audit(&self) -> Vec<Value> {
        let out = self.cli(&["audit", "export"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
            .filter(|v| v.get("seq").is_some())
            .collect()
    }

    pub fn stderr_log(&self) -> PathBuf {
        self.path("server.stderr")
    }

    /// Spawns `serve` over stdio and connects the rmcp client to it. Server logs go to
    /// `stderr_log()` (appended).
    pub async fn stdio(&self) -> Client {
        self.stdio_with_env(&[]).await
    }

    /// `stdio()` with extra environment variables for the server.
    pub async fn stdio_with_env(&self, vars: &[(&str, &str)]) -> Client {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_log())
            .expect("log file");
        let mut std_cmd = self.command(&["serve"]);
        for (k, v) in vars {
            std_cmd.env(k, v);
        }
        let cmd = tokio::process::Command::from(std_cmd);
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nhi-mcp serve");
        let service = ClientConfig::default()
            .serve(transport)
            .await
            .expect("MCP handshake over stdio");
        Client { service }
    }

    /// Spawns `serve --http 127.0.0.1:0` and returns it with its base URL (read from its log).
    pub fn http_server(&self) -> HttpServer {
        let log = self.path("http.stderr");
        let mut child = self
            .command(&["serve", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn serve --http");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(pos) = text.find("listening on http://") {
                let rest = &text[pos + "listening on ".len()..];
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                return HttpServer { child, url, log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serve --http exited with {status}: {text}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve --http did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct HttpServer {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT/mcp`
    pub url: String,
    pub log: PathBuf,
}

impl HttpServer {
    pub async fn client(&self) -> Client {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.url.clone()),
        );
        let service = ClientConfig::default()
            .serve(transport)
            .await
            .expect("MCP handshake over HTTP");
        Client { service }
    }

    pub fn base(&self) -> String {
        self.url.trim_end_matches("/mcp").to_owned()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a tool call answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `structuredContent` of a successful result.
    Ok(Value),
    /// The text of a result with `isError: true`.
    ToolError(String),
    /// A JSON-RPC error: code and message.
    Rpc(i32, String),
}

impl Answer {
    pub fn ok(self) -> Value {
        match self {
            Self::Ok(v) => v,
            other => panic!("expected a successful result, got {other:?}"),
        }
    }

    pub fn tool_error(self) -> String {
        match self {
            Self::ToolError(m) => m,
            other => panic!("expected a tool error, got {other:?}"),
        }
    }

    /// Everything the client received, as text (for secret scans).
    pub fn text(&self) -> String {
        match self {
            Self::Ok(v) => v.to_string(),
            Self::ToolError(m) | Self::Rpc(_, m) => m.clone(),
        }
    }
}

pub struct Client {
    pub service: RunningService<RoleClient, ClientConfig>,
}

impl Client {
    pub async fn call(&self, tool: &str, args: Value) -> Answer {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        match self.service.call_tool(params).await {
            Ok(result) if result.is_error == Some(true) => Answer::ToolError(
                result
                    .content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Ok(result) => Answer::Ok(result.structured_content.expect("structuredContent")),
            Err(rmcp::ServiceError::McpError(e)) => Answer::Rpc(e.code.0, e.message.to_string()),
            Err(e) => panic!("transport failure calling {tool}: {e}"),
        }
    }

    pub async fn tools(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .service
            .list_all_tools()
            .await
            .expect("tools/list")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        names
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// The first identity with a single active credential older than the rotation maximum:
/// `(identity id, credential id)`.
pub async fn rotation_target(client: &Client) -> (String, String) {
    let page = client
        .call(
            "list_findings",
            json!({"finding": "credential_too_old", "limit": 500}),
        )
        .await
        .ok();
    for f in page["findings"].as_array().expect("findings") {
        let id = f["identity_id"].as_str().expect("id").to_owned();
        let detail = client
            .call("get_identity", json!({"identity_id": id}))
            .await
            .ok();
        let active: Vec<&Value> = detail["identity"]["credentials"]
            .as_array()
            .expect("credentials")
            .iter()
            .filter(|c| c["status"] == "active")
            .collect();
        if active.len() == 1
            && detail["open_proposals"]
                .as_array()
                .is_some_and(Vec::is_empty)
        {
            return (id, active[0]["id"].as_str().expect("cred").to_owned());
        }
    }
    panic!("no rotation target in the demo inventory");
}

/// Proposes a rotation with grace 0 and returns the proposal id.
pub async fn propose(client: &Client, identity: &str, credential: &str) -> String {
    let out = client
        .call(
            "propose_rotation",
            json!({"identity_id": identity, "credential_id": credential, "grace_period": "0s", "reason": "integration test"}),
        )
        .await
        .ok();
    assert_eq!(out["proposal"]["status"], "pending_approval", "{out}");
    out["proposal"]["id"].as_str().expect("id").to_owned()
}

/// The secret a rotation delivered to the file sink.
pub fn sink_secret(data: &Path, proposal: &str) -> String {
    let path = data.join("secrets").join(format!("{proposal}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("sink json");
    v["secret"].as_str().expect("secret").to_owned()
}

/// Audit records for `action`.
pub fn audit_for<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["action"] == action).collect()
}

/// A real OAuth authorization server (npm `oidc-provider`, started from
/// `tests/peers/oidc/server.mjs`) issuing client-credentials JWTs with resource indicators.
pub struct Idp {
    child: std::process::Child,
    pub issuer: String,
}

/// The resource URI the OAuth tests configure and request tokens for.
pub const RESOURCE: &str = "https://nhi.example.com/mcp";

impl Idp {
    pub fn start() -> Self {
        use std::io::BufRead;
        nhi_mcp::auth::install_crypto_provider();
        let node = peer_path("NHI_TEST_NODE");
        let server = peer_path("NHI_TEST_OIDC_SERVER");
        let mut child = std::process::Command::new(node)
            .arg(server)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start oidc-provider");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("oidc-provider said {line:?}: {e}"));
        let issuer = ready["issuer"].as_str().expect("issuer").to_owned();
        Self { child, issuer }
    }

    /// A client-credentials access token for `client` with `scope`, for `resource`.
    pub async fn token(&self, client: &str, scope: &str, resource: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ])
            .send()
            .await
            .expect("token request");
        let body: Value = response.json().await.expect("token json");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {body}"))
            .to_owned()
    }

    /// The config that points nhi-mcp at this issuer.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[http]\nresource = \"{RESOURCE}\"\n\n[auth]\nissuer = \"{}\"\n\n{extra}",
            self.issuer
        )
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test peer's setting from the environment `./tests/run` sets; fails with how to get it.
pub fn peer_path_var(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite with `./tests/run`, which starts the test peers")
    })
}

/// A test peer's path from the environment `./tests/run` sets; fails with how to get it.
pub fn peer_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if PathBuf::from(&p).exists() => PathBuf::from(p),
        _ => panic!(
            "{var} is not set or missing: run the suite with `./tests/run`, which installs the test peers"
        ),
    }
}

impl HttpServer {
    /// An rmcp client that sends `token` as its bearer token.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.url.clone())
                .auth_header(token.to_owned()),
        );
        let service = ClientConfig::default()
            .serve(transport)
            .await
            .expect("MCP handshake over HTTP with a bearer token");
        Client { service }
    }
}

/// A JSON-RPC `initialize` request.
pub fn init() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

/// A JSON-RPC `tools/call` request.
pub fn call(tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}})
}

/// POSTs `body` to an MCP endpoint, with a bearer token if given.
pub async fn post(url: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Accept", "application/json, text/event-stream")
        .header("Content-Type", "application/json")
        .json(body);
    if let Some(t) = token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    request.send().await.expect("post")
}

/// Polls `get_proposal` until the proposal reaches `status` (30 s at most); returns it.
pub async fn wait_for_status(client: &Client, id: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = client
            .call("get_proposal", json!({"proposal_id": id}))
            .await
            .ok();
        if p["proposal"]["status"] == status {
            return p["proposal"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached {status}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits (30 s at most, through the CLI) until step `step` of proposal `id` has its intent
/// recorded and no outcome: its external call is done or under way.
pub async fn wait_for_step_in_flight(env: &Env, id: &str, step: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown = env.cli(&["proposals", "show", id]);
        let p: Value = serde_json::from_slice(&shown.stdout).unwrap_or(Value::Null);
        let rows = p["execution"].as_array().cloned().unwrap_or_default();
        let phase = |phase: &str| {
            rows.iter()
                .any(|r| r["index"] == step && r["phase"] == phase)
        };
        if phase("intent") && !phase("outcome") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "step {step} never started: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the Python SDK's workflow script (tests/python/workflow.py) against `env`, approving as
/// alice with her key; `extra` picks the transport and mode. Answers what the script did.
pub fn python_workflow_output(env: &Env, extra: &[&str]) -> Output {
    std::process::Command::new(peer_path("NHI_TEST_PYTHON"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/workflow.py"))
        .args(["--binary", BIN, "--data-dir"])
        .arg(&env.data)
        .arg("--config")
        .arg(env.config.as_ref().expect("config"))
        .arg("--approver-key")
        .arg(env.key("alice@example.com"))
        .args(extra)
        .output()
        .expect("run the Python SDK workflow")
}
