//! The seed's demo on real agents, BIRD, nftables and namespace hosts: five workloads
//! on two hosts, A, C and E in one group, B and D each alone.

use std::net::IpAddr;
use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::{can_connect, can_ping, serial, Listener};

const WORKLOADS: [(&str, &str, &str, &str); 5] = [
    ("a", "host1", "10.65.0.1", "A_C_E"),
    ("b", "host1", "10.65.0.2", "B"),
    ("c", "host1", "10.65.0.3", "A_C_E"),
    ("d", "host2", "10.65.0.4", "D"),
    ("e", "host2", "10.65.0.5", "A_C_E"),
];

fn ip(name: &str) -> IpAddr {
    WORKLOADS
        .iter()
        .find(|w| w.0 == name)
        .map(|w| w.2.parse().unwrap())
        .unwrap()
}

/// Who reaches whom by ping, as a sorted list of "x->y" (pairs probed in parallel).
fn matrix(c: &Cluster) -> Vec<String> {
    let wls: Vec<(&str, IpAddr)> = WORKLOADS.iter().map(|w| (w.0, ip(w.0))).collect();
    c.ping_matrix(&wls)
}

fn expect(pairs: &[(&str, &str)]) -> Vec<String> {
    let mut v: Vec<String> = pairs
        .iter()
        .flat_map(|(a, b)| [format!("{a}->{b}"), format!("{b}->{a}")])
        .collect();
    v.sort();
    v
}

pub fn seed_cluster() -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(2)?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    c.ctl(&[
        "apply",
        "-f",
        &format!("{root}/00-cluster.yaml"),
        "-f",
        &format!("{root}/20-groups.yaml"),
    ])?;
    c.start_agent(0)?;
    c.start_agent(1)?;
    let mut yaml = String::new();
    for (name, node, addr, group) in WORKLOADS {
        let ns = c.workload_ns(name)?;
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Container\nmetadata: {{name: workload-{name}}}\nspec:\n  node: {node}\n  netns: {}\n  ips: [{addr}]\n  groups: [{group}]\n",
            ns.display()
        ));
    }
    c.apply(&yaml)?;
    Ok(c)
}

#[test]
fn seed_demo_groups_policy_and_bgp() {
    let _g = serial();
    let c = seed_cluster().expect("cluster");
    // Converged when A reaches E across hosts (needs BGP routes both ways).
    let ok = Cluster::wait_for(Duration::from_secs(40), || can_ping(c.wl("a"), ip("e"), 1));
    assert!(ok, "a never reached e\n{}", c.dump_logs());

    let m = matrix(&c);
    assert_eq!(m, expect(&[("a", "c"), ("a", "e"), ("c", "e")]), "\n{}", c.dump_logs());

    // Routes to the other host's workloads were learned over BGP, not configured.
    let routes = c.host_ns(0).exec(&["ip", "route", "show", "proto", "bird"]).unwrap();
    assert!(
        routes.contains("via 172.17.8.102"),
        "host1 has no BGP routes via host2:\n{routes}"
    );
    let protocols = c.host_ns(0).exec(&["ip", "route", "show", "proto", "80"]).unwrap();
    assert!(
        protocols.contains("10.65.0.1 dev cali"),
        "workload route missing:\n{protocols}"
    );

    // Adding B to the group opens exactly B's paths.
    c.ctl(&["addtogroup", "workload-b", "A_C_E"]).unwrap();
    let ok = Cluster::wait_for(Duration::from_secs(15), || can_ping(c.wl("b"), ip("e"), 1));
    assert!(ok, "b never reached e after addtogroup");
    let m = matrix(&c);
    assert_eq!(
        m,
        expect(&[("a", "b"), ("a", "c"), ("a", "e"), ("b", "c"), ("b", "e"), ("c", "e")])
    );

    // A Policy denying TCP 80 from A to C closes exactly that.
    let _l80 = Listener::start(c.wl("c"), 80).unwrap();
    let _l81 = Listener::start(c.wl("c"), 81).unwrap();
    let t = Duration::from_millis(700);
    assert!(can_connect(c.wl("a"), ip("c"), 80, t));
    c.apply(
        r#"apiVersion: calico/v1
kind: Policy
metadata: {name: no-http-a-to-c}
spec:
  order: 10
  selector: group == "A_C_E"
  ingress:
    - action: Deny
      protocol: TCP
      source: {nets: [10.65.0.1/32]}
      destination: {nets: [10.65.0.3/32], ports: [80]}
    - action: Pass
"#,
    )
    .unwrap();
    let closed = Cluster::wait_for(Duration::from_secs(10), || !can_connect(c.wl("a"), ip("c"), 80, t));
    assert!(closed, "a->c:80 still open");
    assert!(can_connect(c.wl("a"), ip("c"), 81, t), "a->c:81 must stay open");
    assert!(can_connect(c.wl("e"), ip("c"), 80, t), "e->c:80 must stay open");
    assert!(can_connect(c.wl("b"), ip("c"), 80, t), "b->c:80 must stay open");
    assert!(can_ping(c.wl("a"), ip("c"), 1), "ping a->c must stay open");
}

