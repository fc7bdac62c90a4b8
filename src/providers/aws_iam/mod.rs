//! The `aws_iam` provider: the IAM users and roles of one AWS account.
//!
//! - Credentials come from the AWS SDK's standard chain (environment, profile, SSO, web
//!   identity, instance role); `endpoint_url` points the clients at an emulator.
//! - Listing reads `GetAccountAuthorizationDetails` (users, groups, roles, customer-managed
//!   policies with their documents, tags) and, per user, `ListAccessKeys`,
//!   `GetAccessKeyLastUsed` and `GetLoginProfile`, all paginated. `get` reads the same for one
//!   identity with calls about it alone (`GetUser` or `GetRole`, its inline and attached
//!   policies, its groups' policies, the customer-managed policies' default versions), put in
//!   the same shape and converted by the same code, so a plan and its apply-time check see
//!   exactly what a list shows, and a read costs the same in an account of any size.
//! - An identity is privileged when it has (directly or through a group) `AdministratorAccess`
//!   or `IAMFullAccess`, or a policy that allows `*` actions (`*`, `service:*`, `NotAction`) or
//!   `*` resources. AWS-managed policies other than those two are judged by name only: their
//!   documents are not fetched.
//! - Tags give owner, environment and purpose (tag keys configurable).
//! - Rotation: create a new access key, deliver it to the sink, keep the old key active for the
//!   grace period, then deactivate and delete it. AWS allows two keys per user: an inactive
//!   second key is deleted as the plan's first, visible step; a second active key makes the
//!   rotation refuse, since deleting a key something may use is a decision for a human.
//! - Revocation deactivates every access key and deletes the console login profile; the user
//!   itself is never deleted. Roles have no long-lived credentials and are not changed.
//! - The identity nhi-mcp runs as (from `sts:GetCallerIdentity`) is never changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iam::types::{EntityType, StatusType};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{Provider, ProviderError, StepResult};
pub use crate::config::{AwsEndpoint, TagKeys};
use crate::model::proposal::BlastRadius;
use crate::model::{
    Credential, CredentialId, CredentialKind, CredentialStatus, Identity, IdentityId, IdentityKind,
    Permissions, PlanStep, ProviderName, Secret, StepAction,
};
use crate::ports::ApprovedPlan;

mod apply;
mod plan;
mod policy;
mod read;

use super::aws::describe_sdk_error;

/// The credential id of a user's console password (its login profile).
pub const CONSOLE_PASSWORD: &str = "console-password";

/// AWS-managed policies that make an identity privileged by their name alone.
const ADMIN_POLICIES: [&str; 2] = ["AdministratorAccess", "IAMFullAccess"];

/// Calls in flight at once while reading per-user details.
const CONCURRENCY: usize = 16;

pub struct AwsIamProvider {
    name: ProviderName,
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
    tag_keys: TagKeys,
    path_prefix: String,
    /// The native id (`user/NAME`, `role/NAME`, `root`) of the identity nhi-mcp runs as, once
    /// known; until then nothing is changed.
    own: OnceLock<String>,
}

impl AwsIamProvider {
    pub fn new(
        name: ProviderName,
        sdk: &aws_config::SdkConfig,
        tag_keys: TagKeys,
        path_prefix: Option<String>,
    ) -> Self {
        Self {
            name,
            iam: aws_sdk_iam::Client::new(sdk),
            sts: aws_sdk_sts::Client::new(sdk),
            tag_keys,
            path_prefix: path_prefix.unwrap_or_else(|| "/".to_owned()),
            own: OnceLock::new(),
        }
    }

    fn sdk_err<E: ProvideErrorMetadata>(
        &self,
        op: &str,
        e: SdkError<E, HttpResponse>,
    ) -> ProviderError {
        let (message, transient) = describe_sdk_error(op, &e);
        if transient {
            ProviderError::Unavailable {
                provider: self.name.to_string(),
                message,
            }
        } else {
            ProviderError::Refused {
                provider: self.name.to_string(),
                message,
            }
        }
    }

