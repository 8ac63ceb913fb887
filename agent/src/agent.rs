//! The agent's main loop: watch etcd into the cache, reconcile when anything changes
//! (debounced) and periodically, requeue with backoff on error, report status.
//!
//! Fail static: when etcd is unreachable the watch simply goes quiet; the dataplane
//! keeps its last state and nothing is removed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_store::{Store, StoreConfig, WatchEvent, IPAM_PREFIX, RESOURCES_PREFIX};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cache::Cache;
use crate::dataplane::bird::BirdOptions;
use crate::linux::{LinuxDataplane, StoreIpam};
use crate::metrics::Metrics;
use crate::reconcile::{Reconciler, WorkloadResolver};

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
    /// Collects bursts of changes into one reconcile.
    pub debounce: Duration,
    /// dockerd and the Docker plugin (docs/docker.md); off by default.
    pub docker: crate::docker::DockerConfig,
}

impl AgentConfig {
    pub fn bird_options(&self) -> BirdOptions {
        let mut o = BirdOptions::new(self.run_dir.join("bird.conf"), self.run_dir.join("bird.ctl"));
        o.pid_file = Some(self.run_dir.join("bird.pid"));
        o.log = Some(self.run_dir.join("bird.log"));
        o.netns = self.host_netns.clone();
        o
    }
}

pub use calico_schema::AgentStatus;

pub use calico_schema::now_secs;

