//! The HTTP transport: Streamable HTTP at `/mcp`, `/healthz`, and, with `[auth]`, the OAuth
//! protected resource metadata (RFC 9728) and the admin API.
//!
//! With `[auth]`, every request to `/mcp` and `/admin/v1` carries a bearer token that
//! `auth::Authenticator` validates; the principal it stands for rides in the request's
//! extensions to the tool handlers. Without `[auth]`, every caller is the configured principal
//! and the server listens on loopback only.

mod admin;
mod bearer;
mod origin;
mod refusals;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
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
    build_with_state(engine, config, auth, cancel).0
}

/// `build`, plus the bearer layer's state (to flush counted refusals at shutdown).
fn build_with_state(
    engine: Arc<Engine>,
    config: &HttpConfig,
    auth: Option<Arc<Authenticator>>,
    cancel: CancellationToken,
) -> (Router, Option<Arc<bearer::AuthState>>) {
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_cancellation_token(cancel.clone());
    let authenticated = auth.is_some();
    let principal = config.principal.clone();
    let factory_engine = engine.clone();
    let sessions = Arc::new(LocalSessionManager::default());
    let service: StreamableHttpService<NhiServer, LocalSessionManager> = StreamableHttpService::new(
        move || {
            Ok(if authenticated {
                NhiServer::authenticated(factory_engine.clone())
            } else {
                NhiServer::new(factory_engine.clone(), principal.clone())
            })
        },
        sessions.clone(),
        mcp_config,
    );
    let health = Router::new().route("/healthz", get(|| async { "ok\n" }));
    let allowed = Arc::new(origin::Allowed {
        hosts: config.allowed_hosts.clone(),
        origins: config.allowed_origins.clone(),
    });
    let mcp = Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(crate::mcp::refuse_malformed))
        .layer(axum::middleware::from_fn(delete_answers_no_content));
    match (auth, &config.resource) {
        (Some(auth), Some(resource)) => {
            let state = Arc::new(bearer::AuthState::new(engine, auth, resource, sessions));
            let mcp = mcp.layer(axum::middleware::from_fn_with_state(
                state.clone(),
                bearer::require_bearer,
            ));
            // Host/Origin first: a rebinding page learns nothing, not even whether it needs a token.
            let admin = admin::routes(state.clone())
                .layer(axum::middleware::from_fn_with_state(allowed, origin::guard));
            spawn_refusal_flush(state.clone(), cancel);
            let router = Router::new()
                .merge(mcp.layer(axum::middleware::from_fn(origin::single_host)))
                .nest("/admin/v1", admin)
                .merge(bearer::metadata_routes(state.clone()))
                .merge(health);
            (router, Some(state))
        }
        _ => (
            Router::new()
                .merge(mcp.layer(axum::middleware::from_fn(origin::single_host)))
                .merge(health),
            None,
        ),
    }
}

/// rmcp answers a session's `DELETE` with 202 Accepted; the session is gone by then, and the
/// Python SDK warns on anything but 200 or 204, so the answer is 204 No Content.
async fn delete_answers_no_content(request: Request, next: Next) -> Response {
    let delete = request.method() == Method::DELETE;
    let mut response = next.run(request).await;
    if delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// Writes the counted refusal records of intervals that are over, once per interval, until
/// `cancel`; without a runtime (a router built outside one) the next refusal writes them.
fn spawn_refusal_flush(state: Arc<bearer::AuthState>, cancel: CancellationToken) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let every = state.refusals.interval();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => state.flush_refusals(false).await,
            }
        }
    });
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
    let (app, state) = build_with_state(engine, config, auth, cancel.child_token());
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await
    .context("HTTP server failed");
    if let Some(state) = state {
        state.flush_refusals(true).await;
    }
    served
}
