//! The Docker network plugin on one Docker host: a real dockerd in a namespace host,
//! its agent serving `calico` and `calico-ipam`, containers on calico networks.

use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::docker::{available, calico_net, examples, seed_ip, wait_for, DockerHost, DockerdOpts, DumpOnPanic};
use calico_e2e::serial;

/// A one-host cluster with the example pool, dockerd (its defaults, on a host whose
/// forwarding was off) in host1 and its agent.
fn one_host() -> (Cluster, DockerHost) {
    one_host_with(DockerdOpts::default())
}

fn one_host_with(opts: DockerdOpts) -> (Cluster, DockerHost) {
    let mut c = Cluster::new(1).expect("cluster");
    c.ctl(&["apply", "-f", &examples("00-cluster.yaml")]).expect("apply");
    let d = DockerHost::start_with(&c.host_ns(0).path(), opts).expect("dockerd");
    c.start_agent_with(0, &d.agent_args()).expect("agent");
    d.wait_for_plugin().unwrap_or_else(|e| panic!("{e}\n{}", c.dump_logs()));
    (c, d)
}

/// `calicoctl ipam check`'s whole output (stdout and stderr), whether or not it passed.
fn ipam_check(c: &Cluster) -> String {
    let out = std::process::Command::new(calico_e2e::cluster::bin("calicoctl"))
        .args(["--etcd", &c.etcd.endpoint(), "ipam", "check"])
        .output();
    match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("FAILED to run calicoctl: {e}"),
    }
}

/// `ipam check` once it is clean and says `want` (e.g. "holding 4 addresses"), or its
/// last output after 10 s. The check is point-in-time: the agent releases a deleted
/// Container's addresses in its next reconcile, a moment after the delete
/// (docs/cli.md).
fn settled_ipam(c: &Cluster, want: &str) -> String {
    let mut last = String::new();
    wait_for(Duration::from_secs(10), || {
        last = ipam_check(c);
        last.contains("IPAM is consistent") && last.contains(want)
    });
    last
}

