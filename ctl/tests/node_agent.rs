//! `calicoctl node`, `status`, `diags` and `node stop` with the real agent on a
//! namespace host: the agent (`calico-node`, built next to calicoctl) programs a fresh
//! network namespace and runs BIRD there. Needs root (it creates namespaces), etcd,
//! bird2 and nft. Everything created is removed, even when the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A network namespace (`ip netns add`), deleted with whatever still runs in it.
struct Netns {
    name: String,
}

impl Netns {
    fn new(prefix: &str) -> Netns {
        let name = format!(
            "{prefix}{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name} (this test needs root)");
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pids(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", &self.name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Kills whatever the run directory's pid files name, on the way out of a failed test.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for f in ["calico-node.pid", "bird.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(f)) {
                let pid = pid.trim();
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "calico-node" || comm.trim() == "bird" {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}

fn read_pid(run: &Path, file: &str) -> String {
    std::fs::read_to_string(run.join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .to_string()
}

fn agent_binary_present() {
    let p = Path::new(BIN).with_file_name("calico-node");
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
}

const CLUSTER: &str = "
apiVersion: calico/v1
kind: IPPool
metadata: {name: pool1}
spec: {cidr: 10.66.0.0/16}
---
apiVersion: calico/v1
kind: Node
metadata: {name: t1, labels: {rack: r1}}
spec: {ipv4: 10.9.9.9/32}
---
apiVersion: calico/v1
kind: Node
metadata: {name: t2}
spec: {ipv4: 172.30.0.2/24}
---
apiVersion: calico/v1
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 172.30.0.254, asNumber: 64600}
---
apiVersion: calico/v1
kind: Group
metadata: {name: g}
spec: {}
";

fn container(netns: &str) -> String {
    format!(
        "
apiVersion: calico/v1
kind: Container
metadata: {{name: w1}}
spec: {{node: t1, netns: {netns}, groups: [g]}}
"
    )
}

#[test]
fn node_status_diags_stop_on_a_namespace_host() {
    agent_binary_present();
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let host = Netns::new("cnh");
    let workload = Netns::new("cnw");
    let tmp = tempfile::Builder::new().prefix("calicoctl-node-").tempdir().unwrap();
    let run = tmp.path().join("run");
    let logs = tmp.path().join("log");
    let _reaper = Reaper(run.clone());
    let http = format!("127.0.0.1:{}", free_port());
    let run_s = run.to_str().unwrap().to_string();

    let f = write_file(tmp.path(), "cluster.yaml", CLUSTER);
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    let f = write_file(tmp.path(), "w1.yaml", &container(&workload.path()));
    ctl(&ep, &["apply", "-f", &f]).assert_ok();

    // No agent yet: status says so and fails; stop has nothing to stop.
    let r = ctl(&ep, &["status", "--name", "t1", "--run-dir", &run_s]);
    r.assert_fails();
    assert!(r.stdout.contains("not running (no "), "{r:?}");
    assert!(r.stdout.contains("BGP sessions: unknown"), "{r:?}");
    let r = ctl(&ep, &["node", "stop", "--run-dir", &run_s]);
    r.assert_fails();
    assert!(r.stderr.contains("no calico-node agent is running"), "{r:?}");

    // Start it.
    let node_args = [
        "node",
        "--ip",
        "172.30.0.1",
        "--name",
        "t1",
        "--netns",
        &host.path(),
        "--run-dir",
        &run_s,
        "--log-dir",
        logs.to_str().unwrap(),
        "--http",
        &http,
    ];
    let r = ctl(&ep, &node_args);
    let log_file = logs.join("calico-node.log");
    assert!(
        r.ok(),
        "{r:?}\nagent log:\n{}",
        std::fs::read_to_string(&log_file).unwrap_or_default()
    );
    assert!(r.stdout.contains("Node t1 updated: ipv4 172.30.0.1/32"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("Log: {}", log_file.display())),
        "{}",
        r.stdout
    );
    let agent_pid = read_pid(&run, "calico-node.pid");
    assert!(alive(&agent_pid));
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("calico-node.args")).unwrap()).unwrap();
    assert_eq!(rec["netns"], host.path());
    assert_eq!(rec["name"], "t1");

    // The Node: the new address, the labels kept.
    let r = ctl(&ep, &["get", "node", "t1", "-o", "json"]);
    r.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["spec"]["ipv4"], "172.30.0.1/32");
    assert_eq!(v["metadata"]["labels"]["rack"], "r1");

