//! Executing an approved plan step by step, and picking up where a stopped process left off.
//!
//! Before each external call an intent row is written, after it an outcome row, each in its own
//! committed transaction with its audit record. A crash therefore leaves an intent without an
//! outcome, which `recover` finds on the next start: it undoes that step if it can have left
//! half-made state (a created credential whose secret never reached the sink) and resumes.
//!
//! No provider or sink call is made inside a database transaction: each runs between them,
//! bounded by a timeout, so a provider that stalls holds no lock on the store.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{ApprovedPlan, Engine, EngineError, Result, bounded, with_timeout};
use crate::audit::{AuditEntry, Decision};
use crate::model::proposal::{StepPhase, StepRecord, StepStatus};
use crate::model::{PlanStep, Proposal, ProposalId, ProposalStatus, StepAction};
use crate::ports::{ProviderError, StepResult};

/// Attempts of one step against an unavailable provider before the proposal fails.
const MAX_ATTEMPTS: usize = 5;
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(30);
/// How long undoing a failed step may take before it counts as failed (remove by hand).
#[cfg(not(test))]
const ROLLBACK_TIMEOUT: std::time::Duration = super::PROVIDER_TIMEOUT;
#[cfg(test)]
const ROLLBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The principal execution records are written as.
const SYSTEM: &str = "nhi-mcp";

fn step_entry(p: &Proposal, step: &PlanStep, decision: Decision, outcome: &str) -> AuditEntry {
    AuditEntry::new(
        SYSTEM,
        "execute_step",
        &json!({"proposal_id": p.body.id, "step": step.index, "description": step.description}),
        decision,
    )
    .proposal(p.body.id.as_str())
    .outcome(outcome)
}

/// An audit entry for what the server does on its own (finish, recover, expire a proposal).
pub(super) fn system_entry(action: &str, id: &ProposalId, outcome: &str) -> AuditEntry {
    AuditEntry::new(SYSTEM, action, &json!({"proposal_id": id}), Decision::Allow)
        .proposal(id.as_str())
        .outcome(outcome)
}

fn record(
    index: u32,
    phase: StepPhase,
    status: StepStatus,
    detail: impl Into<String>,
) -> StepRecord {
    StepRecord {
        index,
        phase,
        status,
        detail: detail.into(),
        at: Utc::now(),
    }
}

impl Engine {
    async fn reload(&self, id: &ProposalId) -> Result<Proposal> {
        self.store
            .proposal(id)
            .await?
            .ok_or_else(|| EngineError::Internal(format!("proposal `{id}` vanished")))
    }

