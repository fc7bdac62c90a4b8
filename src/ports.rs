//! The engine's ports: what a provider and a secret sink implement, and the approved plan the
//! engine hands them. Adapters (`providers/`) import this module, never the engine's use cases.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::proposal::BlastRadius;
use crate::model::{
    Action, Credential, CredentialId, Identity, IdentityId, PlanStep, Proposal, ProposalId,
    ProposalStatus, ProviderName, Secret,
};

/// Errors from a provider. Contract: the message never contains secret material.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider `{provider}` does not support {what}")]
    Unsupported {
        provider: String,
        what: &'static str,
    },
    #[error("provider `{provider}`: {message}")]
    Refused { provider: String, message: String },
    #[error("provider `{provider}` is unavailable: {message}")]
    Unavailable { provider: String, message: String },
}

/// What a step did.
#[derive(Debug)]
pub enum StepResult {
    /// A new credential exists; its secret is here, once, to be handed to the secret sink.
    Created {
        credential_id: CredentialId,
        secret: Secret,
    },
    /// The step's effect holds (it may have held already).
    Done { detail: String },
}

/// `identities` as shared values, in a buffer of their own: `into_iter().map(Arc::new).collect()`
/// would reuse the buffer of whole identities in place (about 330 bytes each) to hold 8-byte
/// pointers, and keep it as long as the vector lives.
pub fn shared(identities: Vec<Identity>) -> Vec<Arc<Identity>> {
    let mut out = Vec::with_capacity(identities.len());
    out.extend(identities.into_iter().map(Arc::new));
    out
}

/// One connected system.
///
/// Contract:
/// - `list` returns every identity sorted by id; `get` returns `None` for an unknown one.
/// - `plan_*` never change anything.
/// - `apply_step` is idempotent per step, except `CreateCredential`, whose interrupted run is
///   undone with `rollback_step` before it is run again.
/// - Errors never contain secret material.
#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &ProviderName;

    /// The kind in config (`inventory`, `aws_iam`, ...).
    fn kind(&self) -> &'static str;

    async fn list(&self) -> Result<Vec<Identity>, ProviderError>;

    /// `list`, as shared values: a provider that keeps its identities (the `inventory`
    /// provider) answers the ones it holds, so the engine's index does not copy them.
    async fn list_shared(&self) -> Result<Vec<Arc<Identity>>, ProviderError> {
        Ok(shared(self.list().await?))
    }

    async fn get(&self, id: &IdentityId) -> Result<Option<Identity>, ProviderError>;

    /// A token that changes whenever `list` would answer differently, if the provider can tell
    /// that cheaply (without reading its whole inventory); `None` when it cannot. The engine
    /// reads a provider whose token did not change from its index instead of calling `list`.
    async fn version(&self) -> Option<String> {
        None
    }

    /// The steps that rotate `credential`, keeping the old one valid for `grace`.
    fn plan_rotation(
        &self,
        identity: &Identity,
        credential: &Credential,
        grace: Duration,
    ) -> Result<Vec<PlanStep>, ProviderError> {
        let _ = (identity, credential, grace);
        Err(self.unsupported("rotation"))
    }

    /// The steps that revoke `identity`, and what that will break.
    fn plan_revocation(
        &self,
        identity: &Identity,
    ) -> Result<(Vec<PlanStep>, BlastRadius), ProviderError> {
        let _ = identity;
        Err(self.unsupported("revocation"))
    }

    /// Runs one step of an approved plan.
    async fn apply_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<StepResult, ProviderError> {
        let _ = (plan, step);
        Err(self.unsupported("applying changes"))
    }

    /// Undoes whatever an interrupted run of `step` may have done.
    async fn rollback_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<String, ProviderError> {
        let _ = (plan, step);
        Err(self.unsupported("rolling back"))
    }

    /// What this provider can do with the credentials it has, one line each, for
    /// `nhi-mcp config check`. Asking may call the backend.
    async fn capabilities(&self) -> Result<Vec<String>, ProviderError> {
        Ok(vec!["can rotate and revoke".to_owned()])
    }

    fn unsupported(&self, what: &'static str) -> ProviderError {
        ProviderError::Unsupported {
            provider: self.name().to_string(),
            what,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("secret sink: {0}")]
pub struct SinkError(pub String);

/// Contract: `put` stores the secret durably before it returns and answers a reference that
/// names where it is; neither the reference nor an error contains the secret.
#[async_trait]
pub trait SecretSink: Send + Sync {
    async fn put(
        &self,
        proposal: &ProposalId,
        identity: &IdentityId,
        credential: &CredentialId,
        secret: &Secret,
    ) -> Result<String, SinkError>;
}

/// A plan the approval check (or recovery of one it let through) has cleared for execution.
/// Only the engine makes one (`of_applying` is called from `engine/` alone, an invariant in
/// ARCHITECTURE.md), so a provider's `apply_step` cannot run an unapproved plan.
#[derive(Debug, Clone)]
pub struct ApprovedPlan {
    proposal_id: ProposalId,
    identity_id: IdentityId,
    action: Action,
    grace: Duration,
    /// The credentials the approved snapshot listed: anything else an interrupted step left
    /// behind is the step's own doing.
    snapshot_credentials: Vec<CredentialId>,
}

impl ApprovedPlan {
    /// For a proposal the apply check moved to `applying`, or one found there on restart.
    /// The engine's constructor: nothing outside `engine/` calls it.
    pub(crate) fn of_applying(proposal: &Proposal) -> Option<Self> {
        (proposal.status == ProposalStatus::Applying).then(|| Self {
            proposal_id: proposal.body.id.clone(),
            identity_id: proposal.body.identity_id.clone(),
            action: proposal.body.action,
            grace: Duration::from_secs(proposal.body.grace_period_secs),
            snapshot_credentials: proposal
                .body
                .snapshot
                .credentials
                .iter()
                .map(|c| c.id.clone())
                .collect(),
        })
    }

    /// For the provider conformance suite, which runs steps without a proposal.
    #[cfg(test)]
    pub(crate) fn for_conformance_tests(
        identity_id: IdentityId,
        action: Action,
        snapshot_credentials: Vec<CredentialId>,
    ) -> Self {
        Self {
            snapshot_credentials,
            proposal_id: ProposalId::generate(),
            identity_id,
            action,
            grace: Duration::ZERO,
        }
    }

    pub fn proposal_id(&self) -> &ProposalId {
        &self.proposal_id
    }

    pub fn identity_id(&self) -> &IdentityId {
        &self.identity_id
    }

    pub fn action(&self) -> Action {
        self.action
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn snapshot_credentials(&self) -> &[CredentialId] {
        &self.snapshot_credentials
    }
}
