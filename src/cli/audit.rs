//! `nhi-mcp audit ...`: verify the chain against its signed checkpoints, export it with a signed
//! checkpoint as the last line, print the checkpoint public key, write a checkpoint now.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use super::AuditCommand;
use super::output::json;
use crate::audit::checkpoint::{
    self, CheckpointKey, Checkpointer, read_checkpoint_file, read_public_key, verify_checkpoints,
};
use crate::config::Config;
use crate::engine::Engine;

pub async fn run(
    engine: &Engine,
    config: &Config,
    command: AuditCommand,
    mut out: std::io::StdoutLock<'static>,
) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify {
            checkpoint,
            public_key,
        } => {
            verify(
                engine,
                config,
                checkpoint.as_deref(),
                public_key.as_deref(),
                &mut out,
            )
            .await?
        }
        AuditCommand::Export { output } => {
            let lock = lock_local(config)?;
            let records = engine.store().audit_records().await?;
            let checked = check(config, &records, None, None);
            drop(lock);
            let mut sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    private_file(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(out),
            };
            for r in &records {
                writeln!(sink, "{}", json(r, false)?)?;
            }
            match checked {
                Ok(_) => {
                    // Sign exactly what was exported, and only a log that verifies.
                    let c = checkpointer(config)?.for_export(&records);
                    writeln!(sink, "{}", c.to_line())?;
                }
                Err(e) => eprintln!(
                    "warning: the export carries no signed checkpoint, because the log does not verify: {e:#}"
                ),
            }
            sink.flush()?;
            if output.is_some() {
                eprintln!("exported {} audit records", records.len());
            }
        }
        AuditCommand::PublicKey => {
            let key = CheckpointKey::load_or_create(&config.audit.checkpoint_key_file)
                .map_err(anyhow::Error::msg)?;
            write!(out, "{}", key.public_pem().map_err(anyhow::Error::msg)?)?;
        }
        AuditCommand::Checkpoint => {
            let c = checkpointer(config)?;
            match engine.write_checkpoint(&c).await? {
                Some(cp) => writeln!(
                    out,
                    "checkpoint: {} records, head {}; appended to {}",
                    cp.count,
                    cp.head,
                    c.file().display()
                )?,
                None => writeln!(out, "no records since the last checkpoint; nothing to sign")?,
            }
        }
    }
    Ok(())
}

/// Holds off checkpoint writers while the chain and the local checkpoint file are read.
fn lock_local(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    let path = &config.audit.checkpoint_file;
    checkpoint::lock_for_reading(path).with_context(|| format!("cannot lock {}", path.display()))
}

fn checkpointer(config: &Config) -> anyhow::Result<Checkpointer> {
    let key = CheckpointKey::load_or_create(&config.audit.checkpoint_key_file)
        .map_err(anyhow::Error::msg)?;
    Ok(Checkpointer::new(key, config.audit.checkpoint_file.clone()))
}

/// The hash chain, then every checkpoint in it and in the checkpoint file.
fn check(
    config: &Config,
    records: &[crate::audit::AuditRecord],
    checkpoint_file: Option<&Path>,
    public_key: Option<&Path>,
) -> anyhow::Result<Checked> {
    let (count, head) = crate::audit::verify(records)?;
    let file = checkpoint_file.unwrap_or(&config.audit.checkpoint_file);
    let kept = read_checkpoint_file(file).map_err(anyhow::Error::msg)?;
    if checkpoint_file.is_some() && kept.is_none() {
        bail!("checkpoint file {} does not exist", file.display());
    }
    let kept = kept.unwrap_or_default();
    let public = match public_key {
        Some(p) => Some(read_public_key(p).map_err(anyhow::Error::msg)?),
        None if config.audit.checkpoint_key_file.exists() => Some(
            CheckpointKey::load(&config.audit.checkpoint_key_file)
                .map_err(anyhow::Error::msg)?
                .public(),
        ),
        None => None,
    };
    let coverage = verify_checkpoints(records, &kept, public.as_ref())
        .map_err(|e| anyhow::anyhow!("audit log fails its checkpoints: {e}"))?;
    if kept.is_empty() && coverage.in_chain > 0 {
        bail!(
            "checkpoint file {} is missing or empty, but the chain holds {} checkpoints: it was deleted; verify against a copy with `--checkpoint FILE`",
            file.display(),
            coverage.in_chain
        );
    }
    Ok(Checked {
        count,
        head,
        kept: kept.len(),
        file_newest: kept.last().map(|c| c.count),
        coverage,
    })
}

struct Checked {
    count: usize,
    head: String,
    kept: usize,
    file_newest: Option<i64>,
    coverage: checkpoint::Coverage,
}

async fn verify(
    engine: &Engine,
    config: &Config,
    checkpoint_file: Option<&Path>,
    public_key: Option<&Path>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let lock = match checkpoint_file {
        None => lock_local(config)?,
        Some(_) => None,
    };
    let records = engine.store().audit_records().await?;
    let c = check(config, &records, checkpoint_file, public_key)?;
    drop(lock);
    let file = checkpoint_file.unwrap_or(&config.audit.checkpoint_file);
    writeln!(
        out,
        "audit chain intact: {} records; head {}",
        c.count, c.head
    )?;
    match &c.coverage.newest {
        Some(newest) => {
            writeln!(
                out,
                "checkpoint: the first {} records match the checkpoint signed at {} (head {}); {} checkpoints in {}, {} in the chain",
                newest.count,
                newest.at,
                newest.head,
                c.kept,
                file.display(),
                c.coverage.in_chain
            )?;
            writeln!(
                out,
                "not yet covered: {} records after that checkpoint",
                c.coverage.uncovered
            )?;
            if c.file_newest.is_none_or(|n| n < newest.count) {
                eprintln!(
                    "note: the newest checkpoint in the chain ({} records) is not in {}",
                    newest.count,
                    file.display()
                );
            }
        }
        None => writeln!(
            out,
            "no checkpoint yet: none of the {} records is covered; `serve` writes one every {}, or run `nhi-mcp audit checkpoint`",
            c.count,
            humantime::format_duration(config.audit.checkpoint_interval)
        )?,
    }
    Ok(())
}

/// Creates (or truncates) a file readable by its owner only, whatever the umask: exports carry
/// who did what. A symbolic link is not followed: one planted where an export goes (in `/tmp`,
/// by another user) would have the export truncate, overwrite and `chmod` its target.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            let is_link =
                std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if e.raw_os_error() == Some(libc::ELOOP) && is_link {
                std::io::Error::new(
                    e.kind(),
                    "it is a symbolic link, which an export does not write through: name the file itself",
                )
            } else {
                e
            }
        })?;
    // An existing file keeps its mode on open: tighten it too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}
