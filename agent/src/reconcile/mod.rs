//! The level-triggered reconcile: from the cache (what should be) to the dataplane (what
//! is), idempotently, every time anything changes and periodically.
//!
//! Calculation and side effects are kept apart, as in Felix: [`plan`] holds the pure
//! calculation (cache in; the Containers' addresses to ask for, the workloads, the node's
//! view from which the ruleset, routes and bird.conf are rendered, and the statuses to
//! write out), and `steps` (with `nft`, the nftables step) make it so, one method per
//! step, through the small [`Dataplane`] and [`AddressManager`] traits, which the tests
//! replace with fakes. [`Reconciler::reconcile`] runs the steps in order; each collects
//! its failures into the [`Report`] and the next step still runs.
//!
//! This module uses `cache` and the traits' implementors are elsewhere (`linux`,
//! `docker`): nothing here imports the run loop (`agent`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_render::{NftTable, RouteSpec};
use calico_schema::{Container, ContainerStatus, IpPool};
use tracing::{debug, info, warn};

use crate::cache::Cache;

#[cfg(test)]
mod bench;
mod nft;
pub mod plan;
mod steps;
#[cfg(test)]
mod tests;

pub use plan::cluster_config;

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
    /// Commits nftables commands in nft's own syntax (`nft -f -`) as one transaction.
    fn apply_nft(&self, text: &[u8]) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Keeps `table`, just committed, as the whole ruleset where people and `calicoctl
    /// diags` read it (replaced by rename). Called right after each commit and off the
    /// path to the next one: the real dataplane hands both tables to a writer thread,
    /// which prints the newest as JSON, writes it and frees `retired` (the table it
    /// replaces: freeing 10k endpoints' chains is itself milliseconds). A fake dataplane
    /// keeps nothing.
    fn write_nft_file(&self, table: Arc<NftTable>, retired: Option<Arc<NftTable>>) {
        drop((table, retired));
    }
    fn apply_routes(&self, routes: &[RouteSpec]) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Checks, installs and activates bird.conf.
    fn apply_bird(&self, conf: &str) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Our nftables table as the kernel lists it now (`nft list table inet calico`),
    /// `None` when it is gone or cannot be read back (then the periodic check loads the
    /// table whole, as a fake dataplane always does).
    fn nft_listing(&self) -> impl Future<Output = Result<Option<String>, StepError>> + Send {
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
    /// Releases those of `ips` that `handle` holds, keeping the rest.
    fn release_ips(&self, handle: &str, ips: &[IpAddr]) -> impl Future<Output = Result<(), StepError>> + Send;
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
    /// When the kernel committed this reconcile's nftables transaction (delta or whole
    /// load); None when nothing was sent or it failed. The run loop measures the time
    /// from the etcd event that caused the reconcile to here.
    pub nft_committed_at: Option<Instant>,
    /// ClusterConfig's logLevel as this reconcile read it.
    pub log_level: Option<calico_schema::LogLevel>,
    /// Where the time from the reconcile's start to the nftables commit went, step by
    /// step in order (empty when nothing was committed): what
    /// `calico_event_to_commit_phase_seconds` shows for the last change.
    pub to_commit: Vec<(&'static str, Duration)>,
}

/// Times the steps of a reconcile one after another, for [`Report::to_commit`].
pub(crate) struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub(crate) fn start() -> Phases {
        Phases {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// The step `name` ended now.
    pub(crate) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now.saturating_duration_since(self.last)));
        self.last = now;
    }
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
    /// The host's workload interfaces were listed (with the whole cache) since the last
    /// resync or failure: until the next one, `plumbed` is trusted.
    workloads_listed: bool,
    last_bird: Option<String>,
    /// The routes as last synced without error; `None` before the first sync, after a
    /// failure and at a resync (then they are synced again).
    last_routes: Option<Vec<RouteSpec>>,
    /// The table as last committed to the kernel, which the next delta starts from;
    /// `None` before the first load and after a failed transaction (the next load is
    /// then whole).
    committed: Option<Arc<NftTable>>,
    /// The periodic check is due: read our table back and compare.
    nft_verify: bool,
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
            workloads_listed: false,
            last_bird: None,
            last_routes: None,
            committed: None,
            nft_verify: false,
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
        self.workloads_listed = false;
        self.last_bird = None;
        self.last_routes = None;
        self.nft_verify = true;
        self.host_checked = false;
    }
    /// Makes the dataplane match the cache. Returns the report and the Container
    /// statuses that changed (to be written to etcd by the caller).
    pub async fn reconcile(&mut self, cache: &Cache) -> (Report, Vec<(String, Option<ContainerStatus>)>) {
        let started = Instant::now();
        let mut phases = Phases::start();
        let mut report = Report::default();
        let input = plan::Inputs::new(cache.resources());
        report.log_level = input.config.log_level;
        let containers = input.containers();
        let mut statuses: BTreeMap<String, ContainerStatus> = BTreeMap::new();
        phases.mark("inputs");

        self.host_step(&input.prefix, &mut report).await;
        phases.mark("host");
        self.release_step(cache, &containers, &mut report).await;
        phases.mark("release");
        let addrs = self
            .address_step(cache, &input, &containers, &mut statuses, &mut report)
            .await;
        phases.mark("ipam");

        let workloads = plan::workloads(&self.node, &input, &containers, &addrs, &statuses, &self.resolver);
        statuses.extend(workloads.unresolved);
        self.workload_step(cache, &input.prefix, &workloads.desired, &mut statuses, &mut report)
            .await;
        phases.mark("plumbing");

        // 4. The three artefacts, from the view of what is programmed now.
        let blocks = cache.node_blocks(&self.node);
        let view = plan::view(&self.node, input.resources, addrs, &statuses, &blocks);
        phases.mark("view");
        self.nft_step(&view, &mut report, &mut phases).await;
        self.routes_step(calico_render::render_routes(&view), &mut report).await;
        self.bird_step(calico_render::render_bird(&view), &mut report).await;

        let changed = self.status_step(statuses, &mut report);
        report.duration = started.elapsed();
        log_report(&report);
        (report, changed)
    }

    /// Acknowledges that a status write failed, so it is retried next time.
    pub fn status_not_written(&mut self, name: &str) {
        self.last_statuses.remove(name);
    }
}

fn log_report(report: &Report) {
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
}
