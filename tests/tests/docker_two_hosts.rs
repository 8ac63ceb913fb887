//! Two Docker hosts on the fabric, each with its own dockerd (in the host's network
//! namespace and its own mount namespace) and its own agent: containers of one group
//! reach each other across hosts over BGP-learned routes, whichever way they were
//! networked (the `calico` network plugin or the seed's `CALICO_IP`); other groups are
//! isolated; `calicoctl addtogroup` takes Docker names and IDs.

use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::docker::{available, calico_net, examples, seed_ip, wait_for, DockerHost, DumpOnPanic};
use calico_e2e::serial;

/// `docker run --net=none -e ...`: the seed's way.
fn seed(d: &DockerHost, name: &str, env: &[&str]) -> String {
    let mut args = vec!["--net=none"];
    for e in env {
        args.extend(["-e", e]);
    }
    d.run(name, &args)
}

#[test]
fn two_docker_hosts_groups_across_hosts() {
    if !available() {
        return;
    }
    let _g = serial();
    let mut c = Cluster::new(2).expect("cluster");
    c.ctl(&["apply", "-f", &examples("00-cluster.yaml")]).expect("apply");
    // Both dockerds start at once (each takes a second or two).
    let (n1, n2) = (c.host_ns(0).path(), c.host_ns(1).path());
    let t1 = std::thread::spawn(move || DockerHost::start(&n1));
    let t2 = std::thread::spawn(move || DockerHost::start(&n2));
    let d1 = t1.join().unwrap().expect("dockerd 1");
    let d2 = t2.join().unwrap().expect("dockerd 2");
    c.start_agent_with(0, &d1.agent_args()).expect("agent 1");
    c.start_agent_with(1, &d2.agent_args()).expect("agent 2");
    d1.wait_for_plugin().expect("plugin 1");
    d2.wait_for_plugin().expect("plugin 2");
    let _dump = DumpOnPanic::new(&c, &[&d1, &d2]);

    // The plugin: one group "shared" on both hosts (a network per host, as Docker
    // networks are per host), and group "other" on host2.
    calico_net(&d1, &["-o", "group=shared"], "net1");
    calico_net(&d2, &["-o", "group=shared"], "net1");
    calico_net(&d2, &[], "other");
    d1.run("a1", &["--net", "net1"]);
    d2.run("b1", &["--net", "net1"]);
    d2.run("b2", &["--net", "other"]);
    let a1 = d1.ip_on("a1", "net1");
    let b1 = d2.ip_on("b1", "net1");
    let b2 = d2.ip_on("b2", "other");

    // The seed's way, on both hosts: explicit and auto addresses, CALICO_PROFILE as
    // the old name of CALICO_GROUP, a lonely group, and an address outside every pool.
    let s1_id = seed(&d1, "s1", &["CALICO_IP=10.65.50.5", "CALICO_GROUP=shared"]);
    seed(&d2, "s2", &["CALICO_IP=auto", "CALICO_PROFILE=shared"]);
    let s3_id = seed(&d2, "s3", &["CALICO_IP=auto", "CALICO_GROUP=lonely"]);
    let bad_id = seed(&d1, "bad", &["CALICO_IP=192.168.99.5", "CALICO_GROUP=shared"]);
    assert!(
        wait_for(Duration::from_secs(15), || seed_ip(&d2, "s2").is_some()
            && seed_ip(&d2, "s3").is_some()),
        "CALICO_IP=auto containers never got an address"
    );
    let s1 = "10.65.50.5".to_string();
    let s2 = seed_ip(&d2, "s2").unwrap();
    let s3 = seed_ip(&d2, "s3").unwrap();
    assert!(s2.starts_with("10.65.") && s3.starts_with("10.65."), "{s2} {s3}");

    // Group "shared" across hosts and paths, in both directions.
    let shared = [(&d1, "a1", &a1), (&d2, "b1", &b1), (&d1, "s1", &s1), (&d2, "s2", &s2)];
    let converged = wait_for(Duration::from_secs(40), || d1.ping("a1", &b1) && d2.ping("s2", &s1));
    assert!(converged, "a1 never reached b1 across hosts");
    for (dx, x, _) in &shared {
        for (_, y, yip) in &shared {
            if x != y {
                assert!(
                    wait_for(Duration::from_secs(10), || dx.ping(x, yip)),
                    "{x} cannot reach {y} ({yip}) in group shared"
                );
            }
        }
    }
    // The remote addresses came over BGP: host1's kernel has bird routes via host2.
    let routes = c.host_ns(0).exec(&["ip", "route", "show", "proto", "bird"]).unwrap();
    assert!(
        routes.contains("via 172.17.8.102"),
        "no BGP routes via host2 on host1:\n{routes}"
    );
    let local = c.host_ns(0).exec(&["ip", "route", "show", "proto", "80"]).unwrap();
    assert!(
        local.contains(&format!("{a1} dev cali")) && local.contains("10.65.50.5 dev cali"),
        "{local}"
    );

    // Other groups are isolated, both ways.
    for (dx, x, _) in &shared {
        for ip in [&b2, &s3] {
            assert!(!dx.ping(x, ip), "{x} reached {ip} of another group");
        }
    }
    assert!(!d2.ping("b2", &a1) && !d2.ping("s3", &s1) && !d2.ping("s3", &b1));

    // Outside every pool: refused, said so in the log and the status, no interface.
    let bad = format!("docker-{}", &bad_id[..12]);
    let wide = c.ctl(&["get", "container", &bad, "-o", "wide"]).unwrap();
    assert!(wide.contains("Error"), "{wide}");
    let log = c.agents["host1"].log();
    assert!(
        log.contains("CALICO_IP 192.168.99.5 is in no enabled IPPool"),
        "no clear log line for the refused address"
    );
    let status = c.ctl(&["get", "container", &bad, "-o", "yaml"]).unwrap();
    assert!(status.contains("192.168.99.5"), "{status}");
    let links = d1.in_container("bad", &["ip", "-o", "link"]).unwrap();
    assert_eq!(
        links.lines().count(),
        1,
        "the refused container got an interface:\n{links}"
    );

    // addtogroup / removefromgroup by Docker name, ID and ID prefix on this node.
    let host2 = d2.host();
    let ctl2 = |args: &[&str]| {
        let mut full = vec!["--docker-host", host2.as_str()];
        full.extend_from_slice(args);
        c.ctl(&full)
    };
    ctl2(&["addtogroup", "s3", "shared"]).expect("addtogroup by Docker name");
    assert!(wait_for(Duration::from_secs(10), || d2.ping("s3", &s1) && d1.ping("s1", &s3)));
    ctl2(&["removefromgroup", &s3_id[..6], "shared"]).expect("removefromgroup by ID prefix");
    assert!(wait_for(Duration::from_secs(10), || !d1.ping("s1", &s3)));
    let b2_id = d2.must(&["inspect", "-f", "{{.Id}}", "b2"]);
    ctl2(&["addtogroup", &b2_id, "shared"]).expect("addtogroup of a plugin container by ID");
    assert!(wait_for(Duration::from_secs(10), || d1.ping("a1", &b2) && d2.ping("b2", &a1)));
    let err = ctl2(&["addtogroup", "no-such-container", "shared"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no Container named 'no-such-container'"), "{err}");

    // The seed's stop/start keeps the address (the resource lives as long as the
    // Docker container) and the container is plumbed again.
    d2.must(&["stop", "-t", "1", "s2"]);
    d2.must(&["start", "s2"]);
    assert!(
        wait_for(Duration::from_secs(15), || seed_ip(&d2, "s2").as_deref()
            == Some(s2.as_str())
            && d2.ping("s2", &s1)),
        "s2 lost its address or its reachability across stop/start"
    );

    // rm: the seed Container is deleted and its address released.
    d1.must(&["rm", "-f", "s1", "bad"]);
    let gone = wait_for(Duration::from_secs(10), || {
        c.ctl(&["get", "containers"])
            .is_ok_and(|t| !t.contains(&format!("docker-{}", &s1_id[..12])) && !t.contains(&bad))
    });
    assert!(gone, "seed Containers not deleted after docker rm");
    for d in [&d1, &d2] {
        let ids = d.must(&["ps", "-aq"]);
        let mut args = vec!["rm", "-f"];
        args.extend(ids.split_whitespace());
        d.must(&args);
    }
    let clean = wait_for(Duration::from_secs(15), || {
        c.ctl(&["ipam", "check"])
            .is_ok_and(|o| o.contains("IPAM is consistent") && o.contains("holding 0 addresses"))
    });
    assert!(clean, "{}", c.ctl(&["ipam", "check"]).unwrap_or_else(|e| e.to_string()));
}
