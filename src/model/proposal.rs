//! Change proposals: what is to be done, to what, by which plan, and the state machine that takes a
//! proposal from `pending_approval` to `applied` (or to one of the ends on the way).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::canonical;
use super::identity::{CredentialKind, Identity};
use super::ids::{CredentialId, IdentityId, ProposalId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Rotate,
    Revoke,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "rotate",
            Self::Revoke => "revoke",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    PendingApproval,
    Approved,
    Applying,
    Applied,
    Failed,
    Rejected,
    Expired,
    Cancelled,
}

impl ProposalStatus {
    pub const ALL: [ProposalStatus; 8] = [
        Self::PendingApproval,
        Self::Approved,
        Self::Applying,
        Self::Applied,
        Self::Failed,
        Self::Rejected,
        Self::Expired,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Approved => "approved",
            Self::Applying => "applying",
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// The transitions of the state machine; every other one is refused.
    pub fn can_become(self, next: Self) -> bool {
        use ProposalStatus::*;
        matches!(
            (self, next),
            (PendingApproval, Approved | Rejected | Expired | Cancelled)
                // Approved -> Rejected: an admin withdraws the approval before it is applied.
                | (Approved, Applying | Expired | Rejected)
                | (Applying, Applied | Failed)
        )
    }

    /// Open proposals still hold their target: a second one for the same change is not created.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::PendingApproval | Self::Approved | Self::Applying
        )
    }
}

/// One step of a plan. Steps are idempotent: running one twice has the effect of running it once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepAction {
    /// Create a new credential replacing `replaces` and deliver its secret to the secret sink.
    CreateCredential {
        replaces: CredentialId,
        credential_kind: CredentialKind,
    },
    DeactivateCredential {
        credential_id: CredentialId,
    },
    DeleteCredential {
        credential_id: CredentialId,
    },
    /// Disable interactive sign-in (console password, login role) without deleting the identity.
    DisableSignIn,
    /// Replace a credential's secret in place (a database role's password) and deliver the new
    /// one to the secret sink.
    SetPassword {
        credential_id: CredentialId,
    },
    /// End the identity's live sessions, which survive a password change.
    TerminateSessions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanStep {
    pub index: u32,
    #[serde(flatten)]
    pub action: StepAction,
    pub description: String,
    /// The step waits until the grace period after the first step has passed.
    pub after_grace: bool,
}

/// What a revocation will break, shown to the approver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BlastRadius {
    pub credentials_deactivated: Vec<CredentialId>,
    pub sign_in_disabled: bool,
    pub environments: Vec<String>,
    pub privileged: bool,
    pub last_used_at: Option<DateTime<Utc>>,
    pub summary: String,
}

/// Everything the digest covers: the action, the target and its snapshot, the parameters, the
/// plan and the requester. Changing any of it changes the digest, which voids an approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProposalBody {
    pub id: ProposalId,
    pub action: Action,
    pub identity_id: IdentityId,
    pub credential_id: Option<CredentialId>,
    /// The state of the target the plan was made from.
    pub snapshot: Identity,
    pub snapshot_fingerprint: String,
    pub grace_period_secs: u64,
    pub reason: String,
    pub plan: Vec<PlanStep>,
    pub blast_radius: Option<BlastRadius>,
    pub requester: String,
    pub required_approvals: u32,
    pub created_at: DateTime<Utc>,
    /// Until when the proposal may be approved.
    pub approval_deadline: DateTime<Utc>,
}

impl ProposalBody {
    /// Hex SHA-256 of the canonical encoding of the body.
    pub fn digest(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        canonical::digest(self).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Approval {
    pub approver: String,
    pub approved_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Written before the external call.
    Intent,
    /// Written after it.
    Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Started,
    Succeeded,
    Failed,
    RolledBack,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepRecord {
    pub index: u32,
    pub phase: StepPhase,
    pub status: StepStatus,
    pub detail: String,
    pub at: DateTime<Utc>,
}

/// A stored proposal: its body and digest plus the state the workflow has put it in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Proposal {
    #[serde(flatten)]
    pub body: ProposalBody,
    pub digest: String,
    pub status: ProposalStatus,
    /// The current deadline: approval deadline while pending, token expiry once approved.
    pub deadline: DateTime<Utc>,
    pub approvals: Vec<Approval>,
    pub execution: Vec<StepRecord>,
    pub outcome: Option<String>,
    /// Where the new secret was delivered (a reference, never the secret).
    pub sink_ref: Option<String>,
    /// When the next scheduled step (after the grace period) is due.
    pub next_step_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl Proposal {
    /// Indexes of the steps that have a succeeded outcome.
    pub fn completed_steps(&self) -> Vec<u32> {
        self.execution
            .iter()
            .filter(|r| r.phase == StepPhase::Outcome && r.status == StepStatus::Succeeded)
            .map(|r| r.index)
            .collect()
    }

    /// The step that has an intent row and no outcome after it: the one a crash interrupted.
    pub fn interrupted_step(&self) -> Option<u32> {
        let mut open = None;
        for r in &self.execution {
            match r.phase {
                StepPhase::Intent => open = Some(r.index),
                StepPhase::Outcome if open == Some(r.index) => open = None,
                StepPhase::Outcome => {}
            }
        }
        open
    }
}

/// A test proposal `prop_<n as 32 hex digits>` to rotate `identity`, in `status`.
#[cfg(test)]
pub(crate) fn sample(n: u128, identity: &Identity, status: ProposalStatus) -> Proposal {
    let now = identity.created_at;
    let body = ProposalBody {
        id: ProposalId::parse(&format!("prop_{n:032x}")).expect("id"),
        action: Action::Rotate,
        identity_id: identity.id.clone(),
        credential_id: None,
        snapshot: identity.clone(),
        snapshot_fingerprint: identity.fingerprint(),
        grace_period_secs: 0,
        reason: "test".to_owned(),
        plan: Vec::new(),
        blast_radius: None,
        requester: "agent:test".to_owned(),
        required_approvals: 1,
        created_at: now,
        approval_deadline: now,
    };
    Proposal {
        digest: body.digest(),
        body,
        status,
        deadline: now,
        approvals: Vec::new(),
        execution: Vec::new(),
        outcome: None,
        sink_ref: None,
        next_step_at: None,
        updated_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        use ProposalStatus::*;
        let allowed = [
            (PendingApproval, Approved),
            (PendingApproval, Rejected),
            (PendingApproval, Expired),
            (PendingApproval, Cancelled),
            (Approved, Applying),
            (Approved, Expired),
            (Approved, Rejected),
            (Applying, Applied),
            (Applying, Failed),
        ];
        for from in ProposalStatus::ALL {
            for to in ProposalStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
            assert_eq!(ProposalStatus::parse(from.as_str()), Some(from));
        }
    }
}
