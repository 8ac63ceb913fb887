//! [`Plumber`]: a workload's veth pair made, checked, fixed up and removed through
//! rtnetlink from the host's namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};
use tracing::{debug, info, warn};

use super::super::link::{link_is_veth, link_mac, link_name, link_peer_index, link_peer_nsid, netlink_errno, nsid_of};
use super::super::netns::{netlink_in_netns, ns_label, open_netns, run_in_netns_async};
use super::configure::{configure_workload_side, host_sysctls, sysctl};
use super::{
    link_by_name, HostIface, TeardownError, WorkloadError, WorkloadInfo, WorkloadPlumbing, WorkloadSpec, Wrap, HOST_MAC,
};

/// Real plumbing through rtnetlink, from a host namespace (the agent's own, or
/// another one when the "host" is itself a test namespace).
pub struct Plumber {
    // Seen by `handoff`, which adds the Docker-style pair to the same plumber.
    pub(super) host_netns: Option<PathBuf>,
    pub(super) host: Handle,
    pub(super) label: String,
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
