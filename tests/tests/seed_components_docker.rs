//! Calico's own components in Docker containers, as the seed ran them:
//! `calicoctl node --docker` (the agent and its BIRD in the container
//! `calico-node-NAME`) and `calicoctl master --docker`, from the images
//! `scripts/build-images.sh` builds locally (no registry), on namespace hosts with their
//! own dockerd. Every calicoctl command about a host runs in that host's network
//! namespace, as on a real host, with etcd forwarded there at the test's address.
//!
//! - `node_in_a_container`: one host; the container's settings (host network and pid
//!   namespace, the capabilities it uses, restart unless stopped); status names it; a Docker
//!   container networked through it pings another; Docker restarts a killed agent and
//!   its new pid is in the run directory; `node stop` refuses while Containers remain,
//!   then removes the container and BIRD goes with it; a missing image is named.
//! - `five_containers_with_the_agents_in_containers`: the seed's multi-host scenario
//!   with both agents as containers: the 5x5 matrix with the default AS (iBGP), then
//!   after `node stop` and `node --docker --as` on each host (eBGP).
//! - `master_in_a_container`: `master --docker` leads (etcd's leader key names it),
//!   `master status` shows it, a second start is refused, `master stop` removes it and
//!   the leadership is released.

use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::docker::{allowed, available, build_images, calico_net, wait_for, ContainerNode, DockerHost};
use calico_e2e::seed5::{groups, NodeMode, Seed5};
use calico_e2e::serial;

const POOL: &str = "apiVersion: calico/v1
kind: IPPool
metadata: {name: default-ipv4}
spec: {cidr: 10.65.0.0/16, blockSize: 26}
";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pid_in(node: &ContainerNode) -> Option<String> {
    let pid = std::fs::read_to_string(node.run_dir.join("calico-node.pid")).ok()?;
    let pid = pid.trim().to_string();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "calico-node").then_some(pid)
}

