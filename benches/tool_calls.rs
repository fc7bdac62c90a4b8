//! Benchmark: tool calls per second and latency percentiles of nhi-mcp's `list_identities` and
//! `get_identity`, against a bare rmcp server with one no-op tool measured in the same run, both
//! in-process (rmcp client ↔ server over `tokio::io::duplex`) and over Streamable HTTP on
//! loopback (with rmcp's default client, one TCP connection per request, and with a keep-alive
//! client). A second table times the engine without MCP, to show where nhi-mcp's time goes.
//!
//! Run with `cargo bench --bench tool_calls` (optionally `-- --calls N --warmup N --window-ms N`,
//! or the `NHI_BENCH_CALLS` / `NHI_BENCH_WARMUP` / `NHI_BENCH_WINDOW_MS` environment variables;
//! `-- --concurrency-only` for just the concurrency table). In the first tables calls are
//! sequential from one client per server, so calls/s is 1 / mean latency. The concurrency table
//! runs 1, 8, 32 and 64 clients at once, each on its own session and keep-alive connection,
//! against the bare server and against nhi-mcp with bearer authentication, policy and durable
//! audit, for a fixed window each: peak throughput and p50/p99 under load.
//! Measured calls are split into rounds that rotate through the servers, so drift (the audit
//! table growing, the machine warming up) hits every row alike.
//!
//! Over HTTP, nhi-mcp runs twice in the same rounds: without bearer authentication
//! (`http::router`) and with it (`http::build` with an `Authenticator` over a locally generated
//! Ed25519 key, tokens signed EdDSA), which gives the cost of authentication per tool call as a
//! ratio to the same server with auth off. The default Cedar policy is evaluated on both sides
//! (it cannot be turned off); the last table times it, and token validation, on their own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that cannot set up has nothing to measure"
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use axum::serve::ListenerExt;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nhi_mcp::audit::{AuditEntry, Decision};
use nhi_mcp::auth::Authenticator;
use nhi_mcp::authz::{PolicyAction, Principal};
use nhi_mcp::config::{Config, Overrides};
use nhi_mcp::engine::{Caller, Engine, IdentityQuery};
use nhi_mcp::mcp::NhiServer;
use nhi_mcp::model::{Identity, IdentityId};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, ServerCapabilities, ServerConfig,
};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleClient, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

const DEFAULT_CALLS: usize = 2_000;
const DEFAULT_WARMUP: usize = 200;
/// Milliseconds each load of the concurrency table runs at each connection count.
const DEFAULT_WINDOW_MS: usize = 3_000;
/// Measured calls per cell are split into this many rounds, rotating through the cells.
const ROUNDS: usize = 10;
/// In-process pipe size; 64 KiB is what a Linux pipe (stdio) holds.
const DUPLEX_BYTES: usize = 64 * 1024;
const GET_IDENTITY_ID: &str = "demo-aws:user/ci-deploy";
/// The config of the server with bearer authentication on.
const BEARER_CONFIG: &str =
    "[http]\nresource = \"https://nhi.example.com/mcp\"\n[auth]\nissuer = \"https://idp.bench\"\n";
/// Nothing listens there; the token's `kid` is in the key set, so it is never fetched.
const UNREACHABLE_JWKS: &str = "http://127.0.0.1:9/jwks";
const KEY_ID: &str = "bench-key";

// ---- the baseline ----------------------------------------------------------------------------

/// A bare rmcp server with one tool that does nothing.
#[derive(Debug, Clone)]
struct BareServer {
    tool_router: ToolRouter<Self>,
}

