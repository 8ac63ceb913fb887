//! Plumbing of one workload: a veth pair from the host into the workload's
//! network namespace, the workload's addresses and routes, and the host-side
//! settings that make the host answer for the workload's gateway.
//!
//! The workload sees a point-to-point world: its addresses are /32 (/128) and
//! its only neighbour is a fixed gateway, 169.254.1.1 (fe80::ecee:eeff:feee:eeee
//! for IPv6), which no host actually owns. The host side of every veth carries
//! the same MAC, ee:ee:ee:ee:ee:ee, so the workload's frames to the "gateway"
//! land on the host, which routes them by its `/32 dev caliX` routes (installed
//! by [`super::routes`], not here).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::netlink_errno;
use super::netns::{netlink_in_netns, ns_label, open_netns, run_in_netns_async, write_sysctl, NetnsError};

/// MAC of every host-side veth: the workload's gateway is always this address.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The workload's IPv4 gateway; link-local, so it never collides with a real host.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The workload's IPv6 gateway: the EUI-64 link-local that the kernel derives
/// from [`HOST_MAC`] on the host side, so the host really owns it too.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Name of the host-side interface of a Container: `prefix` plus as many hex
/// digits of SHA-256(container name) as fit in 15 bytes (11 for `cali`).
/// Deterministic, so a restarted agent finds the interfaces it made.
pub fn host_ifname(prefix: &str, container_name: &str) -> String {
    let digest = Sha256::digest(container_name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let room = MAX_IFNAME_LEN.saturating_sub(prefix.len());
    format!("{prefix}{}", &hex[..room.min(hex.len())])
}

/// What one workload's plumbing should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Host-side interface name, e.g. from [`host_ifname`].
    pub host_ifname: String,
    /// The workload's network namespace (`/var/run/netns/X`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// Interface name inside the workload.
    pub ifname: String,
    /// The workload's addresses; each is installed as /32 or /128.
    pub ips: Vec<IpAddr>,
    /// MTU of both ends; `None` leaves the kernel's default.
    pub mtu: Option<u32>,
}

impl WorkloadSpec {
    /// A spec with the default inside name `eth0` and the kernel's MTU.
    pub fn new(host_ifname: impl Into<String>, netns: impl Into<PathBuf>, ips: Vec<IpAddr>) -> Self {
        WorkloadSpec {
            host_ifname: host_ifname.into(),
            netns: netns.into(),
            ifname: "eth0".to_string(),
            ips,
            mtu: None,
        }
    }

    fn has_v4(&self) -> bool {
        self.ips.iter().any(IpAddr::is_ipv4)
    }

    fn has_v6(&self) -> bool {
        self.ips.iter().any(IpAddr::is_ipv6)
    }

    pub fn validate(&self) -> Result<(), WorkloadError> {
        for (what, name) in [("host interface", &self.host_ifname), ("interface", &self.ifname)] {
            if !valid_ifname(name) {
                return Err(WorkloadError::InvalidSpec(format!(
                    "{what} name {name:?} must be 1-{MAX_IFNAME_LEN} bytes without '/', ':' or whitespace"
                )));
            }
        }
        for ip in &self.ips {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(WorkloadError::InvalidSpec(format!("{ip} cannot be a workload address")));
            }
        }
        if let Some(mtu) = self.mtu {
            // 68 is IPv4's minimum; IPv6 needs 1280, checked only when it is used.
            let min = if self.has_v6() { 1280 } else { 68 };
            if !(min..=65535).contains(&mtu) {
                return Err(WorkloadError::InvalidSpec(format!("MTU {mtu} outside {min}-65535")));
            }
        }
        Ok(())
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// What [`Plumber::setup`] found or made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ifname: String,
    /// Index inside the workload's namespace.
    pub ifindex: u32,
    /// The workload side's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ips: Vec<IpAddr>,
    /// `false` when an existing, correct pair was fixed up in place.
    pub created: bool,
}

