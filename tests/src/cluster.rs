//! A whole cluster on one machine: a private etcd, namespace hosts on a fabric, one
//! real agent (with its BIRD) per host, and workloads as namespaces.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_store::testing::TestEtcd;

use crate::netns::{Fabric, Netns};
use crate::unique;

/// Which build of the workspace's binaries (calico-node, calicoctl, calico-demo) the
/// harness starts: the end-to-end tests use the binaries of their own profile
/// (target/debug), the agent benchmarks switch to release builds with
/// [`use_release_binaries`], because users run release builds.
static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The directory holding the built binaries the harness starts: target/debug (found
/// from the running test executable, target/debug/deps/<test>), or target/release
/// after [`use_release_binaries`].
pub fn bin_dir() -> PathBuf {
    BIN_DIR.get().cloned().unwrap_or_else(own_profile_dir)
}

fn own_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test executables live in target/debug/deps, binaries (the demo) in target/debug.
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// From now on, this process starts the release builds (target/release) of calico-node
/// and calicoctl, whatever profile the test itself was built with: the benchmarks
/// measure what users run. `cargo test` does not build them: run `cargo build
/// --release -p calico-agent -p calicoctl` first (scripts/bench.sh does). Returns the
/// directory, or an error naming what is missing.
pub fn use_release_binaries() -> Result<PathBuf, String> {
    let own = own_profile_dir();
    let release = own
        .parent()
        .map(|t| t.join("release"))
        .ok_or_else(|| format!("no target directory above {}", own.display()))?;
    for name in ["calico-node", "calicoctl"] {
        if !release.join(name).exists() {
            return Err(format!(
                "{} not built: run `cargo build --release -p calico-agent -p calicoctl` first",
                release.join(name).display()
            ));
        }
    }
    let set = BIN_DIR.get_or_init(|| release.clone());
    if *set == release {
        Ok(release)
    } else {
        Err(format!("binaries already chosen from {}", set.display()))
    }
}

/// When `name` in [`bin_dir`] was built (its mtime), for benchmark output: a stale
/// release binary measures old code.
pub fn bin_built(name: &str) -> String {
    std::fs::metadata(bin_dir().join(name))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            let ago = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|n| n.as_secs().saturating_sub(d.as_secs()))
                .unwrap_or(0);
            format!("built {ago} s ago")
        })
        .unwrap_or_else(|| "not built".into())
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// One running `calico-node` for one namespace host.
pub struct Agent {
    pub name: String,
    pub run_dir: PathBuf,
    pub http: String,
    child: Option<Child>,
    args: Vec<String>,
}

