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

/// An identity's tags, key → value, in key order: a map kept as a sorted vector, because a
/// `BTreeMap` allocates a half-kilobyte node for even one tag and an inventory holds many
/// identities with a few tags each. Serialized, deserialized and described exactly as a map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags(Vec<(String, String)>);

impl Tags {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.into_iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

impl From<BTreeMap<String, String>> for Tags {
    fn from(map: BTreeMap<String, String>) -> Self {
        let mut tags: Vec<_> = map.into_iter().collect();
        tags.shrink_to_fit();
        Self(tags)
    }
}

impl FromIterator<(String, String)> for Tags {
    /// A key given twice keeps its last value, as a map's `collect` does.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        iter.into_iter().collect::<BTreeMap<_, _>>().into()
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(Self::from)
    }
}

impl JsonSchema for Tags {
    fn inline_schema() -> bool {
        <BTreeMap<String, String>>::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, String>>::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, String>>::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, String>>::json_schema(generator)
    }
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
    pub tags: Tags,
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

/// A healthy service user with one access key, for tests: ten days old, used yesterday.
#[cfg(test)]
pub(crate) fn sample(now: DateTime<Utc>) -> Identity {
    use chrono::Duration;
    Identity {
        id: IdentityId::parse("p:user/x").unwrap(),
        provider: "p".into(),
        native_id: "user/x".into(),
        kind: IdentityKind::ServiceUser,
        name: "x".into(),
        owner: Some("team".into()),
        purpose: None,
        environment: Some("prod".into()),
        used_in_environments: vec!["prod".into()],
        tags: Tags::default(),
        created_at: now - Duration::days(10),
        last_used_at: Some(now - Duration::days(1)),
        disabled: false,
        credentials: vec![Credential {
            id: CredentialId::parse("k1").unwrap(),
            kind: CredentialKind::AccessKey,
            created_at: now - Duration::days(10),
            last_used_at: None,
            expires_at: Some(now + Duration::days(10)),
            status: CredentialStatus::Active,
        }],
        permissions: Permissions::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Tags` replaced a `BTreeMap` to save memory (issue 9): it must read, write and describe
    /// itself exactly as the map did, multi-byte and empty keys included.
    #[test]
    fn tags_behave_as_the_map_they_replaced() {
        let pairs = [
            ("team", "a"),
            ("", "empty key"),
            ("é", "é"),
            ("e\u{301}", "decomposed"),
            ("🦀", ""),
            ("Team", "b"),
            ("team", "last wins"),
        ];
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let tags: Tags = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(tags.len(), map.len());
        assert_eq!(
            serde_json::to_string(&tags).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let text = serde_json::to_string(&map).unwrap();
        assert_eq!(serde_json::from_str::<Tags>(&text).unwrap(), tags);
        let doubled = r#"{"k": "1", "k": "2"}"#;
        assert_eq!(
            serde_json::to_string(&serde_json::from_str::<Tags>(doubled).unwrap()).unwrap(),
            serde_json::to_string(
                &serde_json::from_str::<BTreeMap<String, String>>(doubled).unwrap()
            )
            .unwrap()
        );
        for (k, v) in &map {
            assert_eq!(tags.get(k), Some(v));
        }
        assert_eq!(tags.get("TEAM"), None);
        let mut tags = tags;
        assert_eq!(
            tags.insert("team".into(), "c".into()).as_deref(),
            Some("last wins")
        );
        assert_eq!(tags.insert("a".into(), "new".into()), None);
        let keys: Vec<&String> = tags.iter().map(|(k, _)| k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "kept in key order");
        assert_eq!(
            serde_json::to_value(schemars::schema_for!(Tags)).unwrap(),
            serde_json::to_value(schemars::schema_for!(BTreeMap<String, String>)).unwrap()
        );
    }
}
