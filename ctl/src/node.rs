//! `calicoctl node --ip IP ...` (register the Node, start the `calico-node` agent) and
//! `calicoctl node stop` (stop the agent and its BIRD).
//!
//! Runtime files, all in the run directory (default /var/run/calico), so several agents
//! on one machine (test hosts) stay apart:
//! - `calico-node.pid`: the agent's pid, written by `calicoctl node`;
//! - `calico-node.args`: JSON [`AgentRecord`]: how the agent was started (node name,
//!   netns, HTTP address, log file). `status` and `diags` read it; it is how they know
//!   which namespace the dataplane lives in. `node stop` leaves it, so they still know
//!   after the agent is gone;
//! - `bird.pid`, `bird.ctl`, `bird.conf`, `bird.log`: written by the agent and BIRD.
//!
//! The agent's log is `<log-dir>/calico-node.log` (default /var/log/calico).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use calico_schema::validate::{check_resource, check_set, Existing};
use calico_schema::{object, IfaceAddr, Kind, NodeSpec, Resource};
use calico_store::{Change, Changes, Step, WriteMode};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::cli::GlobalOpts;
use crate::conn::{self, Ctx};
use crate::output::sync_owner;

pub const DEFAULT_RUN_DIR: &str = "/var/run/calico";
pub const DEFAULT_LOG_DIR: &str = "/var/log/calico";
/// The agent's own default (`calico-node --http`).
pub const DEFAULT_HTTP: &str = "127.0.0.1:9099";
pub const AGENT_BINARY: &str = "calico-node";
/// Overrides where `calicoctl node` finds the agent binary.
pub const AGENT_BINARY_ENV: &str = "CALICO_NODE_BINARY";
/// How long `node` waits for a daemonised agent's /healthz.
const HEALTH_WAIT: Duration = Duration::from_secs(10);
/// How long `node stop` waits for the agent (which stops BIRD itself, up to 5 s) and
/// then for BIRD, before SIGKILL.
const AGENT_STOP_WAIT: Duration = Duration::from_secs(10);
const BIRD_STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    /// This host's IPv4 address (BGP router id and peering address); a bare address
    /// means /32
    #[arg(long, value_name = "IP[/PREFIX]", required = true)]
    pub ip: Option<String>,
    /// This host's IPv6 address for IPv6 peering
    #[arg(long, value_name = "IP6[/PREFIX]")]
    pub ip6: Option<String>,
    /// The Node's name [default: the hostname]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The Node's AS number [default: the cluster's, ClusterConfig asNumber]
    #[arg(long = "as", value_name = "AS")]
    pub as_number: Option<u32>,
    /// Program this network namespace's dataplane instead of the host's own
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    #[command(flatten)]
    pub dirs: RunDirArg,
    /// Directory of the agent's log file, calico-node.log
    #[arg(long, value_name = "DIR", default_value = DEFAULT_LOG_DIR)]
    pub log_dir: PathBuf,
    /// The agent's local HTTP endpoint (/healthz, /readyz, /metrics, /status)
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_HTTP)]
    pub http: String,
    /// Where the agent serves the Docker plugin sockets (calico.sock, calico-ipam.sock)
    /// [default: the agent's, /run/docker/plugins]
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Run the agent in place of this process (for service managers), logging to stderr
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunDirArg {
    /// The agent's runtime directory (pid files, BIRD's config and control socket)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Stop this host's agent and its BIRD
    Stop(NodeStopArgs),
}

#[derive(Debug, Clone, Args)]
pub struct NodeStopArgs {
    /// The Node whose Containers are checked [default: the one the agent was started
    /// for, else the hostname]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub dirs: RunDirArg,
    /// Stop even while Containers remain on the node (or etcd cannot be asked)
    #[arg(long)]
    pub force: bool,
}

// ------------------------------------------------------------------ runtime files

/// How the agent of a run directory was started: `<run-dir>/calico-node.args`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentRecord {
    pub name: String,
    pub pid: u32,
    pub binary: String,
    pub args: Vec<String>,
    pub netns: Option<String>,
    pub run_dir: String,
    pub log_file: Option<String>,
    pub http: Option<String>,
    pub etcd: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

