//! What the Docker plugin asks of the agent, in Calico terms.
//!
//! The wire protocol (PascalCase JSON, `null` maps, CIDR strings, the `Err` convention)
//! stays in [`super::plugin`]; a [`Backend`] sees parsed, validated values and answers
//! with typed results. Every method may fail with an [`anyhow::Error`]: its message,
//! with its context chain, is what `docker` prints, so say what went wrong and what
//! to do about it.
//!
//! Responsibilities per Docker's remote driver model (see docs/docker.md):
//! - IPAM (`calico-ipam`) hands out the address before the network driver hears of the
//!   endpoint; Docker then passes that address to CreateEndpoint and configures it in
//!   the container itself.
//! - The network driver creates the veth pair in the host namespace at Join; Docker
//!   moves the end named in [`JoinInfo::src_name`] into the container, renames it
//!   `<dst_prefix><n>` (eth0), adds the address, the static routes and the gateway.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::dataplane::workload::{GATEWAY_V4, GATEWAY_V6};

/// The `-o` option that names the network's group.
pub const GROUP_OPTION: &str = "group";

/// `docker network create` as the network driver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkCreate {
    /// Docker's network ID (64 hex). The protocol never carries the network's name:
    /// ask Docker (`docker network inspect <id>`) once the network exists.
    pub network_id: String,
    /// `-o group=G`; absent means "the network's name".
    pub group: Option<String>,
    /// Every `-o key=value` the user gave (only known keys get this far).
    pub options: BTreeMap<String, String>,
    /// The pools calico-ipam returned at RequestPool (one per `--subnet`, or the
    /// catch-all 0.0.0.0/0 when none was given).
    pub ipv4: Vec<PoolData>,
    pub ipv6: Vec<PoolData>,
}

/// One entry of CreateNetwork's IPv4Data / IPv6Data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolData {
    pub address_space: String,
    pub pool: IpNet,
}

/// CreateEndpoint: the container is about to get an interface on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointCreate {
    pub network_id: String,
    pub endpoint_id: String,
    /// The address IPAM assigned (always given when calico-ipam is the IPAM driver);
    /// the prefix length is what IPAM returned (/32).
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
    /// `--mac-address`, when the user gave one.
    pub mac: Option<String>,
    /// Endpoint options (`--driver-opt`, exposed ports ...), raw JSON values.
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// What the driver decides about the endpoint's interface at CreateEndpoint.
/// Docker refuses a driver that "changes" a value it already set, so the plugin layer
/// only sends fields Docker left empty (see [`super::plugin`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointInterface {
    /// The MAC of the container side; `None` lets the kernel pick one.
    pub mac: Option<String>,
}

/// Join: Docker is attaching the endpoint to the container's sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    pub network_id: String,
    pub endpoint_id: String,
    /// Path of the container's network namespace, e.g. `/var/run/docker/netns/1a2b3c4d5e6f`.
    pub sandbox_key: String,
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// A route Docker adds inside the container once the interface is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    pub destination: IpNet,
    /// `None`: a connected (on-link) route (RouteType 1); `Some`: via this next hop (RouteType 0).
    pub next_hop: Option<IpAddr>,
}

/// The answer to Join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinInfo {
    /// The veth end the driver created in the host namespace for Docker to move into
    /// the container (the container side; its host-side peer `cali...` stays).
    pub src_name: String,
    /// Docker renames the moved interface to this prefix plus an index: "eth" gives eth0.
    pub dst_prefix: String,
    pub gateway: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    pub static_routes: Vec<StaticRoute>,
}

impl JoinInfo {
    /// Calico's answer: the container reaches everything through the host, which
    /// answers for the link-local gateway by proxy ARP (v4) or owns it (v6). The
    /// gateway needs an on-link route first because the container's address is a /32
    /// (/128) with no subnet around it.
    pub fn calico(src_name: impl Into<String>, ipv6: bool) -> JoinInfo {
        let mut static_routes = vec![StaticRoute {
            destination: IpNet::from(IpAddr::V4(GATEWAY_V4)),
            next_hop: None,
        }];
        if ipv6 {
            static_routes.push(StaticRoute {
                destination: IpNet::from(IpAddr::V6(GATEWAY_V6)),
                next_hop: None,
            });
        }
        JoinInfo {
            src_name: src_name.into(),
            dst_prefix: "eth".to_string(),
            gateway: Some(GATEWAY_V4),
            gateway_v6: ipv6.then_some(GATEWAY_V6),
            static_routes,
        }
    }
}

