//! The bearer-token layer around `/mcp`, and the protected resource metadata (RFC 9728).
//!
//! - No token: 401 with `WWW-Authenticate: Bearer resource_metadata="…", scope="…"`.
//! - A token that does not validate: 401 with `error="invalid_token"` as well.
//! - A valid token without the scope a tool needs: 403 with `error="insufficient_scope"` and the
//!   scope, so the client can step up.
//!
//! Every refusal is audited; refusals without a valid token are counted per source and
//! interval (`refusals`), so they cannot fill the disk.
//!
//! After authentication, the layer binds MCP sessions to their principal (`session`): a request
//! with another principal's `Mcp-Session-Id` is answered like an unknown session and audited.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use super::refusals::{Refusals, Summary};
use super::session::{self, Check, Owner, Sessions};
use crate::auth::{AuthError, Authenticator};
use crate::authz::{Principal, Scope};
use crate::engine::{Caller, Engine};
use crate::model::quote_input;

/// The largest request body the layer reads to find the tool being called.
const MAX_BODY: usize = 4 * 1024 * 1024;

pub struct AuthState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub resource: String,
    pub metadata_url: String,
    pub sessions: Sessions,
    pub refusals: Refusals,
}

/// The peer address of a request, when the server was started with connection info.
pub fn source(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

impl AuthState {
    pub fn new(
        engine: Arc<Engine>,
        auth: Arc<Authenticator>,
        resource: &str,
        sessions: Arc<LocalSessionManager>,
    ) -> Self {
        let interval = auth.config().refusal_audit_interval;
        Self {
            engine,
            auth,
            resource: resource.to_owned(),
            metadata_url: metadata_url(resource),
            sessions: Sessions::new(sessions),
            refusals: Refusals::new(interval),
        }
    }

    /// Writes the counted records of the refusal intervals that are over (all with `all`).
    pub async fn flush_refusals(&self, all: bool) {
        for s in self.refusals.flush(Instant::now(), all) {
            self.audit_summary(&s).await;
        }
    }

    async fn audit_summary(&self, s: &Summary) {
        let source = s
            .source
            .map_or_else(|| "other sources".to_owned(), |ip| format!("`{ip}`"));
        let reason = format!(
            "{} more requests without a valid bearer token from {source} between {} and {} (the last: {})",
            s.count,
            s.from.to_rfc3339(),
            s.to.to_rfc3339(),
            s.last_reason
        );
        let arguments = json!({
            "source": s.source.map(|ip| ip.to_string()),
            "count": s.count,
            "from": s.from.to_rfc3339(),
            "to": s.to.to_rfc3339(),
        });
        let caller = Caller::new(
            &Principal::new("unauthenticated", []),
            "refusals_counted",
            arguments,
        );
        self.engine.audit_denied(&caller, &reason).await;
    }

    /// The `WWW-Authenticate` challenge: `error` is absent when no token was sent.
    pub fn challenge(&self, error: Option<(&str, &str)>, scope: &str) -> HeaderValue {
        let mut value = format!(
            "Bearer resource_metadata=\"{}\", scope=\"{scope}\"",
            self.metadata_url
        );
        if let Some((code, description)) = error {
            value.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                description.replace(['"', '\\'], "'")
            ));
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// Authenticates the request's bearer token; the refusal is the response to send.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        source: Option<IpAddr>,
        action: &str,
        arguments: &Value,
        scope: &str,
    ) -> Result<Principal, Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim);
        let result = match token {
            None => Err(AuthError::Missing),
            Some(t) => self.auth.authenticate(t).await,
        };
        match result {
            Ok(p) => Ok(p),
            Err(e) => {
                let who = if e == AuthError::Missing {
                    "anonymous"
                } else {
                    "unauthenticated"
                };
                let verdict = self.refusals.note(source, Instant::now(), &e.to_string());
                for s in &verdict.summaries {
                    self.audit_summary(s).await;
                }
                if verdict.record {
                    let caller = Caller::new(&Principal::new(who, []), action, arguments.clone());
                    let reason = match source {
                        Some(ip) => format!("{e}; from `{ip}`"),
                        None => e.to_string(),
                    };
                    self.engine.audit_denied(&caller, &reason).await;
                }
                let error = match &e {
                    AuthError::Missing => None,
                    AuthError::Invalid(m) => Some(("invalid_token", m.as_str())),
                };
                let mut response = (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": e.to_string()})),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, self.challenge(error, scope));
                Err(response)
            }
        }
    }

    /// 403 naming the scope the call needs, audited.
    pub async fn insufficient_scope(
        &self,
        principal: &Principal,
        action: &str,
        arguments: &Value,
        scope: Scope,
    ) -> Response {
        let reason = format!(
            "this call needs the `{scope}` scope, which `{}` does not hold",
            principal.id
        );
        let caller = Caller::new(principal, action, arguments.clone());
        self.engine.audit_denied(&caller, &reason).await;
        let mut response = (StatusCode::FORBIDDEN, Json(json!({"error": reason}))).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            self.challenge(Some(("insufficient_scope", &reason)), scope.as_str()),
        );
        response
    }
}

