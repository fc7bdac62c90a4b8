//! The inventory index: one provider's identities as an immutable snapshot, sorted by id, with
//! what queries need computed once instead of on every call.
//!
//! - Lookups by id and the start of a page (the first id after a cursor) are binary searches.
//! - Each filter that can be indexed (`kind`, `owner`, `environment`) has the positions of its
//!   matching identities, so a page of a selective filter walks only its candidates.
//! - Each identity's finding rules are computed once and kept until the first instant they could
//!   read differently (a day count in an evidence or a threshold crossing), see [`valid_until`].
//! - A change (one identity re-read, or a whole new read) builds a new snapshot sharing every
//!   unchanged entry; readers holding the old one are not disturbed.
//!
//! Pages over several providers merge their snapshots' id-ordered walks, so the order is the one
//! a sorted full list would have. The store to come (PostgreSQL) can back the same queries with
//! indexed tables: the engine asks for candidates in id order after a key, nothing more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Duration, Utc};

use crate::model::finding::evaluate;
use crate::model::{
    CredentialId, Finding, FindingRule, Identity, IdentityId, IdentityKind, Severity, Thresholds,
};

/// One identity in the index, with the rules of its findings as last computed.
#[derive(Debug)]
pub(super) struct Entry {
    /// Shared with the provider when it keeps one (the `inventory` provider's parsed file).
    pub identity: Arc<Identity>,
    findings: Mutex<Option<Evaluated>>,
    /// Read decisions made for this identity version, by principal (see [`Entry::may_read`]).
    reads: Mutex<Vec<(Arc<str>, bool)>>,
}

/// How many principals' read decisions one entry keeps; the oldest goes first.
const READS_KEPT: usize = 8;

#[derive(Debug, Clone)]
struct Evaluated {
    /// The rules of the findings, in `evaluate`'s order: what pages, filters and summaries
    /// need. The findings themselves (titles, evidence) are evaluated again for the few a
    /// page shows, rather than kept for every identity (about a kilobyte each).
    rules: Arc<[FindingRule]>,
    /// The findings hold for every instant in `from..until`.
    from: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl Entry {
    pub fn new(identity: Arc<Identity>) -> Self {
        Self {
            identity,
            findings: Mutex::new(None),
            reads: Mutex::new(Vec::new()),
        }
    }

    /// Whether the principal behind `key` may read this identity: `decide` once per
    /// (principal, identity version). A policy decision depends only on the principal, the
    /// action and the identity's attributes (the context is empty, the policy fixed for the
    /// engine's life), so a kept decision is the decision.
    pub fn may_read(&self, key: &Arc<str>, decide: impl FnOnce(&Identity) -> bool) -> bool {
        {
            let reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, allowed)) = reads
                .iter()
                .find(|(k, _)| Arc::ptr_eq(k, key) || **k == **key)
            {
                return *allowed;
            }
        }
        let allowed = decide(&self.identity);
        let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        if reads.len() >= READS_KEPT {
            reads.remove(0);
        }
        // Most identities are read by one or two principals: room for one more at a time,
        // not the four a first `push` would make.
        reads.reserve_exact(1);
        reads.push((Arc::clone(key), allowed));
        allowed
    }

    /// The rules of the identity's findings at `now`, in `evaluate`'s order: computed at
    /// most once per interval in which they cannot change.
    pub fn finding_rules(&self, thresholds: &Thresholds, now: DateTime<Utc>) -> Arc<[FindingRule]> {
        let mut cached = self.findings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cached.as_ref()
            && e.from <= now
            && now < e.until
        {
            return Arc::clone(&e.rules);
        }
        let rules: Arc<[FindingRule]> = evaluate(&self.identity, thresholds, now)
            .iter()
            .map(|f| f.rule)
            .collect();
        *cached = Some(Evaluated {
            rules: Arc::clone(&rules),
            from: now,
            until: valid_until(&self.identity, now),
        });
        rules
    }
}

