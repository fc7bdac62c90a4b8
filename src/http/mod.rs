//! The HTTP transport: Streamable HTTP at `/mcp` plus `/healthz`, on axum.
//!
//! Until bearer authentication lands, every HTTP caller is the configured principal, so the
//! server refuses to listen anywhere but loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::engine::Engine;
use crate::mcp::NhiServer;

/// The router: `/mcp` and `/healthz`.
pub fn router(engine: Arc<Engine>, config: &HttpConfig, cancel: CancellationToken) -> Router {
    let principal = config.principal.clone();
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_cancellation_token(cancel);
    let service: StreamableHttpService<NhiServer, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(NhiServer::new(engine.clone(), principal.clone())),
        Arc::default(),
        mcp_config,
    );
    Router::new()
        .nest_service("/mcp", service)
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves until `cancel` fires. Refuses non-loopback addresses.
/// Refuses addresses other than loopback: without bearer authentication every caller would be
/// the configured principal.
pub fn check_listen_address(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr}: without bearer authentication, HTTP serves loopback addresses only (use 127.0.0.1)"
        );
    }
    Ok(())
}

pub async fn serve(
    engine: Arc<Engine>,
    config: &HttpConfig,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    check_listen_address(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!("listening on http://{local}/mcp");
    // Nagle's algorithm plus delayed ACKs adds ~40 ms to every small response.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = router(engine, config, cancel.child_token());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .context("HTTP server failed")
}