impl BareServer {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl BareServer {
    #[tool(description = "Does nothing")]
    fn noop(&self) -> String {
        "ok".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BareServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

// ---- options ---------------------------------------------------------------------------------

struct Options {
    calls: usize,
    warmup: usize,
    /// How long each load of the concurrency table runs at each connection count.
    window: Duration,
    /// `--concurrency-only`: just the concurrency table.
    concurrency_only: bool,
}

impl Options {
    /// `--calls N` / `--warmup N` beat `NHI_BENCH_CALLS` / `NHI_BENCH_WARMUP`. Other arguments
    /// (cargo passes `--bench`) are ignored.
    fn parse() -> anyhow::Result<Self> {
        let mut calls = env_count("NHI_BENCH_CALLS")?.unwrap_or(DEFAULT_CALLS);
        let mut warmup = env_count("NHI_BENCH_WARMUP")?.unwrap_or(DEFAULT_WARMUP);
        let mut window_ms = env_count("NHI_BENCH_WINDOW_MS")?.unwrap_or(DEFAULT_WINDOW_MS);
        let mut concurrency_only = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let target = match arg.as_str() {
                "--calls" => &mut calls,
                "--warmup" => &mut warmup,
                "--window-ms" => &mut window_ms,
                "--concurrency-only" => {
                    concurrency_only = true;
                    continue;
                }
                _ => continue,
            };
            let value = args
                .next()
                .with_context(|| format!("`{arg}` needs a number"))?;
            *target = parse_count(&arg, &value)?;
        }
        ensure!(calls > 0, "`--calls` must be at least 1");
        ensure!(window_ms > 0, "`--window-ms` must be at least 1");
        Ok(Self {
            calls,
            warmup,
            window: Duration::from_millis(window_ms as u64),
            concurrency_only,
        })
    }
}

fn env_count(name: &str) -> anyhow::Result<Option<usize>> {
    std::env::var(name)
        .ok()
        .map(|v| parse_count(name, &v))
        .transpose()
}

fn parse_count(name: &str, value: &str) -> anyhow::Result<usize> {
    value
        .parse()
        .with_context(|| format!("`{name}` must be a whole number, got `{value}`"))
}

// ---- what is measured ------------------------------------------------------------------------

type Client = RunningService<RoleClient, ClientConfig>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Starts a server of the given kind and returns a connected client.
type Connect = Box<dyn Fn(Server) -> BoxFuture<anyhow::Result<Client>>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Bare,
    /// nhi-mcp; over HTTP without bearer authentication.
    Nhi,
    /// nhi-mcp over HTTP with bearer authentication; the client sends a token.
    NhiBearer,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare rmcp",
            Self::Nhi => "nhi-mcp",
            Self::NhiBearer => "nhi-mcp + bearer auth",
        }
    }
}

/// One row of the table: a tool on a server in one mode.
struct Row {
    tool: String,
    server: Server,
    /// Latency of every measured call; sorted once measuring is done.
    samples: Vec<Duration>,
    /// Wall time of the measured calls.
    elapsed: Duration,
    /// Size of one serialized `CallToolResult`.
    response_bytes: usize,
}

impl Row {
    fn new(tool: impl Into<String>, server: Server) -> Self {
        Self {
            tool: tool.into(),
            server,
            samples: Vec::new(),
            elapsed: Duration::ZERO,
            response_bytes: 0,
        }
    }

    fn calls_per_sec(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile; `samples` must be sorted.
    fn percentile(&self, p: f64) -> Duration {
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }
}

/// One call; fails on a transport error or a tool error, so nothing fast-but-wrong counts.
async fn call(
    client: &Client,
    tool: &str,
    arguments: &Map<String, Value>,
) -> anyhow::Result<CallToolResult> {
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments.clone());
    let result = client
        .call_tool(params)
        .await
        .with_context(|| format!("calling `{tool}`"))?;
    ensure!(
        result.is_error != Some(true),
        "`{tool}` answered an error: {:?}",
        result.content
    );
    Ok(result)
}

/// Tool arguments as the object MCP sends.
fn object(tool: &str, arguments: Value) -> anyhow::Result<Map<String, Value>> {
    match arguments {
        Value::Object(arguments) => Ok(arguments),
        _ => bail!("arguments of `{tool}` must be an object"),
    }
}

/// A row being measured: its client and the arguments it sends.
struct Cell {
    client: Client,
    arguments: Map<String, Value>,
    row: Row,
}

