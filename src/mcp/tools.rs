//! The tool surface: names, descriptions, annotations, argument and result schemas. Handlers
//! parse and validate arguments, call the engine, and shape the answer; nothing else.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use futures_util::FutureExt as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{IntoCallToolResult as _, ToolCallContext};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ContentBlock, ErrorCode, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Json, RoleServer, ServerHandler, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ToolError;
use crate::authz::{Principal, Scope};
use crate::engine::{
    Caller, Engine, FindingQuery, FindingsPage, Freshness, IdentityDetail, IdentityQuery,
    IdentitySummary, ProposalQuery, ProposeOutcome, RevokeOutcome,
};
use crate::model::{
    CredentialId, IdentityId, IdentityKind, MESSAGE_MAX_CHARS, Proposal, ProposalId,
    ProposalStatus, Severity, bound_echoes,
};

/// The scopes that let a caller see and call each tool (any one of them).
pub const TOOL_SCOPES: [(&str, &[Scope]); 8] = [
    ("list_identities", &[Scope::Read]),
    ("get_identity", &[Scope::Read]),
    ("list_findings", &[Scope::Read]),
    ("propose_rotation", &[Scope::Propose]),
    ("revoke_identity", &[Scope::Propose, Scope::Apply]),
    ("apply_proposal", &[Scope::Apply]),
    ("get_proposal", &[Scope::Read]),
    ("list_proposals", &[Scope::Read]),
];

fn tool_allowed(name: &str, principal: &Principal) -> bool {
    TOOL_SCOPES
        .iter()
        .find(|(n, _)| *n == name)
        .is_some_and(|(_, scopes)| scopes.iter().any(|s| principal.has(*s)))
}

tokio::task_local! {
    /// Set once a handler has handed the call to the engine, which audits it; a call that fails
    /// before that (arguments that do not parse, an unknown tool) is audited by `call_tool`.
    static REACHED_ENGINE: Cell<bool>;
    /// Who is making the current call: resolved per request in `call_tool`.
    static CURRENT: Principal;
}

/// The scopes (any one of them) a `tools/call` needs, from the raw JSON-RPC body: the HTTP layer
/// answers 403 `insufficient_scope` with them before the call reaches a session. Returns the
/// tool name, its arguments and the scopes; `None` for any other message.
pub fn tool_call_scopes(body: &[u8]) -> Option<(String, Value, &'static [Scope])> {
    let message: Value = serde_json::from_slice(body).ok()?;
    if message.get("method")?.as_str()? != "tools/call" {
        return None;
    }
    let params = message.get("params")?;
    let name = params.get("name")?.as_str()?.to_owned();
    let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
    let scopes: &'static [Scope] = if name == "revoke_identity" {
        // Proposing needs `nhi:propose`; executing with a token needs `nhi:apply`.
        if arguments
            .get("approval_token")
            .is_some_and(|t| !t.is_null())
        {
            &[Scope::Apply]
        } else {
            &[Scope::Propose]
        }
    } else {
        TOOL_SCOPES.iter().find(|(n, _)| *n == name)?.1
    };
    Some((name, arguments, scopes))
}

fn reached_engine() {
    let _ = REACHED_ENGINE.try_with(|c| c.set(true));
}