/// `calicoctl reach --probe` sends every probe for real from the workloads' namespaces:
/// on the seed scenario every packet meets the policy's verdict; with a rule planted by
/// hand in a host's table (its agent stopped, so nothing repairs it), the cells that
/// rule breaks are reported.
#[test]
fn reach_probe_agrees_with_the_dataplane_and_finds_a_tampered_table() {
    let _g = serial();
    let mut c = seed_cluster().expect("cluster");
    let ok = Cluster::wait_for(Duration::from_secs(40), || can_ping(c.wl("a"), ip("e"), 1));
    assert!(ok, "a never reached e\n{}", c.dump_logs());
    let ok = Cluster::wait_for(Duration::from_secs(20), || can_ping(c.wl("c"), ip("e"), 1));
    assert!(ok, "c never reached e\n{}", c.dump_logs());
    let args = ["reach", "--probe", "--node", "host1", "--node", "host2"];
    let out = c.ctl(&args).unwrap_or_else(|e| panic!("{e}\n{}", c.dump_logs()));
    assert!(
        out.contains("probed 20 cells from host1, host2: all agree with the policy"),
        "{out}"
    );
    assert!(out.contains("workload-a  A_C_E  -           all"), "{out}");

    c.agent("host1").kill9();
    c.host_ns(0)
        .exec(&[
            "nft",
            "insert",
            "rule",
            "inet",
            "calico",
            "forward",
            "ip",
            "daddr",
            "10.65.0.3",
            "drop",
        ])
        .expect("tamper");
    let run = std::process::Command::new(calico_e2e::cluster::bin("calicoctl"))
        .args(c.etcd_flags())
        .args(args)
        .output()
        .expect("calicoctl");
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(1),
        "{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // c (10.65.0.3) talks with a and e in the policy; the planted rule drops what goes
    // to c, so their pings to c and the replies to c's pings are lost both ways.
    for (from, to) in [("a", "c"), ("c", "a"), ("c", "e"), ("e", "c")] {
        assert!(
            out.contains(&format!(
                "DISAGREES workload-{from} -> workload-{to} icmp: the policy allows it, the packet was dropped"
            )),
            "{out}"
        );
    }
    assert!(
        out.contains("probed 20 cells from host1, host2: 4 disagree with the policy"),
        "{out}"
    );
}

/// The packets `calicoctl explain --counters -o json` reports for one direction's
/// deciding rule (asked of that node's agent, found through its status in etcd).
fn explained_packets(c: &Cluster, src: &str, dst: &str, dir: &str) -> (u64, serde_json::Value) {
    let out = c
        .ctl(&["explain", src, dst, "--proto", "ICMP", "--counters", "-o", "json"])
        .unwrap_or_else(|e| panic!("{e}\n{}", c.dump_logs()));
    let v: serde_json::Value = serde_json::from_str(&out).expect("explain -o json");
    let n = v["counters"][dir]["count"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {dir} count in {out}"));
    (n, v["counters"][dir].clone())
}

/// Per-rule counters: a's pings to e move the counter of the rule explain names at each
/// end (A_C_E's default rules: egress on host1, ingress on host2), by at least the
/// pings sent, as explain --counters and the agents' /metrics both show; a's pings to b,
/// which no rule allows, move neither.
#[test]
fn rule_counters_follow_the_packets() {
    let _g = serial();
    let mut c = seed_cluster().expect("cluster");
    let ok = Cluster::wait_for(Duration::from_secs(40), || can_ping(c.wl("a"), ip("e"), 1));
    assert!(ok, "a never reached e\n{}", c.dump_logs());

    let (eg0, eg) = explained_packets(&c, "workload-a", "workload-e", "egress");
    let (in0, ing) = explained_packets(&c, "workload-a", "workload-e", "ingress");
    assert_eq!(eg["rule"], "Group/A_C_E egress[0]", "{eg}");
    assert_eq!(eg["node"], "host1", "{eg}");
    assert_eq!(ing["rule"], "Group/A_C_E ingress[0]", "{ing}");
    assert_eq!(ing["node"], "host2", "{ing}");
    assert!(eg0 >= 1 && in0 >= 1, "the convergence pings were counted: {eg0} {in0}");
    let b_in = |c: &mut Cluster| {
        let m = c.agent("host1").metrics();
        m.lines()
            .filter(|l| l.starts_with("calico_rule_packets_total{rule=\"Group/B ingress[0]\",direction=\"ingress\"} "))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .next()
    };
    let b0 = b_in(&mut c).expect("host1's /metrics has B's ingress rule");

    // Every ping is a new ICMP flow (a new id), so each request passes the policy.
    for _ in 0..5 {
        assert!(can_ping(c.wl("a"), ip("e"), 1), "a -> e stopped working");
    }
    assert!(!can_ping(c.wl("a"), ip("b"), 1), "a reached b");

    let (eg1, _) = explained_packets(&c, "workload-a", "workload-e", "egress");
    let (in1, _) = explained_packets(&c, "workload-a", "workload-e", "ingress");
    assert!(eg1 >= eg0 + 5, "egress counter {eg0} -> {eg1}");
    assert!(in1 >= in0 + 5, "ingress counter {in0} -> {in1}");
    // a -> b: a's egress allows (A_C_E's default), b's ingress does not: B's rule
    // admits only B's members, so its counter stays.
    assert_eq!(b_in(&mut c), Some(b0), "B's ingress rule counted a's ping");

    // The text form prints the counts beside the deciding rule.
    let text = c
        .ctl(&["explain", "workload-a", "workload-e", "--proto", "ICMP", "--counters"])
        .expect("explain --counters");
    eprintln!("{text}");
    assert!(
        text.contains("counters: ")
            && text.contains("packets")
            && text.contains("(nft rule \"Group/A_C_E ingress[0]\" on node host2)"),
        "{text}"
    );

    // /metrics with the rule families passes promtool.
    let page = c.agent("host2").metrics();
    let line = page
        .lines()
        .find(|l| l.starts_with("calico_rule_packets_total{rule=\"Group/A_C_E ingress[0]\",direction=\"ingress\"} "))
        .unwrap_or_else(|| panic!("no A_C_E ingress line in\n{page}"));
    let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a value");
    assert!(n >= in1, "{line} (explain saw {in1})");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps.sh installs prometheus)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