impl Cell {
    async fn new(
        connect: &Connect,
        server: Server,
        tool: &'static str,
        arguments: Value,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: connect(server).await?,
            arguments: object(tool, arguments)?,
            row: Row::new(tool, server),
        })
    }

    /// One call and the size of its result.
    async fn call(&self) -> anyhow::Result<usize> {
        let result = call(&self.client, &self.row.tool, &self.arguments).await?;
        Ok(serde_json::to_vec(&result)?.len())
    }

    async fn warm_up(&mut self, calls: usize) -> anyhow::Result<()> {
        for _ in 0..calls.max(1) {
            self.row.response_bytes = self.call().await?;
        }
        Ok(())
    }

    async fn measure(&mut self, calls: usize) -> anyhow::Result<()> {
        let round = Instant::now();
        for _ in 0..calls {
            let start = Instant::now();
            self.call().await?;
            self.row.samples.push(start.elapsed());
        }
        self.row.elapsed += round.elapsed();
        Ok(())
    }
}

/// Measures the baseline and both nhi-mcp tools on each of `servers` in one mode.
async fn run_mode(
    connect: Connect,
    servers: &[Server],
    options: &Options,
) -> anyhow::Result<Vec<Row>> {
    let mut cells = vec![Cell::new(&connect, Server::Bare, "noop", json!({})).await?];
    let tools = [
        ("list_identities", json!({ "limit": 50 })),
        ("get_identity", json!({ "identity_id": GET_IDENTITY_ID })),
    ];
    for (tool, arguments) in tools {
        for &server in servers {
            cells.push(Cell::new(&connect, server, tool, arguments.clone()).await?);
        }
    }
    for cell in &mut cells {
        cell.warm_up(options.warmup).await?;
    }
    let rounds = ROUNDS.min(options.calls);
    for round in 0..rounds {
        // Spread the remainder over the first rounds so the total is exactly `calls`.
        let calls = options.calls / rounds + usize::from(round < options.calls % rounds);
        for cell in &mut cells {
            cell.measure(calls).await?;
        }
    }
    let mut rows = Vec::with_capacity(cells.len());
    for mut cell in cells {
        // Close the session so its server task ends.
        let _ = cell.client.cancel().await;
        cell.row.samples.sort_unstable();
        rows.push(cell.row);
    }
    Ok(rows)
}

// ---- the modes -------------------------------------------------------------------------------

fn nhi_server(engine: &Arc<Engine>, config: &Config) -> NhiServer {
    NhiServer::new(engine.clone(), config.stdio_principal.clone())
}

/// Client and server in one process over `tokio::io::duplex`, no serialization shortcuts: each
/// message is still JSON-encoded, framed by newlines and parsed, as over stdio.
fn in_process(engine: Arc<Engine>, config: Arc<Config>) -> Connect {
    Box::new(move |server| {
        let (client_io, server_io) = tokio::io::duplex(DUPLEX_BYTES);
        let bearer = server == Server::NhiBearer;
        match server {
            Server::Bare => spawn_server(BareServer::new(), server_io),
            Server::Nhi => spawn_server(nhi_server(&engine, &config), server_io),
            // stdio has no bearer tokens.
            Server::NhiBearer => {}
        }
        Box::pin(async move {
            ensure!(!bearer, "bearer authentication is HTTP only");
            ClientConfig::default()
                .serve(client_io)
                .await
                .context("in-process client failed to initialize")
        })
    })
}

fn spawn_server<S: ServerHandler>(server: S, io: tokio::io::DuplexStream) {
    tokio::spawn(async move {
        if let Ok(running) = server.serve(io).await {
            let _ = running.waiting().await;
        }
    });
}

/// How the HTTP client holds its connections.
#[derive(Clone, Copy)]
enum Pooling {
    /// rmcp's default client: `pool_max_idle_per_host(0)`, so one TCP connection per request
    /// (rmcp does this on purpose, to dodge delayed-ACK stalls on half-read bodies).
    RmcpDefault,
    /// A plain `reqwest::Client` that keeps connections alive.
    KeepAlive,
}

