//! A Docker host for end-to-end tests: a private dockerd inside a namespace host of
//! the fabric, in its own mount namespace (`nsenter --net=<host> unshare -m`), with a
//! private /run (so /run/docker/plugins is a directory of ours, where that host's
//! agent serves the plugin sockets), its own data and exec roots and API socket. By
//! default dockerd runs with its own defaults (iptables on, docker0), started on a host
//! whose forwarding is off, as on a freshly booted machine: dockerd then turns
//! forwarding on and sets iptables' FORWARD policy to DROP. The busybox image is
//! `docker import`ed from the static /bin/busybox: no registry is reachable.
//!
//! Dropping a DockerHost removes its containers, stops dockerd and deletes its
//! directories, also when the test failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const IMAGE: &str = "calico-test/busybox";

/// Whether this machine can run the Docker tests; prints why not.
pub fn available() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = root
        && ["dockerd", "docker", "unshare", "nsenter", "etcd", "bird", "nft"]
            .iter()
            .all(|b| have(b))
        && Path::new("/bin/busybox").exists();
    if !ok {
        // A silent skip would let CI pass without testing Docker at all: skipping is an
        // explicit choice (CALICO_ALLOW_SKIP=1), never the default.
        let why = "needs root, dockerd, docker, unshare, nsenter, etcd, bird, nft and /bin/busybox \
                   (scripts/test.sh installs them)";
        if std::env::var_os("CALICO_ALLOW_SKIP").is_some() {
            eprintln!("SKIP: {why}");
        } else {
            panic!("{why}; set CALICO_ALLOW_SKIP=1 to skip");
        }
    }
    ok
}

/// How a test's dockerd is started.
#[derive(Debug, Clone, Copy)]
pub struct DockerdOpts {
    /// dockerd's default networking (iptables, docker0). `false`: `--iptables=false
    /// --ip6tables=false --bridge=none`, as some users run it.
    pub iptables: bool,
    /// Turn the host's IPv4 forwarding off before dockerd starts (a freshly booted
    /// host). Leave it as it is when an agent already runs there.
    pub forwarding_off: bool,
}

impl Default for DockerdOpts {
    fn default() -> Self {
        DockerdOpts {
            iptables: true,
            forwarding_off: true,
        }
    }
}

pub struct DockerHost {
    pub dir: tempfile::TempDir,
    netns: PathBuf,
    child: Option<Child>,
    opts: DockerdOpts,
}

impl DockerHost {
    /// Starts dockerd with its defaults in the network namespace `netns` (forwarding
    /// off first) and imports the image.
    pub fn start(netns: &Path) -> anyhow::Result<DockerHost> {
        Self::start_with(netns, DockerdOpts::default())
    }

    pub fn start_with(netns: &Path, opts: DockerdOpts) -> anyhow::Result<DockerHost> {
        let mut d = Self::prepare(netns, opts)?;
        d.launch()?;
        Ok(d)
    }

