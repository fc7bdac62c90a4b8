//! The tamper-evident audit log: every record holds the hash of the one before it, so an edited,
//! deleted or reordered record breaks the chain at a point `verify` names.
//!
//! This module knows how records are redacted, hashed and checked; the store writes them in the
//! same transaction as the state change they describe.

pub mod checkpoint;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::canonical;

mod redact;

pub use redact::{REDACTED, redact, redact_text, unparsed_arguments};

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The most argument text one record stores; larger arguments are replaced by a note (their
/// digest is still of the whole), so that a flood of oversized requests cannot bloat the log.
pub const MAX_ARGUMENTS_LEN: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed, but the change waits for a human approval.
    RequiresApproval,
    /// The call was allowed but failed (bad input, unknown id, provider error).
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::RequiresApproval => "requires_approval",
            Self::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Allow, Self::Deny, Self::RequiresApproval, Self::Error]
            .into_iter()
            .find(|d| d.as_str() == raw)
    }
}

/// What is recorded about one event, before it is chained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// The subject: configured principal, token `sub`, or approver.
    pub principal: String,
    /// The token issuer, for bearer-authenticated callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The OAuth client the caller used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The scopes the caller presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The tool, or the admin action (`approve`, `reject`, `execute_step`, `recover`, ...).
    pub action: String,
    /// The arguments with secret values replaced.
    pub arguments: Value,
    /// SHA-256 of the canonical encoding of the arguments as received.
    pub arguments_digest: String,
    pub decision: Decision,
    pub reason: Option<String>,
    pub policy_ids: Vec<String>,
    pub proposal_id: Option<String>,
    pub outcome: Option<String>,
}

impl AuditEntry {
    /// An entry for `action` with `arguments` redacted and digested.
    pub fn new(principal: &str, action: &str, arguments: &Value, decision: Decision) -> Self {
        Self {
            // Stored with millisecond precision; hash what is stored.
            at: Utc::now().trunc_subsecs(3),
            principal: principal.to_owned(),
            issuer: None,
            client_id: None,
            scopes: None,
            action: action.to_owned(),
            arguments: bounded(redact(arguments)),
            arguments_digest: canonical::digest(arguments).unwrap_or_default(),
            decision,
            reason: None,
            policy_ids: Vec::new(),
            proposal_id: None,
            outcome: None,
        }
    }

    /// The digest of the arguments as the caller sent them, when `arguments` were redacted
    /// before the entry was built.
    pub fn arguments_digest(mut self, digest: String) -> Self {
        self.arguments_digest = digest;
        self
    }

    /// The reason, with secret-shaped text redacted (it can quote what a caller sent).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(redact_text(&reason.into(), false));
        self
    }

    pub fn proposal(mut self, id: impl Into<String>) -> Self {
        self.proposal_id = Some(id.into());
        self
    }

    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = Some(outcome.into());
        self
    }

    /// The caller as authenticated: issuer, client and the scopes presented.
    pub fn caller(mut self, principal: &crate::authz::Principal) -> Self {
        self.issuer = principal.issuer.clone();
        self.client_id = principal.client_id.clone();
        self.scopes = Some(
            principal
                .scope_list()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        );
        self
    }

    pub fn policies(mut self, ids: Vec<String>) -> Self {
        self.policy_ids = ids;
        self
    }
}

/// A chained record as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of record `seq` holding `entry` after a record hashed `prev_hash`.
pub fn chain_hash(seq: i64, prev_hash: &str, entry: &AuditEntry) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        seq: i64,
        prev_hash: &'a str,
        entry: &'a AuditEntry,
    }
    canonical::digest(&Hashed {
        seq,
        prev_hash,
        entry,
    })
    .unwrap_or_default()
}

fn bounded(arguments: Value) -> Value {
    let len = arguments.to_string().len();
    if len > MAX_ARGUMENTS_LEN {
        serde_json::json!({"omitted": format!("{len} bytes of arguments")})
    } else {
        arguments
    }
}

/// Where the chain first breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at record {seq}: {reason}")]
pub struct ChainBroken {
    pub seq: i64,
    pub reason: String,
}

/// Checks records in stored order: sequence numbers contiguous from 1, each `prev_hash` equal to
/// the previous record's hash, each hash recomputed. Returns the number of records and the head.
pub fn verify(records: &[AuditRecord]) -> Result<(usize, String), ChainBroken> {
    let mut prev = GENESIS_HASH.to_owned();
    for (i, r) in records.iter().enumerate() {
        let expected_seq = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        if r.seq != expected_seq {
            return Err(ChainBroken {
                seq: r.seq,
                reason: format!(
                    "expected record {expected_seq} here: a record was deleted or moved"
                ),
            });
        }
        if r.prev_hash != prev {
            return Err(ChainBroken {
                seq: r.seq,
                reason: "it does not follow the record before it (deleted or reordered)".into(),
            });
        }
        if chain_hash(r.seq, &r.prev_hash, &r.entry) != r.hash {
            return Err(ChainBroken {
                seq: r.seq,
                reason: "its content does not match its hash (edited)".into(),
            });
        }
        prev = r.hash.clone();
    }
    Ok((records.len(), prev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let entry =
                    AuditEntry::new("p", "list_identities", &json!({"n": seq}), Decision::Allow);
                let hash = chain_hash(seq, &prev, &entry);
                let r = AuditRecord {
                    seq,
                    entry,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)).unwrap().0, 5);
    }

    #[test]
    fn edit_delete_and_reorder_are_found_at_the_right_record() {
        let mut edited = chain(5);
        edited[2].entry.principal = "mallory".into();
        assert_eq!(verify(&edited).unwrap_err().seq, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(verify(&deleted).unwrap_err().seq, 3);

        let mut reordered = chain(5);
        reordered.swap(1, 3);
        let r = verify(&reordered).unwrap_err();
        assert_eq!(r.seq, 4);

        // Renumbered after a deletion: the hash link still breaks.
        let mut renumbered = chain(5);
        renumbered.remove(1);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert_eq!(verify(&renumbered).unwrap_err().seq, 2);
    }

    #[test]
    fn oversized_arguments_are_not_stored() {
        let big = json!({"text": "x".repeat(MAX_ARGUMENTS_LEN + 1)});
        let e = AuditEntry::new("p", "list_identities", &big, Decision::Error);
        assert!(
            e.arguments["omitted"]
                .as_str()
                .is_some_and(|m| m.ends_with("bytes of arguments"))
        );
        assert_eq!(
            e.arguments_digest,
            crate::model::canonical::digest(&big).unwrap()
        );
    }

    #[test]
    fn secrets_are_redacted_but_digested() {
        let args = json!({"proposal_id": "p", "approval_token": "eyJ.secret.x", "nested": [{"password": "pw"}]});
        let e = AuditEntry::new("p", "apply_proposal", &args, Decision::Allow);
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            !text.contains("eyJ.secret.x") && !text.contains("\"pw\""),
            "{text}"
        );
        assert_eq!(e.arguments["approval_token"], "[redacted]");
        assert_eq!(e.arguments_digest.len(), 64);
    }
}
