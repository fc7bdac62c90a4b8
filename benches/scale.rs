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

const CASES: [&str; 8] = [
    "first page",
    "owner filter (5 match)",
    "text filter (~10% match)",
    "deep page",
    "get_identity",
    "list_findings",
    "start (open + first page)",
    "first list_findings (builds its index)",
];

/// One size: its cases' (median, p99) in ms, and the RSS in MiB.
type Row = (usize, Vec<(f64, f64)>, f64);

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
        return child(size.parse()?, calls);
    }
    let sizes: Vec<usize> = value("--sizes")
        .unwrap_or_else(|| "1000,10000,100000".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let exe = std::env::current_exe()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut throughput: Vec<(usize, f64, f64)> = Vec::new();
    let mut rss_after: Vec<f64> = Vec::new();
    for &size in &sizes {
        eprintln!("scale: {size} identities ...");
        let out = std::process::Command::new(&exe)
            .args(["--child", &size.to_string(), "--calls", &calls.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("run the child")?;
        if !out.status.success() {
            bail!("the child for {size} failed");
        }
        let text = String::from_utf8(out.stdout)?;
        let v: serde_json::Value = serde_json::from_str(text.trim())?;
        let cases = v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_f64().unwrap(), c[1].as_f64().unwrap()))
            .collect();
        rows.push((size, cases, v["rss_mib"].as_f64().unwrap()));
        rss_after.push(v["rss_after_mib"].as_f64().unwrap());
        let t = &v["throughput"];
        throughput.push((size, t[0][1].as_f64().unwrap(), t[1][1].as_f64().unwrap()));
    }
    println!(
        "\nMedian / p99 per call in ms, in-process, {calls} calls per case; (×) is the median's ratio to the smallest size.\n"
    );
    let mut header = "| case |".to_owned();
    let mut rule = "|---|".to_owned();
    for (size, _, _) in &rows {
        let _ = write!(header, " {size} |");
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    for (c, name) in CASES.iter().enumerate() {
        let mut line = format!("| {name} |");
        let base = rows[0].1[c].0;
        for (_, cases, _) in &rows {
            let (median, p99) = cases[c];
            let _ = write!(
                line,
                " {median:.2} / {p99:.2} ({:.2}×) |",
                median / base.max(1e-9)
            );
        }
        println!("{line}");
    }
    let mut line = "| RSS after load, MiB |".to_owned();
    for (_, _, rss) in &rows {
        let _ = write!(line, " {rss:.0} |");
    }
    println!("{line}");
    let mut line = "| RSS after every case, MiB |".to_owned();
    for rss in &rss_after {
        let _ = write!(line, " {rss:.0} |");
    }
    println!("{line}");
    println!("\n`get_identity` calls/s in-process, every call audited durably:\n");
    println!("| identities | 1 caller | 32 callers | ratio |\n|---:|---:|---:|---:|");
    for (size, one, many) in throughput {
        println!(
            "| {size} | {one:.0} | {many:.0} | {:.2}× |",
            many / one.max(1e-9)
        );
    }
    Ok(())
}

/// An inventory of `n` identities: five owned by `team-rare`, a tenth named `*-batch`, spread through the id order.
fn inventory(n: usize) -> String {
    let mut out = String::from("{\"identities\": [\n");
    for i in 0..n {
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
        let _ = writeln!(
            out,
            "{}{{\"native_id\": \"user/{name}\", \"kind\": \"service_user\", \"name\": \"{name}\", \"owner\": \"{owner}\", \"environment\": \"{}\", \"created_at\": \"-{}d\", \"last_used_at\": \"-{}d\", \"tags\": {{\"team\": \"{owner}\"}}, \"permissions\": {{\"privileged\": {}, \"summary\": \"read objects in one bucket\", \"grants\": [\"s3:GetObject on arn:aws:s3:::bucket-{}/*\"]}}, \"credentials\": [{{\"id\": \"AKIA{i:016}\", \"kind\": \"access_key\", \"created_at\": \"-{}d\", \"status\": \"active\"}}]}}",
            if i == 0 { "" } else { "," },
            ["prod", "staging", "dev"][i % 3],
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

fn child(size: usize, calls: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("inv.json");
        std::fs::write(&file, inventory(size))?;
        let toml = format!(
            "[[providers]]\nname = \"inv\"\nkind = \"inventory\"\npath = \"{}\"\n",
            file.display()
        );
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
            ($call:expr) => {{
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
        cases.push(time!(engine.get_identity(&g, &middle).await.map(|_| 1)?));
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
        // writes a durable audit record, which concurrent calls share (group commit).
        let mut throughput = Vec::new();
        for tasks in [1usize, 32] {
            let total = calls * 10;
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
        let report = serde_json::json!({"cases": cases, "rss_mib": rss, "rss_after_mib": rss_after, "throughput": throughput});
        println!("{report}");
        Ok(())
    })
}