/// The paths of one run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn agent_pid(&self) -> PathBuf {
        self.0.join("calico-node.pid")
    }
    pub fn record(&self) -> PathBuf {
        self.0.join("calico-node.args")
    }
    pub fn bird_pid(&self) -> PathBuf {
        self.0.join("bird.pid")
    }
    pub fn bird_ctl(&self) -> PathBuf {
        self.0.join("bird.ctl")
    }
    pub fn bird_conf(&self) -> PathBuf {
        self.0.join("bird.conf")
    }
    pub fn bird_log(&self) -> PathBuf {
        self.0.join("bird.log")
    }

    /// The record of the last `calicoctl node` for this directory, if readable.
    pub fn read_record(&self) -> Option<AgentRecord> {
        let text = std::fs::read_to_string(self.record()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The agent's pid and whether it is a live `calico-node`.
    pub fn agent(&self) -> ProcState {
        proc_state(&self.agent_pid(), AGENT_BINARY)
    }

    pub fn bird(&self) -> ProcState {
        proc_state(&self.bird_pid(), "bird")
    }
}

/// What a pid file says about its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcState {
    NoPidFile,
    /// The file does not hold a pid.
    BadPidFile(String),
    /// The pid is not running, or is now another program.
    Stale(i32),
    Running(i32),
}

impl ProcState {
    pub fn running(&self) -> Option<i32> {
        match self {
            ProcState::Running(p) => Some(*p),
            _ => None,
        }
    }
}

fn proc_state(pid_file: &Path, comm: &str) -> ProcState {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return ProcState::NoPidFile;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return ProcState::BadPidFile(text.trim().chars().take(40).collect());
    };
    if pid > 0 && pid_alive(pid) && proc_comm(pid).is_some_and(|c| c == comm) {
        ProcState::Running(pid)
    } else {
        ProcState::Stale(pid)
    }
}

/// The kernel's short name of a process (`/proc/PID/comm`).
pub fn proc_comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `pid` is a running process. A zombie counts as gone: whoever reaps it (init,
/// which may be slow or absent in containers) does not matter to us.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).with_context(|| format!("send {sig} to pid {pid}"))
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    !pid_alive(pid)
}

/// SIGTERM, wait, SIGKILL. Returns a line describing what happened.
fn terminate(pid: i32, what: &str, wait: Duration) -> Result<String> {
    use nix::sys::signal::Signal;
    signal(pid, Signal::SIGTERM)?;
    if wait_gone(pid, wait) {
        return Ok(format!("Stopped {what} (pid {pid})"));
    }
    signal(pid, Signal::SIGKILL)?;
    if wait_gone(pid, Duration::from_secs(2)) {
        Ok(format!(
            "Killed {what} (pid {pid}): it ignored SIGTERM for {}s",
            wait.as_secs()
        ))
    } else {
        bail!("{what} (pid {pid}) survived SIGKILL")
    }
}

pub use crate::hostcmd::hostname;

/// The Node a command about this host's agent means: --name, else the name the agent of
/// the run directory was started with, else the hostname.
pub fn node_name(given: Option<&str>, run: &RunDir) -> Result<String> {
    if let Some(n) = given {
        return Ok(n.to_string());
    }
    if let Some(r) = run.read_record().filter(|r| !r.name.is_empty()) {
        return Ok(r.name);
    }
    hostname()
}

pub use calico_schema::now_secs;

/// `GET path` over plain HTTP/1.0; the status code and body.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} names no address"))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer from {addr}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The last `n` lines of a file (for error messages about the agent).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------------ node

/// Where the agent binary is: $CALICO_NODE_BINARY, else next to this calicoctl, else
/// on PATH.
pub fn find_agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_BINARY_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{AGENT_BINARY_ENV}={} is not a file", p.display());
        }
        return Ok(p);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(AGENT_BINARY);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(AGENT_BINARY);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("cannot find the {AGENT_BINARY} binary next to calicoctl or on PATH (or set {AGENT_BINARY_ENV})")
}

fn parse_addr(flag: &str, text: &str, v4: bool) -> Result<IfaceAddr> {
    let a: IfaceAddr = text.parse().map_err(|e: String| anyhow!("{flag}: {e}"))?;
    if a.addr().is_ipv4() != v4 {
        bail!("{flag}: {text} is not an IPv{} address", if v4 { 4 } else { 6 });
    }
    if a.addr().is_unspecified() || a.addr().is_loopback() || a.addr().is_multicast() {
        bail!("{flag}: {text} cannot be a node address");
    }
    Ok(a)
}

pub async fn run(g: &GlobalOpts, args: &NodeArgs) -> Result<()> {
    match &args.command {
        Some(NodeCommand::Stop(s)) => stop(g, s).await,
        None => start(g, args).await,
    }
}

