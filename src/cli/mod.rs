//! The command line: `serve` and the admin commands. Start-up (config, logging) happens here and
//! in `main`; everything else is the engine's.

mod admin;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::engine::Engine;
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
        /// Serve HTTP on ADDR (default: `http.listen` from config, else 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        http: Option<String>,
    },
    /// Identities, for humans.
    Identities {
        #[command(subcommand)]
        command: IdentitiesCommand,
    },
    /// Proposals, for humans.
    Proposals {
        #[command(subcommand)]
        command: ProposalsCommand,
    },
    /// Approve a proposal; prints the approval token, alone, on stdout once the last required
    /// approval is in.
    Approve {
        proposal_id: String,
        #[arg(long)]
        approver: String,
    },
    /// Reject a proposal.
    Reject {
        proposal_id: String,
        #[arg(long)]
        approver: String,
        #[arg(long)]
        reason: String,
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
}

#[derive(Debug, Subcommand)]
pub enum IdentitiesCommand {
    /// A table of identities.
    List {
        #[arg(long)]
        provider: Option<String>,
        /// An OWASP id (`NHI7`) or a rule (`unused`, `privileged`, ...).
        #[arg(long)]
        finding: Option<String>,
        /// Read the providers live instead of their cached inventory.
        #[arg(long)]
        refresh: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProposalsCommand {
    /// A table of proposals.
    List {
        /// pending_approval, approved, applying, applied, failed, rejected, expired, cancelled.
        #[arg(long)]
        status: Option<String>,
    },
    /// One proposal as JSON.
    Show { proposal_id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; names the first broken record.
    Verify,
    /// Write the audit log as JSON lines (to stdout, or FILE).
    Export {
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Write one JSON file per tool into DIR.
    Export { dir: PathBuf },
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
        Some(raw) => Some(raw.parse().map_err(|_| {
            anyhow::anyhow!("`--http` = `{raw}` is not an address like 127.0.0.1:8080")
        })?),
    };
    if let Some(addr) = addr {
        crate::http::check_listen_address(addr, config.http.auth.is_some())?;
    }
    let _lock = lock_data_dir(&config.data_dir)?;
    let engine = Arc::new(Engine::open(&config).await?);
    for (id, what) in engine.recover().await? {
        tracing::warn!(proposal = %id, "{what}");
    }
    let cancel = CancellationToken::new();
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
    engine.store().close().await;
    result
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
