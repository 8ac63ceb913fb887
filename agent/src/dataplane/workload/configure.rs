//! The settings of each end of a workload's veth: the host side's sysctls (proxy ARP
//! and NDP, forwarding), and inside the workload its addresses, its link and loopback
//! up, its routes to the gateway and the gateway's fixed neighbour entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::super::link::address_of;
use super::super::netns::{run_in_netns_async, write_sysctl};
use super::{link_by_name, WorkloadError, WorkloadSpec, Wrap, GATEWAY_V4, GATEWAY_V6, HOST_MAC};

pub(super) fn sysctl(key: String, value: &str, netns: &str) -> Result<(), WorkloadError> {
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

pub(super) async fn configure_workload_side(wl: &Handle, spec: &WorkloadSpec, index: u32) -> Result<(), WorkloadError> {
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
