//! MCP sessions bound to the principal that created them (with `[auth]`).
//!
//! rmcp hands out an `Mcp-Session-Id` on the response to `initialize` and afterwards trusts
//! whoever presents it. With bearer authentication that is not enough: a second principal that
//! learns the id (a log, a proxy, a shared client) could read the first one's results or end its
//! session. So the bearer layer records, for each session, the issuer, subject and client of the
//! request that created it, and answers a request carrying someone else's session id, or a
//! session id with no binding at all, exactly like an unknown session (404).
//!
//! The map is bounded: at most `MAX_SESSIONS` bindings, `MAX_SESSIONS_PER_PRINCIPAL` of them for
//! one principal. Bindings of sessions rmcp has closed (DELETE, idle timeout) are dropped when
//! they are seen to be gone and whenever the map fills.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::authz::Principal;

/// The header rmcp names sessions with.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The most sessions bound at once.
pub const MAX_SESSIONS: usize = 10_000;

/// The most sessions one principal may hold at once.
pub const MAX_SESSIONS_PER_PRINCIPAL: usize = 100;

/// Who a session belongs to: the principal of the request that created it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub issuer: Option<String>,
    pub subject: String,
    pub client_id: Option<String>,
}

impl Owner {
    pub fn of(principal: &Principal) -> Self {
        Self {
            issuer: principal.issuer.clone(),
            subject: principal.id.clone(),
            client_id: principal.client_id.clone(),
        }
    }
}

/// What a request's session id is, seen from its principal.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The caller's own session.
    Own,
    /// A session rmcp knows that belongs to another principal.
    Foreign(Owner),
    /// A session rmcp knows without a binding (should not happen: refused, fail closed).
    Unbound,
    /// A session nobody knows (ended, or never existed).
    Unknown,
}

#[derive(Default)]
struct Bindings {
    owners: HashMap<String, Owner>,
    per_owner: HashMap<Owner, usize>,
}

impl Bindings {
    fn remove(&mut self, id: &str) {
        if let Some(owner) = self.owners.remove(id)
            && let Some(n) = self.per_owner.get_mut(&owner)
        {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(&owner);
            }
        }
    }
}

/// The session bindings of one server.
pub struct Sessions {
    manager: Arc<LocalSessionManager>,
    bindings: Mutex<Bindings>,
    max: usize,
    max_per_owner: usize,
}

impl Sessions {
    pub fn new(manager: Arc<LocalSessionManager>) -> Self {
        Self::with_limits(manager, MAX_SESSIONS, MAX_SESSIONS_PER_PRINCIPAL)
    }

