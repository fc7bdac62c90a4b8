//! Reading: the account's authorization details, and one identity with its credentials.

use super::policy::{Sources, documents, parse_document, trust_principals};
use super::*;

impl AwsIamProvider {
    /// Users, groups, roles and customer-managed policies, every page.
    pub(super) async fn account_details(&self) -> Result<Details, ProviderError> {
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
                let names = arns(g.attached_managed_policies());
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

    /// What `account_details` would hold for one user: the user, its groups' policies and the
    /// documents of the customer-managed policies that reach it, read with calls about that
    /// user alone (`GetUser`, its policies, its groups' policies), so one read costs the same
    /// in an account of any size. `None` when there is no such user.
    pub(super) async fn user_details(&self, name: &str) -> Result<Option<Details>, ProviderError> {
        let user = match self.iam.get_user().user_name(name).send().await {
            Ok(out) => match out.user {
                Some(user) => user,
                None => return Ok(None),
            },
            Err(e) if e.code() == Some("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(self.sdk_err("GetUser", e)),
        };
        // Out of the configured path: not this provider's, and not worth the calls below.
        // (With permissions scoped to the path, `GetUser` itself is refused first.)
        if !self.in_scope(Some(user.path())) {
            return Ok(None);
        }
        let attached = self
            .iam
            .list_attached_user_policies()
            .user_name(name)
            .into_paginator()
            .items()
            .send()
            .try_collect();
        let inline = async {
            let names: Vec<String> = self
                .iam
                .list_user_policies()
                .user_name(name)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| self.read_err("ListUserPolicies", e))?;
            self.inline_policies("GetUserPolicy", names, |policy| async move {
                let out = self.iam.get_user_policy().user_name(name);
                let out = out.policy_name(policy).send().await?;
                Ok(out.policy_document)
            })
            .await
        };
        let groups = self
            .iam
            .list_groups_for_user()
            .user_name(name)
            .into_paginator()
            .items()
            .send()
            .try_collect();
        let (attached, inline, groups) = futures_util::future::try_join3(
            async {
                attached
                    .await
                    .map_err(|e| self.read_err("ListAttachedUserPolicies", e))
            },
            inline,
            async {
                groups
                    .await
                    .map_err(|e| self.read_err("ListGroupsForUser", e))
            },
        )
        .await?;
        let mut details = Details::default();
        let mut managed = arns(&attached);
        let mut group_names = Vec::with_capacity(groups.len());
        for group in &groups {
            let g = group.group_name().to_owned();
            let policies = self.group_policies(&g).await?;
            managed.extend(policies.managed.iter().cloned());
            details.groups.insert(g.clone(), policies);
            group_names.push(g);
        }
        self.customer_managed_docs(managed, &mut details).await?;
        details.users.push(
            aws_sdk_iam::types::UserDetail::builder()
                .set_path(Some(user.path().to_owned()))
                .set_user_name(Some(user.user_name().to_owned()))
                .set_user_id(Some(user.user_id().to_owned()))
                .set_arn(Some(user.arn().to_owned()))
                .set_create_date(Some(*user.create_date()))
                .set_user_policy_list(Some(inline))
                .set_group_list(Some(group_names))
                .set_attached_managed_policies(Some(attached))
                .set_tags(Some(user.tags().to_vec()))
                .build(),
        );
        Ok(Some(details))
    }

    /// What `account_details` would hold for one role (see `user_details`).
    pub(super) async fn role_details(&self, name: &str) -> Result<Option<Details>, ProviderError> {
        let role = match self.iam.get_role().role_name(name).send().await {
            Ok(out) => match out.role {
                Some(role) => role,
                None => return Ok(None),
            },
            Err(e) if e.code() == Some("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(self.sdk_err("GetRole", e)),
        };
        if !self.in_scope(Some(role.path())) {
            return Ok(None);
        }
        let attached: Vec<_> = self
            .iam
            .list_attached_role_policies()
            .role_name(name)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.read_err("ListAttachedRolePolicies", e))?;
        let names: Vec<String> = self
            .iam
            .list_role_policies()
            .role_name(name)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.read_err("ListRolePolicies", e))?;
        let inline = self
            .inline_policies("GetRolePolicy", names, |policy| async move {
                let out = self.iam.get_role_policy().role_name(name);
                let out = out.policy_name(policy).send().await?;
                Ok(out.policy_document)
            })
            .await?;
        let mut details = Details::default();
        self.customer_managed_docs(arns(&attached), &mut details)
            .await?;
        details.roles.push(
            aws_sdk_iam::types::RoleDetail::builder()
                .set_path(Some(role.path().to_owned()))
                .set_role_name(Some(role.role_name().to_owned()))
                .set_role_id(Some(role.role_id().to_owned()))
                .set_arn(Some(role.arn().to_owned()))
                .set_create_date(Some(*role.create_date()))
                .set_assume_role_policy_document(
                    role.assume_role_policy_document().map(str::to_owned),
                )
                .set_role_policy_list(Some(inline))
                .set_attached_managed_policies(Some(attached))
                .set_tags(Some(role.tags().to_vec()))
                .set_role_last_used(role.role_last_used().cloned())
                .build(),
        );
        Ok(Some(details))
    }