    /// Runs the remaining steps of an `applying` proposal, stopping early when a step must wait
    /// for the grace period. Returns the proposal as it then stands.
    pub(super) async fn execute(&self, proposal: &Proposal) -> Result<Proposal> {
        let plan = ApprovedPlan::of_applying(proposal).ok_or_else(|| {
            EngineError::Internal(format!("proposal `{}` is not applying", proposal.body.id))
        })?;
        let provider = self.provider_for(plan.identity_id())?.clone();
        let id = proposal.body.id.clone();
        let mut p = proposal.clone();
        loop {
            let done = p.completed_steps();
            let Some(step) = p
                .body
                .plan
                .iter()
                .find(|s| !done.contains(&s.index))
                .cloned()
            else {
                return self.finish_applied(&p).await;
            };
            if step.after_grace {
                let due = grace_due(&p, &plan);
                if Utc::now() < due {
                    let mut tx = self.store.begin().await?;
                    let note = format!(
                        "waiting for the grace period: the steps after it run at {}",
                        due.to_rfc3339()
                    );
                    tx.set_progress(&id, Some(&note), None, Some(due)).await?;
                    tx.commit().await?;
                    // The steps before the grace period changed the identity.
                    self.refresh_cached_identity(plan.identity_id()).await;
                    return self.reload(&id).await;
                }
            }
            let mut tx = self.store.begin().await?;
            tx.record_step(
                &id,
                &record(
                    step.index,
                    StepPhase::Intent,
                    StepStatus::Started,
                    &step.description,
                ),
            )
            .await?;
            tx.set_progress(&id, None, None, None).await?;
            tx.commit().await?;

            // A create step that ran before (a failed attempt) may have left a credential whose
            // secret never reached the sink: undo it before creating again.
            let retried = p.execution.iter().any(|r| r.index == step.index);
            let undo = if retried && is_create(&step) {
                with_timeout(
                    provider.rollback_step(&plan, &step),
                    provider.name().as_str(),
                )
                .await
                .map(|_| ())
            } else {
                Ok(())
            };
            let result = match undo {
                Ok(()) => {
                    with_timeout(provider.apply_step(&plan, &step), provider.name().as_str()).await
                }
                Err(e) => Err(e),
            };
            if !self.step_pause.is_zero() {
                // Crash tests stop the process here: the external call is done, its outcome
                // (and for a new credential, its secret) not yet recorded.
                tokio::time::sleep(self.step_pause).await;
            }
            let outcome = match result {
                Ok(StepResult::Created {
                    credential_id,
                    secret,
                }) => {
                    match self
                        .sink_for(provider.name().as_str())?
                        .put(&id, plan.identity_id(), &credential_id, &secret)
                        .await
                    {
                        Ok(sink_ref) => Ok((
                            if is_create(&step) {
                                format!(
                                    "created credential `{credential_id}`; its secret is in {sink_ref}"
                                )
                            } else {
                                format!(
                                    "new secret for credential `{credential_id}`; it is in {sink_ref}"
                                )
                            },
                            Some(sink_ref),
                        )),
                        // The secret exists nowhere else; the credential is undone before any
                        // retry, or when the step finally fails.
                        Err(e) => Err(EngineError::Provider(ProviderError::Unavailable {
                            provider: provider.name().to_string(),
                            message: if is_create(&step) {
                                format!("{e}; the new credential is undone before a retry")
                            } else {
                                format!(
                                    "{e}; the new secret may be in effect without a copy in the sink: the retry sets and delivers a fresh one"
                                )
                            },
                        })),
                    }
                }
                Ok(StepResult::Done { detail }) => Ok((detail, None)),
                Err(e) => Err(e),
            };
            match outcome {
                Ok((detail, sink_ref)) => {
                    let mut tx = self.store.begin().await?;
                    tx.record_step(
                        &id,
                        &record(
                            step.index,
                            StepPhase::Outcome,
                            StepStatus::Succeeded,
                            &detail,
                        ),
                    )
                    .await?;
                    tx.set_progress(&id, None, sink_ref.as_deref(), None)
                        .await?;
                    tx.append_audit(step_entry(&p, &step, Decision::Allow, &detail))
                        .await?;
                    tx.commit().await?;
                }
                Err(e) => return Err(self.step_failed(&p, &plan, &step, e).await),
            }
            p = self.reload(&id).await?;
        }
    }