/// Streamable HTTP (session mode) on 127.0.0.1 with TCP_NODELAY, one axum server per kind.
async fn over_http(
    engine: Arc<Engine>,
    config: &Config,
    bearer: &Bearer,
    cancel: &CancellationToken,
    pooling: Pooling,
) -> anyhow::Result<Connect> {
    let nhi = nhi_mcp::http::router(engine.clone(), &config.http, cancel.child_token());
    let nhi_bearer = nhi_mcp::http::build(
        engine,
        &bearer.config.http,
        Some(bearer.auth.clone()),
        cancel.child_token(),
    );
    let bare: StreamableHttpService<BareServer, LocalSessionManager> = StreamableHttpService::new(
        || Ok(BareServer::new()),
        Arc::default(),
        StreamableHttpServerConfig::default().with_cancellation_token(cancel.child_token()),
    );
    let bare = axum::Router::new().nest_service("/mcp", bare);
    let nhi_url = serve_http(nhi, cancel).await?;
    let nhi_bearer_url = serve_http(nhi_bearer, cancel).await?;
    let bare_url = serve_http(bare, cancel).await?;
    let token = bearer.token.clone();
    Ok(Box::new(move |server| {
        let url = match server {
            Server::Bare => bare_url.clone(),
            Server::Nhi => nhi_url.clone(),
            Server::NhiBearer => nhi_bearer_url.clone(),
        };
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
        if server == Server::NhiBearer {
            // Sent as `Authorization: Bearer <token>` on every request.
            config = config.auth_header(token.clone());
        }
        Box::pin(async move {
            let transport = match pooling {
                Pooling::RmcpDefault => StreamableHttpClientTransport::from_config(config),
                Pooling::KeepAlive => {
                    StreamableHttpClientTransport::with_client(reqwest::Client::new(), config)
                }
            };
            ClientConfig::default()
                .serve(transport)
                .await
                .with_context(|| format!("HTTP client failed to initialize against {url}"))
        })
    }))
}

/// Serves `app` on an ephemeral loopback port, exactly as `nhi_mcp::http::serve` does.
async fn serve_http(app: axum::Router, cancel: &CancellationToken) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled_owned().await })
            .await;
    });
    Ok(format!("http://{addr}/mcp"))
}

// ---- throughput under concurrency ------------------------------------------------------------

/// Connections of the concurrency table.
const CONNECTIONS: [usize; 4] = [1, 8, 32, 64];
/// Rounds per connection count; each round runs every load once, in turn.
const LOAD_ROUNDS: usize = 3;

/// `clients` calling one tool back to back, each on its own keep-alive session, for `window`.
async fn load(
    clients: &[Arc<Client>],
    tool: &'static str,
    arguments: &Map<String, Value>,
    window: Duration,
    row: &mut Row,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + window;
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let client = client.clone();
            let arguments = arguments.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    call(&client, tool, &arguments).await?;
                    samples.push(begun.elapsed());
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    for task in tasks {
        row.samples.extend(task.await??);
    }
    row.elapsed += start.elapsed();
    Ok(())
}

/// Opens `n` sessions against `server` and warms each up with a few calls of `tool`.
async fn sessions(
    connect: &Connect,
    server: Server,
    n: usize,
    tool: &'static str,
    arguments: &Map<String, Value>,
) -> anyhow::Result<Vec<Arc<Client>>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = connect(server).await?;
        for _ in 0..3 {
            call(&client, tool, arguments).await?;
        }
        clients.push(Arc::new(client));
    }
    Ok(clients)
}

async fn close(clients: Vec<Arc<Client>>) {
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            let _ = client.cancel().await;
        }
    }
}

