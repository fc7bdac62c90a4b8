//! The command line: `serve` and the admin commands. Start-up (config, logging) happens here and
//! in `main`; everything else is the engine's.

mod admin;
mod approver;
mod audit;
pub mod compose;
mod device;
pub mod output;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::mcp::NhiServer;

/// How often the server expires overdue proposals and runs steps whose grace period is over.
const TICK: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "nhi-mcp",
    version,
    about = "MCP server that lets AI agents govern non-human identities under human approval"
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "NHI_MCP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (database, approval key, secret sink, inventory state).
    #[arg(long, global = true, env = "NHI_MCP_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over stdio (default) or Streamable HTTP at /mcp.
    Serve {
        /// Serve HTTP on ADDR, an address or `localhost:PORT` (default: `http.listen` from
        /// config, else 127.0.0.1:8080); without `[auth]`, loopback only.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        http: Option<String>,
    },
    /// Identities, for humans.
    Identities {
        #[command(subcommand)]
        command: IdentitiesCommand,
    },
    /// Posture findings (OWASP NHI Top 10), for humans.
    Findings {
        #[command(subcommand)]
        command: FindingsCommand,
    },
    /// Proposals, for humans.
    Proposals {
        #[command(subcommand)]
        command: ProposalsCommand,
    },
    /// Approve a proposal; prints the approval token, alone, on stdout once the last required
    /// approval is in. Proves who you are with `--approver NAME --key FILE` (an `[[approvers]]`
    /// entry's private key) or, with `[auth]` and no `--key`, by signing in at the issuer
    /// (OAuth device authorization grant).
    Approve {
        /// The proposal to approve (`prop_…`).
        proposal_id: String,
        /// Your approver id, as in `[[approvers]]` (with `--key`).
        #[arg(long, requires = "key")]
        approver: Option<String>,
        /// Your Ed25519 private key (from `nhi-mcp approvers keygen`).
        #[arg(long, value_name = "FILE", requires = "approver")]
        key: Option<PathBuf>,
    },
    /// Reject a proposal; proves who you are as `approve` does.
    Reject {
        /// The proposal to reject (`prop_…`).
        proposal_id: String,
        /// Your approver id, as in `[[approvers]]` (with `--key`).
        #[arg(long, requires = "key")]
        approver: Option<String>,
        /// Your Ed25519 private key (from `nhi-mcp approvers keygen`).
        #[arg(long, value_name = "FILE", requires = "approver")]
        key: Option<PathBuf>,
        /// Why; recorded with the proposal.
        #[arg(long)]
        reason: String,
    },
    /// Approver keys, for `[[approvers]]`.
    Approvers {
        #[command(subcommand)]
        command: ApproversCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The tool contract.
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script to stdout (e.g. `nhi-mcp completions bash >
    /// /etc/bash_completion.d/nhi-mcp`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentitiesCommand {
    /// A table of identities.
    List {
        /// Only this provider's identities.
        #[arg(long)]
        provider: Option<String>,
        /// Only this kind: service_user, role, database_role, deploy_key, app,
        /// service_account, api_token.
        #[arg(long)]
        kind: Option<String>,
        /// Only identities with exactly this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Only identities in exactly this environment.
        #[arg(long)]
        environment: Option<String>,
        /// Case-insensitive substring of id, name, purpose or owner.
        #[arg(long)]
        text: Option<String>,
        /// An OWASP id (`NHI7`) or a rule (`unused`, `privileged`, ...).
        #[arg(long)]
        finding: Option<String>,
        /// Read the providers live instead of their cached inventory.
        #[arg(long)]
        refresh: bool,
        /// Print JSON lines, one identity per line, instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One identity in full: credentials, permissions, findings, open proposals (read live).
    Show {
        /// The identity (`provider:native-id`, as `identities list` shows it).
        identity_id: String,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum FindingsCommand {
    /// A table of findings, most severe first.
    List {
        /// Only this identity's findings.
        #[arg(long, value_name = "IDENTITY_ID")]
        identity: Option<String>,
        /// Only this provider's findings.
        #[arg(long)]
        provider: Option<String>,
        /// Only findings at least this severe: low, medium, high, critical.
        #[arg(long)]
        severity: Option<String>,
        /// An OWASP id (`NHI7`) or a rule (`unused`, `privileged`, ...).
        #[arg(long)]
        finding: Option<String>,
        /// Read the providers live instead of their cached inventory.
        #[arg(long)]
        refresh: bool,
        /// Print JSON lines, one finding per line, instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProposalsCommand {
    /// A table of proposals, with their approvals, age and reason.
    List {
        /// pending_approval, approved, applying, applied, failed, rejected, expired, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Print JSON lines, one whole proposal per line, instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One proposal as JSON.
    Show {
        /// The proposal (`prop_…`).
        proposal_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; names the first problem.
    Verify {
        /// Check against this checkpoint file (a copy kept elsewhere) instead of
        /// `audit.checkpoint_file`.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Check signatures with this public key (PEM, from `audit public-key`) instead of the
        /// data dir's checkpoint key.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Write the audit log as JSON lines (to stdout, or FILE); the last line is a signed
    /// checkpoint of exactly what was written.
    Export {
        /// Write to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the public key that verifies checkpoints (PEM).
    PublicKey,
    /// Write a signed checkpoint now, into the chain and the checkpoint file (`serve` writes
    /// them periodically and at shutdown).
    Checkpoint,
}

#[derive(Debug, Subcommand)]
pub enum ApproversCommand {
    /// Create an Ed25519 private key (mode 0600) and print the `[[approvers]]` lines for the
    /// config.
    Keygen {
        /// Where to write the private key; never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The approver id to print in the config lines.
        #[arg(long, value_name = "NAME")]
        id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Write one JSON file per tool into DIR.
    Export {
        /// The folder to write into (`tools/` in this repository).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and say what each provider can see.
    Check,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Tools {
        command: ToolsCommand::Export { dir },
    } = &cli.command
    {
        let written = crate::mcp::export_tools(dir)
            .with_context(|| format!("cannot write to {}", dir.display()))?;
        eprintln!(
            "wrote {} tools to {}: {}",
            written.len(),
            dir.display(),
            written.join(", ")
        );
        return Ok(());
    }
    if let Command::Completions { shell } = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(*shell, &mut command, "nhi-mcp", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Approvers {
        command: ApproversCommand::Keygen { out, id },
    } = &cli.command
    {
        return approver::keygen(out, id.as_deref());
    }
    let overrides = Overrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
    };
    let config = Config::load(&overrides)?;
    match cli.command {
        Command::Serve { http } => serve(config, http).await,
        other => admin::run(config, other).await,
    }
}

async fn serve(config: Config, http: Option<String>) -> anyhow::Result<()> {
    let addr = match http.as_deref() {
        None => None,
        Some("") => Some(config.http.listen),
        Some(raw) => Some(listen_address(raw)?),
    };
    if let Some(addr) = addr {
        crate::http::check_listen_address(addr, config.http.auth.is_some())?;
    }
    let _lock = lock_data_dir(&config.data_dir)?;
    let engine = Arc::new(compose::open_engine(&config).await?);
    for (id, what) in engine.recover().await? {
        tracing::warn!(proposal = %id, "{what}");
    }
    let cancel = CancellationToken::new();
    let checkpointer = Arc::new(crate::audit::checkpoint::Checkpointer::new(
        crate::audit::checkpoint::CheckpointKey::load_or_create(&config.audit.checkpoint_key_file)
            .map_err(anyhow::Error::msg)?,
        config.audit.checkpoint_file.clone(),
    ));
    let checkpoints = tokio::spawn({
        let (checkpointer, engine) = (checkpointer.clone(), engine.clone());
        let (interval, cancel) = (config.audit.checkpoint_interval, cancel.clone());
        async move {
            engine
                .run_checkpoints(&checkpointer, interval, cancel)
                .await
        }
    });
    let ticker = tokio::spawn({
        let engine = engine.clone();
        let cancel = cancel.clone();
        async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(TICK) => {
                        if let Err(e) = engine.tick().await {
                            tracing::warn!(error = %e, "periodic work failed");
                        }
                    }
                }
            }
        }
    });
    // The inventory refresh runs on its own loop: a slow provider must not hold up expiring
    // proposals and running due steps.
    let refresher = tokio::spawn({
        let engine = engine.clone();
        let cancel = cancel.clone();
        async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    // Logs its own failures; cheap when no inventory is due.
                    () = async {
                        tokio::time::sleep(TICK).await;
                        engine.refresh_due().await;
                    } => {}
                }
            }
        }
    });
    let result = match addr {
        Some(addr) => {
            let shutdown = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                shutdown.cancel();
            });
            crate::http::serve(engine.clone(), &config.http, addr, cancel.clone()).await
        }
        None => {
            tracing::info!(principal = %config.stdio_principal.id, "serving MCP on stdio");
            let server = NhiServer::new(engine.clone(), config.stdio_principal.clone());
            let running = server
                // Framed: a malformed request gets its error answer instead of silence.
                .serve(crate::mcp::framed(tokio::io::stdin(), tokio::io::stdout()))
                .await
                .context("MCP handshake on stdio failed")?;
            tokio::select! {
                r = running.waiting() => r.map(|_| ()).context("stdio session failed"),
                () = shutdown_signal() => Ok(()),
            }
        }
    };
    cancel.cancel();
    let _ = ticker.await;
    let _ = refresher.await;
    let _ = checkpoints.await;
    // At clean shutdown: a checkpoint of everything this process wrote.
    engine.log_checkpoint(&checkpointer).await;
    engine.store().close().await;
    result
}

/// `--http ADDR`: an IP address and port, or `localhost:PORT`, which is always the IPv4
/// loopback address (RFC 6761: never looked up, so a hosts file cannot point it elsewhere).
/// Other names are looked up; the address they resolve to must pass the loopback check like
/// any other.
fn listen_address(raw: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    let bad = || {
        anyhow::anyhow!(
            "`--http` = {} is not an address like 127.0.0.1:8080 or localhost:8080",
            crate::model::quote_input(raw)
        )
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    if host.is_empty() {
        return Err(bad());
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// One `serve` per data dir: two would overwrite each other's inventory state, and each would
/// take the other's running apply for an interrupted one. The lock goes with the process.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "data dir {} is accessible to other users (mode {:o}); `chmod 700` it",
            dir.display(),
            mode & 0o777
        );
    }
    let path = dir.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `nhi-mcp serve` is using data dir {}; stop it, or give this one its own `--data-dir`",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every subcommand, flag and argument says what it is for in `--help` (issue #8).
    #[test]
    fn every_command_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "nhi-mcp", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
        // The walk sees what it should: a flag deep in the tree, and the built-in help.
        let mut all = Vec::new();
        fn names(cmd: &clap::Command, out: &mut Vec<String>) {
            out.extend(cmd.get_arguments().map(|a| a.get_id().to_string()));
            for sub in cmd.get_subcommands() {
                out.push(sub.get_name().to_owned());
                names(sub, out);
            }
        }
        names(&cmd, &mut all);
        for want in [
            "approver",
            "severity",
            "json",
            "help",
            "completions",
            "show",
        ] {
            assert!(all.iter().any(|n| n == want), "walk missed `{want}`");
        }
    }

    #[test]
    fn http_listen_addresses() {
        for (raw, want) in [
            ("127.0.0.1:8080", Some("127.0.0.1:8080")),
            ("[::1]:9", Some("[::1]:9")),
            ("localhost:8080", Some("127.0.0.1:8080")),
            ("LocalHost:0", Some("127.0.0.1:0")),
            ("localhost", None),
            ("localhost:", None),
            ("localhost:99999", None),
            (":8080", None),
            ("localhost:80€", None),
        ] {
            let got = listen_address(raw).ok().map(|a| a.to_string());
            assert_eq!(got.as_deref(), want, "{raw}");
        }
    }
}
