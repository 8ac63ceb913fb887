//! `calicoctl sync`: keeps etcd equal to a directory of YAML files (API.md section 4).
//!
//! - A revision is the whole directory, read consistently (see [`source`]); it is
//!   applied as one guarded etcd transaction, or, if any document is invalid, not at all:
//!   the error goes to the log, to `sync status` and (with `--once`) to the exit code, and
//!   the last good revision stays live.
//! - Everything applied is marked `calico/owner: sync:<id>`, `calico/source: <file>`;
//!   the sync never writes or deletes anything else (see [`plan`]).
//! - It wakes on directory changes (debounced) and on every interval; each pass also
//!   compares etcd with the directory and restores owned resources changed or deleted
//!   behind its back, reporting each drift.
//!
//! This file holds the command line (`sync`, `sync status`) and the run loop; a
//! directory's passes are the [`Syncer`] (`syncer`), reading it `source`, deciding the
//! change `plan`, and the stored status `status`.

pub mod plan;
pub mod source;
pub mod status;
mod syncer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::args::parse_duration;
use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::Lines;
use status::{now_secs, status_key, SyncStatus};
pub use syncer::{PassResult, Syncer};

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SyncArgs {
    #[command(subcommand)]
    pub command: Option<SyncCommand>,
    #[command(flatten)]
    pub run: SyncRunArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SyncRunArgs {
    /// The directory to apply: every *.yaml/*.yml under it, recursively, dot-files and
    /// dot-directories skipped; may be a symlink that git-sync swaps
    #[arg(long, value_name = "DIR", required = true)]
    pub dir: Option<PathBuf>,
    /// Apply the directory once and exit (non-zero when it was refused)
    #[arg(long)]
    pub once: bool,
    /// Delete resources this sync owns whose documents are gone
    #[arg(long)]
    pub prune: bool,
    /// Take over existing resources that have no owner when a document names them
    /// (never Docker's, nor another sync's)
    #[arg(long)]
    pub adopt: bool,
    /// How often etcd is compared with the directory (drift correction) even when no
    /// file changes: 500ms, 30s, 5m...
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// The sync's identity in ownership annotations and status [default: derived from
    /// the directory's path]
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// How long the directory must be quiet before a change is read
    #[arg(long, default_value = "200ms", value_parser = parse_duration, value_name = "DURATION")]
    pub debounce: Duration,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SyncCommand {
    /// Show a sync's last applied revision, its last error and the drifts it corrected
    Status(SyncStatusArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct SyncStatusArgs {
    /// The sync's id
    #[arg(long, conflicts_with = "dir")]
    pub id: Option<String>,
    /// The sync's directory (its id is derived as `sync --dir` does)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = StatusFormat::Text)]
    pub output: StatusFormat,
}

/// The default id of a sync: the directory's name and a hash of its canonical path. The
/// last component is kept as given (not resolved): git-sync swaps where it points.
pub fn default_id(dir: &Path) -> Result<String> {
    let abs = std::path::absolute(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let canon = match (abs.parent(), abs.file_name()) {
        (Some(p), Some(name)) if name != ".." => {
            std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).join(name)
        }
        _ => std::fs::canonicalize(&abs).unwrap_or(abs),
    };
    let name = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if base.is_empty() {
        base = "dir".into();
    }
    let digest = Sha256::digest(canon.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{base}-{hex}"))
}

/// The id from `--id`, or derived from the directory.
pub fn resolve_id(id: Option<&str>, dir: &Path) -> Result<String> {
    match id {
        Some(id) => {
            status::check_id(id)?;
            Ok(id.to_string())
        }
        None => default_id(dir),
    }
}

/// Logs to stderr at `level` unless RUST_LOG says otherwise. Idempotent.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // notify reports its own housekeeping (a watched worktree git-sync removed) as
        // warnings: not ours to show.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{level},notify=error,notify_debouncer_full=error"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The hostname, or empty when it cannot be read (it only labels the runner).
pub fn hostname() -> String {
    crate::hostcmd::hostname().unwrap_or_default()
}

/// `calicoctl sync ...`.
pub async fn run(g: &GlobalOpts, args: &SyncArgs) -> Result<()> {
    match &args.command {
        Some(SyncCommand::Status(s)) => status_cmd(g, s).await,
        None => run_sync(g, &args.run).await,
    }
}

async fn run_sync(g: &GlobalOpts, a: &SyncRunArgs) -> Result<()> {
    let Some(dir) = a.dir.clone() else {
        bail!("give --dir DIR");
    };
    let id = resolve_id(a.id.as_deref(), &dir)?;
    init_logging(if a.once { "warn" } else { "info" });
    let ctx = Ctx::connect(g).await?;
    let runner = format!("sync on {} (pid {})", hostname(), std::process::id());
    let mut s = Syncer::new(ctx.store.clone(), dir, id, a.prune, a.adopt, runner).await;
    if a.once {
        s.log_errors = false;
        return match s.pass().await {
            PassResult::Ok => {
                let st = s.status();
                println!(
                    "sync {}: revision {} applied ({} resources)",
                    st.id,
                    st.revision.as_ref().map(ToString::to_string).unwrap_or_default(),
                    st.resources
                );
                Ok(())
            }
            PassResult::Rejected(lines) => Err(Lines(lines).into()),
            PassResult::Failed(e) => Err(anyhow!(e)),
        };
    }
    let stop = shutdown_signal();
    tokio::select! {
        _ = s.run(a.interval, a.debounce) => Ok(()),
        _ = stop => {
            info!("stopping");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {},
                _ = i.recv() => {},
            }
        }
        _ => std::future::pending().await,
    }
}

async fn status_cmd(g: &GlobalOpts, a: &SyncStatusArgs) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let id = match (&a.id, &a.dir) {
        (Some(id), _) => Some(resolve_id(Some(id), Path::new("."))?),
        (None, Some(d)) => Some(default_id(d)?),
        (None, None) => None,
    };
    let statuses: Vec<SyncStatus> = match &id {
        Some(id) => match ctx
            .call("get", ctx.store.get_json::<SyncStatus>(&status_key(id)))
            .await?
        {
            Some(s) => vec![s],
            None => {
                let how = match &a.dir {
                    Some(d) => format!(
                        " (the id derived from {}; give --id if it was started with one)",
                        d.display()
                    ),
                    None => String::new(),
                };
                bail!("no status for sync '{id}'{how}");
            }
        },
        None => {
            let all = ctx.call("list", ctx.store.list_json::<SyncStatus>("sync/")).await?;
            let mut out = Vec::new();
            for (key, v) in all {
                if !key.ends_with("/status") {
                    continue;
                }
                match v {
                    Ok(s) => out.push(s),
                    Err(e) => warn!(%key, error = %e, "undecodable sync status"),
                }
            }
            if out.is_empty() {
                bail!("no sync has run against this etcd yet");
            }
            out
        }
    };
    match a.output {
        StatusFormat::Json => {
            let now = now_secs();
            let agents = crate::observed::agent_statuses(&ctx).await?;
            let with_enforcement = |s: &SyncStatus| -> Result<serde_json::Value> {
                let mut v = serde_json::to_value(s)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "enforcement".into(),
                        serde_json::json!(status::enforcement(s, &agents, now)),
                    );
                }
                Ok(v)
            };
            let v = if id.is_some() {
                with_enforcement(&statuses[0])?
            } else {
                serde_json::Value::Array(statuses.iter().map(with_enforcement).collect::<Result<_>>()?)
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        StatusFormat::Text => {
            let now = now_secs();
            let agents = crate::observed::agent_statuses(&ctx).await?;
            let text: Vec<String> = statuses
                .iter()
                .map(|s| status::render(s, now, &status::enforcement(s, &agents, now)))
                .collect();
            print!("{}", text.join("\n"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_keep_the_symlink_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rev-1")).unwrap();
        std::fs::create_dir(d.path().join("rev-2")).unwrap();
        std::os::unix::fs::symlink("rev-1", d.path().join("current")).unwrap();
        let a = default_id(&d.path().join("current")).unwrap();
        std::fs::remove_file(d.path().join("current")).unwrap();
        std::os::unix::fs::symlink("rev-2", d.path().join("current")).unwrap();
        let b = default_id(&d.path().join("current/")).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("current-"), "{a}");
        assert!(calico_schema::validate::is_valid_name(&a));
        assert_ne!(a, default_id(&d.path().join("rev-1")).unwrap());
        let weird = default_id(&d.path().join("--my dir--")).unwrap();
        assert!(weird.starts_with("my-dir-"), "{weird}");
    }
}
