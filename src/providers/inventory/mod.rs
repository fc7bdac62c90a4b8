//! The `inventory` provider: identities from a TOML or JSON file, and changes executed on its own
//! state. Changes are kept in an overlay file in the data dir (`inventory/<name>.state.json`),
//! never written into the user's file; the file is re-read when it changes.

mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{Provider, ProviderError, StepResult};
use crate::config::InventorySource;
use crate::model::proposal::BlastRadius;
use crate::model::{
    Credential, CredentialId, CredentialKind, CredentialStatus, Identity, IdentityId, PlanStep,
    ProviderName, Secret, StepAction,
};
use crate::ports::{ApprovedPlan, shared};

pub use file::{InventoryError, parse_inventory};

/// Changes made through nhi-mcp, applied on top of the file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Overlay {
    added: BTreeMap<IdentityId, Vec<Credential>>,
    status: BTreeMap<CredentialId, CredentialStatus>,
    deleted: BTreeSet<CredentialId>,
    disabled: BTreeSet<IdentityId>,
}

struct Loaded {
    /// Sorted by id; shared with the engine's index.
    identities: Vec<Arc<Identity>>,
    stamp: Option<FileStamp>,
}

/// What says a file changed without reading it: modification time, size and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}

pub struct InventoryProvider {
    name: ProviderName,
    source: InventorySource,
    state_path: PathBuf,
    state: Mutex<(Option<Loaded>, Overlay)>,
    /// Counts loads of the file and changes to the overlay: with the file's stamp, the
    /// provider's `version`.
    generation: std::sync::atomic::AtomicU64,
}

impl InventoryProvider {
    /// Loads the inventory and its overlay; a malformed file is an error naming file, line and key.
    pub fn open(
        name: ProviderName,
        source: InventorySource,
        data_dir: &Path,
    ) -> Result<Self, InventoryError> {
        let state_path = data_dir
            .join("inventory")
            .join(format!("{name}.state.json"));
        let overlay = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| InventoryError {
                message: format!("state {}: {e}", state_path.display()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Overlay::default(),
            Err(e) => {
                return Err(InventoryError {
                    message: format!("cannot read {}: {e}", state_path.display()),
                });
            }
        };
        let provider = Self {
            name,
            source,
            state_path,
            state: Mutex::new((None, overlay)),
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        provider.current()?;
        Ok(provider)
    }

    fn load(&self) -> Result<Loaded, InventoryError> {
        match &self.source {
            InventorySource::Embedded(key) => {
                let text = crate::config::DEMO_INVENTORIES
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, t)| *t)
                    .unwrap_or("");
                Ok(Loaded {
                    identities: shared(parse_inventory(
                        &self.name,
                        text,
                        &format!("builtin:{key}"),
                        false,
                    )?),
                    stamp: None,
                })
            }
            InventorySource::File(path) => {
                let stamp = FileStamp::of(path);
                let text = std::fs::read_to_string(path).map_err(|e| InventoryError {
                    message: format!("inventory {}: cannot read: {e}", path.display()),
                })?;
                let json = path.extension().is_some_and(|e| e == "json");
                Ok(Loaded {
                    identities: shared(parse_inventory(
                        &self.name,
                        &text,
                        &path.display().to_string(),
                        json,
                    )?),
                    stamp,
                })
            }
        }
    }

    /// Runs `f` on the loaded file (re-read first if it changed) and the overlay.
    fn with_current<T>(
        &self,
        f: impl FnOnce(&[Arc<Identity>], &Overlay) -> T,
    ) -> Result<T, InventoryError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stale = match (&guard.0, &self.source) {
            (None, _) => true,
            (Some(_), InventorySource::Embedded(_)) => false,
            (Some(l), InventorySource::File(p)) => FileStamp::of(p) != l.stamp,
        };
        if stale {
            guard.0 = Some(self.load()?);
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (loaded, overlay) = &*guard;
        let base = loaded
            .as_ref()
            .map(|l| l.identities.as_slice())
            .unwrap_or_default();
        Ok(f(base, overlay))
    }

