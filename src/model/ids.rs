//! Validated identifiers. Each is checked once, in its constructor; afterwards it is just a string.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::quote_input;

/// The longest id or short text argument accepted anywhere.
pub const MAX_ID_LEN: usize = 256;

/// A value that does not pass validation; the message is one line and safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

fn check_text(what: &str, value: &str, max: usize) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput(format!("{what} is empty")));
    }
    if value.chars().count() > max {
        return Err(InvalidInput(format!(
            "{what} is longer than {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidInput(format!(
            "{what} {} contains a control character",
            quote_input(value)
        )));
    }
    Ok(())
}

/// Checks free text (reasons, search text): bounded length and no control characters.
pub fn check_free_text(what: &str, value: &str, max: usize) -> Result<(), InvalidInput> {
    check_text(what, value, max)
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// The configured name of a provider: `[a-z0-9][a-z0-9_-]*`, at most 63 characters.
    ProviderName
);

impl ProviderName {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = !raw.is_empty()
            && raw.len() <= 63
            && raw.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput(format!(
                "provider name {} must be lowercase letters, digits, `-` or `_` (at most 63)",
                quote_input(raw)
            )))
        }
    }
}

string_id!(
    /// `<provider>:<native id>`, e.g. `aws-prod:user/ci-deploy`.
    IdentityId
);

impl IdentityId {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        check_text("identity id", raw, MAX_ID_LEN)?;
        let Some((provider, native)) = raw.split_once(':') else {
            return Err(InvalidInput(format!(
                "identity id {} is not of the form `<provider>:<native id>`",
                quote_input(raw)
            )));
        };
        ProviderName::parse(provider)?;
        if native.is_empty() || native.chars().any(char::is_whitespace) {
            return Err(InvalidInput(format!(
                "identity id {} has an empty native id or one with spaces",
                quote_input(raw)
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn new(provider: &ProviderName, native: &str) -> Result<Self, InvalidInput> {
        Self::parse(&format!("{provider}:{native}"))
    }

    pub fn provider(&self) -> &str {
        self.0.split_once(':').map_or("", |(p, _)| p)
    }

    pub fn native(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, n)| n)
    }
}

string_id!(
    /// A credential's id within its provider (an access key id, a token id, ...).
    CredentialId
);

impl CredentialId {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        check_text("credential id", raw, MAX_ID_LEN)?;
        if raw.chars().any(char::is_whitespace) {
            return Err(InvalidInput(format!(
                "credential id {} contains a space",
                quote_input(raw)
            )));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_id!(
    /// `prop_` followed by 32 lowercase hex digits.
    ProposalId
);

impl ProposalId {
    pub fn generate() -> Self {
        Self(format!("prop_{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = raw.len() == 37
            && raw.starts_with("prop_")
            && raw[5..]
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput(format!(
                "proposal id {} is not of the form `prop_<32 hex digits>`",
                quote_input(raw)
            )))
        }
    }

    /// A short form for derived names (new credential ids), stable per proposal.
    pub fn short(&self) -> &str {
        &self.0[5..17]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ids() {
        let id = IdentityId::parse("aws-prod:user/ci-deploy").unwrap();
        assert_eq!(id.provider(), "aws-prod");
        assert_eq!(id.native(), "user/ci-deploy");
        for bad in ["", "nocolon", "Bad:x", ":x", "p:", "p:a b", "p:a\u{7}"] {
            assert!(IdentityId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(IdentityId::parse(&format!("p:{}", "x".repeat(300))).is_err());
    }

    #[test]
    fn proposal_ids_round_trip() {
        let id = ProposalId::generate();
        assert_eq!(ProposalId::parse(id.as_str()).unwrap(), id);
        assert!(ProposalId::parse("prop_XYZ").is_err());
    }

    #[test]
    fn control_characters_are_escaped_in_messages() {
        let err = IdentityId::parse("p:a\nb").unwrap_err().0;
        assert!(!err.contains('\n'), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Issue 8: every id parser returns a one-line error, never panics (multi-byte input
        /// where `prop_` ends used to be sliced by byte).
        #[test]
        fn hostile_ids_are_one_line_errors(raw in crate::model::hostile::text()) {
            let with_prefix = format!("prop_{raw}");
            let errors = [
                ProviderName::parse(&raw).err(),
                IdentityId::parse(&raw).err(),
                CredentialId::parse(&raw).err(),
                ProposalId::parse(&raw).err(),
                ProposalId::parse(&with_prefix).err(),
                check_free_text("reason", &raw, 1000).err(),
            ];
            for e in errors.into_iter().flatten() {
                proptest::prop_assert!(!e.0.contains(['\n', '\r', '\u{2028}', '\u{2029}']), "{}", e.0);
                proptest::prop_assert!(e.0.chars().count() < 300, "{}", e.0);
            }
        }
    }
}
