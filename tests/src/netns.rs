//! Network namespaces as hosts and workloads.

use std::path::PathBuf;

use crate::{sh, unique};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> anyhow::Result<Netns> {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes left inside would keep interfaces alive; kill them first.
        if let Ok(pids) = sh(&["ip", "netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = sh(&["kill", "-9", pid]);
            }
        }
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A layer-2 segment (a bridge in its own namespace) joining host namespaces, like a
/// rack switch. Hosts get `eth0` with an address on `subnet`.
pub struct Fabric {
    pub ns: Netns,
    pub hosts: Vec<Host>,
    prefix_len: u8,
}

pub struct Host {
    pub ns: Netns,
    pub addr: std::net::Ipv4Addr,
}

impl Fabric {
    pub fn new() -> anyhow::Result<Fabric> {
        let ns = Netns::new("cfab")?;
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        ns.exec(&["ip", "link", "set", "br0", "up"])?;
        Ok(Fabric {
            ns,
            hosts: Vec::new(),
            prefix_len: 24,
        })
    }

    /// Adds a host namespace with `addr` (e.g. 172.17.8.101) on the fabric.
    pub fn add_host(&mut self, addr: std::net::Ipv4Addr) -> anyhow::Result<&Host> {
        let host = Netns::new("chost")?;
        let idx = self.hosts.len();
        let outer = format!("p{idx}");
        sh(&[
            "ip",
            "link",
            "add",
            &outer,
            "netns",
            &self.ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.name,
        ])?;
        self.ns.exec(&["ip", "link", "set", &outer, "master", "br0", "up"])?;
        host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/{}", self.prefix_len),
            "dev",
            "eth0",
        ])?;
        host.exec(&["ip", "link", "set", "eth0", "up"])?;
        host.sysctl("net.ipv4.ip_forward", "1")?;
        host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.hosts.push(Host { ns: host, addr });
        Ok(&self.hosts[idx])
    }
}
