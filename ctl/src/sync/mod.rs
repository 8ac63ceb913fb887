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

pub mod plan;
pub mod source;
pub mod status;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use calico_schema::{Diagnostic, Loaded};
use calico_store::{Step, Store, StoreError};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

use crate::cli::GlobalOpts;
use crate::conn::{store_error, Ctx};
use crate::Lines;
use plan::{id_of, Id, Plan, PlanOpts};
use source::{DirWatch, Snapshot};
use status::{now_secs, status_key, Drift, Revision, SyncError, SyncStatus, MAX_DRIFTS};

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

/// `500ms`, `30s`, `5m`, `1h`, or a plain number of seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (like 500ms, 30s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
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

fn diag_line(d: &Diagnostic) -> String {
    if d.line == 0 {
        format!("{}: {}", d.file, d.message)
    } else {
        d.to_string()
    }
}

/// The last revision that applied: what the sync keeps live while later ones are refused.
struct Good {
    hash: String,
    docs: Vec<Loaded>,
}

/// How a pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassResult {
    /// The directory is applied (nothing or something had to change).
    Ok,
    /// The revision was refused; nothing of it was applied.
    Rejected(Vec<String>),
    /// Something else failed (directory unreadable, etcd away); tried again later.
    Failed(String),
}

/// What writing a plan did.
#[derive(Default)]
struct Applied {
    plan: Plan,
    revision: i64,
}

/// One sync: its options, its last good revision and its status.
pub struct Syncer {
    store: Store,
    dir: PathBuf,
    opts: PlanOpts,
    status: SyncStatus,
    good: Option<Good>,
    /// The content hash and git commit of the last snapshot (git is asked once per change).
    commit_cache: Option<(String, Option<String>)>,
    /// The error lines last logged, so that a refused revision is logged once, not on
    /// every interval.
    logged_error: Option<Vec<String>>,
    /// Unix seconds of the last status write; status is rewritten at least this often.
    status_written: Option<(SyncStatus, u64)>,
    /// Whether errors go to the log (not with `--once`, which prints them itself).
    log_errors: bool,
}