// ---- arguments -------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListIdentitiesArgs {
    /// Only identities of this provider (its configured name).
    pub provider: Option<String>,
    /// Only identities of this kind.
    pub kind: Option<IdentityKind>,
    /// Exact owner.
    pub owner: Option<String>,
    /// Exact environment, e.g. `prod`.
    pub environment: Option<String>,
    /// Case-insensitive text in the id, name, purpose or owner.
    pub text: Option<String>,
    /// Only identities with this finding: an OWASP id (`NHI7`) or a rule (`unused`, `privileged`, ...).
    pub finding: Option<String>,
    /// Only identities unused for at least this many days (never-used ones included).
    pub unused_for_days: Option<u32>,
    /// Only identities with an active credential at least this many days old.
    pub credential_age_days: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
    /// Read the providers live instead of the cached inventory (slower; the result's
    /// `freshness` says what was used).
    pub refresh: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityArgs {
    /// `<provider>:<native id>`, e.g. `demo-aws:user/ci-deploy`.
    #[schemars(with = "String")]
    pub identity_id: IdentityId,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFindingsArgs {
    /// Only this identity's findings.
    #[schemars(with = "Option<String>")]
    pub identity_id: Option<IdentityId>,
    /// Only findings of this provider (its configured name).
    pub provider: Option<String>,
    /// Only findings at least this severe.
    pub severity: Option<Severity>,
    /// An OWASP NHI Top 10 id (`NHI1`..`NHI10`) or a rule (`credential_too_old`, ...).
    pub finding: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
    /// Read the providers live instead of the cached inventory (slower; the result's
    /// `freshness` says what was used).
    pub refresh: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeRotationArgs {
    /// The identity whose credential to rotate: `<provider>:<native id>`.
    #[schemars(with = "String")]
    pub identity_id: IdentityId,
    /// The credential to rotate; required when the identity has more than one active credential.
    #[schemars(with = "Option<String>")]
    pub credential_id: Option<CredentialId>,
    /// How long the old credential stays valid after the new one is delivered: `0s` for a leaked
    /// credential, up to `30d`. Default `1h`.
    pub grace_period: Option<String>,
    /// Why, for the approver and the audit log (at most 1000 characters).
    pub reason: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeIdentityArgs {
    /// The identity to revoke: `<provider>:<native id>`.
    #[schemars(with = "String")]
    pub identity_id: IdentityId,
    /// Why; required when proposing.
    pub reason: Option<String>,
    /// The token an admin issued when approving the revocation proposal. Without it the call
    /// proposes; with it the call executes.
    pub approval_token: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyProposalArgs {
    /// The approved proposal: `prop_` and 32 hex digits.
    #[schemars(with = "String")]
    pub proposal_id: ProposalId,
    /// The approval token an admin issued for exactly this proposal.
    pub approval_token: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposalArgs {
    /// `prop_` and 32 hex digits.
    #[schemars(with = "String")]
    pub proposal_id: ProposalId,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProposalsArgs {
    /// Only proposals in this state.
    pub status: Option<ProposalStatus>,
    /// Only proposals for this identity: `<provider>:<native id>`.
    #[schemars(with = "Option<String>")]
    pub identity_id: Option<IdentityId>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

// ---- results ---------------------------------------------------------------------------------

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListIdentitiesResult {
    pub identities: Vec<IdentitySummary>,
    pub next_cursor: Option<String>,
    /// How fresh the data is, per provider: `live` (read for this call) or `cache` (read
    /// `age_secs` ago by the background refresh; pass `refresh: true` to read live).
    pub freshness: Vec<Freshness>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProposalResult {
    pub proposal: Proposal,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListProposalsResult {
    pub proposals: Vec<Proposal>,
    pub next_cursor: Option<String>,
}

// ---- the server ------------------------------------------------------------------------------

/// The tools with schemas common validators accept, and validate quickly:
///
/// - schemars writes `format: uint32` (and `uint64`, `uint`) for unsigned integers, a format
///   JSON Schema does not define and Ajv rejects in strict mode; `minimum: 0` already says it.
/// - Each `$ref` to `$defs` is replaced by the definition it names, so a schema is one tree
///   (a recursive type would keep its `$defs`; none is).
///   Clients that check a result against its tool's output schema resolve a `$ref` for every
///   item: the MCP Python SDK took 38 ms to check a page of 500 identities with references and
///   26 ms without. Some clients also resolve no `$ref` at all. No type here is recursive.
///
/// Built once per process: every session clones it.
fn contract_router() -> ToolRouter<NhiServer> {
    static ROUTER: std::sync::LazyLock<ToolRouter<NhiServer>> = std::sync::LazyLock::new(|| {
        let mut router = NhiServer::tool_router();
        for route in router.map.values_mut() {
            let tool = &mut route.attr;
            tool.input_schema = Arc::new(contract_schema(&tool.input_schema));
            if let Some(output) = &tool.output_schema {
                tool.output_schema = Some(Arc::new(contract_schema(output)));
            }
        }
        router
    });
    ROUTER.clone()
}

/// `schema` without unsigned-integer formats and with its definitions inlined.
fn contract_schema(schema: &serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let mut inlined = schema.clone();
    let defs = match inlined.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => serde_json::Map::new(),
    };
    // A recursive type, or a reference to nothing defined here, cannot be one tree: that schema
    // keeps its `$defs` (the test of `contract_router` says no tool's schema does).
    let mut schema = match inline_refs(&mut inlined, &defs, &mut Vec::new()) {
        Ok(()) => inlined,
        Err(Unresolved) => schema.clone(),
    };
    drop_unsigned_formats(&mut schema);
    schema
}

/// A `$ref` that `inline_refs` cannot replace.
struct Unresolved;

/// Keywords that describe and do not constrain: a referring object's own ones go on top of
/// the definition it names. Any other keyword beside a `$ref` must hold as well as the
/// definition, so the two are kept apart under `allOf`.
const ANNOTATIONS: [&str; 7] = [
    "description",
    "title",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Replaces every `{"$ref": "#/$defs/Name", ...}` in `schema` by `Name`'s definition (itself
/// inlined). `expanding` holds the definitions being inlined, to tell a recursive type.
fn inline_refs<'d>(
    schema: &mut serde_json::Map<String, Value>,
    defs: &'d serde_json::Map<String, Value>,
    expanding: &mut Vec<&'d str>,
) -> Result<(), Unresolved> {
    for value in schema.values_mut() {
        match value {
            Value::Object(map) => inline_refs(map, defs, expanding)?,
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(map) = item {
                        inline_refs(map, defs, expanding)?;
                    }
                }
            }
            _ => {}
        }
    }
    let Some(reference) = schema.remove("$ref") else {
        return Ok(());
    };
    let (name, definition) = reference
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs.get_key_value(name))
        .and_then(|(name, d)| Some((name.as_str(), d.as_object()?)))
        .ok_or(Unresolved)?;
    if expanding.contains(&name) {
        return Err(Unresolved);
    }
    let mut inlined = definition.clone();
    expanding.push(name);
    let done = inline_refs(&mut inlined, defs, expanding);
    expanding.pop();
    done?;
    let own = std::mem::take(schema);
    if own.keys().all(|k| ANNOTATIONS.contains(&k.as_str())) {
        inlined.extend(own);
        *schema = inlined;
    } else {
        *schema = own;
        schema.insert(
            "allOf".to_owned(),
            Value::Array(vec![Value::Object(inlined)]),
        );
    }
    Ok(())
}

fn drop_unsigned_formats(schema: &mut serde_json::Map<String, Value>) {
    if schema
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| f.starts_with("uint"))
    {
        schema.remove("format");
    }
    for value in schema.values_mut() {
        match value {
            Value::Object(map) => drop_unsigned_formats(map),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(map) = item {
                        drop_unsigned_formats(map);
                    }
                }
            }
            _ => {}
        }
    }
}

/// One MCP session's server. The caller of each request is the principal the HTTP layer
/// authenticated (a bearer token), else the configured one (stdio, or HTTP without `[auth]`).
#[derive(Clone)]
pub struct NhiServer {
    engine: Arc<Engine>,
    /// `None` when every request must carry an authenticated principal.
    default_principal: Option<Principal>,
    tool_router: ToolRouter<Self>,
}

impl NhiServer {
    /// A server whose callers are all `principal` (stdio; loopback HTTP without `[auth]`).
    pub fn new(engine: Arc<Engine>, principal: Principal) -> Self {
        Self {
            engine,
            default_principal: Some(principal),
            tool_router: contract_router(),
        }
    }

    /// A server that answers only requests the HTTP layer authenticated.
    pub fn authenticated(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            default_principal: None,
            tool_router: contract_router(),
        }
    }

    fn principal_of(&self, context: &RequestContext<RoleServer>) -> Option<Principal> {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .or_else(|| self.default_principal.clone())
    }

    /// Every tool definition, unfiltered (for `tools export`).
    pub fn all_tools() -> Vec<Tool> {
        contract_router().list_all()
    }

    fn caller(&self, tool: &str, args: &impl Serialize) -> Caller {
        reached_engine();
        let principal = CURRENT
            .try_with(Clone::clone)
            .unwrap_or_else(|_| Principal::new("unauthenticated", []));
        Caller::new(
            &principal,
            tool,
            serde_json::to_value(args).unwrap_or(Value::Null),
        )
    }
}

#[tool_router]
impl NhiServer {
    #[tool(
        title = "List non-human identities",
        description = "List non-human identities (service users, roles, database roles, deploy keys, apps, service accounts, API tokens) across the connected systems, with optional filters. Results are paged in a stable order: pass `next_cursor` back as `cursor`. Read-only.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_identities(
        &self,
        Parameters(args): Parameters<ListIdentitiesArgs>,
    ) -> Result<Json<ListIdentitiesResult>, ToolError> {
        let query = IdentityQuery {
            provider: args.provider.clone(),
            kind: args.kind,
            owner: args.owner.clone(),
            environment: args.environment.clone(),
            text: args.text.clone(),
            finding: args.finding.clone(),
            unused_for_days: args.unused_for_days,
            credential_age_days: args.credential_age_days,
            cursor: args.cursor.clone(),
            limit: args.limit,
            refresh: args.refresh.unwrap_or(false),
        };
        let caller = self.caller("list_identities", &query_args(&args));
        let page = self.engine.list_identities(&caller, query).await?;
        Ok(Json(ListIdentitiesResult {
            identities: page.items,
            next_cursor: page.next_cursor,
            freshness: page.freshness,
        }))
    }

    #[tool(
        title = "Get one identity",
        description = "One identity in full: credentials (metadata only, never secrets), permissions summary, owner, last use, posture findings and open proposals. Read-only.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_identity(
        &self,
        Parameters(args): Parameters<IdentityArgs>,
    ) -> Result<Json<IdentityDetail>, ToolError> {
        let caller = self.caller(
            "get_identity",
            &serde_json::json!({"identity_id": args.identity_id}),
        );
        Ok(Json(
            self.engine.get_identity(&caller, &args.identity_id).await?,
        ))
    }

    #[tool(
        title = "List posture findings",
        description = "Posture findings computed from identity data, each with its OWASP Non-Human Identities Top 10 id, severity, evidence and the threshold used, most severe first; with summary counts over all pages. Read-only.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_findings(
        &self,
        Parameters(args): Parameters<ListFindingsArgs>,
    ) -> Result<Json<FindingsPage>, ToolError> {
        let caller = self.caller("list_findings", &finding_args(&args));
        let query = FindingQuery {
            identity_id: args.identity_id,
            provider: args.provider,
            severity: args.severity,
            finding: args.finding,
            cursor: args.cursor,
            limit: args.limit,
            refresh: args.refresh.unwrap_or(false),
        };
        Ok(Json(self.engine.list_findings(&caller, query).await?))
    }

    #[tool(
        title = "Propose a credential rotation",
        description = "Create a rotation proposal for one credential of an identity (or return the open one for the same change). Nothing changes until a human admin approves it outside this session and you call `apply_proposal` with the approval token. The result carries the plan, the digest and how to get it approved. Rotation creates the new credential, delivers its secret to the configured secret sink (never to you), keeps the old one valid for the grace period, then deactivates and deletes it.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn propose_rotation(
        &self,
        Parameters(args): Parameters<ProposeRotationArgs>,
    ) -> Result<Json<ProposeOutcome>, ToolError> {
        let caller = self.caller(
            "propose_rotation",
            &serde_json::json!({"identity_id": args.identity_id, "credential_id": args.credential_id, "grace_period": args.grace_period, "reason": args.reason}),
        );
        Ok(Json(
            self.engine
                .propose_rotation(
                    &caller,
                    &args.identity_id,
                    args.credential_id.as_ref(),
                    args.grace_period.as_deref(),
                    &args.reason,
                )
                .await?,
        ))
    }

    #[tool(
        title = "Revoke an identity",
        description = "Without `approval_token`: create the revocation proposal (every active credential deactivated, sign-in disabled; the identity itself is kept) and report its blast radius; a human admin must approve it. With the `approval_token` an admin issued for that proposal: execute the revocation.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn revoke_identity(
        &self,
        Parameters(args): Parameters<RevokeIdentityArgs>,
    ) -> Result<Json<RevokeOutcome>, ToolError> {
        let caller = self.caller(
            "revoke_identity",
            &serde_json::json!({"identity_id": args.identity_id, "reason": args.reason, "approval_token": args.approval_token}),
        );
        Ok(Json(
            self.engine
                .revoke_identity(
                    &caller,
                    &args.identity_id,
                    args.reason.as_deref(),
                    args.approval_token.as_deref(),
                )
                .await?,
        ))
    }

    #[tool(
        title = "Apply an approved proposal",
        description = "Execute an approved proposal, given the approval token an admin issued for exactly this proposal. The token works once, expires (15 minutes by default), and is refused if the target changed since the proposal was made. The result names where a new secret was delivered, never the secret.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn apply_proposal(
        &self,
        Parameters(args): Parameters<ApplyProposalArgs>,
    ) -> Result<Json<ProposalResult>, ToolError> {
        let caller = self.caller(
            "apply_proposal",
            &serde_json::json!({"proposal_id": args.proposal_id, "approval_token": args.approval_token}),
        );
        let proposal = self
            .engine
            .apply_proposal(&caller, &args.proposal_id, &args.approval_token)
            .await?;
        Ok(Json(ProposalResult { proposal }))
    }

    #[tool(
        title = "Get a proposal",
        description = "One proposal: status, plan, digest, approvals, execution steps and outcome. Read-only.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_proposal(
        &self,
        Parameters(args): Parameters<ProposalArgs>,
    ) -> Result<Json<ProposalResult>, ToolError> {
        let caller = self.caller(
            "get_proposal",
            &serde_json::json!({"proposal_id": args.proposal_id}),
        );
        let proposal = self.engine.get_proposal(&caller, &args.proposal_id).await?;
        Ok(Json(ProposalResult { proposal }))
    }

    #[tool(
        title = "List proposals",
        description = "Proposals, optionally by status or identity, in a stable order, paged with `next_cursor`. Read-only.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_proposals(
        &self,
        Parameters(args): Parameters<ListProposalsArgs>,
    ) -> Result<Json<ListProposalsResult>, ToolError> {
        let caller = self.caller(
            "list_proposals",
            &serde_json::json!({"status": args.status, "identity_id": args.identity_id, "cursor": args.cursor, "limit": args.limit}),
        );
        let query = ProposalQuery {
            status: args.status,
            identity_id: args.identity_id,
            cursor: args.cursor,
            limit: args.limit,
        };
        let page = self.engine.list_proposals(&caller, query).await?;
        Ok(Json(ListProposalsResult {
            proposals: page.items,
            next_cursor: page.next_cursor,
        }))
    }
}

