//! The real [`Dataplane`]: rtnetlink plumbing and routes, `nft`, and a supervised BIRD,
//! all in the host's network namespace (the agent's own, or a test host's).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use calico_render::routes::{RouteKind as RKind, RouteSpec};
use nftables::schema::Nftables;
use tokio::sync::Mutex;
use tracing::info;

use crate::dataplane::bird::{self, BirdOptions, BirdSupervisor};
use crate::dataplane::nft::{NftApplier, NftCommand};
use crate::dataplane::routes::{self as droutes, RouteProgrammer};
use crate::dataplane::workload::{Plumber, WorkloadSpec};
use crate::reconcile::{Dataplane, PlannedWorkload, StepError};

pub struct LinuxDataplane {
    plumber: Plumber,
    routes: droutes::NetlinkRoutes,
    nft: NftCommand,
    bird_opts: BirdOptions,
    /// Started on the first bird.conf: BIRD cannot start without one.
    bird: Mutex<Option<BirdSupervisor>>,
}

impl LinuxDataplane {
    pub async fn new(host_netns: Option<PathBuf>, bird_opts: BirdOptions) -> Result<Self, StepError> {
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
            bird_opts,
            bird: Mutex::new(None),
        })
    }

    /// BIRD's session table, for status.
    pub async fn bird_protocols(&self) -> Result<Vec<bird::BirdProtocol>, StepError> {
        let guard = self.bird.lock().await;
        match guard.as_ref() {
            Some(b) => b
                .protocols()
                .await
                .map_err(|e| StepError::wrap("birdc show protocols", e)),
            None => Ok(Vec::new()),
        }
    }

    pub async fn bird_restarts(&self) -> u64 {
        self.bird.lock().await.as_ref().map(|b| b.restarts()).unwrap_or(0)
    }

    pub async fn stop(&self) {
        if let Some(b) = self.bird.lock().await.take() {
            b.stop().await;
        }
    }
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

    async fn apply_nft(&self, ruleset: &Nftables<'static>) -> Result<(), StepError> {
        let nft = self.nft.clone();
        let ruleset = ruleset.clone();
        tokio::task::spawn_blocking(move || nft.apply(&ruleset))
            .await
            .map_err(|e| StepError::wrap("nft task", e))?
            .map_err(|e| StepError::wrap("load table inet calico", e))
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
        match guard.as_ref() {
            Some(b) => b.reconfigure().await.map_err(|e| StepError::wrap("birdc configure", e)),
            None => {
                let b = BirdSupervisor::start(self.bird_opts.clone())
                    .await
                    .map_err(|e| StepError::wrap("start bird", e))?;
                let _ = b.wait_ready(Duration::from_secs(5)).await;
                info!(pid = ?b.pid(), "BIRD started");
                *guard = Some(b);
                Ok(())
            }
        }
    }
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
}
