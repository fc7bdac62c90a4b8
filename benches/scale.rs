//! Benchmark: what one call costs as the inventory grows. For each size (1k, 10k, 100k
//! identities by default; `--sizes 1000,10000,100000,1000000` for more) a child process
//! generates an inventory in the documented file format (JSON), opens the engine on it (the
//! embedded SQLite store, the default policy, durable audit) and times, in-process:
//!
//! - `start`: opening the engine and answering the first page (the file read and indexed);
//! - `first page`: `list_identities` with `limit: 50`;
//! - `filtered`: a filter that matches 5 identities (`owner`), and one that matches about a
//!   tenth and is not indexed (`text`);
//! - `deep page`: the page after a cursor in the middle of the inventory;
//! - `get_identity`, and `list_findings` (first page of 50, with its summary over all; and its
//!   first call, which builds the findings index and the caller's counts);
//!
//! and the resident memory after loading. Each call is also shown as a ratio to the same call
//! at the smallest size: ≈ 1.0 is a cost independent of the inventory's size.
//!
//! The same cases then run through the `aws_iam` provider against moto (1k and 10k users by
//! default, `--aws-sizes`; `--aws-sizes ''` skips them): the child seeds that many IAM users
//! (tags, one access key each, the same names and owners as the file), and the provider reads
//! them with its inventory cache on (`refresh = "1h"`), so `start` is the first live read of
//! the account and the pages after it are served from the cache, as in production;
//! `get_identity` reads its user live, with calls about that user alone. `restart` opens the
//! engine again on the same data directory: the file is read again, the IAM users are served
//! from the cache the store kept. The bench
//! starts a moto of its own (`tests/peers/moto`, installed by `tests/peers/install` if missing)
//! and stops it by PID when it is done; `--moto URL` uses a running one instead.
//!
//! Run with `cargo bench --bench scale` (`-- --calls N` per case, default 200).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that cannot set up has nothing to measure"
)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nhi_mcp::authz::{Principal, Scope};
use nhi_mcp::config::{Config, Overrides};
use nhi_mcp::engine::{Caller, Engine, FindingQuery, IdentityQuery};
use nhi_mcp::model::IdentityId;

const CASES: [&str; 9] = [
    "first page",
    "owner filter (5 match)",
    "text filter (~10% match)",
    "deep page",
    "get_identity",
    "list_findings",
    "start (open + first page)",
    "first list_findings (builds its index)",
    "restart (open + first page)",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let calls: usize = value("--calls").map_or(Ok(200), |v| v.parse())?;
    if let Some(size) = value("--child") {
        let moto = value("--moto").map(|url| (url, args.iter().any(|a| a == "--reset-moto")));
        return child(size.parse()?, calls, moto);
    }
    let sizes = |flag: &str, default: &str| -> anyhow::Result<Vec<usize>> {
        value(flag)
            .unwrap_or_else(|| default.to_owned())
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .with_context(|| format!("{flag}: {s:?} is not a size"))
            })
            .collect()
    };
    let file_sizes = sizes("--sizes", "1000,10000,100000")?;
    let aws_sizes = sizes("--aws-sizes", "1000,10000")?;

    let file_runs = file_sizes
        .iter()
        .map(|&size| run_child(size, calls, None, false))
        .collect::<anyhow::Result<Vec<_>>>()?;
    report("an inventory file", &file_runs, calls);
    if !aws_sizes.is_empty() {
        // A moto of the bench's own is emptied before each size; one passed in is shared
        // with whoever else uses it, so the users go under an IAM path of this run's own.
        let own;
        let (url, own_moto) = match value("--moto") {
            Some(url) => (url, false),
            None => {
                own = Moto::start()?;
                (own.url.clone(), true)
            }
        };
        let aws_runs = aws_sizes
            .iter()
            .map(|&size| run_child(size, calls, Some(&url), own_moto))
            .collect::<anyhow::Result<Vec<_>>>()?;
        report("the aws_iam provider against moto", &aws_runs, calls);
    }
    Ok(())
}

/// What one child measured for one size.
struct Run {
    size: usize,
    /// Each case's (median, p99) in ms, in the order of `CASES`.
    cases: Vec<(f64, f64)>,
    rss_after_load: f64,
    rss_after_all: f64,
    /// `get_identity` calls/s from 1 and from 32 callers.
    throughput: (f64, f64),
}

