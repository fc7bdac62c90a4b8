//! Planning: the steps of a rotation or a revocation, and what a revocation will break. Nothing
//! here changes anything.

use super::*;

impl AwsIamProvider {
    pub(super) fn rotation_plan(
        &self,
        identity: &Identity,
        credential: &Credential,
        grace: Duration,
    ) -> Result<Vec<PlanStep>, ProviderError> {
        self.refuse_own(&identity.native_id)?;
        if identity.kind != IdentityKind::ServiceUser {
            return Err(self.refused(format!(
                "`{}` is a role: it has no long-lived credentials to rotate",
                identity.id
            )));
        }
        if credential.kind != CredentialKind::AccessKey {
            return Err(self.refused(format!(
                "`{}` is the console password; nhi-mcp rotates access keys only (revoke sign-in instead)",
                credential.id
            )));
        }
        if credential.status != CredentialStatus::Active {
            return Err(self.refused(format!(
                "access key `{}` is inactive: nothing uses it, so there is nothing to rotate",
                credential.id
            )));
        }
        let others: Vec<&Credential> = identity
            .credentials
            .iter()
            .filter(|c| c.kind == CredentialKind::AccessKey && c.id != credential.id)
            .collect();
        if let Some(active) = others.iter().find(|c| c.status == CredentialStatus::Active) {
            return Err(self.refused(format!(
                "user `{}` already has a second active access key `{}`; AWS allows two keys per user, so rotating `{}` needs that key deactivated first (rotate or revoke it, or deactivate it by hand)",
                identity.name, active.id, credential.id
            )));
        }
        let mut steps = Vec::new();
        for inactive in &others {
            steps.push(PlanStep {
                index: steps.len() as u32,
                action: StepAction::DeleteCredential {
                    credential_id: inactive.id.clone(),
                },
                description: format!(
                    "delete the inactive second access key `{}` of user `{}` (AWS allows two keys per user; last used {})",
                    inactive.id,
                    identity.name,
                    inactive
                        .last_used_at
                        .map_or("never".to_owned(), |t| t.to_rfc3339())
                ),
                after_grace: false,
            });
        }
        steps.push(PlanStep {
            index: steps.len() as u32,
            action: StepAction::CreateCredential {
                replaces: credential.id.clone(),
                credential_kind: CredentialKind::AccessKey,
            },
            description: format!(
                "create a new access key for user `{}` and deliver it to the secret sink",
                identity.name
            ),
            after_grace: false,
        });
        steps.push(PlanStep {
            index: steps.len() as u32,
            action: StepAction::DeactivateCredential {
                credential_id: credential.id.clone(),
            },
            description: format!(
                "after a grace period of {}, deactivate the old access key `{}`",
                humantime::format_duration(grace),
                credential.id
            ),
            after_grace: true,
        });
        steps.push(PlanStep {
            index: steps.len() as u32,
            action: StepAction::DeleteCredential {
                credential_id: credential.id.clone(),
            },
            description: format!("delete the old access key `{}`", credential.id),
            after_grace: true,
        });
        Ok(steps)
    }

    pub(super) fn revocation_plan(
        &self,
        identity: &Identity,
    ) -> Result<(Vec<PlanStep>, BlastRadius), ProviderError> {
        self.refuse_own(&identity.native_id)?;
        if identity.kind != IdentityKind::ServiceUser {
            return Err(self.refused(format!(
                "`{}` is a role: it has no long-lived credentials; revoke it by changing its trust policy",
                identity.id
            )));
        }
        let mut steps = Vec::new();
        let mut deactivated = Vec::new();
        let mut sign_in = false;
        for c in &identity.credentials {
            if c.status != CredentialStatus::Active {
                continue;
            }
            if c.kind == CredentialKind::AccessKey {
                steps.push(PlanStep {
                    index: steps.len() as u32,
                    action: StepAction::DeactivateCredential {
                        credential_id: c.id.clone(),
                    },
                    description: format!(
                        "deactivate access key `{}` of user `{}` (it is kept, inactive)",
                        c.id, identity.name
                    ),
                    after_grace: false,
                });
                deactivated.push(c.id.clone());
            } else if c.kind == CredentialKind::Password {
                sign_in = true;
            }
        }
        if sign_in {
            steps.push(PlanStep {
                index: steps.len() as u32,
                action: StepAction::DisableSignIn,
                description: format!(
                    "delete the console login profile of user `{}`",
                    identity.name
                ),
                after_grace: false,
            });
        }
        if steps.is_empty() {
            return Err(self.refused(format!(
                "`{}` has no active access key and no console password: it is already revoked",
                identity.id
            )));
        }
        let blast = BlastRadius {
            credentials_deactivated: deactivated,
            sign_in_disabled: sign_in,
            environments: identity.environment.iter().cloned().collect(),
            privileged: identity.permissions.privileged,
            last_used_at: identity.last_activity(),
            summary: format!(
                "user `{}` can no longer call AWS with its access keys{}; the user, its policies and its keys (inactive) are kept ({})",
                identity.name,
                if sign_in {
                    " or sign in to the console"
                } else {
                    ""
                },
                identity.permissions.summary
            ),
        };
        Ok((steps, blast))
    }
}