/// Creates or updates the Node: the given addresses and AS, everything else (labels,
/// annotations, route reflector id, an address not given) kept.
async fn register(
    ctx: &Ctx,
    name: &str,
    ipv4: IfaceAddr,
    ipv6: Option<IfaceAddr>,
    as_number: Option<u32>,
) -> Result<Change> {
    let done = ctx
        .store
        .transact("registering the node", async || -> Result<Step<()>> {
            let listing = ctx.call("list", ctx.store.list(None)).await?;
            let stored = listing
                .resources
                .iter()
                .find(|r| r.kind() == Kind::Node && r.name() == name);
            let mut node = match stored {
                Some(Resource::Node(n)) => n.clone(),
                _ => object(Kind::Node, name, NodeSpec::default()),
            };
            node.spec.ipv4 = Some(ipv4);
            if ipv6.is_some() {
                node.spec.ipv6 = ipv6;
            }
            if as_number.is_some() {
                node.spec.as_number = as_number;
            }
            let new = Resource::Node(node);
            if let Some(old) = stored {
                if old.without_version() == new.without_version() {
                    return Ok(Step::Done(()));
                }
                if let Some(file) = sync_owner(old) {
                    bail!("Node/{name} is owned by a sync directory (file {file}); set its addresses there");
                }
            }
            let mut issues: Vec<String> = check_resource(&new)
                .iter()
                .map(|i| format!("Node/{name}: {i}"))
                .collect();
            issues.extend(
                check_set(
                    &[&new],
                    &Existing {
                        resources: &listing.resources,
                        complete: true,
                    },
                )
                .iter()
                .map(|(_, i)| format!("Node/{name}: {i}")),
            );
            if !issues.is_empty() {
                return Err(crate::Lines(issues).into());
            }
            Ok(Step::Commit(
                Changes::write(vec![new], WriteMode::Apply, Some(listing.revision)),
                (),
            ))
        })
        .await
        .map_err(|e| conn::store_error(&ctx.cfg, e))??;
    Ok(done.outcomes.first().map(|o| o.change).unwrap_or(Change::Unchanged))
}

/// The agent flags for what `calicoctl` itself was given: the etcd TLS files, the
/// Docker socket (`--docker-host` / DOCKER_HOST) and the plugin directory. Paths are
/// made absolute: the daemonised agent does not run in the caller's directory.
fn handed_on(g: &GlobalOpts, args: &NodeArgs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let abs = |flag: &str, p: &Path| -> Result<String> {
        let a = std::path::absolute(p).with_context(|| format!("{flag} {}", p.display()))?;
        Ok(a.display().to_string())
    };
    if g.etcd_cert.is_some() != g.etcd_key.is_some() {
        bail!("--etcd-cert and --etcd-key go together");
    }
    for (flag, file) in [
        ("--etcd-ca", &g.etcd_ca),
        ("--etcd-cert", &g.etcd_cert),
        ("--etcd-key", &g.etcd_key),
    ] {
        if let Some(f) = file {
            // Checked here: the daemonised agent's complaint would only reach its log.
            std::fs::metadata(f).with_context(|| format!("{flag} {}", f.display()))?;
            out.push(flag.to_string());
            out.push(abs(flag, f)?);
        }
    }
    // dockerd may start after the agent: its socket need not exist yet.
    if let Some(h) = &g.docker_host {
        let path = h.strip_prefix("unix://").unwrap_or(h);
        if h != "none" && !h.starts_with("unix://") && !h.starts_with('/') {
            bail!("--docker-host must be unix:///PATH (or none), not '{h}'");
        }
        out.push("--docker-host".into());
        out.push(if h == "none" {
            h.clone()
        } else {
            format!("unix://{}", abs("--docker-host", Path::new(path))?)
        });
    }
    if let Some(d) = &args.plugin_dir {
        std::fs::create_dir_all(d).with_context(|| format!("--plugin-dir {}", d.display()))?;
        out.push("--plugin-dir".into());
        out.push(abs("--plugin-dir", d)?);
    }
    Ok(out)
}

