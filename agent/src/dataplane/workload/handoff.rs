//! Plumbing for a runtime that moves the workload end itself (Docker's network driver):
//! a veth pair made wholly in the host namespace, and the gateway's neighbour entry
//! added inside the workload's namespace once the runtime has configured it.
//!
//! Unlike [`Plumber::setup`] (which creates the workload end directly in the workload's
//! namespace), here Docker moves the peer into the sandbox, renames and addresses it.

use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkUnspec, LinkVeth};

use super::super::link::address_of;
use super::super::netns::{netlink_in_netns, run_in_netns_async};
use super::configure::host_sysctls;
use super::{link_by_name, Plumber, WorkloadError, Wrap, GATEWAY_V4, HOST_MAC};

impl Plumber {
    /// Creates the pair `host_name` <-> `peer_name` in the host namespace: the host
    /// side gets the gateway MAC, the host-side sysctls of every workload (proxy ARP
    /// without delay, forwarding) and is brought up; the peer is left for the runtime
    /// to move, rename and configure. Anything already using either name is replaced
    /// (a Join retried after a failure, or a leftover of a crash).
    pub async fn create_handoff_pair(&self, host_name: &str, peer_name: &str, mtu: u32) -> Result<(), WorkloadError> {
        self.teardown(host_name).await?;
        self.teardown(peer_name).await?;
        let peer = LinkUnspec::new_with_name(peer_name).mtu(mtu);
        let msg = LinkVeth::new(host_name, peer_name)
            .address(HOST_MAC.to_vec())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.host.link().add(msg).execute().await.wrap(
            "create veth pair",
            &format!("{host_name} <-> {peer_name}"),
            &self.label,
        )?;
        let link =
            link_by_name(&self.host, host_name, &self.label)
                .await?
                .ok_or_else(|| WorkloadError::Unexpected {
                    action: "find the new veth end",
                    link: host_name.to_string(),
                    netns: self.label.clone(),
                    detail: "not found right after creation".to_string(),
                })?;
        let (name, label) = (host_name.to_string(), self.label.clone());
        // Docker's networks are IPv4 only (the Docker backend refuses IPv6), so no IPv6
        // sysctls.
        run_in_netns_async(self.host_netns.as_deref(), move || host_sysctls(&name, false, &label)).await??;
        self.host
            .link()
            .change(LinkUnspec::new_with_index(link.header.index).up().build())
            .execute()
            .await
            .wrap("bring up host interface", host_name, &self.label)
    }
}

/// Inside the namespace at `netns`, adds `169.254.1.1 lladdr ee:ee:ee:ee:ee:ee
/// PERMANENT` on the interface that carries `ip`. Proxy ARP answers for the gateway
/// only on hosts with a route to it elsewhere (normally a default route); the fixed
/// entry works everywhere (DESIGN.md). `Ok(false)`: no interface carries `ip` (yet).
/// IPv6 needs no entry (`Ok(true)`).
pub async fn add_gateway_neighbour(netns: &Path, ip: IpAddr) -> Result<bool, WorkloadError> {
    if !ip.is_ipv4() {
        return Ok(true);
    }
    let label = netns.display().to_string();
    let handle = netlink_in_netns(Some(netns)).await?;
    let addrs: Vec<AddressMessage> =
        handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .wrap("list addresses", &ip.to_string(), &label)?;
    let Some(index) = addrs.iter().find(|m| address_of(m) == Some(ip)).map(|m| m.header.index) else {
        return Ok(false);
    };
    handle
        .neighbours()
        .add(index, IpAddr::V4(GATEWAY_V4))
        .link_layer_address(&HOST_MAC)
        .replace()
        .execute()
        .await
        .wrap(
            "add the gateway neighbour 169.254.1.1",
            &format!("ifindex {index}"),
            &label,
        )?;
    Ok(true)
}