/// Returns free heap memory to the kernel (glibc keeps it otherwise).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Container status writes in flight at once.
const STATUS_WRITE_BATCH: usize = 32;

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
    let status_tx = Arc::new(tokio::sync::Mutex::new(AgentStatus {
        node: cfg.node.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        run_dir: cfg.run_dir.display().to_string(),
        http: cfg.http_listen.map(|a| a.to_string()),
        started: now_secs(),
        ..Default::default()
    }));
    if let Some(addr) = cfg.http_listen {
        crate::http::spawn(addr, metrics.clone(), status_tx.clone()).await?;
    }

    let Some(store) = connect(&cfg.etcd, &mut stop).await else {
        return Ok(());
    };
    info!(node = %cfg.node, "connected to etcd");
    let dp = LinuxDataplane::new(cfg.host_netns.clone(), cfg.bird_options()).await?;
    let ipam = Arc::new(calico_store::ipam::Ipam::new(store.client(), cfg.etcd.timeout));
    let docker =
        crate::docker::DockerIntegration::start(&cfg.docker, &cfg.node, cfg.host_netns.clone(), &store, ipam.clone())
            .await?;
    let ipam = docker.address_manager(StoreIpam(ipam));
    let resolver: Box<dyn WorkloadResolver> = docker.resolver();
    let mut rec = Reconciler::new(cfg.node.clone(), dp, ipam, resolver);

    let mut resources = store.watch(RESOURCES_PREFIX, 0);
    let mut ipam_watch = store.watch(IPAM_PREFIX, 0);
    let mut cache = Cache::default();
    let last_good_file = cfg.run_dir.join(LAST_GOOD_FILE);
    let mut last_good = load_last_good(&last_good_file, &mut cache);
    let mut ipam_synced = false;
    let mut res_synced = false;
    let mut dirty = false;
    let mut backoff = Duration::from_millis(100);
    let mut next_retry: Option<Instant> = None;
    let mut resync = tokio::time::interval(cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let retry_sleep = async {
            match next_retry {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(ev) = resources.next() => {
                if matches!(ev, WatchEvent::Resync { .. }) { res_synced = true; }
                dirty |= apply_partial(&mut cache, ev, RESOURCES_PREFIX);
            }
            Some(ev) = ipam_watch.next() => {
                if matches!(ev, WatchEvent::Resync { .. }) { ipam_synced = true; }
                dirty |= apply_partial(&mut cache, ev, IPAM_PREFIX);
            }
            _ = resync.tick() => {
                rec.forget_plumbing();
                dirty = true;
            }
            _ = retry_sleep => {
                next_retry = None;
                dirty = true;
            }
            _ = docker.changed() => {
                // dockerd (re)started or changed its networks: it may have rewritten
                // its iptables chains.
                rec.recheck_host();
                dirty = true;
            }
            _ = stop.changed() => break,
        }
        cache.synced = res_synced && ipam_synced;
        if !dirty || !cache.synced {
            continue;
        }
        // Debounce: let a burst of events land before computing.
        tokio::time::sleep(cfg.debounce).await;
        // Both watches: a burst of IPAM events (many Containers assigned at once) left
        // queued would cost one reconcile each, and reconciles that see no handle yet
        // ask IPAM again.
        while let Some(Some(ev)) = futures::FutureExt::now_or_never(resources.next()) {
            apply_partial(&mut cache, ev, RESOURCES_PREFIX);
        }
        while let Some(Some(ev)) = futures::FutureExt::now_or_never(ipam_watch.next()) {
            if matches!(ev, WatchEvent::Resync { .. }) {
                ipam_synced = true;
            }
            apply_partial(&mut cache, ev, IPAM_PREFIX);
        }
        dirty = false;
        let (report, changed) = rec.reconcile(&cache).await;
        let invalid = cache.invalid();
        let good = cache.last_good_of_invalid();
        if good != last_good {
            match save_last_good(&last_good_file, &good) {
                Ok(()) => last_good = good,
                Err(e) => warn!(error = %e, file = %last_good_file.display(), "could not persist the last good values"),
            }
        }
        // Status writes, several at once; after a failed batch (etcd down) the rest are
        // not tried, only remembered, so an outage costs one timeout per reconcile.
        let mut write_failed: Option<String> = None;
        let mut changed = changed.into_iter().peekable();
        while changed.peek().is_some() {
            let batch: Vec<_> = changed.by_ref().take(STATUS_WRITE_BATCH).collect();
            if write_failed.is_some() {
                for (name, _) in &batch {
                    rec.status_not_written(name);
                }
                continue;
            }
            let results = futures::future::join_all(batch.iter().map(|(name, st)| {
                let store = &store;
                async move {
                    let key = format!("status/containers/{name}");
                    match st {
                        Some(s) => store.put_json(&key, s).await.map(|_| ()),
                        None => store.delete_json(&key).await,
                    }
                }
            }))
            .await;
            for ((name, st), res) in batch.iter().zip(results) {
                if res.is_ok() {
                    docker.status_written(name, st.as_ref());
                }
                if let Err(e) = res {
                    warn!(container = %name, error = %e, "could not write status; will retry");
                    rec.status_not_written(name);
                    write_failed.get_or_insert(e.to_string());
                }
            }
        }
        let datastore_ok = {
            let mut st = status_tx.lock().await;
            st.ready = report.errors.is_empty();
            st.last_reconcile = now_secs();
            st.endpoints_programmed = report.programmed;
            st.endpoints_failed = report.failed;
            st.errors = report.errors.clone();
            st.invalid_data = invalid.iter().map(|(k, e)| format!("{k}: {e}")).collect();
            st.bird_restarts = rec.dp.bird_restarts().await;
            st.bird_pid = rec.dp.bird_pid().await;
            st.bird_adopted = rec.dp.bird_adopted().await;
            st.datastore_ok = write_failed.is_none();
            if st.datastore_ok {
                if let Err(e) = store.put_json(&format!("status/nodes/{}", cfg.node), &*st).await {
                    warn!(error = %e, "could not write agent status");
                    st.datastore_ok = false;
                }
            }
            if !st.datastore_ok {
                // Status is retried on the next reconcile; the dataplane keeps its state.
                next_retry.get_or_insert(Instant::now() + cfg.resync.min(Duration::from_secs(5)));
            }
            st.datastore_ok
        };
        metrics.observe(&report, invalid.len(), rec.dp.bird_restarts().await, datastore_ok);
        // A reconcile allocates and frees a lot at once (the rendered ruleset, its JSON);
        // give the freed pages back rather than keep them as the agent's resident size.
        trim_heap();
        if report.errors.is_empty() {
            backoff = Duration::from_millis(100);
        } else {
            next_retry = Some(Instant::now() + backoff);
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
    info!("agent stopping; the dataplane is left as it is, BIRD keeps running");
    rec.dp.detach().await;
    docker.shutdown().await;
    Ok(())
}

/// Under the run directory: for each key whose stored value is invalid, the last good
/// value the agent had, so that a restart keeps it in effect (fail static across
/// restarts) instead of acting as if the resource did not exist.
pub const LAST_GOOD_FILE: &str = "last-good.json";

fn load_last_good(path: &std::path::Path, cache: &mut Cache) -> BTreeMap<String, calico_schema::Resource> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read(path) else {
        return out;
    };
    let map: BTreeMap<String, serde_json::Value> = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, file = %path.display(), "ignoring an unreadable last-good file");
            return out;
        }
    };
    for (key, value) in map {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        match calico_store::decode_resource(&key, &bytes, 0) {
            Ok(r) => {
                info!(%key, "keeping the last good value from the previous run until etcd has a valid one");
                cache.preload_good(key.clone(), r.clone());
                out.insert(key, r.without_version());
            }
            Err(e) => warn!(%key, error = %e, "ignoring a persisted last-good value"),
        }
    }
    out
}

fn save_last_good(path: &std::path::Path, good: &BTreeMap<String, calico_schema::Resource>) -> std::io::Result<()> {
    if good.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let map: BTreeMap<&String, serde_json::Value> = good.iter().map(|(k, r)| (k, r.to_json())).collect();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&map)?)?;
    std::fs::rename(&tmp, path)
}

/// Applies an event from a watch of one prefix. A Resync of one prefix must not wipe
/// what the other watch put in the cache, so it is replayed as puts plus deletes.
fn apply_partial(cache: &mut Cache, ev: WatchEvent, prefix: &str) -> bool {
    match ev {
        WatchEvent::Resync { items, revision } => cache.resync_prefix(prefix, items, revision),
        other => cache.apply(other),
    }
}
