//! Applying: one step of an approved plan, and undoing an interrupted key creation.

use super::*;

impl AwsIamProvider {
    pub(super) async fn run_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<StepResult, ProviderError> {
        let user = self.user_of(plan.identity_id())?;
        self.ensure_own().await?;
        self.refuse_own(plan.identity_id().native())?;
        match &step.action {
            StepAction::CreateCredential { .. } => {
                let out = self
                    .iam
                    .create_access_key()
                    .user_name(&user)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.code() == Some("LimitExceeded") {
                            self.refused(format!(
                                "user `{user}` already has two access keys (AWS's limit); the plan expected one"
                            ))
                        } else {
                            self.sdk_err("CreateAccessKey", e)
                        }
                    })?;
                let key = out
                    .access_key()
                    .ok_or_else(|| self.refused("CreateAccessKey returned no key".to_owned()))?;
                Ok(StepResult::Created {
                    credential_id: CredentialId::parse(key.access_key_id())
                        .map_err(|e| self.refused(e.0))?,
                    secret: Secret::new(key.secret_access_key().to_owned()),
                })
            }
            StepAction::DeactivateCredential { credential_id } => {
                let r = self
                    .iam
                    .update_access_key()
                    .user_name(&user)
                    .access_key_id(credential_id.as_str())
                    .status(StatusType::Inactive)
                    .send()
                    .await
                    .map(|_| ());
                let gone = self.gone("UpdateAccessKey", r)?;
                Ok(StepResult::Done {
                    detail: if gone {
                        format!("access key `{credential_id}` no longer exists")
                    } else {
                        format!("access key `{credential_id}` is inactive")
                    },
                })
            }
            StepAction::DeleteCredential { credential_id } => {
                let r = self
                    .iam
                    .delete_access_key()
                    .user_name(&user)
                    .access_key_id(credential_id.as_str())
                    .send()
                    .await
                    .map(|_| ());
                let gone = self.gone("DeleteAccessKey", r)?;
                Ok(StepResult::Done {
                    detail: if gone {
                        format!("access key `{credential_id}` was already deleted")
                    } else {
                        format!("deleted access key `{credential_id}`")
                    },
                })
            }
            StepAction::DisableSignIn => {
                let r = self
                    .iam
                    .delete_login_profile()
                    .user_name(&user)
                    .send()
                    .await
                    .map(|_| ());
                let gone = self.gone("DeleteLoginProfile", r)?;
                Ok(StepResult::Done {
                    detail: if gone {
                        format!("user `{user}` had no console login profile")
                    } else {
                        format!("deleted the console login profile of user `{user}`")
                    },
                })
            }
            StepAction::SetPassword { .. } | StepAction::TerminateSessions => {
                Err(self.refused("this step is not one the aws_iam provider plans".to_owned()))
            }
        }
    }

    pub(super) async fn undo_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<String, ProviderError> {
        let StepAction::CreateCredential { .. } = step.action else {
            return Ok("nothing to undo: the step is run again".to_owned());
        };
        // An interrupted create may have made a key whose secret reached no sink: every key
        // the user has now that the approved snapshot did not list is such a key.
        let user = self.user_of(plan.identity_id())?;
        let known: BTreeSet<&str> = plan
            .snapshot_credentials()
            .iter()
            .map(CredentialId::as_str)
            .collect();
        let keys = self.access_keys(&user).await?;
        let mut deleted = Vec::new();
        for key in keys {
            let Some(id) = key.access_key_id() else {
                continue;
            };
            if known.contains(id) {
                continue;
            }
            let r = self
                .iam
                .delete_access_key()
                .user_name(&user)
                .access_key_id(id)
                .send()
                .await
                .map(|_| ());
            self.gone("DeleteAccessKey", r)?;
            deleted.push(format!("`{id}`"));
        }
        Ok(if deleted.is_empty() {
            "no access key had been created".to_owned()
        } else {
            format!(
                "deleted access key {} made by the interrupted run",
                deleted.join(", ")
            )
        })
    }
}
