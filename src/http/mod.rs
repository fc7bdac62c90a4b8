//! The HTTP transport: Streamable HTTP at `/mcp`, `/healthz`, and, with `[auth]`, the OAuth
//! protected resource metadata (RFC 9728) and the admin API.
//!
//! With `[auth]`, every request to `/mcp` and `/admin/v1` carries a bearer token that
//! `auth::Authenticator` validates; the principal it stands for rides in the request's
//! extensions to the tool handlers. Without `[auth]`, every caller is the configured principal
//! and the server listens on loopback only.

mod admin;
mod bearer;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::HttpConfig;
use crate::engine::Engine;
use crate::mcp::NhiServer;

pub use bearer::metadata_url;

/// The router without bearer authentication: `/mcp` and `/healthz`.
pub fn router(engine: Arc<Engine>, config: &HttpConfig, cancel: CancellationToken) -> Router {
    build(engine, config, None, cancel)
}

/// The router; with an authenticator, `/mcp` requires bearer tokens and the metadata and admin
/// routes are served.
pub fn build(
    engine: Arc<Engine>,
    config: &HttpConfig,
    auth: Option<Arc<Authenticator>>,
    cancel: CancellationToken,
) -> Router {
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_cancellation_token(cancel);
    let authenticated = auth.is_some();
    let principal = config.principal.clone();
    let factory_engine = engine.clone();
    let service: StreamableHttpService<NhiServer, LocalSessionManager> = StreamableHttpService::new(
        move || {
            Ok(if authenticated {
                NhiServer::authenticated(factory_engine.clone())
            } else {
                NhiServer::new(factory_engine.clone(), principal.clone())
            })
        },
        Arc::default(),
        mcp_config,
    );
    let health = Router::new().route("/healthz", get(|| async { "ok\n" }));
    match (auth, &config.resource) {
        (Some(auth), Some(resource)) => {
            let state = Arc::new(bearer::AuthState::new(engine, auth, resource));
            let mcp = Router::new()
                .nest_service("/mcp", service)
                .layer(axum::middleware::from_fn(crate::mcp::refuse_malformed))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    bearer::require_bearer,
                ));
            Router::new()
                .merge(mcp)
                .nest("/admin/v1", admin::routes(state.clone()))
                .merge(bearer::metadata_routes(state))
                .merge(health)
        }
        _ => Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn(crate::mcp::refuse_malformed))
            .merge(health),
    }
}

/// Refuses addresses other than loopback unless bearer authentication is configured.
pub fn check_listen_address(addr: SocketAddr, authenticated: bool) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && !authenticated {
        bail!(
            "refusing to listen on {addr}: without `[auth]` (bearer tokens), HTTP serves loopback addresses only (use 127.0.0.1)"
        );
    }
    Ok(())
}

/// Serves until `cancel` fires. With `[auth]`, discovers the issuer's keys first: an issuer that
/// cannot be reached stops the start with a clear error.
pub async fn serve(
    engine: Arc<Engine>,
    config: &HttpConfig,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    check_listen_address(addr, config.auth.is_some())?;
    let auth = match &config.auth {
        Some(a) => {
            let authenticator = Authenticator::discover(a.clone()).await?;
            tracing::info!(issuer = %a.issuer, audience = %a.audience, "bearer authentication on");
            engine.set_admin_api_served();
            Some(Arc::new(authenticator))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!("listening on http://{local}/mcp");
    // Nagle's algorithm plus delayed ACKs adds ~40 ms to every small response.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = build(engine, config, auth, cancel.child_token());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .context("HTTP server failed")
}