    async fn finish_applied(&self, p: &Proposal) -> Result<Proposal> {
        let id = &p.body.id;
        let mut tx = self.store.begin().await?;
        if tx
            .transition(id, ProposalStatus::Applying, ProposalStatus::Applied)
            .await?
        {
            let summary = format!(
                "applied: all {} steps done ({})",
                p.body.plan.len(),
                p.body
                    .plan
                    .iter()
                    .map(step_kind)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let note = match p.outcome.as_deref() {
                Some(prev) if prev.starts_with("recovered") => format!("{summary}; {prev}"),
                _ => summary,
            };
            tx.set_progress(id, Some(&note), None, None).await?;
            tx.append_audit(system_entry("execute", id, "applied"))
                .await?;
        }
        tx.commit().await?;
        self.refresh_cached_identity(&p.body.identity_id).await;
        self.reload(id).await
    }

    /// Records a failed step. A provider that is unavailable gets the step retried later (the
    /// proposal stays `applying`); anything else fails the proposal. Returns the error to report.
    async fn step_failed(
        &self,
        p: &Proposal,
        plan: &ApprovedPlan,
        step: &PlanStep,
        err: EngineError,
    ) -> EngineError {
        let provider = match self.provider_for(plan.identity_id()) {
            Ok(p) => p.clone(),
            Err(e) => return e,
        };
        let id = &p.body.id;
        let attempts = 1 + p
            .execution
            .iter()
            .filter(|r| {
                r.index == step.index
                    && r.phase == StepPhase::Outcome
                    && r.status == StepStatus::Failed
            })
            .count();
        let transient = matches!(
            err,
            EngineError::Provider(ProviderError::Unavailable { .. })
        );
        let retry = transient && attempts < MAX_ATTEMPTS;
        // The rollback is a provider call: made before any transaction is begun, and bounded, so
        // a provider that stalls holds no database lock and every other call goes on.
        let rolled_back = if !retry && is_create(step) {
            Some(
                bounded(
                    ROLLBACK_TIMEOUT,
                    provider.rollback_step(plan, step),
                    provider.name().as_str(),
                )
                .await,
            )
        } else {
            None
        };
        let result = async {
            let mut tx = self.store.begin().await?;
            if retry {
                let retry_at = Utc::now() + RETRY_AFTER * i32::try_from(attempts).unwrap_or(1);
                let detail = format!(
                    "attempt {attempts} failed: {err}; retrying at {}",
                    retry_at.to_rfc3339()
                );
                tx.record_step(
                    id,
                    &record(step.index, StepPhase::Outcome, StepStatus::Failed, &detail),
                )
                .await?;
                tx.set_progress(id, Some(&detail), None, Some(retry_at))
                    .await?;
                tx.append_audit(step_entry(p, step, Decision::Error, &detail))
                    .await?;
            } else {
                let mut detail = format!("step {} failed: {err}", step.index);
                match &rolled_back {
                    Some(Ok(d)) => detail.push_str(&format!("; rolled back: {d}")),
                    Some(Err(e)) => detail.push_str(&format!(
                        "; the half-made credential could not be removed ({e}): remove it by hand"
                    )),
                    None => {}
                }
                tx.record_step(
                    id,
                    &record(step.index, StepPhase::Outcome, StepStatus::Failed, &detail),
                )
                .await?;
                tx.transition(id, ProposalStatus::Applying, ProposalStatus::Failed)
                    .await?;
                let done: Vec<String> = p.completed_steps().iter().map(|i| i.to_string()).collect();
                let note = format!(
                    "failed at step {}: {err}; steps completed before it: [{}]",
                    step.index,
                    done.join(", ")
                );
                tx.set_progress(id, Some(&note), None, None).await?;
                tx.append_audit(step_entry(p, step, Decision::Error, &note))
                    .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, proposal = %id, "cannot record a failed step");
        }
        if !retry {
            // The proposal failed: steps before this one (or a rollback) may have changed the
            // identity. A step to be retried refreshes it when the proposal gets to an end.
            self.refresh_cached_identity(plan.identity_id()).await;
        }
        err
    }

    /// On start: every proposal a stopped process left `applying` mid-step is rolled back at the
    /// interrupted step (where that step can leave half-made state) and resumed. Returns what was
    /// done, per proposal.
    pub async fn recover(&self) -> Result<Vec<(ProposalId, String)>> {
        let mut report = Vec::new();
        for id in self.store.interrupted().await? {
            // One proposal that cannot be recovered must not keep the others (or the server) down.
            let what = match self.recover_one(&id).await {
                Ok(what) => what,
                Err(e) => {
                    tracing::error!(proposal = %id, error = %e, "recovery failed; the proposal stays applying");
                    format!(
                        "recovery failed: {e}; the proposal stays applying and is retried at the next start"
                    )
                }
            };
            report.push((id, what));
        }
        Ok(report)
    }

    async fn recover_one(&self, id: &ProposalId) -> Result<String> {
        let id = id.clone();
        let p = self.reload(&id).await?;
        let Some(plan) = ApprovedPlan::of_applying(&p) else {
            return Ok("nothing to recover".to_owned());
        };
        let provider = self.provider_for(plan.identity_id())?.clone();
        let note = match p
            .interrupted_step()
            .and_then(|i| p.body.plan.iter().find(|s| s.index == i))
        {
            Some(step) => {
                let undo = with_timeout(
                    provider.rollback_step(&plan, step),
                    provider.name().as_str(),
                )
                .await;
                let detail = match &undo {
                    Ok(d) => format!("interrupted by a stop; rolled back: {d}"),
                    Err(e) => format!("interrupted by a stop; rollback failed: {e}"),
                };
                let mut tx = self.store.begin().await?;
                tx.record_step(
                    &id,
                    &record(
                        step.index,
                        StepPhase::Outcome,
                        if undo.is_ok() {
                            StepStatus::RolledBack
                        } else {
                            StepStatus::Failed
                        },
                        &detail,
                    ),
                )
                .await?;
                tx.commit().await?;
                undo?;
                format!(
                    "recovered after a restart: step {} ({}) was interrupted, rolled back and run again",
                    step.index,
                    step_kind(step)
                )
            }
            None => "recovered after a restart: resumed at the next step".to_owned(),
        };
        let mut tx = self.store.begin().await?;
        tx.set_progress(&id, Some(&note), None, None).await?;
        tx.append_audit(system_entry("recover", &id, &note)).await?;
        tx.commit().await?;
        tracing::warn!(proposal = %id, "{note}");
        let p = self.reload(&id).await?;
        Ok(match self.execute(&p).await {
            Ok(done) => format!("{note}; now {}", done.status.as_str()),
            Err(e) => format!("{note}; then: {e}"),
        })
    }

    /// Periodic work: expire overdue proposals and run steps whose time has come.
    pub async fn tick(&self) -> Result<()> {
        let now = Utc::now();
        for id in self
            .store
            .overdue(ProposalStatus::PendingApproval, now)
            .await?
        {
            self.expire(
                &id,
                ProposalStatus::PendingApproval,
                "not approved before its deadline",
            )
            .await?;
        }
        for id in self.store.overdue(ProposalStatus::Approved, now).await? {
            self.expire(
                &id,
                ProposalStatus::Approved,
                "approval expired before it was applied",
            )
            .await?;
        }
        for id in self.store.due_steps(now).await? {
            let p = self.reload(&id).await?;
            if let Err(e) = self.execute(&p).await {
                tracing::warn!(proposal = %id, error = %e, "scheduled step did not complete");
            }
        }
        Ok(())
    }
}

fn is_create(step: &PlanStep) -> bool {
    matches!(step.action, StepAction::CreateCredential { .. })
}

fn step_kind(step: &PlanStep) -> &'static str {
    match step.action {
        StepAction::CreateCredential { .. } => "create credential",
        StepAction::DeactivateCredential { .. } => "deactivate credential",
        StepAction::DeleteCredential { .. } => "delete credential",
        StepAction::DisableSignIn => "disable sign-in",
        StepAction::SetPassword { .. } => "set password",
        StepAction::TerminateSessions => "terminate sessions",
    }
}

