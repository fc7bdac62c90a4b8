//! The admin API's reads: proposals as an approver may see them. An approver sees a proposal
//! only if policy lets them decide on it (the `approve` decision `approve` and `reject` use), a
//! hidden proposal is answered like a missing one, and every read is audited.

use super::cursor::Page;
use super::{Caller, Engine, EngineError, ProposalQuery, Result};
use crate::audit::Decision;
use crate::authz::{PolicyAction, Principal};
use crate::model::{Proposal, ProposalId};

impl Engine {
    /// Whether policy lets `caller` approve or reject `proposal`.
    fn may_decide(&self, caller: &Caller, proposal: &Proposal) -> bool {
        let decision = self.policy.decide(
            &caller.principal,
            PolicyAction::Approve,
            &proposal.body.snapshot,
        );
        decision.allowed
    }

    /// A page of the proposals `admin` may decide on, audited with their ids.
    pub async fn admin_proposals(
        &self,
        admin: &Principal,
        q: &ProposalQuery,
    ) -> Result<Page<Proposal>> {
        let caller = Caller::new(
            admin,
            "admin_list_proposals",
            serde_json::json!({"status": q.status.map(|s| s.as_str())}),
        );
        let result = async {
            let page = self
                .proposals_where(q, |p| self.may_decide(&caller, p))
                .await?;
            let ids: Vec<&str> = page.items.iter().map(|p| p.body.id.as_str()).collect();
            self.audit
                .append(caller.entry(Decision::Allow).outcome(format!(
                    "{} proposals: {}",
                    ids.len(),
                    ids.join(", ")
                )))
                .await?;
            Ok(page)
        }
        .await;
        self.finish(&caller, result, None).await
    }

    /// One proposal, if `admin` may decide on it (else not found, like a missing one), audited.
    pub async fn admin_proposal(&self, admin: &Principal, id: &ProposalId) -> Result<Proposal> {
        let caller = Caller::new(
            admin,
            "admin_get_proposal",
            serde_json::json!({"proposal_id": id}),
        );
        let result = async {
            let p = self
                .store
                .proposal(id)
                .await?
                .filter(|p| self.may_decide(&caller, p))
                .ok_or_else(|| EngineError::NotFound(format!("proposal `{id}` not found")))?;
            self.audit
                .append(
                    caller
                        .entry(Decision::Allow)
                        .proposal(id.as_str())
                        .outcome(format!("proposal is {}", p.status.as_str())),
                )
                .await?;
            Ok(p)
        }
        .await;
        self.finish(&caller, result, Some(id)).await
    }
}