    // /healthz answers.
    assert_eq!(http_get(&http, "/healthz").map(|(c, _)| c), Some(200));
    // And the agent listens on nothing but loopback (its HTTP; the plugin sockets are
    // unix sockets): every TCP listening socket of its pid is 127.0.0.1 or ::1.
    let ss = Command::new("ss").args(["-Hltnp"]).output().unwrap();
    assert!(ss.status.success(), "ss: {ss:?}");
    let ss = String::from_utf8_lossy(&ss.stdout);
    let mine: Vec<&str> = ss
        .lines()
        .filter(|l| l.contains(&format!("pid={agent_pid},")))
        .collect();
    assert!(
        !mine.is_empty(),
        "no listening socket of the agent (pid {agent_pid}):\n{ss}"
    );
    for l in &mine {
        let local = l.split_whitespace().nth(3).unwrap_or_default();
        assert!(
            local.starts_with("127.0.0.1:") || local.starts_with("[::1]:"),
            "the agent listens beyond loopback: {l}"
        );
    }

    // A second agent for the same run directory is refused.
    let r = ctl(&ep, &node_args);
    r.assert_fails();
    assert!(
        r.stderr.contains("already running") && r.stderr.contains(&agent_pid),
        "{r:?}"
    );

    // status: the agent, the BGP sessions (mesh to t2, the global peer), the endpoint.
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        let r = ctl(&ep, &["status", "--run-dir", &run_s]);
        let done = r.ok()
            && r.stdout.contains("1 Containers: 1 programmed")
            && r.stdout.contains("node-to-node mesh")
            && r.stdout.contains("ready:          yes");
        if done {
            break r;
        }
        if Instant::now() > deadline {
            panic!(
                "status never showed the programmed endpoint and BGP sessions: {r:?}\nagent log:\n{}",
                std::fs::read_to_string(&log_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let out = &status.stdout;
    assert!(out.contains("Agent for node t1"), "{out}");
    assert!(out.contains(&format!("running, pid {agent_pid}")), "{out}");
    assert!(out.contains(&format!("http://{http}/healthz: 200 ok")), "{out}");
    assert!(out.contains(&format!("netns:          {}", host.path())), "{out}");
    let mesh = out
        .lines()
        .find(|l| l.contains("172.30.0.2 (t2)"))
        .unwrap_or_else(|| panic!("no mesh session with t2:\n{out}"));
    assert!(mesh.contains("node-to-node mesh"), "{mesh}");
    let peer = out
        .lines()
        .find(|l| l.contains("172.30.0.254"))
        .unwrap_or_else(|| panic!("no session with the global peer:\n{out}"));
    assert!(peer.contains("global (tor)"), "{peer}");
    assert!(out.contains("0 failed, 0 pending"), "{out}");
    // The running agent's /metrics, as scraped, passes promtool (scripts/install-deps.sh
    // installs it with Debian's prometheus package; missing, this fails), with the
    // reconciles it has run counted in histograms.
    let (code, page) = http_get(&http, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{page}");
    for line in [
        "# TYPE calico_reconcile_seconds histogram",
        "# TYPE calico_reconciles_total counter",
    ] {
        assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
    }
    assert!(page.contains("calico_reconcile_seconds_bucket{le=\"+Inf\"}"), "{page}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e} (scripts/install-deps.sh installs prometheus)"));
    {
        use std::io::Write;
        promtool.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on the scraped page: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The workload was really plumbed in the host namespace.
    let links = host.exec(&["ip", "-o", "link", "show"]);
    assert!(links.contains("cali"), "{links}");

    // version: all four, from the running agent, its BIRD and etcd.
    let r = ctl(&ep, &["version", "--run-dir", &run_s]);
    r.assert_ok();
    let v = &r.stdout;
    assert!(v.contains(&format!("calico-node {}", env!("CARGO_PKG_VERSION"))), "{v}");
    assert!(v.lines().any(|l| l.starts_with("BIRD 2.")), "{v}");
    assert!(v.lines().any(|l| l.starts_with("etcd 3.")), "{v}");
    assert!(!v.contains("unknown"), "{v}");

    // diags: a readable archive with the expected members.
    let archive = tmp.path().join("diags.tar.gz");
    let r = ctl(&ep, &["diags", "--run-dir", &run_s, "-o", archive.to_str().unwrap()]);
    r.assert_ok();
    let listing = Command::new("tar")
        .args(["tzf", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for member in [
        "calico-node.log",
        "calico-node.args",
        "bird.conf",
        "birdc-protocols.txt",
        "birdc-routes.txt",
        "nft-calico.json",
        "nft-rendered.json",
        "routes-v4.json",
        "datastore.json",
        "diags.txt",
        "errors.txt",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!("/{member}"))),
            "{member} missing from the archive:\n{listing}\n{r:?}"
        );
    }
    let x = tmp.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    assert!(Command::new("tar")
        .args(["xzf", archive.to_str().unwrap(), "-C", x.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let top = std::fs::read_dir(&x).unwrap().next().unwrap().unwrap().path();
    let nft: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(top.join("nft-calico.json")).unwrap()).unwrap();
    assert!(nft.to_string().contains("\"calico\""), "{nft}");
    // The agent's own copy of what it committed: the whole batch, dispatch maps included.
    let rendered: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(top.join("nft-rendered.json")).unwrap()).unwrap();
    assert!(rendered.to_string().contains("\"from-ep\""), "{rendered}");
    let routes = std::fs::read_to_string(top.join("routes-v4.json")).unwrap();
    assert!(routes.contains("10.66."), "{routes}");
    let protocols = std::fs::read_to_string(top.join("birdc-protocols.txt")).unwrap();
    assert!(protocols.contains("Mesh_"), "{protocols}");
    let ds = std::fs::read_to_string(top.join("datastore.json")).unwrap();
    assert!(ds.contains("/calico/v1/status/nodes/t1"), "{ds}");

    // node stop: refused while w1 is on the node; with --force, everything stops.
    let r = ctl(&ep, &["node", "stop", "--run-dir", &run_s]);
    r.assert_fails();
    assert!(r.stderr.contains("Containers remain on node t1: w1"), "{r:?}");
    assert!(alive(&agent_pid), "a refused stop stopped the agent");
    let bird_pid = read_pid(&run, "bird.pid");
    assert!(alive(&bird_pid));
    let r = ctl(&ep, &["node", "stop", "--run-dir", &run_s, "--force"]);
    r.assert_ok();
    assert!(
        r.stdout.contains(&format!("Stopped calico-node (pid {agent_pid})")),
        "{r:?}"
    );
    assert!(!alive(&agent_pid), "agent still running");
    assert!(!alive(&bird_pid), "BIRD still running");
    assert!(
        host.pids().is_empty(),
        "processes left in the host namespace: {:?}",
        host.pids()
    );
    assert!(!run.join("calico-node.pid").exists() && !run.join("bird.pid").exists());

    // status with everything down still reports what it can (the node's name comes from
    // the record `node` left in the run directory).
    let r = ctl(&ep, &["status", "--run-dir", &run_s]);
    r.assert_fails();
    assert!(
        r.stdout.contains("Agent for node t1") && r.stdout.contains("not running"),
        "{r:?}"
    );
    assert!(r.stdout.contains("this is its last report"), "{r:?}");
    assert!(r.stdout.contains("BGP sessions: unknown"), "{r:?}");
    assert!(r.stdout.contains("1 Containers"), "{r:?}");
    let r = ctl(&ep, &["node", "stop", "--run-dir", &run_s]);
    r.assert_fails();
    assert!(r.stderr.contains("no calico-node agent is running"), "{r:?}");
}

/// `node` refuses what it cannot run: a bad address, a missing netns, TLS.
#[test]
fn node_refuses_bad_arguments() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let tmp = tempfile::tempdir().unwrap();
    let run_s = tmp.path().join("run").display().to_string();
    for (args, want) in [
        (vec!["node", "--ip", "fd00::1", "--name", "x"], "not an IPv4 address"),
        (
            vec!["node", "--ip", "10.0.0.1", "--ip6", "10.0.0.2", "--name", "x"],
            "not an IPv6 address",
        ),
        (
            vec!["node", "--ip", "10.0.0.1", "--name", "x", "--netns", "/nonexistent/ns"],
            "no such file",
        ),
        (
            vec!["node", "--ip", "10.0.0.1", "--name", "bad/name"],
            "not a valid node name",
        ),
        (
            vec!["node", "--ip", "10.0.0.1", "--name", "x", "--http", "nope"],
            "--http must be",
        ),
        (
            vec!["node", "--ip", "10.0.0.1", "--name", "x", "--etcd-ca", "/etc/ca.pem"],
            "TLS",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["--run-dir", &run_s]);
        let r = ctl(&ep, &a);
        r.assert_fails();
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
    }
    // Nothing was registered.
    ctl(&ep, &["get", "node", "x"]).assert_fails();
}

/// `--foreground` execs the agent in place (same pid, no log file); an agent that dies
/// at start (its HTTP port taken) is reported with the end of its log.
#[test]
fn foreground_and_failed_start() {
    agent_binary_present();
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let host = Netns::new("cnf");
    let tmp = tempfile::Builder::new().prefix("calicoctl-node-").tempdir().unwrap();
    let run = tmp.path().join("run");
    let _reaper = Reaper(run.clone());
    let run_s = run.to_str().unwrap().to_string();
    let logs = tmp.path().join("log");

    // The HTTP port is taken: the agent exits at once and `node` says why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let r = ctl(
        &ep,
        &[
            "node",
            "--ip",
            "172.30.1.1",
            "--name",
            "f1",
            "--netns",
            &host.path(),
            "--run-dir",
            &run_s,
            "--log-dir",
            logs.to_str().unwrap(),
            "--http",
            &taken_addr,
        ],
    );
    r.assert_fails();
    assert!(r.stderr.contains("calico-node exited at once"), "{r:?}");
    assert!(r.stderr.contains("calico-node.log"), "{r:?}");
    assert!(!run.join("calico-node.pid").exists());
    drop(taken);

    // Foreground: the calicoctl process becomes the agent.
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = command(
        &ep,
        &[
            "node",
            "--ip",
            "172.30.1.1",
            "--name",
            "f1",
            "--netns",
            &host.path(),
            "--run-dir",
            &run_s,
            "--http",
            &http,
            "--foreground",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(&http, "/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "the foreground agent never answered /healthz"
        );
        assert!(child.try_wait().unwrap().is_none(), "the foreground agent exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = read_pid(&run, "calico-node.pid");
    assert_eq!(pid, child.id().to_string(), "exec keeps the pid");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim(),
        "calico-node"
    );
    // No Containers on f1: stop needs no --force. The agent is our child here, so reap it.
    let r = ctl(&ep, &["node", "stop", "--run-dir", &run_s]);
    r.assert_ok();
    let status = child.wait().unwrap();
    assert!(status.success(), "the agent exits cleanly on SIGTERM: {status}");
    assert!(host.pids().is_empty(), "left in the namespace: {:?}", host.pids());
}