#[test]
fn node_in_a_container() {
    if !available() {
        return;
    }
    let _g = serial();
    let c = Cluster::new(1).expect("cluster");
    c.apply(POOL).expect("pool");
    let d = DockerHost::start(&c.host_ns(0).path()).expect("dockerd");
    let t = Instant::now();
    build_images(&[&d]).expect("build-images.sh");
    eprintln!("images built and imported in {:?}", t.elapsed());

    // A missing image is named, with how to build it; nothing is left running.
    let out = ContainerNode::start(&c, 0, &d, &["--node-image", "calico-docker/node:nope"])
        .err()
        .map(|e| format!("{e:#}"))
        .expect("a missing image was refused");
    assert!(
        out.contains("image calico-docker/node:nope is not in dockerd") && out.contains("build-images.sh"),
        "{out}"
    );

    let (node, out) = ContainerNode::start(&c, 0, &d, &[]).expect("node --docker");
    assert!(
        out.contains(&format!("in container {}", node.container())),
        "node's output does not name the container:\n{out}"
    );
    let inspect = d.must(&[
        "inspect",
        "-f",
        "{{.HostConfig.NetworkMode}} {{.HostConfig.PidMode}} {{.HostConfig.Privileged}} {{.HostConfig.CapAdd}} {{.HostConfig.RestartPolicy.Name}} {{.State.Running}}",
        &node.container(),
    ]);
    assert_eq!(
        inspect.trim(),
        "host host false [NET_ADMIN NET_RAW SYS_ADMIN SYS_PTRACE] unless-stopped true",
        "{inspect}"
    );
    let (ok, status) = node.status();
    assert!(
        ok && status.contains(&format!("container:      {} (running", node.container()))
            && status.contains("process:        running, pid"),
        "status:\n{status}"
    );
    // A second start for the same run directory is refused.
    let again = node.ctl(&[
        "--docker-host",
        &d.host(),
        "node",
        "--docker",
        "--ip",
        "172.17.8.101/24",
        "--name",
        "host1",
        "--run-dir",
        &node.rd(),
    ]);
    assert!(
        !again.status.success() && text(&again).contains("already running"),
        "{}",
        text(&again)
    );

    // The containerised agent plumbs Docker containers: two on the calico network ping.
    calico_net(&d, &["-o", "group=g1"], "net1");
    c.ctl(&["addgroup", "g1"]).ok();
    d.run("w1", &["--net", "net1"]);
    d.run("w2", &["--net", "net1"]);
    let w2 = d.ip_on("w2", "net1");
    assert!(
        wait_for(Duration::from_secs(20), || d.exec_ping("w1", &w2)),
        "w1 cannot ping w2 ({w2}) through the containerised agent\n{}",
        node.logs()
    );

    // Docker restarts a killed agent; the new one writes its own pid.
    let old = pid_in(&node).expect("the agent's pid");
    std::process::Command::new("kill")
        .args(["-9", &old])
        .status()
        .expect("kill");
    let mut new = None;
    assert!(
        wait_for(Duration::from_secs(30), || {
            new = pid_in(&node).filter(|p| *p != old);
            new.is_some()
        }),
        "Docker did not restart the agent (old pid {old})\n{}",
        node.logs()
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            let (ok, s) = node.status();
            ok && s.contains("restarted 1 times") && s.contains(&format!("pid {}", new.clone().unwrap_or_default()))
        }),
        "status after the restart:\n{}",
        node.status().1
    );
    assert!(d.exec_ping("w1", &w2), "no ping after the agent's restart");

    // node stop refuses while Containers remain, then removes the container.
    let refused = node.ctl(&["node", "stop", "--run-dir", &node.rd()]);
    assert!(
        !refused.status.success() && text(&refused).contains("Containers remain on node host1"),
        "{}",
        text(&refused)
    );
    d.must(&["rm", "-f", "w1", "w2"]);
    let mut left = String::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            left = c.ctl(&["get", "containers"]).unwrap_or_else(|e| format!("{e:#}"));
            !left.contains("w1") && !left.contains("w2") && !left.contains("error")
        }),
        "the Containers were not removed: {left}\n{}",
        node.logs()
    );
    let stopped = node.ctl(&["node", "stop", "--run-dir", &node.rd()]);
    assert!(
        stopped.status.success()
            && text(&stopped).contains(&format!("Stopped and removed container {}", node.container())),
        "{}",
        text(&stopped)
    );
    let ps = d.must(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!ps.contains(&node.container()), "{ps}");
    let bird = std::fs::read_to_string(node.run_dir.join("bird.pid")).unwrap_or_default();
    assert!(
        bird.trim().is_empty() || !std::path::Path::new(&format!("/proc/{}", bird.trim())).exists(),
        "BIRD outlived its container (pid {bird})"
    );
    let (ok, status) = node.status();
    assert!(
        !ok && status.contains("not running") && status.contains("no such container"),
        "{status}"
    );
}

#[test]
fn five_containers_with_the_agents_in_containers() {
    if !available() {
        return;
    }
    let _g = serial();
    let started = Instant::now();
    let mut s = Seed5::start(NodeMode::Container, POOL, [&[], &[]]).expect("the scenario");
    let want = allowed(&groups());
    let up = |s: &Seed5| s.one_session_up(0, "Mesh_") && s.one_session_up(1, "Mesh_");
    assert!(wait_for(Duration::from_secs(60), || up(&s)), "no mesh\n{}", s.logs());
    for i in 0..2 {
        let (ok, st) = s.nodes[i].status();
        assert!(
            ok && st.contains(&format!("calico-node-host{} (running", i + 1)) && st.contains("iBGP 64511"),
            "host{}: {st}",
            i + 1
        );
    }
    if let Err(e) = s.await_matrix(&want, Duration::from_secs(60)) {
        panic!("default AS, agents in containers: {e}\n{}", s.logs());
    }

    // node stop, then node --docker --as on each: eBGP between the containerised agents.
    s.restart_node(0, &["--as", "64512"]).expect("host1 --as 64512");
    s.restart_node(1, &["--as", "64513"]).expect("host2 --as 64513");
    assert!(
        wait_for(Duration::from_secs(60), || up(&s)
            && s.bird_conf(0).contains("as 64513;")
            && s.bird_conf(1).contains("as 64512;")),
        "no eBGP mesh\n{}",
        s.logs()
    );
    let (_, st) = s.nodes[0].status();
    assert!(st.contains("eBGP 64512-64513"), "{st}");
    if let Err(e) = s.await_matrix(&want, Duration::from_secs(60)) {
        panic!("per-node AS, agents in containers: {e}\n{}", s.logs());
    }
    eprintln!("whole test: {:?}", started.elapsed());
}

