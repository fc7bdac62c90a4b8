//! Asking and deciding: proposals, approvals and rejections, and the checks that let an approved
//! proposal be applied exactly once.

use std::time::Duration;

use chrono::Utc;
use schemars::JsonSchema;
use serde::Serialize;

use super::cursor::{self, Page};
use super::{Caller, Engine, EngineError, Result};
use crate::audit::Decision;
use crate::authz::{ApprovalClaims, PolicyAction, Principal, Scope};
use crate::model::ids::check_free_text;
use crate::model::{
    Action, CredentialId, IdentityId, Proposal, ProposalBody, ProposalId, ProposalStatus,
    quote_input,
};
use crate::store::ProposalFilter;

/// The longest grace period a rotation may keep the old credential valid.
const MAX_GRACE: Duration = Duration::from_secs(30 * 86400);
const DEFAULT_GRACE: &str = "1h";

/// What the agent is told when a change waits for a human.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ApprovalOutcome {
    /// `approval_required` while the proposal waits for approvals.
    pub status: String,
    pub approvals_required: u32,
    pub approvals_received: usize,
    /// How a human approves it; approvals never go through this MCP session.
    pub how_to_approve: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProposeOutcome {
    pub proposal: Proposal,
    /// False when an open proposal for the same change already existed and is returned instead.
    pub created: bool,
    /// Set when an existing proposal is returned: its parameters stand, not this call's.
    pub note: Option<String>,
    pub approval: Option<ApprovalOutcome>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RevokeOutcome {
    pub proposal: Proposal,
    /// True when this call executed the revocation (an approval token was given).
    pub executed: bool,
    pub created: bool,
    /// Set when an existing proposal is returned: its parameters stand, not this call's.
    pub note: Option<String>,
    pub approval: Option<ApprovalOutcome>,
}

/// An admin's approval: the proposal after it and, once the last required approval is in, the
/// approval token for the requester to apply with.
#[derive(Debug)]
pub struct ApproveResult {
    pub proposal: Proposal,
    pub token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProposalQuery {
    pub status: Option<ProposalStatus>,
    pub identity_id: Option<IdentityId>,
    #[serde(skip)]
    pub cursor: Option<String>,
    #[serde(skip)]
    pub limit: Option<u32>,
}

fn check_reason(reason: &str) -> Result<()> {
    check_free_text("`reason`", reason, 1000)?;
    Ok(())
}

pub fn parse_grace(raw: Option<&str>) -> Result<Duration> {
    let raw = raw.unwrap_or(DEFAULT_GRACE);
    let grace = humantime::parse_duration(raw).map_err(|_| {
        EngineError::InvalidArgument(format!(
            "`grace_period` = {} is not a duration like `0s`, `30m` or `24h`",
            quote_input(raw)
        ))
    })?;
    if grace > MAX_GRACE {
        return Err(EngineError::InvalidArgument(
            "`grace_period` may be at most 30 days".to_owned(),
        ));
    }
    Ok(grace)
}

fn existing_note(p: &Proposal, created: bool) -> Option<String> {
    (!created).then(|| {
        format!(
            "an open proposal for this change already exists and is returned unchanged: its grace period ({}) and reason stand, not this call's",
            humantime::format_duration(Duration::from_secs(p.body.grace_period_secs))
        )
    })
}

/// How to get `p` approved, naming only the channels this server serves: the CLI always, the
/// admin API only when it is served (HTTP with `[auth]`).
fn approval_outcome(p: &Proposal, admin_api: bool) -> Option<ApprovalOutcome> {
    let id = &p.body.id;
    let channels = if admin_api {
        format!(
            "`nhi-mcp approve {id} --approver NAME --key FILE` on the server's host, or `POST /admin/v1/proposals/{id}/approve` on this server's admin API"
        )
    } else {
        format!("`nhi-mcp approve {id} --approver NAME --key FILE` on the server's host")
    };
    (p.status == ProposalStatus::PendingApproval).then(|| ApprovalOutcome {
        status: "approval_required".to_owned(),
        approvals_required: p.body.required_approvals,
        approvals_received: p.approvals.len(),
        how_to_approve: format!(
            "a human admin approves it outside this session ({channels}) and hands you the approval token; then call `apply_proposal`"
        ),
    })
}

impl Engine {
    pub async fn propose_rotation(
        &self,
        caller: &Caller,
        identity_id: &IdentityId,
        credential_id: Option<&CredentialId>,
        grace_period: Option<&str>,
        reason: &str,
    ) -> Result<ProposeOutcome> {
        self.require(caller, Scope::Propose).await?;
        let result = async {
            check_reason(reason)?;
            let grace = parse_grace(grace_period)?;
            let identity = self.fetch_identity(identity_id).await?;
            let decision = self.authorize(caller, PolicyAction::ProposeRotation, &identity)?;
            let credential = match credential_id {
                Some(c) => identity.credential(c).ok_or_else(|| {
                    EngineError::NotFound(format!("credential `{c}` not found on `{identity_id}`"))
                })?,
                None => {
                    let active: Vec<_> = identity.active_credentials().collect();
                    match active.as_slice() {
                        [one] => *one,
                        [] => {
                            return Err(EngineError::Refused(format!(
                                "`{identity_id}` has no active credential to rotate"
                            )));
                        }
                        many => {
                            let ids: Vec<String> = many.iter().map(|c| format!("`{}`", c.id)).collect();
                            return Err(EngineError::InvalidArgument(format!(
                                "`{identity_id}` has {} active credentials; pass `credential_id`: {}",
                                many.len(),
                                ids.join(", ")
                            )));
                        }
                    }
                }
            };
            let provider = self.provider_for(identity_id)?;
            let plan = provider.plan_rotation(&identity, credential, grace)?;
            let credential_id = credential.id.clone();
            let mut body = self.new_body(caller, Action::Rotate, identity, Some(credential_id), grace, reason, plan, None);
            body.required_approvals = body.required_approvals.max(decision.required_approvals);
            let (proposal, created) = self.insert_or_existing(caller, body).await?;
            Ok(ProposeOutcome {
                approval: approval_outcome(&proposal, self.admin_api_served()),
                note: existing_note(&proposal, created),
                proposal,
                created,
            })
        }
        .await;
        self.finish(caller, result, None).await
    }

    /// Without a token: proposes the revocation. With one: executes the approved revocation.
    pub async fn revoke_identity(
        &self,
        caller: &Caller,
        identity_id: &IdentityId,
        reason: Option<&str>,
        approval_token: Option<&str>,
    ) -> Result<RevokeOutcome> {
        if let Some(token) = approval_token {
            self.require(caller, Scope::Apply).await?;
            let proposal = self
                .apply(caller, ApplyTarget::Revocation(identity_id), token)
                .await?;
            return Ok(RevokeOutcome {
                proposal,
                executed: true,
                created: false,
                note: None,
                approval: None,
            });
        }
        self.require(caller, Scope::Propose).await?;
        let result = async {
            let reason = reason.ok_or_else(|| {
                EngineError::InvalidArgument(
                    "`reason` is required to propose a revocation".to_owned(),
                )
            })?;
            check_reason(reason)?;
            let identity = self.fetch_identity(identity_id).await?;
            let decision = self.authorize(caller, PolicyAction::ProposeRevocation, &identity)?;
            let provider = self.provider_for(identity_id)?;
            let (plan, blast) = provider.plan_revocation(&identity)?;
            let mut body = self.new_body(
                caller,
                Action::Revoke,
                identity,
                None,
                Duration::ZERO,
                reason,
                plan,
                Some(blast),
            );
            body.required_approvals = body.required_approvals.max(decision.required_approvals);
            let (proposal, created) = self.insert_or_existing(caller, body).await?;
            Ok(RevokeOutcome {
                approval: approval_outcome(&proposal, self.admin_api_served()),
                note: existing_note(&proposal, created),
                proposal,
                executed: false,
                created,
            })
        }
        .await;
        self.finish(caller, result, None).await
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one place builds every proposal body"
    )]
    fn new_body(
        &self,
        caller: &Caller,
        action: Action,
        snapshot: crate::model::Identity,
        credential_id: Option<CredentialId>,
        grace: Duration,
        reason: &str,
        plan: Vec<crate::model::PlanStep>,
        blast_radius: Option<crate::model::proposal::BlastRadius>,
    ) -> ProposalBody {
        let now = Utc::now();
        ProposalBody {
            id: ProposalId::generate(),
            action,
            identity_id: snapshot.id.clone(),
            credential_id,
            snapshot_fingerprint: snapshot.fingerprint(),
            snapshot,
            grace_period_secs: grace.as_secs(),
            reason: reason.to_owned(),
            plan,
            blast_radius,
            requester: caller.principal.id.clone(),
            required_approvals: self.required_approvals,
            created_at: now,
            approval_deadline: now
                + chrono::Duration::from_std(self.proposal_ttl)
                    .unwrap_or(chrono::Duration::hours(24)),
        }
    }

    /// Stores a new proposal, or returns the open one for the same change; audited either way.
    async fn insert_or_existing(
        &self,
        caller: &Caller,
        body: ProposalBody,
    ) -> Result<(Proposal, bool)> {
        let mut tx = self.store.begin().await?;
        if let Some(existing) = tx.open_proposal_for(&body).await? {
            tx.append_audit(
                caller
                    .entry(Decision::RequiresApproval)
                    .proposal(existing.body.id.as_str())
                    .outcome(format!(
                        "returned the open proposal ({})",
                        existing.status.as_str()
                    )),
            )
            .await?;
            tx.commit().await?;
            return Ok((existing, false));
        }
        let now = Utc::now();
        if let Some(limit) = self.max_proposals_per_hour {
            tx.lock_requester(&body.requester).await?;
            let recent = tx
                .count_proposals_since(&body.requester, now - chrono::Duration::hours(1))
                .await?;
            if recent >= u64::from(limit) {
                return Err(EngineError::Refused(format!(
                    "`{}` has made {recent} proposals in the last hour; the limit is {limit}",
                    body.requester
                )));
            }
        }
        let proposal = Proposal {
            digest: body.digest(),
            status: ProposalStatus::PendingApproval,
            deadline: body.approval_deadline,
            approvals: vec![],
            execution: vec![],
            outcome: None,
            sink_ref: None,
            next_step_at: None,
            updated_at: now,
            body,
        };
        tx.insert_proposal(&proposal).await?;
        tx.append_audit(
            caller
                .entry(Decision::RequiresApproval)
                .proposal(proposal.body.id.as_str())
                .outcome(format!("proposal created; digest {}", proposal.digest)),
        )
        .await?;
        tx.commit().await?;
        Ok((proposal, true))
    }

    pub async fn apply_proposal(
        &self,
        caller: &Caller,
        proposal_id: &ProposalId,
        token: &str,
    ) -> Result<Proposal> {
        self.require(caller, Scope::Apply).await?;
        self.apply(caller, ApplyTarget::Proposal(proposal_id), token)
            .await
    }

    /// Every check DESIGN.md lists, then execution.
    async fn apply(
        &self,
        caller: &Caller,
        target: ApplyTarget<'_>,
        token: &str,
    ) -> Result<Proposal> {
        let proposal_id = target.proposal_id();
        let claims = match self.approval.verify(token) {
            Ok(c) => c,
            Err(e) => {
                let err = EngineError::Refused(e.to_string());
                return self.finish(caller, Err(err), proposal_id).await;
            }
        };
        let token_proposal = ProposalId::parse(&claims.sub).ok();
        let audit_id = proposal_id.or(token_proposal.as_ref()).cloned();
        let result = self.check_and_start(&claims, target, caller).await;
        let proposal = match result {
            Ok(p) => p,
            Err(e) => return self.finish(caller, Err(e), audit_id.as_ref()).await,
        };
        let result = self.execute(&proposal).await;
        self.finish(caller, result, audit_id.as_ref()).await
    }

    async fn check_and_start(
        &self,
        claims: &ApprovalClaims,
        target: ApplyTarget<'_>,
        caller: &Caller,
    ) -> Result<Proposal> {
        let token_for = ProposalId::parse(&claims.sub).map_err(|_| {
            EngineError::Refused("approval token names no valid proposal".to_owned())
        })?;
        if target.proposal_id().is_some_and(|p| p != &token_for) {
            return Err(EngineError::Refused(
                "approval token was issued for another proposal".to_owned(),
            ));
        }
        let proposal =
            self.store.proposal(&token_for).await?.ok_or_else(|| {
                EngineError::NotFound(format!("proposal `{token_for}` not found"))
            })?;
        if let ApplyTarget::Revocation(id) = target
            && (&proposal.body.identity_id != id || proposal.body.action != Action::Revoke)
        {
            return Err(EngineError::Refused(format!(
                "approval token is not for revoking `{id}`"
            )));
        }
        if claims.digest != proposal.digest || proposal.body.digest() != proposal.digest {
            return Err(EngineError::Refused(
                "approval token does not match the proposal's digest: the proposal is not the one that was approved".to_owned(),
            ));
        }
        if claims.requester != proposal.body.requester
            || claims
                .approvers
                .iter()
                .any(|a| a == &proposal.body.requester)
            || claims.approvers.is_empty()
        {
            return Err(EngineError::Refused(
                "approval token is self-approved: the approver must not be the requester"
                    .to_owned(),
            ));
        }
        if proposal.status != ProposalStatus::Approved {
            return Err(not_approved(&proposal));
        }
        let now = Utc::now();
        if proposal.deadline < now {
            self.expire(
                &proposal.body.id,
                ProposalStatus::Approved,
                "approval expired before it was applied",
            )
            .await?;
            return Err(EngineError::Refused(format!(
                "proposal `{}` has expired; propose again",
                proposal.body.id
            )));
        }

        // Policy decides on the target as it is now; then it must still be what the plan was
        // made from.
        let current = self.fetch_identity(&proposal.body.identity_id).await?;
        self.authorize(caller, PolicyAction::Apply, &current)?;
        self.check_requester(caller, &proposal, &current)?;
        if current.fingerprint() != proposal.body.snapshot_fingerprint {
            let mut tx = self.store.begin().await?;
            tx.consume_token(&claims.jti, &proposal.body.id, now)
                .await?;
            if tx
                .transition(
                    &proposal.body.id,
                    ProposalStatus::Approved,
                    ProposalStatus::Expired,
                )
                .await?
            {
                tx.set_progress(
                    &proposal.body.id,
                    Some("stale: the target changed after the proposal was made; propose again for a new approval"),
                    None,
                    None,
                )
                .await?;
            }
            tx.append_audit(
                caller
                    .entry(Decision::Deny)
                    .proposal(proposal.body.id.as_str())
                    .reason(format!(
                        "`{}` changed since the snapshot; the proposal is stale",
                        proposal.body.identity_id
                    )),
            )
            .await?;
            tx.commit().await?;
            return Err(EngineError::Stale(format!(
                "`{}` changed after proposal `{}` was made; the proposal is stale and needs to be proposed and approved again",
                proposal.body.identity_id, proposal.body.id
            )));
        }

        // Consume the token and start, atomically, deciding from the proposal as it is inside the
        // transaction: a second apply finds the jti used, a withdrawal that won finds it
        // rejected (approved -> applying and approved -> rejected: exactly one wins).
        let mut tx = self.store.begin().await?;
        let locked = tx
            .lock_proposal(&proposal.body.id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("proposal `{token_for}` not found")))?;
        if locked.status != ProposalStatus::Approved {
            return Err(not_approved(&locked));
        }
        if !tx
            .consume_token(&claims.jti, &proposal.body.id, now)
            .await?
        {
            return Err(EngineError::Refused(
                "approval token was already used; an approval token works once".to_owned(),
            ));
        }
        if !tx
            .transition(
                &proposal.body.id,
                ProposalStatus::Approved,
                ProposalStatus::Applying,
            )
            .await?
        {
            return Err(EngineError::Refused(format!(
                "proposal `{}` is no longer approved (another apply started it)",
                proposal.body.id
            )));
        }
        tx.append_audit(
            caller
                .entry(Decision::Allow)
                .proposal(proposal.body.id.as_str())
                .outcome(format!("apply started; token {} consumed", claims.jti)),
        )
        .await?;
        tx.commit().await?;
        self.store
            .proposal(&proposal.body.id)
            .await?
            .ok_or_else(|| EngineError::Internal("proposal vanished while starting".to_owned()))
    }

    /// Moves a proposal past its deadline to `expired`, with an audit record.
    pub(super) async fn expire(
        &self,
        id: &ProposalId,
        from: ProposalStatus,
        why: &str,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        expire_in(&mut tx, id, from, why).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refuses unless `caller` requested `proposal`, or policy lets it apply for others: an
    /// approval token is bound to its requester (the token's `requester` claim, checked against
    /// the stored proposal before this).
    fn check_requester(
        &self,
        caller: &Caller,
        proposal: &Proposal,
        current: &crate::model::Identity,
    ) -> Result<()> {
        if caller.principal.id == proposal.body.requester {
            return Ok(());
        }
        let decision = self
            .policy
            .decide(&caller.principal, PolicyAction::ApplyForOthers, current);
        caller.record_policies(&decision);
        if decision.allowed {
            return Ok(());
        }
        Err(EngineError::Refused(format!(
            "proposal `{}` was requested by `{}`: its approval token works only for its requester, and policy does not allow `{}` to apply for others",
            proposal.body.id, proposal.body.requester, caller.principal.id
        )))
    }

    /// A human approval, from the CLI or the admin API; never from an agent's MCP session.
    ///
    /// Read, check and write happen in one transaction that holds the proposal
    /// (`Tx::lock_proposal`): two admins approving at the same moment are serialised on the
    /// proposal's row, each counts the approvals recorded before its own, and the one that
    /// completes the count issues the token.
    pub async fn approve(&self, admin: &Principal, id: &ProposalId) -> Result<ApproveResult> {
        let approver = admin.id.as_str();
        let caller = Caller::new(admin, "approve", serde_json::json!({"proposal_id": id}));
        let result = async {
            // Normalised where the principal was built; refused here if some path did not.
            crate::authz::principal_id::check_normal("approver", approver)?;
            check_free_text("approver", approver, 128)?;
            let now = Utc::now();
            let mut tx = self.store.begin().await?;
            let proposal = tx
                .lock_proposal(id)
                .await?
                .ok_or_else(|| EngineError::NotFound(format!("proposal `{id}` not found")))?;
            if proposal.status == ProposalStatus::PendingApproval && proposal.deadline < now {
                expire_in(
                    &mut tx,
                    id,
                    ProposalStatus::PendingApproval,
                    "not approved before its deadline",
                )
                .await?;
                tx.commit().await?;
                return Err(EngineError::Refused(format!("proposal `{id}` has expired")));
            }
            if proposal.status != ProposalStatus::PendingApproval {
                return Err(EngineError::Refused(format!(
                    "proposal `{id}` is {}, not pending approval",
                    proposal.status.as_str()
                )));
            }
            self.authorize(&caller, PolicyAction::Approve, &proposal.body.snapshot)?;
            if crate::authz::principal_id::same(approver, &proposal.body.requester) {
                return Err(EngineError::Refused(format!(
                    "`{approver}` requested proposal `{id}` and cannot approve it"
                )));
            }
            if !tx.add_approval(id, approver, now).await? {
                return Err(EngineError::Refused(format!(
                    "`{approver}` has already approved proposal `{id}`"
                )));
            }
            // Counted inside the transaction: every approval committed before this one is seen.
            let approvers = tx.approvers(id).await?;
            let required = proposal.body.required_approvals as usize;
            let mut token = None;
            if approvers.len() >= required {
                if !tx
                    .transition(
                        id,
                        ProposalStatus::PendingApproval,
                        ProposalStatus::Approved,
                    )
                    .await?
                {
                    return Err(EngineError::Refused(format!(
                        "proposal `{id}` changed state while it was being approved; try again"
                    )));
                }
                let (t, claims) = self
                    .approval
                    .mint(
                        id.as_str(),
                        &proposal.digest,
                        approvers.clone(),
                        &proposal.body.requester,
                        now,
                    )
                    .map_err(|e| {
                        EngineError::Internal(format!("cannot sign the approval token: {e}"))
                    })?;
                let exp = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or(now);
                tx.set_deadline(id, exp).await?;
                tx.append_audit(caller.entry(Decision::Allow).proposal(id.as_str()).outcome(
                    format!(
                        "approved by {}; approval token {} valid until {}",
                        approvers.join(", "),
                        claims.jti,
                        exp.to_rfc3339()
                    ),
                ))
                .await?;
                token = Some(t);
            } else {
                tx.append_audit(caller.entry(Decision::Allow).proposal(id.as_str()).outcome(
                    format!("approval {} of {required} recorded", approvers.len()),
                ))
                .await?;
            }
            let proposal = tx
                .proposal(id)
                .await?
                .ok_or_else(|| EngineError::Internal("proposal vanished".to_owned()))?;
            tx.commit().await?;
            Ok(ApproveResult { proposal, token })
        }
        .await;
        self.finish(&caller, result, Some(id)).await
    }

    /// A human rejection. A pending proposal is rejected; an approved one not yet applied has
    /// its approval withdrawn (it becomes `rejected` and its token is refused from then on).
    /// Decided inside one transaction that holds the proposal, so a withdrawal and an apply at
    /// the same moment cannot both win.
    pub async fn reject(
        &self,
        admin: &Principal,
        id: &ProposalId,
        reason: &str,
    ) -> Result<Proposal> {
        let approver = admin.id.as_str();
        let caller = Caller::new(
            admin,
            "reject",
            serde_json::json!({"proposal_id": id, "reason": reason}),
        );
        let result = async {
            crate::authz::principal_id::check_normal("approver", approver)?;
            check_reason(reason)?;
            let mut tx = self.store.begin().await?;
            let proposal = tx
                .lock_proposal(id)
                .await?
                .ok_or_else(|| EngineError::NotFound(format!("proposal `{id}` not found")))?;
            // Deciding either way is the `approve` action.
            self.authorize(&caller, PolicyAction::Approve, &proposal.body.snapshot)?;
            let from = proposal.status;
            let withdrawn = from == ProposalStatus::Approved;
            if !matches!(
                from,
                ProposalStatus::PendingApproval | ProposalStatus::Approved
            ) || !tx.transition(id, from, ProposalStatus::Rejected).await?
            {
                return Err(EngineError::Refused(format!(
                    "proposal `{id}` is {}, not pending approval or approved",
                    from.as_str()
                )));
            }
            let (note, outcome) = if withdrawn {
                (
                    format!("approval withdrawn by {approver}: {reason}"),
                    "approval withdrawn; its approval token is refused from now on",
                )
            } else {
                (format!("rejected by {approver}: {reason}"), "rejected")
            };
            tx.set_progress(id, Some(&note), None, None).await?;
            tx.append_audit(
                caller
                    .entry(Decision::Allow)
                    .proposal(id.as_str())
                    .outcome(outcome),
            )
            .await?;
            let proposal = tx
                .proposal(id)
                .await?
                .ok_or_else(|| EngineError::Internal("proposal vanished".to_owned()))?;
            tx.commit().await?;
            Ok(proposal)
        }
        .await;
        self.finish(&caller, result, Some(id)).await
    }

    pub async fn get_proposal(&self, caller: &Caller, id: &ProposalId) -> Result<Proposal> {
        self.require(caller, Scope::Read).await?;
        let result = async {
            let p = self
                .store
                .proposal(id)
                .await?
                .filter(|p| self.may_read(caller, &p.body.snapshot))
                .ok_or_else(|| EngineError::NotFound(format!("proposal `{id}` not found")))?;
            self.audit_read(caller, format!("proposal is {}", p.status.as_str()))
                .await?;
            Ok(p)
        }
        .await;
        self.finish(caller, result, Some(id)).await
    }

    pub async fn list_proposals(
        &self,
        caller: &Caller,
        q: ProposalQuery,
    ) -> Result<Page<Proposal>> {
        self.require(caller, Scope::Read).await?;
        let result = async {
            let page = self
                .proposals_where(&q, |p| self.may_read(caller, &p.body.snapshot))
                .await?;
            self.audit_read(caller, format!("{} proposals", page.items.len()))
                .await?;
            Ok(page)
        }
        .await;
        self.finish(caller, result, None).await
    }

    /// A page of proposals without a caller: for the admin CLI.
    pub async fn proposals_page(&self, q: &ProposalQuery) -> Result<Page<Proposal>> {
        self.proposals_where(q, |_| true).await
    }

    /// A page of the proposals `q` selects that `keep` keeps: the store is read a page at a
    /// time after the cursor until the page is full or nothing is left, so a caller who may
    /// not see some proposals still gets full pages, and the cursor points after the last
    /// proposal it was shown.
    pub(super) async fn proposals_where(
        &self,
        q: &ProposalQuery,
        keep: impl Fn(&Proposal) -> bool,
    ) -> Result<Page<Proposal>> {
        let limit = cursor::check_limit(q.limit)?;
        let hash = cursor::query_hash(q);
        let mut filter = ProposalFilter {
            status: q.status,
            open: false,
            identity_id: q.identity_id.clone(),
            after: cursor::decode(q.cursor.as_deref(), &hash)?,
        };
        // One page and one more row first; each read after that twice as many, up to 500, so a
        // caller who may see few proposals is served in few reads (the walk costs what it
        // skips, like a filtered identity page).
        let mut batch = limit + 1;
        let mut items = Vec::with_capacity(limit + 1);
        loop {
            let rows = u32::try_from(batch).unwrap_or(u32::MAX);
            let read = self.store.list_proposals(&filter, rows).await?;
            let exhausted = read.len() < batch;
            batch = (batch * 2).min(500).max(limit + 1);
            filter.after = read.last().map(|p| p.body.id.to_string());
            items.extend(read.into_iter().filter(|p| keep(p)));
            if items.len() > limit || exhausted {
                break;
            }
        }
        let next_cursor =
            (items.len() > limit).then(|| cursor::encode(items[limit - 1].body.id.as_str(), &hash));
        items.truncate(limit);
        Ok(Page { items, next_cursor })
    }

    /// A proposal without a caller: for the admin CLI.
    pub async fn proposal(&self, id: &ProposalId) -> Result<Proposal> {
        self.store
            .proposal(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("proposal `{id}` not found")))
    }
}

