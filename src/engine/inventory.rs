//! The inventory cache: each provider's identities as last read in full, kept in memory and in
//! the store, so listing from a slow provider does not make every call slow. Only providers
//! whose `refresh` interval is not zero are cached; the others are read on every call.
//!
//! A list is served from the cache however old it is (the background refresh, `refresh_due`,
//! renews it) unless the caller asks for a live read; the result's `Freshness` says which. The
//! first use after a start serves what the store kept. One live read of a provider runs at a
//! time: concurrent misses wait for it and share it. An identity read one by one (`get_identity`,
//! a proposal's checks) or re-read after a change the engine made is put into the cache at once,
//! and a full read that started before that does not undo it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, RwLock};

use super::index::Snapshot;
use super::query::Freshness;
use super::{Engine, Result, list_with_timeout, with_timeout};
use crate::model::{Identity, IdentityId};
use crate::ports::Provider;

/// A failed background refresh is tried again after this long at most (sooner when the
/// provider's `refresh` is shorter).
const RETRY_FAILED_REFRESH: Duration = Duration::from_secs(60);

/// How long a provider's `version` may take before the provider is read instead.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

const LIVE: &str = "live";
const CACHE: &str = "cache";

/// One provider's inventory as last read in full, plus identities re-read one by one since.
#[derive(Debug, Clone)]
struct CachedInventory {
    index: Arc<Snapshot>,
    /// When the full read finished.
    refreshed_at: DateTime<Utc>,
    /// How long the full read took; 0 when unknown (loaded from the store).
    duration_ms: u64,
    /// When the full read started, in this process; `None` when loaded from the store.
    started: Option<Instant>,
    /// Orders writes to the store: a version older than the one written last is not written.
    version: u64,
}

/// What one provider's cache holds.
#[derive(Debug, Default)]
struct State {
    /// Whether the store was asked for a saved inventory yet (once, on first use).
    loaded: bool,
    current: Option<CachedInventory>,
    /// Identities put into `current` one by one since the last full read, and when: a full read
    /// that started before keeps them.
    patched: BTreeMap<IdentityId, Instant>,
    /// When the cache was last dropped: a full read that started before is not cached.
    dropped_at: Option<Instant>,
}

/// The cache of one provider whose `refresh` is not zero.
struct ProviderCache {
    /// How old the inventory may grow before the background refresh reads it again.
    refresh: Duration,
    state: RwLock<State>,
    /// Held while the inventory is read live, so concurrent misses read the provider once.
    reading: Mutex<()>,
    /// The version last written to (or removed from) the store.
    persisted: Mutex<u64>,
    /// Why the last background refresh failed, and when; cleared by a successful read.
    last_error: std::sync::Mutex<Option<(String, Instant)>>,
}

impl ProviderCache {
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(message, _)| message.clone())
    }

    fn set_error(&self, message: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            message.map(|m| (m, Instant::now()));
    }

    /// Whether the last background refresh failed too recently to try again.
    fn failed_recently(&self) -> bool {
        let wait = self.refresh.min(RETRY_FAILED_REFRESH);
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < wait)
    }

    fn freshness(&self, provider: &str, entry: &CachedInventory, source: &str) -> Freshness {
        Freshness {
            provider: provider.to_owned(),
            source: source.to_owned(),
            as_of: entry.refreshed_at,
            age_secs: age(entry.refreshed_at).as_secs(),
            last_refresh_error: self.last_error(),
        }
    }
}

/// The inventory caches of the providers configured with a non-zero `refresh`, and the index
/// of each other ("live") provider as of its last `version`.
pub(super) struct InventoryCache {
    providers: BTreeMap<String, ProviderCache>,
    live: BTreeMap<String, Mutex<Option<LiveIndex>>>,
    versions: AtomicU64,
}

/// A live provider's index and the provider's `version` it was read at.
struct LiveIndex {
    version: String,
    index: Arc<Snapshot>,
}

impl InventoryCache {
    /// Caches for the providers (name, `refresh`) whose `refresh` is not zero.
    pub(super) fn new(refresh: impl IntoIterator<Item = (String, Duration)>) -> Self {
        let (cached, live): (Vec<_>, Vec<_>) =
            refresh.into_iter().partition(|(_, every)| !every.is_zero());
        let live = live
            .into_iter()
            .map(|(name, _)| (name, Mutex::new(None)))
            .collect();
        let providers = cached
            .into_iter()
            .map(|(name, every)| {
                let cache = ProviderCache {
                    refresh: every,
                    state: RwLock::new(State::default()),
                    reading: Mutex::new(()),
                    persisted: Mutex::new(0),
                    last_error: std::sync::Mutex::new(None),
                };
                (name, cache)
            })
            .collect();
        Self {
            providers,
            live,
            versions: AtomicU64::new(1),
        }
    }

    fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed)
    }
}

/// How long ago `t` was; zero if it is in the future.
fn age(t: DateTime<Utc>) -> Duration {
    (Utc::now() - t).to_std().unwrap_or(Duration::ZERO)
}

/// Puts `identity` into `list` (sorted by id) in the place of `id`; `None` removes `id`.
fn put_one(list: &mut Vec<Arc<Identity>>, id: &IdentityId, identity: Option<Arc<Identity>>) {
    match (list.binary_search_by(|i| i.id.cmp(id)), identity) {
        (Ok(at), Some(new)) => list[at] = new,
        (Ok(at), None) => {
            list.remove(at);
        }
        (Err(at), Some(new)) => list.insert(at, new),
        (Err(_), None) => {}
    }
}

impl Engine {
    /// The index of every provider (or one provider), and how fresh each is. A provider with
    /// a `refresh` interval is answered from its cached inventory whenever there is one,
    /// however old (the background refresh renews it), unless `refresh` asks for a live read;
    /// a live read that fails is an error. A provider without one is read live, from its index
    /// when its `version` says nothing changed.
    pub(super) async fn inventories(
        &self,
        provider: Option<&str>,
        refresh: bool,
    ) -> Result<(Vec<Arc<Snapshot>>, Vec<Freshness>)> {
        let mut out = Vec::new();
        let mut freshness = Vec::new();
        for (name, p) in &self.providers {
            if provider.is_some_and(|want| want != name) {
                continue;
            }
            match self.inventory.providers.get(name) {
                None => {
                    out.push(self.live_index(name, p).await?);
                    freshness.push(Freshness::live(name));
                }
                Some(cache) => {
                    let (entry, source) = self.inventory_of(name, p, cache, refresh).await?;
                    freshness.push(cache.freshness(name, &entry, source));
                    out.push(entry.index);
                }
            }
        }
        Ok((out, freshness))
    }

    /// A live provider's index: the one last read if the provider's `version` is unchanged,
    /// else a new read. Concurrent calls share one read.
    async fn live_index(&self, name: &str, provider: &Arc<dyn Provider>) -> Result<Arc<Snapshot>> {
        let Some(slot) = self.inventory.live.get(name) else {
            return Ok(Arc::new(Snapshot::build(
                list_with_timeout(provider.as_ref()).await?,
            )));
        };
        // Asked before the read: a change during the read shows as a new version next time.
        // A provider that cannot tell (or does not answer in time) is read, not waited for.
        let version = tokio::time::timeout(VERSION_TIMEOUT, provider.version())
            .await
            .ok()
            .flatten();
        let Some(version) = version else {
            return Ok(Arc::new(Snapshot::build(
                list_with_timeout(provider.as_ref()).await?,
            )));
        };
        // One read per version: calls that wait here find the index the first one made.
        let mut slot = slot.lock().await;
        if let Some(known) = slot.as_ref()
            && known.version == version
        {
            return Ok(Arc::clone(&known.index));
        }
        let index = Arc::new(Snapshot::build(list_with_timeout(provider.as_ref()).await?));
        *slot = Some(LiveIndex {
            version,
            index: Arc::clone(&index),
        });
        Ok(index)
    }

    /// A cached provider's inventory and where it came from (`live` or `cache`): the cache if
    /// there is one and `refresh` is false, else a live read.
    async fn inventory_of(
        &self,
        name: &str,
        provider: &Arc<dyn Provider>,
        cache: &ProviderCache,
        refresh: bool,
    ) -> Result<(CachedInventory, &'static str)> {
        if !refresh && let Some(entry) = self.cached(name, cache).await {
            return Ok((entry, CACHE));
        }
        let asked = Instant::now();
        let _reading = cache.reading.lock().await;
        // Another call may have read the provider while this one waited.
        if let Some(entry) = self.cached(name, cache).await {
            if !refresh {
                return Ok((entry, CACHE));
            }
            // A read that started after this call asked is as live as this call's own.
            if entry.started.is_some_and(|s| s >= asked) {
                return Ok((entry, LIVE));
            }
        }
        Ok((self.read_live(name, provider, cache).await?, LIVE))
    }