/// The first instant after `now` at which [`evaluate`] could answer differently for
/// `identity` (thresholds fixed). Findings depend on time only through whole-day counts
/// (`chrono::Duration::num_days`, which truncates toward zero) between `now` and the
/// identity's creation, its last activity and each active credential's creation; each count
/// changes at the next whole day after its timestamp. Conservative: an earlier instant only
/// costs an evaluation.
pub(super) fn valid_until(identity: &Identity, now: DateTime<Utc>) -> DateTime<Utc> {
    let day = Duration::days(1);
    let next = |t: DateTime<Utc>| -> DateTime<Utc> {
        let since = now.signed_duration_since(t);
        let days = since.num_days();
        let at = if since >= Duration::zero() {
            // Counting up: the count becomes `days + 1` at `t + (days + 1) days`.
            t.checked_add_signed(day * i32::try_from(days + 1).unwrap_or(i32::MAX))
        } else {
            // Counting toward zero from below: -k becomes -(k - 1) just after `t - k days`;
            // `t` itself when k is 0.
            t.checked_sub_signed(day * i32::try_from(-days).unwrap_or(i32::MAX))
        };
        // At the boundary itself the count changes just after `now`: valid for `now` alone.
        at.filter(|at| *at > now)
            .unwrap_or_else(|| now + Duration::nanoseconds(1))
    };
    let mut until = DateTime::<Utc>::MAX_UTC;
    let mut consider = |t: DateTime<Utc>| until = until.min(next(t));
    consider(identity.created_at);
    if let Some(t) = identity.last_activity() {
        consider(t);
    }
    for c in identity.active_credentials() {
        consider(c.created_at);
    }
    until
}

/// One provider's identities, sorted by id, and the positions behind each indexed filter.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    entries: Vec<Arc<Entry>>,
    by_kind: HashMap<IdentityKind, Vec<usize>>,
    by_owner: HashMap<String, Vec<usize>>,
    by_environment: HashMap<String, Vec<usize>>,
    /// Every finding the identities have or will have as time passes, in findings order;
    /// built on first use (thresholds are fixed for the engine's life).
    findings: OnceLock<Vec<Potential>>,
    /// What each of the last few principals may see of them, for summary counts.
    visible: Mutex<Vec<(Arc<str>, Arc<Visible>)>>,
}

/// A finding an identity has, or will have once enough time passes: `unused` and
/// `credential_too_old` begin at an instant (when a whole-day count passes its threshold) and
/// last as long as the identity version; every other rule holds for the version. Its severity,
/// id and so its place in the findings order never change.
#[derive(Debug)]
pub(super) struct Potential {
    /// `3 - severity`: the first part of the findings order (most severe first).
    pub rank: u8,
    pub rule: FindingRule,
    pub severity: Severity,
    /// The credential the finding is about, by its position in the identity's credentials.
    /// With the rule and the identity it makes the finding's id, the second part of the order
    /// (see [`Potential::id`]), which is compared where it is needed rather than kept.
    pub credential: Option<u32>,
    /// From this instant on; `None`: for the identity version.
    pub start: Option<DateTime<Utc>>,
    /// The identity's position in the snapshot.
    pub entry: usize,
}

impl Potential {
    /// The finding's id, `<rule>:<identity id>[:<credential id>]` as `evaluate` makes it, byte
    /// by byte; `identity` is the one at `entry`.
    pub fn id<'i>(&self, identity: &'i Identity) -> impl Iterator<Item = u8> + Clone + 'i {
        let credential = self.credential_of(identity).map(|c| c.as_str());
        self.rule
            .slug()
            .bytes()
            .chain(std::iter::once(b':'))
            .chain(identity.id.as_str().bytes())
            .chain(
                credential
                    .into_iter()
                    .flat_map(|c| std::iter::once(b':').chain(c.bytes())),
            )
    }

    /// Whether `finding` (of `identity`, the one at `entry`) is this one: same rule, same
    /// credential, which is what the id says.
    pub fn is(&self, finding: &Finding, identity: &Identity) -> bool {
        finding.rule == self.rule && finding.credential_id.as_ref() == self.credential_of(identity)
    }

    fn credential_of<'i>(&self, identity: &'i Identity) -> Option<&'i CredentialId> {
        self.credential
            .and_then(|c| identity.credentials.get(c as usize))
            .map(|c| &c.id)
    }

    pub fn holds_at(&self, now: DateTime<Utc>) -> bool {
        self.start.is_none_or(|s| s <= now)
    }
}