/// A host-side interface, as listed by [`Plumber::list_host_ifaces`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIface {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub is_veth: bool,
    /// The peer's namespace id as seen from the host (`None`: same namespace
    /// or not a veth).
    pub peer_netns_id: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("invalid workload spec: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{action} ({link}, netns {netns}): {source}")]
    Netlink {
        action: &'static str,
        link: String,
        netns: String,
        // Boxed: rtnetlink's error can carry a whole netlink message.
        source: Box<rtnetlink::Error>,
    },
    #[error("set sysctl {key}={value} (netns {netns}): {source}")]
    Sysctl {
        key: String,
        value: String,
        netns: String,
        source: io::Error,
    },
    #[error("{action} ({link}, netns {netns}): {detail}")]
    Unexpected {
        action: &'static str,
        link: String,
        netns: String,
        detail: String,
    },
}

/// Every failure of a [`Plumber::teardown_all`], which keeps going past them.
#[derive(Debug, thiserror::Error)]
#[error("teardown failed for {} interface(s): {}", .errors.len(), join_errors(.errors))]
pub struct TeardownError {
    pub errors: Vec<WorkloadError>,
}

fn join_errors(errors: &[WorkloadError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Attaches the netavark-style "what were we doing" context to netlink errors.
trait Wrap<T> {
    fn wrap(self, action: &'static str, link: &str, netns: &str) -> Result<T, WorkloadError>;
}

impl<T> Wrap<T> for Result<T, rtnetlink::Error> {
    fn wrap(self, action: &'static str, link: &str, netns: &str) -> Result<T, WorkloadError> {
        self.map_err(|source| WorkloadError::Netlink {
            action,
            link: link.to_string(),
            netns: netns.to_string(),
            source: Box::new(source),
        })
    }
}

/// The operations the reconcile loop needs, so it can run against a fake.
pub trait WorkloadPlumbing: Send + Sync {
    fn setup(
        &self,
        spec: &WorkloadSpec,
    ) -> impl std::future::Future<Output = Result<WorkloadInfo, WorkloadError>> + Send;
    /// Removes the pair; `Ok(false)` when it was already gone.
    fn teardown(&self, host_ifname: &str) -> impl std::future::Future<Output = Result<bool, WorkloadError>> + Send;
    fn list_host_ifaces(
        &self,
        prefix: &str,
    ) -> impl std::future::Future<Output = Result<Vec<HostIface>, WorkloadError>> + Send;
}

/// Real plumbing through rtnetlink, from a host namespace (the agent's own, or
/// another one when the "host" is itself a test namespace).
pub struct Plumber {
    host_netns: Option<PathBuf>,
    host: Handle,
    label: String,
}

impl Plumber {
    pub async fn new(host_netns: Option<PathBuf>) -> Result<Self, WorkloadError> {
        let host = netlink_in_netns(host_netns.as_deref()).await?;
        let label = ns_label(host_netns.as_deref());
        Ok(Plumber {
            host_netns,
            host,
            label,
        })
    }

    /// The rtnetlink handle bound to the host namespace (for route reconcile).
    pub fn host_handle(&self) -> &Handle {
        &self.host
    }

    pub fn host_netns(&self) -> Option<&Path> {
        self.host_netns.as_deref()
    }

    /// Creates, or fixes up, the plumbing of one workload. Idempotent: an
    /// existing host interface whose peer is `spec.ifname` in `spec.netns` is
    /// kept and its settings re-applied; anything else under that name is
    /// deleted and the pair recreated.
    pub async fn setup(&self, spec: &WorkloadSpec) -> Result<WorkloadInfo, WorkloadError> {
        spec.validate()?;
        let started = Instant::now();
        let wl_label = spec.netns.display().to_string();
        let ns_file = open_netns(&spec.netns)?;

        let (wl, existing) = futures::try_join!(
            async { netlink_in_netns(Some(&spec.netns)).await.map_err(WorkloadError::from) },
            link_by_name(&self.host, &spec.host_ifname, &self.label),
        )?;

        let pair = match existing {
            None => None,
            Some(link) => match self.existing_pair(&link, &ns_file, &wl, spec).await? {
                Some(pair) => Some(pair),
                None => {
                    warn!(link = %spec.host_ifname, netns = %wl_label,
                        "host interface exists but is not the veth to this workload; recreating");
                    self.host.link().del(link.header.index).execute().await.wrap(
                        "delete stale host interface",
                        &spec.host_ifname,
                        &self.label,
                    )?;
                    None
                }
            },
        };
        let created = pair.is_none();
        let (host_index, wl_link) = match pair {
            Some(pair) => pair,
            None => self.create_pair(spec, &ns_file, &wl).await?,
        };
        let wl_index = wl_link.header.index;

        futures::try_join!(
            self.configure_host_side(spec, host_index),
            configure_workload_side(&wl, spec, wl_index),
        )?;

        let info = WorkloadInfo {
            host_ifname: spec.host_ifname.clone(),
            host_ifindex: host_index,
            ifname: spec.ifname.clone(),
            ifindex: wl_index,
            mac: link_mac(&wl_link).unwrap_or_default(),
            ips: spec.ips.clone(),
            created,
        };
        info!(link = %spec.host_ifname, netns = %wl_label, created,
            elapsed_us = started.elapsed().as_micros() as u64, "workload plumbed");
        Ok(info)
    }

    /// `Some((host index, workload link))` when `link` is a veth whose peer is
    /// `spec.ifname` inside `spec.netns`.
    async fn existing_pair(
        &self,
        link: &LinkMessage,
        ns_file: &File,
        wl: &Handle,
        spec: &WorkloadSpec,
    ) -> Result<Option<(u32, LinkMessage)>, WorkloadError> {
        let (Some(peer_nsid), Some(peer_index)) = (link_peer_nsid(link), link_peer_index(link)) else {
            return Ok(None);
        };
        if !link_is_veth(link) {
            return Ok(None);
        }
        let wl_nsid = nsid_of(&self.host, ns_file).await.wrap(
            "look up the workload's namespace id",
            &spec.host_ifname,
            &self.label,
        )?;
        if wl_nsid != Some(peer_nsid) {
            return Ok(None);
        }
        let wl_label = spec.netns.display().to_string();
        Ok(link_by_name(wl, &spec.ifname, &wl_label)
            .await?
            .filter(|l| l.header.index == peer_index)
            .map(|l| (link.header.index, l)))
    }

    /// One RTM_NEWLINK makes both ends, the peer directly in the workload's
    /// namespace: moving it afterwards would cost a second namespace change
    /// (Calico measured 10-17 ms against 2 ms). Both ends start down so the
    /// sysctls are in place before IPv6 brings up link-locals.
    async fn create_pair(
        &self,
        spec: &WorkloadSpec,
        ns_file: &File,
        wl: &Handle,
    ) -> Result<(u32, LinkMessage), WorkloadError> {
        let mut peer = LinkUnspec::new_with_name(&spec.ifname).setns_by_fd(ns_file.as_raw_fd());
        let mut host = LinkVeth::new(&spec.host_ifname, &spec.ifname).address(HOST_MAC.to_vec());
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
            host = host.mtu(mtu);
        }
        let msg = host.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
        self.host
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|source| WorkloadError::Netlink {
                action: "create veth pair",
                link: format!("{} <-> {} in {}", spec.host_ifname, spec.ifname, spec.netns.display()),
                netns: self.label.clone(),
                source: Box::new(source),
            })?;
        debug!(link = %spec.host_ifname, "veth pair created");

        let wl_label = spec.netns.display().to_string();
        let (host_link, wl_link) = futures::try_join!(
            link_by_name(&self.host, &spec.host_ifname, &self.label),
            link_by_name(wl, &spec.ifname, &wl_label),
        )?;
        let missing = |link: &str, netns: &str| WorkloadError::Unexpected {
            action: "find the new veth end",
            link: link.to_string(),
            netns: netns.to_string(),
            detail: "not found right after creation".to_string(),
        };
        let host_index = host_link
            .ok_or_else(|| missing(&spec.host_ifname, &self.label))?
            .header
            .index;
        let wl_link = wl_link.ok_or_else(|| missing(&spec.ifname, &wl_label))?;
        Ok((host_index, wl_link))
    }

    async fn configure_host_side(&self, spec: &WorkloadSpec, index: u32) -> Result<(), WorkloadError> {
        let ifname = spec.host_ifname.clone();
        let v6 = spec.has_v6();
        let netns = self.label.clone();
        // /proc/sys/net belongs to the opening thread's namespace: write from the host's.
        run_in_netns_async(self.host_netns.as_deref(), move || host_sysctls(&ifname, v6, &netns)).await??;

        let mut msg = LinkUnspec::new_with_index(index).address(HOST_MAC.to_vec()).up();
        if let Some(mtu) = spec.mtu {
            msg = msg.mtu(mtu);
        }
        self.host.link().change(msg.build()).execute().await.wrap(
            "bring up host interface",
            &spec.host_ifname,
            &self.label,
        )
    }

    /// Turns on IPv6 forwarding for the host namespace. IPv4 needs no global
    /// switch (the per-interface `forwarding` set on each caliX suffices, as
    /// IPv4 decides by the receiving interface); IPv6 forwards only when
    /// `net.ipv6.conf.all.forwarding` is on. Note that this makes interfaces
    /// with `accept_ra=1` ignore router advertisements; uplinks configured by
    /// SLAAC need `accept_ra=2`.
    pub async fn enable_ipv6_forwarding(&self) -> Result<(), WorkloadError> {
        let netns = self.label.clone();
        run_in_netns_async(self.host_netns.as_deref(), move || {
            sysctl("net/ipv6/conf/all/forwarding".to_string(), "1", &netns)
        })
        .await?
    }

    /// Removes the pair of `host_ifname` (deleting one end deletes both, and
    /// the kernel drops the routes through it). `Ok(false)`: nothing was there.
    pub async fn teardown(&self, host_ifname: &str) -> Result<bool, WorkloadError> {
        let Some(link) = link_by_name(&self.host, host_ifname, &self.label).await? else {
            return Ok(false);
        };
        match self.host.link().del(link.header.index).execute().await {
            Ok(()) => {
                info!(link = %host_ifname, "workload interface removed");
                Ok(true)
            }
            // Someone else removed it between our lookup and delete: the goal holds.
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e).wrap("delete host interface", host_ifname, &self.label),
        }
    }

    /// Tears down every named interface, going on past failures so that one
    /// stuck interface cannot keep the others alive. Returns how many existed.
    pub async fn teardown_all<S: AsRef<str>>(&self, host_ifnames: &[S]) -> Result<usize, TeardownError> {
        let mut removed = 0;
        let mut errors = Vec::new();
        for name in host_ifnames {
            match self.teardown(name.as_ref()).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    warn!(link = %name.as_ref(), error = %e, "teardown failed");
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(TeardownError { errors })
        }
    }

    /// Host interfaces whose name starts with `prefix` (ours: `cali`).
    pub async fn list_host_ifaces(&self, prefix: &str) -> Result<Vec<HostIface>, WorkloadError> {
        let links: Vec<LinkMessage> = self.host.link().get().execute().try_collect().await.wrap(
            "list links",
            &format!("{prefix}*"),
            &self.label,
        )?;
        Ok(links
            .iter()
            .filter_map(|l| {
                let name = link_name(l)?;
                name.starts_with(prefix).then(|| HostIface {
                    name: name.to_string(),
                    index: l.header.index,
                    up: l.header.flags.contains(LinkFlags::Up),
                    is_veth: link_is_veth(l),
                    peer_netns_id: link_peer_nsid(l),
                })
            })
            .collect())
    }
}

