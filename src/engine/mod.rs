//! The use cases. Every call goes: authorize (scopes) → store / provider → audit.
//! Transports and tool handlers call in here and stay thin; this module knows nothing of MCP,
//! HTTP or SQL.

mod admin_read;
mod audit_writer;
mod checkpoint;
mod cursor;
mod execute;
mod index;
#[cfg(test)]
mod index_guard;
mod inventory;
mod proof;
mod query;
mod workflow;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::audit::{AuditEntry, Decision};
use crate::authz::{ApprovalKey, Policy, PolicyAction, PolicyDecision, Principal, Scope};
use crate::config::Config;
use crate::model::{Identity, IdentityId, ProposalId, Thresholds};
use crate::ports::{Provider, ProviderError, SecretSink};
use crate::store::{Store, StoreError};

pub use crate::ports::ApprovedPlan;
pub use cursor::Page;
pub use query::{
    FindingQuery, FindingsPage, FindingsSummary, Freshness, IdentitiesPage, IdentityDetail,
    IdentityQuery, IdentitySummary,
};
pub use workflow::{ApprovalOutcome, ApproveResult, ProposalQuery, ProposeOutcome, RevokeOutcome};

/// How long one provider call may take before it counts as unavailable.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on reading a provider's whole inventory (see `list_with_timeout`).
const LIST_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors the engine answers with. The transport decides how each is shown; none carries
/// secret material.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Malformed arguments: the caller must fix the call.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown, or hidden from the caller: the two are answered alike.
    #[error("{0}")]
    NotFound(String),
    #[error("this call needs the `{scope}` scope, which `{principal}` does not hold")]
    MissingScope { scope: Scope, principal: String },
    /// The request is well-formed but refused (token checks, state conflicts); the message says why.
    #[error("{0}")]
    Refused(String),
    /// The target changed since the proposal's snapshot; the proposal was expired and the
    /// refusal audited in that same transaction.
    #[error("{0}")]
    Stale(String),
    #[error("{0}")]
    Provider(#[from] ProviderError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<crate::model::InvalidInput> for EngineError {
    fn from(e: crate::model::InvalidInput) -> Self {
        Self::InvalidArgument(e.0)
    }
}