fn run_child(size: usize, calls: usize, moto: Option<&str>, reset: bool) -> anyhow::Result<Run> {
    let source = if moto.is_some() {
        "IAM users"
    } else {
        "identities"
    };
    eprintln!("scale: {size} {source} ...");
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["--child", &size.to_string(), "--calls", &calls.to_string()])
        .stderr(std::process::Stdio::inherit());
    if let Some(url) = moto {
        // Any key works with moto; nothing from this machine's AWS configuration is used.
        cmd.args(["--moto", url]);
        if reset {
            cmd.arg("--reset-moto");
        }
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/nonexistent/nhi-mcp-bench")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/nhi-mcp-bench")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    let out = cmd.output().context("run the child")?;
    if !out.status.success() {
        bail!("the child for {size} {source} failed");
    }
    let v: serde_json::Value = serde_json::from_str(String::from_utf8(out.stdout)?.trim())?;
    let number = |v: &serde_json::Value| v.as_f64().context("the child's report");
    let cases = v["cases"]
        .as_array()
        .context("the child's report")?
        .iter()
        .map(|c| Ok((number(&c[0])?, number(&c[1])?)))
        .collect::<anyhow::Result<_>>()?;
    let t = &v["throughput"];
    Ok(Run {
        size,
        cases,
        rss_after_load: number(&v["rss_mib"])?,
        rss_after_all: number(&v["rss_after_mib"])?,
        throughput: (number(&t[0][1])?, number(&t[1][1])?),
    })
}

