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

use calico_render::{NodeView, RouteSpec};
use calico_schema::{Container, ContainerStatus, EndpointState, IpPool, Resource};
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
    fn apply_nft(
        &self,
        ruleset: &nftables::schema::Nftables<'static>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    fn apply_routes(&self, routes: &[RouteSpec]) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Checks, installs and activates bird.conf.
    fn apply_bird(&self, conf: &str) -> impl Future<Output = Result<(), StepError>> + Send;
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
    pub duration: Duration,
    pub nft_duration: Duration,
}

pub use calico_store::ipam::container_handle;

pub struct Reconciler<D, A, R> {
    pub node: String,
    pub dp: D,
    pub ipam: A,
    pub resolver: R,
    /// Explicit addresses already claimed in IPAM, per Container, so IPAM is asked once.
    claimed: BTreeMap<String, Vec<IpAddr>>,
    /// What was set up, per host interface, so unchanged workloads are not re-plumbed.
    plumbed: BTreeMap<String, PlannedWorkload>,
    last_bird: Option<String>,
    last_statuses: BTreeMap<String, ContainerStatus>,
}

impl<D: Dataplane, A: AddressManager, R: WorkloadResolver> Reconciler<D, A, R> {
    pub fn new(node: impl Into<String>, dp: D, ipam: A, resolver: R) -> Self {
        Reconciler {
            node: node.into(),
            dp,
            ipam,
            resolver,
            claimed: BTreeMap::new(),
            plumbed: BTreeMap::new(),
            last_bird: None,
            last_statuses: BTreeMap::new(),
        }
    }

    /// Forget what was plumbed, so the next reconcile checks every workload again
    /// (periodic full resync: repairs what was changed behind the agent's back).
    pub fn forget_plumbing(&mut self) {
        self.plumbed.clear();
        self.last_bird = None;
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

        // 1. Addresses: explicit ones claimed, the others assigned; every Container's
        //    addresses (cluster-wide) feed the group and selector sets.
        let mut addrs: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for c in &containers {
            let name = c.metadata.name.clone();
            let handle = container_handle(&name);
            let local = c.spec.node == self.node;
            let known = cache.handle_ips(&handle).cloned();
            let result = match (&c.spec.ips, local) {
                (Some(ips), true) => {
                    if self.claimed.get(&name) == Some(ips) {
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
                    Some(ips) if !ips.is_empty() => Ok(ips),
                    _ => self
                        .ipam
                        .auto_assign(&handle, &self.node, &pools)
                        .await
                        .map_err(|e| e.0),
                },
                (None, false) => Ok(known.unwrap_or_default()),
            };
            match result {
                Ok(ips) => {
                    addrs.insert(name, ips);
                }
                Err(e) if local => {
                    statuses.insert(
                        name,
                        status(&self.node, "", &[], EndpointState::Error, format!("IPAM: {e}")),
                    );
                }
                Err(_) => {}
            }
        }

        // 2. Release addresses of this node's Containers that are gone.
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
            self.claimed
                .retain(|n, _| containers.iter().any(|c| &c.metadata.name == n));
        }

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
        for (ifname, w) in &desired {
            if self.plumbed.get(ifname) == Some(w) {
                statuses.insert(
                    w.name.clone(),
                    status(&self.node, ifname, &w.ips, EndpointState::Programmed, String::new()),
                );
                continue;
            }
            match self.dp.setup_workload(w).await {
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
        if cache.synced {
            match self.dp.list_workloads(&prefix).await {
                Ok(existing) => {
                    for ifname in existing.into_iter().filter(|i| !desired.contains_key(i)) {
                        match self.dp.teardown_workload(&ifname).await {
                            Ok(()) => {
                                info!(%ifname, "removed a workload interface nothing wants");
                                self.plumbed.remove(&ifname);
                            }
                            Err(e) => report.errors.push(format!("teardown {ifname}: {e}")),
                        }
                    }
                }
                Err(e) => report.errors.push(format!("list workloads: {e}")),
            }
        }
        self.plumbed.retain(|i, _| desired.contains_key(i));

        // 4. Render and apply the three artefacts. Only programmed workloads get
        //    dispatch entries: a failed one stays cut off (fail closed).
        let programmed: BTreeMap<String, Vec<IpAddr>> = addrs
            .iter()
            .filter(|(n, _)| {
                let local = containers
                    .iter()
                    .any(|c| &c.metadata.name == *n && c.spec.node == self.node);
                !local || statuses.get(*n).is_some_and(|s| s.state == EndpointState::Programmed)
            })
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        let blocks = cache.node_blocks(&self.node);
        let view = NodeView::build(&self.node, &resources, &programmed, &blocks);
        let ruleset = calico_render::render_nft(&view);
        report.nft_rules = count_rules(&ruleset);
        let t = Instant::now();
        if let Err(e) = self.dp.apply_nft(&ruleset).await {
            report.errors.push(format!("nftables: {e}"));
        }
        report.nft_duration = t.elapsed();
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
        debug!(?report, "reconciled");
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

fn count_rules(ruleset: &nftables::schema::Nftables<'_>) -> usize {
    use nftables::schema::{NfCmd, NfListObject, NfObject};
    ruleset
        .objects
        .iter()
        .filter(|o| {
            matches!(
                o,
                NfObject::ListObject(NfListObject::Rule(_)) | NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(_)))
            )
        })
        .count()
}
