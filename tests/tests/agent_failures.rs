//! Workload failures are reported, never hidden: a Container whose plumbing cannot be
//! done (its namespace is missing, or vanished after it was plumbed) or that IPAM
//! cannot serve (pool exhausted) has state Error with the reason in its status, is
//! counted in calico_endpoints_failed, has no host route and no dispatch; it is retried
//! and becomes Programmed once the cause is gone.

use std::net::IpAddr;
use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{self, await_ping, await_programmed};
use calico_e2e::{serial, sh};
use calico_schema::EndpointState;

/// A /30 pool: four addresses in one block.
const TINY: &str = "apiVersion: calico/v1
kind: ClusterConfig
metadata: {name: default}
spec: {asNumber: 64511}
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: tiny}
spec: {cidr: 10.70.0.0/30, blockSize: 30}
";

fn await_error(c: &Cluster, name: &str, what: &str, timeout: Duration) -> String {
    let mut last = None;
    let ok = Cluster::wait_for(timeout, || {
        last = c.container_status(name);
        last.as_ref()
            .is_some_and(|s| s.state == EndpointState::Error && s.message.contains(what))
    });
    assert!(
        ok,
        "{name}: expected an error about {what:?}, status {last:?}\n{}",
        c.dump_logs()
    );
    last.map(|s| s.message).unwrap_or_default()
}

fn host_routes(c: &Cluster) -> String {
    c.host_ns(0)
        .exec(&["ip", "route", "show", "proto", "80"])
        .unwrap_or_default()
}

#[test]
fn failed_workloads_are_reported_cut_off_and_retried() {
    let _g = serial();
    let mut c = scenario::cluster(1, Some(TINY), &[("w", 0, None, "G")]).expect("cluster");
    let w = await_programmed(&c, "w", Duration::from_secs(15))[0];

    // 1. Plumbing fails: q's namespace does not exist (yet).
    let q_path = c.workload_ns("q").unwrap();
    let q_ns = c.wl("q").name.clone();
    sh(&["ip", "netns", "del", &q_ns]).unwrap();
    c.apply(&c.container_yaml("q", "host1", None, &["G"])).unwrap();
    let msg = await_error(&c, "q", "network namespace", Duration::from_secs(10));
    assert!(msg.contains(&q_path.display().to_string()), "{msg}");
    let q: IpAddr = c.container_status("q").unwrap().ips[0];
    assert!(
        !host_routes(&c).contains(&format!("{q} dev")),
        "a route to a failed workload"
    );
    assert!(Cluster::wait_for(Duration::from_secs(5), || {
        c.agents["host1"].metric("calico_endpoints_failed") == Some(1.0)
    }));
    let st = c.node_status("host1").unwrap();
    assert_eq!(st["endpointsFailed"], 1, "{st}");
    assert!(st["errors"].to_string().contains("q"), "{st}");

    // The cause goes away: retried (backoff), programmed, reachable.
    sh(&["ip", "netns", "add", &q_ns]).unwrap();
    c.wl("q").exec(&["ip", "link", "set", "lo", "up"]).unwrap();
    assert_eq!(await_programmed(&c, "q", Duration::from_secs(15)), vec![q]);
    await_ping(&c, "w", q, Duration::from_secs(10));
    assert!(host_routes(&c).contains(&format!("{q} dev cali")));

    // 2. The namespace vanishes under a programmed workload (its veth goes with it):
    //    not left marked Programmed, its route removed (within a resync period).
    sh(&["ip", "netns", "del", &q_ns]).unwrap();
    await_error(&c, "q", "network namespace", Duration::from_secs(15));
    assert!(Cluster::wait_for(Duration::from_secs(5), || !host_routes(&c)
        .contains(&format!("{q} dev"))));
    sh(&["ip", "netns", "add", &q_ns]).unwrap();
    assert_eq!(await_programmed(&c, "q", Duration::from_secs(15)), vec![q]);

    // 3. IPAM cannot serve: the pool has four addresses, w and q hold two.
    let mut yaml = String::new();
    for r in ["r1", "r2", "r3"] {
        c.workload_ns(r).unwrap();
        yaml.push_str(&c.container_yaml(r, "host1", None, &["G"]));
    }
    c.apply(&yaml).unwrap();
    let mut failed = Vec::new();
    let ok = Cluster::wait_for(Duration::from_secs(15), || {
        let sts: Vec<_> = ["r1", "r2", "r3"].iter().map(|r| (*r, c.container_status(r))).collect();
        if sts.iter().any(|(_, s)| s.is_none()) {
            return false;
        }
        failed = sts
            .into_iter()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.state == EndpointState::Error))
            .map(|(r, s)| (r, s.unwrap().message))
            .collect();
        !failed.is_empty()
    });
    assert!(ok, "no IPAM failure reported\n{}", c.dump_logs());
    for (r, m) in &failed {
        assert!(m.starts_with("IPAM: "), "{r}: {m}");
    }
    let st = c.node_status("host1").unwrap();
    assert!(st["errors"].to_string().contains("IPAM"), "{st}");
    println!("IPAM failure as reported: {:?}", failed[0]);

    // Freeing an address lets one failed Container through.
    c.ctl(&["delete", "container", "w"]).unwrap();
    let r = failed[0].0;
    let got = await_programmed(&c, r, Duration::from_secs(20));
    assert_eq!(got, vec![w], "{r} should get w's freed address");
}