impl NhiServer {
    /// Runs the tool. In unit tests, the tool `test_panic` panics, to prove `call_tool` answers
    /// anyway.
    async fn dispatch(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        #[cfg(test)]
        if request.name == "test_panic" {
            panic!("injected by a test");
        }
        self.tool_router
            .call(ToolCallContext::new(self, request, context))
            .await
    }
}

fn query_args(a: &ListIdentitiesArgs) -> Value {
    serde_json::json!({
        "provider": a.provider, "kind": a.kind, "owner": a.owner, "environment": a.environment,
        "text": a.text, "finding": a.finding, "unused_for_days": a.unused_for_days,
        "credential_age_days": a.credential_age_days, "cursor": a.cursor, "limit": a.limit,
        "refresh": a.refresh,
    })
}

fn finding_args(a: &ListFindingsArgs) -> Value {
    serde_json::json!({
        "identity_id": a.identity_id, "provider": a.provider, "severity": a.severity,
        "finding": a.finding, "cursor": a.cursor, "limit": a.limit, "refresh": a.refresh,
    })
}

impl ServerHandler for NhiServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("nhi-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "nhi-mcp governs non-human identities. Look with list_identities, get_identity and list_findings; ask with propose_rotation or revoke_identity. A human admin approves outside this session and hands you an approval token; apply it with apply_proposal. Secrets never come back to you: they go to the configured secret sink.".to_owned(),
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = self.principal_of(&context);
        let tools = self
            .tool_router
            .list_all()
            .into_iter()
            .filter(|t| principal.as_ref().is_some_and(|p| tool_allowed(&t.name, p)))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router.get(name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let arguments = request
            .arguments
            .clone()
            .map(Value::Object)
            .unwrap_or(Value::Null);
        let Some(principal) = self.principal_of(&context) else {
            // Fail closed: the HTTP layer lets no request through without a principal.
            let caller = Caller::new(
                &Principal::new("unauthenticated", []),
                &audited_action(&self.tool_router, &name),
                crate::audit::unparsed_arguments(&arguments),
            );
            self.engine
                .audit_invalid_call(&caller, "not authenticated")
                .await;
            return Err(ErrorData::invalid_request("not authenticated", None));
        };
        // A handler that panics still gets its request an answer: an internal error, logged
        // with the tool's name, never the arguments (they may carry a token).
        let call = CURRENT.scope(
            principal.clone(),
            REACHED_ENGINE.scope(Cell::new(false), async {
                let r = self.dispatch(request, context).await;
                (r, REACHED_ENGINE.with(Cell::get))
            }),
        );
        let result = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(done) => done,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    tool = %name,
                    panic = %crate::model::one_line(&what, MESSAGE_MAX_CHARS),
                    "tool handler panicked; answered with an internal error"
                );
                (ToolError::Internal.into_call_tool_result(), false)
            }
        };
        let (response, reached) = result;
        let response = bounded(response);
        let refused = match &response {
            Err(e) => Some(
                if e.code == ErrorCode::METHOD_NOT_FOUND || self.tool_router.get(&name).is_none() {
                    format!("unknown tool {}", crate::model::quote_input(&name))
                } else {
                    e.message.to_string()
                },
            ),
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => Some(
                r.content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Ok(_) => None,
        };
        if let Some(what) = refused
            && !reached
        {
            // Arguments that did not parse are kept only redacted, cut short and digested; an
            // unknown tool's name is input too.
            let caller = Caller::new(
                &principal,
                &audited_action(&self.tool_router, &name),
                crate::audit::unparsed_arguments(&arguments),
            );
            self.engine.audit_invalid_call(&caller, &what).await;
        }
        response
    }
}

