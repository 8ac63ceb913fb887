//! `calicoctl node --ip IP ...` (register the Node, start the `calico-node` agent) and
//! `calicoctl node stop` (stop the agent and its BIRD).
//!
//! The run directory's files are `run_dir`'s, the processes `agent_proc`'s; this module
//! decides what to start and stop. The agent's log is `<log-dir>/calico-node.log`
//! (default /var/log/calico).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use calico_schema::validate::{check_resource, check_set, Existing};
use calico_schema::{docker_host_of, docker_socket, object, IfaceAddr, Kind, NodeSpec, Resource};
use calico_store::{Change, Changes, Step, WriteMode};
use clap::{Args, Subcommand};

use crate::agent_http::{self, DEFAULT_HTTP};
use crate::agent_proc::{agent_log, find_agent_binary, tail, terminate, ProcState, AGENT_BINARY, DEFAULT_LOG_DIR};
use crate::cli::GlobalOpts;
use crate::conn::{self, Ctx};
use crate::hostcmd::hostname;
use crate::in_docker::{self, Component};
use crate::output::sync_owner;
use crate::run_dir::{node_name, AgentFiles, AgentRecord, ContainerRecord, RunDir, RunDirArg};

/// Where dockerd looks for plugin sockets (the agent's default --plugin-dir).
const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";

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
    #[arg(long, conflicts_with = "docker")]
    pub foreground: bool,
    /// Run the agent (and its BIRD) as a Docker container, `calico-node-NAME`, in the
    /// dockerd of --docker-host: host network and pid namespace, network capabilities,
    /// restarted unless stopped
    #[arg(long, conflicts_with = "netns")]
    pub docker: bool,
    /// The agent's image for --docker [default: calico-docker/node:VERSION, built by
    /// scripts/build-images.sh]
    #[arg(long, value_name = "IMAGE", requires = "docker")]
    pub node_image: Option<String>,
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

