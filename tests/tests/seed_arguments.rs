//! The seed's arguments system test, on Docker. Invalid IPs, CIDRs, AS numbers and names
//! are refused with a non-zero exit and one clear line naming the value, whether on
//! calicoctl's command line, in YAML or in a container's CALICO_IP. Then BGP on two
//! Docker hosts: the default AS is 64511, a ClusterConfig changes it, the node-to-node
//! mesh can be turned off (the hosts' containers are cut apart) and per-node BGPPeers
//! used instead (they reach each other again), also as eBGP with a per-node AS.

use std::process::Command;
use std::time::Duration;

use calico_e2e::cluster::{bin, Cluster};
use calico_e2e::docker::{available, bird_sessions, seed_ip, wait_for, CtlNode, DockerHost, DumpOnPanic};
use calico_e2e::serial;

const POOL: &str = "apiVersion: calico/v1
kind: IPPool
metadata: {name: v4}
spec: {cidr: 10.65.0.0/16, blockSize: 26}
";

/// calicoctl with the cluster's etcd: exit code, stdout + stderr.
fn run(c: &Cluster, args: &[&str], stdin: Option<&str>) -> (i32, String) {
    use std::io::Write;
    let mut cmd = Command::new(bin("calicoctl"));
    cmd.args(c.etcd_flags()).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("calicoctl");
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.unwrap_or("").as_bytes());
    }
    let out = child.wait_with_output().expect("calicoctl output");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: calico/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// The refusals: nothing is written, the exit is non-zero and one line says what.
fn bad_arguments(c: &Cluster, rd: &str) {
    let node = |extra: &[&'static str]| {
        let mut a = vec!["node", "--name", "x", "--run-dir", rd];
        a.extend_from_slice(extra);
        a
    };
    let cases: Vec<(Vec<&str>, Option<String>, &str)> = vec![
        (
            node(&["--ip", "10.0.0.256"]),
            None,
            "--ip: '10.0.0.256' is not an IP address",
        ),
        (node(&["--ip", "1.2.3"]), None, "--ip: '1.2.3' is not an IP address"),
        (
            node(&["--ip", "10.0.0.1/33"]),
            None,
            "--ip: '10.0.0.1/33' is not an IP address",
        ),
        (node(&["--ip", "fd00::1"]), None, "not an IPv4 address"),
        (
            node(&["--ip", "10.0.0.1", "--as", "0"]),
            None,
            "--as: AS number 0 is reserved",
        ),
        (
            node(&["--ip", "10.0.0.1", "--as", "4294967296"]),
            None,
            "'4294967296' for '--as <AS>'",
        ),
        (
            node(&["--ip", "10.0.0.1", "--as", "abc"]),
            None,
            "invalid value 'abc' for '--as <AS>'",
        ),
        (
            node(&["--ip", "10.0.0.1", "--ip6", "fd00::zz"]),
            None,
            "--ip6: 'fd00::zz' is not an IP address",
        ),
        (
            node(&["--ip", "10.0.0.1", "--as", "-5"]),
            None,
            "unexpected argument '-5' found",
        ),
        (
            node(&["--ip", "10.0.0.1", "--as", "64512.5"]),
            None,
            "invalid value '64512.5' for '--as <AS>'",
        ),
        (
            vec!["node", "--ip", "10.0.0.1", "--name", "Bad_Name!", "--run-dir", rd],
            None,
            "'Bad_Name!' is not a valid node name",
        ),
        (
            vec!["addgroup", "bad/name"],
            None,
            "'bad/name' is not a valid group name",
        ),
        (vec!["addgroup", "--", "-x"], None, "'-x' is not a valid group name"),
        (
            vec!["ipam", "show", "--ip", "10.0.0.300"],
            None,
            "invalid value '10.0.0.300' for '--ip <IP>'",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("IPPool", "p", "{cidr: 10.66.0.0/33}")),
            "spec.cidr: '10.66.0.0/33' is not a CIDR",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("IPPool", "p", "{cidr: ten}")),
            "spec.cidr: \"ten\" is not a CIDR",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("IPPool", "p", "{cidr: 10.66.0.1/16}")),
            "spec.cidr: '10.66.0.1/16' has host bits set; the network is 10.66.0.0/16",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("BGPPeer", "p", "{peerIP: 10.0.0.300, asNumber: 64512}")),
            "spec.peerIP: '10.0.0.300' is not an IP address",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("ClusterConfig", "default", "{asNumber: 4294967296}")),
            "spec.asNumber: 4294967296 is not an AS number (1 to 4294967295)",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("ClusterConfig", "default", "{asNumber: 0}")),
            "spec.asNumber: AS number 0 is reserved",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("Node", "x", "{ipv4: 10.0.0.1/24, asNumber: -3}")),
            "spec.asNumber: -3 is not an AS number (1 to 4294967295)",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("Node", "x", "{ipv4: 10.1.2.3/40}")),
            "spec.ipv4: '10.1.2.3/40' is not an IP address",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("BGPPeer", "p", "{peerIP: 10.0.0.1, asNumber: 0}")),
            "spec.asNumber: AS number 0 is reserved",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("BGPPeer", "p", "{peerIP: 10.0.0.1, asNumber: 4294967296}")),
            "spec.asNumber: 4294967296 is not an AS number (1 to 4294967295)",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("Container", "p", "{node: x, netns: /x, ips: [10.65.0.999]}")),
            "spec.ips[0]: '10.65.0.999' is not an IP address",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("Node", "bad.name_", "{ipv4: 10.0.0.1/24}")),
            "metadata.name: \"bad.name_\" is not a valid name",
        ),
        (
            vec!["apply", "-f", "-"],
            Some(doc("Group", "\"bad name\"", "{}")),
            "metadata.name: \"bad name\" is not a valid name",
        ),
    ];
    for (args, stdin, want) in &cases {
        let (code, out) = run(c, args, stdin.as_deref());
        assert!(code != 0, "{args:?} {stdin:?} was accepted: {out}");
        let line = out.lines().find(|l| l.contains(want));
        assert!(line.is_some(), "{args:?} {stdin:?}: no line saying {want:?} in:\n{out}");
    }
    // Nothing of it was written.
    let all = c.ctl(&["get", "all", "-o", "yaml"]).unwrap();
    assert!(!all.contains("name: x\n") && !all.contains("kind: BGPPeer") && !all.contains("kind: ClusterConfig"));
    assert!(!all.contains("name: p\n") && !all.contains("bad.name_"), "{all}");
}