/// When the steps after the grace period may run: the grace after the first step succeeded.
fn grace_due(p: &Proposal, plan: &ApprovedPlan) -> DateTime<Utc> {
    let started = p
        .execution
        .iter()
        .find(|r| r.phase == StepPhase::Outcome && r.status == StepStatus::Succeeded)
        .map_or_else(Utc::now, |r| r.at);
    started + chrono::Duration::from_std(plan.grace()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::authz::{Principal, Scope};
    use crate::config::{Config, Overrides};
    use crate::engine::Caller;
    use crate::model::{Credential, Identity, IdentityId, ProviderName};
    use crate::ports::Provider;

    /// The demo inventory, except that creating a credential is refused and undoing it never
    /// answers: a provider that stalls during rollback.
    struct StallsInRollback {
        inner: Arc<dyn Provider>,
        rolling_back: Arc<tokio::sync::Notify>,
    }

    #[async_trait]
    impl Provider for StallsInRollback {
        fn name(&self) -> &ProviderName {
            self.inner.name()
        }

        fn kind(&self) -> &'static str {
            self.inner.kind()
        }

        async fn list(&self) -> Result<Vec<Identity>, ProviderError> {
            self.inner.list().await
        }

        async fn get(&self, id: &IdentityId) -> Result<Option<Identity>, ProviderError> {
            self.inner.get(id).await
        }

        fn plan_rotation(
            &self,
            identity: &Identity,
            credential: &Credential,
            grace: std::time::Duration,
        ) -> Result<Vec<PlanStep>, ProviderError> {
            self.inner.plan_rotation(identity, credential, grace)
        }

        fn plan_revocation(
            &self,
            identity: &Identity,
        ) -> Result<(Vec<PlanStep>, crate::model::proposal::BlastRadius), ProviderError> {
            self.inner.plan_revocation(identity)
        }

        async fn apply_step(
            &self,
            _plan: &ApprovedPlan,
            _step: &PlanStep,
        ) -> Result<StepResult, ProviderError> {
            Err(ProviderError::Refused {
                provider: self.name().to_string(),
                message: "the backend refused the new credential".to_owned(),
            })
        }

        async fn rollback_step(
            &self,
            _plan: &ApprovedPlan,
            _step: &PlanStep,
        ) -> Result<String, ProviderError> {
            self.rolling_back.notify_one();
            std::future::pending().await
        }
    }

    fn agent(tool: &str) -> Caller {
        let agent = Principal::new("agent:local", [Scope::Read, Scope::Propose, Scope::Apply]);
        Caller::new(&agent, tool, serde_json::Value::Null)
    }

    fn admin() -> Principal {
        Principal::new("alice", [Scope::Approve])
    }

    /// Issue #8: `step_failed` called `rollback_step` inside an open write transaction with no
    /// timeout, so a stalled provider held SQLite's write lock and every audited call failed with
    /// "database is locked". Now reads, writes and admin decisions answer while it stalls, and
    /// the rollback gives up after its timeout.
    #[tokio::test]
    async fn a_provider_that_stalls_during_rollback_holds_no_database_lock() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("inv.toml");
        std::fs::write(&file, crate::config::DEMO_INVENTORIES[0].1).expect("write");
        let toml = format!(
            "[[providers]]\nname = \"inv\"\nkind = \"inventory\"\npath = \"{}\"\n",
            file.display()
        );
        let overrides = Overrides {
            config_file: None,
            data_dir: Some(dir.path().join("data")),
        };
        let config = Config::from_toml(&toml, None, &overrides).expect("config");
        let mut engine = crate::cli::compose::open_engine(&config)
            .await
            .expect("engine");
        let rolling_back = Arc::new(tokio::sync::Notify::new());
        let inner = engine.providers["inv"].clone();
        engine.providers.insert(
            "inv".to_owned(),
            Arc::new(StallsInRollback {
                inner,
                rolling_back: rolling_back.clone(),
            }),
        );
        let engine = Arc::new(engine);

        let target = IdentityId::parse("inv:user/sftp-partner-acmebank").expect("id");
        let proposed = engine
            .propose_rotation(
                &agent("propose_rotation"),
                &target,
                None,
                Some("0s"),
                "stall test",
            )
            .await
            .expect("propose");
        let id = proposed.proposal.body.id.clone();
        let token = engine
            .approve(&admin(), &id)
            .await
            .expect("approve")
            .token
            .expect("token");
        let apply = tokio::spawn({
            let engine = engine.clone();
            let id = id.clone();
            async move {
                engine
                    .apply_proposal(&agent("apply_proposal"), &id, &token)
                    .await
            }
        });
        tokio::time::timeout(Duration::from_secs(20), rolling_back.notified())
            .await
            .expect("the failed create step is rolled back");

        // The provider stalls: an audited read, an audited write and an admin's decision all
        // answer at once (with the lock held they waited 10 s and failed).
        let quick = Duration::from_secs(3);
        let shown = tokio::time::timeout(quick, engine.get_proposal(&agent("get_proposal"), &id))
            .await
            .expect("a read answers while the provider stalls")
            .expect("read");
        assert_eq!(shown.status, ProposalStatus::Applying);
        let other = IdentityId::parse("inv:user/ci-deploy").expect("id");
        let revoke = tokio::time::timeout(
            quick,
            engine.revoke_identity(
                &agent("revoke_identity"),
                &other,
                Some("while the provider stalls"),
                None,
            ),
        )
        .await
        .expect("a proposal answers while the provider stalls")
        .expect("propose");
        tokio::time::timeout(
            quick,
            engine.reject(&admin(), &revoke.proposal.body.id, "not now"),
        )
        .await
        .expect("a rejection answers while the provider stalls")
        .expect("reject");

        // The rollback is bounded: the apply answers, and the proposal failed saying what to do.
        let err = tokio::time::timeout(ROLLBACK_TIMEOUT + Duration::from_secs(10), apply)
            .await
            .expect("the rollback gives up after its timeout")
            .expect("join")
            .expect_err("the step failed");
        assert!(
            err.to_string().contains("refused the new credential"),
            "{err}"
        );
        let p = engine.proposal(&id).await.expect("proposal");
        assert_eq!(p.status, ProposalStatus::Failed);
        let last = p.execution.last().expect("steps");
        assert!(
            last.detail.contains("could not be removed") && last.detail.contains("no answer"),
            "{}",
            last.detail
        );
        let records = engine.store().audit_records().await.expect("audit");
        assert!(crate::audit::verify(&records).is_ok());
    }
}