/// One table row per (connections, load): the bare no-op server against nhi-mcp with bearer
/// authentication, policy and durable audit, over keep-alive HTTP, in the same rounds.
async fn concurrency(
    connect: &Connect,
    window: Duration,
) -> anyhow::Result<Vec<(usize, Vec<Row>)>> {
    let loads: [(Server, &'static str, Map<String, Value>); 3] = [
        (Server::Bare, "noop", Map::new()),
        (
            Server::NhiBearer,
            "get_identity",
            object("get_identity", json!({ "identity_id": GET_IDENTITY_ID }))?,
        ),
        (
            Server::NhiBearer,
            "list_identities",
            object("list_identities", json!({ "limit": 50 }))?,
        ),
    ];
    let mut table = Vec::new();
    for connections in CONNECTIONS {
        let bare = sessions(connect, Server::Bare, connections, "noop", &loads[0].2).await?;
        let nhi = sessions(
            connect,
            Server::NhiBearer,
            connections,
            "get_identity",
            &loads[1].2,
        )
        .await?;
        let mut rows: Vec<Row> = loads
            .iter()
            .map(|(server, tool, _)| Row::new(*tool, *server))
            .collect();
        for _ in 0..LOAD_ROUNDS {
            for ((server, tool, arguments), row) in loads.iter().zip(&mut rows) {
                let clients = if *server == Server::Bare { &bare } else { &nhi };
                load(clients, tool, arguments, window / LOAD_ROUNDS as u32, row).await?;
            }
        }
        close(bare).await;
        close(nhi).await;
        for row in &mut rows {
            row.samples.sort_unstable();
        }
        table.push((connections, rows));
    }
    Ok(table)
}

fn print_concurrency_section(table: &[(usize, Vec<Row>)], options: &Options) {
    println!(
        "\n## Throughput under concurrency (HTTP keep-alive)\n\n\
         N clients, each with its own Streamable HTTP session on its own keep-alive connection, \
         call back to back for {:.1} s per load at each N (in {LOAD_ROUNDS} rounds rotating \
         through the loads), clients and servers on the same runtime and cores. nhi-mcp has \
         bearer authentication (EdDSA JWT), the default Cedar policy and durable audit (every \
         call answered only once its record is on disk) on. Baseline: the bare rmcp server's \
         no-op tool at the same N. ratio = calls/s nhi-mcp ÷ calls/s bare; p99 ratio = p99 \
         nhi-mcp ÷ p99 bare.\n",
        options.window.as_secs_f64()
    );
    print_concurrency(table);
}

fn print_concurrency(table: &[(usize, Vec<Row>)]) {
    println!(
        "| connections | tool | calls/s bare | calls/s nhi-mcp | ratio | p50 bare | p50 nhi-mcp | p99 bare | p99 nhi-mcp | p99 ratio |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (connections, rows) in table {
        let Some(bare) = rows.iter().find(|r| r.server == Server::Bare) else {
            continue;
        };
        for row in rows.iter().filter(|r| r.server != Server::Bare) {
            println!(
                "| {connections} | `{}` | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {:.1} |",
                row.tool,
                bare.calls_per_sec(),
                row.calls_per_sec(),
                row.calls_per_sec() / bare.calls_per_sec(),
                micros(bare.percentile(50.0)),
                micros(row.percentile(50.0)),
                micros(bare.percentile(99.0)),
                micros(row.percentile(99.0)),
                row.percentile(99.0).as_secs_f64() / bare.percentile(99.0).as_secs_f64(),
            );
        }
    }
}

// ---- bearer authentication --------------------------------------------------------------------

/// The server config with `[auth]`, an authenticator over a locally generated key, and a token
/// it accepts.
struct Bearer {
    config: Config,
    auth: Arc<Authenticator>,
    token: String,
    /// Signs the same claims with a distinct `jti`: a token the authenticator has not seen.
    mint: Box<dyn Fn(usize) -> String>,
}

/// An Ed25519 key made here stands in for the IdP's: its public half is the key set given to
/// `Authenticator::with_keys`, so no call contacts an IdP (in production the JWKS is cached
/// likewise). The token asks for `nhi:read`, all `list_identities` and `get_identity` need.
fn bearer(overrides: &Overrides) -> anyhow::Result<Bearer> {
    let config = Config::from_toml(BEARER_CONFIG, None, overrides)?;
    let auth_config = config.http.auth.clone().context("`[auth]` is missing")?;
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let set: JwkSet = serde_json::from_value(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": KEY_ID, "alg": "EdDSA", "use": "sig"}
    ]}))?;
    let der = signing
        .to_pkcs8_der()
        .map_err(|e| anyhow!("encoding the signing key: {e}"))?;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": auth_config.issuer, "aud": auth_config.audience, "sub": "bench-agent",
        "client_id": "bench", "scope": "nhi:read", "iat": now, "nbf": now, "exp": now + 86_400,
    });
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(KEY_ID.to_owned());
    let key = EncodingKey::from_ed_der(der.as_bytes());
    let token = jsonwebtoken::encode(&header, &claims, &key)?;
    let auth = Authenticator::with_keys(auth_config, set, UNREACHABLE_JWKS)?;
    let mint = Box::new(move |n: usize| {
        let mut claims = claims.clone();
        claims["jti"] = json!(format!("bench-{n}"));
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    });
    Ok(Bearer {
        config,
        auth: Arc::new(auth),
        token,
        mint,
    })
}

