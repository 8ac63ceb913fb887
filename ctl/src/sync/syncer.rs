//! The `Syncer`: one sync directory's passes (read a revision, plan, apply it as one
//! `Store::transact` step, restore drift, write the status), and the last good revision
//! it keeps live while the directory's content is refused.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use calico_schema::{Diagnostic, Loaded};
use calico_store::{Step, Store, StoreError};
use tracing::{debug, error, info, warn};

use super::plan::{self, id_of, Id, Plan, PlanOpts};
use super::source::{self, DirWatch, Snapshot};
use super::status::{now_secs, status_key, Drift, Revision, SyncError, SyncStatus, MAX_DRIFTS};
use crate::conn::store_error;

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
    pub(super) log_errors: bool,
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
            status.etcd_revision = p.etcd_revision;
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
                // The etcd revision agents must reach to enforce it: of the last pass
                // that wrote (a pass that found etcd as declared changes nothing).
                if !applied.plan.is_empty() || self.status.etcd_revision.is_none() {
                    self.status.etcd_revision = Some(applied.revision);
                }
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
