//! Issue 9's correctness guard: `list_identities` and `list_findings` served from the inventory
//! index answer exactly what a straightforward full scan answers (every identity read from its
//! provider, sorted, filtered, decided by the policy one by one, paged with the cursor module),
//! page by page and cursor by cursor, for random inventories, queries and principals.

use std::fmt::Write as _;
use std::sync::Arc;

use chrono::Utc;
use proptest::prelude::*;

use super::cursor;
use super::query::{FindingQuery, IdentityQuery};
use super::{Caller, Engine};
use crate::authz::{PolicyAction, Principal, Scope};
use crate::config::{Config, Overrides};
use crate::model::finding::evaluate;
use crate::model::{Finding, Identity, IdentityKind, Severity};

const KINDS: [&str; 4] = ["service_user", "role", "api_token", "database_role"];
const OWNERS: [&str; 5] = ["team-1", "team-2", "team-3", "Team-1", "tëam-1"];
const ENVS: [&str; 3] = ["prod", "dev", "staging"];

/// One generated identity: kind, owner, environment, created and last used (days ago),
/// credentials' ages, privileged.
type Spec = (
    usize,
    Option<usize>,
    Option<usize>,
    u32,
    Option<u32>,
    Vec<u32>,
    bool,
);

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..KINDS.len(),
        proptest::option::of(0..OWNERS.len()),
        proptest::option::of(0..ENVS.len()),
        0u32..400,
        proptest::option::of(0u32..400),
        proptest::collection::vec(0u32..400, 0..3),
        any::<bool>(),
    )
}

fn inventory(specs: &[Spec], prefix: &str) -> String {
    let mut out = String::new();
    for (n, (kind, owner, env, created, used, creds, privileged)) in specs.iter().enumerate() {
        // Ids out of order in the file, and of different lengths.
        let native = format!("{prefix}/u{}", (n * 7919) % 1000);
        if out.contains(&format!("\"{native}\"")) {
            continue;
        }
        let _ = writeln!(
            out,
            "[[identities]]\nnative_id = \"{native}\"\nkind = \"{}\"\nname = \"n{n}\"",
            KINDS[*kind]
        );
        if let Some(o) = owner {
            let _ = writeln!(out, "owner = \"{}\"", OWNERS[*o]);
        }
        if let Some(e) = env {
            let _ = writeln!(out, "environment = \"{}\"", ENVS[*e]);
        }
        let _ = writeln!(out, "created_at = \"-{created}d\"");
        if let Some(u) = used {
            let _ = writeln!(out, "last_used_at = \"-{u}d\"");
        }
        let _ = writeln!(
            out,
            "[identities.permissions]\nprivileged = {privileged}\nsummary = \"s\"\ngrants = []\nwildcard = false"
        );
        for (c, age) in creds.iter().enumerate() {
            let _ = writeln!(
                out,
                "[[identities.credentials]]\nid = \"AKIA{n:06}X{c}\"\nkind = \"access_key\"\ncreated_at = \"-{age}d\"\nstatus = \"active\""
            );
        }
    }
    out
}

/// A policy under which `agent:limited` reads only prod identities and team-1's.
const POLICY: &str = r#"
@id("all-read")
permit (principal == Nhi::Agent::"agent:all", action == Nhi::Action::"read", resource);
@id("limited-read")
permit (principal == Nhi::Agent::"agent:limited", action == Nhi::Action::"read", resource)
when { resource.environment == "prod" || resource.owner == "team-1" };
"#;

