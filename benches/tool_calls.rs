//! Benchmark: tool calls per second and latency percentiles of nhi-mcp's `list_identities` and
//! `get_identity`, against a bare rmcp server with one no-op tool measured in the same run, both
//! in-process (rmcp client ↔ server over `tokio::io::duplex`) and over Streamable HTTP on
//! loopback (with rmcp's default client, one TCP connection per request, and with a keep-alive
//! client). A second table times the engine without MCP, to show where nhi-mcp's time goes.
//!
//! Run with `cargo bench --bench tool_calls` (optionally `-- --calls N --warmup N`, or the
//! `NHI_BENCH_CALLS` / `NHI_BENCH_WARMUP` environment variables). Calls are sequential from one
//! client per server, so calls/s is 1 / mean latency, not peak throughput under concurrency.
//! Measured calls are split into rounds that rotate through the servers, so drift (the audit
//! table growing, the machine warming up) hits every row alike.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::serve::ListenerExt;
use nhi_mcp::audit::{AuditEntry, Decision};
use nhi_mcp::config::{Config, Overrides};
use nhi_mcp::engine::{Caller, Engine, IdentityQuery};
use nhi_mcp::mcp::NhiServer;
use nhi_mcp::model::IdentityId;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolRequestParams, ClientConfig, ServerCapabilities, ServerConfig};
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
/// Measured calls per cell are split into this many rounds, rotating through the cells.
const ROUNDS: usize = 10;
/// In-process pipe size; 64 KiB is what a Linux pipe (stdio) holds.
const DUPLEX_BYTES: usize = 64 * 1024;
const GET_IDENTITY_ID: &str = "demo-aws:user/ci-deploy";

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
}

