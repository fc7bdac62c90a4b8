//! Signed checkpoints: the record count and head hash of the audit chain, signed with a key of
//! their own (Ed25519), so that a truncated, wiped or re-hashed log no longer verifies.
//!
//! A checkpoint is written into the chain (an `audit.checkpoint` record whose `outcome` is the
//! signed checkpoint of the records before it) and out of it: one JSON line in the checkpoint
//! file, appended and fsynced, and the last line of an export. Each checkpoint names the digest
//! of the one before it, so checkpoints chain too. An auditor checks them with the public key
//! alone. Nothing here proves the records after the newest checkpoint, and whoever holds the
//! checkpoint key can sign anything: see README, "how an auditor keeps and checks checkpoints".

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{AuditRecord, GENESIS_HASH};
use crate::model::canonical;

/// The action of the audit record that carries a checkpoint.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";
/// The `type` of every checkpoint; it also keeps a checkpoint line apart from a record line.
pub const CHECKPOINT_TYPE: &str = "nhi-mcp.audit-checkpoint.v1";
/// The principal of checkpoint records: the server itself (a reserved name).
pub const CHECKPOINT_PRINCIPAL: &str = "nhi-mcp";

/// The signed statement "the audit chain had `count` records and its head was `head`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    #[serde(rename = "type")]
    pub kind: String,
    /// How many records the chain had (sequence numbers 1 to `count`).
    pub count: i64,
    /// The hash of record `count` (the genesis hash when `count` is 0).
    pub head: String,
    /// When it was signed (RFC 3339, milliseconds).
    pub at: String,
    /// The digest of the checkpoint before it in the chain, if there was one.
    pub prev: Option<String>,
    /// The first 16 hex digits of SHA-256 of the public key that signs it.
    pub key_id: String,
    /// Ed25519 over the canonical JSON of every other field, base64url without padding.
    pub signature: String,
}

#[derive(Serialize)]
struct Unsigned<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    count: i64,
    head: &'a str,
    at: &'a str,
    prev: Option<&'a str>,
    key_id: &'a str,
}

impl Checkpoint {
    fn unsigned(&self) -> Unsigned<'_> {
        Unsigned {
            kind: &self.kind,
            count: self.count,
            head: &self.head,
            at: &self.at,
            prev: self.prev.as_deref(),
            key_id: &self.key_id,
        }
    }

    /// Signs `count` and `head` at `at`, after the checkpoint whose digest is `prev`.
    pub fn sign(
        key: &CheckpointKey,
        count: i64,
        head: &str,
        prev: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        let mut c = Self {
            kind: CHECKPOINT_TYPE.to_owned(),
            count,
            head: head.to_owned(),
            // As the store writes times: RFC 3339, milliseconds, `Z`.
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            prev,
            key_id: key_id(&key.signing.verifying_key()),
            signature: String::new(),
        };
        let message = canonical::to_canonical_json(&c.unsigned()).unwrap_or_default();
        c.signature = b64().encode(key.signing.sign(message.as_bytes()).to_bytes());
        c
    }

    /// Checks the type, the key id and the signature against `public`.
    pub fn verify(&self, public: &VerifyingKey) -> Result<(), String> {
        if self.kind != CHECKPOINT_TYPE {
            return Err(format!(
                "it is not a checkpoint of this format (type `{}`)",
                crate::model::quote_input(&self.kind)
            ));
        }
        let expected = key_id(public);
        if self.key_id != expected {
            return Err(format!(
                "it names checkpoint key {}, not this key ({expected})",
                crate::model::quote_input(&self.key_id)
            ));
        }
        let bad = || "its signature is not valid for the checkpoint key (forged)".to_owned();
        let raw = b64().decode(&self.signature).map_err(|_| bad())?;
        let signature = Signature::from_slice(&raw).map_err(|_| bad())?;
        let message = canonical::to_canonical_json(&self.unsigned()).map_err(|_| bad())?;
        public
            .verify_strict(message.as_bytes(), &signature)
            .map_err(|_| bad())
    }

    /// The digest the next checkpoint names as `prev`.
    pub fn digest(&self) -> String {
        canonical::digest(self).unwrap_or_default()
    }

    /// One JSON line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(line: &str) -> Result<Self, String> {
        serde_json::from_str(line).map_err(|e| format!("not a signed checkpoint: {e}"))
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn key_id(public: &VerifyingKey) -> String {
    canonical::sha256_hex(public.as_bytes())[..16].to_owned()
}