/// The findings one principal may see, counted by (severity, rule): those that hold for the
/// identity version, and the start instants (sorted) of those that begin later.
#[derive(Debug, Default)]
pub(super) struct Visible {
    pub fixed: HashMap<(Severity, FindingRule), usize>,
    pub timed: HashMap<(Severity, FindingRule), Vec<DateTime<Utc>>>,
}

impl Visible {
    /// How many findings of (severity, rule) hold at `now`.
    pub fn count(&self, key: (Severity, FindingRule), now: DateTime<Utc>) -> usize {
        self.fixed.get(&key).copied().unwrap_or(0)
            + self
                .timed
                .get(&key)
                .map_or(0, |starts| starts.partition_point(|s| *s <= now))
    }

    /// Every (severity, rule) that has findings.
    pub fn keys(&self) -> impl Iterator<Item = (Severity, FindingRule)> + '_ {
        let mut keys: Vec<_> = self
            .fixed
            .keys()
            .chain(self.timed.keys())
            .copied()
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
    }
}

/// How many principals' visible findings one snapshot keeps; the oldest goes first.
const VISIBLE_KEPT: usize = 16;

/// Every finding `identity` has or will have with `thresholds`, with when each begins.
/// Derived from `evaluate` itself, at an instant far enough ahead that every finding that can
/// begin has begun; only the two time-dependent rules get a start, from the same whole-day
/// counts `evaluate` uses (`num_days(now - t) > threshold` ⟺ `now ≥ t + (threshold + 1) days`).
pub(super) fn potential_findings(
    identity: &Identity,
    thresholds: &Thresholds,
    entry: usize,
) -> Vec<Potential> {
    let far = Utc::now()
        .checked_add_signed(Duration::days(1_000 * 366))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let after_days = |t: DateTime<Utc>, threshold: u32| {
        t.checked_add_signed(Duration::days(i64::from(threshold) + 1))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    evaluate(identity, thresholds, far)
        .into_iter()
        .map(|f| {
            let start = match f.rule {
                FindingRule::Unused => Some(after_days(
                    identity.last_activity().unwrap_or(identity.created_at),
                    thresholds.unused_days,
                )),
                FindingRule::CredentialTooOld => Some(
                    f.credential_id
                        .as_ref()
                        .and_then(|c| identity.credential(c))
                        .map_or(DateTime::<Utc>::MAX_UTC, |c| {
                            after_days(c.created_at, thresholds.max_credential_age_days)
                        }),
                ),
                _ => None,
            };
            let credential = f.credential_id.as_ref().and_then(|id| {
                let at = identity.credentials.iter().position(|c| &c.id == id)?;
                u32::try_from(at).ok()
            });
            Potential {
                rank: 3 - f.severity as u8,
                rule: f.rule,
                severity: f.severity,
                credential,
                start,
                entry,
            }
        })
        .collect()
}

/// The indexed filters of a query; `None` is "any".
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Indexed<'a> {
    pub kind: Option<IdentityKind>,
    pub owner: Option<&'a str>,
    pub environment: Option<&'a str>,
}

impl Snapshot {
    /// The index of `identities` (any order; a later duplicate id replaces an earlier one).
    /// A whole inventory's build (a sort of every entry: about a second at a million) runs in
    /// `long_running`.
    pub fn build<I: Into<Arc<Identity>>>(identities: impl IntoIterator<Item = I>) -> Self {
        super::long_running(|| {
            Self::from_entries(
                identities
                    .into_iter()
                    .map(|i| Arc::new(Entry::new(i.into()))),
            )
        })
    }