async fn engine(dir: &std::path::Path, a: &str, b: &str) -> Engine {
    std::fs::write(dir.join("a.toml"), a).unwrap();
    std::fs::write(dir.join("a-b.toml"), b).unwrap();
    std::fs::write(dir.join("p.cedar"), POLICY).unwrap();
    // `a` is cached, `a-b` is live; `a-b:` ids sort before `a:` ones.
    let toml = format!(
        "[policy]\nfiles = [\"{d}/p.cedar\"]\n[[providers]]\nname = \"a\"\nkind = \"inventory\"\npath = \"{d}/a.toml\"\nrefresh = \"1h\"\n[[providers]]\nname = \"a-b\"\nkind = \"inventory\"\npath = \"{d}/a-b.toml\"\n",
        d = dir.display()
    );
    let overrides = Overrides {
        config_file: None,
        data_dir: Some(dir.join("data")),
    };
    let config = Config::from_toml(&toml, None, &overrides).unwrap();
    crate::cli::compose::open_engine(&config).await.unwrap()
}

/// Every identity of the query's providers, read from the providers, sorted, readable by
/// `caller`.
async fn readable(engine: &Engine, caller: &Caller, provider: Option<&str>) -> Vec<Identity> {
    let mut all = Vec::new();
    for (name, p) in &engine.providers {
        if provider.is_none_or(|want| want == name) {
            all.extend(p.list().await.unwrap());
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all.into_iter()
        .filter(|i| {
            engine
                .policy
                .decide(&caller.principal, PolicyAction::Read, i)
                .allowed
        })
        .collect()
}

fn matches_finding(filter: &str, f: &Finding) -> bool {
    filter.eq_ignore_ascii_case(&f.owasp_id) || filter == f.rule.slug()
}

/// The reference `list_identities`: a full scan, as before the index.
async fn reference_identities(
    engine: &Engine,
    caller: &Caller,
    q: &IdentityQuery,
) -> (Vec<String>, Option<String>) {
    let now = Utc::now();
    let text = q.text.as_ref().map(|t| t.to_lowercase());
    let mut out = Vec::new();
    for i in readable(engine, caller, q.provider.as_deref()).await {
        let findings = evaluate(&i, &engine.thresholds, now);
        let keep = q.kind.is_none_or(|k| k == i.kind)
            && q.owner.as_ref().is_none_or(|o| i.owner.as_ref() == Some(o))
            && q.environment
                .as_ref()
                .is_none_or(|e| i.environment.as_ref() == Some(e))
            && text.as_ref().is_none_or(|t| {
                [
                    Some(i.id.as_str()),
                    Some(i.name.as_str()),
                    i.purpose.as_deref(),
                    i.owner.as_deref(),
                ]
                .iter()
                .flatten()
                .any(|h| h.to_lowercase().contains(t))
            })
            && q.unused_for_days.is_none_or(|d| {
                i.last_activity().map_or(i64::MAX, |t| (now - t).num_days()) >= i64::from(d)
            })
            && q.credential_age_days.is_none_or(|d| {
                i.active_credentials()
                    .any(|c| (now - c.created_at).num_days() >= i64::from(d))
            })
            && q.finding
                .as_ref()
                .is_none_or(|f| findings.iter().any(|x| matches_finding(f, x)));
        if keep {
            let mut slugs: Vec<&str> = findings.iter().map(|f| f.rule.slug()).collect();
            slugs.dedup();
            out.push((i.id.to_string(), format!("{}|{:?}", i.id, slugs)));
        }
    }
    let hash = cursor::query_hash(q);
    let after = cursor::decode(q.cursor.as_deref(), &hash).unwrap();
    let page = cursor::paginate(
        out,
        |(id, _)| id.clone(),
        after.as_deref(),
        cursor::check_limit(q.limit).unwrap(),
        &hash,
    );
    (
        page.items.into_iter().map(|(_, s)| s).collect(),
        page.next_cursor,
    )
}

/// The reference `list_findings` page, summary total and counts.
async fn reference_findings(
    engine: &Engine,
    caller: &Caller,
    q: &FindingQuery,
) -> (Vec<String>, Option<String>, String) {
    let now = Utc::now();
    let mut all: Vec<Finding> = readable(engine, caller, q.provider.as_deref())
        .await
        .iter()
        .flat_map(|i| evaluate(i, &engine.thresholds, now))
        .filter(|f| q.severity.is_none_or(|s| f.severity >= s))
        .filter(|f| q.finding.as_ref().is_none_or(|x| matches_finding(x, f)))
        .collect();
    let key = |f: &Finding| format!("{}|{}", 3 - f.severity as u8, f.id);
    all.sort_by_key(key);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for f in &all {
        *counts.entry(format!("{:?}", f.severity)).or_default() += 1;
        *counts.entry(f.owasp_id.clone()).or_default() += 1;
    }
    let summary = format!("{} {counts:?}", all.len());
    let hash = cursor::query_hash(q);
    let after = cursor::decode(q.cursor.as_deref(), &hash).unwrap();
    let page = cursor::paginate(
        all,
        key,
        after.as_deref(),
        cursor::check_limit(q.limit).unwrap(),
        &hash,
    );
    (
        page.items
            .iter()
            .map(|f| format!("{}|{}", f.id, f.evidence))
            .collect(),
        page.next_cursor,
        summary,
    )
}

type Query = (
    Option<usize>,
    Option<usize>,
    Option<usize>,
    Option<usize>,
    Option<&'static str>,
    Option<&'static str>,
    Option<u32>,
    Option<u32>,
    u32,
);

fn query() -> impl Strategy<Value = Query> {
    (
        proptest::option::of(0..2usize),
        proptest::option::of(0..KINDS.len()),
        proptest::option::of(0..OWNERS.len()),
        proptest::option::of(0..ENVS.len()),
        proptest::option::of(proptest::sample::select(vec![
            "u1", "A-B:", "n3", "team", "TËAM",
        ])),
        proptest::option::of(proptest::sample::select(vec![
            "unused",
            "credential_too_old",
            "NHI7",
            "nhi1",
            "privileged",
            "multiple_active_credentials",
        ])),
        proptest::option::of(0u32..300),
        proptest::option::of(0u32..300),
        1u32..9,
    )
}

fn kind(n: usize) -> IdentityKind {
    serde_json::from_value(serde_json::json!(KINDS[n])).unwrap()
}

async fn compare(specs_a: Vec<Spec>, specs_b: Vec<Spec>, queries: Vec<(Query, bool)>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        dir.path(),
        &inventory(&specs_a, "user"),
        &inventory(&specs_b, "role"),
    )
    .await;
    let engine = Arc::new(engine);
    for ((provider, k, owner, env, text, finding, unused, age, limit), limited) in queries {
        let who = if limited {
            "agent:limited"
        } else {
            "agent:all"
        };
        let principal = Principal::new(who, [Scope::Read]);
        let caller = Caller::new(&principal, "list_identities", serde_json::Value::Null);
        let mut q = IdentityQuery {
            provider: provider.map(|p| ["a", "a-b"][p].to_owned()),
            kind: k.map(kind),
            owner: owner.map(|o| OWNERS[o].to_owned()),
            environment: env.map(|e| ENVS[e].to_owned()),
            text: text.map(str::to_owned),
            finding: finding.map(str::to_owned),
            unused_for_days: unused,
            credential_age_days: age,
            cursor: None,
            limit: Some(limit),
            refresh: false,
        };
        for _page in 0..200 {
            let (want, want_next) = reference_identities(&engine, &caller, &q).await;
            let got = engine.list_identities(&caller, q.clone()).await.unwrap();
            let got_items: Vec<String> = got
                .items
                .iter()
                .map(|s| format!("{}|{:?}", s.id, s.findings))
                .collect();
            assert_eq!(got_items, want, "{q:?} as {who}");
            assert_eq!(got.next_cursor, want_next, "{q:?} as {who}");
            match got.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }

        let caller = Caller::new(&principal, "list_findings", serde_json::Value::Null);
        let mut fq = FindingQuery {
            identity_id: None,
            provider: q.provider.clone(),
            severity: k.map(|n| [Severity::Low, Severity::Medium, Severity::High][n % 3]),
            finding: q.finding.clone(),
            cursor: None,
            limit: Some(limit * 3),
            refresh: false,
        };
        for _page in 0..200 {
            let (want, want_next, want_summary) = reference_findings(&engine, &caller, &fq).await;
            let got = engine.list_findings(&caller, fq.clone()).await.unwrap();
            let items: Vec<String> = got
                .findings
                .iter()
                .map(|f| format!("{}|{}", f.id, f.evidence))
                .collect();
            assert_eq!(items, want, "{fq:?} as {who}");
            assert_eq!(got.next_cursor, want_next, "{fq:?} as {who}");
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for (s, n) in &got.summary.by_severity {
                let name: Severity = serde_json::from_value(serde_json::json!(s)).unwrap();
                counts.insert(format!("{name:?}"), *n);
            }
            for (o, n) in &got.summary.by_owasp_id {
                counts.insert(o.clone(), *n);
            }
            assert_eq!(
                format!("{} {counts:?}", got.summary.total),
                want_summary,
                "{fq:?}"
            );
            match got.next_cursor {
                Some(c) => fq.cursor = Some(c),
                None => break,
            }
        }
    }
    engine.store().close().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_index_answers_what_a_full_scan_answers(
        a in proptest::collection::vec(spec(), 0..60),
        b in proptest::collection::vec(spec(), 0..40),
        queries in proptest::collection::vec((query(), any::<bool>()), 1..8),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(compare(a, b, queries));
    }
}

/// A change applied through the engine and a change to a live provider's file both show in
/// the next page, exactly as the full scan sees them.
#[tokio::test]
async fn changes_reach_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (0..30)
        .map(|n| (n % 4, Some(n % 3), Some(n % 3), 10, Some(1), vec![5], false))
        .collect();
    let engine = engine(
        dir.path(),
        &inventory(&specs, "user"),
        &inventory(&specs, "role"),
    )
    .await;
    let principal = Principal::new("agent:all", [Scope::Read]);
    let caller = Caller::new(&principal, "list_identities", serde_json::Value::Null);
    let q = IdentityQuery {
        limit: Some(500),
        ..Default::default()
    };
    let before = engine.list_identities(&caller, q.clone()).await.unwrap();
    // The live provider's file changes: fewer identities, another owner.
    let mut fewer = specs[..10].to_vec();
    fewer[0].1 = Some(1);
    std::fs::write(dir.path().join("a-b.toml"), inventory(&fewer, "role")).unwrap();
    let after = engine.list_identities(&caller, q.clone()).await.unwrap();
    assert_eq!(after.items.len(), before.items.len() - 20);
    let (want, _) = reference_identities(&engine, &caller, &q).await;
    let got: Vec<String> = after
        .items
        .iter()
        .map(|s| format!("{}|{:?}", s.id, s.findings))
        .collect();
    assert_eq!(got, want);
    let owners: Vec<_> = after
        .items
        .iter()
        .filter(|s| s.owner.as_deref() == Some("team-2"))
        .map(|s| s.id.to_string())
        .collect();
    assert!(owners.contains(&"a-b:role/u0".to_owned()), "{owners:?}");
    engine.store().close().await;
}

