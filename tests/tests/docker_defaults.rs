//! dockerd with its defaults (iptables on, docker0), as users run it. On a host whose
//! forwarding was off, dockerd sets iptables' FORWARD policy to DROP, which would drop
//! every workload packet; the agent keeps one accept chain for its interfaces there
//! (`CALICO-FORWARD`, docs/docker.md), while its own nftables table still decides:
//! a policy Deny keeps dropping. Docker's own bridge keeps working; the chain survives
//! dockerd restarts and firewall reloads, and `calicoctl reset` removes it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use calico_e2e::cluster::{bin, free_port, Cluster};
use calico_e2e::docker::{available, calico_net, examples, seed_ip, wait_for, DockerHost, DockerdOpts, DumpOnPanic};
use calico_e2e::serial;

fn forward_rules(d: &DockerHost) -> String {
    d.in_host(&["iptables", "-S", "FORWARD"])
        .unwrap_or_else(|e| e.to_string())
}

fn our_chain(d: &DockerHost) -> String {
    d.in_host(&["iptables", "-S", "CALICO-FORWARD"]).unwrap_or_default()
}

fn chain_in_place(d: &DockerHost) -> bool {
    our_chain(d).contains("-A CALICO-FORWARD -i cali+ -j ACCEPT")
        && forward_rules(d).matches("-j CALICO-FORWARD").count() == 1
}

const DENY_ICMP: &str = "apiVersion: calico/v1\nkind: Policy\nmetadata: {name: no-ping-in-web}\n\
spec:\n  order: 1\n  selector: group == \"web\"\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      protocol: ICMP\n";

/// dockerd first, on a host whose forwarding was off: FORWARD is DROP, and calico
/// traffic still flows (plugin and CALICO_IP), a Deny still drops, docker0 still works,
/// and all of it survives a dockerd restart and a flushed FORWARD chain.
#[test]
fn dockerd_defaults_on_a_fresh_host() {
    if !available() {
        return;
    }
    let _g = serial();
    let mut c = Cluster::new(1).expect("cluster");
    c.ctl(&["apply", "-f", &examples("00-cluster.yaml")]).expect("apply");
    let mut d = DockerHost::start(&c.host_ns(0).path()).expect("dockerd");
    // What a freshly booted host looks like once dockerd is up.
    assert!(forward_rules(&d).contains("-P FORWARD DROP"), "{}", forward_rules(&d));
    c.start_agent_with(0, &d.agent_args()).expect("agent");
    d.wait_for_plugin().unwrap_or_else(|e| panic!("{e}\n{}", c.dump_logs()));
    let _dump = DumpOnPanic::new(&c, &[&d]);

    calico_net(&d, &["-o", "group=web"], "web");
    d.run("w1", &["--net", "web"]);
    d.run("w2", &["--net", "web"]);
    d.run("s1", &["--net=none", "-e", "CALICO_IP=auto", "-e", "CALICO_GROUP=web"]);
    d.run("b1", &[]);
    d.run("b2", &[]);
    let w1 = d.ip_on("w1", "web");
    let w2 = d.ip_on("w2", "web");
    assert!(wait_for(Duration::from_secs(15), || seed_ip(&d, "s1").is_some()));
    let s1 = seed_ip(&d, "s1").unwrap();
    let b2 = d.ip_on("b2", "bridge");
    assert!(!b2.is_empty(), "b2 has no address on Docker's bridge");

    let all_reach = |d: &DockerHost, w1: &str, w2: &str| {
        d.ping("w1", w2) && d.ping("w2", w1) && d.ping("s1", w1) && d.ping("w2", &s1)
    };
    assert!(
        wait_for(Duration::from_secs(20), || all_reach(&d, &w1, &w2)),
        "calico containers cannot reach each other under dockerd's defaults\n{}\n{}",
        forward_rules(&d),
        our_chain(&d)
    );
    assert!(chain_in_place(&d), "{}\n{}", forward_rules(&d), our_chain(&d));
    assert!(d.ping("b1", &b2), "Docker's own bridge network broke");

    // Our verdicts still decide: a Deny in our table drops what iptables accepts.
    c.apply(DENY_ICMP).expect("apply the Deny");
    assert!(
        wait_for(Duration::from_secs(10), || !d.ping("w1", &w2) && !d.ping("s1", &w1)),
        "a policy Deny did not drop pings between calico containers"
    );
    c.ctl(&["delete", "policy", "no-ping-in-web"]).expect("delete the Deny");
    assert!(wait_for(Duration::from_secs(10), || all_reach(&d, &w1, &w2)));

    // A dockerd restart (it re-creates its chains): ours stays, traffic flows again.
    d.stop();
    d.spawn().expect("dockerd again");
    d.must(&["start", "w1", "w2", "s1", "b1", "b2"]);
    let w1 = d.ip_on("w1", "web");
    let w2 = d.ip_on("w2", "web");
    let b2 = d.ip_on("b2", "bridge");
    assert!(
        wait_for(Duration::from_secs(20), || all_reach(&d, &w1, &w2)),
        "no calico traffic after a dockerd restart\n{}",
        forward_rules(&d)
    );
    assert!(chain_in_place(&d), "{}", forward_rules(&d));
    assert!(wait_for(Duration::from_secs(5), || d.ping("b1", &b2)));

    // A firewall reload flushes FORWARD: the agent puts its jump back (resync: 5 s).
    d.in_host(&["iptables", "-F", "FORWARD"]).expect("flush FORWARD");
    assert!(
        wait_for(Duration::from_secs(15), || chain_in_place(&d)
            && all_reach(&d, &w1, &w2)),
        "the jump was not restored after FORWARD was flushed\n{}",
        forward_rules(&d)
    );
}