impl Options {
    /// `--calls N` / `--warmup N` beat `NHI_BENCH_CALLS` / `NHI_BENCH_WARMUP`. Other arguments
    /// (cargo passes `--bench`) are ignored.
    fn parse() -> anyhow::Result<Self> {
        let mut calls = env_count("NHI_BENCH_CALLS")?.unwrap_or(DEFAULT_CALLS);
        let mut warmup = env_count("NHI_BENCH_WARMUP")?.unwrap_or(DEFAULT_WARMUP);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let target = match arg.as_str() {
                "--calls" => &mut calls,
                "--warmup" => &mut warmup,
                _ => continue,
            };
            let value = args
                .next()
                .with_context(|| format!("`{arg}` needs a number"))?;
            *target = parse_count(&arg, &value)?;
        }
        ensure!(calls > 0, "`--calls` must be at least 1");
        Ok(Self { calls, warmup })
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

#[derive(Clone, Copy)]
enum Server {
    Bare,
    Nhi,
}

/// One row of the table: a tool on a server in one mode.
struct Row {
    tool: &'static str,
    is_baseline: bool,
    /// Latency of every measured call; sorted once measuring is done.
    samples: Vec<Duration>,
    /// Wall time of the measured calls.
    elapsed: Duration,
    /// Size of one serialized `CallToolResult`.
    response_bytes: usize,
}

impl Row {
    fn calls_per_sec(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile; `samples` must be sorted.
    fn percentile(&self, p: f64) -> Duration {
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
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
        let Value::Object(arguments) = arguments else {
            bail!("arguments of `{tool}` must be an object");
        };
        Ok(Self {
            client: connect(server).await?,
            arguments,
            row: Row {
                tool,
                is_baseline: matches!(server, Server::Bare),
                samples: Vec::new(),
                elapsed: Duration::ZERO,
                response_bytes: 0,
            },
        })
    }

    /// One call; fails on a transport error or a tool error, so nothing fast-but-wrong counts.
    async fn call(&self) -> anyhow::Result<usize> {
        let tool = self.row.tool;
        let params = CallToolRequestParams::new(tool).with_arguments(self.arguments.clone());
        let result = self
            .client
            .call_tool(params)
            .await
            .with_context(|| format!("calling `{tool}`"))?;
        ensure!(
            result.is_error != Some(true),
            "`{tool}` answered an error: {:?}",
            result.content
        );
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

/// Measures the baseline and both nhi-mcp tools in one mode.
async fn run_mode(connect: Connect, options: &Options) -> anyhow::Result<Vec<Row>> {
    let mut cells = vec![
        Cell::new(&connect, Server::Bare, "noop", json!({})).await?,
        Cell::new(
            &connect,
            Server::Nhi,
            "list_identities",
            json!({ "limit": 50 }),
        )
        .await?,
        Cell::new(
            &connect,
            Server::Nhi,
            "get_identity",
            json!({ "identity_id": GET_IDENTITY_ID }),
        )
        .await?,
    ];
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
        match server {
            Server::Bare => spawn_server(BareServer::new(), server_io),
            Server::Nhi => spawn_server(nhi_server(&engine, &config), server_io),
        }
        Box::pin(async move {
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
    cancel: &CancellationToken,
    pooling: Pooling,
) -> anyhow::Result<Connect> {
    let nhi = nhi_mcp::http::router(engine, &config.http, cancel.child_token());
    let bare: StreamableHttpService<BareServer, LocalSessionManager> = StreamableHttpService::new(
        || Ok(BareServer::new()),
        Arc::default(),
        StreamableHttpServerConfig::default().with_cancellation_token(cancel.child_token()),
    );
    let bare = axum::Router::new().nest_service("/mcp", bare);
    let nhi_url = serve_http(nhi, cancel).await?;
    let bare_url = serve_http(bare, cancel).await?;
    Ok(Box::new(move |server| {
        let url = match server {
            Server::Bare => bare_url.clone(),
            Server::Nhi => nhi_url.clone(),
        };
        Box::pin(async move {
            let config = StreamableHttpClientTransportConfig::with_uri(url.clone());
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

// ---- where nhi-mcp's time goes ---------------------------------------------------------------

/// Times `calls` sequential runs of `f` after `warmup` unmeasured ones.
async fn time_calls<F, Fut>(label: &'static str, options: &Options, mut f: F) -> anyhow::Result<Row>
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
        tool: label,
        is_baseline: false,
        samples,
        elapsed,
        response_bytes: 0,
    })
}

/// The engine called directly (no MCP, no JSON-RPC), the audit append on its own, and an empty
/// write transaction.
async fn breakdown(
    engine: &Engine,
    config: &Config,
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
    Ok(vec![list, get, audit, empty])
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
            .find(|r| r.is_baseline)
            .map_or(f64::NAN, Row::calls_per_sec);
        for row in rows {
            let server = if row.is_baseline {
                "bare rmcp"
            } else {
                "nhi-mcp"
            };
            println!(
                "| {mode} | {server} | `{}` | {:.0} | {} | {} | {} | {} | {:.2} |",
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
    let engine = Arc::new(Engine::open(&config).await?);
    let cancel = CancellationToken::new();

    let started = Instant::now();
    let in_process_rows = run_mode(in_process(engine.clone(), config.clone()), &options).await?;
    let http = over_http(engine.clone(), &config, &cancel, Pooling::RmcpDefault).await?;
    let http_rows = run_mode(http, &options).await?;
    let keep_alive = over_http(engine.clone(), &config, &cancel, Pooling::KeepAlive).await?;
    let keep_alive_rows = run_mode(keep_alive, &options).await?;
    cancel.cancel();
    let breakdown_rows = breakdown(&engine, &config, &options).await?;

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
         Response bytes: one serialized `CallToolResult`.\n",
        options.calls,
        options.warmup,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    print_table(&[
        ("in-process", in_process_rows),
        ("HTTP", http_rows),
        ("HTTP keep-alive", keep_alive_rows),
    ]);
    println!(
        "\n## Where nhi-mcp's time goes\n\n\
         The same calls without MCP: the engine called directly (authorization, inventory, \
         findings, audit), and the audit append alone (`BEGIN IMMEDIATE`, read the chain head, \
         hash, insert, commit), and an empty `BEGIN IMMEDIATE` + `COMMIT`. In-process MCP \
         overhead ≈ the rows above minus these.\n"
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