/// Prints one source's tables (Markdown), each call also as a ratio to the smallest size.
fn report(source: &str, runs: &[Run], calls: usize) {
    let Some(base) = runs.first() else { return };
    println!(
        "\nThrough {source}: median / p99 per call in ms, in-process, {calls} calls per case; (×) is the median's ratio to the smallest size.\n"
    );
    let mut header = "| case |".to_owned();
    let mut rule = "|---|".to_owned();
    for run in runs {
        let _ = write!(header, " {} |", run.size);
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    for (c, name) in CASES.iter().enumerate() {
        let mut line = format!("| {name} |");
        for run in runs {
            let (median, p99) = run.cases[c];
            let ratio = median / base.cases[c].0.max(1e-9);
            let _ = write!(line, " {median:.2} / {p99:.2} ({ratio:.2}×) |");
        }
        println!("{line}");
    }
    let mut load = "| RSS after load, MiB |".to_owned();
    let mut all = "| RSS after the calls above (before the restart), MiB |".to_owned();
    for run in runs {
        let _ = write!(load, " {:.0} |", run.rss_after_load);
        let _ = write!(all, " {:.0} |", run.rss_after_all);
    }
    println!("{load}\n{all}");
    println!("\n`get_identity` calls/s in-process through {source}, every call audited durably:\n");
    println!("| size | 1 caller | 32 callers | ratio |\n|---:|---:|---:|---:|");
    for run in runs {
        let (one, many) = run.throughput;
        println!(
            "| {} | {one:.0} | {many:.0} | {:.2}× |",
            run.size,
            many / one.max(1e-9)
        );
    }
}

/// A moto server of the bench's own (`tests/peers/moto`), stopped by PID when dropped. Its
/// directory is `target/peers/moto-<this PID>`, which `tests/run` cleans up if the bench is
/// killed before it could stop moto.
struct Moto {
    dir: std::path::PathBuf,
    url: String,
}

impl Moto {
    fn start() -> anyhow::Result<Self> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if !root.join("target/peers/moto/bin/moto_server").exists() {
            eprintln!("scale: installing the test peers (tests/peers/install) for moto ...");
            let status = std::process::Command::new(root.join("tests/peers/install"))
                .stdout(std::process::Stdio::null())
                .status()
                .context("run tests/peers/install")?;
            if !status.success() {
                bail!(
                    "tests/peers/install failed; moto is needed for --aws-sizes (pass --aws-sizes '' to skip)"
                );
            }
        }
        let dir = root.join(format!("target/peers/moto-{}", std::process::id()));
        let script = root.join("tests/peers/moto");
        // A port picked free can be taken before moto binds it: three tries.
        for attempt in 1..=3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let out = std::process::Command::new(&script)
                .arg("start")
                .arg(&dir)
                .arg(port.to_string())
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("run tests/peers/moto")?;
            if out.status.success() {
                let moto = Self {
                    url: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                    dir,
                };
                eprintln!("scale: moto at {}", moto.url);
                return Ok(moto);
            }
            stop_moto(&dir);
            eprintln!("scale: moto did not start (attempt {attempt} of 3)");
        }
        bail!("moto did not start; see the messages above")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        stop_moto(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stop_moto(dir: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/moto");
    let _ = std::process::Command::new(script)
        .arg("stop")
        .arg(dir)
        .status();
}

/// Identity `i` of `n`: its name, owner and environment. Five are owned by `team-rare` and a
/// tenth are named `*-batch`, spread through the id order.
fn shape(i: usize, n: usize) -> (String, String, &'static str) {
    let owner = if i % (n / 5).max(1) == 7 {
        "team-rare".to_owned()
    } else {
        format!("team-{}", i % 40)
    };
    let name = if i % 10 == 3 {
        format!("svc-{i}-batch")
    } else {
        format!("svc-{i}")
    };
    (name, owner, ["prod", "staging", "dev"][i % 3])
}

/// An inventory file of `n` identities (JSON, the documented format).
fn inventory(n: usize) -> String {
    let mut out = String::from("{\"identities\": [\n");
    for i in 0..n {
        let (name, owner, environment) = shape(i, n);
        let _ = writeln!(
            out,
            "{}{{\"native_id\": \"user/{name}\", \"kind\": \"service_user\", \"name\": \"{name}\", \"owner\": \"{owner}\", \"environment\": \"{environment}\", \"created_at\": \"-{}d\", \"last_used_at\": \"-{}d\", \"tags\": {{\"team\": \"{owner}\"}}, \"permissions\": {{\"privileged\": {}, \"summary\": \"read objects in one bucket\", \"grants\": [\"s3:GetObject on arn:aws:s3:::bucket-{}/*\"]}}, \"credentials\": [{{\"id\": \"AKIA{i:016}\", \"kind\": \"access_key\", \"created_at\": \"-{}d\", \"status\": \"active\"}}]}}",
            if i == 0 { "" } else { "," },
            100 + i % 900,
            i % 200,
            i % 17 == 0,
            i % 50,
            i % 400,
        );
    }
    out.push_str("]}\n");
    out
}

/// Creates `n` IAM users under `path` with the names, owners and environments of `shape` (as
/// the `owner` and `environment` tags) and one access key each; empties moto first if `reset`.
async fn seed_iam(url: &str, n: usize, path: &str, reset: bool) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;

    if reset {
        nhi_mcp::auth::install_crypto_provider();
        reqwest::Client::new()
            .post(format!("{url}/moto-api/reset"))
            .send()
            .await?
            .error_for_status()
            .context("reset moto")?;
    }
    // The provider's own SDK set-up; the parent gave this process moto's test credentials.
    let sdk = nhi_mcp::providers::aws::sdk_config(&nhi_mcp::config::AwsEndpoint {
        region: Some("us-east-1".to_owned()),
        endpoint_url: Some(url.to_owned()),
        ..Default::default()
    })
    .await;
    let iam = aws_sdk_iam::Client::new(&sdk);
    let tag = |k: &str, v: &str| aws_sdk_iam::types::Tag::builder().key(k).value(v).build();
    let started = Instant::now();
    let mut created = futures_util::stream::iter(0..n)
        .map(|i| {
            let iam = iam.clone();
            let (name, owner, environment) = shape(i, n);
            async move {
                iam.create_user()
                    .user_name(&name)
                    .path(path)
                    .tags(tag("owner", &owner)?)
                    .tags(tag("environment", environment)?)
                    .send()
                    .await
                    .context("CreateUser")?;
                iam.create_access_key()
                    .user_name(&name)
                    .send()
                    .await
                    .context("CreateAccessKey")?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8);
    while let Some(done) = created.next().await {
        done?;
    }
    eprintln!(
        "scale: seeded {n} IAM users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn stats(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (ms(at(0.5)), ms(at(0.99)))
}

/// One size's measurements, as a JSON line on stdout. `moto`: the IAM users go to that moto
/// server (emptied first when the flag says so) instead of a file.
fn child(size: usize, calls: usize, moto: Option<(String, bool)>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir()?;
        let toml = match &moto {
            None => {
                let file = dir.path().join("inv.json");
                std::fs::write(&file, inventory(size))?;
                format!(
                    "[[providers]]\nname = \"inv\"\nkind = \"inventory\"\npath = \"{}\"\n",
                    file.display()
                )
            }
            Some((url, reset)) => {
                let path = format!("/scale-{}/", std::process::id());
                seed_iam(url, size, &path, *reset).await?;
                format!(
                    "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\npath_prefix = \"{path}\"\nrefresh = \"1h\"\n"
                )
            }
        };
        let overrides = Overrides {
            config_file: None,
            data_dir: Some(dir.path().join("data")),
        };
        let config = Config::from_toml(&toml, None, &overrides)?;
        let agent = Principal::new("agent:bench", [Scope::Read]);
        let caller = |tool: &str| Caller::new(&agent, tool, serde_json::Value::Null);
        let page = |q: IdentityQuery| IdentityQuery {
            limit: Some(50),
            ..q
        };

        let started = Instant::now();
        let engine: Arc<Engine> = Arc::new(nhi_mcp::cli::compose::open_engine(&config).await?);
        engine
            .list_identities(&caller("list_identities"), page(IdentityQuery::default()))
            .await?;
        let start = started.elapsed();
        let rss = rss_mib();

        // A cursor into the middle: the page after the identity at size / 2.
        let mut ids: Vec<String> = Vec::new();
        let mut q = IdentityQuery {
            limit: Some(500),
            ..IdentityQuery::default()
        };
        while ids.len() < size / 2 {
            let p = engine
                .list_identities(&caller("list_identities"), q.clone())
                .await?;
            ids.extend(p.items.iter().map(|i| i.id.to_string()));
            match p.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        let deep_cursor = q.cursor.clone();
        let cold = Instant::now();
        engine
            .list_findings(&caller("list_findings"), FindingQuery { limit: Some(50), ..Default::default() })
            .await?;
        let cold_findings = cold.elapsed().as_secs_f64() * 1000.0;
        let middle = IdentityId::parse(&ids[ids.len() / 2]).map_err(|e| anyhow::anyhow!(e.0))?;

        // Times `calls` runs of `$call` (an expression answering how many items it got), after
        // a tenth as many unmeasured ones.
        macro_rules! time {
            ($call:expr) => {
                time!(calls, $call)
            };
            ($calls:expr, $call:expr) => {{
                let calls: usize = $calls;
                let mut samples = Vec::with_capacity(calls);
                for n in 0..calls + calls / 10 {
                    let t = Instant::now();
                    let got: usize = $call;
                    if got == 0 {
                        bail!("a case answered nothing");
                    }
                    if n >= calls / 10 {
                        samples.push(t.elapsed());
                    }
                }
                stats(samples)
            }};
        }
        let c = caller("list_identities");
        let mut cases = vec![
            time!(
                engine
                    .list_identities(&c, page(IdentityQuery::default()))
                    .await?
                    .items
                    .len()
            ),
            time!({
                let q = page(IdentityQuery {
                    owner: Some("team-rare".into()),
                    ..Default::default()
                });
                engine.list_identities(&c, q).await?.items.len()
            }),
            time!({
                let q = page(IdentityQuery {
                    text: Some("-BATCH".into()),
                    ..Default::default()
                });
                engine.list_identities(&c, q).await?.items.len()
            }),
            time!({
                let q = page(IdentityQuery {
                    cursor: deep_cursor.clone(),
                    ..Default::default()
                });
                engine.list_identities(&c, q).await?.items.len()
            }),
        ];
        let g = caller("get_identity");
        // `get_identity` reads the identity from its provider: from moto, about seven IAM
        // calls about that user, each a few milliseconds, so fewer of them.
        let gets = if moto.is_some() { calls.min(50) } else { calls };
        cases.push(time!(
            gets,
            engine.get_identity(&g, &middle).await.map(|_| 1)?
        ));
        let f = caller("list_findings");
        cases.push(time!({
            let q = FindingQuery {
                limit: Some(50),
                ..Default::default()
            };
            engine.list_findings(&f, q).await?.findings.len()
        }));
        let ms = start.as_secs_f64() * 1000.0;
        cases.push((ms, ms));
        cases.push((cold_findings, cold_findings));
        let rss_after = rss_mib();

        // Calls per second of `get_identity` from 1 and from 32 concurrent callers: each call
        // writes a durable audit record, which concurrent calls share (group commit). Through
        // moto this measures moto, which answers one IAM call at a time: fewer calls.
        let total = if moto.is_some() { 64 } else { calls * 10 };
        let mut throughput = Vec::new();
        for tasks in [1usize, 32] {
            let started = Instant::now();
            let mut running = Vec::new();
            for _ in 0..tasks {
                let engine = Arc::clone(&engine);
                let middle = middle.clone();
                let agent = agent.clone();
                running.push(tokio::spawn(async move {
                    let g = Caller::new(&agent, "get_identity", serde_json::Value::Null);
                    for _ in 0..total / tasks {
                        engine.get_identity(&g, &middle).await?;
                    }
                    anyhow::Ok(())
                }));
            }
            for r in running {
                r.await??;
            }
            throughput.push((tasks, total as f64 / started.elapsed().as_secs_f64()));
        }
        engine.store().close().await;
        drop(engine);

        // A restart on the same data directory: the file is read again; the AWS inventory is
        // served from the cache the store kept.
        let started = Instant::now();
        let engine = nhi_mcp::cli::compose::open_engine(&config).await?;
        let got = engine
            .list_identities(&caller("list_identities"), page(IdentityQuery::default()))
            .await?
            .items
            .len();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if got == 0 {
            bail!("the first page after a restart answered nothing");
        }
        cases.push((ms, ms));
        engine.store().close().await;
        let report = serde_json::json!({"cases": cases, "rss_mib": rss, "rss_after_mib": rss_after, "throughput": throughput});
        println!("{report}");
        Ok(())
    })
}
