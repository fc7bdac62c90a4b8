//! Persistence: proposals, approvals, used token ids, execution steps, the audit chain and the
//! inventory cache. The only module that knows SQL. A backend is a variant of `Store`; SQLite
//! (the embedded default) is the one built so far.
//!
//! Every write goes through a `Tx`, begun `IMMEDIATE` so that writers (the server and a CLI
//! `approve` in another process) serialize, and the audit record of a change commits with it.
//! The inventory cache is the exception: a copy of what the providers say, written outside the
//! audit chain by `Store::put_inventory` and `Store::drop_inventory`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::audit::{self, AuditEntry, AuditRecord, Decision};
use crate::config::DatabaseConfig;
use crate::model::proposal::{Approval, StepPhase, StepRecord, StepStatus};
use crate::model::{Identity, IdentityId, Proposal, ProposalBody, ProposalId, ProposalStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A write that another task made on this call's behalf failed (the audit writer's batch).
    #[error("database error: {0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the error is about one record (a constraint, unencodable data) rather than the
    /// database (busy, I/O, full): only then can the same write succeed without that record.
    pub fn is_about_the_record(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(e)) => e.kind() != sqlx::error::ErrorKind::Other,
            Self::Db(sqlx::Error::Encode(_)) | Self::Corrupt(_) => true,
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Which proposals to list.
#[derive(Debug, Default, Clone)]
pub struct ProposalFilter {
    pub status: Option<ProposalStatus>,
    /// Only open proposals (pending approval, approved or applying).
    pub open: bool,
    pub identity_id: Option<IdentityId>,
    /// Only proposals whose id sorts after this one (keyset paging).
    pub after: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
}

/// Audit records per `INSERT` statement (16 bound values each, under SQLite's 32,766).
const AUDIT_ROWS_PER_INSERT: usize = 512;

/// The open statuses as an SQL list, written out as the partial index `proposals_one_open`
/// has them (SQLite uses that index only for the same literal condition); the test
/// `the_open_statuses_in_sql_are_the_open_ones` holds it to `ProposalStatus::is_open`.
macro_rules! open_statuses {
    () => {
        "('pending_approval', 'approved', 'applying')"
    };
}

pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Sqlite>,
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(raw: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time `{raw}`: {e}")))
}

fn parse_opt_ts(raw: Option<String>) -> Result<Option<DateTime<Utc>>> {
    raw.as_deref().map(parse_ts).transpose()
}

