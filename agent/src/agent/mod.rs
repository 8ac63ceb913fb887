//! The agent's run loop, a controller in kube-runtime's shape: `trigger` (the etcd
//! watches into the cache, the periodic resync, Docker's changes, and the debounce that
//! collects a burst into one reconcile), the reconcile itself (`crate::reconcile`),
//! `requeue` (the error policy and its backoff), and `status` (writing the
//! statuses the reconcile returns, and the agent's own). `last_good` keeps invalid
//! keys' last good values across restarts.
//!
//! Fail static: when etcd is unreachable the watch simply goes quiet; the dataplane
//! keeps its last state and nothing is removed.
//!
//! Arrows: this module wires the others and nothing imports it but `main`; `http`
//! serves what it is handed (the metrics and the shared status), `metrics` reads the
//! reconcile's `Report`, and both take the status types from `calico_schema`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_schema::{now_secs, AgentStatus, RunDir};
use calico_store::{Store, StoreConfig};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cache::Cache;
use crate::dataplane::bird::BirdOptions;
use crate::linux::{LinuxDataplane, StoreIpam};
use crate::metrics::Metrics;
use crate::reconcile::{Reconciler, WorkloadResolver};

mod last_good;
mod log_level;
mod requeue;
mod status;
mod trigger;

use last_good::LastGood;
pub use log_level::LogControl;
use requeue::{ErrorPolicy, Requeue, STATUS_RETRY_MAX};
use status::{BirdState, StatusWriter};
use trigger::{Triggers, Wake};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub etcd: StoreConfig,
    /// Run the dataplane (links, routes, nft, BIRD) in this namespace instead of the
    /// agent's own: how test hosts made of namespaces run an agent each.
    pub host_netns: Option<PathBuf>,
    /// BIRD's config, socket and pid file live here.
    pub run_dir: PathBuf,
    pub http_listen: Option<SocketAddr>,
    /// Full resync period: re-checks every workload and re-applies every artefact.
    pub resync: Duration,
    /// Collects bursts of changes into one reconcile: a change that finds the agent idle
    /// waits only a few milliseconds (`trigger::Debounce`), one within this long of the
    /// last reconcile's end waits this long.
    pub debounce: Duration,
    /// dockerd and the Docker plugin (docs/docker.md); off by default.
    pub docker: crate::docker::DockerConfig,
    /// Follow ClusterConfig's logLevel (None: the level was fixed by --log).
    pub log_control: Option<LogControl>,
}

impl AgentConfig {
    /// The files of the run directory (their names are shared with calicoctl).
    pub fn run_files(&self) -> RunDir {
        RunDir(self.run_dir.clone())
    }

    pub fn bird_options(&self) -> BirdOptions {
        let run = self.run_files();
        let mut o = BirdOptions::new(run.bird_conf(), run.bird_ctl());
        o.pid_file = Some(run.bird_pid());
        o.log = Some(run.bird_log());
        o.netns = self.host_netns.clone();
        o
    }
}

/// Reads our own table's rule counters with `nft list table inet calico` in the host
/// namespace (docs/agent.md has the cost at 1k endpoints). No table yet: none.
fn rule_counter_source(cfg: &AgentConfig) -> crate::http::CounterSource {
    use crate::dataplane::nft::{NftApplier, NftCommand, TABLE_FAMILY, TABLE_NAME};
    let nft = match &cfg.host_netns {
        Some(ns) => NftCommand::new().in_netns(ns.clone()),
        None => NftCommand::new(),
    };
    Arc::new(move || {
        let listing = nft
            .list_table_text(TABLE_FAMILY, TABLE_NAME)
            .map_err(|e| format!("nft list table inet {TABLE_NAME}: {e}"))?;
        Ok(listing
            .map(|l| calico_render::nft::rule_counters(&l))
            .unwrap_or_default())
    })
}

