//! Admin commands for humans at a shell on the server: tables, approvals, the audit log, config.

use std::io::Write;

use anyhow::{Context, bail};

use super::output::{json, term, term_cut, term_or_dash};
use super::{Command, ConfigCommand, FindingsCommand, IdentitiesCommand, ProposalsCommand};
use crate::authz::{Principal, Scope};
use crate::config::{Config, DatabaseConfig};
use crate::engine::{Caller, Engine, FindingQuery, IdentityQuery, ProposalQuery};
use crate::model::{IdentityId, ProposalId, ProposalStatus};

/// The principal the CLI reads as (writes name the approver instead).
fn cli_reader() -> Principal {
    Principal::new("cli:local", [Scope::Read])
}

pub async fn run(config: Config, command: Command) -> anyhow::Result<()> {
    // Only the commands that call providers build them (and read their secrets): an approver
    // needs the data dir and the approval key, not every provider's credentials.
    let engine = if needs_providers(&command) {
        super::compose::open_engine(&config).await?
    } else {
        Engine::open_without_providers(&config).await?
    };
    let result = dispatch(&engine, &config, command).await;
    engine.store().close().await;
    result
}

fn needs_providers(command: &Command) -> bool {
    match command {
        Command::Identities { .. } | Command::Findings { .. } | Command::Config { .. } => true,
        Command::Proposals { .. }
        | Command::Approve { .. }
        | Command::Reject { .. }
        | Command::Audit { .. }
        | Command::Serve { .. }
        | Command::Tools { .. }
        | Command::Completions { .. }
        | Command::Approvers { .. } => false,
    }
}

async fn dispatch(engine: &Engine, config: &Config, command: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Identities {
            command:
                IdentitiesCommand::List {
                    provider,
                    kind,
                    owner,
                    environment,
                    text,
                    finding,
                    refresh,
                    json: as_json,
                },
        } => {
            let caller = Caller::new(
                &cli_reader(),
                "identities list",
                serde_json::json!({"provider": provider, "kind": kind, "owner": owner,
                    "environment": environment, "text": text, "finding": finding,
                    "refresh": refresh}),
            );
            let mut query = IdentityQuery {
                provider,
                kind: kind.as_deref().map(|k| parse_enum("kind", k)).transpose()?,
                owner,
                environment,
                text,
                finding,
                limit: Some(500),
                refresh,
                ..Default::default()
            };
            if !as_json {
                writeln!(
                    out,
                    "{:<52} {:<16} {:<24} {:<8} {:<11} FINDINGS",
                    "ID", "KIND", "OWNER", "ENV", "LAST USED"
                )?;
            }
            loop {
                let page = engine.list_identities(&caller, query.clone()).await?;
                for i in &page.items {
                    if as_json {
                        writeln!(out, "{}", json(i, false)?)?;
                        continue;
                    }
                    writeln!(
                        out,
                        "{:<52} {:<16} {:<24} {:<8} {:<11} {}",
                        term(i.id.as_str()),
                        i.kind.as_str(),
                        term_or_dash(i.owner.as_deref()),
                        term_or_dash(i.environment.as_deref()),
                        day(i.last_used_at),
                        term(&i.findings.join(","))
                    )?;
                }
                match page.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => {
                        note_freshness(&page.freshness);
                        break;
                    }
                }
            }
        }
        Command::Identities {
            command:
                IdentitiesCommand::Show {
                    identity_id,
                    json: as_json,
                },
        } => {
            let caller = Caller::new(
                &cli_reader(),
                "identities show",
                serde_json::json!({"identity_id": identity_id}),
            );
            let id = IdentityId::parse(&identity_id).map_err(|e| anyhow::anyhow!(e.0))?;
            let detail = engine.get_identity(&caller, &id).await?;
            if as_json {
                writeln!(out, "{}", json(&detail, true)?)?;
            } else {
                show_identity(&mut out, &detail)?;
            }
        }
        Command::Findings {
            command:
                FindingsCommand::List {
                    identity,
                    provider,
                    severity,
                    finding,
                    refresh,
                    json: as_json,
                },
        } => {
            let caller = Caller::new(
                &cli_reader(),
                "findings list",
                serde_json::json!({"identity_id": identity, "provider": provider,
                    "severity": severity, "finding": finding, "refresh": refresh}),
            );
            let mut query = FindingQuery {
                identity_id: identity
                    .as_deref()
                    .map(IdentityId::parse)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!(e.0))?,
                provider,
                severity: severity
                    .as_deref()
                    .map(|s| parse_enum("severity", s))
                    .transpose()?,
                finding,
                limit: Some(500),
                refresh,
                ..Default::default()
            };
            if !as_json {
                writeln!(
                    out,
                    "{:<8} {:<5} {:<27} {:<52} {:<22} EVIDENCE",
                    "SEVERITY", "OWASP", "RULE", "IDENTITY", "CREDENTIAL"
                )?;
            }
            loop {
                let page = engine.list_findings(&caller, query.clone()).await?;
                for f in &page.findings {
                    if as_json {
                        writeln!(out, "{}", json(f, false)?)?;
                        continue;
                    }
                    writeln!(
                        out,
                        "{:<8} {:<5} {:<27} {:<52} {:<22} {}",
                        severity_str(f.severity),
                        term(&f.owasp_id),
                        f.rule.slug(),
                        term(f.identity_id.as_str()),
                        term_or_dash(f.credential_id.as_ref().map(|c| c.as_str())),
                        term(&f.evidence)
                    )?;
                }
                match page.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => {
                        if !as_json {
                            for w in &page.threshold_warnings {
                                eprintln!("warning: {}", term(w));
                            }
                        }
                        note_freshness(&page.freshness);
                        break;
                    }
                }
            }
        }
        Command::Proposals {
            command:
                ProposalsCommand::List {
                    status,
                    json: as_json,
                },
        } => {
            let status = status
                .map(|s| {
                    ProposalStatus::parse(&s).with_context(|| {
                        format!("unknown status {}", crate::model::quote_input(&s))
                    })
                })
                .transpose()?;
            let mut query = ProposalQuery {
                status,
                limit: Some(500),
                ..Default::default()
            };
            if !as_json {
                writeln!(
                    out,
                    "{:<38} {:<17} {:<7} {:<48} {:<20} {:<9} {:<5} REASON",
                    "ID", "STATUS", "ACTION", "IDENTITY", "REQUESTER", "APPROVALS", "AGE"
                )?;
            }
            let now = chrono::Utc::now();
            loop {
                let page = engine.proposals_page(&query).await?;
                for p in &page.items {
                    if as_json {
                        writeln!(out, "{}", json(p, false)?)?;
                        continue;
                    }
                    writeln!(
                        out,
                        "{:<38} {:<17} {:<7} {:<48} {:<20} {:<9} {:<5} {}",
                        p.body.id,
                        p.status.as_str(),
                        p.body.action.as_str(),
                        term(p.body.identity_id.as_str()),
                        term(&p.body.requester),
                        format!("{}/{}", p.approvals.len(), p.body.required_approvals),
                        age(now - p.body.created_at),
                        term_cut(&p.body.reason, 60)
                    )?;
                }
                match page.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => break,
                }
            }
        }
        Command::Proposals {
            command: ProposalsCommand::Show { proposal_id },
        } => {
            let id = ProposalId::parse(&proposal_id).map_err(|e| anyhow::anyhow!(e.0))?;
            let p = engine.proposal(&id).await?;
            writeln!(out, "{}", json(&p, true)?)?;
        }
        Command::Approve {
            proposal_id,
            approver,
            key,
        } => {
            super::approver::approve(engine, config, &proposal_id, approver, key, &mut out).await?;
        }
        Command::Reject {
            proposal_id,
            approver,
            key,
            reason,
        } => super::approver::reject(engine, config, &proposal_id, approver, key, &reason).await?,
        Command::Audit { command } => super::audit::run(engine, config, command, out).await?,
        Command::Config {
            command: ConfigCommand::Check,
        } => check(engine, config, &mut out).await?,
        Command::Serve { .. }
        | Command::Tools { .. }
        | Command::Completions { .. }
        | Command::Approvers { .. } => {
            bail!("not an admin command")
        }
    }
    Ok(())
}