impl Store {
    /// Opens (creating if needed) the database and runs pending migrations.
    pub async fn open(config: &DatabaseConfig) -> Result<Self> {
        match config {
            DatabaseConfig::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let options = SqliteConnectOptions::from_str("sqlite:")?
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                create_private_file(path)?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    // A local file does not go away between uses; the ping costs a worker round trip.
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                Ok(Self::Sqlite(pool))
            }
        }
    }

    pub async fn begin(&self) -> Result<Tx> {
        match self {
            Self::Sqlite(pool) => Ok(Tx {
                inner: pool.begin_with("BEGIN IMMEDIATE").await?,
            }),
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
        }
    }

    pub async fn proposal(&self, id: &ProposalId) -> Result<Option<Proposal>> {
        let mut tx = self.begin_read().await?;
        let p = load_proposal(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(p)
    }

    pub async fn list_proposals(
        &self,
        filter: &ProposalFilter,
        limit: u32,
    ) -> Result<Vec<Proposal>> {
        let mut tx = self.begin_read().await?;
        // Only the conditions that are set, so `proposals_by_status` / `proposals_by_identity`
        // serve them (`$1 IS NULL OR status = $1` would scan every proposal ever made).
        let mut query = sqlx::QueryBuilder::new("SELECT id FROM proposals WHERE 1 = 1");
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if filter.open {
            query.push(concat!(" AND status IN ", open_statuses!()));
        }
        if let Some(identity) = &filter.identity_id {
            query
                .push(" AND identity_id = ")
                .push_bind(identity.as_str());
        }
        if let Some(after) = &filter.after {
            query.push(" AND id > ").push_bind(after.as_str());
        }
        query
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&mut *tx).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            if let Some(p) = load_proposal(&mut tx, &id).await? {
                out.push(p);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Proposals in `status` whose deadline has passed before `now`.
    pub async fn overdue(
        &self,
        status: ProposalStatus,
        now: DateTime<Utc>,
    ) -> Result<Vec<ProposalId>> {
        self.ids_where("status = $1 AND deadline < $2", status, Some(now))
            .await
    }

    /// Applying proposals whose next scheduled step is due at `now`.
    pub async fn due_steps(&self, now: DateTime<Utc>) -> Result<Vec<ProposalId>> {
        self.ids_where(
            "status = $1 AND next_step_at IS NOT NULL AND next_step_at <= $2",
            ProposalStatus::Applying,
            Some(now),
        )
        .await
    }

    /// Applying proposals with no step scheduled: an apply that a stopped process left behind.
    /// Call only at start-up, before this process starts applying anything itself.
    pub async fn interrupted(&self) -> Result<Vec<ProposalId>> {
        self.ids_where(
            "status = $1 AND next_step_at IS NULL",
            ProposalStatus::Applying,
            None,
        )
        .await
    }

    async fn ids_where(
        &self,
        condition: &str,
        status: ProposalStatus,
        now: Option<DateTime<Utc>>,
    ) -> Result<Vec<ProposalId>> {
        let Self::Sqlite(pool) = self;
        let sql = format!("SELECT id FROM proposals WHERE {condition} ORDER BY id");
        let mut query = sqlx::query(&sql).bind(status.as_str());
        if let Some(now) = now {
            query = query.bind(ts(now));
        }
        let rows = query.fetch_all(pool).await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                ProposalId::parse(&id).map_err(|e| StoreError::Corrupt(e.0))
            })
            .collect()
    }

    /// The whole audit chain in order.
    pub async fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        let Self::Sqlite(pool) = self;
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq")
            .fetch_all(pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    /// The inventory of `provider` as last saved by `put_inventory`, and when it was read.
    pub async fn cached_inventory(
        &self,
        provider: &str,
    ) -> Result<Option<(Vec<Identity>, DateTime<Utc>)>> {
        let Self::Sqlite(pool) = self;
        let Some(row) =
            sqlx::query("SELECT identities, refreshed_at FROM inventory_cache WHERE provider = $1")
                .bind(provider)
                .fetch_optional(pool)
                .await?
        else {
            return Ok(None);
        };
        let raw: String = row.try_get("identities")?;
        let identities: Vec<Identity> = serde_json::from_str(&raw)
            .map_err(|e| StoreError::Corrupt(format!("inventory cache of `{provider}`: {e}")))?;
        let refreshed_at = parse_ts(&row.try_get::<String, _>("refreshed_at")?)?;
        Ok(Some((identities, refreshed_at)))
    }

    /// Saves (replacing any earlier one) the inventory of `provider`, read at `refreshed_at` in
    /// `duration_ms`. A cache, not a change: it is outside the audit chain.
    pub async fn put_inventory(
        &self,
        provider: &str,
        identities: &[&Identity],
        refreshed_at: DateTime<Utc>,
        duration_ms: u64,
    ) -> Result<()> {
        let Self::Sqlite(pool) = self;
        let json =
            serde_json::to_string(identities).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO inventory_cache (provider, identities, refreshed_at, duration_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (provider) DO UPDATE SET identities = excluded.identities,
               refreshed_at = excluded.refreshed_at, duration_ms = excluded.duration_ms",
        )
        .bind(provider)
        .bind(json)
        .bind(ts(refreshed_at))
        .bind(i64::try_from(duration_ms).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Forgets the saved inventory of `provider`, so the next read goes to the provider.
    pub async fn drop_inventory(&self, provider: &str) -> Result<()> {
        let Self::Sqlite(pool) = self;
        sqlx::query("DELETE FROM inventory_cache WHERE provider = $1")
            .bind(provider)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        let Self::Sqlite(pool) = self;
        Ok(pool.begin().await?)
    }
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        Ok(self.inner.commit().await?)
    }

    pub async fn proposal(&mut self, id: &ProposalId) -> Result<Option<Proposal>> {
        load_proposal(&mut self.inner, id.as_str()).await
    }

    /// The proposal as it stands, held for the rest of this transaction: the point of
    /// serialisation for every decision made from it (approve, reject, start an apply, expire).
    /// No other writer can change the row until this transaction ends. On PostgreSQL this is
    /// `SELECT … FOR UPDATE` on the proposal's row; in SQLite the `IMMEDIATE` transaction
    /// already holds the database's write lock, so reading inside it is enough.
    pub async fn lock_proposal(&mut self, id: &ProposalId) -> Result<Option<Proposal>> {
        load_proposal(&mut self.inner, id.as_str()).await
    }

    /// Holds `requester`'s proposal count for the rest of this transaction, so two proposals
    /// at once cannot both pass the per-requester rate limit. On PostgreSQL this is
    /// `pg_advisory_xact_lock` on the requester; SQLite's `IMMEDIATE` transaction already
    /// serialises every writer.
    pub async fn lock_requester(&mut self, requester: &str) -> Result<()> {
        let _ = requester;
        Ok(())
    }

    /// Who has approved `id`, as recorded in this transaction (oldest first).
    pub async fn approvers(&mut self, id: &ProposalId) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT approver FROM approvals WHERE proposal_id = $1 ORDER BY approved_at, approver",
        )
        .bind(id.as_str())
        .fetch_all(&mut *self.inner)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("approver")?))
            .collect()
    }

    /// The open proposal for the same change, if there is one.
    pub async fn open_proposal_for(&mut self, body: &ProposalBody) -> Result<Option<Proposal>> {
        let row = sqlx::query(concat!(
            "SELECT id FROM proposals WHERE identity_id = $1 AND action = $2 AND credential_id = $3
             AND status IN ",
            open_statuses!()
        ))
        .bind(body.identity_id.as_str())
        .bind(body.action.as_str())
        .bind(body.credential_id.as_ref().map_or("", |c| c.as_str()))
        .fetch_optional(&mut *self.inner)
        .await?;
        match row {
            Some(r) => {
                let id: String = r.try_get("id")?;
                load_proposal(&mut self.inner, &id).await
            }
            None => Ok(None),
        }
    }

    pub async fn insert_proposal(&mut self, p: &Proposal) -> Result<()> {
        let body =
            serde_json::to_string(&p.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO proposals (id, identity_id, action, credential_id, status, requester,
               created_at, deadline, digest, body, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(p.body.id.as_str())
        .bind(p.body.identity_id.as_str())
        .bind(p.body.action.as_str())
        .bind(p.body.credential_id.as_ref().map_or("", |c| c.as_str()))
        .bind(p.status.as_str())
        .bind(&p.body.requester)
        .bind(ts(p.body.created_at))
        .bind(ts(p.deadline))
        .bind(&p.digest)
        .bind(body)
        .bind(ts(p.updated_at))
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// How many proposals `requester` has created since `since`.
    pub async fn count_proposals_since(
        &mut self,
        requester: &str,
        since: DateTime<Utc>,
    ) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM proposals WHERE requester = $1 AND created_at >= $2",
        )
        .bind(requester)
        .bind(ts(since))
        .fetch_one(&mut *self.inner)
        .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0))
    }

    /// Moves `id` from `from` to `to` if it is still in `from`; false if it was not.
    pub async fn transition(
        &mut self,
        id: &ProposalId,
        from: ProposalStatus,
        to: ProposalStatus,
    ) -> Result<bool> {
        debug_assert!(from.can_become(to), "{from:?} -> {to:?}");
        let done = sqlx::query(
            "UPDATE proposals SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
        )
        .bind(to.as_str())
        .bind(ts(Utc::now()))
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(&mut *self.inner)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_deadline(&mut self, id: &ProposalId, deadline: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE proposals SET deadline = $1 WHERE id = $2")
            .bind(ts(deadline))
            .bind(id.as_str())
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    /// Records an approval; false if this approver had already approved.
    pub async fn add_approval(
        &mut self,
        id: &ProposalId,
        approver: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO approvals (proposal_id, approver, approved_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(approver)
        .bind(ts(at))
        .execute(&mut *self.inner)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Consumes an approval token id; false if it was used before.
    pub async fn consume_token(
        &mut self,
        jti: &str,
        id: &ProposalId,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO used_tokens (jti, proposal_id, used_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(jti)
        .bind(id.as_str())
        .bind(ts(at))
        .execute(&mut *self.inner)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn record_step(&mut self, id: &ProposalId, step: &StepRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO execution_steps (proposal_id, step_index, phase, status, detail, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.as_str())
        .bind(i64::from(step.index))
        .bind(enum_str(&step.phase))
        .bind(enum_str(&step.status))
        .bind(clip(&step.detail))
        .bind(ts(step.at))
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// Sets what the workflow has to say about the proposal so far.
    pub async fn set_progress(
        &mut self,
        id: &ProposalId,
        outcome: Option<&str>,
        sink_ref: Option<&str>,
        next_step_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE proposals SET outcome = COALESCE($1, outcome), sink_ref = COALESCE($2, sink_ref),
               next_step_at = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(outcome.map(clip))
        .bind(sink_ref)
        .bind(next_step_at.map(ts))
        .bind(ts(Utc::now()))
        .bind(id.as_str())
        .execute(&mut *self.inner)
        .await?;
        Ok(())
    }

    /// Appends `entry` to the audit chain, after the current head.
    pub async fn append_audit(&mut self, entry: AuditEntry) -> Result<AuditRecord> {
        let mut records = self.append_audit_all(vec![entry]).await?;
        records
            .pop()
            .ok_or_else(|| StoreError::Failed("no audit record was written".to_owned()))
    }

    /// Appends `entries` in order after the chain's head: the head is read once and the
    /// records go in as one statement (a batch of group commit costs two statements, not two
    /// per record).
    pub async fn append_audit_all(&mut self, entries: Vec<AuditEntry>) -> Result<Vec<AuditRecord>> {
        let (mut seq, mut prev_hash) = self.audit_head().await?;
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            seq += 1;
            let hash = audit::chain_hash(seq, &prev_hash, &entry);
            records.push(AuditRecord {
                seq,
                entry,
                prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
                hash,
            });
        }
        // SQLite allows 32,766 bound values per statement; 16 per record.
        for chunk in records.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO audit_log (seq, at, principal, action, arguments, arguments_digest,
                   decision, reason, policy_ids, proposal_id, outcome, prev_hash, hash, issuer,
                   client_id, scopes) ",
            );
            insert.push_values(chunk, |mut row, record| {
                let entry = &record.entry;
                row.push_bind(record.seq)
                    .push_bind(ts(entry.at))
                    .push_bind(entry.principal.clone())
                    .push_bind(entry.action.clone())
                    .push_bind(entry.arguments.to_string())
                    .push_bind(entry.arguments_digest.clone())
                    .push_bind(entry.decision.as_str())
                    .push_bind(entry.reason.clone())
                    .push_bind(serde_json::Value::from(entry.policy_ids.clone()).to_string())
                    .push_bind(entry.proposal_id.clone())
                    .push_bind(entry.outcome.clone())
                    .push_bind(record.prev_hash.clone())
                    .push_bind(record.hash.clone())
                    .push_bind(entry.issuer.clone())
                    .push_bind(entry.client_id.clone())
                    .push_bind(
                        entry
                            .scopes
                            .as_ref()
                            .map(|s| serde_json::Value::from(s.clone()).to_string()),
                    );
            });
            insert.build().execute(&mut *self.inner).await?;
        }
        Ok(records)
    }

    /// The number of audit records and the hash of the newest (0 and the genesis hash when
    /// there is none).
    pub async fn audit_head(&mut self) -> Result<(i64, String)> {
        let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *self.inner)
            .await?;
        match head {
            Some(row) => Ok((row.try_get("seq")?, row.try_get("hash")?)),
            None => Ok((0, audit::GENESIS_HASH.to_owned())),
        }
    }

    /// The hash of audit record `seq`, if there is one.
    pub async fn audit_hash_at(&mut self, seq: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&mut *self.inner)
            .await?;
        row.map(|r| r.try_get("hash"))
            .transpose()
            .map_err(Into::into)
    }

    /// The newest audit record of `action`, if there is one.
    pub async fn last_audit_with_action(&mut self, action: &str) -> Result<Option<AuditRecord>> {
        let row =
            sqlx::query("SELECT * FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1")
                .bind(action)
                .fetch_optional(&mut *self.inner)
                .await?;
        row.as_ref().map(audit_from_row).transpose()
    }
}

/// The most characters of a proposal's outcome or a step's detail that are stored: they are
/// built by the server, but from provider answers and user input of their own bounds.
pub const MAX_STORED_TEXT: usize = 2000;

/// `text`, cut to `MAX_STORED_TEXT` characters (on a character boundary) with a note of the cut.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_STORED_TEXT) {
        None => text.to_owned(),
        Some((at, _)) => format!(
            "{}… ({} characters in all, cut)",
            &text[..at],
            text.chars().count()
        ),
    }
}