/// Returns free heap memory to the kernel (glibc keeps it otherwise).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Connects to etcd, retrying with backoff until it answers or `stop` fires.
async fn connect(cfg: &StoreConfig, stop: &mut watch::Receiver<bool>) -> Option<Store> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Store::connect(cfg).await {
            Ok(s) => return Some(s),
            Err(e) => warn!(error = %e, "etcd not reachable yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return None,
        }
        // Capped low: connecting is cheap, and a returning etcd should be noticed soon.
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Runs the agent until `stop` becomes true.
pub async fn run(cfg: AgentConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.run_dir)?;
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(tokio::sync::Mutex::new(AgentStatus {
        node: cfg.node.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        run_dir: cfg.run_dir.display().to_string(),
        http: cfg.http_listen.map(|a| a.to_string()),
        started: now_secs(),
        ..Default::default()
    }));
    if let Some(addr) = cfg.http_listen {
        crate::http::spawn(addr, metrics.clone(), shared.clone(), Some(rule_counter_source(&cfg))).await?;
    }

    let Some(store) = connect(&cfg.etcd, &mut stop).await else {
        return Ok(());
    };
    info!(node = %cfg.node, "connected to etcd");
    let dp = LinuxDataplane::new(cfg.host_netns.clone(), cfg.bird_options(), cfg.run_files().nft_file()).await?;
    let ipam = Arc::new(calico_store::ipam::Ipam::new(store.client(), cfg.etcd.timeout));
    let docker =
        crate::docker::DockerIntegration::start(&cfg.docker, &cfg.node, cfg.host_netns.clone(), &store, ipam.clone())
            .await?;
    let ipam = docker.address_manager(StoreIpam(ipam));
    let resolver: Box<dyn WorkloadResolver> = docker.resolver();
    let mut rec = Reconciler::new(cfg.node.clone(), dp, ipam, resolver);

    let mut triggers = Triggers::start(&store, cfg.resync, cfg.debounce);
    let writer = StatusWriter::new(store, cfg.node.clone(), shared);
    let mut cache = Cache::default();
    let mut last_good = LastGood::load(&cfg.run_files(), &mut cache);
    let mut requeue = Requeue::default();
    let mut policy = ErrorPolicy::default();
    let mut dirty = false;
    // When the first watch event that changed the cache since the last reconcile arrived:
    // the start of calico_event_to_commit_seconds.
    let mut first_event: Option<Instant> = None;

    loop {
        match triggers.wait(&mut cache, &requeue, docker.changed(), &mut stop).await {
            Wake::Watch(changed) => {
                if changed && first_event.is_none() {
                    first_event = Some(Instant::now());
                }
                dirty |= changed;
            }
            Wake::Resync => {
                rec.forget_plumbing();
                dirty = true;
            }
            Wake::Requeue => {
                requeue.fired();
                dirty = true;
            }
            Wake::Docker => {
                rec.recheck_host();
                dirty = true;
            }
            Wake::Stop => break,
        }
        cache.synced = triggers.synced();
        if !dirty || !cache.synced {
            continue;
        }
        triggers.debounce(&mut cache).await;
        dirty = false;
        let reconcile_started = Instant::now();
        let (report, changed) = rec.reconcile(&cache).await;
        if let Some(ctl) = &cfg.log_control {
            ctl.follow(report.log_level);
        }
        tracing::debug!(
            programmed = report.programmed,
            failed = report.failed,
            errors = report.errors.len(),
            elapsed_ms = report.duration.as_millis() as u64,
            "reconciled"
        );
        // Only a change that reached the kernel is measured; an event whose reconcile
        // sent nothing (or failed) ends its measurement here too.
        if let (Some(from), Some(to)) = (first_event.take(), report.nft_committed_at) {
            metrics.observe_event_to_commit(to.saturating_duration_since(from));
            let mut phases = vec![("debounce", reconcile_started.saturating_duration_since(from))];
            phases.extend(report.to_commit.iter().copied());
            metrics.set_event_to_commit_phases(&phases);
        }
        let invalid = cache.invalid();
        last_good.persist(&cache);

        let written = writer
            .containers(changed, &|name, st| docker.status_written(name, st))
            .await;
        for name in &written.not_written {
            rec.status_not_written(name);
        }
        let bird = BirdState {
            restarts: rec.dp.bird_restarts().await,
            pid: rec.dp.bird_pid().await,
            adopted: rec.dp.bird_adopted().await,
        };
        let datastore_ok = writer
            .agent(&report, &invalid, bird, !written.failed, cache.revision)
            .await;
        if report.errors.is_empty() {
            metrics.set_enforced_revision(cache.revision);
        }
        if !datastore_ok {
            // Status is retried on the next reconcile; the dataplane keeps its state.
            requeue.at_most(cfg.resync.min(STATUS_RETRY_MAX));
        }
        metrics.observe(&report, invalid.len(), bird.restarts, datastore_ok);
        // A reconcile allocates and frees a lot at once (the rendered ruleset, its JSON);
        // give the freed pages back rather than keep them as the agent's resident size.
        trim_heap();
        requeue.schedule(policy.action(!report.errors.is_empty()));
        // What arrived while this ran is a burst: the next wake waits the whole window.
        triggers.reconciled();
    }
    info!("agent stopping; the dataplane is left as it is, BIRD keeps running");
    rec.dp.detach().await;
    docker.shutdown().await;
    Ok(())
}
