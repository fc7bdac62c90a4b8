//! The admin API, for humans with `nhi:approve` tokens from the same issuer: list and show
//! proposals, approve (the approval token goes back to the approving admin only), reject.
//! JSON in and out; errors are `{"error": "…"}` with a fitting status.
//!
//! Reads are audited and filtered by policy: an admin sees the proposals policy lets them
//! approve or reject; any other is answered like a missing one (404). The routes get the same
//! `Host`/`Origin` checks as `/mcp` (`origin::guard`, applied in `http::build`).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::bearer::AuthState;
use crate::authz::{Principal, Scope};
use crate::engine::{EngineError, ProposalQuery};
use crate::model::{ProposalId, ProposalStatus};

pub fn routes(state: Arc<AuthState>) -> Router {
    Router::new()
        .route("/proposals", get(list))
        .route("/proposals/{id}", get(show))
        .route("/proposals/{id}/approve", post(approve))
        .route("/proposals/{id}/reject", post(reject))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_approver,
        ))
        .with_state(state)
}

/// Bearer authentication plus the `nhi:approve` scope, for every admin route.
async fn require_approver(
    State(state): State<Arc<AuthState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let action = format!("admin {} {}", request.method(), request.uri().path());
    let principal = match state
        .authenticate(
            request.headers(),
            super::bearer::source(&request),
            &action,
            &Value::Null,
            Scope::Approve.as_str(),
        )
        .await
    {
        Ok(p) => p,
        Err(response) => return response,
    };
    if !principal.has(Scope::Approve) {
        return state
            .insufficient_scope(&principal, &action, &Value::Null, Scope::Approve)
            .await;
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn engine_error(e: EngineError) -> Response {
    let status = match &e {
        EngineError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        EngineError::NotFound(_) => StatusCode::NOT_FOUND,
        EngineError::MissingScope { .. } => StatusCode::FORBIDDEN,
        EngineError::Refused(_) | EngineError::Stale(_) => StatusCode::CONFLICT,
        EngineError::Provider(_) => StatusCode::BAD_GATEWAY,
        EngineError::Internal(detail) => {
            tracing::error!(%detail, "admin API internal error");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the server log has the details",
            );
        }
    };
    error(status, e.to_string())
}

fn proposal_id(raw: &str) -> Result<ProposalId, String> {
    ProposalId::parse(raw).map_err(|e| e.0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(state): State<Arc<AuthState>>,
    Extension(admin): Extension<Principal>,
    Query(params): Query<ListParams>,
) -> Response {
    let status = match params
        .status
        .as_deref()
        .map(|s| ProposalStatus::parse(s).ok_or(s))
    {
        Some(Err(s)) => return error(StatusCode::BAD_REQUEST, format!("unknown status `{s}`")),
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let query = ProposalQuery {
        status,
        identity_id: None,
        cursor: params.cursor,
        limit: params.limit,
    };
    match state.engine.admin_proposals(&admin, &query).await {
        Ok(page) => {
            Json(json!({"proposals": page.items, "next_cursor": page.next_cursor})).into_response()
        }
        Err(e) => engine_error(e),
    }
}

async fn show(
    State(state): State<Arc<AuthState>>,
    Extension(admin): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let id = match proposal_id(&id) {
        Ok(id) => id,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match state.engine.admin_proposal(&admin, &id).await {
        Ok(p) => Json(json!({"proposal": p})).into_response(),
        Err(e) => engine_error(e),
    }
}

async fn approve(
    State(state): State<Arc<AuthState>>,
    Extension(admin): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let id = match proposal_id(&id) {
        Ok(id) => id,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match state.engine.approve(&admin, &id).await {
        Ok(result) => Json(json!({
            "status": result.proposal.status,
            "approvals_received": result.proposal.approvals.len(),
            "approvals_required": result.proposal.body.required_approvals,
            "approval_token": result.token,
            "proposal": result.proposal,
        }))
        .into_response(),
        Err(e) => engine_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: String,
}

async fn reject(
    State(state): State<Arc<AuthState>>,
    Extension(admin): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Json<RejectBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let id = match proposal_id(&id) {
        Ok(id) => id,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"reason\": \"...\"}",
        );
    };
    match state.engine.reject(&admin, &id, &body.reason).await {
        Ok(p) => Json(json!({"status": p.status, "proposal": p})).into_response(),
        Err(e) => engine_error(e),
    }
}
