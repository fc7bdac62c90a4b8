//! `nhi-mcp`: parse the command line, set up logging on stderr, run. Exit codes: 0 ok, 1 failure
//! with a one-line reason on stderr, 2 usage.

use std::process::ExitCode;

use clap::Parser;
use nhi_mcp::cli::{Cli, Command};

const RMCP_CAP: &str = "rmcp=info";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = std::env::var("NHI_MCP_LOG")
        .unwrap_or_else(|_| format!("nhi_mcp={default_level},rmcp=warn"));
    // rmcp logs whole requests at debug, and requests carry approval tokens: whatever the
    // filter says, rmcp is capped at info. The cap is added last, so it wins.
    let filter = tracing_subscriber::EnvFilter::new(filter)
        .add_directive(RMCP_CAP.parse().unwrap_or_default());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nhi-mcp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(nhi_mcp::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("nhi-mcp: {line}");
            ExitCode::FAILURE
        }
    }
}

/// `nhi-mcp identities list | head` closes our stdout early; that is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
