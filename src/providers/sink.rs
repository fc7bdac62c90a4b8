//! Secret sinks: where a new secret goes, so that it never passes through the agent.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::Utc;

use crate::model::{CredentialId, IdentityId, ProposalId, Secret};
pub use crate::ports::{SecretSink, SinkError};

/// Writes each secret to `<data_dir>/secrets/<proposal id>.json`, mode 0600, in a 0700 folder.
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            dir: data_dir.join("secrets"),
        }
    }

    pub fn path_of(&self, proposal: &ProposalId) -> PathBuf {
        self.dir.join(format!("{proposal}.json"))
    }
}

#[async_trait]
impl SecretSink for FileSink {
    async fn put(
        &self,
        proposal: &ProposalId,
        identity: &IdentityId,
        credential: &CredentialId,
        secret: &Secret,
    ) -> Result<String, SinkError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let body = serde_json::json!({
            "identity_id": identity,
            "credential_id": credential,
            "secret": secret.expose(),
            "created_at": Utc::now(),
        });
        let final_path = self.path_of(proposal);
        let tmp = self.dir.join(format!(".{proposal}.tmp"));
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(body.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &final_path)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| SinkError(format!("write task failed: {e}")))?
        .map_err(|e| SinkError(format!("cannot write to {}: {e}", self.dir.display())))?;
        Ok(format!("file:secrets/{proposal}.json"))
    }
}

/// Writes each secret to AWS Secrets Manager as a new version of the secret
/// `<prefix><provider>/<native id>` (created on first use): `PutSecretValue` makes it
/// `AWSCURRENT` and keeps the version before as `AWSPREVIOUS`. The request token is derived
/// from the proposal and the credential, so a retried put of the same credential is one version.
pub struct SecretsManagerSink {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
}

impl SecretsManagerSink {
    pub fn new(sdk: &aws_config::SdkConfig, prefix: String) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(sdk),
            prefix,
        }
    }

    /// The secret's name for `identity`: characters Secrets Manager does not allow in a name
    /// become `_`.
    pub fn secret_name(&self, identity: &IdentityId) -> String {
        let raw = format!(
            "{}{}/{}",
            self.prefix,
            identity.provider(),
            identity.native()
        );
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "/_+=.@-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

#[async_trait]
impl SecretSink for SecretsManagerSink {
    async fn put(
        &self,
        proposal: &ProposalId,
        identity: &IdentityId,
        credential: &CredentialId,
        secret: &Secret,
    ) -> Result<String, SinkError> {
        use sha2::{Digest, Sha256};
        let name = self.secret_name(identity);
        let body = serde_json::json!({
            "identity_id": identity,
            "credential_id": credential,
            "secret": secret.expose(),
            "proposal_id": proposal,
            "created_at": Utc::now(),
        })
        .to_string();
        let token =
            hex::encode(Sha256::digest(format!("{proposal}/{credential}")))[..64].to_owned();
        // Errors name the operation and AWS's error code only: a message could echo input.
        let fail = |op: &str, code: Option<&str>| {
            SinkError(format!(
                "Secrets Manager {op} for `{name}` failed: {}",
                code.unwrap_or("no answer")
            ))
        };
        use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
        let put = self
            .client
            .put_secret_value()
            .secret_id(&name)
            .secret_string(&body)
            .client_request_token(&token)
            .send()
            .await;
        let (arn, version) = match put {
            Ok(out) => (
                out.arn().unwrap_or_default().to_owned(),
                out.version_id().unwrap_or_default().to_owned(),
            ),
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                let out = self
                    .client
                    .create_secret()
                    .name(&name)
                    .description(format!("written by nhi-mcp for {identity}"))
                    .secret_string(&body)
                    .client_request_token(&token)
                    .send()
                    .await
                    .map_err(|e| fail("CreateSecret", e.code()))?;
                (
                    out.arn().unwrap_or_default().to_owned(),
                    out.version_id().unwrap_or_default().to_owned(),
                )
            }
            Err(e) => return Err(fail("PutSecretValue", e.code())),
        };
        Ok(format!("aws-secretsmanager:{arn} (version {version})"))
    }
}
