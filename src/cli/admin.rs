//! Admin commands for humans at a shell on the server: tables, approvals, the audit log, config.

use std::io::Write;

use anyhow::{Context, bail};

use super::{AuditCommand, Command, ConfigCommand, IdentitiesCommand, ProposalsCommand};
use crate::authz::{Principal, Scope};
use crate::config::{Config, DatabaseConfig};
use crate::engine::{Caller, Engine, IdentityQuery, ProposalQuery};
use crate::model::{ProposalId, ProposalStatus};

/// The principal the CLI reads as (writes name the approver instead).
fn cli_reader() -> Principal {
    Principal::new("cli:local", [Scope::Read])
}

pub async fn run(config: Config, command: Command) -> anyhow::Result<()> {
    let engine = Engine::open(&config).await?;
    let result = dispatch(&engine, &config, command).await;
    engine.store().close().await;
    result
}

async fn dispatch(engine: &Engine, config: &Config, command: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Identities {
            command:
                IdentitiesCommand::List {
                    provider,
                    finding,
                    refresh,
                },
        } => {
            let caller = Caller::new(
                &cli_reader(),
                "identities list",
                serde_json::json!({"provider": provider, "finding": finding, "refresh": refresh}),
            );
            let mut query = IdentityQuery {
                provider,
                finding,
                limit: Some(500),
                refresh,
                ..Default::default()
            };
            writeln!(
                out,
                "{:<52} {:<16} {:<24} {:<8} {:<11} FINDINGS",
                "ID", "KIND", "OWNER", "ENV", "LAST USED"
            )?;
            loop {
                let page = engine.list_identities(&caller, query.clone()).await?;
                for i in &page.items {
                    writeln!(
                        out,
                        "{:<52} {:<16} {:<24} {:<8} {:<11} {}",
                        i.id,
                        i.kind.as_str(),
                        i.owner.as_deref().unwrap_or("-"),
                        i.environment.as_deref().unwrap_or("-"),
                        i.last_used_at
                            .map_or("never".to_owned(), |t| t.format("%Y-%m-%d").to_string()),
                        i.findings.join(",")
                    )?;
                }
                match page.next_cursor {
                    Some(c) => query.cursor = Some(c),
                    None => {
                        // Only `serve` refreshes the cache in the background: say how old it is.
                        for f in page.freshness.iter().filter(|f| f.source != "live") {
                            eprintln!(
                                "note: provider {}: from the cached inventory read {} ago{}; pass --refresh to read it live",
                                f.provider,
                                humantime::format_duration(std::time::Duration::from_secs(
                                    f.age_secs
                                )),
                                f.last_refresh_error
                                    .as_ref()
                                    .map(|e| format!(" (the last refresh failed: {e})"))
                                    .unwrap_or_default()
                            );
                        }
                        break;
                    }
                }
            }
        }
        Command::Proposals {
            command: ProposalsCommand::List { status },
        } => {
            let status = status
                .map(|s| ProposalStatus::parse(&s).with_context(|| format!("unknown status `{s}`")))
                .transpose()?;
            let mut query = ProposalQuery {
                status,
                limit: Some(500),
                ..Default::default()
            };
            writeln!(
                out,
                "{:<38} {:<17} {:<7} {:<48} REQUESTER",
                "ID", "STATUS", "ACTION", "IDENTITY"
            )?;
            loop {
                let page = engine.proposals_page(&query).await?;
                for p in &page.items {
                    writeln!(
                        out,
                        "{:<38} {:<17} {:<7} {:<48} {}",
                        p.body.id,
                        p.status.as_str(),
                        p.body.action.as_str(),
                        p.body.identity_id,
                        p.body.requester
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
            writeln!(out, "{}", serde_json::to_string_pretty(&p)?)?;
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
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let records = engine.store().audit_records().await?;
            let (n, head) = crate::audit::verify(&records)?;
            writeln!(out, "audit chain intact: {n} records; head {head}")?;
        }
        Command::Audit {
            command: AuditCommand::Export { output },
        } => {
            let records = engine.store().audit_records().await?;
            let mut sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(out),
            };
            for r in &records {
                writeln!(sink, "{}", serde_json::to_string(r)?)?;
            }
            sink.flush()?;
            if output.is_some() {
                eprintln!("exported {} audit records", records.len());
            }
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => check(engine, config, &mut out).await?,
        Command::Serve { .. } | Command::Tools { .. } | Command::Approvers { .. } => {
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
                            writeln!(out, "  {line}")?;
                        }
                    }
                    Err(e) => writeln!(out, "  cannot tell what it may change: {e}")?,
                }
            }
            Err(e) => {
                writeln!(out, "provider {name}: NOT OK: {e}")?;
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
        writeln!(out, "warning: {w}")?;
    }
    if !failing.is_empty() {
        bail!("provider(s) not usable: {}", failing.join(", "));
    }
    Ok(())
}
