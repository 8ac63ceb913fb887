//! Agent restarts do not disturb the dataplane: an established cross-host TCP
//! connection keeps carrying data, the nftables table is never missing or partial,
//! BIRD (and so every BGP session) stays up and is adopted by the new agent.

use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::nftwatch::{rules_now, RulesetWatch};
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::{connect_from, echo_roundtrip, serial, EchoServer};

const WLS: &[scenario::Wl] = &[
    ("a", 0, Some("10.65.0.1"), "G"),
    ("b", 0, Some("10.65.0.2"), "B"),
    ("e", 1, Some("10.65.1.5"), "G"),
];

fn addrs() -> Vec<(&'static str, std::net::IpAddr)> {
    vec![("a", ip("10.65.0.1")), ("b", ip("10.65.0.2")), ("e", ip("10.65.1.5"))]
}

/// The `since` column of host2's BGP session: unchanged means it never flapped.
fn bgp_since(c: &Cluster, agent: &str) -> String {
    c.agents[agent]
        .birdc(&["show", "protocols"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
        .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn restart_keeps_flows(kill: bool) {
    let _g = serial();
    let mut c = scenario::cluster(2, None, WLS).expect("cluster");
    await_ping(&c, "a", ip("10.65.1.5"), Duration::from_secs(30));
    await_ping(&c, "e", ip("10.65.0.1"), Duration::from_secs(10));
    let before = c.ping_matrix(&addrs());
    assert_eq!(before, vec!["a->e", "e->a"]);
    assert!(Cluster::wait_for(Duration::from_secs(10), || c.agents["host1"]
        .bgp_established()
        && c.agents["host2"].bgp_established()));

    // One TCP connection from a (host1) to e (host2), carrying data before the restart.
    let _echo = EchoServer::start(c.wl("e"), 7000).unwrap();
    let mut conn = connect_from(c.wl("a"), ip("10.65.1.5"), 7000, Duration::from_secs(2)).unwrap();
    echo_roundtrip(&mut conn, b"before", Duration::from_secs(2)).unwrap();

    let host1 = c.host_ns(0);
    let steady_rules = rules_now(host1).expect("table inet calico on host1");
    let bird_pid = c.agents["host1"].bird_pid().expect("bird running on host1");
    let since = bgp_since(&c, "host2");
    let watch = RulesetWatch::start(c.host_ns(0));
    let old_reconciles = c.agents["host1"].metric("calico_reconciles_total").unwrap_or(0.0);
    assert!(old_reconciles >= 1.0);

    let t = Instant::now();
    if kill {
        c.agent("host1").kill9();
    } else {
        c.agent("host1").stop();
    }
    // With no agent at all the dataplane stays as it was.
    std::thread::sleep(Duration::from_millis(500));
    echo_roundtrip(&mut conn, b"no agent", Duration::from_secs(2)).expect("data with the agent down");
    c.agent("host1").start();
    // The new agent has done a full reconcile (its counter starts again from 0).
    let ok = Cluster::wait_for(Duration::from_secs(15), || {
        c.agents["host1"]
            .metric("calico_reconciles_total")
            .is_some_and(|n| n >= 1.0)
    });
    assert!(ok, "the restarted agent never reconciled\n{}", c.dump_logs());
    let restarted_in = t.elapsed();
    // A few more reconciles (watch events, the 5 s resync) while data flows.
    for i in 0..6 {
        echo_roundtrip(&mut conn, format!("after {i}").as_bytes(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("the connection broke after the restart: {e}\n{}", c.dump_logs()));
        std::thread::sleep(Duration::from_millis(250));
    }
    let seen = watch.finish();

    assert!(
        seen.missing.is_empty(),
        "table inet calico was missing {} times during the restart: {:?}",
        seen.missing.len(),
        seen.missing.first()
    );
    assert!(seen.listings > 20, "too few listings to prove anything: {seen:?}");
    assert_eq!(
        (seen.min_rules, seen.max_rules),
        (steady_rules, steady_rules),
        "the ruleset changed during the restart"
    );
    // BIRD was adopted, not restarted: the session on the peer never flapped.
    assert_eq!(c.agents["host1"].bird_pid(), Some(bird_pid), "BIRD was replaced");
    assert_eq!(bgp_since(&c, "host2"), since, "host2's BGP session flapped");
    let log = c.agents["host1"].log();
    assert!(log.contains("adopted the BIRD already running"), "{log}");
    let st = c.node_status("host1").expect("node status");
    assert_eq!(st["birdAdopted"], true, "{st}");
    assert_eq!(st["pid"], c.agents["host1"].pid().unwrap(), "{st}");
    assert_eq!(c.ping_matrix(&addrs()), before);
    println!(
        "restart ({}) to first reconcile: {restarted_in:?}; {} listings of the table, always {steady_rules} rules",
        if kill { "SIGKILL" } else { "SIGTERM" },
        seen.listings
    );

    // Still an agent that works: a change made now is applied.
    c.ctl(&["addtogroup", "b", "G"]).unwrap();
    await_ping(&c, "b", ip("10.65.1.5"), Duration::from_secs(10));
}

#[test]
fn tcp_connection_survives_agent_sigterm_restart() {
    restart_keeps_flows(false);
}

#[test]
fn tcp_connection_survives_agent_kill9_restart() {
    restart_keeps_flows(true);
}