impl Syncer {
    /// A sync of `dir` as `id`. Its counters continue from the stored status, if any.
    pub async fn new(store: Store, dir: PathBuf, id: String, prune: bool, adopt: bool, runner: String) -> Syncer {
        let previous: Option<SyncStatus> = match store.get_json(&status_key(&id)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the previous sync status; starting afresh");
                None
            }
        };
        let mut status = SyncStatus {
            id: id.clone(),
            dir: dir.display().to_string(),
            prune,
            runner,
            ..Default::default()
        };
        if let Some(p) = previous {
            status.drifts_corrected = p.drifts_corrected;
            status.drifts = p.drifts;
            status.revision = p.revision;
            status.applied_at = p.applied_at;
            status.resources = p.resources;
            status.files = p.files;
        }
        Syncer {
            store,
            dir,
            opts: PlanOpts {
                owner: format!("sync:{id}"),
                prune,
                adopt,
            },
            status,
            good: None,
            commit_cache: None,
            logged_error: None,
            status_written: None,
            log_errors: true,
        }
    }

    pub fn status(&self) -> &SyncStatus {
        &self.status
    }

    /// One pass: read the directory, apply it (or keep the last good revision live), and
    /// record the result.
    pub async fn pass(&mut self) -> PassResult {
        let dir = self.dir.clone();
        let snap = tokio::task::spawn_blocking(move || source::read_settled(&dir, source::SETTLE)).await;
        let result = match snap {
            Ok(Ok(snap)) => self.revision(snap).await,
            Ok(Err(e)) => {
                self.keep_good().await;
                self.failed(None, format!("{e:#}"))
            }
            Err(e) => self.failed(None, format!("reading the directory panicked: {e}")),
        };
        self.status.checked_at = now_secs();
        self.write_status().await;
        result
    }

    async fn revision(&mut self, snap: Snapshot) -> PassResult {
        let commit = match &self.commit_cache {
            Some((h, c)) if *h == snap.hash => c.clone(),
            _ => {
                let s = snap.clone();
                let c = tokio::task::spawn_blocking(move || s.git_commit()).await.ok().flatten();
                self.commit_cache = Some((snap.hash.clone(), c.clone()));
                c
            }
        };
        let revision = Revision {
            commit,
            content: snap.content_id(),
        };
        let docs = match snap.load() {
            Ok(d) => d,
            Err(diags) => {
                self.keep_good().await;
                return self.rejected(&revision, diags.0.iter().map(diag_line).collect());
            }
        };
        if docs.is_empty() {
            self.keep_good().await;
            return self.rejected(
                &revision,
                vec![format!(
                    "{}: no documents in any *.yaml/*.yml file; an empty directory is refused, not \
                     applied (with --prune it would delete everything this sync owns)",
                    self.dir.display()
                )],
            );
        }
        let same = self.good.as_ref().is_some_and(|g| g.hash == snap.hash);
        match self.apply_docs(&docs).await {
            Ok(Ok(applied)) => {
                if same {
                    self.report_drift(&applied);
                } else {
                    self.report_applied(&revision, &applied);
                }
                self.status.revision = Some(revision);
                if !same || self.status.applied_at.is_none() {
                    self.status.applied_at = Some(now_secs());
                }
                self.status.resources = applied.plan.declared;
                self.status.files = snap.files.len();
                self.status.orphaned = applied.plan.orphaned.clone();
                self.status.prune_blocked = applied.plan.prune_blocked.clone();
                self.status.last_error = None;
                if self.logged_error.take().is_some() {
                    info!(sync = %self.status.id, "the directory applies again");
                }
                self.good = Some(Good { hash: snap.hash, docs });
                PassResult::Ok
            }
            Ok(Err(diags)) => {
                self.keep_good().await;
                self.rejected(&revision, diags.iter().map(diag_line).collect())
            }
            Err(e) => self.failed(Some(&revision), format!("{e:#}")),
        }
    }

    /// Applies `docs` as one transaction, re-planning when etcd changed in between.
    /// Outer error: etcd trouble; inner error: the revision is refused.
    async fn apply_docs(&self, docs: &[Loaded]) -> Result<Result<Applied, Vec<Diagnostic>>> {
        let claimed: BTreeSet<Id> = self
            .good
            .iter()
            .flat_map(|g| g.docs.iter().map(|l| id_of(&l.resource)))
            .collect();
        // The step's value: the plan and the revision it was made at, or the refusal.
        type Planned = Result<(Plan, i64), Vec<Diagnostic>>;
        let done = self
            .store
            .transact("applying the directory", async || -> Result<Step<Planned>> {
                let listing = self.store.list(None).await.map_err(anyhow::Error::new)?;
                let plan = match plan::plan(docs, &listing, &self.opts, &claimed) {
                    Ok(p) => p,
                    Err(d) => return Ok(Step::Done(Err(d))),
                };
                if plan.is_empty() {
                    return Ok(Step::Done(Ok((plan, listing.revision))));
                }
                let changes = plan::changes(&plan, listing.revision);
                Ok(Step::Commit(changes, Ok((plan, listing.revision))))
            })
            .await
            .map_err(|e| match e {
                e @ StoreError::KeptChanging { .. } => anyhow::Error::new(e),
                e => store_error(self.store.config(), e).context("writing the revision"),
            })??;
        let (plan, read_at) = match done.value {
            Ok(planned) => planned,
            Err(d) => return Ok(Err(d)),
        };
        let revision = done.outcomes.iter().map(|o| o.revision).max().unwrap_or(read_at);
        Ok(Ok(Applied { plan, revision }))
    }

    /// While the directory's current content is refused (or unreadable), the last good
    /// revision stays live: its owned resources are still restored when they drift.
    async fn keep_good(&mut self) {
        let Some(good) = self.good.take() else {
            return;
        };
        match self.apply_docs(&good.docs).await {
            Ok(Ok(applied)) => self.report_drift(&applied),
            // The last good revision no longer validates against etcd (someone changed
            // what it depends on): keep what is there, say so once per pass.
            Ok(Err(d)) => {
                debug!(errors = ?d.iter().map(diag_line).collect::<Vec<_>>(), "the last good revision cannot be re-applied");
            }
            Err(e) => debug!(error = %e, "cannot re-check the last good revision"),
        }
        self.good = Some(good);
    }

    fn report_applied(&self, revision: &Revision, a: &Applied) {
        let id = &self.status.id;
        for p in &a.plan.puts {
            let what = if p.before.is_some() { "configured" } else { "created" };
            info!(sync = %id, resource = %p.resource.id(), file = %p.source, "{what}");
        }
        for r in &a.plan.deletes {
            info!(sync = %id, resource = %r.id(), "pruned (its document is gone)");
        }
        for b in &a.plan.prune_blocked {
            warn!(sync = %id, "{b}");
        }
        if a.plan.is_empty() {
            info!(sync = %id, %revision, resources = a.plan.declared, "revision applied (etcd already matched)");
        } else {
            info!(
                sync = %id,
                %revision,
                resources = a.plan.declared,
                written = a.plan.puts.len(),
                pruned = a.plan.deletes.len(),
                etcd_revision = a.revision,
                "revision applied"
            );
        }
    }

    fn report_drift(&mut self, a: &Applied) {
        let now = now_secs();
        for p in &a.plan.puts {
            let change = if p.before.is_some() { "changed" } else { "deleted" };
            let verb = if p.before.is_some() { "restored" } else { "recreated" };
            warn!(
                sync = %self.status.id,
                resource = %p.resource.id(),
                file = %p.source,
                "drift: {} was {change} in etcd behind the sync's back; {verb}",
                p.resource.id()
            );
            self.status.drifts_corrected += 1;
            self.status.drifts.push(Drift {
                id: p.resource.id(),
                source: p.source.clone(),
                change: change.into(),
                at: now,
            });
        }
        for r in &a.plan.deletes {
            info!(sync = %self.status.id, resource = %r.id(), "pruned (its document is gone)");
        }
        let n = self.status.drifts.len();
        if n > MAX_DRIFTS {
            self.status.drifts.drain(..n - MAX_DRIFTS);
        }
    }

    fn rejected(&mut self, revision: &Revision, errors: Vec<String>) -> PassResult {
        if self.log_errors && self.logged_error.as_ref() != Some(&errors) {
            error!(
                sync = %self.status.id,
                %revision,
                "revision refused, nothing of it applied; the last good revision stays live"
            );
            for e in &errors {
                error!(sync = %self.status.id, "{e}");
            }
            self.logged_error = Some(errors.clone());
        }
        self.status.last_error = Some(SyncError {
            revision: Some(revision.clone()),
            at: now_secs(),
            errors: errors.clone(),
        });
        PassResult::Rejected(errors)
    }

    fn failed(&mut self, revision: Option<&Revision>, e: String) -> PassResult {
        let errors = vec![e.clone()];
        if self.log_errors && self.logged_error.as_ref() != Some(&errors) {
            error!(sync = %self.status.id, "{e}");
            self.logged_error = Some(errors.clone());
        }
        self.status.last_error = Some(SyncError {
            revision: revision.cloned(),
            at: now_secs(),
            errors,
        });
        PassResult::Failed(e)
    }

    /// Stores the status when it changed (the check time alone is refreshed at most
    /// once a minute, to keep etcd writes down on short intervals).
    async fn write_status(&mut self) {
        let now = now_secs();
        if let Some((last, at)) = &self.status_written {
            let mut a = last.clone();
            a.checked_at = self.status.checked_at;
            if a == self.status && now < at + 60 {
                return;
            }
        }
        match self.store.put_json(&status_key(&self.status.id), &self.status).await {
            Ok(_) => self.status_written = Some((self.status.clone(), now)),
            Err(e) => debug!(error = %e, "cannot store the sync status"),
        }
    }

    /// Runs until the task is dropped: a pass on every (debounced) directory change and
    /// on every interval.
    pub async fn run(mut self, interval: Duration, debounce: Duration) {
        let (mut watch, mut rx) = match DirWatch::start(&self.dir, debounce) {
            Ok((w, rx)) => (Some(w), Some(rx)),
            Err(e) => {
                warn!(error = %e, "cannot watch the directory; changes are seen on each interval only");
                (None, None)
            }
        };
        info!(
            sync = %self.status.id,
            dir = %self.dir.display(),
            prune = self.opts.prune,
            interval = ?interval,
            "sync started"
        );
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let woke_by_change = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => true,
            };
            if let Some(r) = rx.as_mut() {
                while r.try_recv().is_ok() {}
            }
            debug!(woke_by_change, "sync pass");
            self.pass().await;
            if let Some(w) = watch.as_mut() {
                w.refresh();
            }
        }
    }
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
            let v = if id.is_some() {
                serde_json::to_value(&statuses[0])?
            } else {
                serde_json::to_value(&statuses)?
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        StatusFormat::Text => {
            let now = now_secs();
            let text: Vec<String> = statuses.iter().map(|s| status::render(s, now)).collect();
            print!("{}", text.join("\n"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("x").is_err());
    }

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
