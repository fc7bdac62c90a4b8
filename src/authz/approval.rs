//! Approval tokens: EdDSA-signed JWTs, each bound to one proposal by its id and digest.
//!
//! The key lives in the data dir (created on first run, mode 0600) or comes from config. Verifying
//! pins the algorithm: a token whose header names anything but EdDSA is refused before its
//! signature is looked at.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// The audience of every approval token: the apply step of this server, nothing else.
pub const APPROVAL_AUDIENCE: &str = "nhi-mcp/apply";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalClaims {
    pub iss: String,
    pub aud: String,
    /// The proposal id.
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// The digest of the approved proposal.
    pub digest: String,
    pub approvers: Vec<String>,
    pub requester: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("approval key {}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

/// Why a token was refused. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("approval token is malformed")]
    Malformed,
    #[error("approval token uses a disallowed signing algorithm (only EdDSA is accepted)")]
    WrongAlgorithm,
    #[error("approval token signature is not valid for this server's approval key")]
    BadSignature,
    #[error("approval token has expired; an admin must approve the proposal again")]
    Expired,
    #[error("approval token is not valid yet")]
    NotYetValid,
    #[error("approval token was issued for another audience or issuer")]
    WrongAudience,
}

pub struct ApprovalKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    ttl: Duration,
}

impl std::fmt::Debug for ApprovalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalKey([redacted])")
    }
}

impl ApprovalKey {
    /// Loads the PKCS#8 PEM key at `path`, or creates it (mode 0600) if it does not exist.
    /// A key file that others can read is refused.
    pub fn load_or_create(path: &Path, issuer: &str, ttl: Duration) -> Result<Self, KeyError> {
        let err = |message: String| KeyError::File {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            create_key_file(path).map_err(|e| err(format!("cannot create: {e}")))?;
        }
        check_private(path).map_err(err)?;
        let pem = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let signing = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| err("is not a PKCS#8 PEM Ed25519 private key".to_owned()))?;
        Ok(Self::from_signing_key(&signing, issuer, ttl))
    }

    pub fn from_signing_key(signing: &SigningKey, issuer: &str, ttl: Duration) -> Self {
        let der = signing.to_pkcs8_der().map(|d| d.as_bytes().to_vec());
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signing.verifying_key().as_bytes());
        Self {
            // Encoding a valid key as DER cannot fail; an empty key would only fail to sign.
            encoding: EncodingKey::from_ed_der(&der.unwrap_or_default()),
            decoding: DecodingKey::from_ed_components(&public)
                .unwrap_or_else(|_| DecodingKey::from_secret(&[])),
            issuer: issuer.to_owned(),
            ttl,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Mints a token for `proposal_id` / `digest`, valid from `now` for the configured TTL.
    pub fn mint(
        &self,
        proposal_id: &str,
        digest: &str,
        approvers: Vec<String>,
        requester: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, ApprovalClaims), jsonwebtoken::errors::Error> {
        let iat = now.timestamp();
        let claims = ApprovalClaims {
            iss: self.issuer.clone(),
            aud: APPROVAL_AUDIENCE.to_owned(),
            sub: proposal_id.to_owned(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat,
            nbf: iat,
            exp: iat + i64::try_from(self.ttl.as_secs()).unwrap_or(900),
            digest: digest.to_owned(),
            approvers,
            requester: requester.to_owned(),
        };
        Ok((self.sign(&claims)?, claims))
    }

    /// Signs arbitrary claims with this key (tests use it to build expired or odd tokens).
    pub fn sign(&self, claims: &ApprovalClaims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding)
    }

    /// Checks algorithm, signature, issuer, audience, `exp` and `nbf`; returns the claims.
    /// Whether the claims fit a proposal is the engine's check, not this one.
    pub fn verify(&self, token: &str) -> Result<ApprovalClaims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_audience(&[APPROVAL_AUDIENCE]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        jsonwebtoken::decode::<ApprovalClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => TokenError::WrongAudience,
                _ => TokenError::Malformed,
            })
    }
}

pub(crate) fn create_key_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Written whole under a name of its own, then linked into place: another process never
    // reads a half-written key, and of two creating it at once exactly one wins.
    let tmp = path.with_extension(format!(
        "tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

pub(crate) fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "is readable by other users (mode {:o}); run `chmod 600` on it",
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApprovalKey {
        ApprovalKey::from_signing_key(
            &SigningKey::generate(&mut rand::rngs::OsRng),
            "nhi-mcp",
            Duration::from_secs(900),
        )
    }

    #[test]
    fn round_trip_and_refusals() {
        let k = key();
        let (token, claims) = k
            .mint(
                "prop_1",
                "abc",
                vec!["alice".into()],
                "agent:local",
                Utc::now(),
            )
            .unwrap();
        assert_eq!(k.verify(&token).unwrap(), claims);

        assert_eq!(key().verify(&token), Err(TokenError::BadSignature));
        assert_eq!(k.verify("garbage"), Err(TokenError::Malformed));

        let mut expired = claims.clone();
        expired.exp = Utc::now().timestamp() - 60;
        assert_eq!(
            k.verify(&k.sign(&expired).unwrap()),
            Err(TokenError::Expired)
        );

        let mut early = claims.clone();
        early.nbf = Utc::now().timestamp() + 600;
        assert_eq!(
            k.verify(&k.sign(&early).unwrap()),
            Err(TokenError::NotYetValid)
        );

        let mut other = claims.clone();
        other.aud = "someone-else".into();
        assert_eq!(
            k.verify(&k.sign(&other).unwrap()),
            Err(TokenError::WrongAudience)
        );

        // The same claims under an HMAC header keyed with the public key, and under `none`.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"public"),
        )
        .unwrap();
        assert_eq!(k.verify(&hs), Err(TokenError::WrongAlgorithm));
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(k.verify(&unsigned).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_loose_modes_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/approval.key");
        let a = ApprovalKey::load_or_create(&path, "i", Duration::from_secs(60)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = ApprovalKey::load_or_create(&path, "i", Duration::from_secs(60)).unwrap();
        let (t, _) = a.mint("p", "d", vec![], "r", Utc::now()).unwrap();
        assert!(b.verify(&t).is_ok(), "reloaded key differs");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ApprovalKey::load_or_create(&path, "i", Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