/// IPAM RequestPool: `docker network create --ipam-driver calico-ipam [--subnet CIDR]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRequest {
    pub address_space: String,
    /// `--subnet`; `None` asks for "any Calico pool".
    pub pool: Option<IpNet>,
    /// `--ipam-opt` values.
    pub options: BTreeMap<String, String>,
    /// Whether Docker wants an IPv6 pool (only meaningful without `pool`).
    pub v6: bool,
}

/// The answer to RequestPool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// Echoed back by Docker in every RequestAddress; the same pool must get the same ID.
    pub pool_id: String,
    /// What Docker records as the network's subnet. Addresses Docker is asked to use
    /// (`--ip`) must lie inside it, so the catch-all is 0.0.0.0/0 (::/0).
    pub pool: IpNet,
}

/// IPAM RequestAddress. Docker says nothing here about which container or endpoint
/// the address is for: the first time the address meets its endpoint is CreateEndpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRequest {
    pub pool_id: String,
    /// `--ip`; `None` means "any free address of the pool".
    pub address: Option<IpAddr>,
    /// IPAM options; the gateway request (`RequestAddressType`) never reaches a backend.
    pub options: BTreeMap<String, String>,
}

/// The agent's half of the Docker plugin. Implementations must be safe to call
/// concurrently: Docker starts containers in parallel.
///
/// Methods return `impl Future + Send` so a backend can write `async fn`.
pub trait Backend: Send + Sync + 'static {
    // ---- network driver (`calico`) ----

    /// Ensure the network's group exists (with the default rules when created here).
    fn create_network(&self, req: NetworkCreate) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The network is gone from Docker. The group stays: other networks, hosts or
    /// Containers may use it.
    fn delete_network(&self, network_id: String) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Record the endpoint (a Docker-owned Container resource holding the IPAM
    /// address), and say what the container-side interface should look like.
    fn create_endpoint(&self, req: EndpointCreate) -> impl Future<Output = anyhow::Result<EndpointInterface>> + Send;

    /// Forget the endpoint. Docker calls it after Leave; it must also cope with an
    /// endpoint it never heard of (Docker cleaning up after a crash).
    fn delete_endpoint(
        &self,
        network_id: String,
        endpoint_id: String,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Create the veth pair in the host namespace and say which end Docker moves.
    fn join(&self, req: JoinRequest) -> impl Future<Output = anyhow::Result<JoinInfo>> + Send;

    /// Remove the host-side veth (which takes its peer with it).
    fn leave(&self, network_id: String, endpoint_id: String) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Free-form data shown under the endpoint by Docker.
    fn endpoint_oper_info(
        &self,
        network_id: String,
        endpoint_id: String,
    ) -> impl Future<Output = anyhow::Result<BTreeMap<String, serde_json::Value>>> + Send {
        let _ = (network_id, endpoint_id);
        async { Ok(BTreeMap::new()) }
    }

    /// Called after Docker has moved and configured the interface inside the sandbox
    /// (only for the endpoint that provides the container's default gateway): the
    /// first moment the driver can touch the container's side, e.g. to add the
    /// permanent neighbour entry for the gateway.
    fn program_external_connectivity(
        &self,
        network_id: String,
        endpoint_id: String,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let _ = (network_id, endpoint_id);
        async { Ok(()) }
    }

    /// The endpoint stopped being the container's gateway endpoint.
    fn revoke_external_connectivity(
        &self,
        network_id: String,
        endpoint_id: String,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let _ = (network_id, endpoint_id);
        async { Ok(()) }
    }

    // ---- IPAM driver (`calico-ipam`) ----

    /// Check `--subnet` against the IPPools and name the pool.
    fn request_pool(&self, req: PoolRequest) -> impl Future<Output = anyhow::Result<PoolInfo>> + Send;

    fn release_pool(&self, pool_id: String) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Assign one address (the requested one, or any free one of the pool). The plugin
    /// layer hands it to Docker as a host route (/32, /128).
    fn request_address(&self, req: AddressRequest) -> impl Future<Output = anyhow::Result<IpAddr>> + Send;

    /// Release an address Docker no longer uses. Releasing a free address is not an error.
    fn release_address(&self, pool_id: String, address: IpAddr) -> impl Future<Output = anyhow::Result<()>> + Send;
}
