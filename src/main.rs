//! `nhi-mcp`: parse the command line, set up logging on stderr, run. Exit codes: 0 ok, 1 failure
//! with a one-line reason on stderr, 2 usage.

use std::process::ExitCode;

use clap::Parser;
use nhi_mcp::cli::{Cli, Command};

/// Libraries whose debug and trace logs carry what must not be logged: rmcp logs whole requests
/// (approval tokens); the AWS SDK and its HTTP stack log requests and responses (a new access
/// key's secret, a Secrets Manager value). Whatever the filter says, they are capped at info:
/// a ceiling, never a floor (`NHI_MCP_LOG=off` stays silent).
const LOG_CAPS: [&str; 6] = [
    "rmcp",
    "aws_smithy_runtime",
    "aws_smithy_http_client",
    "aws_sigv4",
    "aws_config",
    "hyper_util",
];

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = std::env::var("NHI_MCP_LOG")
        .unwrap_or_else(|_| format!("nhi_mcp={default_level},rmcp=warn"));
    // Two filters, both of which an event must pass: the caller's, and the caps (everything
    // else unrestricted by them).
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let caps = LOG_CAPS.iter().fold(
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::TRACE),
        |caps, target| caps.with_target(*target, tracing_subscriber::filter::LevelFilter::INFO),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(caps)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
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
            // The message can quote data (a provider's answer, a stored reason): one line, with
            // nothing a terminal would act on.
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("nhi-mcp: {}", nhi_mcp::cli::output::term(&line));
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
