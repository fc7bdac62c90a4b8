//! Looking: identities, one identity in full, and posture findings.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use std::sync::Arc;

use super::cursor::{self, Page};
use super::index::{self, Indexed, key_after};
use super::{Caller, Engine, EngineError, Result, principal_key};
use crate::authz::{PolicyAction, Scope};
use crate::model::finding::evaluate;
use crate::model::ids::check_free_text;
use crate::model::{
    Finding, FindingRule, Identity, IdentityId, IdentityKind, ProposalStatus, Severity, Thresholds,
};
use crate::store::ProposalFilter;

/// Filters of `list_identities`. All are optional and combine with AND.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityQuery {
    pub provider: Option<String>,
    pub kind: Option<IdentityKind>,
    pub owner: Option<String>,
    pub environment: Option<String>,
    /// Case-insensitive substring of id, name, purpose or owner.
    pub text: Option<String>,
    /// A rule (`unused`, `privileged`, ...) or an OWASP id (`NHI7`).
    pub finding: Option<String>,
    pub unused_for_days: Option<u32>,
    /// Only identities with an active credential at least this old.
    pub credential_age_days: Option<u32>,
    #[serde(skip)]
    pub cursor: Option<String>,
    #[serde(skip)]
    pub limit: Option<u32>,
    /// Read the providers live instead of their cached inventory. Not part of the cursor's
    /// query hash: the next page may come from the cache.
    #[serde(skip)]
    pub refresh: bool,
}

/// Where one provider's part of a result came from, and how old it is.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Freshness {
    pub provider: String,
    /// `live`: read from the provider for this call; `cache`: the cached inventory, which the
    /// background refresh renews.
    pub source: String,
    /// When the provider was read.
    pub as_of: DateTime<Utc>,
    /// Seconds between `as_of` and this answer.
    pub age_secs: u64,
    /// Why the last background refresh of this provider failed, if it did; cleared by the next
    /// successful read.
    pub last_refresh_error: Option<String>,
}

impl Freshness {
    /// Read from `provider` for this call, just now.
    pub(super) fn live(provider: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            source: "live".to_owned(),
            as_of: Utc::now(),
            age_secs: 0,
            last_refresh_error: None,
        }
    }
}