    /// The identities with the overlay applied, re-reading the file if it changed.
    fn current(&self) -> Result<Vec<Arc<Identity>>, InventoryError> {
        self.with_current(|base, overlay| base.iter().map(|i| overlaid(i, overlay)).collect())
    }

    /// One identity with the overlay applied: a binary search, not a walk of the file.
    fn one(&self, id: &IdentityId) -> Result<Option<Identity>, InventoryError> {
        self.with_current(|base, overlay| {
            base.binary_search_by(|i| i.id.cmp(id))
                .ok()
                .map(|at| apply_overlay(&base[at], overlay))
        })
    }

    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Overlay) -> Result<T, String>,
    ) -> Result<T, ProviderError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = guard.1.clone();
        let out = f(&mut next).map_err(|message| self.refused(message))?;
        persist(&self.state_path, &next).map_err(|e| ProviderError::Unavailable {
            provider: self.name.to_string(),
            message: format!("cannot save state to {}: {e}", self.state_path.display()),
        })?;
        guard.1 = next;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    fn refused(&self, message: String) -> ProviderError {
        ProviderError::Refused {
            provider: self.name.to_string(),
            message,
        }
    }

    fn unavailable(&self, e: InventoryError) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name.to_string(),
            message: e.message,
        }
    }

    /// The id a rotation under `plan` gives its new credential: derived from the proposal, so a
    /// retried step finds what an interrupted one made.
    fn new_credential_id(
        plan: &ApprovedPlan,
        kind: CredentialKind,
    ) -> Result<CredentialId, String> {
        let short = plan.proposal_id().short().to_uppercase();
        let raw = match kind {
            CredentialKind::AccessKey => format!("AKIANHI{short}"),
            other => format!(
                "{}-{}",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                short.to_lowercase()
            ),
        };
        CredentialId::parse(&raw).map_err(|e| e.0)
    }
}

/// `base` with the overlay applied: `base` itself, shared, when the overlay does not touch it.
fn overlaid(base: &Arc<Identity>, overlay: &Overlay) -> Arc<Identity> {
    let touched = overlay.added.contains_key(&base.id)
        || overlay.disabled.contains(&base.id)
        || base
            .credentials
            .iter()
            .any(|c| overlay.status.contains_key(&c.id) || overlay.deleted.contains(&c.id));
    if touched {
        Arc::new(apply_overlay(base, overlay))
    } else {
        Arc::clone(base)
    }
}

fn apply_overlay(base: &Identity, overlay: &Overlay) -> Identity {
    let mut identity = base.clone();
    if let Some(added) = overlay.added.get(&identity.id) {
        identity.credentials.extend(added.iter().cloned());
    }
    identity
        .credentials
        .retain(|c| !overlay.deleted.contains(&c.id));
    for c in &mut identity.credentials {
        if let Some(status) = overlay.status.get(&c.id) {
            c.status = *status;
        }
    }
    identity.disabled |= overlay.disabled.contains(&identity.id);
    identity
}

