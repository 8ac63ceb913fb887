//! The seed's multi-host system test (calico-docker's tests/st/test_multi_host), on
//! Docker: two namespace hosts, each with its own dockerd and its agent started with
//! `calicoctl node`, the seed's five containers (A and D through the calico driver, B,
//! C and E with `--net=none -e CALICO_IP`) in groups A_C_E, B and D, and the 5x5 ping
//! matrix measured from inside the containers equal to what the groups allow:
//!
//! (a) with the default AS 64511 (no ClusterConfig at all): iBGP over the node-to-node
//!     mesh, as BIRD's protocols, bird.conf and `calicoctl status` show;
//! (b) with per-node AS numbers (`calicoctl node --as 64512` on host1, `--as 64513` on
//!     host2): eBGP between the hosts, routes learned with the peer's AS in their path;
//! (c) with the mesh turned off (ClusterConfig `nodeToNodeMesh: false`): the hosts'
//!     sessions and BGP routes go and only same-host pairs reach (so the cross-host
//!     routes came from BGP); per-node BGPPeers bring the whole matrix back.
//!
//! One setup for all three: each case changes the cluster in place and waits on BIRD's
//! state before measuring.

use std::time::{Duration, Instant};

use calico_e2e::docker::{allowed, available};
use calico_e2e::seed5::{groups, same_host_only, NodeMode, Seed5};
use calico_e2e::serial;

const POOL: &str = "apiVersion: calico/v1
kind: IPPool
metadata: {name: default-ipv4}
spec: {cidr: 10.65.0.0/16, blockSize: 26}
";

const H1: &str = "172.17.8.101";
const H2: &str = "172.17.8.102";

/// Waits for `what` (BIRD's state) or fails with the nodes' logs.
fn must_wait(s: &Seed5, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    let t = Instant::now();
    let ok = calico_e2e::docker::wait_for(timeout, f);
    assert!(
        ok,
        "{what}: not within {timeout:?}\nsessions host1 {:?}, host2 {:?}\nbird.conf host1:\n{}\n{}",
        s.sessions(0),
        s.sessions(1),
        s.bird_conf(0),
        s.logs()
    );
    eprintln!("{what}: {:?}", t.elapsed());
}

fn must_matrix(s: &Seed5, what: &str, want: &[Vec<bool>], timeout: Duration) {
    let t = Instant::now();
    if let Err(e) = s.await_matrix(want, timeout) {
        panic!("{what}: {e}\n{}", s.logs());
    }
    eprintln!("{what}: matrix in {:?}", t.elapsed());
}

/// `calicoctl status` of host `i`: it ran, shows one session of `kind` ("node-to-node
/// mesh", "node-specific (NAME)") with the `as` column and Established.
fn status_shows(s: &Seed5, i: usize, kind: &str, as_col: &str) {
    let (ok, out) = s.nodes[i].status();
    let line = out.lines().find(|l| l.contains(kind)).unwrap_or_default();
    assert!(
        ok && line.contains(as_col) && line.contains("Established"),
        "host{}: no Established {kind} session with {as_col:?} in status:\n{out}",
        i + 1
    );
}

