//! The level-triggered reconcile: from the cache (what should be) to the dataplane (what
//! is), idempotently, every time anything changes and periodically.
//!
//! Calculation and side effects are kept apart: [`plan`] is pure (cache in, desired
//! workloads, ruleset, routes, bird.conf and statuses out); [`Reconciler::reconcile`]
//! makes it so through the small [`Dataplane`] and [`AddressManager`] traits, which the
//! tests replace with fakes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use calico_render::{Delta, NftTable, NodeView, RouteSpec};
use calico_schema::{Container, ContainerStatus, EndpointState, IpPool, Resource};
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::cache::Cache;

/// A failure of one dataplane or IPAM step, with what it was doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl StepError {
    pub fn wrap(what: &str, e: impl std::fmt::Display) -> StepError {
        StepError(format!("{what}: {e}"))
    }
}

/// One workload's desired plumbing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWorkload {
    pub name: String,
    pub host_ifname: String,
    /// The workload's namespace; `None` when Docker plumbs it (libnetwork endpoints):
    /// then only the host side is ours.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    pub mtu: u32,
}

/// The side effects the reconcile needs. Each call is idempotent.
pub trait Dataplane: Send + Sync {
    fn setup_workload(&self, w: &PlannedWorkload) -> impl Future<Output = Result<(), StepError>> + Send;
    fn teardown_workload(&self, host_ifname: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Host-side interfaces with our prefix that exist now.
    fn list_workloads(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StepError>> + Send;
    /// Commits one nftables batch (nft's JSON) as one transaction.
    fn apply_nft(&self, json: &[u8]) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Keeps the whole ruleset as last committed where people and `calicoctl diags` read
    /// it (replaced by rename). A fake dataplane keeps nothing.
    fn write_nft_file(&self, _json: &[u8]) -> impl Future<Output = Result<(), StepError>> + Send {
        async { Ok(()) }
    }
    fn apply_routes(&self, routes: &[RouteSpec]) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Checks, installs and activates bird.conf.
    fn apply_bird(&self, conf: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// A fingerprint of our nftables table as the kernel has it now
    /// (`dataplane::nft::fingerprint`), `None` when it cannot be read back (then the
    /// periodic check loads the table whole, as a fake dataplane always does).
    fn nft_fingerprint(&self) -> impl Future<Output = Result<Option<u64>, StepError>> + Send {
        async { Ok(None) }
    }
    /// Host-wide settings workloads need outside our table: IPv4 forwarding and the
    /// iptables FORWARD accept chain (`calico_render::iptables`). Checked on the first
    /// reconcile, on every resync and whenever dockerd says something happened.
    fn ensure_host(&self, _interface_prefix: &str) -> impl Future<Output = Result<(), StepError>> + Send {
        async { Ok(()) }
    }
}

/// IPAM operations the reconcile needs.
pub trait AddressManager: Send + Sync {
    fn auto_assign(
        &self,
        handle: &str,
        node: &str,
        pools: &[IpPool],
    ) -> impl Future<Output = Result<Vec<IpAddr>, StepError>> + Send;
    fn assign_ips(
        &self,
        handle: &str,
        node: &str,
        ips: &[IpAddr],
        pools: &[IpPool],
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    fn release(&self, handle: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// A handle with no Container that must not be released yet: the Docker plugin
    /// assigns an address before Docker says which container it is for.
    fn spare(&self, _handle: &str) -> bool {
        false
    }
}

/// Where a Container's network namespace is, for Containers named by Docker name/ID.
pub trait WorkloadResolver: Send + Sync {
    /// `Ok(Some(path))`: plumb into it; `Ok(None)`: Docker plumbs it (libnetwork);
    /// `Err`: not resolvable now (not running, unknown), reported in status.
    fn resolve(&self, c: &Container) -> Result<Option<PathBuf>, String>;
}

impl WorkloadResolver for Box<dyn WorkloadResolver> {
    fn resolve(&self, c: &Container) -> Result<Option<PathBuf>, String> {
        (**self).resolve(c)
    }
}

/// Resolves only `netns:` Containers; Docker ones are reported as needing Docker.
pub struct NetnsOnly;

impl WorkloadResolver for NetnsOnly {
    fn resolve(&self, c: &Container) -> Result<Option<PathBuf>, String> {
        match (&c.spec.netns, &c.spec.container) {
            (Some(ns), _) => Ok(Some(PathBuf::from(ns))),
            (None, Some(d)) => Err(format!("Docker container '{d}': this agent has no Docker connection")),
            (None, None) => Err("neither netns nor container given".into()),
        }
    }
}

/// The outcome of one reconcile, for status, metrics and logs.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub programmed: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub nft_rules: usize,
    /// Workloads set up (or checked again) by this reconcile.
    pub plumbed: usize,
    pub duration: Duration,
    pub ipam_duration: Duration,
    pub plumb_duration: Duration,
    pub nft_duration: Duration,
    /// nftables transactions sent to the kernel by this reconcile (0, 1, or 2 when a
    /// delta failed and the table was then loaded whole).
    pub nft_loads: usize,
    /// Of those, whole-table loads (the rest were deltas).
    pub nft_whole_loads: usize,
}

/// How many workload setups run at once.
pub const PLUMB_CONCURRENCY: usize = 16;

pub use calico_store::ipam::container_handle;

pub struct Reconciler<D, A, R> {
    pub node: String,
    pub dp: D,
    pub ipam: A,
    pub resolver: R,
    /// Explicit addresses already claimed in IPAM, per Container, so IPAM is asked once.
    claimed: BTreeMap<String, Vec<IpAddr>>,
    /// Addresses IPAM assigned to Containers whose handle the cache has not seen yet.
    assigned: BTreeMap<String, Vec<IpAddr>>,
    /// What was set up, per host interface, so unchanged workloads are not re-plumbed.
    plumbed: BTreeMap<String, PlannedWorkload>,
    last_bird: Option<String>,
    /// The table as last committed to the kernel, which the next delta starts from;
    /// `None` before the first load and after a failed transaction (the next load is
    /// then whole).
    committed: Option<NftTable>,
    /// Counts commits, so a read-back fingerprint names the table it was taken of.
    nft_generation: u64,
    /// The periodic check is due: read our table back and compare.
    nft_verify: bool,
    /// (generation, fingerprint of the kernel's table read back right after that
    /// generation was loaded whole): what the periodic check compares against.
    nft_fingerprint: Option<(u64, u64)>,
    last_statuses: BTreeMap<String, ContainerStatus>,
    /// The host-wide settings ([`Dataplane::ensure_host`]) were checked since the last
    /// resync or Docker event.
    host_checked: bool,
}

impl<D: Dataplane, A: AddressManager, R: WorkloadResolver> Reconciler<D, A, R> {
    pub fn new(node: impl Into<String>, dp: D, ipam: A, resolver: R) -> Self {
        Reconciler {
            node: node.into(),
            dp,
            ipam,
            resolver,
            claimed: BTreeMap::new(),
            assigned: BTreeMap::new(),
            plumbed: BTreeMap::new(),
            last_bird: None,
            committed: None,
            nft_generation: 0,
            nft_verify: false,
            nft_fingerprint: None,
            last_statuses: BTreeMap::new(),
            host_checked: false,
        }
    }

    /// Check the host-wide settings again on the next reconcile (dockerd restarted or
    /// changed something: it rewrites its iptables chains).
    pub fn recheck_host(&mut self) {
        self.host_checked = false;
    }

    /// Forget what was plumbed, so the next reconcile checks every workload again
    /// (periodic full resync: repairs what was changed behind the agent's back).
    pub fn forget_plumbing(&mut self) {
        self.plumbed.clear();
        self.last_bird = None;
        self.nft_verify = true;
        self.host_checked = false;
    }

    /// Renders the table and makes the kernel's equal to it with the smallest
    /// transaction: nothing when it is unchanged, the delta from the table last
    /// committed, or a whole load at start, after a failed transaction, and when the
    /// periodic check cannot show that the kernel still holds what was committed.
    async fn nft_step(&mut self, view: &NodeView, report: &mut Report) {
        let table = calico_render::render_nft(view);
        report.nft_rules = table.counts().rules;
        let verifying = std::mem::take(&mut self.nft_verify);
        let t = Instant::now();
        let delta = match &self.committed {
            Some(old) => table.delta(old),
            None => Delta::Whole("no table committed yet"),
        };
        // Whether a whole load is needed (and why); whether a delta was committed.
        let mut patched = false;
        let whole = match delta {
            Delta::Unchanged if !verifying => None,
            // The periodic check: an unchanged table is sent again only when the
            // kernel's is not provably what was committed (changed behind our back,
            // gone, or changed by deltas since the last read-back), so counters and the
            // table survive a resync that finds nothing to do.
            Delta::Unchanged => {
                let now = self.dp.nft_fingerprint().await;
                match (self.nft_fingerprint, now) {
                    (Some((g, want)), Ok(Some(now))) if g == self.nft_generation && want == now => None,
                    (Some((g, _)), Ok(Some(_))) if g == self.nft_generation => {
                        Some("our nftables table was changed behind the agent's back")
                    }
                    (Some(_), Ok(None)) => Some("our nftables table is gone"),
                    (_, Err(e)) => {
                        warn!(error = %e, "could not read our nftables table back");
                        Some("the table could not be read back")
                    }
                    _ => Some("the table was changed by deltas since it was last read back"),
                }
            }
            Delta::Patch(batch) => {
                let json = batch.to_json_bytes();
                report.nft_loads += 1;
                match self.dp.apply_nft(&json).await {
                    Ok(()) => {
                        debug!(
                            commands = batch.items.len(),
                            bytes = json.len(),
                            "nftables delta committed"
                        );
                        patched = true;
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, "nftables delta failed; loading the table whole");
                        Some("a delta failed")
                    }
                }
            }
            Delta::Whole(why) => Some(why),
        };
        let committed = match whole {
            None => patched,
            Some(why) => {
                info!(reason = why, "loading the nftables table whole");
                let json = table.to_batch().to_json_bytes();
                report.nft_loads += 1;
                report.nft_whole_loads += 1;
                match self.dp.apply_nft(&json).await {
                    Ok(()) => {
                        self.nft_generation += 1;
                        // Read back after a check's load only: at scale a listing costs
                        // about what a load does, and a change-driven load is read back
                        // at the next check (which then loads once more).
                        if verifying || self.nft_fingerprint.is_none() {
                            self.nft_fingerprint = match self.dp.nft_fingerprint().await {
                                Ok(Some(f)) => Some((self.nft_generation, f)),
                                _ => None,
                            };
                        }
                        true
                    }
                    Err(e) => {
                        self.committed = None;
                        self.nft_fingerprint = None;
                        report.errors.push(format!("nftables: {e}"));
                        report.nft_duration = t.elapsed();
                        return;
                    }
                }
            }
        };
        if committed {
            if whole.is_none() {
                self.nft_generation += 1;
            }
            if let Err(e) = self.dp.write_nft_file(&table.to_batch().to_json_bytes()).await {
                warn!(error = %e, "could not write the nftables file");
            }
            self.committed = Some(table);
        }
        report.nft_duration = t.elapsed();
    }

    /// Makes the dataplane match the cache. Returns the report and the Container
    /// statuses that changed (to be written to etcd by the caller).
    pub async fn reconcile(&mut self, cache: &Cache) -> (Report, Vec<(String, Option<ContainerStatus>)>) {
        let started = Instant::now();
        let mut report = Report::default();
        let resources = cache.resources();
        let config = cluster_config(&resources);
        let prefix = config.interface_prefix().to_string();
        let pools: Vec<IpPool> = resources
            .iter()
            .filter_map(|r| {
                if let Resource::IpPool(p) = r {
                    Some(p.clone())
                } else {
                    None
                }
            })
            .collect();
        let containers: Vec<&Container> = resources
            .iter()
            .filter_map(|r| if let Resource::Container(c) = r { Some(c) } else { None })
            .collect();
        let mut statuses: BTreeMap<String, ContainerStatus> = BTreeMap::new();

        // 0. Host-wide settings. A failure is reported and retried, but does not stop
        //    the rest: workloads on hosts that need no iptables change still work.
        if !self.host_checked {
            match self.dp.ensure_host(&prefix).await {
                Ok(()) => self.host_checked = true,
                Err(e) => report.errors.push(format!("host settings: {e}")),
            }
        }

        // 1. Release the addresses of this node's Containers that are gone, first, so
        //    that what they free is available to the assignments below.
        if cache.synced {
            let live: BTreeSet<String> = containers.iter().map(|c| container_handle(&c.metadata.name)).collect();
            let stale: Vec<String> = cache
                .handles()
                .filter(|(h, rec)| h.starts_with("container/") && rec.node == self.node && !live.contains(h))
                .filter(|(h, _)| !self.ipam.spare(h))
                .map(|(h, _)| h)
                .collect();
            for h in stale {
                match self.ipam.release(&h).await {
                    Ok(()) => info!(handle = %h, "released the addresses of a deleted Container"),
                    Err(e) => report.errors.push(format!("release {h}: {e}")),
                }
            }
            let names: BTreeSet<&String> = containers.iter().map(|c| &c.metadata.name).collect();
            self.claimed.retain(|n, _| names.contains(n));
            self.assigned.retain(|n, _| names.contains(n));
        }

        // 2. Addresses: explicit ones claimed, the others assigned; every Container's
        //    addresses (cluster-wide) feed the group and selector sets.
        let ipam_started = Instant::now();
        let mut addrs: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for c in &containers {
            let name = c.metadata.name.clone();
            let handle = container_handle(&name);
            let local = c.spec.node == self.node;
            let known = cache.handle_ips(&handle).cloned();
            // IPAM already records these addresses for this Container on this node (a
            // restarted agent, or a claim made by an earlier reconcile): no need to ask.
            let recorded = |ips: &Vec<IpAddr>| {
                cache
                    .handle(&handle)
                    .is_some_and(|h| h.node == self.node && ips.iter().all(|ip| h.ips.contains(ip)))
            };
            let result = match (&c.spec.ips, local) {
                (Some(ips), true) => {
                    if self.claimed.get(&name) == Some(ips) || recorded(ips) {
                        self.claimed.insert(name.clone(), ips.clone());
                        Ok(ips.clone())
                    } else {
                        match self.ipam.assign_ips(&handle, &self.node, ips, &pools).await {
                            Ok(()) => {
                                self.claimed.insert(name.clone(), ips.clone());
                                Ok(ips.clone())
                            }
                            Err(e) => Err(e.0),
                        }
                    }
                }
                (Some(ips), false) => Ok(ips.clone()),
                (None, true) => match known {
                    Some(ips) if !ips.is_empty() => {
                        self.assigned.remove(&name);
                        Ok(ips)
                    }
                    // Assigned by an earlier reconcile; the watch has not brought the
                    // handle yet.
                    _ if self.assigned.contains_key(&name) => Ok(self.assigned[&name].clone()),
                    _ => {
                        let r = self.ipam.auto_assign(&handle, &self.node, &pools).await;
                        if let Ok(ips) = &r {
                            self.assigned.insert(name.clone(), ips.clone());
                        }
                        r.map_err(|e| e.0)
                    }
                },
                (None, false) => Ok(known.unwrap_or_default()),
            };
            match result {
                Ok(ips) => {
                    addrs.insert(name, ips);
                }
                Err(e) if local => {
                    // Not plumbed (below) and so cut off; retried with backoff.
                    report.errors.push(format!("IPAM for {name}: {e}"));
                    statuses.insert(
                        name,
                        status(&self.node, "", &[], EndpointState::Error, format!("IPAM: {e}")),
                    );
                }
                Err(_) => {}
            }
        }

        report.ipam_duration = ipam_started.elapsed();

        // 3. Workloads of this node.
        let mut desired: BTreeMap<String, PlannedWorkload> = BTreeMap::new();
        for c in containers.iter().filter(|c| c.spec.node == self.node) {
            let name = &c.metadata.name;
            if statuses.contains_key(name) {
                continue;
            }
            let host_ifname = calico_render::host_iface_name(&prefix, name);
            let ips = addrs.get(name).cloned().unwrap_or_default();
            match self.resolver.resolve(c) {
                Ok(netns) => {
                    desired.insert(
                        host_ifname.clone(),
                        PlannedWorkload {
                            name: name.clone(),
                            host_ifname,
                            netns,
                            ifname: c.interface_name().to_string(),
                            ips,
                            mtu: config.mtu(),
                        },
                    );
                }
                Err(e) => {
                    statuses.insert(
                        name.clone(),
                        status(&self.node, &host_ifname, &ips, EndpointState::Error, e),
                    );
                }
            }
        }
        // What exists now. Only after a full listing may anything be removed (a
        // partial view must never remove live workloads); the listing also shows which
        // remembered plumbing vanished behind our back (a workload namespace deleted
        // takes its veth with it), which must not stay marked as good.
        let existing = if cache.synced || !self.plumbed.is_empty() {
            match self.dp.list_workloads(&prefix).await {
                Ok(l) => Some(l.into_iter().collect::<BTreeSet<String>>()),
                Err(e) => {
                    report.errors.push(format!("list workloads: {e}"));
                    None
                }
            }
        } else {
            None
        };
        if let Some(existing) = &existing {
            self.plumbed.retain(|ifname, w| {
                let present = existing.contains(ifname) || w.netns.is_none();
                if !present {
                    info!(%ifname, workload = %w.name, "workload interface vanished; plumbing it again");
                }
                present
            });
        }
        let mut to_plumb = Vec::new();
        for (ifname, w) in &desired {
            if self.plumbed.get(ifname) == Some(w) {
                statuses.insert(
                    w.name.clone(),
                    status(&self.node, ifname, &w.ips, EndpointState::Programmed, String::new()),
                );
            } else {
                to_plumb.push(w);
            }
        }
        // Several at once: each setup mostly waits on the kernel (netlink round trips,
        // namespace threads), so a full resync of many workloads is not a long queue.
        let t = Instant::now();
        let dp = &self.dp;
        let results: Vec<(&PlannedWorkload, Result<(), StepError>)> = futures::stream::iter(to_plumb)
            .map(|w| async move { (w, dp.setup_workload(w).await) })
            .buffer_unordered(PLUMB_CONCURRENCY)
            .collect()
            .await;
        report.plumb_duration = t.elapsed();
        report.plumbed = results.len();
        for (w, result) in results {
            let ifname = &w.host_ifname;
            match result {
                Ok(()) => {
                    self.plumbed.insert(ifname.clone(), w.clone());
                    statuses.insert(
                        w.name.clone(),
                        status(&self.node, ifname, &w.ips, EndpointState::Programmed, String::new()),
                    );
                }
                Err(e) => {
                    self.plumbed.remove(ifname);
                    statuses.insert(
                        w.name.clone(),
                        status(&self.node, ifname, &w.ips, EndpointState::Error, e.0.clone()),
                    );
                    report.errors.push(format!("workload {}: {e}", w.name));
                }
            }
        }
        // Interfaces with our prefix that nothing wants any more. Only after a full
        // listing: a partial view must never remove live workloads.
        if let (true, Some(existing)) = (cache.synced, &existing) {
            for ifname in existing.iter().filter(|i| !desired.contains_key(*i)) {
                match self.dp.teardown_workload(ifname).await {
                    Ok(()) => {
                        info!(%ifname, "removed a workload interface nothing wants");
                        self.plumbed.remove(ifname);
                    }
                    Err(e) => report.errors.push(format!("teardown {ifname}: {e}")),
                }
            }
        }
        self.plumbed.retain(|i, _| desired.contains_key(i));

        // 4. Render and apply the three artefacts. Only programmed workloads are
        //    endpoints here (dispatch entries, host routes): a local Container that
        //    failed (IPAM, plumbing, not resolvable) is left out of the view entirely,
        //    so it stays cut off (fail closed) and nothing routes to its half-made
        //    plumbing. (Without an address entry the view would fall back to the
        //    spec's ips and program it anyway.)
        let cut_off: BTreeSet<String> = containers
            .iter()
            .filter(|c| c.spec.node == self.node)
            .map(|c| &c.metadata.name)
            .filter(|n| !statuses.get(*n).is_some_and(|s| s.state == EndpointState::Programmed))
            .cloned()
            .collect();
        let programmed: BTreeMap<String, Vec<IpAddr>> =
            addrs.into_iter().filter(|(n, _)| !cut_off.contains(n)).collect();
        let resources: Vec<Resource> = if cut_off.is_empty() {
            resources
        } else {
            resources
                .into_iter()
                .filter(|r| !matches!(r, Resource::Container(c) if cut_off.contains(&c.metadata.name)))
                .collect()
        };
        let blocks = cache.node_blocks(&self.node);
        let view = NodeView::build(&self.node, &resources, &programmed, &blocks);
        self.nft_step(&view, &mut report).await;
        let routes = calico_render::render_routes(&view);
        if let Err(e) = self.dp.apply_routes(&routes).await {
            report.errors.push(format!("routes: {e}"));
        }
        match calico_render::render_bird(&view) {
            Ok(bird) if self.last_bird.as_deref() != Some(bird.as_str()) => match self.dp.apply_bird(&bird).await {
                Ok(()) => self.last_bird = Some(bird),
                Err(e) => report.errors.push(format!("bird: {e}")),
            },
            Ok(_) => {}
            Err(e) => report.errors.push(format!("bird.conf: {e}")),
        }

        // 5. Statuses that changed (ignoring the timestamp).
        let mut changed = Vec::new();
        for (name, st) in &statuses {
            let same = self.last_statuses.get(name).is_some_and(|old| {
                ContainerStatus {
                    updated: st.updated,
                    ..old.clone()
                } == *st
            });
            if !same {
                changed.push((name.clone(), Some(st.clone())));
            }
        }
        for name in self.last_statuses.keys() {
            if !statuses.contains_key(name) {
                changed.push((name.clone(), None));
            }
        }
        self.last_statuses = statuses;
        report.programmed = self
            .last_statuses
            .values()
            .filter(|s| s.state == EndpointState::Programmed)
            .count();
        report.failed = self
            .last_statuses
            .values()
            .filter(|s| s.state == EndpointState::Error)
            .count();
        report.duration = started.elapsed();
        if report.duration > Duration::from_secs(1) {
            info!(
                took = ?report.duration,
                ipam = ?report.ipam_duration,
                plumbing = ?report.plumb_duration,
                plumbed = report.plumbed,
                nft = ?report.nft_duration,
                endpoints = report.programmed,
                "slow reconcile"
            );
        } else {
            debug!(?report, "reconciled");
        }
        if !report.errors.is_empty() {
            warn!(errors = ?report.errors, "reconcile finished with errors; will retry");
        }
        (report, changed)
    }

    /// Acknowledges that a status write failed, so it is retried next time.
    pub fn status_not_written(&mut self, name: &str) {
        self.last_statuses.remove(name);
    }
}

fn status(node: &str, ifname: &str, ips: &[IpAddr], state: EndpointState, message: String) -> ContainerStatus {
    ContainerStatus {
        node: node.to_string(),
        host_interface: ifname.to_string(),
        ips: ips.to_vec(),
        state,
        message,
        updated: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

pub fn cluster_config(resources: &[Resource]) -> calico_schema::ClusterConfigSpec {
    resources
        .iter()
        .find_map(|r| match r {
            Resource::ClusterConfig(c) if c.metadata.name == "default" => Some(c.spec.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! The reconcile against fakes: what is marked programmed, what is reported, what
    //! is retried. No root, no etcd.

    use std::sync::Mutex;

    use calico_store::WatchEvent;

    use super::*;

    #[derive(Default)]
    struct FakeDp {
        /// Host interfaces that exist.
        ifaces: Mutex<BTreeSet<String>>,
        /// Container names whose setup fails.
        fail: Mutex<BTreeSet<String>>,
        setups: Mutex<Vec<String>>,
        routes: Mutex<Vec<RouteSpec>>,
        nft: Mutex<String>,
        nft_loads: Mutex<usize>,
        /// Interface prefixes `ensure_host` was called with.
        host_checks: Mutex<Vec<String>>,
        host_fails: Mutex<bool>,
        /// What `nft_fingerprint` reports; `None`: cannot read back.
        fingerprint: Mutex<Option<u64>>,
    }

    impl Dataplane for FakeDp {
        async fn setup_workload(&self, w: &PlannedWorkload) -> Result<(), StepError> {
            self.setups.lock().unwrap().push(w.name.clone());
            if self.fail.lock().unwrap().contains(&w.name) {
                // A half-made pair is left behind, as a real failure might.
                self.ifaces.lock().unwrap().insert(w.host_ifname.clone());
                return Err(StepError(format!(
                    "plumb {}: open network namespace: No such file",
                    w.name
                )));
            }
            self.ifaces.lock().unwrap().insert(w.host_ifname.clone());
            Ok(())
        }
        async fn teardown_workload(&self, host_ifname: &str) -> Result<(), StepError> {
            self.ifaces.lock().unwrap().remove(host_ifname);
            Ok(())
        }
        async fn list_workloads(&self, prefix: &str) -> Result<Vec<String>, StepError> {
            Ok(self
                .ifaces
                .lock()
                .unwrap()
                .iter()
                .filter(|i| i.starts_with(prefix))
                .cloned()
                .collect())
        }
        async fn apply_nft(&self, json: &[u8]) -> Result<(), StepError> {
            *self.nft.lock().unwrap() = String::from_utf8(json.to_vec()).unwrap();
            *self.nft_loads.lock().unwrap() += 1;
            Ok(())
        }
        async fn apply_routes(&self, routes: &[RouteSpec]) -> Result<(), StepError> {
            *self.routes.lock().unwrap() = routes.to_vec();
            Ok(())
        }
        async fn apply_bird(&self, _conf: &str) -> Result<(), StepError> {
            Ok(())
        }
        async fn nft_fingerprint(&self) -> Result<Option<u64>, StepError> {
            Ok(*self.fingerprint.lock().unwrap())
        }
        async fn ensure_host(&self, prefix: &str) -> Result<(), StepError> {
            self.host_checks.lock().unwrap().push(prefix.to_string());
            if *self.host_fails.lock().unwrap() {
                return Err(StepError("iptables-restore: permission denied".into()));
            }
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeIpam {
        fail: Mutex<Option<String>>,
        next: Mutex<u8>,
        claims: Mutex<usize>,
    }

    impl AddressManager for FakeIpam {
        async fn auto_assign(&self, _h: &str, _n: &str, _p: &[IpPool]) -> Result<Vec<IpAddr>, StepError> {
            if let Some(e) = self.fail.lock().unwrap().clone() {
                return Err(StepError(e));
            }
            let mut n = self.next.lock().unwrap();
            *n += 1;
            Ok(vec![IpAddr::from([10, 65, 0, *n])])
        }
        async fn assign_ips(&self, _h: &str, _n: &str, _ips: &[IpAddr], _p: &[IpPool]) -> Result<(), StepError> {
            *self.claims.lock().unwrap() += 1;
            Ok(())
        }
        async fn release(&self, _h: &str) -> Result<(), StepError> {
            Ok(())
        }
    }

    fn cache(docs: &[(&str, String)]) -> Cache {
        let mut items = vec![
            (
                "/calico/v1/resources/ippools/p".to_string(),
                br#"{"apiVersion":"calico/v1","kind":"IPPool","metadata":{"name":"p"},"spec":{"cidr":"10.65.0.0/16"}}"#
                    .to_vec(),
                2,
            ),
            (
                "/calico/v1/resources/nodes/h1".to_string(),
                br#"{"apiVersion":"calico/v1","kind":"Node","metadata":{"name":"h1"},"spec":{"ipv4":"172.17.8.101/24"}}"#
                    .to_vec(),
                2,
            ),
        ];
        for (k, v) in docs {
            items.push((k.to_string(), v.as_bytes().to_vec(), 3));
        }
        let mut c = Cache::default();
        c.apply(WatchEvent::Resync { items, revision: 10 });
        c
    }

    fn container(name: &str, ips: Option<&str>) -> (&'static str, String) {
        let key: &'static str = Box::leak(format!("/calico/v1/resources/containers/{name}").into_boxed_str());
        let ips = ips.map(|i| format!(r#","ips":["{i}"]"#)).unwrap_or_default();
        (
            key,
            format!(
                r#"{{"apiVersion":"calico/v1","kind":"Container","metadata":{{"name":"{name}"}},"spec":{{"node":"h1","netns":"/run/netns/{name}"{ips}}}}}"#
            ),
        )
    }

    fn rec() -> Reconciler<FakeDp, FakeIpam, NetnsOnly> {
        Reconciler::new("h1", FakeDp::default(), FakeIpam::default(), NetnsOnly)
    }

    fn state_of(changed: &[(String, Option<ContainerStatus>)], name: &str) -> Option<ContainerStatus> {
        changed.iter().find(|(n, _)| n == name).and_then(|(_, s)| s.clone())
    }

    #[tokio::test]
    async fn a_resync_that_finds_the_table_as_loaded_sends_nothing() {
        let mut r = rec();
        *r.dp.fingerprint.lock().unwrap() = Some(1);
        let c = cache(&[container("x", Some("10.65.0.9"))]);
        let (report, _) = r.reconcile(&c).await;
        assert_eq!((report.nft_loads, *r.dp.nft_loads.lock().unwrap()), (1, 1));
        // Resyncs with the kernel's table as it was after the load: nothing sent.
        for _ in 0..3 {
            r.forget_plumbing();
            let (report, _) = r.reconcile(&c).await;
            assert_eq!(report.nft_loads, 0);
        }
        assert_eq!(*r.dp.nft_loads.lock().unwrap(), 1);
        // Someone changed our table: the next check loads it whole, once.
        *r.dp.fingerprint.lock().unwrap() = Some(2);
        r.reconcile(&c).await;
        assert_eq!(*r.dp.nft_loads.lock().unwrap(), 1, "only the periodic check reads back");
        r.forget_plumbing();
        r.reconcile(&c).await;
        assert_eq!(*r.dp.nft_loads.lock().unwrap(), 2);
        r.forget_plumbing();
        r.reconcile(&c).await;
        assert_eq!(*r.dp.nft_loads.lock().unwrap(), 2);
        // A changed ruleset is loaded at once; the next check loads it once more and
        // reads it back, and later checks send nothing.
        let c2 = cache(&[container("x", Some("10.65.0.9")), container("y", Some("10.65.0.8"))]);
        r.reconcile(&c2).await;
        assert_eq!(*r.dp.nft_loads.lock().unwrap(), 3);
        for want in [4, 4] {
            r.forget_plumbing();
            r.reconcile(&c2).await;
            assert_eq!(*r.dp.nft_loads.lock().unwrap(), want);
        }
        // Without read-back (the table cannot be listed), every check loads.
        *r.dp.fingerprint.lock().unwrap() = None;
        r.forget_plumbing();
        r.reconcile(&c2).await;
        assert_eq!(*r.dp.nft_loads.lock().unwrap(), 5);
    }

    #[tokio::test]
    async fn host_settings_are_checked_once_then_on_resync_and_docker_events() {
        let mut r = rec();
        let c = cache(&[container("x", Some("10.65.0.9"))]);
        r.reconcile(&c).await;
        r.reconcile(&c).await;
        assert_eq!(*r.dp.host_checks.lock().unwrap(), vec!["cali".to_string()]);
        r.forget_plumbing();
        r.reconcile(&c).await;
        r.recheck_host();
        r.reconcile(&c).await;
        assert_eq!(r.dp.host_checks.lock().unwrap().len(), 3);
        // A failure is an error (so the loop retries) and does not stop the workloads.
        *r.dp.host_fails.lock().unwrap() = true;
        r.recheck_host();
        let (report, _) = r.reconcile(&c).await;
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains("host settings") && e.contains("permission denied")),
            "{:?}",
            report.errors
        );
        assert_eq!(report.programmed, 1);
        *r.dp.host_fails.lock().unwrap() = false;
        let (report, _) = r.reconcile(&c).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(r.dp.host_checks.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn failed_setup_is_an_error_and_cut_off_then_retried() {
        let mut r = rec();
        r.dp.fail.lock().unwrap().insert("x".into());
        let c = cache(&[container("x", Some("10.65.0.9")), container("y", Some("10.65.0.8"))]);
        let (report, changed) = r.reconcile(&c).await;
        let x = state_of(&changed, "x").expect("status for x");
        assert_eq!(x.state, EndpointState::Error);
        assert!(x.message.contains("No such file"), "{}", x.message);
        assert_eq!(state_of(&changed, "y").unwrap().state, EndpointState::Programmed);
        assert_eq!((report.programmed, report.failed), (1, 1));
        assert!(!report.errors.is_empty(), "a failure must be retried");
        // Cut off: no route and no dispatch to x's interface, although a half-made
        // interface exists.
        let xif = calico_render::host_iface_name("cali", "x");
        let routes = r.dp.routes.lock().unwrap().clone();
        assert!(
            !routes.iter().any(|rt| rt.dst.to_string() == "10.65.0.9/32"),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|rt| rt.dst.to_string() == "10.65.0.8/32"),
            "{routes:?}"
        );
        assert!(!r.dp.nft.lock().unwrap().contains(&xif));
        assert!(
            r.dp.ifaces.lock().unwrap().contains(&xif),
            "the half-made pair is kept for the retry"
        );

        // The retry after the cause is gone programs it.
        r.dp.fail.lock().unwrap().clear();
        let (report, changed) = r.reconcile(&c).await;
        assert_eq!(state_of(&changed, "x").unwrap().state, EndpointState::Programmed);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(r.dp.nft.lock().unwrap().contains(&xif));
        assert!(r
            .dp
            .routes
            .lock()
            .unwrap()
            .iter()
            .any(|rt| rt.dst.to_string() == "10.65.0.9/32"));
    }

    #[tokio::test]
    async fn vanished_plumbing_is_not_kept_as_good() {
        let mut r = rec();
        let c = cache(&[container("x", Some("10.65.0.9"))]);
        r.reconcile(&c).await;
        r.reconcile(&c).await;
        assert_eq!(
            r.dp.setups.lock().unwrap().len(),
            1,
            "unchanged workloads are not re-plumbed"
        );
        // The workload's namespace went away, and its veth with it.
        r.dp.ifaces.lock().unwrap().clear();
        r.dp.fail.lock().unwrap().insert("x".into());
        let (report, changed) = r.reconcile(&c).await;
        assert_eq!(
            r.dp.setups.lock().unwrap().len(),
            2,
            "vanished plumbing is set up again"
        );
        assert_eq!(state_of(&changed, "x").unwrap().state, EndpointState::Error);
        assert_eq!(report.programmed, 0);
        assert!(r.dp.routes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn ipam_errors_show_in_status_and_are_retried() {
        let mut r = rec();
        *r.ipam.fail.lock().unwrap() = Some("pool 10.65.0.0/16 is full".into());
        let c = cache(&[container("x", None)]);
        let (report, changed) = r.reconcile(&c).await;
        let x = state_of(&changed, "x").unwrap();
        assert_eq!(x.state, EndpointState::Error);
        assert!(
            x.message.starts_with("IPAM: ") && x.message.contains("is full"),
            "{}",
            x.message
        );
        assert!(report.errors.iter().any(|e| e.contains("IPAM")), "{:?}", report.errors);
        assert!(
            r.dp.setups.lock().unwrap().is_empty(),
            "nothing plumbed without an address"
        );
        *r.ipam.fail.lock().unwrap() = None;
        let (_, changed) = r.reconcile(&c).await;
        let x = state_of(&changed, "x").unwrap();
        assert_eq!(x.state, EndpointState::Programmed);
        assert_eq!(x.ips, vec![IpAddr::from([10, 65, 0, 1])]);
    }

    #[tokio::test]
    async fn a_thousand_endpoints_with_known_handles_need_no_ipam_calls() {
        let mut r = rec();
        let mut docs = Vec::new();
        for i in 0..1000 {
            let n = format!("m{i:04}");
            docs.push(container(&n, None));
            let k: &'static str = Box::leak(format!("/calico/v1/ipam/handles/container%2F{n}").into_boxed_str());
            docs.push((
                k,
                format!(r#"{{"ips":["10.65.{}.{}"],"node":"h1"}}"#, i / 200, i % 200 + 1),
            ));
        }
        let c = cache(&docs);
        let (report, _) = r.reconcile(&c).await;
        assert_eq!((report.programmed, report.plumbed), (1000, 1000));
        let (report, _) = r.reconcile(&c).await;
        assert_eq!(
            (report.programmed, report.plumbed),
            (1000, 0),
            "unchanged workloads are not re-plumbed"
        );
        assert_eq!(
            *r.ipam.next.lock().unwrap(),
            0,
            "IPAM was asked for addresses it had recorded"
        );
    }

    #[tokio::test]
    async fn explicit_ips_already_recorded_are_not_claimed_again() {
        let mut r = rec();
        let handle = (
            "/calico/v1/ipam/handles/container%2Fx",
            r#"{"ips":["10.65.0.9"],"node":"h1"}"#.to_string(),
        );
        let c = cache(&[container("x", Some("10.65.0.9")), handle]);
        let (report, _) = r.reconcile(&c).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            *r.ipam.claims.lock().unwrap(),
            0,
            "a restarted agent trusts IPAM's record"
        );
        let c = cache(&[container("y", Some("10.65.0.7"))]);
        r.reconcile(&c).await;
        assert_eq!(*r.ipam.claims.lock().unwrap(), 1);
    }
}
