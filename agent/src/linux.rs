//! The real [`Dataplane`]: rtnetlink plumbing and routes, `nft`, and a supervised BIRD,
//! all in the host's network namespace (the agent's own, or a test host's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use calico_render::routes::{RouteKind as RKind, RouteSpec};
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::dataplane::bird::{self, BirdOptions, BirdSupervisor};
use crate::dataplane::iptables::Iptables;
use crate::dataplane::netns::{read_sysctl, run_in_netns_async, write_sysctl};
use crate::dataplane::nft::{NftApplier, NftCommand};
use crate::dataplane::routes::{self as droutes, RouteProgrammer};
use crate::dataplane::workload::{Plumber, WorkloadSpec};
use crate::reconcile::{Dataplane, PlannedWorkload, StepError};

pub struct LinuxDataplane {
    plumber: Plumber,
    routes: droutes::NetlinkRoutes,
    nft: NftCommand,
    /// Keeps the whole ruleset as last committed in `nft.json` beside bird.conf.
    nft_file: crate::dataplane::nft::NftFileWriter,
    iptables: Iptables,
    host_netns: Option<PathBuf>,
    bird_opts: BirdOptions,
    /// Started (or adopted) on the first bird.conf: BIRD cannot start without one.
    bird: Arc<Mutex<Bird>>,
    /// Watches an adopted BIRD, which is not our child, and replaces it if it dies.
    monitor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The BIRD this agent works with.
#[derive(Default)]
enum Bird {
    /// None yet (no bird.conf applied).
    #[default]
    None,
    /// Our child, restarted by the supervisor when it exits.
    Supervised { sup: BirdSupervisor, earlier_restarts: u64 },
    /// Found answering on our control socket at start, left there by the previous
    /// agent (agents leave BIRD running on shutdown so peers keep this node's routes).
    /// Not our child: watched through its control socket.
    Adopted { pid: Option<u32>, earlier_restarts: u64 },
}

/// How often an adopted BIRD's control socket is checked.
const ADOPTED_CHECK: Duration = Duration::from_millis(500);

impl LinuxDataplane {
    /// `nft_file`: where the whole ruleset as last committed is kept (the run
    /// directory's `nft.json`).
    pub async fn new(
        host_netns: Option<PathBuf>,
        bird_opts: BirdOptions,
        nft_file: PathBuf,
    ) -> Result<Self, StepError> {
        let plumber = Plumber::new(host_netns.clone())
            .await
            .map_err(|e| StepError::wrap("open host netlink", e))?;
        let routes = droutes::NetlinkRoutes::new(plumber.host_handle().clone());
        let nft = match &host_netns {
            Some(ns) => NftCommand::new().in_netns(ns.clone()),
            None => NftCommand::new(),
        };
        Ok(LinuxDataplane {
            plumber,
            routes,
            nft,
            nft_file: crate::dataplane::nft::NftFileWriter::start(nft_file),
            iptables: Iptables::new(host_netns.clone()),
            host_netns,
            bird_opts,
            bird: Arc::new(Mutex::new(Bird::None)),
            monitor: std::sync::Mutex::new(None),
        })
    }

    /// The plumbing layer (benchmarks drive it directly).
    pub fn plumber(&self) -> &Plumber {
        &self.plumber
    }

    /// BIRD's session table, for status.
    pub async fn bird_protocols(&self) -> Result<Vec<bird::BirdProtocol>, StepError> {
        let guard = self.bird.lock().await;
        let res = match &*guard {
            Bird::Supervised { sup, .. } => sup.protocols().await,
            Bird::Adopted { .. } => bird::birdc(
                &self.bird_opts.birdc,
                &self.bird_opts.socket,
                &["show", "protocols", "all"],
            )
            .await
            .map(|out| bird::parse_protocols(&out)),
            Bird::None => return Ok(Vec::new()),
        };
        res.map_err(|e| StepError::wrap("birdc show protocols", e))
    }