    pub fn with_limits(
        manager: Arc<LocalSessionManager>,
        max: usize,
        max_per_owner: usize,
    ) -> Self {
        Self {
            manager,
            bindings: Mutex::default(),
            max,
            max_per_owner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bindings> {
        self.bindings.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn rmcp_knows(&self, id: &str) -> bool {
        self.manager
            .has_session(&Arc::from(id))
            .await
            .unwrap_or(false)
    }

    /// Whose session `id` is, for `who`.
    pub async fn check(&self, id: &str, who: &Owner) -> Check {
        let owner = self.lock().owners.get(id).cloned();
        match owner {
            Some(o) if &o == who => Check::Own,
            Some(o) => {
                if self.rmcp_knows(id).await {
                    Check::Foreign(o)
                } else {
                    self.lock().remove(id);
                    Check::Unknown
                }
            }
            None if self.rmcp_knows(id).await => Check::Unbound,
            None => Check::Unknown,
        }
    }

    /// Whether `who` may open one more session (dropping bindings of closed sessions first if
    /// the map is full).
    pub async fn has_room(&self, who: &Owner) -> bool {
        if self.room(who) {
            return true;
        }
        self.prune().await;
        self.room(who)
    }

    fn room(&self, who: &Owner) -> bool {
        let b = self.lock();
        b.owners.len() < self.max && b.per_owner.get(who).copied().unwrap_or(0) < self.max_per_owner
    }

    /// Records that `who` created session `id`; false (and nothing recorded) when there is no
    /// room, after dropping the bindings of closed sessions.
    pub async fn bind(&self, id: &str, who: &Owner) -> bool {
        if !self.room(who) {
            self.prune().await;
        }
        let mut b = self.lock();
        if b.owners.contains_key(id) {
            return b.owners.get(id) == Some(who);
        }
        if b.owners.len() >= self.max
            || b.per_owner.get(who).copied().unwrap_or(0) >= self.max_per_owner
        {
            return false;
        }
        b.owners.insert(id.to_owned(), who.clone());
        *b.per_owner.entry(who.clone()).or_default() += 1;
        true
    }

    pub fn unbind(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Drops the binding of `id` if rmcp no longer has the session (a 404 may also be a
    /// JSON-RPC "method not found" inside a live session).
    pub async fn unbind_if_gone(&self, id: &str) {
        if !self.rmcp_knows(id).await {
            self.unbind(id);
        }
    }

    /// Ends a session rmcp opened but that could not be bound.
    pub async fn close(&self, id: &str) {
        if let Err(e) = self.manager.close_session(&Arc::from(id)).await {
            tracing::warn!(error = %e, "cannot close an unbound session");
        }
    }

    /// Drops the bindings of sessions rmcp no longer has.
    pub async fn prune(&self) {
        let live = self.manager.sessions.read().await;
        let mut b = self.lock();
        let gone: Vec<String> = b
            .owners
            .keys()
            .filter(|id| !live.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            b.remove(&id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().owners.len()
    }
}

/// The session id a request carries; `Err` when it carries more than one or one that is not
/// text.
pub fn session_id(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let mut values = headers.get_all(SESSION_HEADER).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    first.to_str().map(|s| Some(s.to_owned())).map_err(|_| ())
}

/// What rmcp answers for a session it does not know, byte for byte.
pub fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Body::from("Not Found: Session not found"),
    )
        .into_response()
}

/// 503 for a principal (or a server) that holds too many sessions.
pub fn too_many() -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({"error": "too many open sessions; close one (DELETE /mcp) or try again later"})),
    )
        .into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("60"),
    );
    r
}

/// Whether a JSON-RPC body is an `initialize` request (the one that creates a session).
pub fn is_initialize(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Method<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Method>(body)
        .ok()
        .and_then(|m| m.method)
        .is_some_and(|m| m == "initialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(sub: &str) -> Owner {
        Owner {
            issuer: Some("https://idp.test".into()),
            subject: sub.into(),
            client_id: Some(sub.into()),
        }
    }

    #[tokio::test]
    async fn bindings_are_bounded_per_principal_and_in_all_and_closed_sessions_are_dropped() {
        let manager = Arc::new(LocalSessionManager::default());
        let sessions = Sessions::with_limits(manager.clone(), 3, 2);
        let (a, b) = (owner("a"), owner("b"));
        // Sessions rmcp really has, so pruning keeps them.
        let mut ids = Vec::new();
        for _ in 0..4 {
            let (id, _transport) = manager.create_session().await.expect("session");
            ids.push(id.to_string());
        }
        assert!(sessions.bind(&ids[0], &a).await);
        assert!(sessions.bind(&ids[1], &a).await);
        assert!(!sessions.has_room(&a).await, "a holds its two");
        assert!(!sessions.bind(&ids[2], &a).await);
        assert!(sessions.bind(&ids[2], &b).await);
        assert!(!sessions.has_room(&b).await, "the map is full");
        assert!(!sessions.bind(&ids[3], &b).await);
        // A binding cannot be taken over by binding the same id again.
        assert!(!sessions.bind(&ids[0], &b).await);
        assert_eq!(sessions.check(&ids[0], &a).await, Check::Own);
        assert_eq!(sessions.check(&ids[0], &b).await, Check::Foreign(a.clone()));
        // Look-alike principals are other principals.
        let mut other_issuer = a.clone();
        other_issuer.issuer = Some("https://idp.test/".into());
        assert!(matches!(
            sessions.check(&ids[0], &other_issuer).await,
            Check::Foreign(_)
        ));
        let mut other_client = a.clone();
        other_client.client_id = None;
        assert!(matches!(
            sessions.check(&ids[0], &other_client).await,
            Check::Foreign(_)
        ));
        assert_eq!(sessions.check(&ids[3], &b).await, Check::Unbound);
        assert_eq!(sessions.check("no-such-session", &b).await, Check::Unknown);
        // rmcp closes a session: its binding goes when the map fills, making room.
        manager
            .close_session(&Arc::from(ids[0].as_str()))
            .await
            .expect("close");
        assert!(sessions.has_room(&b).await);
        assert_eq!(sessions.len(), 2);
        assert!(sessions.bind(&ids[3], &b).await);
        assert_eq!(sessions.check(&ids[0], &a).await, Check::Unknown);
    }

    #[test]
    fn two_session_headers_are_refused_and_initialize_is_recognised() {
        let mut h = HeaderMap::new();
        assert_eq!(session_id(&h), Ok(None));
        h.append(SESSION_HEADER, "one".parse().expect("value"));
        assert_eq!(session_id(&h), Ok(Some("one".into())));
        h.append(SESSION_HEADER, "two".parse().expect("value"));
        assert_eq!(session_id(&h), Err(()));
        assert!(is_initialize(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#
        ));
        assert!(!is_initialize(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#
        ));
        assert!(!is_initialize(b"not json"));
    }
}