    /// The cached inventory of a provider: from memory, else (on first use) from the store. A
    /// store that cannot be read counts as no cache.
    async fn cached(&self, name: &str, cache: &ProviderCache) -> Option<CachedInventory> {
        {
            let state = cache.state.read().await;
            if state.loaded {
                return state.current.clone();
            }
        }
        let stored = match self.store.cached_inventory(name).await {
            Ok(stored) => stored.map(|(identities, refreshed_at)| CachedInventory {
                index: Arc::new(Snapshot::build(identities)),
                refreshed_at,
                duration_ms: 0,
                started: None,
                version: 0,
            }),
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "cannot read the saved inventory; the provider is read instead");
                None
            }
        };
        let mut state = cache.state.write().await;
        // A live read may have filled it meanwhile: that one is newer.
        if !state.loaded {
            state.loaded = true;
            state.current = stored;
        }
        state.current.clone()
    }

    /// Reads a provider's whole inventory and makes it the cache (unless the cache was dropped
    /// while it was read), keeping identities put in one by one after the read started; saves
    /// it to the store. Call with `cache.reading` held.
    async fn read_live(
        &self,
        name: &str,
        provider: &Arc<dyn Provider>,
        cache: &ProviderCache,
    ) -> Result<CachedInventory> {
        let started = Instant::now();
        let mut identities = list_with_timeout(provider.as_ref()).await?;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        identities.sort_by(|a, b| a.id.cmp(&b.id));
        cache.set_error(None);
        let (entry, keep) = {
            let mut guard = cache.state.write().await;
            let state = &mut *guard;
            let keep = state.dropped_at.is_none_or(|dropped| dropped < started);
            if keep && let Some(current) = &state.current {
                for (id, _) in state.patched.iter().filter(|(_, at)| **at >= started) {
                    let newer = current.index.get(id).map(|e| e.identity.clone());
                    put_one(&mut identities, id, newer);
                }
            }
            let entry = CachedInventory {
                index: Arc::new(Snapshot::build(identities)),
                refreshed_at: Utc::now(),
                duration_ms,
                started: Some(started),
                version: self.inventory.next_version(),
            };
            if keep {
                state.loaded = true;
                state.current = Some(entry.clone());
                state.patched.clear();
            }
            (entry, keep)
        };
        if keep {
            self.persist(name, cache, entry.version, Some(&entry)).await;
        }
        Ok(entry)
    }

    /// Puts one identity, as its provider answered a read that started at `read_at` (`None`:
    /// it is gone), into the provider's cached inventory, if it has one, unless a read that
    /// started later was put there already. Writes the store only when that changed something.
    pub(super) async fn note_identity(
        &self,
        id: &IdentityId,
        identity: Option<&Identity>,
        read_at: Instant,
    ) {
        let name = id.provider();
        let Some(cache) = self.inventory.providers.get(name) else {
            return;
        };
        if self.cached(name, cache).await.is_none() {
            return;
        }
        let entry = {
            let mut guard = cache.state.write().await;
            let state = &mut *guard;
            let Some(current) = state.current.as_mut() else {
                return;
            };
            // A full read that started later, or a later read of this identity, is newer.
            if current.started.is_some_and(|full| full > read_at)
                || state.patched.get(id).is_some_and(|newer| *newer > read_at)
            {
                return;
            }
            state.patched.insert(id.clone(), read_at);
            let unchanged = match (current.index.get(id), identity) {
                (Some(e), Some(new)) => *e.identity == *new,
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                return;
            }
            current.index = Arc::new(current.index.with(id, identity.cloned()));
            current.version = self.inventory.next_version();
            current.clone()
        };
        self.persist(name, cache, entry.version, Some(&entry)).await;
    }

    /// After a change ran on `id`: re-reads it so the cached inventory does not keep showing
    /// the old state. If that read fails, the provider's cache is dropped and the next list
    /// reads the provider live.
    pub(super) async fn refresh_cached_identity(&self, id: &IdentityId) {
        let name = id.provider();
        let (Some(cache), Some(provider)) =
            (self.inventory.providers.get(name), self.providers.get(name))
        else {
            return;
        };
        let read_at = Instant::now();
        match with_timeout(provider.get(id), name).await {
            Ok(identity) => self.note_identity(id, identity.as_ref(), read_at).await,
            Err(e) => {
                tracing::warn!(provider = name, identity = %id, error = %e, "cannot re-read a changed identity; its provider's cached inventory is dropped");
                self.drop_cached(name, cache).await;
            }
        }
    }

    /// Forgets a provider's cached inventory, in memory and in the store.
    async fn drop_cached(&self, name: &str, cache: &ProviderCache) {
        let version = {
            let mut state = cache.state.write().await;
            state.loaded = true;
            state.current = None;
            state.patched.clear();
            state.dropped_at = Some(Instant::now());
            self.inventory.next_version()
        };
        self.persist(name, cache, version, None).await;
    }

    /// Writes `entry` (`None`: the removal) to the store, unless a newer version was written
    /// already. A failure is logged: the cache in memory stands.
    async fn persist(
        &self,
        name: &str,
        cache: &ProviderCache,
        version: u64,
        entry: Option<&CachedInventory>,
    ) {
        let mut last = cache.persisted.lock().await;
        if version <= *last {
            return;
        }
        let result = match entry {
            Some(e) => {
                let identities: Vec<&Identity> = e.index.identities().collect();
                self.store
                    .put_inventory(name, &identities, e.refreshed_at, e.duration_ms)
                    .await
            }
            None => self.store.drop_inventory(name).await,
        };
        match result {
            Ok(()) => *last = version,
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "cannot save the cached inventory");
            }
        }
    }

    /// Background refresh, called by `serve` every few seconds: reads each cached provider whose
    /// inventory is missing or older than its `refresh` interval, and caches it. Cheap when
    /// nothing is due. A failure is logged and shown as the provider's `last_refresh_error`;
    /// the old inventory is still served, and the read is tried again after a minute (or the
    /// interval, if shorter).
    pub async fn refresh_due(&self) {
        for (name, cache) in &self.inventory.providers {
            let Some(provider) = self.providers.get(name) else {
                continue;
            };
            if cache.failed_recently() || !self.is_due(name, cache).await {
                continue;
            }
            // A read already under way (for a call) renews it.
            let Ok(_reading) = cache.reading.try_lock() else {
                continue;
            };
            if !self.is_due(name, cache).await {
                continue;
            }
            match self.read_live(name, provider, cache).await {
                Ok(entry) => tracing::info!(
                    provider = %name,
                    identities = entry.index.len(),
                    duration_ms = entry.duration_ms,
                    "inventory refreshed"
                ),
                Err(e) => {
                    tracing::warn!(provider = %name, error = %e, "inventory refresh failed; the cached inventory is still served");
                    cache.set_error(Some(e.to_string()));
                }
            }
        }
    }

    /// Whether a provider's cached inventory is missing or older than its `refresh` interval.
    async fn is_due(&self, name: &str, cache: &ProviderCache) -> bool {
        self.cached(name, cache)
            .await
            .is_none_or(|entry| age(entry.refreshed_at) >= cache.refresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Principal, Scope};
    use crate::config::{Config, Overrides};
    use crate::engine::{Caller, IdentitiesPage, IdentityQuery};
    use crate::model::ProposalStatus;

    /// An engine over one `inventory` provider `inv` (the first demo inventory) cached for
    /// `refresh`, with its data in `dir`.
    async fn engine(dir: &std::path::Path, refresh: &str) -> Engine {
        let file = dir.join("inv.toml");
        if !file.exists() {
            std::fs::write(&file, crate::config::DEMO_INVENTORIES[0].1).expect("write");
        }
        let toml = format!(
            "[[providers]]\nname = \"inv\"\nkind = \"inventory\"\npath = \"{}\"\nrefresh = \"{refresh}\"\n",
            file.display()
        );
        let overrides = Overrides {
            config_file: None,
            data_dir: Some(dir.join("data")),
        };
        let config = Config::from_toml(&toml, None, &overrides).expect("config");
        crate::cli::compose::open_engine(&config)
            .await
            .expect("engine")
    }

    fn agent(tool: &str) -> Caller {
        let agent = Principal::new("agent:local", [Scope::Read, Scope::Propose, Scope::Apply]);
        Caller::new(&agent, tool, serde_json::Value::Null)
    }

    async fn list(engine: &Engine, refresh: bool) -> IdentitiesPage {
        let query = IdentityQuery {
            limit: Some(500),
            refresh,
            ..Default::default()
        };
        engine
            .list_identities(&agent("list_identities"), query)
            .await
            .expect("list")
    }

    fn sources(page: &IdentitiesPage) -> Vec<(&str, &str)> {
        page.freshness
            .iter()
            .map(|f| (f.provider.as_str(), f.source.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn lists_come_from_the_cache_until_asked_to_read_live_and_changes_show_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = engine(dir.path(), "1h").await;
        let first = list(&engine, false).await;
        assert_eq!(sources(&first), [("inv", "live")], "nothing cached yet");
        let second = list(&engine, false).await;
        assert_eq!(sources(&second), [("inv", "cache")]);
        let ids = |p: &IdentitiesPage| p.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&first), ids(&second));
        assert_eq!(sources(&list(&engine, true).await), [("inv", "live")]);

        // A revocation applied through the engine shows in the cached list at once.
        let target = IdentityId::parse("inv:user/ci-deploy").expect("id");
        let proposed = engine
            .revoke_identity(&agent("revoke_identity"), &target, Some("cache test"), None)
            .await
            .expect("propose");
        let approved = engine
            .approve(
                &Principal::new("alice", [Scope::Approve]),
                &proposed.proposal.body.id,
            )
            .await
            .expect("approve");
        let token = approved.token.expect("token");
        let applied = engine
            .revoke_identity(
                &agent("revoke_identity"),
                &target,
                None,
                Some(token.as_str()),
            )
            .await
            .expect("apply");
        assert_eq!(applied.proposal.status, ProposalStatus::Applied);
        let after = list(&engine, false).await;
        assert_eq!(sources(&after), [("inv", "cache")]);
        let revoked = |p: &IdentitiesPage| {
            p.items
                .iter()
                .find(|i| i.id == target)
                .map(|i| (i.disabled, i.active_credentials))
        };
        assert_eq!(revoked(&after), Some((true, 0)));
        engine.store().close().await;

        // A restart serves the saved inventory, change included, without reading the provider.
        let restarted = self::engine(dir.path(), "1h").await;
        let page = list(&restarted, false).await;
        assert_eq!(sources(&page), [("inv", "cache")]);
        assert_eq!(revoked(&page), Some((true, 0)));
        assert_eq!(ids(&page), ids(&first));
        restarted.store().close().await;
    }

    /// A read of one identity that started before another read of it (or before the full
    /// read the cache holds) does not overwrite what the later read found.
    #[tokio::test]
    async fn an_older_read_of_an_identity_does_not_undo_a_newer_one() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = engine(dir.path(), "1h").await;
        let before_full_read = Instant::now();
        let first = list(&engine, false).await;
        let id = first.items[0].id.clone();
        let owner = |page: &IdentitiesPage| {
            page.items
                .iter()
                .find(|i| i.id == id)
                .and_then(|i| i.owner.clone())
        };
        let mut identity = engine.fetch_identity(&id).await.expect("fetch");
        let older = Instant::now();
        let newer = Instant::now();
        identity.owner = Some("newer-read".into());
        engine.note_identity(&id, Some(&identity), newer).await;
        identity.owner = Some("older-read".into());
        engine.note_identity(&id, Some(&identity), older).await;
        assert_eq!(
            owner(&list(&engine, false).await).as_deref(),
            Some("newer-read")
        );
        // Older than the full read the cache holds: ignored too.
        identity.owner = Some("before-the-full-read".into());
        engine
            .note_identity(&id, Some(&identity), before_full_read)
            .await;
        assert_eq!(
            owner(&list(&engine, false).await).as_deref(),
            Some("newer-read")
        );
        engine.store().close().await;
    }

    #[tokio::test]
    async fn the_background_refresh_renews_an_inventory_older_than_its_interval() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = engine(dir.path(), "50ms").await;
        // Nothing cached: due at once.
        engine.refresh_due().await;
        let first = list(&engine, false).await.freshness[0].clone();
        assert_eq!(first.source, "cache");
        assert_eq!(first.last_refresh_error, None);
        tokio::time::sleep(Duration::from_millis(80)).await;
        engine.refresh_due().await;
        let renewed = list(&engine, false).await.freshness[0].clone();
        assert_eq!(renewed.source, "cache");
        assert!(renewed.as_of > first.as_of, "{renewed:?} after {first:?}");
        engine.store().close().await;
    }
}