    /// An error of a call made after the identity itself was found: `NoSuchEntity` means
    /// something it refers to (a group, a policy, the identity itself) was deleted meanwhile,
    /// which a new read answers, so it is "unavailable", not final.
    fn read_err<E: ProvideErrorMetadata>(
        &self,
        op: &str,
        e: SdkError<E, HttpResponse>,
    ) -> ProviderError {
        if e.code() == Some("NoSuchEntity") {
            ProviderError::Unavailable {
                provider: self.name.to_string(),
                message: format!(
                    "{op}: something this identity refers to was deleted while it was read; read it again"
                ),
            }
        } else {
            self.sdk_err(op, e)
        }
    }

    /// The inline policies `names` of one user, role or group, each with the document `get`
    /// reads (the kind's `Get*Policy`, named `op` in errors), as the account-wide read lists
    /// them.
    async fn inline_policies<E, Fut>(
        &self,
        op: &str,
        names: Vec<String>,
        get: impl Fn(String) -> Fut,
    ) -> Result<Vec<aws_sdk_iam::types::PolicyDetail>, ProviderError>
    where
        E: ProvideErrorMetadata,
        Fut: std::future::Future<Output = Result<String, SdkError<E, HttpResponse>>>,
    {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let document = get(name.clone()).await.map_err(|e| self.read_err(op, e))?;
            out.push(inline_detail(name, document));
        }
        Ok(out)
    }

    /// One group's attached policies and inline documents.
    async fn group_policies(&self, group: &str) -> Result<GroupPolicies, ProviderError> {
        let managed: Vec<_> = self
            .iam
            .list_attached_group_policies()
            .group_name(group)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.read_err("ListAttachedGroupPolicies", e))?;
        let names: Vec<String> = self
            .iam
            .list_group_policies()
            .group_name(group)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.read_err("ListGroupPolicies", e))?;
        let inline = self
            .inline_policies("GetGroupPolicy", names, |policy| async move {
                let out = self.iam.get_group_policy().group_name(group);
                let out = out.policy_name(policy).send().await?;
                Ok(out.policy_document)
            })
            .await?;
        Ok(GroupPolicies {
            managed: arns(&managed),
            inline: documents(&inline),
        })
    }

    /// The default documents of the customer-managed policies among `arns` (AWS-managed ones
    /// are judged by name, as in `account_details`), into `details.managed_docs`.
    async fn customer_managed_docs(
        &self,
        mut arns: Vec<String>,
        details: &mut Details,
    ) -> Result<(), ProviderError> {
        arns.sort();
        arns.dedup();
        for arn in arns.into_iter().filter(|a| !aws_managed(a)) {
            let policy = self
                .iam
                .get_policy()
                .policy_arn(&arn)
                .send()
                .await
                .map_err(|e| self.read_err("GetPolicy", e))?;
            let Some(version) = policy.policy().and_then(|p| p.default_version_id()) else {
                continue;
            };
            let doc = self
                .iam
                .get_policy_version()
                .policy_arn(&arn)
                .version_id(version)
                .send()
                .await
                .map_err(|e| self.read_err("GetPolicyVersion", e))?;
            if let Some(doc) = doc
                .policy_version()
                .and_then(|v| v.document())
                .and_then(parse_document)
            {
                details.managed_docs.insert(arn, doc);
            }
        }
        Ok(())
    }

    /// A user's access keys, every page.
    pub(super) async fn access_keys(
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
    pub(super) async fn user_credentials(
        &self,
        user: &str,
    ) -> Result<Vec<Credential>, ProviderError> {
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
                // A key deleted since it was listed (a rotation finishing): read again.
                .map_err(|e| self.read_err("GetAccessKeyLastUsed", e))?;
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

    pub(super) async fn user_identity(
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
            tags: tags.into(),
            created_at,
            last_used_at,
            disabled,
            credentials,
            permissions: sources.summary(),
        })
    }

    pub(super) fn role_identity(
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
            tags: tags.into(),
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
    pub(super) fn tags(
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
}

#[derive(Default)]
pub(super) struct Details {
    pub(super) users: Vec<aws_sdk_iam::types::UserDetail>,
    pub(super) roles: Vec<aws_sdk_iam::types::RoleDetail>,
    pub(super) groups: BTreeMap<String, GroupPolicies>,
    /// Customer-managed policies' default documents, by ARN.
    pub(super) managed_docs: BTreeMap<String, serde_json::Value>,
}

pub(super) struct GroupPolicies {
    pub(super) managed: Vec<String>,
    pub(super) inline: Vec<(String, Option<serde_json::Value>)>,
}

/// The ARNs of attached policies.
fn arns(attached: &[aws_sdk_iam::types::AttachedPolicy]) -> Vec<String> {
    attached
        .iter()
        .filter_map(|p| p.policy_arn().map(str::to_owned))
        .collect()
}

/// An inline policy as `GetAccountAuthorizationDetails` lists it.
fn inline_detail(name: String, document: String) -> aws_sdk_iam::types::PolicyDetail {
    aws_sdk_iam::types::PolicyDetail::builder()
        .policy_name(name)
        .policy_document(document)
        .build()
}

/// Whether `name` can be an IAM user or role name (1 to 64 of letters, digits and `+=,.@_-`):
/// another cannot exist, and asking IAM about it is a validation error, not "not found".
pub(super) fn iam_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// Whether `arn` names an AWS-managed policy (`arn:<partition>:iam::aws:policy/...`).
fn aws_managed(arn: &str) -> bool {
    arn.split(':').nth(4) == Some("aws")
}
