//! Fail static: with etcd stopped for 30 s the dataplane keeps its state (traffic flows
//! as before, even across an agent restart during the outage), and once etcd is back a
//! change made then is applied within seconds.

use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::{can_ping, connect_from, echo_roundtrip, serial, EchoServer};

#[test]
fn etcd_outage_keeps_traffic_and_applies_later_changes() {
    let _g = serial();
    let wls: &[scenario::Wl] = &[
        ("a", 0, Some("10.65.0.1"), "G"),
        ("b", 0, Some("10.65.0.2"), "B"),
        ("e", 1, Some("10.65.1.5"), "G"),
    ];
    let addrs = [("a", ip("10.65.0.1")), ("b", ip("10.65.0.2")), ("e", ip("10.65.1.5"))];
    let mut c = scenario::cluster(2, None, wls).expect("cluster");
    // Made now, declared only after the outage.
    c.workload_ns("f").unwrap();
    await_ping(&c, "a", ip("10.65.1.5"), Duration::from_secs(30));
    await_ping(&c, "e", ip("10.65.0.1"), Duration::from_secs(10));
    let before = c.ping_matrix(&addrs);
    assert_eq!(before, vec!["a->e", "e->a"]);
    let _echo = EchoServer::start(c.wl("e"), 7000).unwrap();
    let mut conn = connect_from(c.wl("a"), ip("10.65.1.5"), 7000, Duration::from_secs(2)).unwrap();
    echo_roundtrip(&mut conn, b"before", Duration::from_secs(2)).unwrap();
    let endpoint = c.etcd.endpoint();

    c.etcd.stop();
    let outage = Instant::now();
    let mut probes = 0;
    let mut restarted = false;
    let mut saw_fail_static = false;
    while outage.elapsed() < Duration::from_secs(30) {
        assert!(
            can_ping(c.wl("a"), ip("10.65.1.5"), 1) && can_ping(c.wl("e"), ip("10.65.0.1"), 1),
            "traffic stopped {:?} into the etcd outage\n{}",
            outage.elapsed(),
            c.dump_logs()
        );
        echo_roundtrip(&mut conn, b"during", Duration::from_secs(2)).expect("TCP during the outage");
        probes += 1;
        if !restarted && outage.elapsed() > Duration::from_secs(8) {
            // An agent restarted while etcd is away must not touch the dataplane.
            c.agent("host2").stop();
            c.agent("host2").start();
            restarted = true;
        }
        if outage.elapsed() > Duration::from_secs(15) && outage.elapsed() < Duration::from_secs(17) {
            assert_eq!(c.ping_matrix(&addrs), before, "the matrix changed during the outage");
        }
        // host1's agent keeps reconciling (resync every 5 s) from its cache and says
        // that it cannot reach etcd.
        saw_fail_static |= c.agents["host1"].metric("calico_datastore_up") == Some(0.0);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(probes >= 10, "only {probes} probes during the outage");
    assert!(saw_fail_static, "host1 never reported calico_datastore_up 0");
    assert!(c.agents.get_mut("host1").unwrap().alive() && c.agents.get_mut("host2").unwrap().alive());
    let log2 = c.agents["host2"].log();
    assert!(log2.contains("etcd not reachable yet"), "{log2}");

    c.etcd.restart();
    assert_eq!(c.etcd.endpoint(), endpoint, "etcd came back elsewhere");
    // A change made right after etcd returns: a new workload in G on host2.
    let back = Instant::now();
    let yaml = c.container_yaml("f", "host2", Some("10.65.1.6"), &["G"]);
    c.apply(&yaml).expect("apply after the outage");
    let applied = back.elapsed();
    let took = await_ping(&c, "a", ip("10.65.1.6"), Duration::from_secs(20));
    await_ping(&c, "f", ip("10.65.0.1"), Duration::from_secs(5));
    println!(
        "etcd back: `calicoctl apply` done after {applied:?}, the new Container reachable {took:?} later (both ways after {:?})",
        back.elapsed() - applied
    );
    assert!(
        back.elapsed() < Duration::from_secs(15),
        "took {:?} to apply a change after etcd returned",
        back.elapsed()
    );
    echo_roundtrip(&mut conn, b"after", Duration::from_secs(2)).expect("TCP after the outage");
    assert!(Cluster::wait_for(Duration::from_secs(10), || {
        c.agents["host1"].metric("calico_datastore_up") == Some(1.0)
    }));
    let st = c.node_status("host2").expect("host2 status written after the outage");
    assert_eq!(st["datastoreOk"], true);
    assert!(!can_ping(c.wl("b"), ip("10.65.1.6"), 1), "b must not reach f");
}