#[test]
fn five_containers_on_two_hosts_ibgp_then_ebgp_then_peers_without_the_mesh() {
    if !available() {
        return;
    }
    let _g = serial();
    let started = Instant::now();
    let mut s = Seed5::start(NodeMode::HostProcess, POOL, [&[], &[]]).expect("the scenario");
    let want = allowed(&groups());

    // (a) The default AS, 64511, on both ends: one iBGP mesh session each.
    must_wait(&s, "(a) iBGP mesh up", Duration::from_secs(60), || {
        s.one_session_up(0, "Mesh_") && s.one_session_up(1, "Mesh_")
    });
    for (i, (me, peer)) in [(H1, H2), (H2, H1)].into_iter().enumerate() {
        let conf = s.bird_conf(i);
        assert!(
            conf.contains(&format!("local {me} as 64511;")) && conf.contains(&format!("neighbor {peer} as 64511;")),
            "host{}: not AS 64511 on both ends:\n{conf}",
            i + 1
        );
        status_shows(&s, i, "node-to-node mesh", "iBGP 64511");
    }
    must_matrix(&s, "(a) default AS", &want, Duration::from_secs(60));
    let routes = s.bgp_routes(0).unwrap();
    assert!(
        routes.contains(&format!("via {H2}")),
        "host1 learned nothing from host2:\n{routes}"
    );

    // (b) Per-node AS numbers, given to `calicoctl node` as the seed did: eBGP.
    s.restart_node(0, &["--as", "64512"]).expect("node --as 64512");
    s.restart_node(1, &["--as", "64513"]).expect("node --as 64513");
    must_wait(&s, "(b) eBGP mesh up", Duration::from_secs(60), || {
        s.bird_conf(0).contains(&format!("local {H1} as 64512;"))
            && s.bird_conf(0).contains(&format!("neighbor {H2} as 64513;"))
            && s.bird_conf(1).contains(&format!("local {H2} as 64513;"))
            && s.bird_conf(1).contains(&format!("neighbor {H1} as 64512;"))
            && s.one_session_up(0, "Mesh_")
            && s.one_session_up(1, "Mesh_")
    });
    status_shows(&s, 0, "node-to-node mesh", "eBGP 64512-64513");
    status_shows(&s, 1, "node-to-node mesh", "eBGP 64513-64512");
    // The routes crossed an AS boundary: the peer's AS is in their path.
    let learned = s.birdc(0, &["show", "route", "protocol", "Mesh_172_17_8_102", "all"]);
    assert!(
        learned.contains("BGP.as_path: 64513") && learned.contains(&format!("via {H2}")),
        "host1 has no routes from AS 64513:\n{learned}"
    );
    must_matrix(&s, "(b) per-node AS", &want, Duration::from_secs(60));

    // (c) The mesh off: no sessions, no BGP routes, so only same-host pairs reach.
    s.c.apply("apiVersion: calico/v1\nkind: ClusterConfig\nmetadata: {name: default}\nspec: {nodeToNodeMesh: false}\n")
        .expect("mesh off");
    must_wait(&s, "(c) the mesh gone", Duration::from_secs(30), || {
        s.sessions(0).is_empty()
            && s.sessions(1).is_empty()
            && s.bgp_routes(0).is_ok_and(|r| r.trim().is_empty())
            && s.bgp_routes(1).is_ok_and(|r| r.trim().is_empty())
    });
    must_matrix(
        &s,
        "(c) mesh off, no peers",
        &same_host_only(&want),
        Duration::from_secs(30),
    );

    // Per-node peers instead, each host naming the other with its AS: all back.
    let peer = |name: &str, node: &str, ip: &str, asn: u32| {
        format!("---\napiVersion: calico/v1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec: {{node: {node}, peerIP: {ip}, asNumber: {asn}}}\n")
    };
    s.c.apply(&format!(
        "{}{}",
        peer("host1-to-host2", "host1", H2, 64513),
        peer("host2-to-host1", "host2", H1, 64512)
    ))
    .expect("BGPPeers");
    must_wait(&s, "(c) per-node peers up", Duration::from_secs(60), || {
        s.one_session_up(0, "Peer_") && s.one_session_up(1, "Peer_")
    });
    status_shows(&s, 0, "node-specific (host1-to-host2)", "eBGP 64512-64513");
    status_shows(&s, 1, "node-specific (host2-to-host1)", "eBGP 64513-64512");
    assert!(!s.bird_conf(0).contains("Mesh_"), "{}", s.bird_conf(0));
    must_matrix(&s, "(c) per-node peers", &want, Duration::from_secs(60));
    eprintln!("whole test: {:?}", started.elapsed());
}
