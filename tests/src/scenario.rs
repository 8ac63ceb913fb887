//! Small ready-made clusters for the agent's end-to-end tests.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// One workload: name, host index (0-based), address (`None`: IPAM assigns), group.
pub type Wl<'a> = (&'a str, usize, Option<&'a str>, &'a str);

/// The cluster-wide settings every scenario starts from: the seed's AS number and one
/// pool, 10.65.0.0/16 in /26 blocks.
pub const BASE: &str = "apiVersion: calico/v1
kind: ClusterConfig
metadata: {name: default}
spec: {asNumber: 64511, nodeToNodeMesh: true}
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: pool4}
spec: {cidr: 10.65.0.0/16, blockSize: 26}
";

/// A cluster of `hosts` hosts with agents, the [`BASE`] settings (or `base`), a Group
/// per distinct group name and the workloads, applied in one `calicoctl apply`. Does
/// not wait for anything.
pub fn cluster(hosts: usize, base: Option<&str>, wls: &[Wl]) -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(hosts)?;
    let mut yaml = base.unwrap_or(BASE).to_string();
    let groups: BTreeSet<&str> = wls.iter().map(|w| w.3).collect();
    for g in groups {
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Group\nmetadata: {{name: {g}}}\nspec: {{}}\n"
        ));
    }
    c.apply(&yaml)?;
    for i in 0..hosts {
        c.start_agent(i)?;
    }
    let mut yaml = String::new();
    for (name, host, ip, group) in wls {
        c.workload_ns(name)?;
        yaml.push_str(&c.container_yaml(name, &format!("host{}", host + 1), *ip, &[group]));
    }
    if !yaml.is_empty() {
        c.apply(&yaml)?;
    }
    Ok(c)
}

/// Waits until `from` pings `to`; panics with the agents' logs when it does not within
/// `timeout`. Returns how long it took.
pub fn await_ping(c: &Cluster, from: &str, to: IpAddr, timeout: Duration) -> Duration {
    let t = Instant::now();
    let ok = Cluster::wait_for(timeout, || crate::can_ping(c.wl(from), to, 1));
    assert!(ok, "{from} never reached {to} within {timeout:?}\n{}", c.dump_logs());
    t.elapsed()
}

/// A Container's address from its status, once its agent reports it programmed.
pub fn await_programmed(c: &Cluster, name: &str, timeout: Duration) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    let ok = Cluster::wait_for(timeout, || match c.container_status(name) {
        Some(s) if s.state == calico_schema::EndpointState::Programmed => {
            ips = s.ips;
            true
        }
        _ => false,
    });
    assert!(
        ok,
        "{name} not programmed within {timeout:?}: {:?}\n{}",
        c.container_status(name),
        c.dump_logs()
    );
    ips
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}