fn persist(path: &Path, overlay: &Overlay) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(overlay).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Owner-only whatever the umask: the overlay says which credentials exist. A leftover
        // temporary file of an older version would keep its mode, so it goes first.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Provider for InventoryProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "inventory"
    }

    async fn list(&self) -> Result<Vec<Identity>, ProviderError> {
        Ok(self
            .list_shared()
            .await?
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect())
    }

    async fn list_shared(&self) -> Result<Vec<Arc<Identity>>, ProviderError> {
        self.current().map_err(|e| self.unavailable(e))
    }

    async fn get(&self, id: &IdentityId) -> Result<Option<Identity>, ProviderError> {
        self.one(id).map_err(|e| self.unavailable(e))
    }

    /// The generation of what `list` answers (file loads and overlay changes): a `stat` of the
    /// file, and a read of it only when it changed.
    async fn version(&self) -> Option<String> {
        self.with_current(|_, _| ()).ok()?;
        // Read after the reload above: a change after this makes the next `stat` differ.
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        Some(generation.to_string())
    }

    fn plan_rotation(
        &self,
        identity: &Identity,
        credential: &Credential,
        grace: Duration,
    ) -> Result<Vec<PlanStep>, ProviderError> {
        if credential.status != CredentialStatus::Active {
            return Err(self.refused(format!(
                "credential `{}` is not active; revoke or delete it instead of rotating",
                credential.id
            )));
        }
        let grace_text = humantime::format_duration(grace).to_string();
        Ok(vec![
            PlanStep {
                index: 0,
                action: StepAction::CreateCredential {
                    replaces: credential.id.clone(),
                    credential_kind: credential.kind,
                },
                description: format!(
                    "create a new credential for `{}` and deliver its secret to the secret sink",
                    identity.id
                ),
                after_grace: false,
            },
            PlanStep {
                index: 1,
                action: StepAction::DeactivateCredential {
                    credential_id: credential.id.clone(),
                },
                description: format!(
                    "deactivate the old credential `{}` after a grace period of {grace_text}",
                    credential.id
                ),
                after_grace: true,
            },
            PlanStep {
                index: 2,
                action: StepAction::DeleteCredential {
                    credential_id: credential.id.clone(),
                },
                description: format!("delete the old credential `{}`", credential.id),
                after_grace: true,
            },
        ])
    }

    fn plan_revocation(
        &self,
        identity: &Identity,
    ) -> Result<(Vec<PlanStep>, BlastRadius), ProviderError> {
        let active: Vec<&Credential> = identity.active_credentials().collect();
        if active.is_empty() && identity.disabled {
            return Err(self.refused(format!("`{}` is already revoked", identity.id)));
        }
        let mut steps: Vec<PlanStep> = active
            .iter()
            .map(|c| PlanStep {
                index: 0,
                action: StepAction::DeactivateCredential {
                    credential_id: c.id.clone(),
                },
                description: format!("deactivate credential `{}`", c.id),
                after_grace: false,
            })
            .collect();
        steps.push(PlanStep {
            index: 0,
            action: StepAction::DisableSignIn,
            description: format!(
                "disable sign-in for `{}` (the identity is kept)",
                identity.id
            ),
            after_grace: false,
        });
        for (i, s) in steps.iter_mut().enumerate() {
            s.index = u32::try_from(i).unwrap_or(u32::MAX);
        }
        let mut environments = identity.used_in_environments.clone();
        environments.extend(identity.environment.clone());
        environments.sort();
        environments.dedup();
        let blast = BlastRadius {
            credentials_deactivated: active.iter().map(|c| c.id.clone()).collect(),
            sign_in_disabled: true,
            summary: format!(
                "{} active credential(s) stop working; anything in {} that uses `{}` will fail to authenticate",
                active.len(),
                if environments.is_empty() {
                    "any environment".to_owned()
                } else {
                    environments.join(", ")
                },
                identity.name
            ),
            environments,
            privileged: identity.permissions.privileged,
            last_used_at: identity.last_activity(),
        };
        Ok((steps, blast))
    }

    async fn apply_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<StepResult, ProviderError> {
        let identity_id = plan.identity_id().clone();
        match &step.action {
            StepAction::CreateCredential {
                replaces,
                credential_kind,
            } => {
                let new_id =
                    Self::new_credential_id(plan, *credential_kind).map_err(|m| self.refused(m))?;
                let current = self.get(&identity_id).await?.ok_or_else(|| {
                    self.refused(format!("identity `{identity_id}` no longer exists"))
                })?;
                if current.credential(&new_id).is_some() {
                    return Err(self.refused(format!(
                        "credential `{new_id}` already exists; roll the step back before running it again"
                    )));
                }
                let old = current.credential(replaces);
                let now = Utc::now();
                let expires_at = old
                    .and_then(|o| o.expires_at.map(|e| e - o.created_at))
                    .map(|validity| now + validity);
                let credential = Credential {
                    id: new_id.clone(),
                    kind: *credential_kind,
                    created_at: now,
                    last_used_at: None,
                    expires_at,
                    status: CredentialStatus::Active,
                };
                self.mutate(|o| {
                    o.added
                        .entry(identity_id.clone())
                        .or_default()
                        .push(credential);
                    Ok(())
                })?;
                Ok(StepResult::Created {
                    credential_id: new_id,
                    secret: Secret::generate("nhi_demo_"),
                })
            }
            StepAction::DeactivateCredential { credential_id } => {
                let id = credential_id.clone();
                self.mutate(|o| {
                    o.status.insert(id, CredentialStatus::Inactive);
                    Ok(())
                })?;
                Ok(StepResult::Done {
                    detail: format!("credential `{credential_id}` is inactive"),
                })
            }
            StepAction::DeleteCredential { credential_id } => {
                let id = credential_id.clone();
                self.mutate(|o| {
                    o.status.remove(&id);
                    for creds in o.added.values_mut() {
                        creds.retain(|c| c.id != id);
                    }
                    o.deleted.insert(id);
                    Ok(())
                })?;
                Ok(StepResult::Done {
                    detail: format!("credential `{credential_id}` is deleted"),
                })
            }
            StepAction::SetPassword { .. } | StepAction::TerminateSessions => {
                Err(self.refused("this step is not one the inventory provider plans".to_owned()))
            }
            StepAction::DisableSignIn => {
                self.mutate(|o| {
                    o.disabled.insert(identity_id.clone());
                    Ok(())
                })?;
                Ok(StepResult::Done {
                    detail: format!("sign-in for `{identity_id}` is disabled"),
                })
            }
        }
    }

    async fn rollback_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<String, ProviderError> {
        match &step.action {
            StepAction::CreateCredential {
                credential_kind, ..
            } => {
                let new_id =
                    Self::new_credential_id(plan, *credential_kind).map_err(|m| self.refused(m))?;
                let identity_id = plan.identity_id().clone();
                let removed = self.mutate(|o| {
                    let creds = o.added.entry(identity_id).or_default();
                    let before = creds.len();
                    creds.retain(|c| c.id != new_id);
                    Ok(before != creds.len())
                })?;
                Ok(if removed {
                    format!("removed the half-made credential `{new_id}`")
                } else {
                    "nothing to undo: no credential had been created".to_owned()
                })
            }
            // The other steps are idempotent: running them again is the recovery.
            _ => Ok("nothing to undo".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: the identities the provider keeps hold a buffer of pointers, not the parsed
    /// file's buffer of whole identities (which `collect` would reuse in place: a third of a
    /// kilobyte per identity, for as long as the provider keeps them).
    #[test]
    fn kept_identities_keep_no_buffer_of_whole_identities() {
        let now = chrono::Utc::now();
        let identities: Vec<Identity> = (0..100)
            .map(|i| {
                let mut identity = crate::model::identity::sample(now);
                identity.id = IdentityId::parse(&format!("p:user/{i:03}")).expect("id");
                identity
            })
            .collect();
        let out = shared(identities);
        assert_eq!(out.len(), 100);
        assert_eq!(out.capacity(), 100);
        assert!(out.windows(2).all(|w| w[0].id < w[1].id));
    }

    /// Issue 9: `list_shared` answers the parsed file's identities themselves (the engine's
    /// index does not copy them), and a fresh value exactly for an identity the overlay changed.
    #[tokio::test]
    async fn untouched_identities_are_shared_and_changed_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let name = ProviderName::parse("demo-aws").unwrap();
        let provider =
            InventoryProvider::open(name, InventorySource::Embedded("demo-aws"), dir.path())
                .unwrap();
        let first = provider.list_shared().await.unwrap();
        let second = provider.list_shared().await.unwrap();
        assert!(first.len() > 2);
        assert!(first.iter().zip(&second).all(|(a, b)| Arc::ptr_eq(a, b)));
        let target = first[1].id.clone();
        provider
            .mutate(|o| {
                o.disabled.insert(target.clone());
                Ok(())
            })
            .unwrap();
        let third = provider.list_shared().await.unwrap();
        for (before, after) in first.iter().zip(&third) {
            if before.id == target {
                assert!(!Arc::ptr_eq(before, after));
                assert!(after.disabled && !before.disabled);
            } else {
                assert!(Arc::ptr_eq(before, after), "{} was copied", before.id);
            }
        }
        assert_eq!(
            provider.list().await.unwrap(),
            third.iter().map(|i| (**i).clone()).collect::<Vec<_>>()
        );
    }
}