// ------------------------------------------------------------------ node

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
        out.push("--docker-host".into());
        out.push(if h == "none" {
            h.clone()
        } else {
            let socket =
                docker_socket(h).map_err(|_| anyhow!("--docker-host must be unix:///PATH (or none), not '{h}'"))?;
            docker_host_of(Path::new(&abs("--docker-host", socket)?))
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
    // A containerised agent is the image's binary, not one next to calicoctl.
    let binary = if args.docker {
        PathBuf::from(format!("/usr/bin/{AGENT_BINARY}"))
    } else {
        find_agent_binary()?
    };
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
    let log_file = agent_log(&args.log_dir);
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
        started: calico_schema::now_secs(),
        container: None,
    };
    if args.docker {
        return start_in_docker(g, args, agent_args, record, &run).await;
    }

    let mut cmd = Command::new(&binary);
    cmd.args(&agent_args).stdin(Stdio::null());

    if args.foreground {
        record.pid = std::process::id();
        run.write_runtime(&record)?;
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
    run.write_runtime(&record)?;

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
                agent_http::get(&args.http, "/healthz", Duration::from_millis(500)).await,
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("Started {AGENT_BINARY} for node {name} (pid {})", record.pid);
    if !args.http.is_empty() {
        println!("Health: http://{}/healthz", args.http);
    }
    println!("Log: {}", log_file.display());
    Ok(())
}

/// `node --docker`: the agent as the container `calico-node-NAME` in the dockerd of
/// --docker-host, its log appended to the same file as a host process's.
async fn start_in_docker(
    g: &GlobalOpts,
    args: &NodeArgs,
    mut agent_args: Vec<String>,
    mut record: AgentRecord,
    run: &RunDir,
) -> Result<()> {
    let (docker, host) = in_docker::connect(g.docker_host.as_deref()).await?;
    let abs = |p: &Path| -> Result<String> {
        Ok(std::path::absolute(p)
            .with_context(|| format!("{}", p.display()))?
            .display()
            .to_string())
    };
    let log_file = agent_log(&args.log_dir);
    std::fs::create_dir_all(&args.log_dir).with_context(|| format!("create log dir {}", args.log_dir.display()))?;
    let plugin_dir = args
        .plugin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGIN_DIR));
    std::fs::create_dir_all(&plugin_dir).with_context(|| format!("create {}", plugin_dir.display()))?;
    let socket = docker_socket(&host).map_err(|_| anyhow!("--docker-host must be unix:///PATH, not '{host}'"))?;
    agent_args.extend(["--log-file".into(), abs(&log_file)?]);
    if g.docker_host.is_none() {
        // The agent's own default would do, but say it: it is what the mount below is.
        agent_args.extend(["--docker-host".into(), docker_host_of(Path::new(&abs(socket)?))]);
    }
    let mut mounts = vec![
        (abs(&run.0)?, false),
        (abs(&args.log_dir)?, false),
        (abs(&plugin_dir)?, false),
        (abs(socket)?, false),
    ];
    for f in [&g.etcd_ca, &g.etcd_cert, &g.etcd_key].into_iter().flatten() {
        mounts.push((abs(f)?, true));
    }
    mounts.sort();
    mounts.dedup_by(|a, b| a.0 == b.0);
    let component = Component {
        kind: "node",
        name: format!("calico-node-{}", record.name),
        image: args
            .node_image
            .clone()
            .unwrap_or_else(|| in_docker::default_image("node")),
        args: agent_args,
        mounts,
    };
    // The agent writes its own pid file when it starts: a stale one must not pass for it.
    let _ = std::fs::remove_file(run.agent_pid());
    let started = in_docker::start(&docker, &host, &component).await?;
    record.pid = u32::try_from(started.pid).unwrap_or(0);
    record.log_file = Some(log_file.display().to_string());
    record.container = Some(ContainerRecord {
        name: component.name.clone(),
        image: component.image.clone(),
        docker_host: host.clone(),
    });
    {
        let rec = run.record();
        let text = serde_json::to_string_pretty(&record)?;
        std::fs::write(&rec, text + "\n").with_context(|| format!("write {}", rec.display()))?;
    }

    let deadline = Instant::now() + HEALTH_WAIT;
    loop {
        let st = in_docker::state(&docker, &component.name).await?;
        match &st {
            None => bail!("container {} is gone (removed by someone else?)", component.name),
            Some(st) if !st.running => bail!(
                "container {} stopped at once ({}, exit code {}); its last output:\n{}",
                component.name,
                st.status,
                st.exit_code,
                in_docker::logs(&docker, &component.name, 15).await
            ),
            Some(_) => {}
        }
        let healthy = if args.http.is_empty() {
            run.agent().running().is_some()
        } else {
            matches!(
                agent_http::get(&args.http, "/healthz", Duration::from_millis(500)).await,
                Ok((200, _))
            )
        };
        if healthy {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "container {} is running but the agent's /healthz on {} did not answer within {}s; see `docker logs {}` (stop it with `calicoctl node stop --run-dir {}`)",
                component.name,
                args.http,
                HEALTH_WAIT.as_secs(),
                component.name,
                run.0.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = match run.agent() {
        ProcState::Running(p) => p.to_string(),
        _ => started.pid.to_string(),
    };
    println!(
        "Started {AGENT_BINARY} for node {} in container {} (image {}, pid {pid})",
        record.name, component.name, component.image
    );
    if !args.http.is_empty() {
        println!("Health: http://{}/healthz", args.http);
    }
    println!("Log: {} (and `docker logs {}`)", log_file.display(), component.name);
    Ok(())
}

// ------------------------------------------------------------------ node stop

async fn stop(g: &GlobalOpts, args: &NodeStopArgs) -> Result<()> {
    let run = RunDir(args.dirs.run_dir.clone());
    if let Some(c) = run.read_record().and_then(|r| r.container) {
        let (docker, host) = in_docker::connect(Some(&c.docker_host))
            .await
            .with_context(|| format!("the agent runs in container {}", c.name))?;
        if let Some(st) = in_docker::state(&docker, &c.name).await? {
            let name = node_name(args.name.as_deref(), &run)?;
            check_containers(g, &name, args.force).await?;
            in_docker::remove(&docker, &c.name, AGENT_STOP_WAIT).await?;
            println!(
                "Stopped and removed container {} ({} before; {AGENT_BINARY} and bird with it) in dockerd at {host}",
                c.name, st.status
            );
            for f in [run.agent_pid(), run.bird_pid()] {
                let _ = std::fs::remove_file(f);
            }
            return Ok(());
        }
        // Removed by hand: what is left to judge are the pid files.
    }
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
    check_containers(g, &name, args.force).await?;

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

/// Refuses (unless `force`) while Containers remain on the node or etcd cannot say.
async fn check_containers(g: &GlobalOpts, name: &str, force: bool) -> Result<()> {
    match containers_on(g, name).await {
        Ok(names) if !names.is_empty() && !force => bail!(
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
        Err(e) if !force => {
            return Err(e.context(format!(
                "cannot check for Containers on node {name}; use --force to stop anyway"
            )))
        }
        Err(e) => eprintln!("warning: cannot check for Containers on node {name}: {e:#}"),
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
}