async fn check(engine: &Engine, config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "config: {}",
        config
            .source
            .as_ref()
            .map_or("(none: embedded demo defaults)".to_owned(), |p| p
                .display()
                .to_string())
    )?;
    writeln!(out, "data dir: {}", config.data_dir.display())?;
    match &config.database {
        DatabaseConfig::Sqlite(p) => writeln!(out, "database: sqlite {}", p.display())?,
    }
    writeln!(
        out,
        "approval key: {} (EdDSA), tokens valid {}",
        config.approval.key_file.display(),
        humantime::format_duration(config.approval.token_ttl)
    )?;
    writeln!(
        out,
        "stdio principal: {} [{}]",
        config.stdio_principal.id,
        config.stdio_principal.scope_list().join(", ")
    )?;
    let caller = Caller::new(&cli_reader(), "config check", serde_json::Value::Null);
    let mut failing = Vec::new();
    for name in engine.provider_names() {
        // A live read: the check is whether the provider answers now, not what the cache holds.
        let query = IdentityQuery {
            provider: Some(name.clone()),
            limit: Some(500),
            refresh: true,
            ..Default::default()
        };
        match engine.list_identities(&caller, query).await {
            Ok(page) => {
                writeln!(
                    out,
                    "provider {name}: ok, sees {} identities{}",
                    page.items.len(),
                    if page.next_cursor.is_some() {
                        " (first 500)"
                    } else {
                        ""
                    }
                )?;
                match engine.provider_capabilities(&name).await {
                    Ok(lines) => {
                        for line in lines {
                            writeln!(out, "  {}", term(&line))?;
                        }
                    }
                    Err(e) => writeln!(
                        out,
                        "  cannot tell what it may change: {}",
                        term(&e.to_string())
                    )?,
                }
            }
            Err(e) => {
                writeln!(out, "provider {name}: NOT OK: {}", term(&e.to_string()))?;
                failing.push(name);
            }
        }
    }
    let policy = engine.policy();
    writeln!(
        out,
        "policy: {} Cedar policies from {}, validated against the schema",
        policy.policy_count(),
        policy.sources.join(", ")
    )?;
    match &config.http.auth {
        Some(a) => writeln!(
            out,
            "http: bearer tokens from {} for audience {}",
            a.issuer, a.audience
        )?,
        None => writeln!(
            out,
            "http: no [auth]: loopback only, every caller is `{}`",
            config.http.principal.id
        )?,
    }
    let t = engine.thresholds();
    writeln!(
        out,
        "findings: unused_days = {}, max_credential_age_days = {}",
        t.unused_days, t.max_credential_age_days
    )?;
    for w in t.warnings() {
        writeln!(out, "warning: {}", term(&w))?;
    }
    if !failing.is_empty() {
        bail!("provider(s) not usable: {}", failing.join(", "));
    }
    Ok(())
}

