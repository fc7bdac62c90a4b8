//! Group commit for the audit records of calls that change nothing (reads, refusals): calls
//! that arrive together share one write transaction and one fsync, written by one task, so no
//! caller waits in the database's busy backoff for the write lock. A call is answered only
//! after its record is durable: `append` returns once the batch holding it has committed (or
//! with the error that stopped it). The chain stays one sequence: the batch appends record
//! after record in one transaction that reads the head first, as a single append does.
//!
//! Records that belong to a state change are still written in that change's own transaction.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditEntry;
use crate::store::{Store, StoreError};

/// The most records one transaction writes.
const MAX_BATCH: usize = 512;
/// Calls that may wait for the writer before `append` itself waits to queue.
const QUEUE: usize = 4096;

type Done = oneshot::Sender<Result<(), String>>;

pub(super) struct AuditWriter {
    store: Store,
    /// Started on first use, on the runtime of that call.
    queue: OnceLock<mpsc::Sender<(AuditEntry, Done)>>,
}

impl AuditWriter {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            queue: OnceLock::new(),
        }
    }

    /// Appends `entry` to the chain; returns when it is durable.
    pub async fn append(&self, entry: AuditEntry) -> Result<(), StoreError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(self.store.clone(), rx));
            tx
        });
        let (done, answer) = oneshot::channel();
        match queue.send((entry, done)).await {
            Ok(()) => match answer.await {
                Ok(result) => result.map_err(StoreError::Failed),
                // The writer stopped (its runtime shut down) before it answered.
                Err(_) => Err(StoreError::Failed(
                    "the audit writer stopped before the record was confirmed".to_owned(),
                )),
            },
            // The writer is gone (the runtime it started on has shut down): write directly.
            Err(mpsc::error::SendError((entry, _))) => {
                let mut tx = self.store.begin().await?;
                tx.append_audit(entry).await?;
                tx.commit().await
            }
        }
    }
}

async fn write_batches(store: Store, mut queue: mpsc::Receiver<(AuditEntry, Done)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (entries, waiting): (Vec<AuditEntry>, Vec<Done>) = batch.drain(..).unzip();
        match append_all(&store, &entries).await {
            Ok(()) => {
                for done in waiting {
                    let _ = done.send(Ok(()));
                }
            }
            // One record may be what the database refused: each on its own, so only its
            // call fails. A busy, full or failing database fails the whole batch at once.
            Err(e) if e.is_about_the_record() => {
                tracing::warn!(error = %e, records = entries.len(), "a batch of audit records failed; writing them one by one");
                for (entry, done) in entries.into_iter().zip(waiting) {
                    let result = append_all(&store, std::slice::from_ref(&entry)).await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "cannot write an audit record");
                    }
                    let _ = done.send(result.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = entries.len(), "cannot write a batch of audit records");
                let message = e.to_string();
                for done in waiting {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Appends `entries` in one transaction.
async fn append_all(store: &Store, entries: &[AuditEntry]) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    tx.append_audit_all(entries.to_vec()).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::authz::{Principal, Scope};
    use crate::config::{Config, Overrides};
    use crate::engine::{Caller, IdentityQuery};

    /// Issue 9: calls that arrive together share a transaction, and still each call returns
    /// only once its own record is in the store; the chain stays one unbroken sequence with
    /// the records of state changes written in their own transactions between them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_are_each_durable_when_answered_and_the_chain_holds() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            config_file: None,
            data_dir: Some(dir.path().join("data")),
        };
        let config = Config::from_toml("", None, &overrides).unwrap();
        let engine = Arc::new(crate::cli::compose::open_engine(&config).await.unwrap());
        let before = engine.store().audit_records().await.unwrap().len();
        let mut calls = Vec::new();
        for n in 0..200 {
            let engine = Arc::clone(&engine);
            calls.push(tokio::spawn(async move {
                let who = Principal::new(format!("agent:{n}"), [Scope::Read, Scope::Propose]);
                let caller = Caller::new(&who, "list_identities", serde_json::Value::Null);
                let q = IdentityQuery {
                    limit: Some(1),
                    ..Default::default()
                };
                engine.list_identities(&caller, q).await.unwrap();
                // Answered: the record is there already.
                let records = engine.store().audit_records().await.unwrap();
                assert!(
                    records
                        .iter()
                        .any(|r| r.entry.principal == format!("agent:{n}")),
                    "agent:{n} answered before its record was written"
                );
                if n % 50 == 0 {
                    // A state change in between, in its own transaction.
                    let id = crate::model::IdentityId::parse("demo-aws:user/ci-deploy").unwrap();
                    let caller = Caller::new(&who, "revoke_identity", serde_json::Value::Null);
                    let _ = engine
                        .revoke_identity(&caller, &id, Some("chain test"), None)
                        .await;
                }
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        let records = engine.store().audit_records().await.unwrap();
        assert!(records.len() >= before + 200, "{} records", records.len());
        crate::audit::verify(&records).unwrap();
        engine.store().close().await;
    }
}