async fn start(g: &GlobalOpts, args: &NodeArgs) -> Result<()> {
    let ip = args.ip.as_deref().ok_or_else(|| anyhow!("--ip is required"))?;
    let ipv4 = parse_addr("--ip", ip, true)?;
    let ipv6 = args.ip6.as_deref().map(|t| parse_addr("--ip6", t, false)).transpose()?;
    if args.as_number == Some(0) {
        bail!("--as: AS number 0 is reserved");
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    if !calico_schema::validate::is_valid_name(&name) {
        bail!("'{name}' is not a valid node name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric); give --name");
    }
    if let Some(ns) = &args.netns {
        if !ns.exists() {
            bail!("--netns {}: no such file", ns.display());
        }
    }
    if !args.http.is_empty() {
        args.http.parse::<SocketAddr>().map_err(|_| {
            anyhow!(
                "--http must be HOST:PORT (an IP address and a port), not '{}'",
                args.http
            )
        })?;
    }
    let binary = find_agent_binary()?;
    let run = RunDir(args.dirs.run_dir.clone());
    if let Some(pid) = run.agent().running() {
        bail!(
            "an agent is already running for {} (pid {pid}); stop it first with `calicoctl node stop --run-dir {}`",
            run.0.display(),
            run.0.display()
        );
    }
    std::fs::create_dir_all(&run.0).with_context(|| format!("create run dir {}", run.0.display()))?;

    // Register first: a Node that etcd refuses is better known before anything runs.
    let ctx = Ctx::connect(g).await?;
    let change = register(&ctx, &name, ipv4, ipv6, args.as_number).await?;
    let word = match change {
        Change::Created => "registered",
        Change::Updated => "updated",
        _ => "unchanged",
    };
    println!(
        "Node {name} {word}: ipv4 {ipv4}{}",
        ipv6.map(|a| format!(", ipv6 {a}")).unwrap_or_default()
    );

    let etcd = conn::endpoints(g);
    let timeout = g.timeout.ceil().max(1.0) as u64;
    let mut agent_args: Vec<String> = vec![
        "--name".into(),
        name.clone(),
        "--etcd".into(),
        etcd.clone(),
        "--timeout".into(),
        timeout.to_string(),
        "--run-dir".into(),
        run.0.display().to_string(),
        "--http".into(),
        args.http.clone(),
    ];
    if let Some(ns) = &args.netns {
        agent_args.push("--netns".into());
        agent_args.push(ns.display().to_string());
    }
    agent_args.extend(handed_on(g, args)?);
    let log_file = args.log_dir.join("calico-node.log");
    let mut record = AgentRecord {
        name: name.clone(),
        pid: 0,
        binary: binary.display().to_string(),
        args: agent_args.clone(),
        netns: args.netns.as_ref().map(|p| p.display().to_string()),
        run_dir: run.0.display().to_string(),
        log_file: (!args.foreground).then(|| log_file.display().to_string()),
        http: (!args.http.is_empty()).then(|| args.http.clone()),
        etcd,
        started: now_secs(),
    };

    let mut cmd = Command::new(&binary);
    cmd.args(&agent_args).stdin(Stdio::null());

    if args.foreground {
        record.pid = std::process::id();
        write_runtime(&run, &record)?;
        eprintln!("Running {} in the foreground (pid {})", binary.display(), record.pid);
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        let _ = std::fs::remove_file(run.agent_pid());
        return Err(anyhow!("exec {}: {err}", binary.display()));
    }

    std::fs::create_dir_all(&args.log_dir).with_context(|| format!("create log dir {}", args.log_dir.display()))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("open {}", log_file.display()))?;
    let _ = writeln!(
        log,
        "---- calicoctl node: starting {} {} (at {} s since the epoch)",
        binary.display(),
        agent_args.join(" "),
        record.started
    );
    cmd.stdout(log.try_clone()?).stderr(log);
    // A session of its own: no controlling terminal, and a Ctrl-C in the shell that ran
    // `calicoctl node` does not reach it.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("start {}", binary.display()))?;
    record.pid = child.id();
    write_runtime(&run, &record)?;

    // Wait for /healthz, or for the agent to die trying.
    let spawned = Instant::now();
    let deadline = spawned + HEALTH_WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(run.agent_pid());
            bail!(
                "{AGENT_BINARY} exited at once ({status}); the end of {}:\n{}",
                log_file.display(),
                tail(&log_file, 15)
            );
        }
        let healthy = if args.http.is_empty() {
            // Nothing to ask: alive after a moment is all we can tell.
            spawned.elapsed() >= Duration::from_secs(1)
        } else {
            matches!(
                http_get(&args.http, "/healthz", Duration::from_millis(500)),
                Ok((200, _))
            )
        };
        if healthy {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "{AGENT_BINARY} (pid {}) is running but its /healthz on {} did not answer within {}s; see {} (stop it with `calicoctl node stop --run-dir {}`)",
                record.pid,
                args.http,
                HEALTH_WAIT.as_secs(),
                log_file.display(),
                run.0.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("Started {AGENT_BINARY} for node {name} (pid {})", record.pid);
    if !args.http.is_empty() {
        println!("Health: http://{}/healthz", args.http);
    }
    println!("Log: {}", log_file.display());
    Ok(())
}