    fn from_entries(entries: impl IntoIterator<Item = Arc<Entry>>) -> Self {
        let mut entries: Vec<Arc<Entry>> = entries.into_iter().collect();
        entries.sort_by(|a, b| a.identity.id.cmp(&b.identity.id));
        // Keep the last of equal ids (a stable sort keeps their input order).
        entries.reverse();
        entries.dedup_by(|later, earlier| later.identity.id == earlier.identity.id);
        entries.reverse();
        // `collect` may have reused its source's buffer, sized for larger elements.
        entries.shrink_to_fit();
        let mut by_kind: HashMap<IdentityKind, Vec<usize>> = HashMap::new();
        let mut by_owner: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_environment: HashMap<String, Vec<usize>> = HashMap::new();
        for (at, entry) in entries.iter().enumerate() {
            let i = &entry.identity;
            by_kind.entry(i.kind).or_default().push(at);
            if let Some(o) = &i.owner {
                by_owner.entry(o.clone()).or_default().push(at);
            }
            if let Some(e) = &i.environment {
                by_environment.entry(e.clone()).or_default().push(at);
            }
        }
        Self {
            entries,
            by_kind,
            by_owner,
            by_environment,
            findings: OnceLock::new(),
            visible: Mutex::new(Vec::new()),
        }
    }

    /// Every potential finding, in findings order.
    pub fn findings(&self, thresholds: &Thresholds) -> &[Potential] {
        if let Some(all) = self.findings.get() {
            return all;
        }
        super::long_running(|| self.build_findings(thresholds))
    }

    fn build_findings(&self, thresholds: &Thresholds) -> &[Potential] {
        self.findings.get_or_init(|| {
            let mut all: Vec<Potential> = self
                .entries
                .iter()
                .enumerate()
                .flat_map(|(at, e)| potential_findings(&e.identity, thresholds, at))
                .collect();
            all.sort_by(|a, b| {
                a.rank
                    .cmp(&b.rank)
                    .then_with(|| a.id(self.identity_of(a)).cmp(b.id(self.identity_of(b))))
            });
            all
        })
    }

