//! The workload as an attacker (docs/security.md), proven with real packets on
//! namespace hosts running the real agent, BIRD and nftables:
//! - a forged IPv4 or IPv6 source address is dropped at the host, and counted;
//! - a workload reaches no service of its host (etcd's port, BGP, the agent's HTTP
//!   port, anything else) while endpointToHostAction is Drop, reaches them with
//!   Accept, and never BGP, even with Accept;
//! - an ARP reply or an IPv6 neighbour advertisement claiming another workload's
//!   address (on the same host or another) does not redirect its traffic.

use std::net::IpAddr;
use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{await_ping, await_programmed, ip};
use calico_e2e::{can_connect, can_ping, serial, Listener};

const BASE: &str = "apiVersion: calico/v1
kind: ClusterConfig
metadata: {name: default}
spec: {asNumber: 64511, endpointToHostAction: ACTION}
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: pool4}
spec: {cidr: 10.65.0.0/16, blockSize: 26}
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: pool6}
spec: {cidr: 'fd00:65::/112', blockSize: 122}
---
apiVersion: calico/v1
kind: Group
metadata: {name: g}
spec: {}
";

/// Workloads a, b, c on host1 and d on host2, all in group g (so they may talk to each
/// other), each with an IPv4 and an IPv6 address.
const WLS: [(&str, usize, &str, &str); 4] = [
    ("a", 0, "10.65.0.1", "fd00:65::1"),
    ("b", 0, "10.65.0.2", "fd00:65::2"),
    ("c", 0, "10.65.0.3", "fd00:65::3"),
    ("d", 1, "10.65.0.4", "fd00:65::4"),
];

fn cluster(action: &str) -> Cluster {
    let mut c = Cluster::new(2).expect("fabric");
    c.apply(&BASE.replace("ACTION", action)).expect("base");
    c.start_agent(0).expect("agent 1");
    c.start_agent(1).expect("agent 2");
    let mut yaml = String::new();
    for (name, host, v4, v6) in WLS {
        let ns = c.workload_ns(name).expect("netns");
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Container\nmetadata: {{name: {name}}}\nspec:\n  node: host{}\n  netns: {}\n  ips: [{v4}, '{v6}']\n  groups: [g]\n",
            host + 1,
            ns.display()
        ));
    }
    c.apply(&yaml).expect("containers");
    for (name, ..) in WLS {
        await_programmed(&c, name, Duration::from_secs(30));
    }
    await_ping(&c, "a", ip("10.65.0.4"), Duration::from_secs(40));
    c
}

