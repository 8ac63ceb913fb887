//! The seed's multiple-IPs system test, on Docker: a Container with two addresses (one
//! IPv4 and one IPv6, the most a Container may have) on a Docker container is reachable
//! on both; taking one out of its spec makes it unreachable on that one only, removes it
//! from inside the container and frees it in IPAM, so another workload can take it.

use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::docker::{available, wait_for, CtlNode, DockerHost, DumpOnPanic};
use calico_e2e::serial;

const POOLS: &str = "apiVersion: calico/v1
kind: IPPool
metadata: {name: v4}
spec: {cidr: 10.65.0.0/16, blockSize: 26}
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: v6}
spec: {cidr: 'fd00:65::/64', blockSize: 122}
";

const M4: &str = "10.65.2.1";
const M6: &str = "fd00:65::2:1";
const P4: &str = "10.65.2.2";
const P6: &str = "fd00:65::2:2";

fn multi(ips: &[&str]) -> String {
    let ips: Vec<String> = ips.iter().map(|i| format!("'{i}'")).collect();
    format!(
        "apiVersion: calico/v1\nkind: Container\nmetadata: {{name: multi}}\nspec:\n  node: host1\n  container: multi\n  ips: [{}]\n  groups: [G]\n",
        ips.join(", ")
    )
}

/// `calicoctl ipam show --ip IP`, stdout and stderr.
fn holder(c: &Cluster, ip: &str) -> String {
    c.ctl(&["ipam", "show", "--ip", ip]).unwrap_or_else(|e| e.to_string())
}

#[test]
fn two_addresses_reachable_and_one_removed_is_gone_and_free() {
    if !available() {
        return;
    }
    let _g = serial();
    let c = Cluster::new(1).expect("cluster");
    c.apply(POOLS).expect("pools");
    let mut nodes = Vec::new();
    let d = DockerHost::start(&c.host_ns(0).path()).expect("dockerd");
    nodes.push(CtlNode::start(&c, 0, &d, &[]).expect("calicoctl node").0);
    d.wait_for_plugin().expect("plugin sockets");
    let _dump = DumpOnPanic::new(&c, &[&d]);
    let logs = || nodes[0].logs();
    c.ctl(&["addgroup", "G"]).unwrap();

    // A Docker container with no network of its own, given two addresses by a declared
    // Container; a peer in the same group, the seed's way.
    d.run("multi", &["--net=none"]);
    c.apply(&multi(&[M4, M6])).expect("the two-address Container");
    d.run(
        "peer",
        &[
            "--net=none",
            "-e",
            &format!("CALICO_IP={P4},{P6}"),
            "-e",
            "CALICO_GROUP=G",
        ],
    );
    let both = wait_for(Duration::from_secs(30), || {
        d.ping("peer", M4) && d.ping("peer", M6) && d.ping("multi", P4) && d.ping("multi", P6)
    });
    assert!(
        both,
        "peer->{M4}: {}, peer->{M6}: {}\n{}",
        d.ping("peer", M4),
        d.ping("peer", M6),
        logs()
    );
    for ip in [M4, M6] {
        let h = holder(&c, ip);
        assert!(h.contains("container/multi"), "{ip} not held by the Container: {h}");
    }

    // Take the IPv6 address out: gone on v6 only.
    c.apply(&multi(&[M4])).expect("one address");
    let v6_gone = wait_for(Duration::from_secs(15), || !d.ping("peer", M6));
    assert!(v6_gone, "{M6} still answers after it was removed\n{}", logs());
    for _ in 0..3 {
        assert!(d.ping("peer", M4), "{M4} stopped answering when {M6} was removed");
    }
    assert!(d.ping("multi", P4));
    let inside = wait_for(Duration::from_secs(10), || {
        d.in_container("multi", &["ip", "-6", "addr", "show", "scope", "global"])
            .is_ok_and(|a| !a.contains(M6))
    });
    assert!(inside, "{M6} still configured inside the container");
    let freed = wait_for(Duration::from_secs(15), || !holder(&c, M6).contains("container/multi"));
    assert!(freed, "{M6} still held in IPAM: {}", holder(&c, M6));
    assert!(holder(&c, M4).contains("container/multi"), "{}", holder(&c, M4));
    let check = c.ctl(&["ipam", "check"]).unwrap();
    assert!(check.contains("IPAM is consistent"), "{check}");

    // Free means free: a new workload takes the removed address and is reached on it.
    d.run(
        "again",
        &["--net=none", "-e", &format!("CALICO_IP={M6}"), "-e", "CALICO_GROUP=G"],
    );
    assert!(
        wait_for(Duration::from_secs(20), || d.ping("peer", M6)),
        "{M6} could not be used again: {}\n{}",
        holder(&c, M6),
        logs()
    );
    assert!(!holder(&c, M6).contains("container/multi"));
}