// ---- where nhi-mcp's time goes ---------------------------------------------------------------

/// Times `calls` sequential runs of `f` after `warmup` unmeasured ones.
async fn time_calls<F, Fut>(
    label: impl Into<String>,
    options: &Options,
    mut f: F,
) -> anyhow::Result<Row>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for _ in 0..options.warmup {
        f().await?;
    }
    let mut samples = Vec::with_capacity(options.calls);
    let all = Instant::now();
    for _ in 0..options.calls {
        let start = Instant::now();
        f().await?;
        samples.push(start.elapsed());
    }
    let elapsed = all.elapsed();
    samples.sort_unstable();
    Ok(Row {
        samples,
        elapsed,
        ..Row::new(label, Server::Nhi)
    })
}

/// Every identity the engine holds, fetched through its public API.
async fn all_identities(engine: &Engine, principal: &Principal) -> anyhow::Result<Vec<Identity>> {
    let mut identities = Vec::new();
    let mut cursor = None;
    loop {
        let caller = Caller::new(principal, "list_identities", json!({}));
        let query = IdentityQuery {
            limit: Some(50),
            cursor,
            ..IdentityQuery::default()
        };
        let page = engine.list_identities(&caller, query).await?;
        for summary in page.items {
            let caller = Caller::new(principal, "get_identity", json!({}));
            identities.push(engine.get_identity(&caller, &summary.id).await?.identity);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(identities),
        }
    }
}