/// Create networks, run containers, ping within a group and not across, inspect,
/// stop/start, rm: everything released.
#[test]
fn plugin_networks_on_one_host() {
    if !available() {
        return;
    }
    let _g = serial();
    let (c, d) = one_host();
    let _dump = DumpOnPanic::new(&c, &[&d]);

    calico_net(&d, &[], "web");
    calico_net(&d, &["--subnet", "10.65.8.0/24", "-o", "group=db"], "dbnet");
    d.run("w1", &["--net", "web"]);
    d.run("w2", &["--net", "web"]);
    d.run("x1", &["--net", "dbnet", "--ip", "10.65.8.8"]);
    d.run("x2", &["--net", "dbnet"]);

    // docker inspect shows each Calico address; inside, a /32 and the link-local gateway.
    let w1 = d.ip_on("w1", "web");
    let w2 = d.ip_on("w2", "web");
    let x1 = d.ip_on("x1", "dbnet");
    let x2 = d.ip_on("x2", "dbnet");
    assert_eq!(x1, "10.65.8.8");
    for ip in [&w1, &w2] {
        assert!(ip.starts_with("10.65."), "{ip}");
    }
    assert!(x2.starts_with("10.65.8."), "--subnet restricts auto addresses: {x2}");
    let addr = d.must(&["exec", "w1", "ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("inet {w1}/32")), "{addr}");
    let routes = d.must(&["exec", "w1", "ip", "route"]);
    assert!(routes.contains("default via 169.254.1.1"), "{routes}");
    // The gateway's permanent neighbour entry (the namespace host has no default
    // route, so proxy ARP alone would not answer).
    let neigh = || {
        d.in_container("w1", &["ip", "neigh", "show", "169.254.1.1"])
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(5), || neigh()
            .contains("ee:ee:ee:ee:ee:ee PERMANENT")),
        "{}",
        neigh()
    );

    // Same group: both ways, by ping from inside (docker exec) and from the namespace.
    let ok = wait_for(Duration::from_secs(15), || d.ping("w1", &w2) && d.ping("w2", &w1));
    assert!(ok, "w1 and w2 (group web) cannot reach each other");
    d.must(&["exec", "w1", "ping", "-c", "1", "-W", "2", &w2]);
    assert!(wait_for(Duration::from_secs(10), || d.ping("x1", &x2) && d.ping("x2", &x1)));
    // Other group: isolated both ways.
    for (from, to) in [("w1", &x1), ("x1", &w1), ("w2", &x2), ("x2", &w2)] {
        assert!(!d.ping(from, to), "{from} reached {to} across groups");
    }

    // The groups exist with the default rules and the Containers are Docker-owned.
    let groups = c.ctl(&["get", "groups"]).unwrap();
    assert!(groups.contains("web") && groups.contains("db"), "{groups}");
    let yaml = c.ctl(&["get", "containers", "-o", "yaml"]).unwrap();
    assert_eq!(yaml.matches("calico/owner: docker").count(), 4, "{yaml}");
    assert_eq!(yaml.matches("calico/docker-endpoint").count(), 4, "{yaml}");
    let wide = c.ctl(&["get", "containers", "-o", "wide"]).unwrap();
    assert_eq!(wide.matches("Programmed").count(), 4, "{wide}");
    // Docker names reach the Container resources (the connect/start event annotates them).
    assert!(
        wait_for(Duration::from_secs(5), || c
            .ctl(&["get", "containers", "-o", "yaml"])
            .is_ok_and(|y| y.matches("calico/docker-name").count() == 4)),
        "containers never annotated with their Docker names"
    );

    // stop/start: --ip keeps its address; without --ip Docker asks for a new one
    // (documented in docs/docker.md). Both are reachable again.
    d.must(&["stop", "-t", "1", "x1", "w1"]);
    d.must(&["start", "x1", "w1"]);
    assert_eq!(d.ip_on("x1", "dbnet"), "10.65.8.8", "--ip survives stop/start");
    let w1b = d.ip_on("w1", "web");
    eprintln!("w1: {w1} before stop/start, {w1b} after");
    assert!(
        wait_for(Duration::from_secs(15), || d.ping("x2", "10.65.8.8")
            && d.ping("w2", &w1b)),
        "not reachable after stop/start"
    );
    assert!(!d.ping("w2", "10.65.8.8"));
    let check = settled_ipam(&c, "");
    assert!(check.contains("IPAM is consistent"), "{check}");

    // A bad --ip is refused with IPAM's reason.
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        "bad",
        "--net",
        "dbnet",
        "--ip",
        "10.65.8.8",
        calico_e2e::docker::IMAGE,
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use"), "{err}");
    let _ = d.docker(&["rm", "-f", "bad"]);

    // rm releases everything: no Containers, addresses, veths or /32 routes left.
    d.must(&["rm", "-f", "w1", "w2", "x1", "x2"]);
    let clean = wait_for(Duration::from_secs(15), || {
        let links = c.host_ns(0).exec(&["ip", "-o", "link"]).unwrap_or_default();
        let routes = c
            .host_ns(0)
            .exec(&["ip", "route", "show", "proto", "80"])
            .unwrap_or_default();
        !links.contains("cali") && !routes.contains("dev cali")
    });
    assert!(clean, "interfaces or routes left behind");
    let yaml = c.ctl(&["get", "containers", "-o", "yaml"]).unwrap();
    assert!(!yaml.contains("kind: Container"), "{yaml}");
    let check = settled_ipam(&c, "holding 0 addresses");
    assert!(
        check.contains("IPAM is consistent") && check.contains("holding 0 addresses"),
        "{check}"
    );
    d.must(&["network", "rm", "web", "dbnet"]);
}

/// The Docker-owned Containers of this cluster, by name.
fn docker_containers(c: &Cluster) -> Vec<String> {
    let yaml = c.ctl(&["get", "containers", "-o", "yaml"]).unwrap();
    yaml.split("\n---")
        .filter(|doc| doc.contains("calico/owner: docker"))
        .filter_map(|doc| {
            doc.lines()
                .skip_while(|l| !l.starts_with("metadata:"))
                .find_map(|l| l.trim().strip_prefix("name: ").map(str::to_string))
        })
        .collect()
}

fn cali_links(c: &Cluster) -> usize {
    c.host_ns(0)
        .exec(&["ip", "-o", "link"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(": cali"))
        .count()
}

/// Agent restart and dockerd restart: what exists is re-attached, nothing is
/// duplicated, no address is lost, and what went away meanwhile is cleaned up.
#[test]
fn restarts_reattach_without_duplicates_or_lost_addresses() {
    if !available() {
        return;
    }
    let _g = serial();
    let (mut c, mut d) = one_host();
    let _dump = DumpOnPanic::new(&c, &[&d]);
    calico_net(&d, &["--subnet", "10.65.9.0/24"], "web");
    d.run("p1", &["--net", "web", "--ip", "10.65.9.10", "--restart", "always"]);
    d.run("p2", &["--net", "web"]);
    d.run(
        "s1",
        &[
            "--net=none",
            "-e",
            "CALICO_IP=auto",
            "-e",
            "CALICO_GROUP=web",
            "--restart",
            "always",
        ],
    );
    d.run("s2", &["--net=none", "-e", "CALICO_IP=auto", "-e", "CALICO_GROUP=web"]);
    assert!(wait_for(Duration::from_secs(15), || seed_ip(&d, "s1").is_some()
        && seed_ip(&d, "s2").is_some()));
    let p2 = d.ip_on("p2", "web");
    let s1 = seed_ip(&d, "s1").unwrap();
    let reach = |d: &DockerHost, pairs: &[(&str, &str)]| {
        wait_for(Duration::from_secs(20), || {
            pairs.iter().all(|(from, to)| d.ping(from, to))
        })
    };
    assert!(reach(
        &d,
        &[("p1", &p2), ("p2", "10.65.9.10"), ("s1", "10.65.9.10"), ("p1", &s1)]
    ));
    assert_eq!(docker_containers(&c).len(), 4);

    // The agent goes away; meanwhile a CALICO_IP container is removed and another
    // started (no plugin call needed for either).
    let s2_res = format!("docker-{}", &d.must(&["inspect", "-f", "{{.Id}}", "s2"])[..12]);
    c.agent("host1").stop();
    d.must(&["rm", "-f", "s2"]);
    d.run("s3", &["--net=none", "-e", "CALICO_IP=auto", "-e", "CALICO_GROUP=web"]);
    c.agent("host1").start();
    d.wait_for_plugin().unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || seed_ip(&d, "s3").is_some()),
        "s3 (started while the agent was away) never networked"
    );
    let s3 = seed_ip(&d, "s3").unwrap();
    assert!(reach(
        &d,
        &[("p1", &p2), ("s1", "10.65.9.10"), ("s3", &s1), ("p2", &s3)]
    ));
    let names = docker_containers(&c);
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        !names.contains(&s2_res),
        "s2's Container survived its removal: {names:?}"
    );
    assert_eq!(seed_ip(&d, "s1").as_deref(), Some(s1.as_str()), "s1 changed address");
    assert_eq!(cali_links(&c), 4, "duplicate or missing interfaces");
    let check = settled_ipam(&c, "holding 4 addresses");
    assert!(
        check.contains("IPAM is consistent") && check.contains("holding 4 addresses"),
        "{check}"
    );

    // dockerd restarts: it stops every container (the plugin is told), then starts
    // those with a restart policy again.
    d.stop();
    d.spawn().expect("dockerd again");
    assert!(
        wait_for(Duration::from_secs(30), || d.ip_on("p1", "web") == "10.65.9.10"
            && seed_ip(&d, "s1").as_deref() == Some(s1.as_str())),
        "p1 and s1 did not come back with their addresses"
    );
    assert!(reach(&d, &[("p1", &s1), ("s1", "10.65.9.10")]));
    // p2 and s3 stay stopped: p2's endpoint is gone with its address; s3 keeps its
    // Container (and address) as a stopped CALICO_IP container.
    let settled = wait_for(Duration::from_secs(15), || {
        docker_containers(&c).len() == 3 && cali_links(&c) == 2
    });
    assert!(settled, "{:?}, {} cali links", docker_containers(&c), cali_links(&c));
    let check = settled_ipam(&c, "holding 3 addresses");
    assert!(
        check.contains("IPAM is consistent") && check.contains("holding 3 addresses"),
        "{check}"
    );
    let wide = c.ctl(&["get", "containers", "-o", "wide"]).unwrap();
    assert!(
        wide.contains("is not running"),
        "a stopped CALICO_IP container says why: {wide}"
    );
}

