//! `calico-demo`: the seed's GettingStarted on Docker.
//!
//! A private etcd; two hosts (network namespaces on a bridge), each with its own dockerd
//! (its defaults: iptables on), started the way calico_e2e::docker::DockerHost starts
//! them, and its agent (with BIRD) started by `calicoctl node` (with
//! `--docker-components`, `calicoctl node --docker`: in a container); the seed's five
//! containers started with `docker run`, A and D through the calico network driver, B,
//! C and E the seed's way (`--net=none -e CALICO_IP=...`, then `calicoctl addtogroup`).
//! Who reaches whom is measured by `docker exec ... ping` and printed next to what the
//! groups in etcd allow; a disagreement fails the demo. Everything is removed at the end
//! (also on failure), or left running with `--keep`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use calico_e2e::cluster::{bin, Cluster};
use calico_e2e::docker::{allowed, build_images, calico_net, wait_for, ContainerNode, CtlNode, DockerHost, IMAGE};
use calico_e2e::seed5::{address, measure_with, Net, SeedNode, GROUPS, NETWORKS, WORKLOADS};

/// Where `--keep` leaves its teardown script and shell helpers.
pub const KEEP_DIR: &str = "/run/calico-demo";

fn step(title: &str) {
    println!("\n== {title}");
}

fn short(name: &str) -> &str {
    name.trim_start_matches("workload-")
}

/// The measured matrix next to the policy's, a `!` on each cell where they differ;
/// the text and the number of cells that differ.
pub fn side_by_side(
    names: &[&str],
    groups: &[Vec<String>],
    measured: &[Vec<bool>],
    policy: &[Vec<bool>],
) -> (String, usize) {
    let cell = |i: usize, j: usize, m: &[Vec<bool>]| -> &'static str {
        if i == j {
            "-"
        } else if m[i][j] {
            "ok"
        } else {
            "x"
        }
    };
    let label = |i: usize| format!("{} ({})", names[i], groups[i].join(","));
    let width = (0..names.len()).map(|i| label(i).len()).max().unwrap_or(0).max(9);
    let mut out = String::new();
    let head: String = names.iter().map(|n| format!("{n:>5}")).collect();
    let _ = writeln!(
        out,
        "  {:<width$} {:>25}   {:>25}",
        "from \\ to", "measured (ping)", "policy (groups)"
    );
    let _ = writeln!(out, "  {:<width$} {head:<25}   {head}", "");
    let mut differ = 0;
    for i in 0..names.len() {
        let mut m = String::new();
        let mut p = String::new();
        for j in 0..names.len() {
            let mark = if i != j && measured[i][j] != policy[i][j] {
                differ += 1;
                "!"
            } else {
                ""
            };
            let _ = write!(m, "{:>5}", format!("{}{mark}", cell(i, j, measured)));
            let _ = write!(p, "{:>5}", cell(i, j, policy));
        }
        let _ = writeln!(out, "  {:<width$} {m:<25}   {p}", label(i));
    }
    (out, differ)
}