    fn refused(&self, message: String) -> ProviderError {
        ProviderError::Refused {
            provider: self.name.to_string(),
            message,
        }
    }

    /// Who nhi-mcp is in this account, asked once (`sts:GetCallerIdentity`).
    pub async fn caller_arn(&self) -> Result<String, ProviderError> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| self.sdk_err("GetCallerIdentity", e))?;
        let arn = out.arn().unwrap_or_default().to_owned();
        let _ = self.own.set(own_native_id(&arn));
        Ok(arn)
    }

    async fn ensure_own(&self) -> Result<(), ProviderError> {
        if self.own.get().is_none() {
            self.caller_arn().await?;
        }
        Ok(())
    }

    /// Refuses to change the identity nhi-mcp runs as (or any, while that is unknown).
    fn refuse_own(&self, identity_native: &str) -> Result<(), ProviderError> {
        match self.own.get() {
            None => Err(self.refused(
                "the identity nhi-mcp runs as is not known yet (sts:GetCallerIdentity has not answered); nothing is changed until it is".to_owned(),
            )),
            Some(own) if own == identity_native => Err(self.refused(format!(
                "`{identity_native}` is the identity nhi-mcp runs as; changing it would lock nhi-mcp out (rotate or revoke it by hand)"
            ))),
            Some(_) => Ok(()),
        }
    }

    fn id(&self, native: &str) -> Result<IdentityId, ProviderError> {
        IdentityId::new(&self.name, native).map_err(|e| self.refused(e.0))
    }

    fn in_scope(&self, path: Option<&str>) -> bool {
        path.unwrap_or("/").starts_with(&self.path_prefix)
    }

    fn user_of(&self, id: &IdentityId) -> Result<String, ProviderError> {
        id.native()
            .strip_prefix("user/")
            .map(str::to_owned)
            .ok_or_else(|| {
                self.refused(format!(
                    "`{id}` is not an IAM user; only users have access keys"
                ))
            })
    }

    /// Runs one IAM call that may find its target already gone: gone counts as done.
    fn gone<E: ProvideErrorMetadata>(
        &self,
        op: &str,
        r: Result<(), SdkError<E, HttpResponse>>,
    ) -> Result<bool, ProviderError> {
        match r {
            Ok(()) => Ok(false),
            Err(e) if e.code() == Some("NoSuchEntity") => Ok(true),
            Err(e) => Err(self.sdk_err(op, e)),
        }
    }
}