/// Moves `id` from `from` to `expired` inside `tx`, with an audit record; nothing if it moved on.
async fn expire_in(
    tx: &mut crate::store::Tx,
    id: &ProposalId,
    from: ProposalStatus,
    why: &str,
) -> Result<()> {
    if tx.transition(id, from, ProposalStatus::Expired).await? {
        tx.set_progress(id, Some(why), None, None).await?;
        tx.append_audit(super::execute::system_entry("expire", id, why))
            .await?;
    }
    Ok(())
}

/// Why an approval token is refused for a proposal that is not (or no longer) approved.
fn not_approved(p: &Proposal) -> EngineError {
    let id = &p.body.id;
    EngineError::Refused(match p.status {
        ProposalStatus::Applying | ProposalStatus::Applied => format!(
            "proposal `{id}` is already {}; an approval token works once",
            p.status.as_str()
        ),
        ProposalStatus::Rejected
            if p.outcome
                .as_deref()
                .is_some_and(|o| o.starts_with("approval withdrawn")) =>
        {
            format!(
                "proposal `{id}` is rejected: its approval was withdrawn, and its approval token is refused"
            )
        }
        other => format!("proposal `{id}` is {}, not approved", other.as_str()),
    })
}

/// What an apply names: the proposal itself (`apply_proposal`, any action), or the identity
/// whose approved revocation the token must be for (`revoke_identity` with a token).
#[derive(Debug, Clone, Copy)]
enum ApplyTarget<'a> {
    Proposal(&'a ProposalId),
    Revocation(&'a IdentityId),
}

impl<'a> ApplyTarget<'a> {
    /// The proposal the caller named, if it named one.
    fn proposal_id(self) -> Option<&'a ProposalId> {
        match self {
            Self::Proposal(id) => Some(id),
            Self::Revocation(_) => None,
        }
    }
}

#[cfg(test)]
mod parse_grace_tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Issue 8: a hostile `grace_period` is a one-line error, never a panic, and what is
        /// accepted stays within 30 days.
        #[test]
        fn hostile_grace_periods_are_errors_not_panics(raw in crate::model::hostile::text()) {
            match parse_grace(Some(&raw)) {
                Ok(d) => proptest::prop_assert!(d <= MAX_GRACE),
                Err(e) => proptest::prop_assert!(!e.to_string().contains('\n'), "{e}"),
            }
        }
    }
}
