//! OAuth-style scopes and the principal that holds them.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{InvalidInput, quote_input};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "nhi:read")]
    Read,
    #[serde(rename = "nhi:propose")]
    Propose,
    #[serde(rename = "nhi:apply")]
    Apply,
    /// Humans only: approving and rejecting proposals.
    #[serde(rename = "nhi:approve")]
    Approve,
    #[serde(rename = "nhi:audit")]
    Audit,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Self::Read,
        Self::Propose,
        Self::Apply,
        Self::Approve,
        Self::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "nhi:read",
            Self::Propose => "nhi:propose",
            Self::Apply => "nhi:apply",
            Self::Approve => "nhi:approve",
            Self::Audit => "nhi:audit",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                InvalidInput(format!(
                    "unknown scope {}; known scopes: nhi:read, nhi:propose, nhi:apply, nhi:approve, nhi:audit",
                    quote_input(raw)
                ))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a tool or an admin command, with the scopes it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The subject: the configured stdio/HTTP principal, a token's `sub`, or an approver's name.
    /// In normal form (`principal_id::normalize`) whenever it came from outside: build those
    /// with [`Principal::parse`].
    pub id: String,
    pub scopes: BTreeSet<Scope>,
    /// The token issuer, for principals authenticated by a bearer token.
    pub issuer: Option<String>,
    /// The OAuth client the agent used (`client_id` or `azp`).
    pub client_id: Option<String>,
}

impl Principal {
    pub fn new(id: impl Into<String>, scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self {
            id: id.into(),
            scopes: scopes.into_iter().collect(),
            issuer: None,
            client_id: None,
        }
    }

    /// A principal from an id that came from outside (config, a token, the CLI): normalised
    /// and checked (see `principal_id`), and never one of the server's own names.
    pub fn parse(
        what: &str,
        id: &str,
        scopes: impl IntoIterator<Item = Scope>,
    ) -> Result<Self, InvalidInput> {
        Ok(Self::new(
            super::principal_id::parse_external(what, id)?,
            scopes,
        ))
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn scope_list(&self) -> Vec<&'static str> {
        self.scopes.iter().map(|s| s.as_str()).collect()
    }
}
