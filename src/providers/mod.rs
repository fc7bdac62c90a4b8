//! Providers: one connected system each (an inventory file, an AWS account, a database).
//!
//! The trait has a small required core (`list`, `get`) and optional capabilities (planning and
//! applying rotations and revocations) that default to "unsupported". Providers know nothing of
//! MCP, HTTP or the store.

pub mod aws_iam;
#[cfg(test)]
mod conformance;
pub mod inventory;
pub mod postgres;
pub mod sink;

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::ApprovedPlan;
use crate::model::proposal::BlastRadius;
use crate::model::{
    Credential, CredentialId, Identity, IdentityId, PlanStep, ProviderName, Secret,
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

    async fn get(&self, id: &IdentityId) -> Result<Option<Identity>, ProviderError>;

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