/// Says, on stderr, which providers answered from their cached inventory and how old it is:
/// only `serve` refreshes the cache in the background.
fn note_freshness(freshness: &[crate::engine::Freshness]) {
    for f in freshness.iter().filter(|f| f.source != "live") {
        eprintln!(
            "note: provider {}: from the cached inventory read {} ago{}; pass --refresh to read it live",
            term(&f.provider),
            humantime::format_duration(std::time::Duration::from_secs(f.age_secs)),
            f.last_refresh_error
                .as_ref()
                .map(|e| format!(" (the last refresh failed: {})", term(e)))
                .unwrap_or_default()
        );
    }
}

/// A flag's value parsed as one of the model's snake_case names (`service_user`, `high`).
fn parse_enum<T: serde::de::DeserializeOwned>(flag: &str, raw: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).map_err(|_| {
        anyhow::anyhow!(
            "`--{flag}`: unknown value {}",
            crate::model::quote_input(raw)
        )
    })
}

fn severity_str(s: crate::model::Severity) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn day(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("never".to_owned(), |t| t.format("%Y-%m-%d").to_string())
}

/// A proposal's age in its largest whole unit: `45s`, `12m`, `3h`, `9d`.
fn age(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn show_identity(out: &mut impl Write, d: &crate::engine::IdentityDetail) -> anyhow::Result<()> {
    let i = &d.identity;
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let opt_time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("never".to_owned(), time);
    writeln!(out, "id:          {}", term(i.id.as_str()))?;
    writeln!(out, "kind:        {}", i.kind.as_str())?;
    writeln!(out, "name:        {}", term(&i.name))?;
    writeln!(out, "native id:   {}", term(&i.native_id))?;
    writeln!(out, "owner:       {}", term_or_dash(i.owner.as_deref()))?;
    writeln!(out, "purpose:     {}", term_or_dash(i.purpose.as_deref()))?;
    writeln!(
        out,
        "environment: {}",
        term_or_dash(i.environment.as_deref())
    )?;
    if !i.used_in_environments.is_empty() {
        writeln!(
            out,
            "used in:     {}",
            term(&i.used_in_environments.join(", "))
        )?;
    }
    writeln!(out, "created:     {}", time(i.created_at))?;
    writeln!(out, "last used:   {}", opt_time(i.last_used_at))?;
    writeln!(
        out,
        "sign-in:     {}",
        if i.disabled { "disabled" } else { "enabled" }
    )?;
    let mut flags = Vec::new();
    if i.permissions.privileged {
        flags.push("privileged");
    }
    if i.permissions.wildcard {
        flags.push("wildcard");
    }
    writeln!(
        out,
        "permissions: {}{}",
        term(&i.permissions.summary),
        if flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", flags.join(", "))
        }
    )?;
    for g in &i.permissions.grants {
        writeln!(out, "  {}", term(g))?;
    }
    for (k, v) in &i.tags {
        writeln!(out, "tag:         {}={}", term(k), term(v))?;
    }
    writeln!(out, "credentials: {}", i.credentials.len())?;
    for c in &i.credentials {
        let status = serde_json::to_value(c.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        writeln!(
            out,
            "  {:<40} {:<14} {:<9} created {}, last used {}, expires {}",
            term(c.id.as_str()),
            c.kind.as_str(),
            status,
            time(c.created_at),
            opt_time(c.last_used_at),
            c.expires_at.map_or("never".to_owned(), time)
        )?;
    }
    writeln!(out, "findings:    {}", d.findings.len())?;
    for f in &d.findings {
        writeln!(
            out,
            "  {:<8} {:<5} {:<27} {}",
            severity_str(f.severity),
            term(&f.owasp_id),
            f.rule.slug(),
            term(&f.evidence)
        )?;
    }
    writeln!(out, "open proposals: {}", d.open_proposals.len())?;
    for p in &d.open_proposals {
        let status = p.status.as_str();
        writeln!(
            out,
            "  {} {} {}{}",
            term(&p.id),
            term(&p.action),
            status,
            p.credential_id
                .as_deref()
                .map(|c| format!(" credential {}", term(c)))
                .unwrap_or_default()
        )?;
    }
    writeln!(out, "as of:       {}", time(d.as_of))?;
    Ok(())
}