/// What `--keep` leaves behind, for its teardown script.
pub struct Kept {
    pub calicoctl: PathBuf,
    pub etcd: String,
    pub etcd_pid: Option<u32>,
    /// docker -H URL, dockerd's pid.
    pub dockerds: Vec<(String, Option<u32>)>,
    pub run_dirs: Vec<PathBuf>,
    /// Hosts first, the fabric last.
    pub netns: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

/// The shell script that tears down a kept demo: containers, agents and BIRD, dockerds,
/// etcd, namespaces, directories, in that order; every kill checks the process is
/// still the one started (pids get reused).
pub fn down_script(k: &Kept) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Tears down what `scripts/demo.sh --keep` left running (written by calico-demo).\n\
         set -u\n\
         stop() { # PID COMM: SIGTERM, wait up to 30 s, then SIGKILL\n\
         \x20   [ \"$(cat /proc/$1/comm 2>/dev/null)\" = \"$2\" ] || return 0\n\
         \x20   kill \"$1\"; i=0\n\
         \x20   while [ -d /proc/$1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
         \x20   kill -9 \"$1\" 2>/dev/null || true\n}\n",
    );
    for (host, _) in &k.dockerds {
        let _ = writeln!(
            s,
            "ids=$(docker -H {host} ps -aq 2>/dev/null); [ -z \"$ids\" ] || docker -H {host} rm -f $ids >/dev/null"
        );
    }
    for rd in &k.run_dirs {
        let _ = writeln!(
            s,
            "{} --etcd {} node stop --force --run-dir {} || true",
            k.calicoctl.display(),
            k.etcd,
            rd.display()
        );
    }
    for (_, pid) in &k.dockerds {
        if let Some(pid) = pid {
            let _ = writeln!(s, "stop {pid} dockerd");
        }
    }
    if let Some(pid) = k.etcd_pid {
        let _ = writeln!(s, "stop {pid} etcd");
    }
    for ns in &k.netns {
        let _ = writeln!(
            s,
            "for p in $(ip netns pids {ns} 2>/dev/null); do kill -9 $p; done; ip netns del {ns} 2>/dev/null || true"
        );
    }
    for d in &k.dirs {
        let _ = writeln!(s, "rm -rf {}", d.display());
    }
    let _ = writeln!(s, "rm -rf {KEEP_DIR}\necho 'calico demo: everything removed'");
    s
}

/// The groups of each container as etcd holds them, found by address.
fn groups_in_etcd(c: &Cluster, ips: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    let json = c.ctl(&["get", "containers", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("calicoctl get containers -o json")?;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let strings = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    Ok(ips
        .iter()
        .map(|ip| {
            items
                .iter()
                .find(|it| strings(&it["status"]["ips"]).contains(ip) || strings(&it["spec"]["ips"]).contains(ip))
                .map(|it| strings(&it["spec"]["groups"]))
                .unwrap_or_default()
        })
        .collect())
}

/// One `docker exec X ping` per ordered pair, all at once; a second try for a pair
/// whose first ping was lost.
fn measure(docker: &[DockerHost], ips: &[String]) -> Vec<Vec<bool>> {
    measure_with(docker, ips, |d, from, to| {
        d.exec_ping(from, to) || d.exec_ping(from, to)
    })
}

/// Measures and prints the matrix; how many cells disagree with the policy.
fn matrix(c: &Cluster, docker: &[DockerHost], ips: &[String]) -> anyhow::Result<usize> {
    let groups = groups_in_etcd(c, ips)?;
    let measured = measure(docker, ips);
    let policy = allowed(&groups);
    let names: Vec<&str> = WORKLOADS.iter().map(|w| short(w.name)).collect();
    let (text, differ) = side_by_side(&names, &groups, &measured, &policy);
    print!("{text}");
    let reach = measured.iter().flatten().filter(|b| **b).count();
    if differ == 0 {
        println!("  {reach} of 20 ordered pairs reach each other, exactly as the groups say");
    } else {
        println!("  {differ} of 20 pairs differ from the policy (marked !)");
    }
    Ok(differ)
}

pub fn run(keep: bool, components: bool) -> anyhow::Result<()> {
    let keep_script = Path::new(KEEP_DIR).join("down.sh");
    if keep && keep_script.exists() {
        bail!(
            "a demo left running with --keep is still there ({}): `scripts/demo.sh --down` first",
            keep_script.display()
        );
    }
    let started = Instant::now();
    let ex = |f: &str| format!("{}/../examples/{f}", env!("CARGO_MANIFEST_DIR"));

    step("etcd, and two hosts as network namespaces on a bridge (host1 172.17.8.101, host2 172.17.8.102)");
    let c = Cluster::new(2)?;
    let etcd = c.etcd.endpoint();
    println!("  etcd at {etcd}");

    step("calicoctl apply -f examples/00-cluster.yaml   (AS 64511, the pool 10.65.0.0/16)");
    print!("{}", c.ctl(&["apply", "-f", &ex("00-cluster.yaml")])?);

    // Declared before the dockerds so it is dropped after them: containers go first,
    // while their agents still run.
    let mut nodes: Vec<Box<dyn SeedNode>> = Vec::new();
    step("a dockerd on each host, with its defaults (iptables on), and a busybox image (docker import, no registry)");
    let (n1, n2) = (c.host_ns(0).path(), c.host_ns(1).path());
    let t1 = std::thread::spawn(move || DockerHost::start(&n1));
    let t2 = std::thread::spawn(move || DockerHost::start(&n2));
    let d1 = t1.join().map_err(|_| anyhow::anyhow!("dockerd 1 panicked"))??;
    let d2 = t2.join().map_err(|_| anyhow::anyhow!("dockerd 2 panicked"))??;
    let docker = [d1, d2];
    for (i, d) in docker.iter().enumerate() {
        println!(
            "  host{}: docker -H {}   (\"host{}$ docker\" below)",
            i + 1,
            d.host(),
            i + 1
        );
    }

    if components {
        step("scripts/build-images.sh: calico-docker/node and calico-docker/master, docker import into each dockerd");
        let t = Instant::now();
        build_images(&[&docker[0], &docker[1]])?;
        println!("  built and imported in {:.1} s", t.elapsed().as_secs_f64());
        step("calicoctl node --docker on each host: the agent and its BIRD in a container, serving the Docker plugin");
    } else {
        step("calicoctl node on each host: the agent and its BIRD, serving the Docker plugin");
    }
    for (i, d) in docker.iter().enumerate() {
        println!(
            "  host{}$ calicoctl node{} --ip {}/24 --name host{}",
            i + 1,
            if components { " --docker" } else { "" },
            c.fabric.hosts[i].addr,
            i + 1
        );
        let (node, out): (Box<dyn SeedNode>, String) = if components {
            let (n, out) = ContainerNode::start(&c, i, d, &[])?;
            (Box::new(n), out)
        } else {
            let (n, out) = CtlNode::start(&c, i, d, &[])?;
            (Box::new(n), out)
        };
        nodes.push(node);
        print!("{}", indent(&out));
    }
    if components {
        print!(
            "{}",
            indent(&docker[0].must(&[
                "ps",
                "--filter",
                "name=calico-node",
                "--format",
                "host1$ docker ps: {{.Names}}  {{.Image}}  {{.Status}}"
            ]))
        );
    }
    for d in &docker {
        d.wait_for_plugin()?;
    }

    step("the seed's groups: calicoctl addgroup A_C_E; calicoctl addgroup B; calicoctl addgroup D");
    for g in GROUPS {
        print!("{}", indent(&c.ctl(&["addgroup", g])?));
    }

    step("calico networks (the driver's group comes from -o group=)");
    for (h, net, group) in NETWORKS {
        println!(
            "  host{}$ docker network create --driver calico --ipam-driver calico-ipam -o group={group} {net}",
            h + 1
        );
        calico_net(&docker[h], &["-o", &format!("group={group}")], net);
    }

    step("docker run: A and D through the calico driver, B, C and E the seed's way");
    for w in &WORKLOADS {
        let args: Vec<String> = match w.net {
            Net::Driver(net) => vec!["--net".into(), net.into()],
            Net::Seed(ip, _) => vec!["--net=none".into(), "-e".into(), format!("CALICO_IP={ip}")],
        };
        println!(
            "  host{}$ docker run -d --name {} {} {IMAGE} sleep 100000",
            w.host + 1,
            w.name,
            args.join(" ")
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker[w.host]
            .try_docker(&[&["run", "-d", "--name", w.name], &args[..], &[IMAGE, "sleep", "100000"]].concat())?;
    }
    for w in &WORKLOADS {
        if let Net::Seed(_, group) = w.net {
            println!("  host{}$ calicoctl addtogroup {} {group}", w.host + 1, w.name);
            let out = c.ctl(&["--docker-host", &docker[w.host].host(), "addtogroup", w.name, group])?;
            print!("{}", indent(&out));
        }
    }

    let t = Instant::now();
    let mut ips = Vec::new();
    for w in &WORKLOADS {
        let d = &docker[w.host];
        let mut got = None;
        if !wait_for(Duration::from_secs(20), || {
            got = address(d, w);
            got.is_some()
        }) {
            bail!("{} never got an address\n{}", w.name, c.dump_logs());
        }
        ips.push(got.unwrap_or_default());
    }
    let (a, e) = (0, 4);
    if !wait_for(Duration::from_secs(60), || {
        docker[0].exec_ping(WORKLOADS[a].name, &ips[e])
    }) {
        bail!(
            "workload-A never reached workload-E across the hosts in 60 s\n{}",
            logs(&nodes)
        );
    }
    println!(
        "\n  workload-A reaches workload-E on the other host {:.1} s after the addtogroups (BGP up, routes exchanged)",
        t.elapsed().as_secs_f64()
    );

    step("calicoctl get containers -o wide");
    print!("{}", indent(&c.ctl(&["get", "containers", "-o", "wide"])?));
    step("calicoctl showgroups --detailed");
    print!("{}", indent(&c.ctl(&["showgroups", "--detailed"])?));
    step("calicoctl status   (on host1)");
    print!("{}", indent(&nodes[0].status().1));
    step("routes host1 learned over BGP (ip route show proto bird)");
    print!(
        "{}",
        indent(&c.host_ns(0).exec(&["ip", "route", "show", "proto", "bird"])?)
    );

    step("who can reach whom: docker exec X ping Y, next to what the groups in etcd allow");
    let mut differ = matrix(&c, &docker, &ips)?;

    step("a change: calicoctl addtogroup workload-D A_C_E   (D, on host2, is now in D and A_C_E)");
    print!(
        "{}",
        indent(&c.ctl(&["--docker-host", &docker[1].host(), "addtogroup", "workload-D", "A_C_E"])?)
    );
    // The new paths are open once D reaches A across the hosts.
    wait_for(Duration::from_secs(20), || docker[1].exec_ping("workload-D", &ips[0]));
    differ += matrix(&c, &docker, &ips)?;

    if keep {
        return keep_running(c, nodes, docker, &ips, started);
    }

    step("cleaning up: docker rm -f (the agents release the addresses), node stop, dockerd, etcd, namespaces");
    for d in &docker {
        let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
        let _ = d.try_docker(&[&["rm", "-f"], &names[..]].concat());
    }
    let released = wait_for(Duration::from_secs(20), || {
        c.ctl(&["ipam", "check"])
            .is_ok_and(|o| o.contains("holding 0 addresses"))
    });
    let check = c.ctl(&["ipam", "check"]).unwrap_or_else(|e| e.to_string());
    print!("{}", indent(&format!("calicoctl ipam check: {check}")));
    drop(docker);
    drop(nodes);
    drop(c);
    println!("  done in {:.0} s", started.elapsed().as_secs_f64());
    if !released {
        bail!("the addresses were not released after docker rm");
    }
    if differ > 0 {
        bail!("{differ} measured pairs differ from what the policy says");
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn logs(nodes: &[Box<dyn SeedNode>]) -> String {
    nodes.iter().map(|n| n.logs()).collect()
}

/// `--keep`: writes the teardown script and shell helpers, then leaves every process,
/// namespace and directory as it is (their guards are forgotten, not dropped).
fn keep_running(
    c: Cluster,
    nodes: Vec<Box<dyn SeedNode>>,
    docker: [DockerHost; 2],
    ips: &[String],
    started: Instant,
) -> anyhow::Result<()> {
    let calicoctl = bin("calicoctl");
    let mut netns: Vec<String> = c.fabric.hosts.iter().map(|h| h.ns.name.clone()).collect();
    netns.push(c.fabric.ns.name.clone());
    let mut dirs = vec![c.dir.path().to_path_buf(), c.etcd.dir().to_path_buf()];
    dirs.extend(docker.iter().map(|d| d.dir.path().to_path_buf()));
    let kept = Kept {
        calicoctl: calicoctl.clone(),
        etcd: c.etcd.endpoint(),
        etcd_pid: c.etcd.pid(),
        dockerds: docker.iter().map(|d| (d.host(), d.dockerd_pid())).collect(),
        run_dirs: nodes.iter().map(|n| n.run_dir().to_path_buf()).collect(),
        netns,
        dirs,
    };
    std::fs::create_dir_all(KEEP_DIR)?;
    let mut env = format!(
        "# . {KEEP_DIR}/env: calicoctl and docker for the demo kept running\nexport ETCD_ENDPOINTS={}\n\
         calicoctl() {{ {} \"$@\"; }}\n",
        kept.etcd,
        calicoctl.display()
    );
    for (i, d) in docker.iter().enumerate() {
        let (n, h) = (i + 1, d.host());
        let _ = writeln!(env, "docker{n}() {{ docker -H {h} \"$@\"; }}");
        // Docker names (addtogroup workload-C ...) are looked up in that host's dockerd.
        let _ = writeln!(env, "calicoctl{n}() {{ calicoctl --docker-host {h} \"$@\"; }}");
    }
    write_atomic(&Path::new(KEEP_DIR).join("env"), &env)?;
    write_atomic(&Path::new(KEEP_DIR).join("down.sh"), &down_script(&kept))?;

    step(&format!(
        "left running (--keep), after {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    let rd1 = nodes[0].run_dir().display().to_string();
    println!(
        "  . {KEEP_DIR}/env   # defines calicoctl, docker1 (host1's dockerd), docker2 (host2's)\n\
         \x20 docker1 ps\n\
         \x20 docker1 exec workload-A ping -c 2 {e}         # A to E: both in A_C_E\n\
         \x20 docker1 exec workload-B ping -c 2 -W 1 {a}    # B to A: blocked, B is alone in B\n\
         \x20 calicoctl status --run-dir {rd1}\n\
         \x20 calicoctl get containers -o wide\n\
         \x20 calicoctl showgroups --detailed\n\
         \x20 calicoctl1 removefromgroup workload-C A_C_E   # calicoctl1/2: Docker names of host1/2\n\
         \x20 ip netns exec {h1} ip route     # host1's routes\n\
         tear it all down:\n\
         \x20 scripts/demo.sh --down          # or: sh {KEEP_DIR}/down.sh",
        a = ips[0],
        e = ips[4],
        h1 = c.fabric.hosts[0].ns.name,
    );
    std::mem::forget(docker);
    std::mem::forget(nodes);
    std::mem::forget(c);
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(names: &[&[&str]]) -> Vec<Vec<String>> {
        names
            .iter()
            .map(|n| n.iter().map(ToString::to_string).collect())
            .collect()
    }

    #[test]
    fn differences_are_marked_and_counted() {
        let groups = g(&[&["X"], &["X"], &["Y"]]);
        let policy = allowed(&groups);
        let mut measured = policy.clone();
        measured[2][0] = true;
        let (text, differ) = side_by_side(&["A", "B", "C"], &groups, &measured, &policy);
        assert_eq!(differ, 1);
        assert!(text.contains("ok!"), "{text}");
        assert_eq!(side_by_side(&["A", "B", "C"], &groups, &policy, &policy).1, 0);
    }

    #[test]
    fn down_script_stops_in_order_and_checks_pids() {
        let k = Kept {
            calicoctl: "/x/calicoctl".into(),
            etcd: "127.0.0.1:1".into(),
            etcd_pid: Some(11),
            dockerds: vec![("unix:///d1/docker.sock".into(), Some(22))],
            run_dirs: vec!["/r/host1".into()],
            netns: vec!["chost1".into(), "cfab1".into()],
            dirs: vec!["/tmp/calico-e2e-x".into()],
        };
        let s = down_script(&k);
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("no {needle} in\n{s}"));
        assert!(at("rm -f $ids") < at("node stop --force --run-dir /r/host1"));
        assert!(at("node stop") < at("stop 22 dockerd") && at("stop 22 dockerd") < at("stop 11 etcd"));
        assert!(at("stop 11 etcd") < at("ip netns del chost1") && at("ip netns del chost1") < at("ip netns del cfab1"));
        assert!(at("rm -rf /tmp/calico-e2e-x") < at(&format!("rm -rf {KEEP_DIR}")));
        assert!(s.contains("/proc/$1/comm"), "kills must check the process is ours");
    }
}