/// The engine called directly (no MCP, no JSON-RPC), the audit append on its own, an empty
/// write transaction, bearer token validation, and Cedar policy decisions.
async fn breakdown(
    engine: &Engine,
    config: &Config,
    bearer: &Bearer,
    options: &Options,
) -> anyhow::Result<Vec<Row>> {
    let principal = &config.stdio_principal;
    let list_args = json!({ "limit": 50 });
    let get_args = json!({ "identity_id": GET_IDENTITY_ID });
    let id = IdentityId::parse(GET_IDENTITY_ID).map_err(|e| anyhow::anyhow!(e.0))?;
    let list = time_calls("engine `list_identities`", options, || async {
        let caller = Caller::new(principal, "list_identities", list_args.clone());
        let query = IdentityQuery {
            limit: Some(50),
            ..IdentityQuery::default()
        };
        engine.list_identities(&caller, query).await?;
        Ok(())
    })
    .await?;
    let get = time_calls("engine `get_identity`", options, || async {
        let caller = Caller::new(principal, "get_identity", get_args.clone());
        engine.get_identity(&caller, &id).await?;
        Ok(())
    })
    .await?;
    let audit = time_calls("audit append alone", options, || async {
        let entry = AuditEntry::new(&principal.id, "get_identity", &get_args, Decision::Allow)
            .outcome(format!("identity `{GET_IDENTITY_ID}`"));
        let mut tx = engine.store().begin().await?;
        tx.append_audit(entry).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    let empty = time_calls("empty transaction alone", options, || async {
        engine.store().begin().await?.commit().await?;
        Ok(())
    })
    .await?;
    let authenticate = time_calls(
        "bearer `authenticate`, the same token again (verified once, then kept)",
        options,
        || async {
            bearer.auth.authenticate(&bearer.token).await?;
            Ok(())
        },
    )
    .await?;
    let fresh: Vec<String> = (0..options.warmup + options.calls)
        .map(|n| (bearer.mint)(n))
        .collect();
    let next = std::cell::Cell::new(0);
    let verify = time_calls(
        "bearer `authenticate`, a new token each call (EdDSA signature and claims checked)",
        options,
        || {
            let token = &fresh[next.replace(next.get() + 1)];
            async move {
                bearer.auth.authenticate(token).await?;
                Ok(())
            }
        },
    )
    .await?;
    // Policy as the authenticated caller sees it.
    let agent = bearer.auth.authenticate(&bearer.token).await?;
    let identities = all_identities(engine, principal).await?;
    let target = identities
        .iter()
        .find(|i| i.id.as_str() == GET_IDENTITY_ID)
        .with_context(|| format!("`{GET_IDENTITY_ID}` is not in the inventory"))?;
    let decide = |identity: &Identity| -> anyhow::Result<()> {
        let decision = engine.policy().decide(&agent, PolicyAction::Read, identity);
        ensure!(decision.allowed, "policy denied reading `{}`", identity.id);
        Ok(())
    };
    let one = time_calls(
        "Cedar `decide` (read, one identity: `get_identity`)",
        options,
        || async { decide(target) },
    )
    .await?;
    let every = time_calls(
        format!(
            "Cedar `decide` × {} (read, every identity: `list_identities`)",
            identities.len()
        ),
        options,
        || async { identities.iter().try_for_each(decide) },
    )
    .await?;
    Ok(vec![
        list,
        get,
        audit,
        empty,
        authenticate,
        verify,
        one,
        every,
    ])
}

// ---- report ----------------------------------------------------------------------------------

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn print_table(modes: &[(&str, Vec<Row>)]) {
    println!(
        "| mode | server | tool | calls/s | p50 | p90 | p99 | response bytes | ratio vs baseline |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for (mode, rows) in modes {
        let baseline = rows
            .iter()
            .find(|r| r.server == Server::Bare)
            .map_or(f64::NAN, Row::calls_per_sec);
        for row in rows {
            println!(
                "| {mode} | {} | `{}` | {:.0} | {} | {} | {} | {} | {:.2} |",
                row.server.label(),
                row.tool,
                row.calls_per_sec(),
                micros(row.percentile(50.0)),
                micros(row.percentile(90.0)),
                micros(row.percentile(99.0)),
                row.response_bytes,
                row.calls_per_sec() / baseline,
            );
        }
    }
}

/// Auth on against auth off, tool by tool, for the HTTP modes.
fn print_auth_table(modes: &[(&str, &[Row])]) {
    println!(
        "| client | tool | calls/s auth off | calls/s auth on | on ÷ off | p50 off | p50 on | p99 off | p99 on |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (mode, rows) in modes {
        let find =
            |server: Server, tool: &str| rows.iter().find(|r| r.server == server && r.tool == tool);
        for tool in ["list_identities", "get_identity"] {
            let (Some(off), Some(on)) = (find(Server::Nhi, tool), find(Server::NhiBearer, tool))
            else {
                continue;
            };
            println!(
                "| {mode} | `{tool}` | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
                off.calls_per_sec(),
                on.calls_per_sec(),
                on.calls_per_sec() / off.calls_per_sec(),
                micros(off.percentile(50.0)),
                micros(on.percentile(50.0)),
                micros(off.percentile(99.0)),
                micros(on.percentile(99.0)),
            );
        }
    }
}

// ---- main ------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    nhi_mcp::auth::install_crypto_provider();
    let options = Options::parse()?;
    let data_dir = tempfile::tempdir()?;
    let overrides = Overrides {
        config_file: None,
        data_dir: Some(data_dir.path().to_path_buf()),
    };
    let config = Arc::new(Config::load(&overrides)?);
    let bearer = bearer(&overrides)?;
    let engine = Arc::new(nhi_mcp::cli::compose::open_engine(&config).await?);
    let cancel = CancellationToken::new();

    let started = Instant::now();
    let concurrent = over_http(
        engine.clone(),
        &config,
        &bearer,
        &cancel,
        Pooling::KeepAlive,
    )
    .await?;
    let concurrency_rows = concurrency(&concurrent, options.window).await?;
    if options.concurrency_only {
        cancel.cancel();
        print_concurrency_section(&concurrency_rows, &options);
        println!("\nTotal time: {:.1} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let in_process = in_process(engine.clone(), config.clone());
    let in_process_rows = run_mode(in_process, &[Server::Nhi], &options).await?;
    let both = [Server::Nhi, Server::NhiBearer];
    let http = over_http(
        engine.clone(),
        &config,
        &bearer,
        &cancel,
        Pooling::RmcpDefault,
    )
    .await?;
    let http_rows = run_mode(http, &both, &options).await?;
    let keep_alive = over_http(
        engine.clone(),
        &config,
        &bearer,
        &cancel,
        Pooling::KeepAlive,
    )
    .await?;
    let keep_alive_rows = run_mode(keep_alive, &both, &options).await?;
    cancel.cancel();
    let breakdown_rows = breakdown(&engine, &config, &bearer, &options).await?;

    println!(
        "# nhi-mcp tool-call benchmark\n\n\
         {} measured calls per row after {} warm-up calls; calls are **sequential** from one \
         client per server (calls/s = 1 / mean latency), on a {}-thread tokio runtime shared by \
         client and server. Measured calls are split into {ROUNDS} rounds rotating through the \
         rows of a mode. Baseline: a bare rmcp server with one no-op tool. Every nhi-mcp call \
         also writes one audit record to SQLite (WAL) in a temp dir; that is part of its cost. \
         HTTP is Streamable HTTP in session mode on 127.0.0.1 with TCP_NODELAY; \
         \"HTTP\" uses rmcp's default client, which opens a new TCP connection per request \
         (`pool_max_idle_per_host(0)`), \"HTTP keep-alive\" a plain `reqwest::Client`. \
         `get_identity` fetches `{GET_IDENTITY_ID}`; `list_identities` asks for `limit: 50`. \
         Response bytes: one serialized `CallToolResult`. \
         \"nhi-mcp + bearer auth\": the same engine behind `http::build` with an \
         `Authenticator`; see the next table.\n",
        options.calls,
        options.warmup,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    let modes = [
        ("in-process", in_process_rows),
        ("HTTP", http_rows),
        ("HTTP keep-alive", keep_alive_rows),
    ];
    print_table(&modes);
    println!(
        "\n## Authentication per tool call (HTTP)\n\n\
         The same nhi-mcp server with bearer authentication off (`http::router`: every caller \
         is the configured principal) and on (`http::build` with an `Authenticator`), measured \
         in the same rounds as the table above. With auth on, every `/mcp` request carries \
         `Authorization: Bearer <JWT>`; the layer buffers the body to find the tool and the \
         scope it needs, verifies the token (EdDSA / Ed25519 signature, `iss`, `aud`, `exp`, \
         `nbf`) the first time and recognises it by its SHA-256 after that, and the tool runs \
         as the token's principal. The key set is generated locally \
         and handed to `Authenticator::with_keys`: no call contacts an IdP, as in production, \
         where the JWKS is fetched once and cached. The default Cedar policy decides on both \
         sides (it cannot be turned off): once for `get_identity`, once per identity for \
         `list_identities`; the next table times it alone. on ÷ off = calls/s with auth ÷ \
         calls/s without.\n"
    );
    print_auth_table(&[("HTTP", &modes[1].1), ("HTTP keep-alive", &modes[2].1)]);
    print_concurrency_section(&concurrency_rows, &options);
    println!(
        "\n## Where nhi-mcp's time goes\n\n\
         The same calls without MCP: the engine called directly (scopes, Cedar policy, \
         inventory, findings, audit), the audit append alone (`BEGIN IMMEDIATE`, read the chain \
         head, hash, insert, commit), an empty `BEGIN IMMEDIATE` + `COMMIT`, bearer token \
         validation alone (`Authenticator::authenticate`: the same token again, which it keeps \
         once verified, and a new token each call: header, key lookup, signature, claims) \
         and Cedar decisions alone (`Policy::decide`, default policy, the token's principal). \
         In-process MCP overhead ≈ the in-process rows above minus the engine rows.\n"
    );
    println!("| what | calls/s | p50 | p90 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    for row in &breakdown_rows {
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            row.tool,
            row.calls_per_sec(),
            micros(row.percentile(50.0)),
            micros(row.percentile(90.0)),
            micros(row.percentile(99.0)),
        );
    }
    println!("\nTotal time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