fn enum_str<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn enum_from<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|e| StoreError::Corrupt(format!("`{raw}`: {e}")))
}

async fn load_proposal(conn: &mut sqlx::SqliteConnection, id: &str) -> Result<Option<Proposal>> {
    let Some(row) = sqlx::query("SELECT * FROM proposals WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let body: String = row.try_get("body")?;
    let body: ProposalBody = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("proposal {id}: {e}")))?;
    let status: String = row.try_get("status")?;
    let status = ProposalStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("proposal {id}: status `{status}`")))?;

    let approvals = sqlx::query(
        "SELECT approver, approved_at FROM approvals WHERE proposal_id = $1 ORDER BY approved_at, approver",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(Approval {
            approver: r.try_get("approver")?,
            approved_at: parse_ts(&r.try_get::<String, _>("approved_at")?)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;

    let execution = sqlx::query(
        "SELECT step_index, phase, status, detail, at FROM execution_steps WHERE proposal_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(StepRecord {
            index: u32::try_from(r.try_get::<i64, _>("step_index")?).unwrap_or(u32::MAX),
            phase: enum_from::<StepPhase>(&r.try_get::<String, _>("phase")?)?,
            status: enum_from::<StepStatus>(&r.try_get::<String, _>("status")?)?,
            detail: r.try_get("detail")?,
            at: parse_ts(&r.try_get::<String, _>("at")?)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;

    Ok(Some(Proposal {
        digest: row.try_get("digest")?,
        status,
        deadline: parse_ts(&row.try_get::<String, _>("deadline")?)?,
        approvals,
        execution,
        outcome: row.try_get("outcome")?,
        sink_ref: row.try_get("sink_ref")?,
        next_step_at: parse_opt_ts(row.try_get("next_step_at")?)?,
        updated_at: parse_ts(&row.try_get::<String, _>("updated_at")?)?,
        body,
    }))
}

fn audit_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord> {
    let corrupt = |what: &str, e: String| StoreError::Corrupt(format!("audit {what}: {e}"));
    let decision: String = row.try_get("decision")?;
    let arguments: String = row.try_get("arguments")?;
    let policy_ids: String = row.try_get("policy_ids")?;
    let scopes: Option<String> = row.try_get("scopes")?;
    let scopes = scopes
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("scopes", e.to_string())))
        .transpose()?;
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        entry: AuditEntry {
            at: parse_ts(&row.try_get::<String, _>("at")?)?,
            principal: row.try_get("principal")?,
            issuer: row.try_get("issuer")?,
            client_id: row.try_get("client_id")?,
            scopes,
            action: row.try_get("action")?,
            arguments: serde_json::from_str(&arguments)
                .map_err(|e| corrupt("arguments", e.to_string()))?,
            arguments_digest: row.try_get("arguments_digest")?,
            decision: Decision::parse(&decision)
                .ok_or_else(|| corrupt("decision", decision.clone()))?,
            reason: row.try_get("reason")?,
            policy_ids: serde_json::from_str(&policy_ids)
                .map_err(|e| corrupt("policy ids", e.to_string()))?,
            proposal_id: row.try_get("proposal_id")?,
            outcome: row.try_get("outcome")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Creates the database file readable by its owner only, if it does not exist yet.
fn create_private_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(|_| ())
        .map_err(|e| StoreError::Corrupt(format!("cannot create {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two appends that read the same head (a backend that does not serialise writers) cannot
    /// both commit: the second fails on `seq`, and one that would follow an older head fails on
    /// the unique `prev_hash`, so the chain cannot fork.
    #[tokio::test]
    async fn an_append_after_a_head_that_already_has_a_successor_fails() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&DatabaseConfig::Sqlite(dir.path().join("nhi.db")))
            .await
            .expect("store");
        let entry = || AuditEntry::new("alice", "test", &serde_json::json!({}), Decision::Allow);
        let mut tx = store.begin().await.expect("begin");
        tx.append_audit(entry()).await.expect("first");
        let second = tx.append_audit(entry()).await.expect("second");
        tx.commit().await.expect("commit");
        let Store::Sqlite(pool) = &store;
        let fork = |seq: i64| {
            sqlx::query(
                "INSERT INTO audit_log (seq, at, principal, action, arguments, arguments_digest,
                   decision, policy_ids, prev_hash, hash)
                 VALUES ($1, '2026-01-01T00:00:00.000Z', 'mallory', 'test', '{}', '', 'allow', '[]', $2, 'x')",
            )
            .bind(seq)
            .bind(second.prev_hash.clone())
            .execute(pool)
        };
        assert!(fork(2).await.is_err(), "same seq as the head");
        assert!(fork(3).await.is_err(), "a second successor of record 1");
        let records = store.audit_records().await.expect("records");
        assert_eq!(records.len(), 2);
        assert!(crate::audit::verify(&records).is_ok());
    }

    /// The open proposals of an identity are found however many closed ones it has: the
    /// filter is in the query, not applied to the first page of its whole history.
    #[tokio::test]
    async fn open_proposals_are_found_behind_any_number_of_closed_ones() {
        use crate::model::proposal::sample;
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&DatabaseConfig::Sqlite(dir.path().join("nhi.db")))
            .await
            .expect("store");
        let identity = crate::model::identity::sample(Utc::now());
        let proposal = |n, status| sample(n, &identity, status);
        let mut tx = store.begin().await.expect("begin");
        for n in 0..5 {
            tx.insert_proposal(&proposal(n, ProposalStatus::Rejected))
                .await
                .expect("closed");
        }
        tx.insert_proposal(&proposal(9, ProposalStatus::PendingApproval))
            .await
            .expect("open");
        tx.commit().await.expect("commit");
        let open = ProposalFilter {
            open: true,
            identity_id: Some(identity.id.clone()),
            ..Default::default()
        };
        // A limit smaller than the closed history, as 1,000 is for an identity with more.
        let got = store.list_proposals(&open, 3).await.expect("open ones");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body.id.as_str(), format!("prop_{:032x}", 9));
        let all = ProposalFilter {
            identity_id: Some(identity.id.clone()),
            ..Default::default()
        };
        let first = store.list_proposals(&all, 3).await.expect("all");
        assert!(first.iter().all(|p| !p.status.is_open()));
    }

    #[test]
    fn the_open_statuses_in_sql_are_the_open_ones() {
        let open: Vec<String> = ProposalStatus::ALL
            .into_iter()
            .filter(|s| s.is_open())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(open_statuses!(), format!("({})", open.join(", ")));
    }

    #[test]
    fn stored_text_is_cut_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let exact = "€".repeat(MAX_STORED_TEXT);
        assert_eq!(clip(&exact), exact);
        let long = "€".repeat(MAX_STORED_TEXT + 1);
        let cut = clip(&long);
        assert!(cut.starts_with(&exact));
        assert!(cut.ends_with("… (2001 characters in all, cut)"), "{cut}");
        let huge = "x".repeat(1 << 20);
        assert!(clip(&huge).chars().count() < MAX_STORED_TEXT + 64);
    }
}