    /// How often BIRD had to be started again since this agent started.
    pub async fn bird_restarts(&self) -> u64 {
        match &*self.bird.lock().await {
            Bird::None => 0,
            Bird::Supervised { sup, earlier_restarts } => earlier_restarts + sup.restarts(),
            Bird::Adopted { earlier_restarts, .. } => *earlier_restarts,
        }
    }

    /// BIRD's pid, when known (a supervised one between restarts has none).
    pub async fn bird_pid(&self) -> Option<u32> {
        match &*self.bird.lock().await {
            Bird::None => None,
            Bird::Supervised { sup, .. } => sup.pid(),
            Bird::Adopted { pid, .. } => *pid,
        }
    }

    /// Whether the BIRD in use was adopted from a previous agent.
    pub async fn bird_adopted(&self) -> bool {
        matches!(&*self.bird.lock().await, Bird::Adopted { .. })
    }

    /// Agent shutdown: stop supervising BIRD but leave it running, so this node's
    /// routes stay announced to its peers until the next agent adopts it. (`calicoctl
    /// node stop` kills it through its pid file.)
    pub async fn detach(&self) {
        if let Some(m) = self.monitor_handle().take() {
            m.abort();
        }
        // nft.json as last committed, before the agent exits.
        self.nft_file.flush().await;
        match std::mem::take(&mut *self.bird.lock().await) {
            Bird::Supervised { sup, .. } => {
                let pid = sup.detach().await;
                info!(?pid, "BIRD left running for the next agent");
            }
            Bird::Adopted { pid, .. } => info!(?pid, "BIRD (adopted) left running"),
            Bird::None => {}
        }
    }

    /// Stops BIRD (if it is our child) and forgets it.
    pub async fn stop(&self) {
        if let Some(m) = self.monitor_handle().take() {
            m.abort();
        }
        if let Bird::Supervised { sup, .. } = std::mem::take(&mut *self.bird.lock().await) {
            sup.stop().await;
        }
    }