/// One request to a plugin socket with curl; the response body.
fn plugin_call(d: &DockerHost, socket: &str, method: &str, body: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", "--unix-socket"])
        .arg(d.plugin_dir().join(socket))
        .args(["-X", "POST", "--data-binary", body])
        .arg(format!("http://plugin/{method}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table with its counters zeroed, for comparing.
fn nft_table(c: &Cluster) -> String {
    let t = c
        .host_ns(0)
        .exec(&["nft", "list", "table", "inet", "calico"])
        .unwrap_or_default();
    t.lines()
        .map(|l| match l.find("counter packets") {
            Some(i) => format!("{}counter", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// 50 containers, both ways of networking, started and removed in rounds: nothing is
/// left behind. Malformed plugin requests on the way are refused without harm. This
/// one runs dockerd with `--iptables=false --bridge=none`, as some users do.
#[test]
fn fifty_containers_leave_nothing_behind() {
    if !available() {
        return;
    }
    let _g = serial();
    let (c, d) = one_host_with(DockerdOpts {
        iptables: false,
        forwarding_off: false,
    });
    let _dump = DumpOnPanic::new(&c, &[&d]);
    calico_net(&d, &[], "web");

    // Malformed and unknown requests to the real agent: errors, and it keeps serving.
    for (sock, method, body, want) in [
        (
            "calico.sock",
            "NetworkDriver.CreateEndpoint",
            "{bad json",
            "malformed JSON",
        ),
        (
            "calico.sock",
            "NetworkDriver.Join",
            r#"{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/x"}"#,
            "unknown endpoint",
        ),
        (
            "calico.sock",
            "NetworkDriver.CreateEndpoint",
            r#"{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.65.77.7/32"}}"#,
            "not assigned by calico-ipam",
        ),
        (
            "calico-ipam.sock",
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"calico-ipv4","Address":"not-an-ip"}"#,
            "Err",
        ),
        ("calico-ipam.sock", "IpamDriver.RequestAddress", "{}", "missing PoolID"),
        (
            "calico-ipam.sock",
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"10.99.0.0/24"}"#,
            "no enabled IPPool",
        ),
    ] {
        let reply = plugin_call(&d, sock, method, body);
        assert!(
            reply.contains("\"Err\"") && reply.contains(want),
            "{method} {body}: {reply}"
        );
    }
    let baseline = nft_table(&c);
    assert!(baseline.contains("table inet calico"), "{baseline}");

    let mut started = 0;
    for round in 0..5 {
        let names: Vec<String> = (0..10).map(|i| format!("churn{round}x{i}")).collect();
        std::thread::scope(|s| {
            for (i, name) in names.iter().enumerate() {
                let d = &d;
                s.spawn(move || {
                    if i % 2 == 0 {
                        d.run(name, &["--net", "web"]);
                    } else {
                        d.run(name, &["--net=none", "-e", "CALICO_IP=auto", "-e", "CALICO_GROUP=web"]);
                    }
                });
            }
        });
        started += names.len();
        let programmed = wait_for(Duration::from_secs(20), || {
            let routes = c
                .host_ns(0)
                .exec(&["ip", "route", "show", "proto", "80"])
                .unwrap_or_default();
            routes.lines().filter(|l| l.contains("dev cali")).count() == 10
        });
        assert!(programmed, "round {round}: not every container got its route");
        let mut rm = vec!["rm", "-f"];
        rm.extend(names.iter().map(String::as_str));
        d.must(&rm);
    }
    assert_eq!(started, 50);

    let clean = wait_for(Duration::from_secs(20), || {
        let routes = c
            .host_ns(0)
            .exec(&["ip", "route", "show", "proto", "80"])
            .unwrap_or_default();
        cali_links(&c) == 0 && !routes.contains("dev cali") && docker_containers(&c).is_empty()
    });
    assert!(clean, "interfaces, routes or Containers left behind");
    assert!(
        wait_for(Duration::from_secs(10), || nft_table(&c) == baseline),
        "nft table differs from before:\n{}\n----- before -----\n{baseline}",
        nft_table(&c)
    );
    // Releases of the seed path follow Docker's destroy events: give them a moment.
    let released = wait_for(Duration::from_secs(15), || {
        let check = ipam_check(&c);
        check.contains("IPAM is consistent") && check.contains("holding 0 addresses")
    });
    assert!(released, "{}", ipam_check(&c));
}