impl WorkloadPlumbing for Plumber {
    async fn setup(&self, spec: &WorkloadSpec) -> Result<WorkloadInfo, WorkloadError> {
        Plumber::setup(self, spec).await
    }

    async fn teardown(&self, host_ifname: &str) -> Result<bool, WorkloadError> {
        Plumber::teardown(self, host_ifname).await
    }

    async fn list_host_ifaces(&self, prefix: &str) -> Result<Vec<HostIface>, WorkloadError> {
        Plumber::list_host_ifaces(self, prefix).await
    }
}

fn sysctl(key: String, value: &str, netns: &str) -> Result<(), WorkloadError> {
    write_sysctl(&key, value).map_err(|source| WorkloadError::Sysctl {
        key,
        value: value.to_string(),
        netns: netns.to_string(),
        source,
    })
}

/// Runs on a thread in the host's namespace.
pub(crate) fn host_sysctls(ifname: &str, v6: bool, netns: &str) -> Result<(), WorkloadError> {
    // Answer ARP for the gateway (and anything else) with our MAC, at once
    // rather than after the default random 0-800 ms delay.
    sysctl(format!("net/ipv4/conf/{ifname}/proxy_arp"), "1", netns)?;
    sysctl(format!("net/ipv4/neigh/{ifname}/proxy_delay"), "0", netns)?;
    sysctl(format!("net/ipv4/conf/{ifname}/forwarding"), "1", netns)?;
    if v6 {
        // No DAD: the link-local the workload routes through must be usable
        // the moment the link is up; it is unique per link by construction.
        sysctl(format!("net/ipv6/conf/{ifname}/accept_dad"), "0", netns)?;
        sysctl(format!("net/ipv6/conf/{ifname}/proxy_ndp"), "1", netns)?;
        sysctl(format!("net/ipv6/conf/{ifname}/forwarding"), "1", netns)?;
    }
    Ok(())
}