#[async_trait]
impl Provider for AwsIamProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "aws_iam"
    }

    async fn list(&self) -> Result<Vec<Identity>, ProviderError> {
        // Know who nhi-mcp is before anything is planned; a failure here is not fatal to
        // listing (plans refuse until it is known).
        if let Err(e) = self.ensure_own().await {
            tracing::warn!(provider = %self.name, error = %e, "cannot tell which identity nhi-mcp runs as");
        }
        let details = self.account_details().await?;
        let reads: Vec<_> = details
            .users
            .iter()
            .filter(|u| self.in_scope(u.path()))
            .map(|u| self.user_identity(&details, u))
            .collect();
        let mut out: Vec<Identity> = stream::iter(reads)
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        for role in details.roles.iter().filter(|r| self.in_scope(r.path())) {
            out.push(self.role_identity(&details, role)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn get(&self, id: &IdentityId) -> Result<Option<Identity>, ProviderError> {
        if id.provider() != self.name.as_str() {
            return Ok(None);
        }
        let _ = self.ensure_own().await;
        let native = id.native();
        let (is_user, name) = if let Some(n) = native.strip_prefix("user/") {
            (true, n)
        } else if let Some(n) = native.strip_prefix("role/") {
            (false, n)
        } else {
            return Ok(None);
        };
        if !read::iam_name(name) {
            return Ok(None);
        }
        // The entity, its policies, its groups' policies and the customer-managed documents
        // that reach it, in the shape `list` reads for the whole account: the same conversion
        // makes `get` and `list` exactly alike, and one read costs the same in any account.
        let details = if is_user {
            self.user_details(name).await?
        } else {
            self.role_details(name).await?
        };
        let Some(details) = details else {
            return Ok(None);
        };
        if is_user {
            match details
                .users
                .iter()
                .find(|u| u.user_name() == Some(name) && self.in_scope(u.path()))
            {
                Some(u) => Ok(Some(self.user_identity(&details, u).await?)),
                None => Ok(None),
            }
        } else {
            match details
                .roles
                .iter()
                .find(|r| r.role_name() == Some(name) && self.in_scope(r.path()))
            {
                Some(r) => Ok(Some(self.role_identity(&details, r)?)),
                None => Ok(None),
            }
        }
    }

    fn plan_rotation(
        &self,
        identity: &Identity,
        credential: &Credential,
        grace: Duration,
    ) -> Result<Vec<PlanStep>, ProviderError> {
        self.rotation_plan(identity, credential, grace)
    }

    fn plan_revocation(
        &self,
        identity: &Identity,
    ) -> Result<(Vec<PlanStep>, BlastRadius), ProviderError> {
        self.revocation_plan(identity)
    }

    async fn apply_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<StepResult, ProviderError> {
        self.run_step(plan, step).await
    }

    async fn rollback_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<String, ProviderError> {
        self.undo_step(plan, step).await
    }

    async fn capabilities(&self) -> Result<Vec<String>, ProviderError> {
        let arn = self.caller_arn().await?;
        let mut lines = vec![format!("runs as {arn} (never changed by nhi-mcp)")];
        // To list; to read one identity (`get`: the user or role, its policies, its groups'
        // policies, customer-managed documents); to rotate and revoke.
        const ACTIONS: [&str; 22] = [
            "iam:GetAccountAuthorizationDetails",
            "iam:ListAccessKeys",
            "iam:GetAccessKeyLastUsed",
            "iam:GetLoginProfile",
            "iam:GetUser",
            "iam:ListAttachedUserPolicies",
            "iam:ListUserPolicies",
            "iam:GetUserPolicy",
            "iam:ListGroupsForUser",
            "iam:ListAttachedGroupPolicies",
            "iam:ListGroupPolicies",
            "iam:GetGroupPolicy",
            "iam:GetPolicy",
            "iam:GetPolicyVersion",
            "iam:GetRole",
            "iam:ListAttachedRolePolicies",
            "iam:ListRolePolicies",
            "iam:GetRolePolicy",
            "iam:CreateAccessKey",
            "iam:UpdateAccessKey",
            "iam:DeleteAccessKey",
            "iam:DeleteLoginProfile",
        ];
        // Assumed-role sessions are simulated as their role.
        let source = session_to_role_arn(&arn);
        match self
            .iam
            .simulate_principal_policy()
            .policy_source_arn(&source)
            .set_action_names(Some(ACTIONS.iter().map(|a| (*a).to_owned()).collect()))
            .send()
            .await
        {
            Ok(out) => {
                let denied: Vec<String> = out
                    .evaluation_results()
                    .iter()
                    .filter(|r| {
                        r.eval_decision()
                            != &aws_sdk_iam::types::PolicyEvaluationDecisionType::Allowed
                    })
                    .map(|r| r.eval_action_name().to_owned())
                    .collect();
                if denied.is_empty() {
                    lines.push(
                        "its policies allow listing, reading one identity, rotating and revoking"
                            .to_owned(),
                    );
                } else {
                    lines.push(format!(
                        "cannot, by its policies: {} (what needs them fails)",
                        denied.join(", ")
                    ));
                }
            }
            Err(e) => {
                let (message, _) = describe_sdk_error("SimulatePrincipalPolicy", &e);
                lines.push(format!(
                    "could not check its permissions ({message}); rotating and revoking need iam:CreateAccessKey, iam:UpdateAccessKey, iam:DeleteAccessKey, iam:DeleteLoginProfile"
                ));
            }
        }
        Ok(lines)
    }
}

fn to_chrono(t: &aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// `arn:aws:iam::1:user/path/NAME` → `user/NAME`; `arn:aws:sts::1:assumed-role/ROLE/SESSION`
/// → `role/ROLE`; the account root → `root`.
fn own_native_id(arn: &str) -> String {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or_default();
    if let Some(rest) = resource.strip_prefix("user/") {
        format!("user/{}", rest.rsplit('/').next().unwrap_or(rest))
    } else if let Some(rest) = resource.strip_prefix("assumed-role/") {
        format!("role/{}", rest.split('/').next().unwrap_or(rest))
    } else if let Some(rest) = resource.strip_prefix("role/") {
        format!("role/{}", rest.rsplit('/').next().unwrap_or(rest))
    } else {
        resource.to_owned()
    }
}

/// An assumed-role session's ARN as its role's ARN (what `SimulatePrincipalPolicy` takes).
fn session_to_role_arn(arn: &str) -> String {
    let mut parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() == 6
        && parts[2] == "sts"
        && let Some(rest) = parts[5].strip_prefix("assumed-role/")
    {
        let role = rest.split('/').next().unwrap_or(rest).to_owned();
        parts[2] = "iam";
        let resource = format!("role/{role}");
        let head = parts[..5].join(":");
        return format!("{head}:{resource}");
    }
    arn.to_owned()
}

#[cfg(test)]
mod tests {
    use super::policy::{parse_document, trust_principals, wildcards};
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards_in_actions_and_resources() {
        let admin = json!({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]});
        let w = wildcards(&admin);
        assert!(w.action && w.resource);
        let narrow = json!({"Statement": {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/*"]}});
        let w = wildcards(&narrow);
        assert!(!w.action && !w.resource);
        let service =
            json!({"Statement": [{"Effect": "Allow", "Action": "iam:*", "Resource": "arn:x"}]});
        assert!(wildcards(&service).action);
        let deny = json!({"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]});
        let w = wildcards(&deny);
        assert!(!w.action && !w.resource);
    }

    #[test]
    fn trust_principals_are_named() {
        let doc = json!({"Statement": [{"Effect": "Allow", "Principal": {
            "Service": ["ec2.amazonaws.com"],
            "Federated": "arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com"
        }, "Action": "sts:AssumeRoleWithWebIdentity"}]});
        assert_eq!(
            trust_principals(&doc),
            vec![
                "federated arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com",
                "service ec2.amazonaws.com"
            ]
        );
        let open = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}}]});
        assert_eq!(trust_principals(&open), vec!["anyone (*)"]);
    }

    /// A name IAM could not hold is "not found" without a call (IAM would answer a
    /// validation error, which is not "not found").
    #[test]
    fn only_names_iam_can_hold_are_asked_for() {
        for ok in ["ci-deploy", "a", "svc+x=y,z.w@q_1", &"n".repeat(64)] {
            assert!(read::iam_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "x!y", "ünï", "a b", &"n".repeat(65)] {
            assert!(!read::iam_name(bad), "{bad}");
        }
    }

    #[test]
    fn documents_may_be_url_encoded() {
        let raw = "%7B%22Statement%22%3A%5B%5D%7D";
        assert_eq!(parse_document(raw), Some(json!({"Statement": []})));
        assert_eq!(parse_document("{\"a\":1}"), Some(json!({"a": 1})));
    }

    #[test]
    fn own_identity_from_caller_arn() {
        assert_eq!(
            own_native_id("arn:aws:iam::1:user/ci/deployer"),
            "user/deployer"
        );
        assert_eq!(
            own_native_id("arn:aws:sts::1:assumed-role/nhi-mcp/session-1"),
            "role/nhi-mcp"
        );
        assert_eq!(own_native_id("arn:aws:iam::1:root"), "root");
        assert_eq!(
            session_to_role_arn("arn:aws:sts::1:assumed-role/nhi-mcp/s"),
            "arn:aws:iam::1:role/nhi-mcp"
        );
    }
}