/// The live provider's file is swapped back and forth while lists run at the same moment:
/// every answer is one version of the file or the other, whole, never a mix, and once the
/// swapping stops every answer is the last version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_swapped_under_concurrent_lists_is_seen_whole() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |owner: usize| -> Vec<Spec> {
        (0..40)
            .map(|n| (n % 4, Some(owner), Some(0), 10, Some(1), vec![5], false))
            .collect()
    };
    let (one, two) = (
        inventory(&spec(0), "role"),
        inventory(&spec(1)[..25], "role"),
    );
    let engine = Arc::new(engine(dir.path(), &inventory(&spec(0), "user"), &one).await);
    let path = dir.path().join("a-b.toml");
    let principal = Principal::new("agent:all", [Scope::Read]);
    let lists: Vec<_> = (0..4)
        .map(|_| {
            let engine = Arc::clone(&engine);
            let principal = principal.clone();
            tokio::spawn(async move {
                let caller = Caller::new(&principal, "list_identities", serde_json::Value::Null);
                let q = IdentityQuery {
                    provider: Some("a-b".into()),
                    limit: Some(500),
                    ..Default::default()
                };
                for _ in 0..60 {
                    let page = engine.list_identities(&caller, q.clone()).await.unwrap();
                    let owners: std::collections::BTreeSet<_> =
                        page.items.iter().map(|s| s.owner.clone()).collect();
                    let whole = (page.items.len() == 40
                        && owners == [Some("team-1".to_owned())].into())
                        || (page.items.len() == 25 && owners == [Some("team-2".to_owned())].into());
                    assert!(
                        whole,
                        "a mixed answer: {} items, owners {owners:?}",
                        page.items.len()
                    );
                }
            })
        })
        .collect();
    for n in 0..30 {
        // Written whole (rename), as an editor or a deploy would.
        let tmp = dir.path().join("swap.tmp");
        std::fs::write(&tmp, if n % 2 == 0 { &two } else { &one }).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    for l in lists {
        l.await.unwrap();
    }
    std::fs::write(&path, &two).unwrap();
    let caller = Caller::new(&principal, "list_identities", serde_json::Value::Null);
    let q = IdentityQuery {
        provider: Some("a-b".into()),
        limit: Some(500),
        ..Default::default()
    };
    assert_eq!(
        engine
            .list_identities(&caller, q)
            .await
            .unwrap()
            .items
            .len(),
        25
    );
    engine.store().close().await;
}