/// The key that signs checkpoints: not the approval key, so that neither can stand in for the
/// other.
pub struct CheckpointKey {
    signing: SigningKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKey([redacted])")
    }
}

impl CheckpointKey {
    /// Loads the PKCS#8 PEM key at `path`, or creates it (mode 0600) if it does not exist.
    /// A key file that others can read is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        let err = |m: String| format!("checkpoint key {}: {m}", path.display());
        if !path.exists() {
            match crate::authz::approval::create_key_file(path) {
                Ok(()) => {}
                // Another process (a second `audit checkpoint`, `serve`) created it first and
                // may still be writing it.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    for _ in 0..40 {
                        if let Ok(key) = Self::load(path) {
                            return Ok(key);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(25));
                    }
                }
                Err(e) => return Err(err(format!("cannot create: {e}"))),
            }
        }
        Self::load(path)
    }

    /// Loads an existing key (refused if others can read it).
    pub fn load(path: &Path) -> Result<Self, String> {
        let err = |m: String| format!("checkpoint key {}: {m}", path.display());
        crate::authz::approval::check_private(path).map_err(err)?;
        let pem = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let signing = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| err("is not a PKCS#8 PEM Ed25519 private key".to_owned()))?;
        Ok(Self { signing })
    }

    pub fn from_signing_key(signing: SigningKey) -> Self {
        Self { signing }
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as SPKI PEM, for auditors.
    pub fn public_pem(&self) -> Result<String, String> {
        self.public()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode the public key: {e}"))
    }
}

/// Reads a public key (SPKI PEM, as `audit public-key` prints it).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("public key {}: cannot read: {e}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|_| {
        format!(
            "public key {}: is not a PEM Ed25519 public key (`nhi-mcp audit public-key` prints one)",
            path.display()
        )
    })
}

/// Every checkpoint in a checkpoint file, oldest first; an absent file is `None`.
pub fn read_checkpoint_file(path: &Path) -> Result<Option<Vec<Checkpoint>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "checkpoint file {}: cannot read: {e}",
                path.display()
            ));
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Checkpoint::parse(l)
                .map_err(|e| format!("checkpoint file {} line {}: {e}", path.display(), i + 1))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The last checkpoint of a checkpoint file, read from its end.
pub(crate) fn last_in_file(path: &Path) -> Option<Checkpoint> {
    tail_of_file(path)
        .line
        .and_then(|l| Checkpoint::parse(&l).ok())
}

/// The end of a checkpoint file.
#[derive(Default)]
pub(crate) struct Tail {
    /// Its last non-empty line.
    pub(crate) line: Option<String>,
    /// It is not empty and its last byte is not a newline: a line appended now would join it.
    pub(crate) unterminated: bool,
}

pub(crate) fn tail_of_file(path: &Path) -> Tail {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(8192)))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        Ok(tail)
    };
    let Ok(tail) = read() else {
        return Tail::default();
    };
    Tail {
        line: String::from_utf8_lossy(&tail)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_owned),
        unterminated: tail.last().is_some_and(|b| *b != b'\n'),
    }
}

/// The checkpoint file opened for appending (created 0600, its directory synced), locked
/// against other writers (`serve` and `audit checkpoint`) until dropped.
pub(crate) fn open_locked(path: &Path) -> std::io::Result<std::fs::File> {
    let file = open_for_append(path)?;
    file.lock()?;
    Ok(file)
}

/// Opened without following a symbolic link in its last component: whoever can write the data
/// dir must not make the server append to (or create, or lock) a file elsewhere.
fn open_for_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let created = !path.exists();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| no_symlink(path, e))?;
    if created {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(file)
}

/// `ELOOP` from an `O_NOFOLLOW` open said as what it means.
fn no_symlink(path: &Path, e: std::io::Error) -> std::io::Error {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if e.raw_os_error() == Some(libc::ELOOP) && is_link {
        return std::io::Error::new(
            e.kind(),
            "it is a symbolic link, which nhi-mcp does not write through: set `[audit] checkpoint_file` to the file itself",
        );
    }
    e
}

