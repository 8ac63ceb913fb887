//! The Calico side of the `calico` network driver and the `calico-ipam` IPAM driver:
//! IPPools, IPAM handles, Docker-owned Container resources and host-side veths.
//!
//! The life of one plugin endpoint (docs/docker.md has the protocol as observed):
//! - RequestAddress: a fresh Container name `docker-<16 hex>` and its IPAM handle
//!   `container/<name>` get the address (`--ip`, or any free one of the network's pool).
//! - CreateEndpoint: the address names the Container; the network names the group.
//! - Join: the Container resource is written (Docker-owned, `calico/docker-endpoint`),
//!   and once the reconcile knows it, the veth pair is made for Docker to move.
//! - ProgramExternalConnectivity: the gateway's permanent neighbour entry inside.
//! - Leave / DeleteEndpoint / ReleaseAddress: veth, resource and address go.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use calico_render::host_iface_name;
use calico_schema::net::Cidr;
use calico_schema::{object, ContainerSpec, IpPool, Kind, Resource, OWNER_ANNOTATION, OWNER_DOCKER};
use calico_store::ipam::container_handle;
use calico_store::WriteMode;
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::backend::{
    AddressRequest, Backend, EndpointCreate, EndpointInterface, JoinInfo, JoinRequest, NetworkCreate, PoolInfo,
    PoolRequest,
};
use super::context::{ipam_failure, network_key, short, Ctx, Endpoint, NetworkRecord, ANN_ENDPOINT, ANN_NETWORK};

/// Pool IDs of networks created without `--subnet`: any enabled pool.
pub const ANY_POOL_V4: &str = "calico-ipv4";
pub const ANY_POOL_V6: &str = "calico-ipv6";
/// How long Join waits for the reconcile to take in a new Container before it makes
/// the veth (made earlier, a reconcile working from an older view could remove it).
const RECONCILE_WAIT: Duration = Duration::from_secs(10);