fn write_runtime(run: &RunDir, record: &AgentRecord) -> Result<()> {
    let pid_file = run.agent_pid();
    std::fs::write(&pid_file, format!("{}\n", record.pid)).with_context(|| format!("write {}", pid_file.display()))?;
    let rec = run.record();
    let text = serde_json::to_string_pretty(record)?;
    std::fs::write(&rec, text + "\n").with_context(|| format!("write {}", rec.display()))?;
    Ok(())
}

// ------------------------------------------------------------------ node stop

async fn stop(g: &GlobalOpts, args: &NodeStopArgs) -> Result<()> {
    let run = RunDir(args.dirs.run_dir.clone());
    let agent = run.agent();
    let bird = run.bird();
    if agent.running().is_none() && bird.running().is_none() {
        let why = match &agent {
            ProcState::NoPidFile => format!("no {}", run.agent_pid().display()),
            ProcState::BadPidFile(t) => format!("{} holds '{t}', not a pid", run.agent_pid().display()),
            ProcState::Stale(p) => format!("pid {p} from {} is not running", run.agent_pid().display()),
            ProcState::Running(_) => unreachable!(),
        };
        // Stale pid files would only mislead `status`. The record stays: it still says
        // which node, namespace and log the last agent had (for `status` and `diags`).
        for f in [run.agent_pid(), run.bird_pid()] {
            let _ = std::fs::remove_file(f);
        }
        bail!("no {AGENT_BINARY} agent is running for {} ({why})", run.0.display());
    }

    let name = node_name(args.name.as_deref(), &run)?;
    match containers_on(g, &name).await {
        Ok(names) if !names.is_empty() && !args.force => bail!(
            "Containers remain on node {name}: {}; delete them first, or use --force",
            names.join(", ")
        ),
        Ok(names) if !names.is_empty() => {
            eprintln!(
                "warning: stopping with Containers still on node {name}: {}",
                names.join(", ")
            );
        }
        Ok(_) => {}
        Err(e) if !args.force => {
            return Err(e.context(format!(
                "cannot check for Containers on node {name}; use --force to stop anyway"
            )))
        }
        Err(e) => eprintln!("warning: cannot check for Containers on node {name}: {e:#}"),
    }

    if let Some(pid) = agent.running() {
        println!("{}", terminate(pid, AGENT_BINARY, AGENT_STOP_WAIT)?);
    } else {
        println!("{AGENT_BINARY} is not running");
    }
    // The agent may leave BIRD running (so routes survive an agent restart): stopping the
    // node stops it too. Read its pid file again: the agent may have stopped it already.
    match run.bird().running() {
        Some(pid) => println!("{}", terminate(pid, "bird", BIRD_STOP_WAIT)?),
        None => println!("bird is not running"),
    }
    for f in [run.agent_pid(), run.bird_pid()] {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}

/// The names of the Containers on `node`.
async fn containers_on(g: &GlobalOpts, node: &str) -> Result<Vec<String>> {
    let ctx = Ctx::connect(g).await?;
    let listing = ctx.call("list", ctx.store.list(Some(Kind::Container))).await?;
    Ok(listing
        .resources
        .iter()
        .filter_map(|r| match r {
            Resource::Container(c) if c.spec.node == node => Some(c.metadata.name.clone()),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("--ip", "10.0.0.1", true).unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(
            parse_addr("--ip", "10.0.0.1/24", true).unwrap().to_string(),
            "10.0.0.1/24"
        );
        assert!(parse_addr("--ip", "fd00::1", true).is_err());
        assert!(parse_addr("--ip", "127.0.0.1", true).is_err());
        assert_eq!(
            parse_addr("--ip6", "fd00::1", false).unwrap().to_string(),
            "fd00::1/128"
        );
        assert!(parse_addr("--ip6", "10.0.0.1", false).is_err());
    }

    #[test]
    fn own_process_is_alive_and_pid_files_are_judged() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        let dir = std::env::temp_dir().join(format!("calicoctl-node-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = RunDir(dir.clone());
        assert_eq!(run.agent(), ProcState::NoPidFile);
        std::fs::write(run.agent_pid(), "x").unwrap();
        assert!(matches!(run.agent(), ProcState::BadPidFile(_)));
        // Our own pid is alive but not a calico-node.
        std::fs::write(run.agent_pid(), std::process::id().to_string()).unwrap();
        assert_eq!(run.agent(), ProcState::Stale(std::process::id() as i32));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