/// calicoctl (with etcd's flags) in a host's network namespace.
fn ns_ctl(c: &Cluster, ns: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(calico_e2e::cluster::bin("calicoctl"))
        .args(c.etcd_flags())
        .args(args)
        .output()
        .expect("calicoctl")
}

#[test]
fn master_in_a_container() {
    if !available() {
        return;
    }
    let _g = serial();
    let c = Cluster::new(1).expect("cluster");
    let ns = c.host_ns(0).path();
    let d = DockerHost::start(&ns).expect("dockerd");
    build_images(&[&d]).expect("build-images.sh");
    let _etcd_here: Vec<_> = c
        .etcd_ports()
        .into_iter()
        .map(|p| calico_e2e::forward::Forward::start(&ns, p).expect("forward etcd"))
        .collect();
    // The master's sync reads a directory mounted into its container.
    let dir = tempfile::tempdir().expect("sync dir");
    std::fs::write(
        dir.path().join("groups.yaml"),
        "apiVersion: calico/v1\nkind: Group\nmetadata: {name: from-git}\nspec: {}\n",
    )
    .expect("write");
    let sync_dir = dir.path().display().to_string();
    let h = d.host();
    let start = [
        "--docker-host",
        &h,
        "master",
        "--docker",
        "--ip",
        "172.17.8.101",
        "--name",
        "m1",
        "--sync-dir",
        &sync_dir,
        "--sync-interval",
        "1s",
    ];
    let out = ns_ctl(&c, &ns, &start);
    assert!(
        out.status.success() && text(&out).contains("in container calico-master"),
        "{}",
        text(&out)
    );
    let inspect = d.must(&[
        "inspect",
        "-f",
        "{{.HostConfig.NetworkMode}} {{.HostConfig.RestartPolicy.Name}} {{.State.Running}}",
        "calico-master",
    ]);
    assert_eq!(inspect.trim(), "host unless-stopped true", "{inspect}");
    let mut st = String::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            let o = ns_ctl(&c, &ns, &["--docker-host", &h, "master", "status"]);
            st = text(&o);
            o.status.success()
                && st.contains("container: calico-master (running")
                && st.contains("leader:    m1 (172.17.8.101")
        }),
        "master status:\n{st}\n{}",
        d.must(&["logs", "calico-master"])
    );
    assert!(
        wait_for(Duration::from_secs(20), || c
            .ctl(&["get", "groups"])
            .is_ok_and(|o| o.contains("from-git"))),
        "the containerised master's sync did not apply the directory\n{}",
        d.must(&["logs", "calico-master"])
    );
    let again = ns_ctl(&c, &ns, &start);
    assert!(
        !again.status.success() && text(&again).contains("already running"),
        "{}",
        text(&again)
    );

    let stop = ns_ctl(&c, &ns, &["--docker-host", &h, "master", "stop"]);
    assert!(
        stop.status.success() && text(&stop).contains("Stopped and removed container calico-master"),
        "{}",
        text(&stop)
    );
    // The master revoked its lease on SIGTERM: nobody leads, at once.
    let o = ns_ctl(&c, &ns, &["--docker-host", &h, "master", "status"]);
    assert!(
        !o.status.success() && text(&o).contains("container: none") && text(&o).contains("leader:    none"),
        "{}",
        text(&o)
    );
    let o = ns_ctl(&c, &ns, &["--docker-host", &h, "master", "stop"]);
    assert!(
        !o.status.success() && text(&o).contains("no calico-master container"),
        "{}",
        text(&o)
    );
}