    /// The directories (so the socket and plugin paths are known), no dockerd yet:
    /// for an agent started before dockerd. [`DockerHost::launch`] starts it.
    pub fn prepare(netns: &Path, opts: DockerdOpts) -> anyhow::Result<DockerHost> {
        let dir = tempfile::Builder::new().prefix("calico-dockerd.").tempdir()?;
        for sub in ["plugins", "data", "exec", "rootfs/bin"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        Ok(DockerHost {
            dir,
            netns: netns.to_path_buf(),
            child: None,
            opts,
        })
    }

    /// Starts the prepared dockerd and imports the image.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        if self.opts.forwarding_off {
            self.in_host(&["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"])?;
        }
        self.spawn()?;
        let rootfs = self.dir.path().join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
        for applet in ["sh", "sleep", "ip", "ping", "cat", "nc", "hostname"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        let import = format!(
            "tar -C {} -c . | docker -H {} import - {IMAGE}",
            rootfs.display(),
            self.host()
        );
        let out = Command::new("sh").args(["-c", &import]).output()?;
        if !out.status.success() {
            bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// (Re)starts dockerd and waits until it answers.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let p = self.dir.path();
        let script = format!(
            "set -e\nmount --make-rprivate /\nmount -t tmpfs none /run\nmkdir -p /run/docker/plugins\n\
             mount --bind {plugins} /run/docker/plugins\n\
             exec dockerd --data-root {data} --exec-root {exec} -H {host} --pidfile {p}/docker.pid \
             {net} --shutdown-timeout 2 >>{p}/dockerd.log 2>&1\n",
            net = if self.opts.iptables {
                ""
            } else {
                "--bridge=none --iptables=false --ip6tables=false"
            },
            plugins = p.join("plugins").display(),
            data = p.join("data").display(),
            exec = p.join("exec").display(),
            host = self.host(),
            p = p.display(),
        );
        // nsenter, unshare and sh all exec: the child's pid is dockerd's.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["unshare", "-m", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .context("starting dockerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.docker(&["version"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("dockerd did not come up:\n{}", self.log())
    }

    /// Runs a command in this Docker host's network namespace; its stdout.
    pub fn in_host(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `unix://<dir>/docker.sock`
    pub fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// The flags that connect a host's agent to this dockerd.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--docker-host".into(),
            self.host(),
            "--plugin-dir".into(),
            self.plugin_dir().display().to_string(),
        ]
    }

    /// Waits until the agent serves both plugin sockets.
    pub fn wait_for_plugin(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = ["calico.sock", "calico-ipam.sock"]
                .iter()
                .all(|s| std::os::unix::net::UnixStream::connect(self.plugin_dir().join(s)).is_ok());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the agent never served the plugin sockets in {}",
            self.plugin_dir().display()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// docker, insisting on success; its stdout, trimmed.
    pub fn must(&self, args: &[&str]) -> String {
        match self.try_docker(args) {
            Ok(out) => out,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.docker(args);
        if !out.status.success() {
            bail!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `docker run -d --name NAME ARGS... IMAGE sleep 100000`; the container ID.
    pub fn run(&self, name: &str, args: &[&str]) -> String {
        let mut full = vec!["run", "-d", "--name", name];
        full.extend_from_slice(args);
        full.extend_from_slice(&[IMAGE, "sleep", "100000"]);
        self.must(&full)
    }

    pub fn pid(&self, container: &str) -> u32 {
        self.must(&["inspect", "-f", "{{.State.Pid}}", container])
            .parse()
            .expect("pid")
    }

    /// The container's network namespace, as the host sees it.
    pub fn netns_of(&self, container: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid(container)))
    }

    /// What `docker inspect` shows as the container's address on `network`.
    pub fn ip_on(&self, container: &str, network: &str) -> String {
        let fmt = format!("{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}");
        self.must(&["inspect", "-f", &fmt, container])
    }

    /// One ping from inside `container` (the host's ping in its namespace).
    pub fn ping(&self, container: &str, to: &str) -> bool {
        let ns = self.netns_of(container);
        Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["ping", "-c", "1", "-W", "1", to])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs a command in the container's network namespace (with the host's tools).
    pub fn in_container(&self, container: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_of(container).display()))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGTERM and wait (dockerd stops its containers and its containerd).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// dockerd's pid while it runs.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `docker exec CONTAINER ping -c 1 -W 2 TO`: a ping sent by the container's own
    /// busybox, as a user would try it.
    pub fn exec_ping(&self, container: &str, to: &str) -> bool {
        self.docker(&["exec", container, "ping", "-c", "1", "-W", "2", to])
            .status
            .success()
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Workloads first, while a containerised agent still serves their network's
            // plugin (dockerd waits long on a plugin that went away), then the agents.
            let components = self
                .try_docker(&["ps", "-aq", "--filter", "label=org.calico-docker.component"])
                .unwrap_or_default();
            let all = self.try_docker(&["ps", "-aq"]).unwrap_or_default();
            let components: Vec<&str> = components.split_whitespace().collect();
            let (agents, workloads): (Vec<&str>, Vec<&str>) =
                all.split_whitespace().partition(|id| components.contains(id));
            for ids in [workloads, agents] {
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.docker(&args);
                }
            }
        }
        self.stop();
    }
}

