//! `nhi-mcp`: parse the command line, set up logging on stderr, run. Exit codes: 0 ok, 1 failure
//! with a one-line reason on stderr, 2 usage.

use std::process::ExitCode;

use clap::Parser;
use nhi_mcp::cli::{Cli, Command};

/// Libraries whose debug and trace logs carry what must not be logged: rmcp logs whole requests
/// (approval tokens); the AWS SDK and its HTTP stack log requests and responses (a new access
/// key's secret, a Secrets Manager value). Whatever the filter says, they are capped at info.
const LOG_CAPS: [&str; 6] = [
    "rmcp=info",
    "aws_smithy_runtime=info",
    "aws_smithy_http_client=info",
    "aws_sigv4=info",
    "aws_config=info",
    "hyper_util=info",
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = std::env::var("NHI_MCP_LOG")
        .unwrap_or_else(|_| format!("nhi_mcp={default_level},rmcp=warn"));
    // The caps are added last, so they win over the filter's own directives.
    let mut filter = tracing_subscriber::EnvFilter::new(filter);
    for cap in LOG_CAPS {
        filter = filter.add_directive(cap.parse().unwrap_or_default());
    }
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