/// Runs on a thread in the workload's namespace.
fn workload_sysctls(ifname: &str, netns: &str) -> Result<(), WorkloadError> {
    // Docker turns IPv6 off in containers of non-IPv6 networks.
    sysctl(format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0", netns)?;
    sysctl(format!("net/ipv6/conf/{ifname}/accept_dad"), "0", netns)?;
    Ok(())
}

async fn configure_workload_side(wl: &Handle, spec: &WorkloadSpec, index: u32) -> Result<(), WorkloadError> {
    let netns = spec.netns.display().to_string();
    let ifname = spec.ifname.as_str();
    if spec.has_v6() {
        let (name, label) = (spec.ifname.clone(), netns.clone());
        run_in_netns_async(Some(&spec.netns), move || workload_sysctls(&name, &label)).await??;
    }

    sync_addresses(wl, spec, index, &netns).await?;

    let mut up = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = spec.mtu {
        up = up.mtu(mtu);
    }
    wl.link()
        .change(up.build())
        .execute()
        .await
        .wrap("bring up workload interface", ifname, &netns)?;
    // Local traffic to the workload's own IPs goes through lo; a bare netns has it down.
    if let Some(lo) = link_by_name(wl, "lo", &netns).await? {
        wl.link()
            .change(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .wrap("bring up loopback", "lo", &netns)?;
    }

    if spec.has_v4() {
        let onlink = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(GATEWAY_V4, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        wl.route()
            .add(onlink)
            .replace()
            .execute()
            .await
            .wrap("add route 169.254.1.1 scope link", ifname, &netns)?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(GATEWAY_V4)
            .output_interface(index)
            .build();
        wl.route()
            .add(default)
            .replace()
            .execute()
            .await
            .wrap("add default route via 169.254.1.1", ifname, &netns)?;
        // Proxy ARP answers for 169.254.1.1 only when the host has some route
        // to it elsewhere; a fixed entry works with or without one.
        wl.neighbours()
            .add(index, IpAddr::V4(GATEWAY_V4))
            .link_layer_address(&HOST_MAC)
            .replace()
            .execute()
            .await
            .wrap("add neighbour 169.254.1.1", ifname, &netns)?;
    }
    if spec.has_v6() {
        let default = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(GATEWAY_V6)
            .output_interface(index)
            .build();
        wl.route().add(default).replace().execute().await.wrap(
            "add default route via fe80::ecee:eeff:feee:eeee",
            ifname,
            &netns,
        )?;
        wl.neighbours()
            .add(index, IpAddr::V6(GATEWAY_V6))
            .link_layer_address(&HOST_MAC)
            .replace()
            .execute()
            .await
            .wrap("add neighbour fe80::ecee:eeff:feee:eeee", ifname, &netns)?;
    }
    Ok(())
}

/// Makes the interface's addresses exactly `spec.ips` (as /32, /128), leaving
/// IPv6 link-locals alone.
async fn sync_addresses(wl: &Handle, spec: &WorkloadSpec, index: u32, netns: &str) -> Result<(), WorkloadError> {
    let ifname = spec.ifname.as_str();
    let present: Vec<AddressMessage> = wl
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .wrap("list addresses", ifname, netns)?;
    for msg in present {
        let Some(ip) = address_of(&msg) else { continue };
        let full_len = if ip.is_ipv4() { 32 } else { 128 };
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if link_local || (spec.ips.contains(&ip) && msg.header.prefix_len == full_len) {
            continue;
        }
        wl.address()
            .del(msg)
            .execute()
            .await
            .wrap("delete stale address", ifname, netns)?;
    }
    for ip in &spec.ips {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let mut req = wl.address().add(index, *ip, len).replace();
        if ip.is_ipv6() {
            // The address is ours by IPAM; waiting ~1 s for DAD would only delay traffic.
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        req.execute().await.wrap("add address", ifname, netns)?;
    }
    Ok(())
}

pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
    netns: &str,
) -> Result<Option<LinkMessage>, WorkloadError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.next().await {
        None => Ok(None),
        Some(Ok(link)) => Ok(Some(link)),
        Some(Err(e)) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Some(Err(e)) => Err(e).wrap("look up link", name, netns),
    }
}

/// The id under which the host's namespace knows `ns` (what a veth's
/// IFLA_LINK_NETNSID refers to); `None` if none is assigned yet.
async fn nsid_of(handle: &Handle, ns: &File) -> Result<Option<i32>, rtnetlink::Error> {
    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Fd(ns.as_raw_fd() as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut responses = handle.clone().request(req)?;
    let mut found = None;
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(rtnetlink::Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                found = m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Ok(found)
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

fn link_peer_nsid(link: &LinkMessage) -> Option<i32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    })
}

fn link_peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

fn link_mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => Some(bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
        _ => None,
    })
}

