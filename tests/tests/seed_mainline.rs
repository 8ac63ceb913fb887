//! The seed's mainline system test, on Docker: `calicoctl node`, a group, two workloads
//! on one host (a Docker container networked the seed's way, and a plain network
//! namespace declared as a Container), both in the group, pinging each other over IPv4
//! and IPv6; then the teardown in the seed's order (removefromgroup, removegroup,
//! container removal, node stop) with `status`, `showgroups` and `get` after each step
//! showing what they should.

use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::docker::{available, wait_for, CtlNode, DockerHost, DumpOnPanic};
use calico_e2e::{can_ping, serial};

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

const D4: &str = "10.65.1.1";
const D6: &str = "fd00:65::1";
const N4: &str = "10.65.1.2";
const N6: &str = "fd00:65::2";

#[test]
fn mainline_node_group_two_workloads_and_teardown_in_order() {
    if !available() {
        return;
    }
    let _g = serial();
    let mut c = Cluster::new(1).expect("cluster");
    c.apply(POOLS).expect("pools");
    let d = DockerHost::start(&c.host_ns(0).path()).expect("dockerd");
    let (node, out) = CtlNode::start(&c, 0, &d, &[]).expect("calicoctl node");
    assert!(out.contains("Started calico-node for node host1"), "{out}");
    d.wait_for_plugin().expect("plugin sockets");
    let _dump = DumpOnPanic::new(&c, &[&d]);
    let logs = || node.logs();

    // The group, and the two workloads, neither in it yet.
    assert!(c
        .ctl(&["addgroup", "TEST_GROUP"])
        .unwrap()
        .contains("Created group TEST_GROUP"));
    let id = d.run("node1", &["--net=none", "-e", &format!("CALICO_IP={D4},{D6}")]);
    let docker_ct = format!("docker-{}", &id[..12]);
    let ns = c.workload_ns("ns1").expect("netns");
    c.apply(&format!(
        "apiVersion: calico/v1\nkind: Container\nmetadata: {{name: ns1}}\nspec:\n  node: host1\n  netns: {}\n  ips: [{N4}, '{N6}']\n",
        ns.display()
    ))
    .expect("the netns Container");
    let dctl = |args: &[&str]| {
        let mut full = vec!["--docker-host".to_string(), d.host()];
        full.extend(args.iter().map(ToString::to_string));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        c.ctl(&full)
    };
    let programmed = |n: usize| {
        node.status()
            .1
            .contains(&format!("Endpoints on host1: {n} Containers: {n} programmed, 0 failed"))
    };
    assert!(
        wait_for(Duration::from_secs(20), || programmed(2)),
        "{}\n{}",
        node.status().1,
        logs()
    );

    // Not in the group: no traffic either way.
    let d_to = |ip: &str| d.exec_ping("node1", ip);
    let n_to = |ip: &str| can_ping(c.wl("ns1"), ip.parse().unwrap(), 1);
    assert!(!d_to(N4) && !n_to(D4), "workloads in no group reached each other");

    // Both in the group (by Docker name and by Container name): all four directions.
    assert!(dctl(&["addtogroup", "node1", "TEST_GROUP"])
        .unwrap()
        .contains(&docker_ct));
    c.ctl(&["addtogroup", "ns1", "TEST_GROUP"]).unwrap();
    let all_four = || d_to(N4) && d_to(N6) && n_to(D4) && n_to(D6);
    assert!(
        wait_for(Duration::from_secs(20), all_four),
        "v4 {}->{N4}: {}, v6 ->{N6}: {}, {N4}->{D4}: {}, ->{D6}: {}\n{}",
        D4,
        d_to(N4),
        d_to(N6),
        n_to(D4),
        n_to(D6),
        logs()
    );
    let groups = c.ctl(&["showgroups", "--detailed"]).unwrap();
    assert!(
        groups.contains("TEST_GROUP") && groups.contains(&docker_ct) && groups.contains("ns1"),
        "{groups}"
    );
    let (ok, status) = node.status();
    assert!(ok && status.contains("running, pid") && programmed(2), "{status}");
    assert!(status.contains("ready:          yes"), "{status}");

    // 1. removefromgroup: the group stays, empty; the workloads are cut off both ways.
    dctl(&["removefromgroup", "node1", "TEST_GROUP"]).unwrap();
    c.ctl(&["removefromgroup", "ns1", "TEST_GROUP"]).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || !d_to(N4) && !n_to(D4) && !n_to(D6)),
        "traffic still flows after removefromgroup"
    );
    let groups = c.ctl(&["showgroups", "--detailed"]).unwrap();
    assert!(groups.contains("TEST_GROUP"), "{groups}");
    assert!(!groups.contains(&docker_ct) && !groups.contains("ns1"), "{groups}");
    let wide = c.ctl(&["get", "containers", "-o", "wide"]).unwrap();
    assert!(!wide.contains("TEST_GROUP"), "{wide}");
    assert!(programmed(2), "{}", node.status().1);

    // 2. removegroup: gone from showgroups and get.
    assert!(c.ctl(&["removegroup", "TEST_GROUP"]).is_ok());
    assert!(c.ctl(&["get", "group", "TEST_GROUP"]).is_err());
    let groups = c.ctl(&["showgroups"]).unwrap_or_default();
    assert!(!groups.contains("TEST_GROUP"), "{groups}");

    // 3. The containers: docker rm deletes the seed's Container and frees its addresses;
    // the namespace's Container is deleted by name. Each leaves status and get.
    d.must(&["rm", "-f", "node1"]);
    let gone = |name: &str| c.ctl(&["get", "containers"]).is_ok_and(|t| !t.contains(name));
    assert!(
        wait_for(Duration::from_secs(15), || gone(&docker_ct)),
        "{docker_ct} still listed"
    );
    assert!(
        wait_for(Duration::from_secs(15), || programmed(1)),
        "{}",
        node.status().1
    );
    c.ctl(&["delete", "container", "ns1"]).unwrap();
    assert!(wait_for(Duration::from_secs(15), || gone("ns1")));
    assert!(
        wait_for(Duration::from_secs(15), || node
            .status()
            .1
            .contains("Endpoints on host1: 0 Containers")),
        "{}",
        node.status().1
    );
    // The agent releases a deleted Container's addresses in its next reconcile, after
    // etcd (and so status) no longer lists it: wait for that, as for the interfaces.
    assert!(
        wait_for(Duration::from_secs(15), || c.ctl(&["ipam", "check"]).is_ok()),
        "{}\n{}",
        c.ctl(&["ipam", "check"]).unwrap_err(),
        logs()
    );
    let check = c.ctl(&["ipam", "check"]).unwrap();
    assert!(
        check.contains("holding 0 addresses") && check.contains("IPAM is consistent"),
        "{check}"
    );
    let links = c.host_ns(0).exec(&["ip", "-o", "link"]).unwrap();
    assert!(
        !links.contains("cali"),
        "interfaces left after the containers went:\n{links}"
    );

    // 4. node stop: the agent and BIRD are gone, status says so and fails; the Node
    // stays registered (the seed's node stop leaves it).
    let stop = c.ctl(&["node", "stop", "--run-dir", &node.rd()]).expect("node stop");
    assert!(stop.contains("Stopped calico-node"), "{stop}");
    assert!(!node.agent_alive() && !node.bird_alive());
    let (ok, status) = node.status();
    assert!(!ok && status.contains("not running"), "{status}");
    assert!(c.ctl(&["get", "node", "host1"]).unwrap().contains("host1"));
}
