//! The `aws_iam` provider: the IAM users and roles of one AWS account.
//!
//! - Credentials come from the AWS SDK's standard chain (environment, profile, SSO, web
//!   identity, instance role); `endpoint_url` points the clients at an emulator.
//! - Listing reads `GetAccountAuthorizationDetails` (users, groups, roles, customer-managed
//!   policies with their documents, tags) and, per user, `ListAccessKeys`,
//!   `GetAccessKeyLastUsed` and `GetLoginProfile`, all paginated. `get` reads the same for one
//!   identity, so a plan and its apply-time check see exactly what a list shows.
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

/// The credential id of a user's console password (its login profile).
pub const CONSOLE_PASSWORD: &str = "console-password";

/// AWS-managed policies that make an identity privileged by their name alone.
const ADMIN_POLICIES: [&str; 2] = ["AdministratorAccess", "IAMFullAccess"];

/// Calls in flight at once while reading per-user details.
const CONCURRENCY: usize = 16;

/// The SDK configuration for `endpoint`: the standard credential chain, rustls with ring,
/// bounded timeouts and the SDK's standard retries (3 attempts).
pub async fn sdk_config(endpoint: &AwsEndpoint) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls;
    let timeout = endpoint.timeout.unwrap_or(Duration::from_secs(25));
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(timeout.min(Duration::from_secs(10)))
                .operation_timeout(timeout)
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    if let Some(region) = &endpoint.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &endpoint.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(profile) = &endpoint.profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