/// The packets counted by the rule of `chain` (in host `host`'s table) whose comment is
/// `comment`, and the handle of the table they were read from: the agent's periodic
/// resync replaces the table whole, which starts its counters again from zero.
fn counted_in(c: &Cluster, host: usize, chain: &str, comment: &str) -> (u64, u64) {
    let out = c
        .host_ns(host)
        .exec(&["nft", "-j", "list", "chain", "inet", "calico", chain])
        .unwrap_or_else(|e| panic!("list {chain}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft JSON");
    let objects = v["nftables"].as_array().cloned().unwrap_or_default();
    let packets = objects
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"] == comment)
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
        .sum();
    let handle = c.table_handle(host);
    (packets, handle)
}

/// How many packets the rule counted while `act` ran. A resync that replaced the table
/// meanwhile (new handle, counters from zero) makes the round run again, up to 3 times.
fn counted_during(c: &Cluster, host: usize, chain: &str, comment: &str, mut act: impl FnMut()) -> u64 {
    for round in 1..=3 {
        let before = counted_in(c, host, chain, comment);
        act();
        let after = counted_in(c, host, chain, comment);
        if after.1 == before.1 || round == 3 {
            return after.0.saturating_sub(before.0);
        }
        eprintln!("{chain}: the table was replaced during the round ({before:?} -> {after:?}); measuring again");
    }
    0
}

fn iface(c: &Cluster, name: &str) -> String {
    c.container_status(name).expect("status").host_interface
}

#[test]
fn forged_source_addresses_are_dropped_and_counted() {
    let _g = serial();
    let c = cluster("Drop");
    let a = c.wl("a");
    let from_a = format!("from-{}", iface(&c, "a"));

    for (fam, forged, own, target) in [
        ("ipv4", "10.65.0.2", "10.65.0.1", "10.65.0.3"),
        ("ipv6", "fd00:65::2", "fd00:65::1", "fd00:65::3"),
    ] {
        let target: IpAddr = ip(target);
        // The control: from its own address, a reaches c.
        assert!(
            Cluster::wait_for(Duration::from_secs(10), || can_ping(a, target, 1)),
            "{fam}: a cannot reach c at all\n{}",
            c.dump_logs()
        );
        // a claims b's address (b is in the same group: were it believed, c would answer
        // b). `nodad`: the forged address is usable at once.
        let plen = if fam == "ipv4" { "32" } else { "128" };
        let flag = if fam == "ipv4" { "-4" } else { "-6" };
        let comment = format!("anti-spoofing {fam}");
        let dropped = counted_during(&c, 0, &from_a, &comment, || {
            // In every round: the agent's resync re-plumbs a, which takes the forged
            // address away again.
            a.exec(&[
                "ip",
                "addr",
                "replace",
                &format!("{forged}/{plen}"),
                "dev",
                "eth0",
                "nodad",
            ])
            .expect("add the forged address");
            let forged_ping = a.exec(&[
                "ping",
                flag,
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                forged,
                &target.to_string(),
            ]);
            assert!(
                forged_ping.is_err(),
                "{fam}: a forged ping got an answer: {forged_ping:?}"
            );
        });
        assert!(dropped >= 1, "{fam}: anti-spoofing counted {dropped} forged packets");
        // Its own address still works: only the forged packets were dropped.
        let own_ping = a.exec(&["ping", flag, "-c", "1", "-W", "2", "-I", own, &target.to_string()]);
        assert!(own_ping.is_ok(), "{fam}: {own_ping:?}");
        // Gone already if a resync re-plumbed a since.
        let _ = a.exec(&["ip", "addr", "del", &format!("{forged}/{plen}"), "dev", "eth0"]);
    }
}

#[test]
fn host_services_are_closed_to_workloads_and_bgp_always() {
    let _g = serial();
    // Stand-ins for the host's services, listening in host1's namespace: etcd's client
    // port, the agent's HTTP port, ssh. BIRD itself listens on 179 there.
    for (action, open) in [("Drop", false), ("Accept", true)] {
        let c = cluster(action);
        let host = c.host_ns(0);
        let listeners: Vec<Listener> = [2379u16, 9099, 22]
            .iter()
            .map(|p| Listener::start(host, *p).expect("listener"))
            .collect();
        let host_ip: IpAddr = ip("172.17.8.101");
        let a = c.wl("a");
        // The host itself reaches them: the listeners are real.
        for l in &listeners {
            assert!(can_connect(host, host_ip, l.port, Duration::from_secs(2)));
        }
        {
            let target = host_ip;
            for l in &listeners {
                let got = can_connect(a, target, l.port, Duration::from_secs(1));
                assert_eq!(got, open, "endpointToHostAction {action}: a -> {target}:{}", l.port);
            }
            // BGP from workloads is dropped by its own counted rule, not by BIRD.
            let n = counted_during(&c, 0, "input", "no BGP from workloads to the host", || {
                assert!(
                    !can_connect(a, target, 179, Duration::from_secs(1)),
                    "endpointToHostAction {action}: a opened a TCP connection to BGP on {target}"
                );
            });
            assert!(n >= 1, "endpointToHostAction {action}: BGP drops counted {n}");
        }
        // Workload-to-workload traffic is unaffected either way.
        assert!(can_ping(a, ip("10.65.0.4"), 2));
        drop(listeners);
    }
}

#[test]
fn arp_replies_claiming_another_workload_do_not_redirect_traffic() {
    let _g = serial();
    let c = cluster("Drop");
    let (a, b) = (c.wl("a"), c.wl("b"));
    let host = c.host_ns(0);
    let c_ip = "10.65.0.3";
    let c_iface = iface(&c, "c");
    // a announces c's address as its own, again and again (gratuitous ARP replies).
    a.exec(&["ip", "addr", "add", &format!("{c_ip}/32"), "dev", "eth0", "nodad"])
        .expect("claim c's address");
    let announce = a.exec(&["busybox", "arping", "-A", "-c", "3", "-I", "eth0", "-s", c_ip, c_ip]);
    assert!(announce.is_ok(), "{announce:?}");
    // The host still sends c's traffic to c's veth: its route is per interface and the
    // announcement arrived on a's.
    let route = host.exec(&["ip", "route", "get", c_ip]).expect("route get");
    assert!(route.contains(&c_iface), "route to c now: {route}");
    // And traffic from b and from the other host still reaches the real c: c answers,
    // a (with c's address configured, so it would answer too) sees none of it.
    let rx_before = a
        .exec(&["cat", "/sys/class/net/eth0/statistics/rx_packets"])
        .expect("rx");
    assert!(can_ping(b, ip(c_ip), 2), "b lost c");
    assert!(can_ping(c.wl("d"), ip(c_ip), 2), "d lost c");
    let rx_after = a
        .exec(&["cat", "/sys/class/net/eth0/statistics/rx_packets"])
        .expect("rx");
    let (x, y): (u64, u64) = (
        rx_before.trim().parse().unwrap_or(0),
        rx_after.trim().parse().unwrap_or(0),
    );
    // A stray neighbour probe may arrive; the two echo requests (or more) must not.
    assert!(y <= x + 1, "a received {} packets meant for c", y - x);
}

/// An unsolicited IPv6 neighbour advertisement (override flag set, and the solicited
/// form too) for `target`, with `mac` as its link-layer address, sent to all nodes on
/// `eth0` from inside `ns`. Crafted on a raw ICMPv6 socket (the kernel fills in the
/// checksum) with hop limit 255, as receivers require. Returns how many were sent.
fn send_neighbour_advertisements(ns: &std::path::Path, target: std::net::Ipv6Addr, mac: [u8; 6]) -> usize {
    calico_e2e::probe::in_netns(ns, move || {
        let ifname = std::ffi::CString::new("eth0").expect("literal");
        // SAFETY: plain libc calls on a socket this closure owns, with valid pointers
        // and lengths; the socket is closed before returning.
        unsafe {
            let ifindex = libc::if_nametoindex(ifname.as_ptr());
            assert!(ifindex != 0, "no eth0");
            let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let hops: libc::c_int = 255;
            for opt in [libc::IPV6_MULTICAST_HOPS, libc::IPV6_UNICAST_HOPS] {
                let r = libc::setsockopt(
                    fd,
                    libc::IPPROTO_IPV6,
                    opt,
                    (&hops as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
                assert_eq!(r, 0, "hop limit: {}", std::io::Error::last_os_error());
            }
            let mut dst: libc::sockaddr_in6 = std::mem::zeroed();
            dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            dst.sin6_addr.s6_addr = "ff02::1".parse::<std::net::Ipv6Addr>().expect("literal").octets();
            dst.sin6_scope_id = ifindex;
            let mut sent = 0;
            // Flags: override (0x20), and solicited + override (0x60).
            for flags in [0x20u8, 0x60] {
                let mut pkt = vec![136u8, 0, 0, 0, flags, 0, 0, 0];
                pkt.extend_from_slice(&target.octets());
                pkt.extend_from_slice(&[2, 1]); // target link-layer address option
                pkt.extend_from_slice(&mac);
                for _ in 0..3 {
                    let n = libc::sendto(
                        fd,
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&dst as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    );
                    assert_eq!(n, pkt.len() as isize, "sendto: {}", std::io::Error::last_os_error());
                    sent += 1;
                }
            }
            libc::close(fd);
            sent
        }
    })
    .expect("in a's namespace")
}

fn counter(ns: &calico_e2e::Netns, path: &str) -> u64 {
    ns.exec(&["cat", path])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// IPv6's version of the ARP test, and both against a remote workload: a announces
/// c's IPv6 address (neighbour advertisements crafted on a raw socket, which reach the
/// host: its veth counts them) and d's IPv4 address (d is on the other host). The
/// host's routes still lead to the real c and to host2, b still reaches c over IPv6, d
/// still reaches c, b still reaches d, and a sees none of that traffic.
#[test]
fn neighbour_advertisements_claiming_another_workload_do_not_redirect_traffic() {
    let _g = serial();
    let c = cluster("Drop");
    let (a, b, d) = (c.wl("a"), c.wl("b"), c.wl("d"));
    let host = c.host_ns(0);
    let (c6, d4) = ("fd00:65::3", "10.65.0.4");
    let (a_iface, c_iface) = (iface(&c, "a"), iface(&c, "c"));
    let route_to_d = host.exec(&["ip", "route", "get", d4]).expect("route get");
    assert!(!route_to_d.contains(&a_iface), "{route_to_d}");
    // (The fabric's Nodes have IPv4 addresses only, so IPv6 is tried on one host.)
    await_ping(&c, "b", ip(c6), Duration::from_secs(20));

    a.exec(&["ip", "-6", "addr", "add", &format!("{c6}/128"), "dev", "eth0", "nodad"])
        .expect("claim c's IPv6 address");
    a.exec(&["ip", "addr", "add", &format!("{d4}/32"), "dev", "eth0"])
        .expect("claim d's IPv4 address");
    let mac_text = a.exec(&["cat", "/sys/class/net/eth0/address"]).expect("a's MAC");
    let mut mac = [0u8; 6];
    for (i, part) in mac_text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("MAC");
    }
    let host_rx = format!("/sys/class/net/{a_iface}/statistics/rx_packets");
    let rx0 = counter(host, &host_rx);
    let sent = send_neighbour_advertisements(&a.path(), c6.parse().expect("literal"), mac);
    let announce = a.exec(&["busybox", "arping", "-A", "-c", "3", "-I", "eth0", "-s", d4, d4]);
    assert!(announce.is_ok(), "{announce:?}");
    let arrived = counter(host, &host_rx) - rx0;
    assert!(
        arrived >= sent as u64 + 3,
        "the host's end of a's veth counted {arrived} packets of {sent} advertisements and 3 ARP replies"
    );

    // The host's routes are unchanged: per interface for c, via BGP for d.
    let route = host.exec(&["ip", "-6", "route", "get", c6]).expect("route get");
    assert!(
        route.contains(&c_iface) && !route.contains(&a_iface),
        "route to c now: {route}"
    );
    let now = host.exec(&["ip", "route", "get", d4]).expect("route get");
    assert_eq!(now, route_to_d, "the route to d changed");

    // Traffic still reaches the real c and d; a sees none of it.
    let a_rx = "/sys/class/net/eth0/statistics/rx_packets";
    let before = counter(a, a_rx);
    assert!(can_ping(b, ip(c6), 2), "b lost c over IPv6");
    assert!(can_ping(d, ip("10.65.0.3"), 2), "d lost c");
    assert!(can_ping(b, ip(d4), 2), "b lost d");
    let after = counter(a, a_rx);
    // A stray neighbour probe may arrive; the echo requests (six or more) must not.
    assert!(
        after <= before + 2,
        "a received {} packets meant for c or d",
        after - before
    );
}
