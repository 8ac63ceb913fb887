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
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

use crate::dataplane::netns::{netlink_in_netns, run_in_netns_async, write_sysctl};
use crate::dataplane::workload::{GATEWAY_V4, HOST_MAC};

/// The errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

async fn link_by_name(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.next().await {
        None => Ok(None),
        Some(Ok(link)) => Ok(Some(link)),
        Some(Err(e)) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Some(Err(e)) => Err(anyhow!(e)).with_context(|| format!("looking up link {name}")),
    }
}

/// Deletes a link by name; `Ok(false)` when there was none.
pub async fn delete_link(handle: &Handle, name: &str) -> anyhow::Result<bool> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(anyhow!(e)).with_context(|| format!("deleting link {name}")),
    }
}

/// Creates the pair `host_name` <-> `peer_name` in the host namespace (`handle` is
/// bound to it, `host_netns` names it for the sysctls): the host side gets the
/// gateway MAC, proxy ARP without delay and forwarding, and is brought up; the peer
/// is left for Docker to move, rename and configure. Anything already using either
/// name is replaced (a Join retried after a failure, or a leftover of a crash).
pub async fn create_veth(
    handle: &Handle,
    host_netns: Option<&Path>,
    host_name: &str,
    peer_name: &str,
    mtu: u32,
) -> anyhow::Result<()> {
    delete_link(handle, host_name).await?;
    delete_link(handle, peer_name).await?;
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
    let link = link_by_name(handle, host_name)
        .await?
        .ok_or_else(|| anyhow!("{host_name} vanished right after it was created"))?;
    let name = host_name.to_string();
    run_in_netns_async(host_netns, move || -> std::io::Result<()> {
        write_sysctl(&format!("net/ipv4/conf/{name}/proxy_arp"), "1")?;
        write_sysctl(&format!("net/ipv4/neigh/{name}/proxy_delay"), "0")?;
        write_sysctl(&format!("net/ipv4/conf/{name}/forwarding"), "1")
    })
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

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
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