/// What an SDK error says, without anything secret: the operation, AWS's error code and
/// message (which name resources, never credentials), or the transport failure.
pub fn describe_sdk_error<E>(op: &str, e: &SdkError<E, HttpResponse>) -> (String, bool)
where
    E: ProvideErrorMetadata,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let transient = match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => {
            status.is_some_and(|s| s >= 500 || s == 429)
                || matches!(e.code(), Some("Throttling" | "ServiceFailure"))
        }
    };
    let message = match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{op}: {code}: {}", one_line(msg)),
        (Some(code), None) => format!("{op}: {code}"),
        _ => match e {
            SdkError::TimeoutError(_) => format!("{op}: no answer in time"),
            SdkError::DispatchFailure(_) => format!("{op}: could not reach the endpoint"),
            _ => match status {
                Some(s) => format!("{op}: failed with HTTP {s}"),
                None => format!("{op}: failed"),
            },
        },
    };
    (message, transient)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

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

    /// Users, groups, roles and customer-managed policies, every page.
    async fn account_details(&self) -> Result<Details, ProviderError> {
        let mut details = Details::default();
        let mut pages = self
            .iam
            .get_account_authorization_details()
            .filter(EntityType::User)
            .filter(EntityType::Group)
            .filter(EntityType::Role)
            .filter(EntityType::LocalManagedPolicy)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_err("GetAccountAuthorizationDetails", e))?;
            details
                .users
                .extend(page.user_detail_list().iter().cloned());
            details
                .roles
                .extend(page.role_detail_list().iter().cloned());
            for g in page.group_detail_list() {
                let docs = documents(g.group_policy_list());
                let names = g
                    .attached_managed_policies()
                    .iter()
                    .filter_map(|p| p.policy_arn().map(str::to_owned))
                    .collect::<Vec<_>>();
                details.groups.insert(
                    g.group_name().unwrap_or_default().to_owned(),
                    GroupPolicies {
                        managed: names,
                        inline: docs,
                    },
                );
            }
            for p in page.policies() {
                let default = p.default_version_id();
                let doc = p
                    .policy_version_list()
                    .iter()
                    .find(|v| v.is_default_version() || v.version_id() == default)
                    .and_then(|v| v.document())
                    .and_then(parse_document);
                if let (Some(arn), Some(doc)) = (p.arn(), doc) {
                    details.managed_docs.insert(arn.to_owned(), doc);
                }
            }
        }
        Ok(details)
    }

    /// A user's access keys, every page.
    async fn access_keys(
        &self,
        user: &str,
    ) -> Result<Vec<aws_sdk_iam::types::AccessKeyMetadata>, ProviderError> {
        self.iam
            .list_access_keys()
            .user_name(user)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.sdk_err("ListAccessKeys", e))
    }

    /// A user's access keys (with their last use) and console password, if any.
    async fn user_credentials(&self, user: &str) -> Result<Vec<Credential>, ProviderError> {
        let keys = self.access_keys(user).await?;
        let mut out = Vec::with_capacity(keys.len() + 1);
        for key in keys {
            let Some(key_id) = key.access_key_id() else {
                continue;
            };
            let last = self
                .iam
                .get_access_key_last_used()
                .access_key_id(key_id)
                .send()
                .await
                .map_err(|e| self.sdk_err("GetAccessKeyLastUsed", e))?;
            out.push(Credential {
                id: CredentialId::parse(key_id).map_err(|e| self.refused(e.0))?,
                kind: CredentialKind::AccessKey,
                created_at: key.create_date().and_then(to_chrono).unwrap_or_default(),
                last_used_at: last
                    .access_key_last_used()
                    .and_then(|u| u.last_used_date())
                    .and_then(to_chrono),
                expires_at: None,
                status: if key.status() == Some(&StatusType::Active) {
                    CredentialStatus::Active
                } else {
                    CredentialStatus::Inactive
                },
            });
        }
        match self.iam.get_login_profile().user_name(user).send().await {
            Ok(profile) => out.push(Credential {
                id: CredentialId::parse(CONSOLE_PASSWORD).map_err(|e| self.refused(e.0))?,
                kind: CredentialKind::Password,
                created_at: profile
                    .login_profile()
                    .and_then(|p| to_chrono(p.create_date()))
                    .unwrap_or_default(),
                last_used_at: None,
                expires_at: None,
                status: CredentialStatus::Active,
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_entity_exception()) => {}
            Err(e) => return Err(self.sdk_err("GetLoginProfile", e)),
        }
        Ok(out)
    }

    async fn user_identity(
        &self,
        details: &Details,
        user: &aws_sdk_iam::types::UserDetail,
    ) -> Result<Identity, ProviderError> {
        let name = user.user_name().unwrap_or_default().to_owned();
        let native = format!("user/{name}");
        let credentials = self.user_credentials(&name).await?;
        let mut sources = Sources::default();
        for p in user.attached_managed_policies() {
            sources.managed(p.policy_arn(), details);
        }
        sources.inline(user.user_policy_list());
        for g in user.group_list() {
            if let Some(group) = details.groups.get(g) {
                for arn in &group.managed {
                    sources.managed_via(arn, g, details);
                }
                for (label, doc) in &group.inline {
                    sources.add(format!("{label} (via group {g})"), doc.clone());
                }
            }
        }
        let (owner, environment, purpose, tags) = self.tags(user.tags());
        let created_at = user.create_date().and_then(to_chrono).unwrap_or_default();
        let last_used_at = credentials.iter().filter_map(|c| c.last_used_at).max();
        let disabled = !credentials
            .iter()
            .any(|c| c.status == CredentialStatus::Active);
        Ok(Identity {
            id: self.id(&native)?,
            provider: self.name.to_string(),
            native_id: native,
            kind: IdentityKind::ServiceUser,
            name,
            owner,
            purpose,
            environment,
            used_in_environments: Vec::new(),
            tags,
            created_at,
            last_used_at,
            disabled,
            credentials,
            permissions: sources.summary(),
        })
    }

    fn role_identity(
        &self,
        details: &Details,
        role: &aws_sdk_iam::types::RoleDetail,
    ) -> Result<Identity, ProviderError> {
        let name = role.role_name().unwrap_or_default().to_owned();
        let native = format!("role/{name}");
        let mut sources = Sources::default();
        for p in role.attached_managed_policies() {
            sources.managed(p.policy_arn(), details);
        }
        sources.inline(role.role_policy_list());
        let trust = role
            .assume_role_policy_document()
            .and_then(parse_document)
            .map(|d| trust_principals(&d))
            .unwrap_or_default();
        let anyone = trust.iter().any(|t| t == "anyone (*)");
        let mut permissions = sources.summary();
        permissions
            .grants
            .extend(trust.iter().map(|t| format!("trusted by {t}")));
        if anyone {
            permissions.privileged = true;
            permissions.wildcard = true;
        }
        let (owner, environment, purpose, tags) = self.tags(role.tags());
        Ok(Identity {
            id: self.id(&native)?,
            provider: self.name.to_string(),
            native_id: native,
            kind: IdentityKind::Role,
            name,
            owner,
            purpose,
            environment,
            used_in_environments: Vec::new(),
            tags,
            created_at: role.create_date().and_then(to_chrono).unwrap_or_default(),
            last_used_at: role
                .role_last_used()
                .and_then(|u| u.last_used_date())
                .and_then(to_chrono),
            disabled: false,
            credentials: Vec::new(),
            permissions,
        })
    }

    #[allow(clippy::type_complexity, reason = "a one-off tuple of the mapped tags")]
    fn tags(
        &self,
        tags: &[aws_sdk_iam::types::Tag],
    ) -> (
        Option<String>,
        Option<String>,
        Option<String>,
        BTreeMap<String, String>,
    ) {
        let all: BTreeMap<String, String> = tags
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        let get = |k: &str| all.get(k).filter(|v| !v.is_empty()).cloned();
        (
            get(&self.tag_keys.owner),
            get(&self.tag_keys.environment),
            get(&self.tag_keys.purpose),
            all,
        )
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
        if name.is_empty() || name.contains('/') {
            return Ok(None);
        }
        // One entity's policies come from its groups and the account's managed policies too:
        // the account-wide read keeps `get` and `list` exactly alike.
        let details = self.account_details().await?;
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

    fn plan_revocation(
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

    async fn apply_step(
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

    async fn rollback_step(
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

    async fn capabilities(&self) -> Result<Vec<String>, ProviderError> {
        let arn = self.caller_arn().await?;
        let mut lines = vec![format!("runs as {arn} (never changed by nhi-mcp)")];
        const ACTIONS: [&str; 8] = [
            "iam:GetAccountAuthorizationDetails",
            "iam:ListAccessKeys",
            "iam:GetAccessKeyLastUsed",
            "iam:GetLoginProfile",
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
                    lines.push("its policies allow listing, rotating and revoking".to_owned());
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

#[derive(Default)]
struct Details {
    users: Vec<aws_sdk_iam::types::UserDetail>,
    roles: Vec<aws_sdk_iam::types::RoleDetail>,
    groups: BTreeMap<String, GroupPolicies>,
    /// Customer-managed policies' default documents, by ARN.
    managed_docs: BTreeMap<String, serde_json::Value>,
}

struct GroupPolicies {
    managed: Vec<String>,
    inline: Vec<(String, Option<serde_json::Value>)>,
}

/// Inline policies as (label, parsed document).
fn documents(
    list: &[aws_sdk_iam::types::PolicyDetail],
) -> Vec<(String, Option<serde_json::Value>)> {
    list.iter()
        .map(|p| {
            (
                format!("inline policy {}", p.policy_name().unwrap_or("?")),
                p.policy_document().and_then(parse_document),
            )
        })
        .collect()
}

/// The policies that apply to one identity, with their documents where known.
#[derive(Default)]
struct Sources {
    grants: Vec<String>,
    privileged: bool,
    wildcard: bool,
}

impl Sources {
    fn managed(&mut self, arn: Option<&str>, details: &Details) {
        if let Some(arn) = arn {
            self.managed_labeled(arn, policy_label(arn), details);
        }
    }

    fn managed_via(&mut self, arn: &str, group: &str, details: &Details) {
        self.managed_labeled(
            arn,
            format!("{} (via group {group})", policy_label(arn)),
            details,
        );
    }

    fn managed_labeled(&mut self, arn: &str, label: String, details: &Details) {
        let name = arn.rsplit('/').next().unwrap_or(arn);
        if arn.starts_with("arn:aws:iam::aws:policy/") && ADMIN_POLICIES.contains(&name) {
            self.privileged = true;
            self.wildcard |= name == "AdministratorAccess";
        }
        self.add(label, details.managed_docs.get(arn).cloned());
    }

    fn inline(&mut self, list: &[aws_sdk_iam::types::PolicyDetail]) {
        for (label, doc) in documents(list) {
            self.add(label, doc);
        }
    }

    fn add(&mut self, label: String, doc: Option<serde_json::Value>) {
        if let Some(doc) = doc {
            let w = wildcards(&doc);
            if w.action || w.resource {
                self.privileged = true;
                self.wildcard = true;
            }
            let mut notes = Vec::new();
            if w.action {
                notes.push("* actions");
            }
            if w.resource {
                notes.push("* resources");
            }
            if notes.is_empty() {
                self.grants.push(label);
            } else {
                self.grants.push(format!("{label} ({})", notes.join(", ")));
            }
        } else {
            self.grants.push(label);
        }
    }

    fn summary(mut self) -> Permissions {
        self.grants.sort();
        self.grants.dedup();
        let summary = if self.grants.is_empty() {
            "no policies".to_owned()
        } else {
            self.grants.join(", ")
        };
        Permissions {
            privileged: self.privileged,
            wildcard: self.wildcard,
            summary,
            grants: self.grants,
        }
    }
}

fn policy_label(arn: &str) -> String {
    let name = arn.rsplit('/').next().unwrap_or(arn);
    if arn.starts_with("arn:aws:iam::aws:policy/") {
        format!("AWS managed policy {name}")
    } else {
        format!("managed policy {name}")
    }
}

struct Wildcards {
    action: bool,
    resource: bool,
}

/// Whether a policy document allows `*` actions (`*`, `service:*`, or `NotAction`) or `*`
/// resources (`*` or `NotResource`).
fn wildcards(doc: &serde_json::Value) -> Wildcards {
    let statements: Vec<&serde_json::Value> = match doc.get("Statement") {
        Some(serde_json::Value::Array(a)) => a.iter().collect(),
        Some(s @ serde_json::Value::Object(_)) => vec![s],
        _ => Vec::new(),
    };
    let mut w = Wildcards {
        action: false,
        resource: false,
    };
    for s in statements {
        if s.get("Effect").and_then(|e| e.as_str()) != Some("Allow") {
            continue;
        }
        let strings = |key: &str| -> Vec<String> {
            match s.get(key) {
                Some(serde_json::Value::String(v)) => vec![v.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            }
        };
        if s.get("NotAction").is_some()
            || strings("Action")
                .iter()
                .any(|a| a == "*" || a.ends_with(":*"))
        {
            w.action = true;
        }
        if s.get("NotResource").is_some() || strings("Resource").iter().any(|r| r == "*") {
            w.resource = true;
        }
    }
    w
}

/// Who may assume a role: `service ec2.amazonaws.com`, `federated <provider>`, `account <arn>`,
/// or `anyone (*)`.
fn trust_principals(doc: &serde_json::Value) -> Vec<String> {
    let statements: Vec<&serde_json::Value> = match doc.get("Statement") {
        Some(serde_json::Value::Array(a)) => a.iter().collect(),
        Some(s @ serde_json::Value::Object(_)) => vec![s],
        _ => Vec::new(),
    };
    let mut out = BTreeSet::new();
    for s in statements {
        if s.get("Effect").and_then(|e| e.as_str()) != Some("Allow") {
            continue;
        }
        match s.get("Principal") {
            Some(serde_json::Value::String(p)) if p == "*" => {
                out.insert("anyone (*)".to_owned());
            }
            Some(serde_json::Value::Object(m)) => {
                for (kind, v) in m {
                    let label = match kind.as_str() {
                        "Service" => "service",
                        "Federated" => "federated",
                        "AWS" => "account",
                        other => other,
                    };
                    let values: Vec<&str> = match v {
                        serde_json::Value::String(s) => vec![s.as_str()],
                        serde_json::Value::Array(a) => {
                            a.iter().filter_map(|x| x.as_str()).collect()
                        }
                        _ => Vec::new(),
                    };
                    for value in values {
                        if value == "*" {
                            out.insert("anyone (*)".to_owned());
                        } else {
                            out.insert(format!("{label} {value}"));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out.into_iter().collect()
}

/// IAM returns policy documents URL-encoded (RFC 3986); emulators sometimes do not.
fn parse_document(raw: &str) -> Option<serde_json::Value> {
    serde_json::from_str(raw).ok().or_else(|| {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?;
        serde_json::from_str(&decoded).ok()
    })
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
