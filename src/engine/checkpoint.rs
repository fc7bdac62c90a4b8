//! Signed audit checkpoints written into the chain and out of it: where the store and the
//! audit log meet, so `audit/` stays free of the store (see `audit::checkpoint` for the format).

use anyhow::Context as _;
use chrono::Utc;
use std::io::Write as _;

use super::Engine;
use crate::audit::checkpoint::{
    CHECKPOINT_ACTION, CHECKPOINT_PRINCIPAL, Checkpoint, Checkpointer, last_in_file, open_locked,
    tail_of_file, write_line,
};
use crate::audit::{AuditEntry, Decision, GENESIS_HASH};

impl Engine {
    /// Writes a checkpoint of the records so far, unless none were added since the last one
    /// (the checkpoint record itself aside). Returns the checkpoint written.
    pub async fn write_checkpoint(
        &self,
        checkpointer: &Checkpointer,
    ) -> anyhow::Result<Option<Checkpoint>> {
        // Locked before the transaction and until the line is written: the order of the lines
        // is the order of the checkpoints in the chain.
        let path = checkpointer.file().to_path_buf();
        let mut file = tokio::task::spawn_blocking(move || open_locked(&path))
            .await?
            .with_context(|| format!("cannot open {}", checkpointer.file().display()))?;
        let mut tx = self.store.begin().await?;
        let (count, head) = tx.audit_head().await?;
        let last = tx.last_audit_with_action(CHECKPOINT_ACTION).await?;
        if count == 0 || last.as_ref().is_some_and(|r| r.seq == count) {
            return Ok(None);
        }
        // Never sign over a log that contradicts the newest checkpoint already written out, nor
        // when that cannot be told: a newest line that is not a checkpoint was cut or edited.
        let tail = tail_of_file(checkpointer.file());
        let newest = tail
            .line
            .as_deref()
            .map(|l| {
                Checkpoint::parse(l).map_err(|_| {
                    anyhow::anyhow!(
                        "not signing: the newest line of {} is not a signed checkpoint (cut or edited); run `nhi-mcp audit verify`",
                        checkpointer.file().display()
                    )
                })
            })
            .transpose()?;
        if let Some(f) = newest {
            let at = if f.count == 0 {
                Some(GENESIS_HASH.to_owned())
            } else {
                tx.audit_hash_at(f.count).await?
            };
            if f.count > count || at.as_deref() != Some(f.head.as_str()) {
                anyhow::bail!(
                    "not signing: the audit log ({count} records) contradicts the newest checkpoint in {} ({} records, of {}); run `nhi-mcp audit verify`",
                    checkpointer.file().display(),
                    f.count,
                    f.at
                );
            }
        }
        let last = last
            .and_then(|r| r.entry.outcome)
            .and_then(|o| Checkpoint::parse(&o).ok());
        let checkpoint = Checkpoint::sign(
            checkpointer.key(),
            count,
            &head,
            last.as_ref().map(Checkpoint::digest),
            Utc::now(),
        );
        let entry = AuditEntry::new(
            CHECKPOINT_PRINCIPAL,
            CHECKPOINT_ACTION,
            &serde_json::json!({"count": count, "head": head}),
            Decision::Allow,
        )
        .outcome(checkpoint.to_line());
        tx.append_audit(entry).await?;
        tx.commit().await?;
        // A last line without its newline (copied or edited by hand) is ended first, so that the
        // next line does not join it.
        if tail.unterminated {
            file.write_all(b"\n")?;
        }
        // A checkpoint committed to the chain whose line never reached the file (a crash in
        // between, a full disk) is appended first, so that the lines still chain.
        if let Some(last) = last {
            let behind = last_in_file(checkpointer.file()).is_none_or(|f| f.count < last.count);
            if behind {
                write_line(&mut file, &last)?;
            }
        }
        write_line(&mut file, &checkpoint).map_err(|e| {
            anyhow::anyhow!(
                "checkpoint of {count} records is in the chain but not in {}: {e}",
                checkpointer.file().display()
            )
        })?;
        Ok(Some(checkpoint))
    }

    /// `checkpoint`, logged.
    pub async fn log_checkpoint(&self, checkpointer: &Checkpointer) {
        match self.write_checkpoint(checkpointer).await {
            Ok(Some(c)) => tracing::info!(
                count = c.count,
                head = %c.head,
                file = %checkpointer.file().display(),
                "audit checkpoint written"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!("audit checkpoint failed: {e:#}"),
        }
    }

    /// Writes a checkpoint every `interval` until `cancel`; the caller writes the last one once
    /// everything else has stopped.
    pub async fn run_checkpoints(
        &self,
        checkpointer: &Checkpointer,
        interval: std::time::Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(interval) => self.log_checkpoint(checkpointer).await,
            }
        }
    }
}