/// The action an audit record names: the tool, or for an unknown name (input like any other)
/// that name bounded and redacted.
fn audited_action(router: &ToolRouter<NhiServer>, name: &str) -> String {
    if router.get(name).is_some() {
        name.to_owned()
    } else {
        crate::audit::redact_text(&crate::model::one_line(name, 64), false)
    }
}

/// Every error text a caller gets is one line and echoes at most 64 characters of any input,
/// whoever wrote it (our handlers, or serde's messages about arguments that do not parse).
fn bounded(response: Result<CallToolResponse, ErrorData>) -> Result<CallToolResponse, ErrorData> {
    match response {
        Ok(CallToolResponse::Complete(mut r)) if r.is_error == Some(true) => {
            for c in &mut r.content {
                if let Some(t) = c.as_text() {
                    *c = ContentBlock::text(bound_echoes(&t.text));
                }
            }
            Ok(CallToolResponse::Complete(r))
        }
        Err(mut e) => {
            e.message = bound_echoes(&e.message).into();
            Err(e)
        }
        other => other,
    }
}

/// Writes one JSON file per tool into `dir`: the agent-facing contract, reviewed in diffs.
pub fn export_tools(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for tool in NhiServer::all_tools() {
        let mut value = serde_json::to_value(&tool).map_err(std::io::Error::other)?;
        let scopes: Vec<&str> = TOOL_SCOPES
            .iter()
            .find(|(n, _)| *n == tool.name)
            .map(|(_, s)| s.iter().map(|s| s.as_str()).collect())
            .unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.insert("requiredScopes".into(), serde_json::json!(scopes));
        }
        let text =
            crate::model::canonical::to_canonical_json(&value).map_err(std::io::Error::other)?;
        let pretty: Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        let path = dir.join(format!("{}.json", tool.name));
        std::fs::write(
            &path,
            format!(
                "{}\n",
                serde_json::to_string_pretty(&pretty).map_err(std::io::Error::other)?
            ),
        )?;
        written.push(tool.name.to_string());
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use rmcp::ServiceExt as _;
    use rmcp::model::{CallToolRequestParams, ClientConfig};

    use super::*;
    use crate::config::{Config, Overrides};

    /// Issue 8: a handler that panics answers its request with an internal error, and the
    /// session goes on serving.
    #[tokio::test]
    async fn a_panicking_handler_still_answers_and_the_session_goes_on() {
        let dir = tempfile::tempdir().expect("dir");
        let overrides = Overrides {
            config_file: None,
            data_dir: Some(dir.path().join("data")),
        };
        let config = Config::from_toml("", None, &overrides).expect("config");
        let engine = Arc::new(
            crate::cli::compose::open_engine(&config)
                .await
                .expect("engine"),
        );
        let server = NhiServer::new(engine, config.stdio_principal.clone());
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(async move {
            let running = server.serve(server_io).await.expect("serve");
            let _ = running.waiting().await;
        });
        let client = ClientConfig::default()
            .serve(client_io)
            .await
            .expect("handshake");
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.call_tool(CallToolRequestParams::new("test_panic")),
        )
        .await
        .expect("an answer, not silence")
        .expect("a result");
        assert_eq!(answer.is_error, Some(true));
        let text = answer.content[0].as_text().map(|t| t.text.clone());
        assert_eq!(
            text.as_deref(),
            Some("internal error; the server log has the details")
        );
        let after = client
            .call_tool(CallToolRequestParams::new("list_proposals"))
            .await
            .expect("still serving");
        assert_ne!(after.is_error, Some(true));
        let _ = client.cancel().await;
        serving.abort();
    }

    /// Issue 8: a description on every input property, `limit` within 1 to 500, and no
    /// `uint` formats that validators reject. Issue 9: every schema is one tree, with no
    /// `$ref` for a client to resolve.
    #[test]
    fn tool_schemas_are_described_bounded_and_portable() {
        for tool in NhiServer::all_tools() {
            let input = Value::Object((*tool.input_schema).clone());
            for (name, property) in input["properties"].as_object().into_iter().flatten() {
                assert!(
                    property["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{}.{name} has no description",
                    tool.name
                );
                if name == "limit" {
                    assert_eq!(property["minimum"], 1, "{}", tool.name);
                    assert_eq!(property["maximum"], 500, "{}", tool.name);
                }
            }
            let all = serde_json::to_string(&tool).expect("json");
            assert!(!all.contains("\"uint"), "{} has a uint format", tool.name);
            assert!(!all.contains("\"$ref\""), "{} has a $ref", tool.name);
            assert!(!all.contains("\"$defs\""), "{} has $defs", tool.name);
        }
    }

    /// A reference becomes its definition, nested ones too, with the referring object's own
    /// annotations on top, and its other keywords beside the definition under `allOf`.
    #[test]
    fn definitions_are_inlined_with_the_referring_keywords_kept() {
        let schema = serde_json::json!({
            "$defs": {
                "Id": {"type": "string", "description": "an id"},
                "Pair": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Id"}}},
            },
            "properties": {
                "pair": {"$ref": "#/$defs/Pair", "description": "the pair"},
                "maybe": {"anyOf": [{"$ref": "#/$defs/Id"}, {"type": "null"}]},
                "short": {"$ref": "#/$defs/Id", "maxLength": 3},
                "list": {"type": "array", "items": {"$ref": "#/$defs/Id"}},
            },
        });
        let Value::Object(schema) = schema else {
            unreachable!()
        };
        let id = serde_json::json!({"type": "string", "description": "an id"});
        assert_eq!(
            Value::Object(contract_schema(&schema)),
            serde_json::json!({
                "properties": {
                    "pair": {
                        "type": "object",
                        "description": "the pair",
                        "properties": {"a": id},
                    },
                    "maybe": {"anyOf": [id, {"type": "null"}]},
                    "short": {"maxLength": 3, "allOf": [id]},
                    "list": {"type": "array", "items": id},
                },
            })
        );
    }

    /// A recursive type, or a reference to nothing defined, leaves the schema as it was (with
    /// its `$defs`, so every reference still resolves), and the inlining ends.
    #[test]
    fn a_schema_that_cannot_be_one_tree_keeps_its_definitions() {
        for schema in [
            serde_json::json!({
                "$defs": {"Node": {"type": "object", "properties": {
                    "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                }}},
                "properties": {"head": {"$ref": "#/$defs/Node"}},
            }),
            serde_json::json!({
                "$defs": {"Id": {"type": "string"}},
                "properties": {"a": {"$ref": "#/$defs/Id"}, "b": {"$ref": "#/$defs/Missing"}},
            }),
            serde_json::json!({"properties": {"a": {"$ref": 7}}}),
        ] {
            let Value::Object(map) = &schema else {
                unreachable!()
            };
            assert_eq!(Value::Object(contract_schema(map)), schema);
        }
    }
}
