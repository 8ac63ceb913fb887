//! Every host owns its own IPAM block, IPv4 and IPv6, and learns the other's block over
//! BGP. The routes must resolve to the peer on the host's own subnet whether or not the
//! host has a default route, and whether the mesh session is direct (the Node's address
//! carries its subnet, /24) or multihop (a bare address, /32, as `calicoctl node --ip`
//! registers by default): BIRD resolves a multihop next hop through the interface
//! routes its direct protocol imports (the kernel protocol's `learn` skips them).

use std::net::IpAddr;
use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{await_ping, await_programmed};
use calico_e2e::serial;

const BASE: &str = "apiVersion: calico/v1
kind: ClusterConfig
metadata: {name: default}
spec: {asNumber: 64511}
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: pool4}
spec: {cidr: 10.81.0.0/16, blockSize: 26}
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: pool6}
spec: {cidr: 'fd00:81::/112', blockSize: 122}
---
apiVersion: calico/v1
kind: Group
metadata: {name: g}
spec: {}
";

fn host6(i: usize) -> String {
    format!("fd00:8::{}", 101 + i)
}

/// Two hosts, each with workload on it whose addresses IPAM assigns from that host's
/// own block; Nodes registered with `/{p4}` and `/{p6}`.
fn run(p4: u8, p6: u8, default_route: bool) {
    let _g = serial();
    let mut c = Cluster::new(2).expect("fabric");
    c.register_nodes = false;
    let mut yaml = BASE.to_string();
    for i in 0..2 {
        let h = c.host_ns(i);
        h.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", host6(i)),
            "dev",
            "eth0",
            "nodad",
        ])
        .expect("IPv6 on eth0");
        if default_route {
            h.exec(&["ip", "route", "add", "default", "via", "172.17.8.1"]).unwrap();
            h.exec(&["ip", "-6", "route", "add", "default", "via", "fd00:8::1"])
                .unwrap();
        }
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Node\nmetadata: {{name: host{n}}}\nspec: {{ipv4: {a}/{p4}, ipv6: '{b}/{p6}'}}\n",
            n = i + 1,
            a = c.fabric.hosts[i].addr,
            b = host6(i),
        ));
    }
    c.apply(&yaml).expect("base");
    c.start_agent(0).expect("agent 1");
    c.start_agent(1).expect("agent 2");
    let mut yaml = String::new();
    for (name, node) in [("a", "host1"), ("b", "host2")] {
        c.workload_ns(name).unwrap();
        yaml.push_str(&c.container_yaml(name, node, None, &["g"]));
    }
    c.apply(&yaml).expect("containers");
    let a = await_programmed(&c, "a", Duration::from_secs(30));
    let b = await_programmed(&c, "b", Duration::from_secs(30));
    let v4 = |ips: &[IpAddr]| ips.iter().find(|i| i.is_ipv4()).copied().expect("an IPv4 address");
    let v6 = |ips: &[IpAddr]| ips.iter().find(|i| i.is_ipv6()).copied().expect("an IPv6 address");
    eprintln!("a: {a:?}  b: {b:?}");

    for (from, to) in [("a", v4(&b)), ("b", v4(&a)), ("a", v6(&b)), ("b", v6(&a))] {
        await_ping(&c, from, to, Duration::from_secs(40));
    }
    // The other host's block is a real route via the peer, not `unreachable`.
    for (i, peer4, peer6) in [(0, "172.17.8.102", host6(1)), (1, "172.17.8.101", host6(0))] {
        let r4 = c.host_ns(i).exec(&["ip", "route", "show", "proto", "bird"]).unwrap();
        let r6 = c
            .host_ns(i)
            .exec(&["ip", "-6", "route", "show", "proto", "bird"])
            .unwrap();
        assert!(
            r4.contains(&format!("via {peer4} dev eth0")) && !r4.contains("unreachable"),
            "{r4}"
        );
        assert!(
            r6.contains(&format!("via {peer6} dev eth0")) && !r6.contains("unreachable"),
            "{r6}"
        );
        // Each host holds its own block (the peer's arrived as a /26, not /32s).
        assert!(r4.lines().any(|l| l.contains("/26 via")), "{r4}");
    }
    // Interface routes are learned for resolution only: never exported to peers.
    let exported = c.agents["host1"].birdc(&["show", "route", "export", "Mesh_172_17_8_102"]);
    let exported = exported.unwrap_or_default();
    assert!(!exported.contains("172.17.8.0/24"), "{exported}");
}

#[test]
fn multihop_sessions_without_a_default_route() {
    run(32, 128, false);
}

#[test]
fn multihop_sessions_with_a_default_route() {
    run(32, 128, true);
}

#[test]
fn direct_sessions_without_a_default_route() {
    run(24, 64, false);
}
