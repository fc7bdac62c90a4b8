//! Named approvers (`[[approvers]]` in config) and the signed statement a CLI approver makes with
//! their own Ed25519 key: "I, approver A, approve (or reject) proposal P with digest D, at T".
//! The engine checks the statement against A's configured public key before it records anything.
//!
//! The private key stays with the approver (a PKCS#8 PEM file, mode 0600, made by
//! `nhi-mcp approvers keygen`); the config holds only the public key.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey,
    spki::der::pem::LineEnding,
};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::principal_id;
use super::{Principal, Scope};
use crate::model::quote_input;

/// How old a signed statement may be when the engine checks it, in seconds.
pub const STATEMENT_MAX_AGE_SECS: i64 = 300;
/// How far in the future a statement's time may be (clock skew), in seconds.
pub const STATEMENT_MAX_SKEW_SECS: i64 = 30;

/// One `[[approvers]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverConfig {
    /// Normalised principal id.
    pub id: String,
    /// For approvals with `--key`; absent for approvers who only sign in at the issuer.
    pub public_key: Option<VerifyingKey>,
}

/// Finds the approver `id` names (compared in normal form).
pub fn find<'a>(approvers: &'a [ApproverConfig], id: &str) -> Option<&'a ApproverConfig> {
    let id = principal_id::fold(id);
    approvers.iter().find(|a| a.id == id)
}

/// What a statement decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// What an approver signs. The signed bytes are [`Statement::message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub verdict: Verdict,
    pub proposal_id: String,
    /// The digest of the proposal the approver saw.
    pub digest: String,
    /// Normalised approver id.
    pub approver: String,
    pub at: DateTime<Utc>,
    /// SHA-256 (hex) of the reason, for rejections.
    pub reason_sha256: Option<String>,
}

impl Statement {
    pub fn new(
        verdict: Verdict,
        proposal_id: &str,
        digest: &str,
        approver: &str,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            verdict,
            proposal_id: proposal_id.to_owned(),
            digest: digest.to_owned(),
            approver: approver.to_owned(),
            at,
            reason_sha256: reason.map(reason_digest),
        }
    }

    /// The exact bytes signed: one field a line, in a fixed order, prefixed with a version.
    pub fn message(&self) -> String {
        format!(
            "nhi-mcp approver statement v1\nverdict: {}\nproposal: {}\ndigest: {}\napprover: {}\nat: {}\nreason-sha256: {}\n",
            self.verdict.as_str(),
            self.proposal_id,
            self.digest,
            self.approver,
            self.at.timestamp(),
            self.reason_sha256.as_deref().unwrap_or("-")
        )
    }
}

pub fn reason_digest(reason: &str) -> String {
    hex::encode(Sha256::digest(reason.as_bytes()))
}

/// A statement and the approver's signature over it.
#[derive(Clone, Debug)]
pub struct SignedStatement {
    pub statement: Statement,
    pub signature: Signature,
}

pub fn sign(key: &SigningKey, statement: Statement) -> SignedStatement {
    let signature = key.sign(statement.message().as_bytes());
    SignedStatement {
        statement,
        signature,
    }
}

/// What the engine expects the statement to say.
pub struct Expected<'a> {
    pub verdict: Verdict,
    pub proposal_id: &'a str,
    pub digest: &'a str,
    pub reason: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// Checks `signed` against the configured approvers; the approving principal if it holds. The
/// error is one line, for the audit record and the approver.
pub fn verify(
    approvers: &[ApproverConfig],
    signed: &SignedStatement,
    expected: &Expected<'_>,
) -> Result<Principal, String> {
    let s = &signed.statement;
    if approvers.is_empty() {
        return Err(NO_APPROVERS.to_owned());
    }
    let approver = find(approvers, &s.approver).ok_or_else(|| {
        format!(
            "{} is not a configured approver (see `[[approvers]]` in the config)",
            quote_input(&s.approver)
        )
    })?;
    let key = approver.public_key.as_ref().ok_or_else(|| {
        format!(
            "approver `{}` has no `public_key` in the config, so cannot approve with `--key`",
            approver.id
        )
    })?;
    if s.approver != approver.id {
        return Err("the statement does not name the approver in normal form".to_owned());
    }
    key.verify(s.message().as_bytes(), &signed.signature)
        .map_err(|_| {
            format!(
                "the signature does not verify with approver `{}`'s public key: wrong `--key`?",
                approver.id
            )
        })?;
    if s.verdict != expected.verdict
        || s.proposal_id != expected.proposal_id
        || s.reason_sha256 != expected.reason.map(reason_digest)
    {
        return Err("the signed statement is for another decision".to_owned());
    }
    if s.digest != expected.digest {
        return Err(format!(
            "the signed statement is for another version of proposal `{}` (digest differs)",
            expected.proposal_id
        ));
    }
    let age = expected.now.signed_duration_since(s.at);
    if age > chrono::Duration::seconds(STATEMENT_MAX_AGE_SECS)
        || -age > chrono::Duration::seconds(STATEMENT_MAX_SKEW_SECS)
    {
        return Err(
            "the signed statement is too old or from the future: check the clock".to_owned(),
        );
    }
    Ok(Principal::new(approver.id.clone(), [Scope::Approve]))
}

