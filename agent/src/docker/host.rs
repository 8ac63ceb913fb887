//! Kernel work of the Docker network driver: the veth pair Join hands to Docker, and
//! the gateway's neighbour entry inside a container.
//!
//! Unlike the agent's own plumbing (which creates the workload end directly in the
//! workload's namespace), the plugin creates both ends in the host namespace: Docker
//! moves the container end into the sandbox itself and configures it there.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkUnspec, LinkVeth};

use crate::dataplane::link::address_of;
use crate::dataplane::netns::{netlink_in_netns, ns_label, run_in_netns_async};
use crate::dataplane::workload::{host_sysctls, link_by_name, Plumber, GATEWAY_V4, HOST_MAC};

/// Creates the pair `host_name` <-> `peer_name` in the plumber's host namespace: the
/// host side gets the gateway MAC, the host-side sysctls of every workload (proxy ARP
/// without delay, forwarding) and is brought up; the peer is left for Docker to move,
/// rename and configure. Anything already using either name is replaced (a Join
/// retried after a failure, or a leftover of a crash).
pub async fn create_veth(plumber: &Plumber, host_name: &str, peer_name: &str, mtu: u32) -> anyhow::Result<()> {
    plumber.teardown(host_name).await?;
    plumber.teardown(peer_name).await?;
    let handle = plumber.host_handle();
    let label = ns_label(plumber.host_netns());
    let peer = LinkUnspec::new_with_name(peer_name).mtu(mtu);
    let msg = LinkVeth::new(host_name, peer_name)
        .address(HOST_MAC.to_vec())
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("creating the veth pair {host_name} <-> {peer_name}"))?;
    let link = link_by_name(handle, host_name, &label)
        .await?
        .ok_or_else(|| anyhow!("{host_name} vanished right after it was created"))?;
    let name = host_name.to_string();
    // Docker's networks are IPv4 only (calico.rs refuses IPv6), so no IPv6 sysctls.
    run_in_netns_async(plumber.host_netns(), move || host_sysctls(&name, false, &label))
        .await?
        .with_context(|| format!("setting the sysctls of {host_name}"))?;
    handle
        .link()
        .change(LinkUnspec::new_with_index(link.header.index).up().build())
        .execute()
        .await
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("bringing up {host_name}"))?;
    Ok(())
}

/// Inside the namespace at `netns`, adds `169.254.1.1 lladdr ee:ee:ee:ee:ee:ee
/// PERMANENT` on the interface that carries `ip`. Proxy ARP answers for the gateway
/// only on hosts with a route to it elsewhere (normally a default route); the fixed
/// entry works everywhere (DESIGN.md). `Ok(false)`: no interface carries `ip` (yet).
pub async fn ensure_gateway_neighbour(netns: &Path, ip: IpAddr) -> anyhow::Result<bool> {
    if !ip.is_ipv4() {
        return Ok(true);
    }
    let handle = netlink_in_netns(Some(netns)).await?;
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("listing the addresses in {}", netns.display()))?;
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
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("adding the neighbour 169.254.1.1 in {}", netns.display()))?;
    Ok(true)
}

/// The pid of the process serving the unix socket at `path` (SO_PEERCRED): dockerd's,
/// for its API socket.
pub fn socket_peer_pid(path: &Path) -> Option<u32> {
    let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd and a buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Where this process can open a sandbox path Docker gave (`/var/run/docker/netns/X`):
/// through dockerd's root (`/proc/<pid>/root/run/...`), which works whether or not
/// dockerd runs in our mount namespace (in another one, the path here is at best the
/// empty file the namespace is bind-mounted on); without dockerd's pid, as is.
/// `/var/run` is spelled `/run` because an absolute symlink inside `/proc/<pid>/root`
/// would resolve against our own root.
pub fn sandbox_path(key: &str, dockerd_pid: Option<u32>) -> PathBuf {
    match dockerd_pid {
        Some(pid) => {
            let inner = key
                .strip_prefix("/var/run/")
                .map_or_else(|| key.to_string(), |rest| format!("/run/{rest}"));
            PathBuf::from(format!("/proc/{pid}/root{inner}"))
        }
        None => PathBuf::from(key),
    }
}

/// Adds the gateway neighbour in the sandbox `key` as soon as Docker has set it up:
/// with an external key (Docker 20.10), the namespace is bind-mounted and the
/// interface moved in only in the container's prestart hook, after the plugin calls.
/// Tries for up to `within`; `Ok(true)` once added.
pub async fn gateway_neighbour_when_ready(
    key: &str,
    dockerd_pid: Option<u32>,
    ips: &[IpAddr],
    within: std::time::Duration,
) -> anyhow::Result<bool> {
    let path = sandbox_path(key, dockerd_pid);
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut done = true;
        let mut last_err = None;
        for ip in ips {
            match ensure_gateway_neighbour(&path, *ip).await {
                Ok(d) => done &= d,
                Err(e) => {
                    done = false;
                    last_err = Some(e);
                }
            }
        }
        if done {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return match last_err {
                Some(e) => Err(e),
                None => Ok(false),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_go_through_dockerds_root() {
        assert_eq!(
            sandbox_path("/var/run/docker/netns/x", None),
            PathBuf::from("/var/run/docker/netns/x")
        );
        assert_eq!(
            sandbox_path("/var/run/docker/netns/x", Some(42)),
            PathBuf::from("/proc/42/root/run/docker/netns/x")
        );
        assert_eq!(
            sandbox_path("/tmp/d/exec/netns/x", Some(42)),
            PathBuf::from("/proc/42/root/tmp/d/exec/netns/x")
        );
    }
}