impl Agent {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run_dir.join("agent.log"))
            .expect("agent log");
        let child = Command::new(bin("calico-node"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn calico-node");
        self.child = Some(child);
    }

    /// SIGTERM, waiting up to 5 s for the agent to exit. It leaves the dataplane and
    /// BIRD running (the next agent adopts BIRD).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the agent leaves the dataplane and BIRD as they are.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL: no cleanup at all, as in a crash or an OOM kill.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process is still running (it has not crashed).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(std::process::Child::try_wait), Some(Ok(None)))
    }

    /// BIRD's pid from `<run_dir>/bird.pid`, if that process is alive.
    pub fn bird_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.run_dir.join("bird.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A zombie (dead, not yet reaped by its parent) does not count.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit(") ").next()?.chars().next()?;
        (state != 'Z').then_some(pid)
    }

    /// `birdc -s <run_dir>/bird.ctl ARGS` (the control socket is a file: no netns needed).
    pub fn birdc(&self, args: &[&str]) -> anyhow::Result<String> {
        let sock = self.run_dir.join("bird.ctl").display().to_string();
        let mut full = vec!["birdc", "-s", &sock];
        full.extend_from_slice(args);
        crate::sh(&full)
    }

    /// Whether every BGP session BIRD has is Established (and there is at least one).
    pub fn bgp_established(&self) -> bool {
        let Ok(out) = self.birdc(&["show", "protocols"]) else {
            return false;
        };
        let bgp: Vec<&str> = out
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
            .collect();
        !bgp.is_empty() && bgp.iter().all(|l| l.contains("Established"))
    }

    /// One value of the agent's /metrics, e.g. `calico_invalid_data`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("agent.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics", self.http)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // BIRD is the agent's child; if the agent was killed hard, it may linger.
        if let Ok(pid) = std::fs::read_to_string(self.run_dir.join("bird.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

pub struct Cluster {
    pub etcd: TestEtcd,
    /// Where calicoctl, the agents and [`Cluster::with_store`] find etcd: the
    /// [`TestEtcd`] unless [`Cluster::use_etcd`] named another (a TLS cluster).
    etcd_endpoints: String,
    etcd_tls: Option<calico_store::TlsFiles>,
    /// Whether starting an agent also applies its Node (`{ipv4: addr/24}`); a test that
    /// declares its Nodes itself turns this off.
    pub register_nodes: bool,
    pub fabric: Fabric,
    pub agents: BTreeMap<String, Agent>,
    pub workloads: BTreeMap<String, Netns>,
    pub dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Cluster {
    /// Starts etcd and a fabric with hosts `host1..hostN` at 172.17.8.101...
    pub fn new(hosts: usize) -> anyhow::Result<Cluster> {
        let etcd = TestEtcd::start();
        let mut fabric = Fabric::new()?;
        for i in 0..hosts {
            fabric.add_host(Ipv4Addr::new(172, 17, 8, 101 + i as u8))?;
        }
        let dir = tempfile::Builder::new().prefix("calico-e2e-").tempdir()?;
        Ok(Cluster {
            etcd_endpoints: etcd.endpoint(),
            etcd_tls: None,
            register_nodes: true,
            etcd,
            fabric,
            agents: BTreeMap::new(),
            workloads: BTreeMap::new(),
            dir,
        })
    }

    /// Use this etcd (endpoints, comma separated, and TLS files) from now on, for
    /// calicoctl and for agents started afterwards.
    pub fn use_etcd(&mut self, endpoints: String, tls: Option<calico_store::TlsFiles>) {
        self.etcd_endpoints = endpoints;
        self.etcd_tls = tls;
    }

    /// The etcd flags of calicoctl and calico-node (they are the same).
    /// The ports of etcd's client endpoints (all on 127.0.0.1).
    pub fn etcd_ports(&self) -> Vec<u16> {
        self.etcd_endpoints
            .split(',')
            .filter_map(|e| e.rsplit(':').next()?.parse().ok())
            .collect()
    }

    pub fn etcd_flags(&self) -> Vec<String> {
        let mut out = vec!["--etcd".to_string(), self.etcd_endpoints.clone()];
        if let Some(t) = &self.etcd_tls {
            for (flag, f) in [("--etcd-ca", &t.ca), ("--etcd-cert", &t.cert), ("--etcd-key", &t.key)] {
                if let Some(f) = f {
                    out.push(flag.to_string());
                    out.push(f.display().to_string());
                }
            }
        }
        out
    }

    /// The handle of `table inet calico` in host `i` (0 if absent): a table loaded
    /// whole again gets a new one.
    pub fn table_handle(&self, i: usize) -> u64 {
        let out = self
            .host_ns(i)
            .exec(&["nft", "-j", "list", "tables"])
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("table"))
            .find(|t| t["name"] == "calico")
            .and_then(|t| t["handle"].as_u64())
            .unwrap_or(0)
    }

    pub fn host_ns(&self, i: usize) -> &Netns {
        &self.fabric.hosts[i].ns
    }

    /// `calicoctl` against this cluster's etcd.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ctl_stdin(args, None)
    }

    pub fn ctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let mut cmd = Command::new(bin("calicoctl"));
        cmd.args(self.etcd_flags()).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            // stdout too: `ipam check` and friends list the problems there.
            anyhow::bail!(
                "calicoctl {}: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.ctl_stdin(&["apply", "-f", "-"], Some(yaml))
    }

    /// Runs `f` with a connected [`calico_store::Store`] on a private runtime.
    pub fn with_store<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a calico_store::Store,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + 'a>>,
    ) -> anyhow::Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut cfg = calico_store::StoreConfig::from_list(&self.etcd_endpoints);
        cfg.timeout = Duration::from_secs(3);
        cfg.tls = self.etcd_tls.clone();
        rt.block_on(async {
            let store = calico_store::Store::connect(&cfg).await?;
            f(&store).await
        })
    }

    /// The JSON value at `/calico/v1/<suffix>` (e.g. `status/containers/web-1`).
    pub fn get_json<T: serde::de::DeserializeOwned + 'static>(&self, suffix: &str) -> anyhow::Result<Option<T>> {
        let suffix = suffix.to_string();
        self.with_store(move |s| Box::pin(async move { Ok(s.get_json::<T>(&suffix).await?) }))
    }

    /// A Container's status as its agent wrote it.
    pub fn container_status(&self, name: &str) -> Option<calico_schema::ContainerStatus> {
        self.get_json(&format!("status/containers/{name}")).ok().flatten()
    }

    /// An agent's own status record (status/nodes/<node>).
    pub fn node_status(&self, node: &str) -> Option<serde_json::Value> {
        self.get_json(&format!("status/nodes/{node}")).ok().flatten()
    }

    /// Writes raw bytes at an etcd key, bypassing every check calicoctl makes.
    pub fn etcd_put_raw(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.with_store(move |s| {
            Box::pin(async move {
                s.client().put(key, value, None).await?;
                Ok(())
            })
        })
    }

    /// A Container document for a workload namespace made with [`Cluster::workload_ns`].
    pub fn container_yaml(&self, name: &str, node: &str, ip: Option<&str>, groups: &[&str]) -> String {
        let ips = ip.map(|i| format!("  ips: [{i}]\n")).unwrap_or_default();
        format!(
            "---\napiVersion: calico/v1\nkind: Container\nmetadata: {{name: {name}}}\nspec:\n  node: {node}\n  netns: {}\n{ips}  groups: [{}]\n",
            self.wl(name).path().display(),
            groups.join(", ")
        )
    }

    /// Declares Node `hostN` for fabric host i and starts its agent.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_agent_with(i, &[])
    }

    /// [`Cluster::start_agent`] with more calico-node flags (e.g. `--docker-host`).
    pub fn start_agent_with(&mut self, i: usize, extra: &[String]) -> anyhow::Result<()> {
        let name = format!("host{}", i + 1);
        let addr = self.fabric.hosts[i].addr;
        if self.register_nodes {
            self.apply(&format!(
                "apiVersion: calico/v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{ipv4: {addr}/24}}\n"
            ))?;
        }
        let run_dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&run_dir)?;
        let http = format!("127.0.0.1:{}", free_port());
        let args = vec!["--name".to_string(), name.clone()]
            .into_iter()
            .chain(self.etcd_flags())
            .chain([
                "--netns".into(),
                self.fabric.hosts[i].ns.path().display().to_string(),
                "--run-dir".into(),
                run_dir.display().to_string(),
                "--http".into(),
                http.clone(),
                "--resync".into(),
                "5".into(),
                "--timeout".into(),
                "2".into(),
            ])
            .chain(extra.iter().cloned())
            .collect();
        let mut agent = Agent {
            name: name.clone(),
            run_dir,
            http,
            child: None,
            args,
        };
        agent.spawn();
        self.agents.insert(name, agent);
        Ok(())
    }

    pub fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.get_mut(name).expect("no such agent")
    }

    /// A workload namespace; its path is what a Container's `netns` names.
    pub fn workload_ns(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let ns = Netns::new(&unique("cwl"))?;
        let p = ns.path();
        self.workloads.insert(name.to_string(), ns);
        Ok(p)
    }

    pub fn wl(&self, name: &str) -> &Netns {
        &self.workloads[name]
    }

    /// Waits until `f` is true or `timeout` passes; returns the last result.
    pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Who reaches whom by one ping each (pairs probed in parallel), as sorted "x->y".
    pub fn ping_matrix(&self, wls: &[(&str, std::net::IpAddr)]) -> Vec<String> {
        let mut out: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = wls
                .iter()
                .flat_map(|(from, _)| wls.iter().map(move |(to, ip)| (*from, *to, *ip)))
                .filter(|(from, to, _)| from != to)
                .map(|(from, to, ip)| {
                    let ns = self.wl(from);
                    scope.spawn(move || crate::can_ping(ns, ip, 1).then(|| format!("{from}->{to}")))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok().flatten()).collect()
        });
        out.sort();
        out
    }

    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        for a in self.agents.values() {
            s.push_str(&format!("----- agent {} -----\n{}\n", a.name, a.log()));
            if let Ok(b) = std::fs::read_to_string(a.run_dir.join("bird.log")) {
                s.push_str(&format!("----- bird {} -----\n{}\n", a.name, b));
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents before namespaces: BIRD and the agent hold the host namespaces.
        self.agents.clear();
        self.workloads.clear();
    }
}