/// The one-line refusal when nobody may approve from the CLI.
pub const NO_APPROVERS: &str = "no approvers are configured: run `nhi-mcp approvers keygen --out FILE --id NAME` and add the `[[approvers]]` lines it prints to the config";

/// Parses a public key: SPKI PEM (`-----BEGIN PUBLIC KEY-----`), as `keygen` prints it.
pub fn parse_public_key(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| {
        "is not an Ed25519 public key in PEM (`-----BEGIN PUBLIC KEY-----`), as `nhi-mcp approvers keygen` prints it".to_owned()
    })
}

pub fn public_key_pem(key: &VerifyingKey) -> Result<String, String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the public key: {e}"))
}

/// Reads an approver's private key; refuses one other users can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read key file {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "key file {shown} is accessible to other users (mode {:o}); `chmod 600` it",
            mode & 0o777
        ));
    }
    let pem =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read key file {shown}: {e}"))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|_| format!("key file {shown} is not an Ed25519 private key (PKCS#8 PEM)"))
}

/// Creates a new private key at `path` (mode 0600; never overwrites) and returns its public key.
pub fn generate_key_file(path: &Path) -> Result<VerifyingKey, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {shown}: {e}"))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    Ok(signing.verifying_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (SigningKey, Vec<ApproverConfig>) {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let approvers = vec![
            ApproverConfig {
                id: "alice".into(),
                public_key: Some(key.verifying_key()),
            },
            ApproverConfig {
                id: "bob".into(),
                public_key: None,
            },
        ];
        (key, approvers)
    }

    fn expected(now: DateTime<Utc>) -> Expected<'static> {
        Expected {
            verdict: Verdict::Approve,
            proposal_id: "prop_1",
            digest: "d1",
            reason: None,
            now,
        }
    }

    #[test]
    fn a_statement_verifies_only_as_signed() {
        let (key, approvers) = setup();
        let now = Utc::now();
        let ok = |s: Statement| verify(&approvers, &sign(&key, s), &expected(now));
        let base = Statement::new(Verdict::Approve, "prop_1", "d1", "alice", None, now);
        assert_eq!(ok(base.clone()).map(|p| p.id), Ok("alice".to_owned()));

        let check = |s: Statement, want: &str| {
            let e = ok(s).expect_err("refused");
            assert!(e.contains(want), "`{e}` lacks `{want}`");
        };
        check(
            Statement {
                verdict: Verdict::Reject,
                ..base.clone()
            },
            "another decision",
        );
        check(
            Statement {
                proposal_id: "prop_2".into(),
                ..base.clone()
            },
            "another decision",
        );
        check(
            Statement {
                digest: "d2".into(),
                ..base.clone()
            },
            "digest differs",
        );
        check(
            Statement {
                at: now - chrono::Duration::seconds(301),
                ..base.clone()
            },
            "too old",
        );
        check(
            Statement {
                at: now + chrono::Duration::seconds(31),
                ..base.clone()
            },
            "too old",
        );
        check(
            Statement {
                approver: "carol".into(),
                ..base.clone()
            },
            "not a configured approver",
        );
        check(
            Statement {
                approver: "bob".into(),
                ..base.clone()
            },
            "no `public_key`",
        );
        // Another spelling of alice: found, but the statement must name her in normal form.
        check(
            Statement {
                approver: "Alice".into(),
                ..base.clone()
            },
            "normal form",
        );
        // Someone else's key: the signature fails.
        let mallory = SigningKey::generate(&mut rand::rngs::OsRng);
        let e =
            verify(&approvers, &sign(&mallory, base.clone()), &expected(now)).expect_err("forged");
        assert!(e.contains("does not verify"), "{e}");
        // A signature over one statement does not carry over to an edited one.
        let mut edited = sign(&key, base.clone());
        edited.statement.proposal_id = "prop_2".into();
        let e = verify(
            &approvers,
            &edited,
            &Expected {
                proposal_id: "prop_2",
                ..expected(now)
            },
        )
        .expect_err("edited");
        assert!(e.contains("does not verify"), "{e}");
        assert_eq!(
            verify(&[], &sign(&key, base), &expected(now)).expect_err("none"),
            NO_APPROVERS
        );
    }

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("alice.key");
        let public = generate_key_file(&path).expect("keygen");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_signing_key(&path).expect("load").verifying_key(),
            public
        );
        let pem = public_key_pem(&public).expect("pem");
        assert_eq!(parse_public_key(&pem), Ok(public));
        assert!(generate_key_file(&path).is_err(), "never overwrites");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(
            load_signing_key(&path)
                .expect_err("readable")
                .contains("chmod 600")
        );
        assert!(
            parse_public_key("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----").is_err()
        );
    }
}
