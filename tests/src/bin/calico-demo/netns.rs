//! `calico-demo --netns`: the seed's two-host demo with namespace workloads instead
//! of Docker containers.
//!
//! A private etcd; two hosts as network namespaces on a bridge; a `calico-node` agent
//! (with its BIRD) per host; `examples/` applied with `calicoctl`; five workloads as
//! network namespaces; then who can reach whom, measured with real packets, before and
//! after changes. Everything is removed at the end, also on failure.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::{can_connect, can_ping, sh, Listener, Netns};

/// The workloads of examples/30-containers.yaml: name, namespace, address.
const WORKLOADS: [(&str, &str, &str); 5] = [
    ("workload-a", "calico-demo-a", "10.65.0.1"),
    ("workload-b", "calico-demo-b", "10.65.0.2"),
    ("workload-c", "calico-demo-c", "10.65.0.3"),
    ("workload-d", "calico-demo-d", "10.65.0.4"),
    ("workload-e", "calico-demo-e", "10.65.0.5"),
];

/// A namespace with a fixed name (the examples name them), removed on drop.
struct FixedNs(Netns);

impl FixedNs {
    fn new(name: &str) -> anyhow::Result<FixedNs> {
        // A previous run killed hard may have left it.
        let _ = sh(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(FixedNs(ns))
    }
}

fn addr(i: usize) -> IpAddr {
    WORKLOADS[i].2.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn short(name: &str) -> String {
    name.trim_start_matches("workload-").to_uppercase()
}

fn print_ping_matrix(ns: &[FixedNs]) -> usize {
    print!("\n  ping  ");
    for (to, ..) in WORKLOADS {
        print!("{:>4}", short(to));
    }
    println!();
    let mut reachable = 0;
    for (i, (from, ..)) in WORKLOADS.iter().enumerate() {
        print!("  {:>4}  ", short(from));
        for j in 0..WORKLOADS.len() {
            if i == j {
                print!("{:>4}", "-");
            } else if can_ping(&ns[i].0, addr(j), 1) {
                reachable += 1;
                print!("{:>4}", "ok");
            } else {
                print!("{:>4}", "x");
            }
        }
        println!();
    }
    reachable
}

fn print_tcp(ns: &[FixedNs], to: usize, ports: &[u16]) {
    for (i, (from, ..)) in WORKLOADS.iter().enumerate() {
        if i == to {
            continue;
        }
        let cells: Vec<String> = ports
            .iter()
            .map(|p| {
                let ok = can_connect(&ns[i].0, addr(to), *p, Duration::from_millis(600));
                format!("tcp/{p} {}", if ok { "open" } else { "blocked" })
            })
            .collect();
        println!("  {} -> {}: {}", short(from), short(WORKLOADS[to].0), cells.join(", "));
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

pub fn run() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let ex = |f: &str| format!("{root}/{f}");

    step("starting etcd and two hosts (network namespaces on a bridge: 172.17.8.101, 172.17.8.102)");
    let mut c = Cluster::new(2)?;
    println!("  etcd at {}", c.etcd.endpoint());

    step("calicoctl apply -f examples/00-cluster.yaml -f examples/20-groups.yaml");
    print!(
        "{}",
        c.ctl(&["apply", "-f", &ex("00-cluster.yaml"), "-f", &ex("20-groups.yaml")])?
    );

    step("starting a calico-node agent (with BIRD) on each host");
    c.start_agent(0)?;
    c.start_agent(1)?;
    print!("{}", c.ctl(&["apply", "-f", &ex("10-nodes.yaml")])?);

    step("creating five workloads (network namespaces) and applying examples/30-containers.yaml");
    let ns: Vec<FixedNs> = WORKLOADS
        .iter()
        .map(|(_, n, _)| FixedNs::new(n))
        .collect::<Result<_, _>>()?;
    print!("{}", c.ctl(&["apply", "-f", &ex("30-containers.yaml")])?);

    let t = Instant::now();
    let converged = Cluster::wait_for(Duration::from_secs(60), || can_ping(&ns[0].0, addr(4), 1));
    if !converged {
        eprintln!("the cluster did not converge in 60 s; agent logs:\n{}", c.dump_logs());
        anyhow::bail!("no convergence");
    }
    println!(
        "  A reaches E across hosts after {:.1} s (BGP sessions up, routes exchanged)",
        t.elapsed().as_secs_f64()
    );

    step("calicoctl get containers -o wide");
    print!("{}", c.ctl(&["get", "containers", "-o", "wide"])?);

    step("routes host1 learned over BGP (ip route show proto bird)");
    print!("{}", c.host_ns(0).exec(&["ip", "route", "show", "proto", "bird"])?);

    step("who can reach whom: A, C, E share group A_C_E; B and D are each alone");
    let n = print_ping_matrix(&ns);
    println!("  {n} of 20 directed pairs reachable (expected 6: A, C and E among themselves)");

    step("calicoctl apply -f examples/40-policy.yaml (db tier: tcp/80 denied to all; tcp/5432 and 8000-8080 allowed from web; the rest passes to the groups)");
    print!("{}", c.ctl(&["apply", "-f", &ex("40-policy.yaml")])?);
    let _l: Vec<Listener> = [80, 5432, 9999]
        .iter()
        .map(|p| Listener::start(&ns[2].0, *p))
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_secs(1));
    println!("  TCP to C (tier db) from each workload:");
    print_tcp(&ns, 2, &[80, 5432, 9999]);

    step("calicoctl addtogroup workload-b A_C_E");
    print!("{}", c.ctl(&["addtogroup", "workload-b", "A_C_E"])?);
    Cluster::wait_for(Duration::from_secs(15), || can_ping(&ns[1].0, addr(4), 1));
    let n = print_ping_matrix(&ns);
    println!("  {n} of 20 directed pairs reachable (expected 12: A, B, C and E among themselves)");

    step("cleaning up (agents, BIRD, etcd, namespaces)");
    drop(ns);
    drop(c);
    println!("  done");
    Ok(())
}