/// `list_proposals` pages are full for a caller who may not see every proposal: the hidden
/// ones are skipped, not left as holes, and the cursor walk gives every visible proposal once,
/// in id order.
#[tokio::test]
async fn proposal_pages_are_full_when_some_proposals_are_hidden() {
    use crate::model::ProposalStatus;
    use crate::model::proposal::sample;
    use crate::store::ProposalFilter;

    let dir = tempfile::tempdir().unwrap();
    // Environments prod, dev, staging in turn, owners never team-1: `agent:limited` reads a
    // third of them.
    let specs: Vec<Spec> = (0..12)
        .map(|n| (0, Some(1), Some(n % 3), 10, Some(1), vec![5], false))
        .collect();
    let engine = engine(
        dir.path(),
        &inventory(&specs, "user"),
        &inventory(&specs, "role"),
    )
    .await;
    let all = Principal::new("agent:all", [Scope::Read]);
    let limited = Principal::new("agent:limited", [Scope::Read]);
    let identities = readable(
        &engine,
        &Caller::new(&all, "list", serde_json::Value::Null),
        None,
    )
    .await;
    // Proposals in identity order, so visible and hidden ones alternate in id order too.
    let mut tx = engine.store().begin().await.unwrap();
    for (n, identity) in identities.iter().enumerate() {
        tx.insert_proposal(&sample(n as u128, identity, ProposalStatus::Rejected))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let visible: Vec<String> = engine
        .store()
        .list_proposals(&ProposalFilter::default(), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.body.snapshot.environment.as_deref() == Some("prod"))
        .map(|p| p.body.id.to_string())
        .collect();
    assert_eq!(visible.len(), 8);
    let caller = Caller::new(&limited, "list_proposals", serde_json::Value::Null);
    let mut seen = Vec::new();
    let mut q = super::ProposalQuery {
        limit: Some(1),
        ..Default::default()
    };
    loop {
        let page = engine.list_proposals(&caller, q.clone()).await.unwrap();
        assert_eq!(page.items.len(), 1, "a page with a hole after {seen:?}");
        seen.extend(page.items.iter().map(|p| p.body.id.to_string()));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, visible);
    engine.store().close().await;
}