    /// The findings after the findings-order key `after` (`<rank>|<id>`), in order.
    pub fn findings_after<'s>(
        &'s self,
        thresholds: &Thresholds,
        after: Option<&str>,
    ) -> Box<dyn Iterator<Item = (&'s Snapshot, &'s Potential)> + Send + 's> {
        let all = self.findings(thresholds);
        let start = after.map_or(0, |a| {
            all.partition_point(|p| !key_after(p.rank, p.id(self.identity_of(p)), a))
        });
        Box::new(all[start..].iter().map(move |p| (self, p)))
    }

    /// What the principal behind `key` may see of the findings, counted; `readable` decides
    /// one entry (it keeps its own decisions).
    pub fn visible(
        &self,
        thresholds: &Thresholds,
        key: &Arc<str>,
        readable: impl Fn(&Entry) -> bool,
    ) -> Arc<Visible> {
        {
            let kept = self.visible.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, v)) = kept
                .iter()
                .find(|(k, _)| Arc::ptr_eq(k, key) || **k == **key)
            {
                return Arc::clone(v);
            }
        }
        let visible = super::long_running(|| self.count_visible(thresholds, readable));
        let mut kept = self.visible.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= VISIBLE_KEPT {
            kept.remove(0);
        }
        kept.push((Arc::clone(key), Arc::clone(&visible)));
        visible
    }

    /// One pass over every potential finding, deciding each identity once.
    fn count_visible(
        &self,
        thresholds: &Thresholds,
        readable: impl Fn(&Entry) -> bool,
    ) -> Arc<Visible> {
        let mut visible = Visible::default();
        let mut decided: HashMap<usize, bool> = HashMap::new();
        for p in self.findings(thresholds) {
            let may = *decided
                .entry(p.entry)
                .or_insert_with(|| readable(&self.entries[p.entry]));
            if !may {
                continue;
            }
            let k = (p.severity, p.rule);
            match p.start {
                None => *visible.fixed.entry(k).or_default() += 1,
                Some(s) => visible.timed.entry(k).or_default().push(s),
            }
        }
        for starts in visible.timed.values_mut() {
            starts.sort();
        }
        Arc::new(visible)
    }

    /// Whether this snapshot's potential finding `a` comes before `b` of `other` in the
    /// findings order: rank, then id.
    pub fn before(&self, a: &Potential, other: &Snapshot, b: &Potential) -> bool {
        match a.rank.cmp(&b.rank) {
            std::cmp::Ordering::Equal => a.id(self.identity_of(a)).lt(b.id(other.identity_of(b))),
            order => order.is_lt(),
        }
    }

    /// The identity a potential finding of this snapshot is about (`entry` is a position in
    /// this snapshot, by construction).
    fn identity_of(&self, p: &Potential) -> &Identity {
        &self.entries[p.entry].identity
    }

    pub fn entry(&self, at: usize) -> Option<&Arc<Entry>> {
        self.entries.get(at)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, id: &IdentityId) -> Option<&Arc<Entry>> {
        self.entries
            .binary_search_by(|e| e.identity.id.cmp(id))
            .ok()
            .map(|at| &self.entries[at])
    }

    /// Every identity, in id order.
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.entries.iter().map(|e| &*e.identity)
    }

    /// A snapshot with `id` replaced by `identity` (`None`: removed); unchanged entries, and
    /// their computed findings, are shared.
    pub fn with(&self, id: &IdentityId, identity: Option<Identity>) -> Self {
        let kept = self
            .entries
            .iter()
            .filter(|e| &e.identity.id != id)
            .cloned();
        let added = identity.map(|i| Arc::new(Entry::new(Arc::new(i))));
        Self::from_entries(kept.chain(added))
    }

    /// The entries that can match `filters`, in id order, after the id `after`: the
    /// positions of the most selective indexed filter, or every entry. The caller still checks
    /// every filter on each entry.
    pub fn candidates<'s>(
        &'s self,
        filters: &Indexed<'_>,
        after: Option<&str>,
    ) -> Box<dyn Iterator<Item = &'s Arc<Entry>> + Send + 's> {
        let empty: &[usize] = &[];
        let mut lists: Vec<&[usize]> = Vec::new();
        if let Some(k) = filters.kind {
            lists.push(self.by_kind.get(&k).map_or(empty, Vec::as_slice));
        }
        if let Some(o) = filters.owner {
            lists.push(self.by_owner.get(o).map_or(empty, Vec::as_slice));
        }
        if let Some(e) = filters.environment {
            lists.push(self.by_environment.get(e).map_or(empty, Vec::as_slice));
        }
        let past = |e: &Arc<Entry>| after.is_some_and(|a| e.identity.id.as_str() <= a);
        match lists.into_iter().min_by_key(|l| l.len()) {
            None => {
                let start = self.entries.partition_point(past);
                Box::new(self.entries[start..].iter())
            }
            Some(positions) => {
                let start = positions.partition_point(|&p| past(&self.entries[p]));
                Box::new(positions[start..].iter().map(move |&p| &self.entries[p]))
            }
        }
    }
}

/// Whether `<rank>|<id>` (the findings cursor's key) sorts after `after`, without building it.
pub(super) fn key_after(rank: u8, id: impl Iterator<Item = u8>, after: &str) -> bool {
    let key = [b'0' + rank, b'|'].into_iter().chain(id);
    key.cmp(after.bytes()) == std::cmp::Ordering::Greater
}

/// A walk in order, boxed so walks over several snapshots can be merged.
pub(super) type Walk<'s, T> = std::iter::Peekable<Box<dyn Iterator<Item = T> + Send + 's>>;

