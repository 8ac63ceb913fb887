//! The seed's group-changes system test, on Docker: four containers on two Docker
//! hosts (one through the calico driver, three the seed's way), and the who-reaches-
//! whom matrix, measured with pings from inside the containers, following each `addtogroup` and
//! `removefromgroup` exactly: a container in two groups joins both, one in no group
//! reaches nobody and is reached by nobody.

use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::docker::{
    allowed, available, calico_net, examples, seed_ip, wait_for, CtlNode, DockerHost, DumpOnPanic,
};
use calico_e2e::serial;

/// name, host, networked through the driver (its network's group) or the seed's way.
const CONTAINERS: [(&str, usize, Option<&str>); 4] =
    [("w1", 0, Some("G1")), ("w2", 0, None), ("w3", 1, None), ("w4", 1, None)];

/// Who reaches whom, one ping per ordered pair from inside the container's network
/// namespace (the host's ping: `docker exec` costs a second a probe here), all at once.
fn measure(docker: &[DockerHost], ips: &[String]) -> Vec<Vec<bool>> {
    std::thread::scope(|s| {
        let rows: Vec<Vec<_>> = CONTAINERS
            .iter()
            .enumerate()
            .map(|(i, (name, host, _))| {
                (0..CONTAINERS.len())
                    .map(|j| {
                        let (d, ip) = (&docker[*host], &ips[j]);
                        s.spawn(move || i != j && d.ping(name, ip))
                    })
                    .collect()
            })
            .collect();
        rows.into_iter()
            .map(|r| r.into_iter().map(|h| h.join().unwrap_or(false)).collect())
            .collect()
    })
}

fn show(m: &[Vec<bool>]) -> String {
    let mut out = Vec::new();
    for (i, row) in m.iter().enumerate() {
        for (j, ok) in row.iter().enumerate() {
            if *ok {
                out.push(format!("{}->{}", CONTAINERS[i].0, CONTAINERS[j].0));
            }
        }
    }
    format!("[{}]", out.join(" "))
}

#[test]
fn the_matrix_follows_every_group_change() {
    if !available() {
        return;
    }
    let _g = serial();
    let c = Cluster::new(2).expect("cluster");
    c.ctl(&["apply", "-f", &examples("00-cluster.yaml")]).expect("apply");
    // Declared before the dockerds, so dropped after them: dockerd's driver containers
    // are removed while the plugin still answers (a dead plugin socket costs dockerd
    // its timeouts per endpoint).
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
    for d in &docker {
        d.wait_for_plugin().expect("plugin sockets");
    }
    let _dump = DumpOnPanic::new(&c, &[&docker[0], &docker[1]]);
    let logs = || nodes.iter().map(CtlNode::logs).collect::<String>();

    for g in ["G1", "G2"] {
        c.ctl(&["addgroup", g]).unwrap();
    }
    calico_net(&docker[0], &["-o", "group=G1"], "g1net");
    for (name, host, net) in CONTAINERS {
        match net {
            Some(_) => docker[host].run(name, &["--net", "g1net"]),
            None => docker[host].run(name, &["--net=none", "-e", "CALICO_IP=auto"]),
        };
    }
    let mut ips = Vec::new();
    for (name, host, net) in CONTAINERS {
        let d = &docker[host];
        let mut ip = None;
        let ok = wait_for(Duration::from_secs(20), || {
            ip = match net {
                Some(_) => Some(d.ip_on(name, "g1net")).filter(|s| !s.is_empty()),
                None => seed_ip(d, name),
            };
            ip.is_some()
        });
        assert!(ok, "{name} got no address\n{}", logs());
        ips.push(ip.unwrap_or_default());
    }

    // The model: each container's groups, changed with each command; the matrix must
    // match what they allow after every change.
    let mut groups: Vec<Vec<String>> = CONTAINERS
        .iter()
        .map(|(_, _, net)| net.iter().map(ToString::to_string).collect())
        .collect();
    let index = |name: &str| CONTAINERS.iter().position(|w| w.0 == name).unwrap();
    let check = |step: &str, groups: &[Vec<String>], first: bool| {
        let want = allowed(groups);
        // The first matrix waits for BGP between the hosts as well.
        let limit = Duration::from_secs(if first { 60 } else { 20 });
        let mut got = Vec::new();
        let t = std::time::Instant::now();
        let mut tries = 0;
        let ok = wait_for(limit, || {
            tries += 1;
            got = measure(&docker, &ips);
            got == want
        });
        eprintln!("{step}: {:?}, {tries} matrices", t.elapsed());
        assert!(
            ok,
            "after {step}: measured {} but the groups {groups:?} allow {}\n{}",
            show(&got),
            show(&want),
            logs()
        );
    };
    check("the start (w1 in G1, the others in none)", &groups, true);

    let steps: [(&str, &str, &str); 6] = [
        ("addtogroup", "w2", "G1"),
        ("addtogroup", "w3", "G2"),
        ("addtogroup", "w4", "G2"),
        // w2 in two groups: it reaches, and is reached by, the members of both.
        ("addtogroup", "w2", "G2"),
        ("removefromgroup", "w2", "G1"),
        // w3 in no group.
        ("removefromgroup", "w3", "G2"),
    ];
    for (cmd, name, group) in steps {
        let host = docker[CONTAINERS[index(name)].1].host();
        c.ctl(&["--docker-host", &host, cmd, name, group])
            .unwrap_or_else(|e| panic!("{cmd} {name} {group}: {e}"));
        let g = &mut groups[index(name)];
        if cmd == "addtogroup" {
            g.push(group.to_string());
        } else {
            g.retain(|x| x != group);
        }
        check(&format!("{cmd} {name} {group}"), &groups, false);
    }
    // Where it ends: w2 and w4 in G2 only; w1 alone in G1; w3 in none.
    assert_eq!(show(&allowed(&groups)), "[w2->w4 w4->w2]");
    let wide = c.ctl(&["showgroups", "--detailed"]).unwrap();
    assert!(wide.contains("Group G1") && wide.contains("Group G2"), "{wide}");
}