/// A shared lock on the checkpoint file (created empty if missing), held while the chain and
/// the file are read, so that a checkpoint being written is seen in both or in neither. A file
/// this process may read but not write (a read-only mount, an immutable file, an auditor's
/// copy of the data dir) is locked as it is, and a missing one that cannot be created is no
/// lock (`None`): nobody can be writing either.
pub fn lock_for_reading(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::io::ErrorKind::{NotFound, PermissionDenied, ReadOnlyFilesystem};
    use std::os::unix::fs::OpenOptionsExt;
    let file = match open_for_append(path) {
        Ok(file) => file,
        Err(e) if matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem) => {
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
            {
                Ok(file) => file,
                Err(missing) if missing.kind() == NotFound => return Ok(None),
                Err(_) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    file.lock_shared()?;
    Ok(Some(file))
}

/// Appends `checkpoint` as one line and fsyncs it.
pub(crate) fn write_line(file: &mut std::fs::File, checkpoint: &Checkpoint) -> std::io::Result<()> {
    file.write_all(format!("{}\n", checkpoint.to_line()).as_bytes())?;
    file.sync_all()
}

/// Appends `checkpoint` as one line to `path` (created 0600) and fsyncs it.
pub fn append_to_file(path: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    write_line(&mut open_locked(path)?, checkpoint)
}

/// Writes checkpoints for one data dir: into the chain and into the checkpoint file.
#[derive(Debug)]
pub struct Checkpointer {
    key: CheckpointKey,
    file: PathBuf,
}

impl Checkpointer {
    pub fn new(key: CheckpointKey, file: PathBuf) -> Self {
        Self { key, file }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// A signed checkpoint of exactly `records` (an export), after the newest checkpoint among
    /// them. It goes into neither the chain nor the file.
    pub fn for_export(&self, records: &[AuditRecord]) -> Checkpoint {
        let prev = records
            .iter()
            .rev()
            .find(|r| r.entry.action == CHECKPOINT_ACTION)
            .and_then(|r| r.entry.outcome.as_deref())
            .and_then(|o| Checkpoint::parse(o).ok())
            .map(|c| c.digest());
        let (count, head) = records
            .last()
            .map_or((0, GENESIS_HASH.to_owned()), |r| (r.seq, r.hash.clone()));
        Checkpoint::sign(&self.key, count, &head, prev, Utc::now())
    }

    pub(crate) fn key(&self) -> &CheckpointKey {
        &self.key
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.public()
    }
}

/// What `verify_checkpoints` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The newest valid checkpoint (from the file or the chain), if any.
    pub newest: Option<Checkpoint>,
    /// How many records follow it, not yet covered by any checkpoint.
    pub uncovered: usize,
    /// How many checkpoints the chain holds.
    pub in_chain: usize,
}

/// Checks `records` (whose hash chain `super::verify` already accepted) against every
/// checkpoint the chain holds and every checkpoint in `kept` (a checkpoint file or an export's
/// last line, oldest first). Returns the first problem as one line.
pub fn verify_checkpoints(
    records: &[AuditRecord],
    kept: &[Checkpoint],
    public: Option<&VerifyingKey>,
) -> Result<Coverage, String> {
    let no_key = || {
        "there are checkpoints to check but no checkpoint key: pass `--public-key FILE`".to_owned()
    };
    let mut newest: Option<Checkpoint> = None;
    let mut in_chain = 0;
    for r in records
        .iter()
        .filter(|r| r.entry.action == CHECKPOINT_ACTION)
    {
        in_chain += 1;
        let c = r
            .entry
            .outcome
            .as_deref()
            .ok_or_else(|| "no checkpoint".to_owned())
            .and_then(Checkpoint::parse)
            .map_err(|_| {
                format!(
                    "record {}: an `{CHECKPOINT_ACTION}` record without a signed checkpoint (forged)",
                    r.seq
                )
            })?;
        c.verify(public.ok_or_else(no_key)?)
            .map_err(|e| format!("record {}: checkpoint record: {e}", r.seq))?;
        if c.count == r.seq - 1 && c.head != r.prev_hash {
            return Err(format!(
                "record {}: the chain before it does not match the head its checkpoint signed (rewritten and re-hashed)",
                r.seq
            ));
        }
        if c.count != r.seq - 1 || c.head != r.prev_hash {
            return Err(format!(
                "record {}: its checkpoint covers {} records, not the {} before it (forged or moved)",
                r.seq,
                c.count,
                r.seq - 1
            ));
        }
        newest = Some(c);
    }
    for (i, c) in kept.iter().enumerate() {
        let n = i + 1;
        let public = public.ok_or_else(no_key)?;
        c.verify(public)
            .map_err(|e| format!("checkpoint {n} (of {}): {e}", c.at))?;
        let count = usize::try_from(c.count).unwrap_or(usize::MAX);
        if records.is_empty() && c.count > 0 {
            return Err(format!(
                "the audit log is empty, but checkpoint {n} (of {}) covers {} records (wiped)",
                c.at, c.count
            ));
        }
        if records.len() < count {
            return Err(format!(
                "the audit log has {} records, but checkpoint {n} (of {}) covers {} (truncated)",
                records.len(),
                c.at,
                c.count
            ));
        }
        let head = if count == 0 {
            GENESIS_HASH
        } else {
            records[count - 1].hash.as_str()
        };
        if head != c.head {
            return Err(format!(
                "record {}: the chain up to it does not match the head signed in checkpoint {n} (of {}) (rewritten and re-hashed)",
                c.count, c.at
            ));
        }
        if i > 0 && c.prev.as_deref() != Some(kept[i - 1].digest().as_str()) {
            return Err(format!(
                "checkpoint {n} (of {}) does not follow checkpoint {i}: a checkpoint is missing or the log was restarted",
                c.at
            ));
        }
        if newest.as_ref().is_none_or(|x| x.count <= c.count) {
            newest = Some(c.clone());
        }
    }
    let covered = newest
        .as_ref()
        .map_or(0, |c| usize::try_from(c.count).unwrap_or(0));
    Ok(Coverage {
        newest,
        uncovered: records.len().saturating_sub(covered),
        in_chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, Decision, chain_hash, verify};
    use serde_json::json;

    fn key() -> CheckpointKey {
        CheckpointKey::from_signing_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn push(records: &mut Vec<AuditRecord>, entry: AuditEntry) {
        let seq = records.len() as i64 + 1;
        let prev = records
            .last()
            .map_or(GENESIS_HASH.to_owned(), |r| r.hash.clone());
        let hash = chain_hash(seq, &prev, &entry);
        records.push(AuditRecord {
            seq,
            entry,
            prev_hash: prev,
            hash,
        });
    }

    fn plain(records: &mut Vec<AuditRecord>, n: usize) {
        for i in 0..n {
            push(
                records,
                AuditEntry::new("p", "list_identities", &json!({"i": i}), Decision::Allow),
            );
        }
    }

    fn checkpoint_record(records: &mut Vec<AuditRecord>, k: &CheckpointKey) -> Checkpoint {
        let prev = records
            .iter()
            .rev()
            .find(|r| r.entry.action == CHECKPOINT_ACTION)
            .and_then(|r| Checkpoint::parse(r.entry.outcome.as_deref()?).ok())
            .map(|c| c.digest());
        let last = records.last().map(|r| (r.seq, r.hash.clone()));
        let (count, head) = last.unwrap_or((0, GENESIS_HASH.to_owned()));
        let c = Checkpoint::sign(k, count, &head, prev, Utc::now());
        push(
            records,
            AuditEntry::new(
                CHECKPOINT_PRINCIPAL,
                CHECKPOINT_ACTION,
                &json!({}),
                Decision::Allow,
            )
            .outcome(c.to_line()),
        );
        c
    }

    #[test]
    fn signature_round_trip_and_refusals() {
        let k = key();
        let c = Checkpoint::sign(&k, 3, "ab", None, Utc::now());
        assert!(c.verify(&k.public()).is_ok());
        let parsed = Checkpoint::parse(&c.to_line()).unwrap();
        assert_eq!(parsed, c);
        assert!(parsed.verify(&k.public()).is_ok());

        let other = key();
        assert!(
            c.verify(&other.public())
                .unwrap_err()
                .contains("not this key")
        );

        let mut edited = c.clone();
        edited.count = 4;
        assert!(edited.verify(&k.public()).unwrap_err().contains("forged"));

        // The key id of the real key on another key's signature.
        let mut swapped = Checkpoint::sign(&other, 3, "ab", None, Utc::now());
        swapped.key_id = c.key_id.clone();
        assert!(swapped.verify(&k.public()).unwrap_err().contains("forged"));

        let mut garbage = c.clone();
        garbage.signature = "é€".into();
        assert!(garbage.verify(&k.public()).is_err());
    }

    #[test]
    fn the_public_key_round_trips_through_pem() {
        let k = key();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pub.pem");
        std::fs::write(&path, k.public_pem().unwrap()).unwrap();
        assert_eq!(read_public_key(&path).unwrap(), k.public());
        std::fs::write(&path, "not a key").unwrap();
        assert!(read_public_key(&path).is_err());
    }

    #[test]
    fn tail_wipe_rewrite_and_forged_checkpoints_are_found() {
        let k = key();
        let mut records = Vec::new();
        plain(&mut records, 3);
        let c1 = checkpoint_record(&mut records, &k);
        plain(&mut records, 2);
        let c2 = checkpoint_record(&mut records, &k);
        assert_eq!(c2.prev.as_deref(), Some(c1.digest().as_str()));
        plain(&mut records, 1);
        let kept = vec![c1.clone(), c2.clone()];
        assert!(verify(&records).is_ok());
        let cov = verify_checkpoints(&records, &kept, Some(&k.public())).unwrap();
        assert_eq!(cov.newest.as_ref().unwrap().count, 6);
        assert_eq!(cov.uncovered, 2);
        assert_eq!(cov.in_chain, 2);

        // Truncated at the checkpoint boundary and one past it.
        for cut in [3, 5] {
            let e = verify_checkpoints(&records[..cut], &kept, Some(&k.public())).unwrap_err();
            assert!(e.contains("truncated"), "{e}");
        }
        // The tail after the newest checkpoint may go: it is not covered.
        assert!(verify_checkpoints(&records[..6], &kept, Some(&k.public())).is_ok());
        assert!(verify_checkpoints(&records[..7], &kept, Some(&k.public())).is_ok());

        let e = verify_checkpoints(&[], &kept, Some(&k.public())).unwrap_err();
        assert!(e.contains("wiped"), "{e}");

        // Record 2 edited and the chain re-hashed from there.
        let mut rehashed: Vec<AuditRecord> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let mut entry = r.entry.clone();
            if i == 1 {
                entry.principal = "mallory".into();
            }
            push(&mut rehashed, entry);
        }
        assert!(verify(&rehashed).is_ok());
        let e = verify_checkpoints(&rehashed, &kept, Some(&k.public())).unwrap_err();
        assert!(e.contains("re-hashed"), "{e}");

        // A checkpoint record forged with another key, appended.
        let mut forged = records.clone();
        checkpoint_record(&mut forged, &key());
        let e = verify_checkpoints(&forged, &kept, Some(&k.public())).unwrap_err();
        assert!(e.contains("record 9") && e.contains("not this key"), "{e}");

        // A checkpoint record that claims a count it does not sit after.
        let mut moved = records.clone();
        let wrong = Checkpoint::sign(&k, 2, &records[1].hash, None, Utc::now());
        push(
            &mut moved,
            AuditEntry::new(
                CHECKPOINT_PRINCIPAL,
                CHECKPOINT_ACTION,
                &json!({}),
                Decision::Allow,
            )
            .outcome(wrong.to_line()),
        );
        let e = verify_checkpoints(&moved, &[], Some(&k.public())).unwrap_err();
        assert!(e.contains("record 9") && e.contains("moved"), "{e}");

        // A line removed from the middle of the kept checkpoints.
        let mut c3 = c2.clone();
        c3.prev = Some("0".repeat(64));
        let c3 = Checkpoint::sign(&k, c3.count, &c3.head, c3.prev, Utc::now());
        let e = verify_checkpoints(&records, &[c1, c3], Some(&k.public())).unwrap_err();
        assert!(e.contains("does not follow"), "{e}");

        // No key: checkpoints cannot be checked, and that is an error, not a pass.
        assert!(verify_checkpoints(&records, &kept, None).is_err());
    }

    #[test]
    fn checkpoint_file_lines_append_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let k = key();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.jsonl");
        assert_eq!(read_checkpoint_file(&path).unwrap(), None);
        let a = Checkpoint::sign(&k, 1, "a", None, Utc::now());
        let b = Checkpoint::sign(&k, 2, "b", Some(a.digest()), Utc::now());
        append_to_file(&path, &a).unwrap();
        append_to_file(&path, &b).unwrap();
        assert_eq!(
            read_checkpoint_file(&path).unwrap(),
            Some(vec![a, b.clone()])
        );
        assert_eq!(last_in_file(&path), Some(b));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "{\"type\":1}\n").unwrap();
        let e = read_checkpoint_file(&path).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}