/// One page of `list_identities`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IdentitiesPage {
    pub items: Vec<IdentitySummary>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// How fresh the data is, per provider the query covered.
    pub freshness: Vec<Freshness>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IdentitySummary {
    pub id: IdentityId,
    pub provider: String,
    pub kind: IdentityKind,
    pub name: String,
    pub owner: Option<String>,
    pub environment: Option<String>,
    pub privileged: bool,
    pub disabled: bool,
    pub last_used_at: Option<DateTime<Utc>>,
    pub active_credentials: usize,
    /// Rule slugs of the identity's findings.
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OpenProposal {
    pub id: String,
    pub action: String,
    pub status: ProposalStatus,
    pub credential_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IdentityDetail {
    pub identity: Identity,
    pub findings: Vec<Finding>,
    pub open_proposals: Vec<OpenProposal>,
    /// When the identity was read from its provider: always for this call, never from a cache.
    pub as_of: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FindingQuery {
    pub identity_id: Option<IdentityId>,
    pub provider: Option<String>,
    /// Only findings at least this severe.
    pub severity: Option<Severity>,
    /// An OWASP NHI Top 10 id (`NHI1` ... `NHI10`) or a rule slug.
    pub finding: Option<String>,
    #[serde(skip)]
    pub cursor: Option<String>,
    #[serde(skip)]
    pub limit: Option<u32>,
    /// Read the providers live instead of their cached inventory. Not part of the cursor's
    /// query hash: the next page may come from the cache.
    #[serde(skip)]
    pub refresh: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FindingsSummary {
    /// Findings matching the query, across all pages.
    pub total: usize,
    pub by_severity: BTreeMap<String, usize>,
    pub by_owasp_id: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FindingsPage {
    pub findings: Vec<Finding>,
    pub next_cursor: Option<String>,
    pub summary: FindingsSummary,
    pub thresholds: Thresholds,
    /// Thresholds loosened past their floor.
    pub threshold_warnings: Vec<String>,
    /// How fresh the data is, per provider: `live` (read for this call) or `cache` (read
    /// `age_secs` ago by the background refresh; pass `refresh: true` to read live).
    pub freshness: Vec<Freshness>,
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Whether findings of `rule` at `severity` match the query's filters.
fn rule_wanted(q: &FindingQuery, severity: Severity, rule: FindingRule) -> bool {
    q.severity.is_none_or(|s| severity >= s)
        && q.finding
            .as_ref()
            .is_none_or(|x| x.eq_ignore_ascii_case(rule.owasp_id()) || x == rule.slug())
}

fn finding_wanted(q: &FindingQuery, f: &Finding) -> bool {
    q.severity.is_none_or(|s| f.severity >= s)
        && q.finding
            .as_ref()
            .is_none_or(|x| matches_finding(x, f.rule))
}

/// One page of `findings` (any order) after `after`, and the summary of all of them: a scan,
/// for one identity's findings.
fn scan_findings(
    findings: &[Finding],
    q: &FindingQuery,
    after: Option<&str>,
    limit: usize,
    hash: &str,
) -> (Page<Finding>, FindingsSummary) {
    // Most severe first, then by id: a stable order for paging; the cursor's key is
    // `<3 - severity>|<finding id>`.
    let rank = |f: &Finding| 3 - f.severity as u8;
    let order =
        |a: &&Finding, b: &&Finding| (rank(a), a.id.as_str()).cmp(&(rank(b), b.id.as_str()));
    // The summary counts every wanted finding; only the page's (and one more) are
    // sorted: a selection, not a sort of them all.
    let mut total = 0;
    let mut by_severity: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_owasp_id: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rest: Vec<&Finding> = Vec::new();
    for f in findings {
        if !finding_wanted(q, f) {
            continue;
        }
        total += 1;
        *by_severity.entry(severity_name(f.severity)).or_default() += 1;
        *by_owasp_id.entry(f.owasp_id.as_str()).or_default() += 1;
        if after.is_none_or(|after| key_after(rank(f), f.id.bytes(), after)) {
            rest.push(f);
        }
    }
    if rest.len() > limit + 1 {
        rest.select_nth_unstable_by(limit, order);
        rest.truncate(limit + 1);
    }
    rest.sort_by(order);
    let next_cursor = (rest.len() > limit).then(|| {
        cursor::encode(
            &format!("{}|{}", rank(rest[limit - 1]), rest[limit - 1].id),
            hash,
        )
    });
    let page = Page {
        items: rest.iter().take(limit).map(|f| (*f).clone()).collect(),
        next_cursor,
    };
    let summary = FindingsSummary {
        total,
        by_severity: by_severity
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect(),
        by_owasp_id: by_owasp_id
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect(),
    };
    (page, summary)
}

/// The summary line of one identity for `list_identities`.
fn summary(identity: &Identity, rules: &[FindingRule]) -> IdentitySummary {
    let mut slugs: Vec<String> = rules.iter().map(|r| r.slug().to_owned()).collect();
    slugs.dedup();
    IdentitySummary {
        id: identity.id.clone(),
        provider: identity.provider.clone(),
        kind: identity.kind,
        name: identity.name.clone(),
        owner: identity.owner.clone(),
        environment: identity.environment.clone(),
        privileged: identity.permissions.privileged,
        disabled: identity.disabled,
        last_used_at: identity.last_activity(),
        active_credentials: identity.active_credentials().count(),
        findings: slugs,
    }
}

fn matches_finding(filter: &str, rule: FindingRule) -> bool {
    filter.eq_ignore_ascii_case(rule.owasp_id()) || filter == rule.slug()
}

fn check_finding_filter(filter: &Option<String>) -> Result<()> {
    if let Some(f) = filter {
        let known = FindingRule::ALL
            .iter()
            .any(|r| r.slug() == f || r.owasp_id().eq_ignore_ascii_case(f))
            || (1..=10).any(|n| f.eq_ignore_ascii_case(&format!("NHI{n}")));
        if !known {
            let rules: Vec<&str> = FindingRule::ALL.iter().map(|r| r.slug()).collect();
            return Err(EngineError::InvalidArgument(format!(
                "`finding` = {} is neither an OWASP id (`NHI1`..`NHI10`) nor a rule ({})",
                crate::model::quote_input(f),
                rules.join(", ")
            )));
        }
    }
    Ok(())
}

fn check_text_filters(fields: &[(&str, &Option<String>)]) -> Result<()> {
    for (name, value) in fields {
        if let Some(v) = value {
            check_free_text(&format!("`{name}`"), v, 200)?;
        }
    }
    Ok(())
}

impl Engine {
    fn check_provider_filter(&self, provider: &Option<String>) -> Result<()> {
        match provider {
            Some(p) if !self.providers.contains_key(p) => {
                Err(EngineError::InvalidArgument(format!(
                    "`provider` = {} is not configured; providers: {}",
                    crate::model::quote_input(p),
                    self.provider_names().join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    pub async fn list_identities(
        &self,
        caller: &Caller,
        q: IdentityQuery,
    ) -> Result<IdentitiesPage> {
        self.require(caller, Scope::Read).await?;
        let result = self.list_identities_inner(caller, &q).await;
        let result = match result {
            Ok(page) => self
                .audit_read(caller, format!("{} identities", page.items.len()))
                .await
                .map(|()| page),
            Err(e) => Err(e),
        };
        self.finish(caller, result, None).await
    }

    async fn list_identities_inner(
        &self,
        caller: &Caller,
        q: &IdentityQuery,
    ) -> Result<IdentitiesPage> {
        let limit = cursor::check_limit(q.limit)?;
        check_text_filters(&[
            ("provider", &q.provider),
            ("owner", &q.owner),
            ("environment", &q.environment),
            ("text", &q.text),
        ])?;
        check_finding_filter(&q.finding)?;
        self.check_provider_filter(&q.provider)?;
        let hash = cursor::query_hash(q);
        let after = cursor::decode(q.cursor.as_deref(), &hash)?;
        let now = Utc::now();
        let text = q.text.as_ref().map(|t| t.to_lowercase());
        let (indexes, freshness) = self.inventories(q.provider.as_deref(), q.refresh).await?;
        let indexed = Indexed {
            kind: q.kind,
            owner: q.owner.as_deref(),
            environment: q.environment.as_deref(),
        };
        let walks = indexes
            .iter()
            .map(|i| i.candidates(&indexed, after.as_deref()).peekable())
            .collect();
        let reader = principal_key(&caller.principal);
        // One more than a page: whether there is a next page.
        let mut out: Vec<IdentitySummary> = Vec::with_capacity(limit + 1);
        for entry in index::merge(walks) {
            let identity = &entry.identity;
            if q.kind.is_some_and(|k| k != identity.kind)
                || q.owner
                    .as_ref()
                    .is_some_and(|o| identity.owner.as_ref() != Some(o))
                || q.environment
                    .as_ref()
                    .is_some_and(|e| identity.environment.as_ref() != Some(e))
            {
                continue;
            }
            if let Some(t) = &text {
                let hay = [
                    Some(identity.id.as_str()),
                    Some(identity.name.as_str()),
                    identity.purpose.as_deref(),
                    identity.owner.as_deref(),
                ];
                if !hay.iter().flatten().any(|h| h.to_lowercase().contains(t)) {
                    continue;
                }
            }
            if let Some(days) = q.unused_for_days {
                let idle = identity
                    .last_activity()
                    .map_or(i64::MAX, |t| (now - t).num_days());
                if idle < i64::from(days) {
                    continue;
                }
            }
            if let Some(days) = q.credential_age_days
                && !identity
                    .active_credentials()
                    .any(|c| (now - c.created_at).num_days() >= i64::from(days))
            {
                continue;
            }
            let rules = entry.finding_rules(&self.thresholds, now);
            if let Some(f) = &q.finding
                && !rules.iter().any(|r| matches_finding(f, *r))
            {
                continue;
            }
            // Last, as the dearest check: decided only for identities the page can show.
            if !entry.may_read(&reader, |i| self.may_read(caller, i)) {
                continue;
            }
            out.push(summary(identity, &rules));
            if out.len() > limit {
                break;
            }
        }
        let next_cursor =
            (out.len() > limit).then(|| cursor::encode(out[limit - 1].id.as_str(), &hash));
        out.truncate(limit);
        Ok(IdentitiesPage {
            items: out,
            next_cursor,
            freshness,
        })
    }

    pub async fn get_identity(&self, caller: &Caller, id: &IdentityId) -> Result<IdentityDetail> {
        self.require(caller, Scope::Read).await?;
        let result = async {
            let identity = self.fetch_identity(id).await?;
            let as_of = Utc::now();
            self.authorize(caller, PolicyAction::Read, &identity)?;
            let findings = evaluate(&identity, &self.thresholds, as_of);
            // At most one open proposal per (action, credential): the limit is never reached.
            let filter = ProposalFilter {
                open: true,
                identity_id: Some(id.clone()),
                ..Default::default()
            };
            let open_proposals = self
                .store
                .list_proposals(&filter, 1000)
                .await?
                .into_iter()
                .map(|p| OpenProposal {
                    id: p.body.id.to_string(),
                    action: p.body.action.as_str().to_owned(),
                    status: p.status,
                    credential_id: p.body.credential_id.map(|c| c.to_string()),
                })
                .collect();
            self.audit_read(caller, format!("identity `{id}`")).await?;
            Ok(IdentityDetail {
                identity,
                findings,
                open_proposals,
                as_of,
            })
        }
        .await;
        self.finish(caller, result, None).await
    }

    /// A page of findings from the providers' indexes, and the summary of all that match:
    /// the walk stops one past the page; the counts come from what the caller may see,
    /// computed once per (principal, snapshot).
    #[allow(clippy::too_many_arguments)]
    fn indexed_findings(
        &self,
        caller: &Caller,
        indexes: &[Arc<index::Snapshot>],
        q: &FindingQuery,
        after: Option<&str>,
        limit: usize,
        hash: &str,
        now: DateTime<Utc>,
    ) -> (Page<Finding>, FindingsSummary) {
        let reader = principal_key(&caller.principal);
        let readable = |e: &index::Entry| e.may_read(&reader, |i| self.may_read(caller, i));
        let mut summary = FindingsSummary {
            total: 0,
            by_severity: BTreeMap::new(),
            by_owasp_id: BTreeMap::new(),
        };
        for snapshot in indexes {
            let visible = snapshot.visible(&self.thresholds, &reader, readable);
            for (severity, rule) in visible.keys() {
                if !rule_wanted(q, severity, rule) {
                    continue;
                }
                let n = visible.count((severity, rule), now);
                if n == 0 {
                    continue;
                }
                summary.total += n;
                *summary
                    .by_severity
                    .entry(severity_name(severity).to_owned())
                    .or_default() += n;
                *summary
                    .by_owasp_id
                    .entry(rule.owasp_id().to_owned())
                    .or_default() += n;
            }
        }
        let walks = indexes
            .iter()
            .map(|s| s.findings_after(&self.thresholds, after).peekable())
            .collect();
        let mut items: Vec<Finding> = Vec::with_capacity(limit + 1);
        let ordered = index::merge_by(walks, |(sa, a), (sb, b)| sa.before(a, sb, b));
        for (snapshot, p) in ordered {
            if !rule_wanted(q, p.severity, p.rule) || !p.holds_at(now) {
                continue;
            }
            let Some(entry) = snapshot.entry(p.entry) else {
                continue;
            };
            if !readable(entry) {
                continue;
            }
            // The finding as it reads now (its evidence counts days): evaluated for the
            // identities a page shows, not kept for all.
            if let Some(f) = evaluate(&entry.identity, &self.thresholds, now)
                .into_iter()
                .find(|f| p.is(f, &entry.identity))
            {
                items.push(f);
            }
            if items.len() > limit {
                break;
            }
        }
        let next_cursor = (items.len() > limit).then(|| {
            let last = &items[limit - 1];
            cursor::encode(&format!("{}|{}", 3 - last.severity as u8, last.id), hash)
        });
        items.truncate(limit);
        (Page { items, next_cursor }, summary)
    }

    pub async fn list_findings(&self, caller: &Caller, q: FindingQuery) -> Result<FindingsPage> {
        self.require(caller, Scope::Read).await?;
        let result = async {
            let limit = cursor::check_limit(q.limit)?;
            check_finding_filter(&q.finding)?;
            check_text_filters(&[("provider", &q.provider)])?;
            self.check_provider_filter(&q.provider)?;
            let hash = cursor::query_hash(&q);
            let after = cursor::decode(q.cursor.as_deref(), &hash)?;
            let now = Utc::now();
            let (page, summary, freshness) = match &q.identity_id {
                Some(id) => {
                    let identity = self.fetch_identity(id).await?;
                    self.authorize(caller, PolicyAction::Read, &identity)?;
                    let findings = evaluate(&identity, &self.thresholds, now);
                    let (page, summary) =
                        scan_findings(&findings, &q, after.as_deref(), limit, &hash);
                    (page, summary, vec![Freshness::live(id.provider())])
                }
                None => {
                    let (indexes, freshness) =
                        self.inventories(q.provider.as_deref(), q.refresh).await?;
                    let (page, summary) = self.indexed_findings(
                        caller,
                        &indexes,
                        &q,
                        after.as_deref(),
                        limit,
                        &hash,
                        now,
                    );
                    (page, summary, freshness)
                }
            };
            self.audit_read(caller, format!("{} findings", page.items.len()))
                .await?;
            Ok(FindingsPage {
                findings: page.items,
                next_cursor: page.next_cursor,
                summary,
                thresholds: self.thresholds,
                threshold_warnings: self.thresholds.warnings(),
                freshness,
            })
        }
        .await;
        self.finish(caller, result, None).await
    }
}