pub(crate) fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    // For IPv4 IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
    // peer's on point-to-point links); IPv6 only has IFA_ADDRESS.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_fits_ifnamsiz() {
        let name = host_ifname("cali", "web-1");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("cali"));
        assert_eq!(name, host_ifname("cali", "web-1"));
        assert_ne!(name, host_ifname("cali", "web-2"));
        assert_eq!(
            host_ifname("averyverylongprefix", "x").len(),
            "averyverylongprefix".len()
        );
    }

    #[test]
    fn gateway_v6_is_eui64_of_host_mac() {
        // EUI-64: flip the U/L bit of the first byte, insert ff:fe in the middle.
        let mut eui = [0u8; 8];
        eui[..3].copy_from_slice(&HOST_MAC[..3]);
        eui[3] = 0xff;
        eui[4] = 0xfe;
        eui[5..].copy_from_slice(&HOST_MAC[3..]);
        eui[0] ^= 0x02;
        let mut octets = [0u8; 16];
        octets[0] = 0xfe;
        octets[1] = 0x80;
        octets[8..].copy_from_slice(&eui);
        assert_eq!(Ipv6Addr::from(octets), GATEWAY_V6);
    }

    #[test]
    fn spec_validation() {
        let ok = WorkloadSpec::new(
            "cali0123456789a",
            "/var/run/netns/x",
            vec!["10.65.0.5".parse().unwrap()],
        );
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.host_ifname = "cali0123456789ab".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.ifname = "eth 0".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.ips = vec!["224.0.0.1".parse().unwrap()];
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.ips.push("fd00::5".parse().unwrap());
        bad.mtu = Some(1000);
        assert!(bad.validate().is_err());
    }
}