impl EngineError {
    fn decision(&self) -> Decision {
        match self {
            Self::MissingScope { .. } | Self::Refused(_) | Self::Stale(_) => Decision::Deny,
            _ => Decision::Error,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Who is calling which tool with which arguments, for authorization and the audit record.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub tool: String,
    /// The call's arguments, already redacted: secrets (an approval token under any name) are
    /// gone before anything holds or logs a `Caller`.
    arguments: Value,
    /// SHA-256 of the arguments as received, for the audit record.
    arguments_digest: String,
    /// The policies behind the decisions made for this call, for its audit record.
    policy_ids: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Caller {
    /// A call by `principal`; the arguments are redacted here, and the raw value dropped.
    pub fn new(principal: &Principal, tool: &str, arguments: Value) -> Self {
        Self {
            principal: principal.clone(),
            tool: tool.to_owned(),
            arguments_digest: crate::model::canonical::digest(&arguments).unwrap_or_default(),
            arguments: crate::audit::redact(&arguments),
            policy_ids: Arc::default(),
        }
    }

    /// The redacted arguments.
    pub fn arguments(&self) -> &Value {
        &self.arguments
    }

    fn record_policies(&self, decision: &PolicyDecision) {
        let mut ids = self.policy_ids.lock().unwrap_or_else(|e| e.into_inner());
        for id in &decision.policy_ids {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }

    fn entry(&self, decision: Decision) -> AuditEntry {
        let ids = self
            .policy_ids
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default();
        AuditEntry::new(&self.principal.id, &self.tool, &self.arguments, decision)
            .arguments_digest(self.arguments_digest.clone())
            .caller(&self.principal)
            .policies(ids)
    }
}

pub struct Engine {
    store: Store,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    /// Each provider's secret sink.
    sinks: BTreeMap<String, Arc<dyn SecretSink>>,
    approval: ApprovalKey,
    thresholds: Thresholds,
    proposal_ttl: Duration,
    required_approvals: u32,
    step_pause: Duration,
    policy: Policy,
    max_proposals_per_hour: Option<u32>,
    /// The cached inventories of the providers with a non-zero `refresh`.
    inventory: inventory::InventoryCache,
    /// Writes the audit records of calls that change nothing, in group commits.
    audit: audit_writer::AuditWriter,
    /// Whether this process serves the admin API (HTTP with `[auth]`): `how_to_approve` names
    /// only channels that exist.
    admin_api: std::sync::atomic::AtomicBool,
}

impl Engine {
    /// Opens the store, the approval key and the policy, with providers and their secret
    /// sinks already built (by start-up code: `cli::compose`), each keyed by the provider's
    /// configured name. Every provider needs a sink.
    pub async fn open(
        config: &Config,
        providers: BTreeMap<String, Arc<dyn Provider>>,
        sinks: BTreeMap<String, Arc<dyn SecretSink>>,
    ) -> anyhow::Result<Self> {
        if let Some(name) = providers.keys().find(|name| !sinks.contains_key(*name)) {
            anyhow::bail!("provider `{name}` has no secret sink");
        }
        let mut engine = Self::open_without_providers(config).await?;
        engine.providers = providers;
        engine.sinks = sinks;
        Ok(engine)
    }

    /// Opens the store, the approval key and the policy, and no provider: for the commands that
    /// decide on proposals and read the audit log, so an approver needs no provider's
    /// credentials. Calls that reach a provider answer as for an unknown identity.
    pub async fn open_without_providers(config: &Config) -> anyhow::Result<Self> {
        create_private_dir(&config.data_dir)?;
        let store = Store::open(&config.database).await?;
        let approval = ApprovalKey::load_or_create(
            &config.approval.key_file,
            &config.approval.issuer,
            config.approval.token_ttl,
        )?;
        let policy = Policy::load(&config.policy_files)?;
        let inventory = inventory::InventoryCache::new(
            config
                .providers
                .iter()
                .map(|p| (p.name.to_string(), p.refresh)),
        );
        Ok(Self {
            inventory,
            audit: audit_writer::AuditWriter::new(store.clone()),
            policy,
            max_proposals_per_hour: config.max_proposals_per_hour,
            store,
            providers: BTreeMap::new(),
            sinks: BTreeMap::new(),
            approval,
            thresholds: config.thresholds,
            proposal_ttl: config.approval.proposal_ttl,
            required_approvals: config.approval.required_approvals,
            step_pause: config.step_pause,
            admin_api: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records that the admin API is served, so proposals name it as a way to approve.
    pub fn set_admin_api_served(&self) {
        self.admin_api
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn admin_api_served(&self) -> bool {
        self.admin_api.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Cedar's decision on `action` against `identity`, recorded for the call's audit record.
    /// An identity the caller may not read is answered exactly like a missing one.
    fn authorize(
        &self,
        caller: &Caller,
        action: PolicyAction,
        identity: &Identity,
    ) -> Result<PolicyDecision> {
        if action != PolicyAction::Read && action != PolicyAction::Approve {
            let read = self
                .policy
                .decide(&caller.principal, PolicyAction::Read, identity);
            if !read.allowed {
                caller.record_policies(&read);
                return Err(not_found_identity(&identity.id));
            }
        }
        let decision = self.policy.decide(&caller.principal, action, identity);
        caller.record_policies(&decision);
        if decision.allowed {
            return Ok(decision);
        }
        Err(match action {
            PolicyAction::Read => not_found_identity(&identity.id),
            other => EngineError::Refused(format!(
                "policy does not allow `{}` to {} `{}`",
                caller.principal.id,
                other.as_str().replace('_', " "),
                identity.id
            )),
        })
    }

    /// Whether policy lets the caller see `identity` (for filtering lists).
    fn may_read(&self, caller: &Caller, identity: &Identity) -> bool {
        self.policy
            .decide(&caller.principal, PolicyAction::Read, identity)
            .allowed
    }

    pub fn provider_names(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    /// Refuses (and audits the refusal) unless the caller holds `scope`.
    async fn require(&self, caller: &Caller, scope: Scope) -> Result<()> {
        if caller.principal.has(scope) {
            return Ok(());
        }
        let err = EngineError::MissingScope {
            scope,
            principal: caller.principal.id.clone(),
        };
        self.audit_failure(caller, &err, None).await;
        Err(err)
    }

    /// Audits a call that changed nothing: allowed reads.
    async fn audit_read(&self, caller: &Caller, outcome: String) -> Result<()> {
        self.audit
            .append(caller.entry(Decision::Allow).outcome(outcome))
            .await?;
        Ok(())
    }

    /// Audits a refused or failed call. A failure to audit is logged: the caller still gets the
    /// original error, and nothing was changed.
    async fn audit_failure(
        &self,
        caller: &Caller,
        err: &EngineError,
        proposal: Option<&ProposalId>,
    ) {
        let mut entry = caller.entry(err.decision()).reason(err.to_string());
        if let Some(p) = proposal {
            entry = entry.proposal(p.as_str());
        }
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, tool = %caller.tool, "cannot write the audit record of a refused call");
        }
    }

    /// Records a request the transport refused (no or bad credentials, missing scope).
    pub async fn audit_denied(&self, caller: &Caller, reason: &str) {
        self.audit_failure(caller, &EngineError::Refused(reason.to_owned()), None)
            .await;
    }

    /// Records a call whose arguments did not parse; the transport calls this before answering.
    pub async fn audit_invalid_call(&self, caller: &Caller, message: &str) {
        self.audit_failure(
            caller,
            &EngineError::InvalidArgument(message.to_owned()),
            None,
        )
        .await;
    }

    /// Runs `result` through the audit: failures are recorded (successes audit themselves).
    async fn finish<T>(
        &self,
        caller: &Caller,
        result: Result<T>,
        proposal: Option<&ProposalId>,
    ) -> Result<T> {
        if let Err(e) = &result {
            if let EngineError::Internal(detail) = e {
                tracing::error!(tool = %caller.tool, %detail, "internal error");
            }
            // Both are audited where they arise (the stale refusal with its state change).
            if !matches!(e, EngineError::MissingScope { .. } | EngineError::Stale(_)) {
                self.audit_failure(caller, e, proposal).await;
            }
        }
        result
    }

    fn provider_for(&self, id: &IdentityId) -> Result<&Arc<dyn Provider>> {
        self.providers
            .get(id.provider())
            .ok_or_else(|| not_found_identity(id))
    }

    /// The identity as its provider sees it now (also put into the provider's cached
    /// inventory, if it has one, so lists agree with it).
    async fn fetch_identity(&self, id: &IdentityId) -> Result<Identity> {
        let provider = self.provider_for(id)?;
        let read_at = std::time::Instant::now();
        let found = with_timeout(provider.get(id), provider.name().as_str()).await?;
        self.note_identity(id, found.as_ref(), read_at).await;
        found.ok_or_else(|| not_found_identity(id))
    }

    /// What provider `name` can do with its credentials (`config check`).
    pub async fn provider_capabilities(&self, name: &str) -> Result<Vec<String>> {
        let p = self.providers.get(name).ok_or_else(|| {
            EngineError::InvalidArgument(format!("provider `{name}` is not configured"))
        })?;
        with_timeout(p.capabilities(), name).await
    }

    fn sink_for(&self, provider: &str) -> Result<&Arc<dyn SecretSink>> {
        self.sinks.get(provider).ok_or_else(|| {
            EngineError::Internal(format!("provider `{provider}` has no secret sink"))
        })
    }
}

/// Who decides what a principal may read, as a key for kept decisions: everything about the
/// principal the policy sees.
fn principal_key(p: &Principal) -> Arc<str> {
    serde_json::json!([p.id, p.scope_list(), p.issuer, p.client_id])
        .to_string()
        .into()
}

fn not_found_identity(id: &IdentityId) -> EngineError {
    EngineError::NotFound(format!("identity `{id}` not found"))
}

async fn with_timeout<T>(
    fut: impl std::future::Future<Output = Result<T, ProviderError>>,
    provider: &str,
) -> Result<T> {
    bounded(PROVIDER_TIMEOUT, fut, provider).await
}

/// A whole inventory read: one call per identity or more (an AWS account's users and their
/// keys), each bounded by the provider's own timeouts, so the read as a whole gets longer.
async fn list_with_timeout(provider: &dyn Provider) -> Result<Vec<Arc<Identity>>> {
    bounded(
        LIST_TIMEOUT,
        provider.list_shared(),
        provider.name().as_str(),
    )
    .await
}

async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, ProviderError>>,
    provider: &str,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(EngineError::from),
        Err(_) => Err(EngineError::Provider(ProviderError::Unavailable {
            provider: provider.to_owned(),
            message: format!("no answer within {}s", limit.as_secs()),
        })),
    }
}

/// Creates the data dir readable by its owner only (it holds the approval key and the sink).
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Runs `work`, which may take long (a walk or a build over a whole inventory: a principal's
/// first findings summary decides the policy for every identity with a finding, seconds at a
/// million), without holding up the other tasks of the runtime worker it runs on: on a
/// multi-thread runtime (the server's) the worker hands them to another thread for the while;
/// on a current-thread runtime it just runs.
pub(crate) fn long_running<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Other tasks of the same worker go on while long work runs, on a one-worker
    /// multi-thread runtime; on a current-thread runtime the work simply runs.
    #[test]
    fn long_work_does_not_hold_up_the_worker_it_runs_on() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let ticks = Arc::new(AtomicUsize::new(0));
        let during = rt.block_on({
            let ticks = Arc::clone(&ticks);
            async move {
                let ticker = tokio::spawn({
                    let ticks = Arc::clone(&ticks);
                    async move {
                        loop {
                            ticks.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                });
                // Let the ticker start, then block this worker for a while.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let during = tokio::spawn(async move {
                    long_running(|| {
                        let before = ticks.load(Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        ticks.load(Ordering::SeqCst) - before
                    })
                })
                .await
                .expect("long work");
                ticker.abort();
                during
            }
        });
        assert!(during >= 10, "the other task ran {during} times meanwhile");
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(current.block_on(async { long_running(|| 7) }), 7);
    }

    /// Issue 8: an approval token is gone from a `Caller` as soon as it is built, under its own
    /// name, a mistyped one or no name at all; the audit digest is still of what was sent.
    #[test]
    fn a_caller_never_holds_the_approval_token() {
        let token = "eyJhbGciOiJFZERTQSJ9.eyJwcm9wb3NhbCI6InAifQ.c2lnbmF0dXJlLWJ5dGVz";
        let sent = serde_json::json!({
            "proposal_id": "prop_0123",
            "approval_token": token,
            "approvalToken": token,
            "note": [format!("here: {token}")],
        });
        let caller = Caller::new(
            &Principal::new("agent:a", [Scope::Apply]),
            "apply_proposal",
            sent.clone(),
        );
        let held = format!("{caller:?}");
        assert!(!held.contains(token), "{held}");
        assert!(!held.contains("c2lnbmF0dXJlLWJ5dGVz"), "{held}");
        assert_eq!(caller.arguments()["proposal_id"], "prop_0123");
        let entry = caller.entry(Decision::Allow);
        assert_eq!(
            entry.arguments_digest,
            crate::model::canonical::digest(&sent).unwrap()
        );
        assert!(!entry.arguments.to_string().contains(token));
    }
}