/// A new plugin Container name: `docker-` and 16 random hex digits (the seed path's
/// names have 12, from the container ID).
fn new_name() -> String {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // No /dev/urandom: time and a counter are unique enough within one node.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (t ^ N.fetch_add(1, Ordering::SeqCst).rotate_left(48) ^ u64::from(std::process::id())).to_be_bytes();
    }
    format!(
        "docker-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Whether an IPAM handle is a plugin endpoint's (`container/docker-<16 hex>`).
pub fn is_plugin_handle(handle: &str) -> bool {
    handle
        .strip_prefix("container/docker-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn enabled_v4(pools: &[IpPool]) -> impl Iterator<Item = &IpPool> {
    pools.iter().filter(|p| !p.spec.disabled && p.spec.cidr.is_ipv4())
}

fn pool_list(pools: &[IpPool]) -> String {
    let l: Vec<String> = enabled_v4(pools).map(|p| p.spec.cidr.to_string()).collect();
    if l.is_empty() {
        "none".into()
    } else {
        l.join(", ")
    }
}

/// The pools an address of `pool_id` may come from: every IPv4 pool for the catch-all,
/// or for a `--subnet` a stand-in for its pool restricted to the subnet (disabled
/// pools are passed along so IPAM keeps out of them).
fn pools_for(pool_id: &str, all: &[IpPool]) -> anyhow::Result<(Option<IpNet>, Vec<IpPool>)> {
    let disabled: Vec<IpPool> = all
        .iter()
        .filter(|p| p.spec.disabled && p.spec.cidr.is_ipv4())
        .cloned()
        .collect();
    if pool_id == ANY_POOL_V4 {
        if enabled_v4(all).next().is_none() {
            bail!("no enabled IPv4 IPPool to assign from; create one (calicoctl apply) first");
        }
        let v4 = all.iter().filter(|p| p.spec.cidr.is_ipv4()).cloned().collect();
        return Ok((None, v4));
    }
    if pool_id == ANY_POOL_V6 {
        bail!("IPv6 is not supported on calico networks");
    }
    let subnet: IpNet = pool_id
        .parse()
        .map_err(|_| anyhow!("unknown pool ID {pool_id:?} (not one calico-ipam handed out)"))?;
    let pool = enabled_v4(all)
        .find(|p| p.spec.cidr.net().contains(&subnet))
        .ok_or_else(|| anyhow!("the network's subnet {subnet} lies in no enabled IPPool any more"))?;
    let mut restricted = pool.clone();
    if pool.spec.cidr.net() != subnet {
        restricted.spec.cidr = Cidr(subnet);
        restricted.spec.block_size = Some(pool.block_size());
    }
    Ok((Some(subnet), std::iter::once(restricted).chain(disabled).collect()))
}

pub struct CalicoBackend {
    ctx: Arc<Ctx>,
}

impl CalicoBackend {
    pub fn new(ctx: Arc<Ctx>) -> CalicoBackend {
        CalicoBackend { ctx }
    }

    /// The network's group: remembered, recorded in etcd, or from `docker network
    /// inspect` (`-o group=G`, else the network's name), ensured to exist.
    async fn network_group(&self, network_id: &str) -> anyhow::Result<String> {
        let ctx = &self.ctx;
        let known = ctx.state().networks.get(network_id).cloned();
        let group = match known {
            Some(g) => g,
            None => match ctx.store.get_json::<NetworkRecord>(&network_key(network_id)).await {
                Ok(Some(rec)) => {
                    ctx.state().networks.insert(network_id.to_string(), rec.group.clone());
                    rec.group
                }
                _ => {
                    let client = ctx.client().await?;
                    let info = match client.inspect_network(network_id).await {
                        Ok(Some(info)) => info,
                        Ok(None) => bail!("Docker has no network {}", short(network_id)),
                        Err(e) => {
                            ctx.client_failed().await;
                            return Err(e.into());
                        }
                    };
                    let group = info.group().to_string();
                    if !calico_schema::validate::is_valid_name(&group) {
                        bail!(
                            "network {:?} names no valid group (1-63 of A-Z a-z 0-9 _ . -); create it with -o group=NAME",
                            info.name
                        );
                    }
                    ctx.record_network(network_id, &group, &info.name).await?;
                    group
                }
            },
        };
        ctx.ensure_group(&group).await?;
        Ok(group)
    }

    /// The endpoint, from memory or (after an agent restart) from its Container.
    async fn endpoint(&self, endpoint_id: &str) -> anyhow::Result<Option<Endpoint>> {
        if let Some(ep) = self.ctx.state().endpoints.get(endpoint_id).cloned() {
            return Ok(Some(ep));
        }
        let found = self
            .ctx
            .docker_containers()
            .await?
            .into_iter()
            .find(|c| c.metadata.annotations.get(ANN_ENDPOINT).map(String::as_str) == Some(endpoint_id));
        Ok(found.map(|c| Endpoint {
            name: c.metadata.name.clone(),
            network_id: c.metadata.annotations.get(ANN_NETWORK).cloned().unwrap_or_default(),
            ips: c.spec.ips.clone().unwrap_or_default(),
            group: c.spec.groups.first().cloned(),
            sandbox: c.spec.netns.clone(),
            joined: None,
        }))
    }

    /// Which plugin Container holds `ip`: remembered, or found in IPAM (after a restart).
    async fn holder(&self, ip: IpAddr) -> anyhow::Result<Option<String>> {
        if let Some(n) = self.ctx.state().addresses.get(&ip).cloned() {
            return Ok(Some(n));
        }
        let handles = self.ctx.ipam.handles().await.context("reading IPAM handles")?;
        Ok(handles
            .into_iter()
            .find(|(h, info)| is_plugin_handle(h) && info.node == self.ctx.node && info.ips.contains(&ip))
            .and_then(|(h, _)| h.strip_prefix("container/").map(str::to_string)))
    }

    async fn host_ifname(&self, name: &str) -> anyhow::Result<String> {
        let cfg = self.ctx.cluster_config().await?;
        Ok(host_iface_name(cfg.interface_prefix(), name))
    }
}

impl Backend for CalicoBackend {
    async fn create_network(&self, req: NetworkCreate) -> anyhow::Result<()> {
        if !req.ipv6.is_empty() {
            bail!("IPv6 is not supported on calico networks; for IPv6 run containers with --net=none -e CALICO_IP=<address>");
        }
        // Without -o group the group is the network's name, which Docker does not send:
        // it is ensured when the network's create event arrives, or at its first endpoint.
        if let Some(g) = &req.group {
            self.ctx.ensure_group(g).await?;
            self.ctx.record_network(&req.network_id, g, "").await?;
        }
        info!(network = short(&req.network_id), group = ?req.group, "calico network created");
        Ok(())
    }

    async fn delete_network(&self, network_id: String) -> anyhow::Result<()> {
        self.ctx.state().networks.remove(&network_id);
        self.ctx
            .store
            .delete_json(&network_key(&network_id))
            .await
            .context("forgetting the network")?;
        Ok(())
    }

    async fn create_endpoint(&self, req: EndpointCreate) -> anyhow::Result<EndpointInterface> {
        if req.ipv6.is_some() {
            bail!("IPv6 is not supported on calico networks");
        }
        let ip = req
            .ipv4
            .ok_or_else(|| anyhow!("no IPv4 address: calico networks take their addresses from calico-ipam"))?
            .addr();
        let name = self
            .holder(ip)
            .await?
            .ok_or_else(|| anyhow!("{ip} was not assigned by calico-ipam on this node"))?;
        let group = self.network_group(&req.network_id).await?;
        let mut st = self.ctx.state();
        st.addresses.insert(ip, name.clone());
        st.endpoints.insert(
            req.endpoint_id.clone(),
            Endpoint {
                name: name.clone(),
                network_id: req.network_id.clone(),
                ips: vec![ip],
                group: Some(group),
                sandbox: None,
                joined: None,
            },
        );
        debug!(endpoint = short(&req.endpoint_id), container = %name, %ip, "endpoint created");
        Ok(EndpointInterface::default())
    }

    async fn delete_endpoint(&self, _network_id: String, endpoint_id: String) -> anyhow::Result<()> {
        let ep = self.endpoint(&endpoint_id).await?;
        self.ctx.state().endpoints.remove(&endpoint_id);
        if let Some(ep) = ep {
            // The address stays assigned (and the handle spared) until ReleaseAddress.
            self.ctx.delete_container(&ep.name).await?;
            info!(endpoint = short(&endpoint_id), container = %ep.name, "endpoint deleted");
        }
        Ok(())
    }

    async fn join(&self, req: JoinRequest) -> anyhow::Result<JoinInfo> {
        let ep = self.endpoint(&req.endpoint_id).await?.ok_or_else(|| {
            anyhow!(
                "unknown endpoint {} (was the agent restarted in between? start the container again)",
                short(&req.endpoint_id)
            )
        })?;
        let group = match &ep.group {
            Some(g) => g.clone(),
            None => self.network_group(&req.network_id).await?,
        };
        let cfg = self.ctx.cluster_config().await?;
        let host_if = host_iface_name(cfg.interface_prefix(), &ep.name);
        let tmp_if = host_iface_name("tmp", &ep.name);

        let mut c = object(
            Kind::Container,
            ep.name.clone(),
            ContainerSpec {
                node: self.ctx.node.clone(),
                netns: Some(req.sandbox_key.clone()),
                ips: Some(ep.ips.clone()),
                groups: vec![group.clone()],
                ..Default::default()
            },
        );
        let ann = &mut c.metadata.annotations;
        ann.insert(OWNER_ANNOTATION.into(), OWNER_DOCKER.into());
        ann.insert(ANN_NETWORK.into(), req.network_id.clone());
        ann.insert(ANN_ENDPOINT.into(), req.endpoint_id.clone());
        let status = self.ctx.statuses.expect(&ep.name);
        self.ctx
            .store
            .write(&[Resource::Container(c)], WriteMode::Apply, None, false)
            .await
            .with_context(|| format!("writing Container {}", ep.name))?;

        let started = Instant::now();
        match self.ctx.wait_for_status(status, RECONCILE_WAIT).await {
            Some(st) => {
                if let Some(msg) = ipam_failure(&st) {
                    bail!("Container {}: {msg}", ep.name);
                }
            }
            None => {
                warn!(container = %ep.name, "the reconcile has not taken in the new Container yet; making its veth anyway");
            }
        }
        let plumber = self.ctx.plumber().await?;
        plumber.create_handoff_pair(&host_if, &tmp_if, cfg.mtu()).await?;
        if let Some(e) = self.ctx.state().endpoints.get_mut(&req.endpoint_id) {
            e.sandbox = Some(req.sandbox_key.clone());
            e.joined = Some(Instant::now());
            e.group = Some(group.clone());
        }
        info!(endpoint = short(&req.endpoint_id), container = %ep.name, ips = ?ep.ips, %group, host_interface = %host_if,
            waited_ms = started.elapsed().as_millis() as u64, "endpoint joined");
        Ok(JoinInfo::calico(tmp_if, false))
    }

    async fn leave(&self, _network_id: String, endpoint_id: String) -> anyhow::Result<()> {
        let Some(ep) = self.endpoint(&endpoint_id).await? else {
            return Ok(());
        };
        // The Container goes first, so the reconcile never routes to a missing
        // interface; its address stays until ReleaseAddress.
        self.ctx.delete_container(&ep.name).await?;
        let host_if = self.host_ifname(&ep.name).await?;
        // Deleting the host side takes the container side with it.
        self.ctx.plumber().await?.teardown(&host_if).await?;
        Ok(())
    }

    async fn endpoint_oper_info(
        &self,
        _network_id: String,
        endpoint_id: String,
    ) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
        let mut out = BTreeMap::new();
        if let Some(ep) = self.endpoint(&endpoint_id).await? {
            out.insert("hostInterface".into(), self.host_ifname(&ep.name).await?.into());
            out.insert("container".into(), ep.name.into());
        }
        Ok(out)
    }

    async fn program_external_connectivity(&self, _network_id: String, endpoint_id: String) -> anyhow::Result<()> {
        // Docker 20.10 sets up the sandbox only after this call (in the container's
        // prestart hook), so the neighbour is added in the background as soon as the
        // interface is there; the event consumer checks again once the container runs.
        // Best effort: proxy ARP answers anyway on hosts with a default route.
        let Some(ep) = self.ctx.state().endpoints.get(&endpoint_id).cloned() else {
            return Ok(());
        };
        let Some(key) = ep.sandbox.clone() else { return Ok(()) };
        let pid = self.ctx.dockerd_pid();
        tokio::spawn(async move {
            match super::host::gateway_neighbour_when_ready(&key, pid, &ep.ips, Duration::from_secs(5)).await {
                Ok(true) => debug!(container = %ep.name, "gateway neighbour added"),
                Ok(false) => debug!(container = %ep.name, "no interface with the container's address in its sandbox"),
                Err(e) => {
                    debug!(container = %ep.name, error = %format!("{e:#}"), "could not add the gateway neighbour yet");
                }
            }
        });
        Ok(())
    }

    async fn request_pool(&self, req: PoolRequest) -> anyhow::Result<PoolInfo> {
        if req.v6 || matches!(req.pool, Some(IpNet::V6(_))) {
            bail!("IPv6 is not supported on calico networks (leave out --ipv6); for IPv6 run containers with --net=none -e CALICO_IP=<address>");
        }
        let all = self.ctx.pools().await?;
        match req.pool {
            None => {
                if enabled_v4(&all).next().is_none() {
                    bail!("no enabled IPv4 IPPool; create one (calicoctl apply) before the network");
                }
                Ok(PoolInfo {
                    pool_id: ANY_POOL_V4.into(),
                    pool: IpNet::V4(ipnet::Ipv4Net::default()),
                })
            }
            Some(subnet) => {
                let pool = enabled_v4(&all)
                    .find(|p| p.spec.cidr.net().contains(&subnet))
                    .ok_or_else(|| {
                        anyhow!(
                        "--subnet {subnet} lies in no enabled IPPool (enabled: {}); use a pool's CIDR or a part of one",
                        pool_list(&all)
                    )
                    })?;
                let bs = pool.block_size();
                if subnet.prefix_len() > bs {
                    bail!(
                        "--subnet {subnet} is smaller than the address blocks of pool {} (/{bs}); use a /{bs} or larger",
                        pool.spec.cidr
                    );
                }
                Ok(PoolInfo {
                    pool_id: subnet.to_string(),
                    pool: subnet,
                })
            }
        }
    }

    async fn release_pool(&self, _pool_id: String) -> anyhow::Result<()> {
        Ok(())
    }

    async fn request_address(&self, req: AddressRequest) -> anyhow::Result<IpAddr> {
        let all = self.ctx.pools().await?;
        let (subnet, pools) = pools_for(&req.pool_id, &all)?;
        if let (Some(ip), Some(net)) = (req.address, subnet) {
            if !net.contains(&ip) {
                bail!("{ip} is outside the network's subnet {net}");
            }
        }
        let name = new_name();
        let handle = container_handle(&name);
        // Spared by the reconcile's garbage collection from before the handle exists.
        self.ctx.state().reserving.insert(name.clone());
        let res = match req.address {
            Some(ip) => self
                .ctx
                .ipam
                .assign_ips(&handle, &self.ctx.node, &[ip], &pools)
                .await
                .map(|()| ip),
            None => self
                .ctx
                .ipam
                .auto_assign(&handle, &self.ctx.node, &pools, false)
                .await
                .and_then(|ips| {
                    ips.into_iter()
                        .find(IpAddr::is_ipv4)
                        .ok_or(calico_store::ipam::IpamError::Exhausted { version: 4 })
                }),
        };
        let mut st = self.ctx.state();
        st.reserving.remove(&name);
        let ip = res?;
        st.addresses.insert(ip, name.clone());
        debug!(container = %name, %ip, "address assigned");
        Ok(ip)
    }

    async fn release_address(&self, _pool_id: String, address: IpAddr) -> anyhow::Result<()> {
        let Some(name) = self.holder(address).await? else {
            debug!(%address, "released an address no plugin endpoint holds");
            return Ok(());
        };
        let handle = container_handle(&name);
        let held = self.ctx.ipam.handle_ips(&handle).await?;
        if held.contains(&address) {
            self.ctx.ipam.release_handle(&handle).await?;
        }
        let mut st = self.ctx.state();
        st.addresses.retain(|_, n| *n != name);
        st.endpoints.retain(|_, e| e.name != name);
        debug!(%address, container = %name, "address released");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::IpPoolSpec;

    fn pool(cidr: &str, disabled: bool) -> IpPool {
        object(
            Kind::IPPool,
            cidr.replace(['/', '.'], "-"),
            IpPoolSpec {
                cidr: cidr.parse().unwrap(),
                block_size: None,
                nat_outgoing: false,
                disabled,
            },
        )
    }

    #[test]
    fn plugin_names_and_handles() {
        let n = new_name();
        assert!(n.starts_with("docker-") && n.len() == 23, "{n}");
        assert_ne!(n, new_name());
        assert!(is_plugin_handle(&container_handle(&n)));
        assert!(
            !is_plugin_handle("container/docker-0123456789ab"),
            "seed names have 12 hex digits"
        );
        assert!(!is_plugin_handle("container/web"));
    }

    #[test]
    fn pools_for_subnets() {
        let all = vec![pool("10.65.0.0/16", false), pool("10.66.0.0/16", true)];
        let (sub, p) = pools_for(ANY_POOL_V4, &all).unwrap();
        assert_eq!((sub, p.len()), (None, 2));
        let (sub, p) = pools_for("10.65.7.0/24", &all).unwrap();
        assert_eq!(sub, Some("10.65.7.0/24".parse().unwrap()));
        assert_eq!(p[0].spec.cidr.to_string(), "10.65.7.0/24");
        assert_eq!(p[0].spec.block_size, Some(26));
        assert!(p[1].spec.disabled);
        assert!(pools_for("10.99.0.0/24", &all).is_err());
        assert!(pools_for("nonsense", &all).is_err());
        assert!(pools_for(ANY_POOL_V4, &[pool("10.66.0.0/16", true)]).is_err());
    }
}