/// Where the metadata of `resource` is (RFC 9728 §3.1): the well-known path inserted between
/// the host and the resource's path.
pub fn metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("https", resource));
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        format!("{scheme}://{host}/.well-known/oauth-protected-resource")
    } else {
        format!("{scheme}://{host}/.well-known/oauth-protected-resource/{path}")
    }
}

/// The middleware around `/mcp`: bearer token, scope, and the session's owner.
pub async fn require_bearer(
    State(state): State<Arc<AuthState>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = source(&request);
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"error": "request body too large"})),
        )
            .into_response();
    };
    let call = crate::mcp::tool_call_scopes(&bytes);
    let (action, arguments, needed) = match &call {
        Some((name, args, scopes)) => (name.as_str(), args.clone(), *scopes),
        None => ("mcp", Value::Null, &[Scope::Read][..]),
    };
    let scope = needed.first().copied().unwrap_or(Scope::Read);
    let principal = match state
        .authenticate(&parts.headers, peer, action, &arguments, scope.as_str())
        .await
    {
        Ok(p) => p,
        Err(response) => return response,
    };
    if call.is_some() && !needed.iter().any(|s| principal.has(*s)) {
        return state
            .insufficient_scope(&principal, action, &arguments, scope)
            .await;
    }
    let who = Owner::of(&principal);
    let method = parts.method.clone();
    let Ok(session_id) = session::session_id(&parts.headers) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "send one `Mcp-Session-Id` header, in text"})),
        )
            .into_response();
    };
    let action = match &call {
        Some(_) => action.to_owned(),
        None => format!("mcp {method}"),
    };
    match &session_id {
        Some(id) => match state.sessions.check(id, &who).await {
            Check::Own => {}
            Check::Unknown => return session::not_found(),
            refused => {
                let reason = match refused {
                    Check::Foreign(owner) => format!(
                        "the session belongs to another principal ({})",
                        quote_input(&owner.subject)
                    ),
                    _ => "the session is bound to no principal".to_owned(),
                };
                let caller = Caller::new(&principal, &action, arguments);
                state.engine.audit_denied(&caller, &reason).await;
                return session::not_found();
            }
        },
        None => {
            if method == Method::POST
                && session::is_initialize(&bytes)
                && !state.sessions.has_room(&who).await
            {
                let caller = Caller::new(&principal, &action, arguments);
                state
                    .engine
                    .audit_denied(&caller, "too many open sessions")
                    .await;
                return session::too_many();
            }
        }
    }
    parts.extensions.insert(principal);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    match session_id {
        Some(id) => {
            if method == Method::DELETE && response.status().is_success() {
                state.sessions.unbind(&id);
            } else if response.status() == StatusCode::NOT_FOUND {
                state.sessions.unbind_if_gone(&id).await;
            }
        }
        None => {
            let created = response
                .headers()
                .get(session::SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(id) = created
                && !state.sessions.bind(&id, &who).await
            {
                state.sessions.close(&id).await;
                return session::too_many();
            }
        }
    }
    response
}

/// `/.well-known/oauth-protected-resource` and its `/mcp` form.
pub fn metadata_routes(state: Arc<AuthState>) -> Router {
    let path = metadata_url(&state.resource);
    let suffix = path
        .split_once("/.well-known/oauth-protected-resource")
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    let mut paths = vec![String::new(), "/mcp".to_owned(), suffix];
    paths.sort();
    paths.dedup();
    let mut router = Router::new();
    for extra in paths {
        router = router.route(
            &format!("/.well-known/oauth-protected-resource{extra}"),
            get(metadata),
        );
    }
    router.with_state(state)
}

async fn metadata(State(state): State<Arc<AuthState>>) -> Json<Value> {
    Json(json!({
        "resource": state.resource,
        "authorization_servers": [state.auth.issuer()],
        "scopes_supported": Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
        "resource_name": "nhi-mcp",
    }))
}

#[cfg(test)]
mod tests {
    use super::metadata_url;

    #[test]
    fn metadata_url_inserts_the_well_known_path() {
        assert_eq!(
            metadata_url("https://nhi.example.com/mcp"),
            "https://nhi.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://nhi.example.com"),
            "https://nhi.example.com/.well-known/oauth-protected-resource"
        );
    }
}
