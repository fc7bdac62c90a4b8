//! Secret sinks: where a new secret goes, so that it never passes through the agent.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::Utc;

use crate::model::{CredentialId, IdentityId, ProposalId, Secret};

#[derive(Debug, thiserror::Error)]
#[error("secret sink: {0}")]
pub struct SinkError(pub String);

/// Contract: `put` stores the secret durably before it returns and answers a reference that
/// names where it is; neither the reference nor an error contains the secret.
#[async_trait]
pub trait SecretSink: Send + Sync {
    async fn put(
        &self,
        proposal: &ProposalId,
        identity: &IdentityId,
        credential: &CredentialId,
        secret: &Secret,
    ) -> Result<String, SinkError>;
}

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