/// Waits until `f` holds or `timeout` passes.
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

/// Prints the agents', BIRDs' and dockerds' logs when the test panics, or always with
/// CALICO_E2E_LOGS=1. Holds only the paths, so the cluster stays usable.
pub struct DumpOnPanic {
    files: Vec<PathBuf>,
}

impl DumpOnPanic {
    pub fn new(cluster: &crate::cluster::Cluster, docker: &[&DockerHost]) -> DumpOnPanic {
        let mut files = Vec::new();
        for a in cluster.agents.values() {
            files.push(a.run_dir.join("agent.log"));
            files.push(a.run_dir.join("bird.log"));
        }
        for d in docker {
            files.push(d.dir.path().join("dockerd.log"));
        }
        DumpOnPanic { files }
    }
}

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CALICO_E2E_LOGS").is_some() {
            for f in &self.files {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                eprintln!("----- {} -----\n{text}", f.display());
            }
        }
    }
}

/// A file of the repository's examples/.
pub fn examples(file: &str) -> String {
    format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// `docker network create --driver calico --ipam-driver calico-ipam ARGS... NAME`; the
/// network's ID.
pub fn calico_net(d: &DockerHost, args: &[&str], name: &str) -> String {
    let mut full = vec![
        "network",
        "create",
        "--driver",
        "calico",
        "--ipam-driver",
        "calico-ipam",
    ];
    full.extend_from_slice(args);
    full.push(name);
    d.must(&full)
}

/// The address the agent gave a CALICO_IP container (from its namespace).
pub fn seed_ip(d: &DockerHost, name: &str) -> Option<String> {
    let out = d
        .in_container(name, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .ok()?;
    let word = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    word.split('/').next().map(str::to_string)
}

/// A host's agent started the way users start it, `calicoctl node`, connected to a
/// [`DockerHost`]; stopped on drop (`node stop --force`, then SIGKILL for anything of
/// its run directory still alive), also when the test failed half-way.
pub struct CtlNode {
    pub name: String,
    pub run_dir: PathBuf,
    etcd: Vec<String>,
}

impl CtlNode {
    /// `calicoctl --docker-host H node --ip ADDR/24 --name hostN ...` for fabric host
    /// `i` (its run and log directory under the cluster's), with `extra` flags (e.g.
    /// `--as`); the guard and calicoctl's output.
    pub fn start(
        c: &crate::cluster::Cluster,
        i: usize,
        d: &DockerHost,
        extra: &[&str],
    ) -> anyhow::Result<(CtlNode, String)> {
        let name = format!("host{}", i + 1);
        let run_dir = c.dir.path().join(format!("node-{name}"));
        std::fs::create_dir_all(&run_dir)?;
        // The guard exists before the agent does, so a half-done start is reaped.
        let node = CtlNode {
            name: name.clone(),
            run_dir,
            etcd: c.etcd_flags(),
        };
        let (ip, rd) = (format!("{}/24", c.fabric.hosts[i].addr), node.rd());
        let ns = c.host_ns(i).path().display().to_string();
        let http = format!("127.0.0.1:{}", crate::cluster::free_port());
        let plugins = d.plugin_dir().display().to_string();
        #[rustfmt::skip]
        let mut args = vec![
            "--docker-host", &d.host(), "node", "--ip", &ip, "--name", &name, "--netns", &ns,
            "--run-dir", &rd, "--log-dir", &rd, "--http", &http, "--plugin-dir", &plugins,
        ].into_iter().map(str::to_string).collect::<Vec<_>>();
        args.extend(extra.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = c.ctl(&args)?;
        Ok((node, out))
    }

    pub fn rd(&self) -> String {
        self.run_dir.display().to_string()
    }

    /// `calicoctl status --run-dir ...`: stdout and stderr together, and whether it
    /// exited 0.
    pub fn status(&self) -> (bool, String) {
        let out = Command::new(crate::cluster::bin("calicoctl"))
            .args(&self.etcd)
            .args(["status", "--run-dir", &self.rd()])
            .output();
        match out {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("running calicoctl: {e}")),
        }
    }

    /// The agent's and BIRD's logs.
    pub fn logs(&self) -> String {
        ["calico-node.log", "bird.log"]
            .iter()
            .map(|f| {
                let p = self.run_dir.join(f);
                format!(
                    "----- {} -----\n{}\n",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                )
            })
            .collect()
    }

    /// BIRD's pid from the run directory, if it is alive.
    pub fn bird_alive(&self) -> bool {
        self.pid_if("bird.pid", "bird").is_some()
    }

    pub fn agent_alive(&self) -> bool {
        self.pid_if("calico-node.pid", "calico-node").is_some()
    }

    /// The pid in `file` while that process is still a `comm` (pids get reused).
    fn pid_if(&self, file: &str, comm: &str) -> Option<String> {
        let pid = std::fs::read_to_string(self.run_dir.join(file)).ok()?;
        let pid = pid.trim().to_string();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit(") ").next()?.chars().next()?;
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (now.trim() == comm && state != 'Z').then_some(pid)
    }
}

impl Drop for CtlNode {
    fn drop(&mut self) {
        let _ = Command::new(crate::cluster::bin("calicoctl"))
            .args(&self.etcd)
            .args(["node", "stop", "--force", "--run-dir", &self.rd()])
            .output();
        for (file, comm) in [("calico-node.pid", "calico-node"), ("bird.pid", "bird")] {
            if let Some(pid) = self.pid_if(file, comm) {
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        }
    }
}

/// `birdc -s <run_dir>/bird.ctl ARGS` (the socket is a file: no netns needed); empty
/// when BIRD does not answer.
pub fn birdc_at(run_dir: &Path, args: &[&str]) -> String {
    Command::new("birdc")
        .arg("-s")
        .arg(run_dir.join("bird.ctl"))
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The BGP sessions of the BIRD of `run_dir`: (protocol name, established).
pub fn bird_sessions(run_dir: &Path) -> Vec<(String, bool)> {
    birdc_at(run_dir, &["show", "protocols"])
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap_or_default().to_string();
            (name, l.contains("Established"))
        })
        .collect()
}

/// Which container may reach which, by the groups they are in: a group with no rules
/// accepts traffic only from its members and may send anywhere, so `i` reaches `j`
/// when they share a group.
pub fn allowed(groups: &[Vec<String>]) -> Vec<Vec<bool>> {
    groups
        .iter()
        .enumerate()
        .map(|(i, gi)| {
            groups
                .iter()
                .enumerate()
                .map(|(j, gj)| i != j && gi.iter().any(|g| gj.contains(g)))
                .collect()
        })
        .collect()
}

/// calicoctl's tag for its own images (`scripts/build-images.sh` uses the same).
pub fn node_image() -> String {
    format!("calico-docker/node:{}", env!("CARGO_PKG_VERSION"))
}

/// `scripts/build-images.sh --bin-dir <the binaries under test>` into each dockerd
/// that lacks the images.
pub fn build_images(hosts: &[&DockerHost]) -> anyhow::Result<()> {
    let mut args = vec!["--bin-dir".to_string(), crate::cluster::bin_dir().display().to_string()];
    for d in hosts {
        if !d.docker(&["image", "inspect", &node_image()]).status.success() {
            args.extend(["-H".to_string(), d.host()]);
        }
    }
    if args.len() == 2 {
        return Ok(());
    }
    let script = format!("{}/../scripts/build-images.sh", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash").arg(&script).args(&args).output()?;
    if !out.status.success() {
        bail!(
            "build-images.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A host's agent run the seed's way, as a Docker container: `calicoctl node --docker`,
/// run (like every calicoctl command about this host) in the host's network namespace,
/// where the agent's HTTP is and where etcd is forwarded at the test's own address
/// ([`crate::forward::Forward`]). Stopped on drop (`node stop --force`, then `docker rm
/// -f` of its container), also when the test failed half-way.
pub struct ContainerNode {
    pub name: String,
    pub run_dir: PathBuf,
    ns: PathBuf,
    docker_host: String,
    etcd: Vec<String>,
    _forward: Vec<crate::forward::Forward>,
}

impl ContainerNode {
    /// `calicoctl --docker-host H node --docker --ip ADDR/24 --name hostN ...` for
    /// fabric host `i` with `extra` flags, after building the images into `d` if need
    /// be; the guard and calicoctl's output.
    pub fn start(
        c: &crate::cluster::Cluster,
        i: usize,
        d: &DockerHost,
        extra: &[&str],
    ) -> anyhow::Result<(ContainerNode, String)> {
        build_images(&[d])?;
        let name = format!("host{}", i + 1);
        let run_dir = c.dir.path().join(format!("node-{name}"));
        std::fs::create_dir_all(&run_dir)?;
        let ns = c.host_ns(i).path();
        let forward = c
            .etcd_ports()
            .into_iter()
            .map(|p| crate::forward::Forward::start(&ns, p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let node = ContainerNode {
            name: name.clone(),
            run_dir,
            ns,
            docker_host: d.host(),
            etcd: c.etcd_flags(),
            _forward: forward,
        };
        let (ip, rd) = (format!("{}/24", c.fabric.hosts[i].addr), node.rd());
        let http = format!("127.0.0.1:{}", crate::cluster::free_port());
        let plugins = d.plugin_dir().display().to_string();
        #[rustfmt::skip]
        let mut args = vec![
            "--docker-host", &node.docker_host, "node", "--docker", "--ip", &ip, "--name", &name,
            "--run-dir", &rd, "--log-dir", &rd, "--http", &http, "--plugin-dir", &plugins,
        ].into_iter().map(str::to_string).collect::<Vec<_>>();
        args.extend(extra.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = node.ctl(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("calicoctl {}: {text}", args.join(" "));
        }
        Ok((node, text))
    }

    pub fn rd(&self) -> String {
        self.run_dir.display().to_string()
    }

    /// The agent's container.
    pub fn container(&self) -> String {
        format!("calico-node-{}", self.name)
    }

    /// calicoctl with etcd's flags, in this host's network namespace.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns.display()))
            .arg(crate::cluster::bin("calicoctl"))
            .args(&self.etcd)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running calicoctl: {e}"))
    }

    /// `calicoctl status --run-dir ...`: stdout and stderr together, and whether it
    /// exited 0.
    pub fn status(&self) -> (bool, String) {
        let o = self.ctl(&["status", "--run-dir", &self.rd()]);
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// The agent's log (the file the container appends to) and BIRD's.
    pub fn logs(&self) -> String {
        ["calico-node.log", "bird.log"]
            .iter()
            .map(|f| {
                let p = self.run_dir.join(f);
                format!(
                    "----- {} -----\n{}\n",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for ContainerNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["node", "stop", "--force", "--run-dir", &self.rd()]);
        let _ = Command::new("docker")
            .args(["-H", &self.docker_host, "rm", "-f", &self.container()])
            .output();
    }
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
    fn shared_groups_decide_and_two_groups_join_both() {
        let groups = g(&[&["A_C_E"], &["B"], &["A_C_E"], &["D", "A_C_E"], &[]]);
        let m = allowed(&groups);
        assert!(m[0][2] && m[2][0] && m[0][3] && m[3][2]);
        assert!(!m[0][1] && !m[1][3] && !m[4][0] && !m[0][4]);
        assert!((0..5).all(|i| !m[i][i]));
        assert_eq!(m.iter().flatten().filter(|b| **b).count(), 6);
    }
}