/// The ordered merge of several walks, each in order by `less`.
pub(super) fn merge_by<'s, T: Copy + 's>(
    mut walks: Vec<Walk<'s, T>>,
    less: impl Fn(&T, &T) -> bool,
) -> impl Iterator<Item = T> {
    std::iter::from_fn(move || {
        let mut best: Option<(usize, T)> = None;
        for (at, walk) in walks.iter_mut().enumerate() {
            let Some(&head) = walk.peek() else {
                continue;
            };
            if best.as_ref().is_none_or(|(_, b)| less(&head, b)) {
                best = Some((at, head));
            }
        }
        best.and_then(|(at, _)| walks[at].next())
    })
}

/// The id-ordered merge of several snapshots' candidate walks (ids never repeat across
/// providers: each starts with its provider's name).
pub(super) fn merge<'s>(
    walks: Vec<Walk<'s, &'s Arc<Entry>>>,
) -> impl Iterator<Item = &'s Arc<Entry>> {
    merge_by(walks, |a, b| a.identity.id < b.identity.id)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use proptest::prelude::*;

    use super::*;
    use crate::model::{Credential, CredentialId, CredentialKind, CredentialStatus, Permissions};

    fn identity(provider: &str, n: u32, at: DateTime<Utc>) -> Identity {
        Identity {
            id: IdentityId::parse(&format!("{provider}:user/u{n:04}")).unwrap(),
            provider: provider.into(),
            native_id: format!("user/u{n:04}"),
            kind: if n.is_multiple_of(3) {
                IdentityKind::Role
            } else {
                IdentityKind::ServiceUser
            },
            name: format!("u{n}"),
            owner: (!n.is_multiple_of(4)).then(|| format!("team-{}", n % 5)),
            purpose: None,
            environment: Some(if n.is_multiple_of(2) { "prod" } else { "dev" }.into()),
            used_in_environments: vec![],
            tags: Default::default(),
            created_at: at,
            last_used_at: (!n.is_multiple_of(7)).then(|| at + Duration::hours(i64::from(n))),
            disabled: false,
            credentials: vec![Credential {
                id: CredentialId::parse(&format!("AKIA{n:08}")).unwrap(),
                kind: CredentialKind::AccessKey,
                created_at: at + Duration::minutes(i64::from(n)),
                last_used_at: None,
                expires_at: None,
                status: CredentialStatus::Active,
            }],
            permissions: Permissions::default(),
        }
    }

    #[test]
    fn candidates_are_in_id_order_after_the_cursor_and_merge_across_providers() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // `a-b:` sorts before `a:` although provider `a` sorts before `a-b`.
        let a = Snapshot::build((0..50).rev().map(|n| identity("a", n, at)));
        let ab = Snapshot::build((0..50).map(|n| identity("a-b", n, at)));
        let mut reference: Vec<&Identity> = a.identities().chain(ab.identities()).collect();
        reference.sort_by(|x, y| x.id.cmp(&y.id));
        for filters in [
            Indexed::default(),
            Indexed {
                kind: Some(IdentityKind::Role),
                ..Indexed::default()
            },
            Indexed {
                owner: Some("team-3"),
                environment: Some("prod"),
                ..Indexed::default()
            },
            Indexed {
                owner: Some("nobody"),
                ..Indexed::default()
            },
        ] {
            for after in [None, Some("a-b:user/u0017"), Some("a:"), Some("zzz")] {
                let walks = vec![
                    a.candidates(&filters, after).peekable(),
                    ab.candidates(&filters, after).peekable(),
                ];
                let got: Vec<&IdentityId> = merge(walks).map(|e| &e.identity.id).collect();
                let want: Vec<&IdentityId> = reference
                    .iter()
                    .filter(|i| after.is_none_or(|x| i.id.as_str() > x))
                    .filter(|i| filters.kind.is_none_or(|k| i.kind == k))
                    .filter(|i| filters.owner.is_none_or(|o| i.owner.as_deref() == Some(o)))
                    .filter(|i| {
                        filters
                            .environment
                            .is_none_or(|e| i.environment.as_deref() == Some(e))
                    })
                    .map(|i| &i.id)
                    .collect();
                // Candidates may include entries other indexed filters exclude; never miss one.
                for id in &want {
                    assert!(got.contains(id), "{filters:?} after {after:?} misses {id}");
                }
                assert!(got.windows(2).all(|w| w[0] < w[1]), "{filters:?}: order");
                assert!(got.iter().all(|id| after.is_none_or(|x| id.as_str() > x)));
            }
        }
    }

    #[test]
    fn a_change_replaces_one_entry_and_shares_the_rest() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let s = Snapshot::build((0..10).map(|n| identity("p", n, at)));
        let id = IdentityId::parse("p:user/u0003").unwrap();
        let mut changed = identity("p", 3, at);
        changed.owner = Some("new-team".into());
        let t = s.with(&id, Some(changed));
        assert_eq!(t.len(), 10);
        assert_eq!(
            t.get(&id).unwrap().identity.owner.as_deref(),
            Some("new-team")
        );
        let other = IdentityId::parse("p:user/u0004").unwrap();
        assert!(Arc::ptr_eq(s.get(&other).unwrap(), t.get(&other).unwrap()));
        let filters = Indexed {
            owner: Some("new-team"),
            ..Indexed::default()
        };
        assert_eq!(t.candidates(&filters, None).count(), 1);
        let gone = t.with(&id, None);
        assert_eq!(gone.len(), 9);
        assert!(gone.get(&id).is_none());
        assert_eq!(gone.candidates(&filters, None).count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Cached finding rules equal a fresh evaluation's at any later instant: `valid_until` never
        /// claims an interval in which a day count (and so a finding or its evidence) changes.
        #[test]
        fn cached_findings_equal_a_fresh_evaluation(
            created in -400i64 * 86_400..400 * 86_400,
            used in proptest::option::of(-400i64 * 86_400..400 * 86_400),
            key in -400i64 * 86_400..400 * 86_400,
            steps in proptest::collection::vec(prop_oneof![0i64..3 * 86_400, Just(0i64), 0i64..200 * 86_400], 1..24),
        ) {
            let base = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
            let mut i = identity("p", 1, base + Duration::seconds(created));
            i.last_used_at = used.map(|u| base + Duration::seconds(u));
            i.credentials[0].created_at = base + Duration::seconds(key);
            let thresholds = Thresholds { unused_days: 30, max_credential_age_days: 60 };
            let entry = Entry::new(Arc::new(i.clone()));
            let mut now = base;
            for step in steps {
                now += Duration::seconds(step);
                let cached = entry.finding_rules(&thresholds, now);
                let fresh = evaluate(&i, &thresholds, now);
                let fresh_rules: Vec<FindingRule> = fresh.iter().map(|f| f.rule).collect();
                prop_assert_eq!(&cached[..], fresh_rules.as_slice());
                prop_assert!(valid_until(&i, now) > now);
                // The potential findings that hold at `now` are exactly the findings then, in
                // the findings order.
                let mut want: Vec<(u8, String, Severity)> = fresh
                    .iter()
                    .map(|f| (3 - f.severity as u8, f.id.clone(), f.severity))
                    .collect();
                want.sort();
                let potential = potential_findings(&i, &thresholds, 0);
                let mut got: Vec<(u8, String, Severity)> = potential
                    .iter()
                    .filter(|p| p.holds_at(now))
                    .map(|p| (p.rank, String::from_utf8(p.id(&i).collect()).unwrap(), p.severity))
                    .collect();
                for p in potential.iter().filter(|p| p.holds_at(now)) {
                    prop_assert!(fresh.iter().filter(|f| p.is(f, &i)).count() == 1);
                }
                got.sort();
                prop_assert_eq!(got, want);
            }
        }
    }
}
