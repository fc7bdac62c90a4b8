//! Approvals and rejections from the CLI, proven by the approver's signature: the statement is
//! checked against the configured approver's public key before `approve`/`reject` records
//! anything; a refusal (unknown approver, bad signature, stale statement) is audited.

use serde_json::json;

use super::{ApproveResult, Caller, Engine, EngineError, Result};
use crate::authz::approvers::{self, ApproverConfig, Expected, SignedStatement, Verdict};
use crate::authz::{Principal, Scope};
use crate::model::{Proposal, ProposalId, quote_input};

/// Who a refused CLI decision is audited as: the approver is not proven, so not named as the
/// principal (the claimed name is in the arguments).
const UNPROVEN: &str = "cli:local";

impl Engine {
    /// `approve` as the approver `signed` names, if the signature holds.
    pub async fn approve_with_proof(
        &self,
        approvers: &[ApproverConfig],
        id: &ProposalId,
        signed: &SignedStatement,
    ) -> Result<ApproveResult> {
        let admin = self
            .check_proof(approvers, id, signed, Verdict::Approve, None)
            .await?;
        self.approve(&admin, id).await
    }

    /// `reject` as the approver `signed` names, if the signature holds.
    pub async fn reject_with_proof(
        &self,
        approvers: &[ApproverConfig],
        id: &ProposalId,
        reason: &str,
        signed: &SignedStatement,
    ) -> Result<Proposal> {
        let admin = self
            .check_proof(approvers, id, signed, Verdict::Reject, Some(reason))
            .await?;
        self.reject(&admin, id, reason).await
    }

    async fn check_proof(
        &self,
        approvers: &[ApproverConfig],
        id: &ProposalId,
        signed: &SignedStatement,
        verdict: Verdict,
        reason: Option<&str>,
    ) -> Result<Principal> {
        let caller = Caller::new(
            &Principal::new(UNPROVEN, [Scope::Approve]),
            verdict.as_str(),
            json!({
                "proposal_id": id,
                "approver": quote_input(&signed.statement.approver),
                "proof": "signature",
            }),
        );
        let result = async {
            let proposal = self.proposal(id).await?;
            approvers::verify(
                approvers,
                signed,
                &Expected {
                    verdict,
                    proposal_id: id.as_str(),
                    digest: &proposal.digest,
                    reason,
                    now: chrono::Utc::now(),
                },
            )
            .map_err(EngineError::Refused)
        }
        .await;
        if let Err(e) = &result {
            self.audit_failure(&caller, e, Some(id)).await;
        }
        result
    }
}