    fn monitor_handle(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.monitor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches an adopted BIRD; when its socket stops answering, starts a supervised
    /// one from the config already on disk.
    fn spawn_monitor(&self) {
        let bird = self.bird.clone();
        let opts = self.bird_opts.clone();
        let task = tokio::spawn(async move {
            let mut misses = 0u32;
            loop {
                tokio::time::sleep(ADOPTED_CHECK).await;
                if socket_answers(&opts.socket) {
                    misses = 0;
                    continue;
                }
                // Two misses in a row: one refused connect can be BIRD busy reconfiguring.
                misses += 1;
                if misses < 2 {
                    continue;
                }
                let mut guard = bird.lock().await;
                let Bird::Adopted { earlier_restarts, pid } = &*guard else {
                    return;
                };
                warn!(?pid, "the adopted BIRD stopped answering; starting a supervised one");
                match start_bird(&opts).await {
                    Ok(sup) => {
                        *guard = Bird::Supervised {
                            sup,
                            earlier_restarts: earlier_restarts + 1,
                        };
                        return;
                    }
                    Err(e) => {
                        error!(error = %e, "could not start BIRD; retrying");
                        misses = 0;
                    }
                }
            }
        });
        if let Some(old) = self.monitor_handle().replace(task) {
            old.abort();
        }
    }
}

/// Whether something accepts connections on BIRD's control socket.
fn socket_answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// The pid BIRD wrote to its pid file, if that process is alive.
fn pid_from_file(opts: &BirdOptions) -> Option<u32> {
    let text = std::fs::read_to_string(opts.pid_file.as_ref()?).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

async fn start_bird(opts: &BirdOptions) -> Result<BirdSupervisor, bird::BirdError> {
    let b = BirdSupervisor::start(opts.clone()).await?;
    if let Err(e) = b.wait_ready(Duration::from_secs(5)).await {
        warn!(error = %e, "BIRD started but is not answering yet");
    }
    info!(pid = ?b.pid(), "BIRD started");
    Ok(b)
}

impl Dataplane for LinuxDataplane {
    async fn setup_workload(&self, w: &PlannedWorkload) -> Result<(), StepError> {
        let Some(netns) = &w.netns else {
            // Docker made the pair (libnetwork Join); the host side is configured there.
            return Ok(());
        };
        let mut spec = WorkloadSpec::new(w.host_ifname.clone(), netns.clone(), w.ips.clone());
        spec.ifname = w.ifname.clone();
        spec.mtu = Some(w.mtu);
        self.plumber
            .setup(&spec)
            .await
            .map(|_| ())
            .map_err(|e| StepError::wrap(&format!("plumb {}", w.name), e))
    }

    async fn teardown_workload(&self, host_ifname: &str) -> Result<(), StepError> {
        self.plumber
            .teardown(host_ifname)
            .await
            .map(|_| ())
            .map_err(|e| StepError::wrap("remove veth", e))
    }

    async fn list_workloads(&self, prefix: &str) -> Result<Vec<String>, StepError> {
        let l = self
            .plumber
            .list_host_ifaces(prefix)
            .await
            .map_err(|e| StepError::wrap("list veths", e))?;
        Ok(l.into_iter().map(|i| i.name).collect())
    }

    async fn apply_nft(&self, text: &[u8]) -> Result<(), StepError> {
        let result = if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            // In place: no copy of a batch that can be large (a whole table at 10k
            // endpoints is about 10 MiB of text).
            tokio::task::block_in_place(|| self.nft.load_text(text))
        } else {
            let nft = self.nft.clone();
            let text = text.to_vec();
            tokio::task::spawn_blocking(move || nft.load_text(&text))
                .await
                .map_err(|e| StepError::wrap("nft task", e))?
        };
        result.map_err(|e| StepError::wrap("commit to table inet calico", e))
    }

    fn write_nft_file(&self, table: Arc<calico_render::NftTable>, retired: Option<Arc<calico_render::NftTable>>) {
        self.nft_file.write(table, retired);
    }

    async fn nft_listing(&self) -> Result<Option<String>, StepError> {
        let nft = self.nft.clone();
        tokio::task::spawn_blocking(move || {
            nft.list_table_text(crate::dataplane::nft::TABLE_FAMILY, crate::dataplane::nft::TABLE_NAME)
        })
        .await
        .map_err(|e| StepError::wrap("nft task", e))?
        .map_err(|e| StepError::wrap("list table inet calico", e))
    }

    async fn ensure_host(&self, interface_prefix: &str) -> Result<(), StepError> {
        // Forwarding between hosts: packets from the fabric arrive on the host's own
        // interfaces, whose forwarding flag the per-caliX settings do not cover.
        let turned_on = run_in_netns_async(self.host_netns.as_deref(), || -> std::io::Result<bool> {
            if read_sysctl("net/ipv4/ip_forward")? == "1" {
                return Ok(false);
            }
            write_sysctl("net/ipv4/ip_forward", "1").map(|()| true)
        })
        .await
        .map_err(|e| StepError::wrap("net.ipv4.ip_forward", e))?
        .map_err(|e| StepError::wrap("net.ipv4.ip_forward", e))?;
        if turned_on {
            info!("turned on net.ipv4.ip_forward");
        }
        let ipt = self.iptables.clone();
        let prefix = interface_prefix.to_string();
        tokio::task::spawn_blocking(move || ipt.ensure(&prefix))
            .await
            .map_err(|e| StepError::wrap("iptables task", e))?
            .map_err(|e| StepError::wrap("iptables FORWARD accept for workloads", e))?;
        Ok(())
    }

    async fn apply_routes(&self, routes: &[RouteSpec]) -> Result<(), StepError> {
        let desired: Vec<droutes::RouteSpec> = routes
            .iter()
            .map(|r| match &r.kind {
                RKind::Dev(dev) => droutes::RouteSpec::unicast(r.dst, dev.clone()),
                RKind::Blackhole => droutes::RouteSpec::blackhole(r.dst),
            })
            .collect();
        self.routes
            .reconcile(&desired)
            .await
            .map(|_| ())
            .map_err(|e| StepError::wrap("routes", e))
    }

    async fn apply_bird(&self, conf: &str) -> Result<(), StepError> {
        bird::write_config_with(&self.bird_opts.bird, &self.bird_opts.config, conf)
            .await
            .map_err(|e| StepError::wrap("bird.conf", e))?;
        let mut guard = self.bird.lock().await;
        let adopt_restarts = match &*guard {
            Bird::Supervised { sup, .. } => {
                return sup
                    .reconfigure()
                    .await
                    .map_err(|e| StepError::wrap("birdc configure", e));
            }
            Bird::Adopted { earlier_restarts, .. } => {
                match bird::birdc(&self.bird_opts.birdc, &self.bird_opts.socket, &["configure"]).await {
                    Ok(out) if reconfigured(&out) => return Ok(()),
                    Ok(out) => return Err(StepError(format!("birdc configure: {}", out.trim()))),
                    // Gone: start our own below.
                    Err(e) if !socket_answers(&self.bird_opts.socket) => {
                        warn!(error = %e, "the adopted BIRD is gone; starting a supervised one");
                        Some(earlier_restarts + 1)
                    }
                    Err(e) => return Err(StepError::wrap("birdc configure", e)),
                }
            }
            Bird::None => None,
        };
        match start_bird(&self.bird_opts).await {
            Ok(sup) => {
                *guard = Bird::Supervised {
                    sup,
                    earlier_restarts: adopt_restarts.unwrap_or(0),
                };
                Ok(())
            }
            Err(bird::BirdError::AlreadyRunning(socket)) => {
                // The previous agent's BIRD: keep it (its sessions and routes stay up)
                // and give it the new config.
                let pid = pid_from_file(&self.bird_opts);
                let out = bird::birdc(&self.bird_opts.birdc, &socket, &["configure"])
                    .await
                    .map_err(|e| StepError::wrap("birdc configure (adopted BIRD)", e))?;
                if !reconfigured(&out) {
                    return Err(StepError(format!("birdc configure (adopted BIRD): {}", out.trim())));
                }
                info!(?pid, socket = %socket.display(), "adopted the BIRD already running");
                *guard = Bird::Adopted {
                    pid,
                    earlier_restarts: adopt_restarts.unwrap_or(0),
                };
                drop(guard);
                self.spawn_monitor();
                Ok(())
            }
            Err(e) => Err(StepError::wrap("start bird", e)),
        }
    }
}

fn reconfigured(out: &str) -> bool {
    out.contains("Reconfigured") || out.contains("Reconfiguration in progress") || out.contains("queueing")
}

/// IPAM through the store, for the reconcile.
pub struct StoreIpam(pub Arc<calico_store::ipam::Ipam>);

impl crate::reconcile::AddressManager for StoreIpam {
    async fn auto_assign(
        &self,
        handle: &str,
        node: &str,
        pools: &[calico_schema::IpPool],
    ) -> Result<Vec<std::net::IpAddr>, StepError> {
        let want_v6 = pools.iter().any(|p| !p.spec.cidr.is_ipv4() && !p.spec.disabled);
        self.0
            .auto_assign(handle, node, pools, want_v6)
            .await
            .map_err(|e| StepError::wrap("assign", e))
    }
    async fn assign_ips(
        &self,
        handle: &str,
        node: &str,
        ips: &[std::net::IpAddr],
        pools: &[calico_schema::IpPool],
    ) -> Result<(), StepError> {
        self.0
            .assign_ips(handle, node, ips, pools)
            .await
            .map_err(|e| StepError::wrap("claim", e))
    }
    async fn release(&self, handle: &str) -> Result<(), StepError> {
        self.0
            .release_handle(handle)
            .await
            .map(|_| ())
            .map_err(|e| StepError::wrap("release", e))
    }
    async fn release_ips(&self, handle: &str, ips: &[std::net::IpAddr]) -> Result<(), StepError> {
        self.0
            .release_ips(handle, ips)
            .await
            .map(|_| ())
            .map_err(|e| StepError::wrap("release", e))
    }
}
