//! Benchmarks of the node agent (not timed tests: ignored, run them by hand):
//!
//! ```text
//! cargo build --workspace
//! cargo test -p calico-e2e --test bench_agent -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - container network setup latency, 1, 16 and 30 at once, through the agent's
//!   plumbing (`Plumber::setup`) against the same steps as `ip` commands;
//! - from `calicoctl apply` of a policy to its enforcement on all three hosts, probed
//!   with real connections;
//! - the agent's memory with 1000 endpoints (1000 real workload namespaces on one host).
//!
//! Figures are printed as `BENCH ...` lines; docs/agent.md keeps the latest ones.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use calico_agent::dataplane::workload::{host_ifname, Plumber, WorkloadSpec};
use calico_e2e::cluster::Cluster;
use calico_e2e::probe::in_netns;
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::{can_connect, serial, Listener, Netns};

/// The binaries under test are the ones built with this test's profile.
const PROFILE: &str = if cfg!(debug_assertions) { "debug" } else { "release" };

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The agent's plumbing steps for one v4 workload, as a shell script of `ip` commands.
fn ip_script(host: &str, wl: &str, cali: &str, addr: &str) -> String {
    format!(
        "set -e
ip -n {host} link add {cali} address ee:ee:ee:ee:ee:ee mtu 1500 type veth peer name eth0 mtu 1500 netns {wl}
ip netns exec {host} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/{cali}/proxy_arp; echo 0 > /proc/sys/net/ipv4/neigh/{cali}/proxy_delay; echo 1 > /proc/sys/net/ipv4/conf/{cali}/forwarding'
ip -n {host} link set {cali} up
ip -n {wl} addr add {addr}/32 dev eth0
ip -n {wl} link set eth0 up
ip -n {wl} route add 169.254.1.1 dev eth0 scope link
ip -n {wl} route add default via 169.254.1.1 dev eth0
ip -n {wl} neigh replace 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent
"
    )
}

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn bench_container_setup_latency() {
    let _g = serial();
    let host = Netns::new("bh").unwrap();
    let wls: Vec<Netns> = (0..30).map(|_| Netns::new("bw").unwrap()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let plumber = rt.block_on(Plumber::new(Some(host.path()))).unwrap();
    const ROUNDS: usize = 7;
    println!(
        "BENCH setup ({PROFILE} build): {ROUNDS} rounds each; per-container latency = start of the batch to that container done"
    );
    for n in [1usize, 16, 30] {
        let specs: Vec<WorkloadSpec> = wls[..n]
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut s = WorkloadSpec::new(
                    host_ifname("cali", &w.name),
                    w.path(),
                    vec![ip(&format!("10.66.0.{}", i + 1))],
                );
                s.mtu = Some(1500);
                s
            })
            .collect();
        let names: Vec<String> = specs.iter().map(|s| s.host_ifname.clone()).collect();
        let (mut agent_each, mut agent_total) = (Vec::new(), Vec::new());
        let (mut ip_each, mut ip_total) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            // The agent's way: all at once on its runtime.
            let t = Instant::now();
            let done: Vec<Duration> = rt.block_on(futures::future::join_all(specs.iter().map(|s| {
                let p = &plumber;
                async move {
                    p.setup(s).await.expect("setup");
                    t.elapsed()
                }
            })));
            agent_total.push(ms(t.elapsed()));
            agent_each.extend(done.into_iter().map(ms));
            rt.block_on(plumber.teardown_all(&names)).unwrap();

            // The same steps as `ip` commands, one script per container, all at once.
            let t = Instant::now();
            let children: Vec<_> = specs
                .iter()
                .zip(&wls)
                .map(|(s, w)| {
                    Command::new("sh")
                        .arg("-c")
                        .arg(ip_script(&host.name, &w.name, &s.host_ifname, &s.ips[0].to_string()))
                        .spawn()
                        .unwrap()
                })
                .collect();
            let mut pending: Vec<_> = children.into_iter().map(Some).collect();
            while pending.iter().any(Option::is_some) {
                for slot in pending.iter_mut() {
                    if let Some(c) = slot {
                        if let Some(status) = c.try_wait().unwrap() {
                            assert!(status.success(), "ip script failed");
                            ip_each.push(ms(t.elapsed()));
                            *slot = None;
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            ip_total.push(ms(t.elapsed()));
            rt.block_on(plumber.teardown_all(&names)).unwrap();
            for w in &wls[..n] {
                let _ = w.exec(&["ip", "route", "flush", "table", "main"]);
            }
        }
        println!(
            "BENCH setup n={n:2}: Plumber::setup median {:7.2} ms per container, {:7.2} ms for all | ip script median {:7.2} ms per container, {:7.2} ms for all | ratio {:.2}",
            median(&mut agent_each),
            median(&mut agent_total),
            median(&mut ip_each),
            median(&mut ip_total),
            median(&mut agent_total.clone()) / median(&mut ip_total.clone()),
        );
    }
}

/// Connects from inside `from` to `to:port` in a tight loop until a connection is
/// accepted; the time from `t0` to then.
fn spin_until_open(from: &Netns, to: IpAddr, port: u16, t0: Instant, limit: Duration) -> Option<Duration> {
    let addr = SocketAddr::new(to, port);
    in_netns(&from.path(), move || loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(10)).is_ok() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
    })
    .ok()
    .flatten()
}

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn bench_policy_apply_to_enforced() {
    let _g = serial();
    let wls: &[scenario::Wl] = &[
        ("cl", 0, Some("10.65.0.10"), "client"),
        ("t1", 0, Some("10.65.0.20"), "target"),
        ("t2", 1, Some("10.65.1.20"), "target"),
        ("t3", 2, Some("10.65.2.20"), "target"),
    ];
    let c = scenario::cluster(3, None, wls).expect("cluster");
    let targets = [
        ("t1", ip("10.65.0.20")),
        ("t2", ip("10.65.1.20")),
        ("t3", ip("10.65.2.20")),
    ];
    // The paths work (targets reach each other across hosts); the client is kept out
    // by the targets' group until the policy lets it in.
    let _ls: Vec<Listener> = targets
        .iter()
        .map(|(n, _)| Listener::start(c.wl(n), 8080).unwrap())
        .collect();
    await_ping(&c, "t1", ip("10.65.1.20"), Duration::from_secs(30));
    await_ping(&c, "t1", ip("10.65.2.20"), Duration::from_secs(30));
    await_ping(&c, "t2", ip("10.65.2.20"), Duration::from_secs(30));
    let policy = "apiVersion: calico/v1
kind: Policy
metadata: {name: let-client-in}
spec:
  order: 10
  selector: group == \"target\"
  ingress:
    - action: Allow
      protocol: TCP
      source: {groups: [client]}
      destination: {ports: [8080]}
";
    let short = Duration::from_millis(150);
    let (mut all, mut per_host, mut ctl) = (Vec::new(), vec![Vec::new(); 3], Vec::new());
    const RUNS: usize = 11;
    for run in 0..RUNS {
        for (n, a) in targets {
            assert!(
                Cluster::wait_for(Duration::from_secs(10), || !can_connect(c.wl("cl"), a, 8080, short)),
                "run {run}: {n} open before the apply"
            );
        }
        let t0 = Instant::now();
        let probes: Vec<_> = targets
            .iter()
            .map(|(_, a)| {
                let (ns, a) = (
                    Netns {
                        name: c.wl("cl").name.clone(),
                    },
                    *a,
                );
                std::thread::spawn(move || {
                    let r = spin_until_open(&ns, a, 8080, t0, Duration::from_secs(10));
                    std::mem::forget(ns); // borrowed
                    r
                })
            })
            .collect();
        c.apply(policy).unwrap();
        ctl.push(ms(t0.elapsed()));
        let times: Vec<Duration> = probes
            .into_iter()
            .map(|p| p.join().unwrap().expect("policy never enforced"))
            .collect();
        for (i, t) in times.iter().enumerate() {
            per_host[i].push(ms(*t));
        }
        all.push(ms(*times.iter().max().unwrap()));
        c.ctl(&["delete", "policy", "let-client-in"]).unwrap();
    }
    println!(
        "BENCH apply-to-enforced ({RUNS} runs, {} build): median {:.1} ms until all three hosts enforce (min {:.1}, max {:.1}); per host median {:.1} / {:.1} / {:.1} ms; `calicoctl apply` itself median {:.1} ms",
        PROFILE,
        median(&mut all.clone()),
        all.iter().copied().fold(f64::INFINITY, f64::min),
        all.iter().copied().fold(0.0, f64::max),
        median(&mut per_host[0]),
        median(&mut per_host[1]),
        median(&mut per_host[2]),
        median(&mut ctl),
    );
}

fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn bench_agent_memory_1k_endpoints() {
    let _g = serial();
    const N: usize = 1000;
    const GROUPS: usize = 20;
    let mut c = scenario::cluster(1, None, &[]).expect("cluster");
    assert!(Cluster::wait_for(Duration::from_secs(10), || {
        c.agents["host1"]
            .metric("calico_reconciles_total")
            .is_some_and(|n| n >= 1.0)
    }));
    std::thread::sleep(Duration::from_secs(1));
    let pid = c.agents["host1"].pid().unwrap();
    let idle_rss = proc_kb(pid, "VmRSS:");
    let t = Instant::now();
    let mut yaml = String::new();
    for g in 0..GROUPS {
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Group\nmetadata: {{name: g{g}}}\nspec: {{}}\n"
        ));
    }
    for g in 0..10 {
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Policy\nmetadata: {{name: p{g}}}\nspec:\n  order: {g}\n  selector: group == \"g{g}\"\n  ingress:\n    - action: Allow\n      protocol: TCP\n      source: {{selector: group == \"g{}\"}}\n      destination: {{ports: [80, 443, \"8000:8080\"]}}\n    - action: Pass\n",
            g + 10
        ));
    }
    for i in 0..N {
        let name = format!("m{i:04}");
        c.workload_ns(&name).unwrap();
        yaml.push_str(&c.container_yaml(&name, "host1", None, &[&format!("g{}", i % GROUPS)]));
    }
    let made = t.elapsed();
    let t = Instant::now();
    c.apply(&yaml).unwrap();
    let ok = Cluster::wait_for(Duration::from_secs(600), || {
        c.node_status("host1")
            .is_some_and(|s| s["endpointsProgrammed"].as_u64() == Some(N as u64))
    });
    assert!(ok, "{:?}", c.node_status("host1"));
    let converged = t.elapsed();
    // RSS sampled over two full resyncs (every 5 s) at full size.
    let mut samples = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(11) {
        samples.push(proc_kb(pid, "VmRSS:") as f64);
        std::thread::sleep(Duration::from_millis(25));
    }
    if std::env::var("BENCH_VERBOSE").is_ok() {
        println!(
            "BENCH memory samples (KiB, every 25 ms): {:?}",
            samples.iter().step_by(8).collect::<Vec<_>>()
        );
    }
    let a = &c.agents["host1"];
    let steady_max = samples.iter().copied().fold(0.0, f64::max);
    let (rss, hwm) = (median(&mut samples) as u64, proc_kb(pid, "VmHWM:"));
    println!(
        "BENCH memory: agent RssAnon {} KiB, RssFile {} KiB, threads {}",
        proc_kb(pid, "RssAnon:"),
        proc_kb(pid, "RssFile:"),
        proc_kb(pid, "Threads:")
    );
    let bird = a.bird_pid().map(|p| proc_kb(p, "VmRSS:")).unwrap_or(0);
    let rules = a.metric("calico_nft_rules").unwrap_or(0.0);
    let rec = a.metric("calico_reconcile_seconds_last").unwrap_or(0.0);
    let nft = a.metric("calico_nft_apply_seconds_last").unwrap_or(0.0);
    let links = c
        .host_ns(0)
        .exec(&["ip", "-o", "link", "show"])
        .unwrap()
        .matches(": cali")
        .count();
    println!(
        "BENCH memory ({PROFILE} build): {N} endpoints (real namespaces, {links} veths), {GROUPS} groups, 10 policies: agent RSS median {:.1} MiB, max {:.1} MiB over 11 s of steady state (lifetime peak {:.1} MiB, idle before {:.1} MiB), BIRD RSS {:.1} MiB; {rules} nft rules; full resync reconcile {:.0} ms (nft load {:.0} ms); {N} namespaces made in {made:?}, all programmed {converged:?} after apply",
        rss as f64 / 1024.0,
        steady_max / 1024.0,
        hwm as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        bird as f64 / 1024.0,
        rec * 1e3,
        nft * 1e3,
    );
    for l in a.log().lines().filter(|l| l.contains("slow reconcile")) {
        println!(
            "BENCH memory: agent log: {}",
            l.split_once("INFO").map(|x| x.1).unwrap_or(l).trim()
        );
    }
}
