//! BIRD killed (SIGKILL, the pid from <run_dir>/bird.pid): the agent starts it again
//! and the BGP sessions come back, whether BIRD was the agent's own child or one it
//! adopted from a previous agent.

use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::{serial, sh};

const WLS: &[scenario::Wl] = &[("a", 0, Some("10.65.0.1"), "G"), ("e", 1, Some("10.65.1.5"), "G")];

fn converged() -> Cluster {
    let c = scenario::cluster(2, None, WLS).expect("cluster");
    await_ping(&c, "a", ip("10.65.1.5"), Duration::from_secs(30));
    await_ping(&c, "e", ip("10.65.0.1"), Duration::from_secs(10));
    assert!(Cluster::wait_for(Duration::from_secs(10), || c.agents["host1"]
        .bgp_established()
        && c.agents["host2"].bgp_established()));
    c
}

/// Kills host1's BIRD and waits for a new one with Established sessions on both
/// sides, cross-host traffic and routes learned over BGP. Returns how long it took.
fn kill_bird_and_recover(c: &Cluster) -> Duration {
    let old = c.agents["host1"].bird_pid().expect("bird pid");
    sh(&["kill", "-9", &old.to_string()]).unwrap();
    let t = Instant::now();
    let ok = Cluster::wait_for(Duration::from_secs(10), || {
        c.agents["host1"].bird_pid().is_some_and(|p| p != old)
    });
    assert!(ok, "BIRD was not started again\n{}", c.dump_logs());
    let restarted = t.elapsed();
    let ok = Cluster::wait_for(Duration::from_secs(30), || {
        c.agents["host1"].bgp_established() && c.agents["host2"].bgp_established()
    });
    assert!(
        ok,
        "sessions did not come back:\n{}\n{}",
        c.agents["host1"].birdc(&["show", "protocols"]).unwrap_or_default(),
        c.dump_logs()
    );
    let established = t.elapsed();
    let show = c.agents["host1"].birdc(&["show", "protocols"]).unwrap();
    assert!(show.contains("Established"), "{show}");
    await_ping(c, "a", ip("10.65.1.5"), Duration::from_secs(10));
    await_ping(c, "e", ip("10.65.0.1"), Duration::from_secs(10));
    let ok = Cluster::wait_for(Duration::from_secs(10), || {
        c.host_ns(0)
            .exec(&["ip", "route", "show", "proto", "bird"])
            .is_ok_and(|r| r.contains("via 172.17.8.102"))
    });
    assert!(ok, "host1 has no BGP routes via host2 after the restart");
    println!("BIRD back after {restarted:?}, sessions Established after {established:?}");
    established
}

#[test]
fn killed_bird_is_restarted_and_sessions_return() {
    let _g = serial();
    let c = converged();
    kill_bird_and_recover(&c);
    let ok = Cluster::wait_for(Duration::from_secs(10), || {
        c.agents["host1"]
            .metric("calico_bird_restarts_total")
            .is_some_and(|n| n >= 1.0)
    });
    assert!(ok, "{}", c.agents["host1"].metrics());
    let st = c.node_status("host1").unwrap();
    assert!(st["birdRestarts"].as_u64() >= Some(1), "{st}");
}

#[test]
fn killed_adopted_bird_is_replaced() {
    let _g = serial();
    let mut c = converged();
    // A restarted agent adopts the BIRD its predecessor left running...
    c.agent("host1").stop();
    c.agent("host1").start();
    let ok = Cluster::wait_for(Duration::from_secs(10), || {
        c.node_status("host1")
            .is_some_and(|s| s["birdAdopted"] == true && s["pid"] == c.agents["host1"].pid().unwrap())
    });
    assert!(ok, "{:?}\n{}", c.node_status("host1"), c.dump_logs());
    // ...which is not its child: it notices the death through the control socket
    // (its watcher, or a reconcile that happens to find it gone first).
    kill_bird_and_recover(&c);
    let log = c.agents["host1"].log();
    assert!(
        log.contains("the adopted BIRD stopped answering") || log.contains("the adopted BIRD is gone"),
        "{log}"
    );
    let ok = Cluster::wait_for(Duration::from_secs(10), || {
        c.node_status("host1").is_some_and(|s| s["birdAdopted"] == false)
    });
    assert!(ok, "{:?}", c.node_status("host1"));
    // And that BIRD is supervised again: killed once more, it comes back.
    kill_bird_and_recover(&c);
}