/// Kills what `calicoctl node` started for a run directory, also when the test failed.
struct Reaper(Vec<PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for dir in &self.0 {
            for f in ["calico-node.pid", "bird.pid"] {
                if let Ok(pid) = std::fs::read_to_string(dir.join(f)) {
                    let pid = pid.trim();
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() == "calico-node" || comm.trim() == "bird" {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                }
            }
        }
    }
}

/// The way users start hosts: `calicoctl node` with `--docker-host` and `--plugin-dir`,
/// agents before dockerd, on hosts whose forwarding was off and whose firewall then
/// sets FORWARD to DROP; containers reach each other across the two hosts. Then
/// `node stop` and `reset` leave no nftables table and no iptables chain of ours.
#[test]
fn calicoctl_node_before_dockerd_on_two_hosts() {
    if !available() {
        return;
    }
    let _g = serial();
    let c = Cluster::new(2).expect("cluster");
    c.ctl(&["apply", "-f", &examples("00-cluster.yaml")]).expect("apply");
    let opts = DockerdOpts {
        iptables: true,
        forwarding_off: false,
    };
    let mut docker = Vec::new();
    let mut run_dirs = Vec::new();
    for i in 0..2 {
        let ns = c.host_ns(i).path();
        let d = DockerHost::prepare(&ns, opts).expect("docker dirs");
        d.in_host(&["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"])
            .unwrap();
        run_dirs.push(c.dir.path().join(format!("node{}", i + 1)));
        docker.push(d);
    }
    let _reaper = Reaper(run_dirs.clone());
    for (i, d) in docker.iter().enumerate() {
        let rd = run_dirs[i].display().to_string();
        let ip = format!("{}/24", c.fabric.hosts[i].addr);
        let name = format!("host{}", i + 1);
        let ns = c.host_ns(i).path().display().to_string();
        let http = format!("127.0.0.1:{}", free_port());
        let plugins = d.plugin_dir().display().to_string();
        let out = c
            .ctl(&[
                "--docker-host",
                &d.host(),
                "node",
                "--ip",
                &ip,
                "--name",
                &name,
                "--netns",
                &ns,
                "--run-dir",
                &rd,
                "--log-dir",
                &rd,
                "--http",
                &http,
                "--plugin-dir",
                &plugins,
            ])
            .expect("calicoctl node");
        assert!(out.contains(&name), "{out}");
        let record = std::fs::read_to_string(run_dirs[i].join("calico-node.args")).unwrap();
        assert!(
            record.contains(&d.host()) && record.contains(&plugins),
            "the agent was not handed the Docker socket and plugin dir: {record}"
        );
    }
    // The agents turn forwarding on (packets from the fabric need it).
    for d in &docker {
        assert!(wait_for(Duration::from_secs(10), || d
            .in_host(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .is_ok_and(|v| v.trim() == "1")));
    }
    // Now dockerd, on both hosts at once; then a firewall drops forwarded traffic.
    std::thread::scope(|s| {
        for d in docker.iter_mut() {
            s.spawn(move || d.launch().expect("dockerd"));
        }
    });
    for d in &docker {
        d.in_host(&["iptables", "-P", "FORWARD", "DROP"]).unwrap();
        d.wait_for_plugin().expect("plugin");
    }
    let logs: Vec<PathBuf> = run_dirs.iter().map(|r| r.join("calico-node.log")).collect();
    let dump_logs = || {
        logs.iter()
            .map(|f| {
                format!(
                    "----- {} -----\n{}",
                    f.display(),
                    std::fs::read_to_string(f).unwrap_or_default()
                )
            })
            .collect::<String>()
    };
    let (d1, d2) = (&docker[0], &docker[1]);
    calico_net(d1, &["-o", "group=shared"], "net1");
    calico_net(d2, &["-o", "group=shared"], "net1");
    d1.run("a1", &["--net", "net1"]);
    d2.run("b1", &["--net", "net1"]);
    let a1 = d1.ip_on("a1", "net1");
    let b1 = d2.ip_on("b1", "net1");
    assert!(
        wait_for(Duration::from_secs(40), || d1.ping("a1", &b1) && d2.ping("b1", &a1)),
        "no traffic across hosts\n{}\n{}",
        forward_rules(d2),
        dump_logs()
    );
    for d in &docker {
        assert!(chain_in_place(d), "{}", forward_rules(d));
    }

    // The containers go while their plugin still answers: removing a driver container
    // after its agent stopped costs dockerd a minute of plugin timeouts.
    d1.must(&["rm", "-f", "a1"]);
    // Stop host1's agent, reset: our table and chain are gone from host1, Docker's stay.
    let rd1 = run_dirs[0].display().to_string();
    c.ctl(&["node", "stop", "--force", "--run-dir", &rd1])
        .expect("node stop");
    let out = Command::new(bin("calicoctl"))
        .args(["--etcd", &c.etcd.endpoint(), "reset", "--yes", "--run-dir", &rd1])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("Removed nftables table inet calico") && text.contains("Removed the iptables chain"),
        "{text}"
    );
    assert!(d1.in_host(&["nft", "list", "table", "inet", "calico"]).is_err());
    assert!(!forward_rules(d1).contains("CALICO-FORWARD"), "{}", forward_rules(d1));
    assert!(
        d1.in_host(&["iptables", "-S", "DOCKER"]).is_ok(),
        "reset touched Docker's chains"
    );
    // host2's agent still runs: a reset there leaves its dataplane and says so.
    let rd2 = run_dirs[1].display().to_string();
    let out = Command::new(bin("calicoctl"))
        .args(["--etcd", &c.etcd.endpoint(), "reset", "--yes", "--run-dir", &rd2])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("is running"), "{text}");
    assert!(chain_in_place(d2));
    // b1 goes while its plugin still answers (see a1 above).
    d2.must(&["rm", "-f", "b1"]);
    c.ctl(&["node", "stop", "--force", "--run-dir", &rd2])
        .expect("node stop 2");
}
