//! Identities and their credentials: metadata only, never secret material.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::canonical;
use super::ids::{CredentialId, IdentityId};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    ServiceUser,
    Role,
    DatabaseRole,
    DeployKey,
    App,
    ServiceAccount,
    ApiToken,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessKey => "access key",
            Self::Password => "password",
            Self::ApiToken => "API token",
            Self::SshKey => "SSH key",
            Self::ClientSecret => "client secret",
            Self::Certificate => "certificate",
        }
    }
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceUser => "service_user",
            Self::Role => "role",
            Self::DatabaseRole => "database_role",
            Self::DeployKey => "deploy_key",
            Self::App => "app",
            Self::ServiceAccount => "service_account",
            Self::ApiToken => "api_token",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    AccessKey,
    Password,
    ApiToken,
    SshKey,
    ClientSecret,
    Certificate,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    Active,
    Inactive,
}

/// A credential's metadata. There is deliberately no field for the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Credential {
    pub id: CredentialId,
    pub kind: CredentialKind,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: CredentialStatus,
}

/// What an identity may do, summarised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Permissions {
    /// Administrative or security-sensitive rights (admin, IAM, superuser, cluster-admin...).
    pub privileged: bool,
    /// A grant with `*` actions or resources.
    pub wildcard: bool,
    pub summary: String,
    pub grants: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Identity {
    pub id: IdentityId,
    pub provider: String,
    pub native_id: String,
    pub kind: IdentityKind,
    pub name: String,
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub environment: Option<String>,
    /// Environments the identity has been seen used from.
    pub used_in_environments: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Sign-in disabled by a revocation.
    pub disabled: bool,
    pub credentials: Vec<Credential>,
    pub permissions: Permissions,
}

impl Identity {
    pub fn credential(&self, id: &CredentialId) -> Option<&Credential> {
        self.credentials.iter().find(|c| &c.id == id)
    }

    pub fn active_credentials(&self) -> impl Iterator<Item = &Credential> {
        self.credentials
            .iter()
            .filter(|c| c.status == CredentialStatus::Active)
    }

    /// The most recent use of the identity or any of its credentials.
    pub fn last_activity(&self) -> Option<DateTime<Utc>> {
        self.credentials
            .iter()
            .filter_map(|c| c.last_used_at)
            .chain(self.last_used_at)
            .max()
    }

    /// Hex SHA-256 over the state a change plan depends on: kind, owner, environment, permissions,
    /// sign-in and every credential's id, kind and status. Usage times are left out: they move
    /// on their own and do not make a plan wrong.
    pub fn fingerprint(&self) -> String {
        #[derive(Serialize)]
        struct Relevant<'a> {
            id: &'a IdentityId,
            kind: IdentityKind,
            owner: &'a Option<String>,
            environment: &'a Option<String>,
            disabled: bool,
            permissions: &'a Permissions,
            credentials: Vec<(&'a CredentialId, CredentialKind, CredentialStatus)>,
        }
        let mut credentials: Vec<_> = self
            .credentials
            .iter()
            .map(|c| (&c.id, c.kind, c.status))
            .collect();
        credentials.sort();
        let relevant = Relevant {
            id: &self.id,
            kind: self.kind,
            owner: &self.owner,
            environment: &self.environment,
            disabled: self.disabled,
            permissions: &self.permissions,
            credentials,
        };
        // Serializing plain data with string keys cannot fail.
        canonical::digest(&relevant).unwrap_or_default()
    }
}
