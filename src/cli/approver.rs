//! `approve`, `reject` and `approvers keygen`: a CLI decision is never anonymous. With
//! `--approver NAME --key FILE` the CLI signs a statement (proposal id, digest, approver, time)
//! that the engine checks against the approver's configured public key; with `[auth]` and no
//! `--key`, the approver signs in at the issuer (OAuth device authorization grant) and decides as
//! the token's subject.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use chrono::Utc;

use crate::authz::approvers::{self, NO_APPROVERS, SignedStatement, Statement, Verdict};
use crate::authz::{Principal, Scope, principal_id};
use crate::config::Config;
use crate::engine::{Caller, Engine};
use crate::model::{ProposalId, quote_input};

/// How the approver proved who they are.
enum Proof {
    Signed(SignedStatement),
    SignedIn(Principal),
}

pub async fn approve(
    engine: &Engine,
    config: &Config,
    proposal_id: &str,
    approver: Option<String>,
    key: Option<PathBuf>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let id = ProposalId::parse(proposal_id).map_err(|e| anyhow!(e.0))?;
    let result = match prove(engine, config, Verdict::Approve, &id, approver, key, None).await? {
        Proof::Signed(signed) => {
            engine
                .approve_with_proof(&config.approvers, &id, &signed)
                .await?
        }
        Proof::SignedIn(admin) => engine.approve(&admin, &id).await?,
    };
    match result.token {
        Some(token) => {
            eprintln!(
                "approved {id}; the token below is valid until {} and works once",
                result.proposal.deadline.to_rfc3339()
            );
            writeln!(out, "{token}")?;
        }
        None => eprintln!(
            "approval {} of {} recorded for {id}; the token is issued with the last approval",
            result.proposal.approvals.len(),
            result.proposal.body.required_approvals
        ),
    }
    Ok(())
}

pub async fn reject(
    engine: &Engine,
    config: &Config,
    proposal_id: &str,
    approver: Option<String>,
    key: Option<PathBuf>,
    reason: &str,
) -> anyhow::Result<()> {
    let id = ProposalId::parse(proposal_id).map_err(|e| anyhow!(e.0))?;
    let p = match prove(
        engine,
        config,
        Verdict::Reject,
        &id,
        approver,
        key,
        Some(reason),
    )
    .await?
    {
        Proof::Signed(signed) => {
            engine
                .reject_with_proof(&config.approvers, &id, reason, &signed)
                .await?
        }
        Proof::SignedIn(admin) => engine.reject(&admin, &id, reason).await?,
    };
    // An approved proposal is not "rejected" to the admin who withdraws its approval: say that
    // the token already handed out is refused from now on.
    let withdrawn = p
        .outcome
        .as_deref()
        .is_some_and(|o| o.starts_with("approval withdrawn"));
    if withdrawn {
        eprintln!("approval of {id} withdrawn; its approval token is refused from now on");
    } else {
        eprintln!("rejected {id}");
    }
    Ok(())
}

async fn prove(
    engine: &Engine,
    config: &Config,
    verdict: Verdict,
    id: &ProposalId,
    approver: Option<String>,
    key: Option<PathBuf>,
    reason: Option<&str>,
) -> anyhow::Result<Proof> {
    match (approver, key) {
        (Some(approver), Some(key)) => {
            let refuse = async |message: String| {
                let caller = Caller::new(
                    &Principal::new("cli:local", [Scope::Approve]),
                    verdict.as_str(),
                    serde_json::json!({"proposal_id": id, "approver": quote_input(&approver)}),
                );
                engine.audit_denied(&caller, &message).await;
                anyhow!(message)
            };
            if config.approvers.is_empty() {
                return Err(refuse(NO_APPROVERS.to_owned()).await);
            }
            let name = match principal_id::parse_external("`--approver`", &approver) {
                Ok(name) => name,
                Err(e) => return Err(refuse(e.0).await),
            };
            let signing = approvers::load_signing_key(&key).map_err(|e| anyhow!(e))?;
            let proposal = engine.proposal(id).await?;
            let statement = Statement::new(
                verdict,
                id.as_str(),
                &proposal.digest,
                &name,
                reason,
                Utc::now(),
            );
            Ok(Proof::Signed(approvers::sign(&signing, statement)))
        }
        (None, None) => match &config.http.auth {
            Some(auth) => {
                match super::device::sign_in(auth, &config.approval.cli_client_id).await {
                    Ok(principal) => Ok(Proof::SignedIn(principal)),
                    Err(e) => {
                        // A sign-in that ends without a usable approver is a refused decision.
                        let message = format!("{e:#}").replace('\n', " ");
                        let caller = Caller::new(
                            &Principal::new("cli:local", [Scope::Approve]),
                            verdict.as_str(),
                            serde_json::json!({"proposal_id": id, "proof": "sign-in"}),
                        );
                        engine.audit_denied(&caller, &message).await;
                        Err(e)
                    }
                }
            }
            None => bail!(
                "`{}` needs `--approver NAME --key FILE` (an `[[approvers]]` entry and its private key); without `[auth]` there is no issuer to sign in at",
                verdict.as_str()
            ),
        },
        // clap makes `--approver` and `--key` go together.
        _ => bail!("give `--approver` and `--key` together"),
    }
}

/// `nhi-mcp approvers keygen --out FILE [--id NAME]`.
pub fn keygen(out: &Path, id: Option<&str>) -> anyhow::Result<()> {
    let id = id
        .map(|raw| principal_id::parse_external("`--id`", raw).map_err(|e| anyhow!(e.0)))
        .transpose()?;
    let public = approvers::generate_key_file(out).map_err(|e| anyhow!(e))?;
    let pem = approvers::public_key_pem(&public).map_err(|e| anyhow!(e))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "[[approvers]]")?;
    writeln!(
        stdout,
        "id = \"{}\"",
        id.as_deref().unwrap_or("YOUR-APPROVER-ID")
    )?;
    writeln!(
        stdout,
        "public_key = \"{}\"",
        pem.trim_end().replace('\n', "\\n")
    )
    .context("cannot write to stdout")?;
    eprintln!(
        "wrote the private key to {} (mode 0600); add the lines above to the config, keep the key to yourself",
        out.display()
    );
    Ok(())
}