/// BIRD's BGP sessions: (protocol name, established).
fn sessions(node: &CtlNode) -> Vec<(String, bool)> {
    bird_sessions(&node.run_dir)
}

fn bird_conf(node: &CtlNode) -> String {
    std::fs::read_to_string(node.run_dir.join("bird.conf")).unwrap_or_default()
}

#[test]
fn bad_arguments_refused_and_as_mesh_and_peers_on_two_docker_hosts() {
    if !available() {
        return;
    }
    let _g = serial();
    let c = Cluster::new(2).expect("cluster");
    let rd = c.dir.path().join("refused").display().to_string();
    bad_arguments(&c, &rd);

    // No ClusterConfig at all: the seed's default AS.
    c.apply(POOL).expect("pool");
    let mut nodes = Vec::new();
    let (n1, n2) = (c.host_ns(0).path(), c.host_ns(1).path());
    let t1 = std::thread::spawn(move || DockerHost::start(&n1));
    let t2 = std::thread::spawn(move || DockerHost::start(&n2));
    let docker = [
        t1.join().unwrap().expect("dockerd 1"),
        t2.join().unwrap().expect("dockerd 2"),
    ];
    for (i, d) in docker.iter().enumerate() {
        nodes.push(CtlNode::start(&c, i, d, &[]).expect("calicoctl node").0);
    }
    let _dump = DumpOnPanic::new(&c, &[&docker[0], &docker[1]]);
    let logs = || nodes.iter().map(CtlNode::logs).collect::<String>();
    c.ctl(&["addgroup", "G"]).unwrap();
    docker[0].run("a1", &["--net=none", "-e", "CALICO_IP=auto", "-e", "CALICO_GROUP=G"]);
    docker[1].run("b1", &["--net=none", "-e", "CALICO_IP=auto", "-e", "CALICO_GROUP=G"]);
    // A bad CALICO_IP: the container is refused an interface.
    docker[0].run(
        "bad",
        &["--net=none", "-e", "CALICO_IP=10.65.0.300", "-e", "CALICO_GROUP=G"],
    );
    let mut ips = Vec::new();
    for (d, name) in [(&docker[0], "a1"), (&docker[1], "b1")] {
        let mut ip = None;
        assert!(wait_for(Duration::from_secs(20), || {
            ip = seed_ip(d, name);
            ip.is_some()
        }));
        ips.push(ip.unwrap_or_default());
    }
    let (a1, b1) = (ips[0].clone(), ips[1].clone());
    let both_ways = || docker[0].ping("a1", &b1) && docker[1].ping("b1", &a1);
    assert!(
        wait_for(Duration::from_secs(40), both_ways),
        "no traffic over the mesh\n{}",
        logs()
    );
    for n in &nodes {
        let conf = bird_conf(n);
        assert!(
            conf.contains(" as 64511;"),
            "{}: the default AS is not 64511:\n{conf}",
            n.name
        );
        assert!(
            sessions(n).iter().all(|s| s.1) && sessions(n).len() == 1,
            "{:?}",
            sessions(n)
        );
    }
    let status = nodes[0].status().1;
    assert!(
        status.contains("node-to-node mesh") && status.contains("iBGP 64511") && status.contains("Established"),
        "{status}"
    );
    // No Container is made for it (nothing valid to record); the agent's log says why.
    let line = nodes[0]
        .logs()
        .lines()
        .find(|l| l.contains("container=bad") && l.contains("fix its CALICO_* environment"))
        .map(str::to_string);
    let line = line.unwrap_or_else(|| panic!("no log line for the bad CALICO_IP\n{}", nodes[0].logs()));
    assert!(
        line.contains("10.65.0.300") && line.contains("not an IP address"),
        "{line}"
    );
    let listed = c.ctl(&["get", "containers"]).unwrap();
    assert_eq!(listed.lines().count(), 3, "only a1 and b1 are Containers:\n{listed}");
    let links = docker[0].in_container("bad", &["ip", "-o", "link"]).unwrap();
    assert_eq!(
        links.lines().count(),
        1,
        "the refused container got an interface:\n{links}"
    );

    // The AS changed cluster-wide: both BIRDs take it, the sessions come back up.
    c.apply(&doc("ClusterConfig", "default", "{asNumber: 64600}")).unwrap();
    let changed = wait_for(Duration::from_secs(30), || {
        nodes.iter().all(|n| {
            bird_conf(n).contains(" as 64600;") && !bird_conf(n).contains("64511") && sessions(n).iter().all(|s| s.1)
        }) && both_ways()
    });
    assert!(
        changed,
        "AS 64600 not taken: {:?}\n{}",
        sessions(&nodes[0]),
        bird_conf(&nodes[0])
    );

    // Mesh off: no sessions, no routes between the hosts, so no traffic.
    c.apply(&doc(
        "ClusterConfig",
        "default",
        "{asNumber: 64600, nodeToNodeMesh: false}",
    ))
    .unwrap();
    let cut = wait_for(Duration::from_secs(30), || {
        nodes.iter().all(|n| sessions(n).is_empty()) && !docker[0].ping("a1", &b1)
    });
    assert!(cut, "the mesh did not go: {:?}", sessions(&nodes[0]));
    let routes = c.host_ns(0).exec(&["ip", "route", "show", "proto", "bird"]).unwrap();
    assert!(routes.trim().is_empty(), "BGP routes left without peers:\n{routes}");

    // Per-node peers instead: each host peers with the other, and traffic flows again.
    let peers = format!(
        "{}---\n{}",
        doc(
            "BGPPeer",
            "host1-to-host2",
            "{node: host1, peerIP: 172.17.8.102, asNumber: 64600}"
        ),
        doc(
            "BGPPeer",
            "host2-to-host1",
            "{node: host2, peerIP: 172.17.8.101, asNumber: 64600}"
        )
    );
    c.apply(&peers).unwrap();
    let back = wait_for(Duration::from_secs(40), || {
        nodes.iter().all(|n| sessions(n).len() == 1 && sessions(n)[0].1) && both_ways()
    });
    assert!(
        back,
        "per-node peers: {:?} {:?}\n{}",
        sessions(&nodes[0]),
        sessions(&nodes[1]),
        logs()
    );
    assert!(bird_conf(&nodes[0]).contains("BGPPeer host1-to-host2"));
    assert!(!bird_conf(&nodes[0]).contains("Mesh_"), "{}", bird_conf(&nodes[0]));

    // A per-node AS: host2 in AS 65002, peered over eBGP.
    c.apply(&format!(
        "{}---\n{}---\n{}",
        doc("Node", "host2", "{ipv4: 172.17.8.102/24, asNumber: 65002}"),
        doc(
            "BGPPeer",
            "host1-to-host2",
            "{node: host1, peerIP: 172.17.8.102, asNumber: 65002}"
        ),
        doc(
            "BGPPeer",
            "host2-to-host1",
            "{node: host2, peerIP: 172.17.8.101, asNumber: 64600}"
        )
    ))
    .unwrap();
    let ebgp = wait_for(Duration::from_secs(40), || {
        bird_conf(&nodes[1]).contains("local 172.17.8.102 as 65002;")
            && bird_conf(&nodes[0]).contains("neighbor 172.17.8.102 as 65002;")
            && nodes.iter().all(|n| sessions(n).len() == 1 && sessions(n)[0].1)
            && both_ways()
    });
    assert!(
        ebgp,
        "eBGP: {:?} {:?}\n{}\n{}",
        sessions(&nodes[0]),
        sessions(&nodes[1]),
        bird_conf(&nodes[1]),
        logs()
    );
    // status names the session eBGP, with the AS numbers BIRD runs (host2's first).
    let st = nodes[1].status().1;
    assert!(
        st.lines().any(|l| l.contains("node-specific (host2-to-host1)")
            && l.contains("eBGP 65002-64600")
            && l.contains("Established")),
        "{st}"
    );
}
