//! `calicoctl master`: the cluster controller.
//!
//! Several masters may run; one leads. Leadership is an etcd key,
//! `/calico/v1/master/leader`, created only when absent (a transaction comparing its
//! version with 0) and bound to a lease the leader keeps alive. When the leader dies its
//! lease expires, etcd deletes the key, and a waiting master creates it.
//!
//! Only the leader acts: it runs the directory sync (`--sync-dir`) and the IPAM garbage
//! collection. It stops acting as soon as it cannot prove its lease is still alive (a
//! lease renewed at time t lives at least until t + TTL), before any other master can
//! take over, so two masters never collect the same garbage.
//!
//! IPAM garbage, collected after `--gc-grace` (a just-created Container whose resource is
//! not visible yet is never robbed: its handle must look orphaned for the whole grace
//! period, and the Container is looked up once more right before the release):
//! - addresses of handles `container/<name>` whose Container resource is gone;
//! - blocks affine to Nodes that are gone (and the addresses recorded for such a Node,
//!   unless a Container still names it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use calico_schema::{Kind, Resource};
use calico_store::election::{self, margin, Fence, Lease};
use calico_store::ipam::{container_handle, Ipam};
use calico_store::Store;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::args::parse_duration;
use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::in_docker::{self, Component};
use crate::sync::{self, Syncer};

/// The election key.
pub const LEADER_KEY: &str = "/calico/v1/master/leader";

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MasterArgs {
    #[command(subcommand)]
    pub command: Option<MasterCommand>,
    /// This master's address: its identity in the election (shown as the leader)
    #[arg(long, value_name = "IP", required = true)]
    pub ip: Option<IpAddr>,
    /// A name for this master [default: the host name]
    #[arg(long)]
    pub name: Option<String>,
    /// Keep this directory applied while leading (as `calicoctl sync --dir`)
    #[arg(long = "sync-dir", value_name = "DIR")]
    pub sync_dir: Option<PathBuf>,
    /// The sync's id; give the same one to every master [default: derived from the
    /// directory's path, as `sync` does]
    #[arg(long = "sync-id", value_name = "ID", requires = "sync_dir")]
    pub sync_id: Option<String>,
    /// Delete resources the sync owns whose documents are gone
    #[arg(long, requires = "sync_dir")]
    pub prune: bool,
    /// Let the sync take over unowned resources its documents name
    #[arg(long, requires = "sync_dir")]
    pub adopt: bool,
    /// How often the sync compares etcd with the directory
    #[arg(long = "sync-interval", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub sync_interval: Duration,
    /// Seconds a leader's lease lives without renewal: how long a dead leader keeps the
    /// others waiting
    #[arg(long = "lease-ttl", default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl: u64,
    /// How long an IPAM handle or block must look orphaned before it is collected
    #[arg(long = "gc-grace", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub gc_grace: Duration,
    /// How often the leader looks for IPAM garbage
    #[arg(long = "gc-interval", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub gc_interval: Duration,
    /// Run the master as the Docker container `calico-master` in the dockerd of
    /// --docker-host (host network, restarted unless stopped) instead of in this process
    #[arg(long)]
    pub docker: bool,
    /// The master's image for --docker [default: calico-docker/master:VERSION, built by
    /// scripts/build-images.sh]
    #[arg(long, value_name = "IMAGE", requires = "docker")]
    pub master_image: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum MasterCommand {
    /// Stop and remove the `calico-master` container (`master --docker`)
    Stop,
    /// The `calico-master` container's state and which master leads
    Status,
}

/// The container `master --docker` runs.
pub const MASTER_CONTAINER: &str = "calico-master";

/// The leader key's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderInfo {
    pub name: String,
    pub ip: IpAddr,
    pub host: String,
    pub pid: u32,
    /// Unix seconds when it took the lead.
    pub since: u64,
}

/// Garbage-collection memory: when each candidate was first seen orphaned.
#[derive(Default)]
struct Gc {
    handles: HashMap<String, Instant>,
    nodes: HashMap<String, Instant>,
}

fn name_of(h: &str) -> Option<&str> {
    h.strip_prefix("container/")
}

impl Gc {
    /// One collection pass. Acts only while `fence` holds.
    async fn pass(&mut self, store: &Store, ipam: &Ipam, grace: Duration, fence: &Fence) -> Result<()> {
        let listing = store.list(None).await?;
        let mut containers = BTreeSet::new();
        let mut nodes = BTreeSet::new();
        let mut pools = Vec::new();
        let mut users_of_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &listing.resources {
            match r {
                Resource::Container(c) => {
                    containers.insert(c.metadata.name.clone());
                    users_of_node
                        .entry(c.spec.node.clone())
                        .or_default()
                        .push(c.metadata.name.clone());
                }
                Resource::Node(n) => {
                    nodes.insert(n.metadata.name.clone());
                }
                Resource::IpPool(p) => pools.push(p.clone()),
                _ => {}
            }
        }
        let live: BTreeSet<String> = containers.iter().map(|c| container_handle(c)).collect();
        let report = ipam.check(&live, &pools).await?;
        let now = Instant::now();

        // 1. Handles of Containers that are gone.
        let mut dead: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (ip, h) in &report.leaked {
            if name_of(h).is_some() {
                dead.entry(h.clone()).or_default().push(*ip);
            }
        }
        for (h, _) in &report.dangling_handles {
            if name_of(h).is_some_and(|n| !containers.contains(n)) {
                dead.entry(h.clone()).or_default();
            }
        }
        self.handles.retain(|h, _| dead.contains_key(h));
        for (h, ips) in &dead {
            let since = *self.handles.entry(h.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                debug!(handle = %h, "orphaned handle inside its grace period");
                continue;
            }
            if !fence.valid() {
                return Ok(());
            }
            let name = name_of(h).unwrap_or_default();
            // Once more, right before acting: the Container may have just appeared.
            if store.get(Kind::Container, name).await?.is_some() {
                self.handles.remove(h);
                continue;
            }
            let mut released = ipam.release_handle(h).await?;
            // Allocations left in blocks without a handle record: release them one by one.
            for ip in ips {
                if released.contains(ip) {
                    continue;
                }
                match ipam.release_ip(*ip).await? {
                    Some(holder) if holder == *h => released.push(*ip),
                    Some(holder) => warn!(%ip, %holder, handle = %h, "address changed hands before it was collected"),
                    None => {}
                }
            }
            released.sort();
            let list: Vec<String> = released.iter().map(ToString::to_string).collect();
            info!(handle = %h, addresses = %list.join(","), "gc: released the addresses of Container {name}, which is gone");
            self.handles.remove(h);
        }

        // 2. Blocks (and addresses) of Nodes that are gone.
        let blocks = ipam.all_blocks().await?;
        let mut affine: BTreeMap<String, (usize, usize)> = BTreeMap::new(); // node -> (blocks, empty blocks)
        for b in &blocks {
            if let Some(n) = &b.affinity {
                let e = affine.entry(n.clone()).or_default();
                e.0 += 1;
                if b.allocated == 0 {
                    e.1 += 1;
                }
            }
        }
        let gone: BTreeMap<String, (usize, usize)> = affine.into_iter().filter(|(n, _)| !nodes.contains(n)).collect();
        self.nodes.retain(|n, _| gone.contains_key(n));
        for (n, (count, empty)) in &gone {
            let since = *self.nodes.entry(n.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            if !fence.valid() {
                return Ok(());
            }
            if store.get(Kind::Node, n).await?.is_some() {
                self.nodes.remove(n);
                continue;
            }
            match users_of_node.get(n) {
                Some(users) => {
                    // Their addresses stay (a Container keeps its IP while it exists);
                    // only the Node's empty blocks go.
                    if *empty > 0 {
                        ipam.release_node(n, false).await?;
                        info!(node = %n, blocks = empty, "gc: released the empty blocks of Node {n}, which is gone");
                    }
                    debug!(node = %n, containers = ?users, "Node is gone but Containers still name it; their addresses stay");
                }
                None => {
                    ipam.release_node(n, true).await?;
                    info!(node = %n, blocks = count, "gc: released the blocks and addresses of Node {n}, which is gone");
                    self.nodes.remove(n);
                }
            }
        }
        Ok(())
    }
}

async fn gc_loop(store: Store, grace: Duration, every: Duration, fence: Fence) {
    let ipam = Ipam::new(store.client(), store.config().timeout);
    let mut gc = Gc::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A staged write whose writer died blocks every writer until it is rolled
        // back; the next writer would do it, but a quiet cluster may have none.
        if fence.valid() {
            match store.clear_stale_intent().await {
                Ok(true) => info!("rolled back a staged write whose writer is gone"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot roll back a dead writer's staged write; retrying on the next pass"),
            }
        }
        if let Err(e) = gc.pass(&store, &ipam, grace, &fence).await {
            warn!(error = %format!("{e:#}"), "IPAM garbage collection pass failed; retrying on the next one");
        }
    }
}

/// What the leader does until leadership ends.
async fn lead(store: &Store, a: &MasterArgs, me: &LeaderInfo, lease: &Lease) -> String {
    let client = store.client();
    let call = store.config().timeout;
    let fence = Fence::new(lease.granted + lease.ttl - margin(lease.ttl));
    let sync_task = async {
        match &a.sync_dir {
            Some(dir) => {
                let id = match sync::resolve_id(a.sync_id.as_deref(), dir) {
                    Ok(id) => id,
                    Err(e) => {
                        warn!(error = %e, "cannot run the sync");
                        return std::future::pending().await;
                    }
                };
                let runner = format!("master {} ({}, pid {} on {})", me.name, me.ip, me.pid, me.host);
                let s = Syncer::new(store.clone(), dir.clone(), id, a.prune, a.adopt, runner).await;
                s.run(a.sync_interval, Duration::from_millis(200)).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        why = election::keep_leading(&client, LEADER_KEY, lease, &fence, call) => why,
        _ = sync_task => "the sync stopped".into(),
        _ = gc_loop(store.clone(), a.gc_grace, a.gc_interval, fence.clone()) => "the garbage collector stopped".into(),
    }
}

pub async fn run(g: &GlobalOpts, a: &MasterArgs) -> Result<()> {
    match a.command {
        Some(MasterCommand::Stop) => return stop(g).await,
        Some(MasterCommand::Status) => return status(g).await,
        None => {}
    }
    let ip = a.ip.ok_or_else(|| anyhow!("--ip is required"))?;
    if a.docker {
        return start_in_docker(g, a, ip).await;
    }
    sync::init_logging("info");
    if let Some(id) = &a.sync_id {
        sync::status::check_id(id)?;
    }
    let ctx = Ctx::connect(g).await?;
    let store = ctx.store.clone();
    let client = store.client();
    let host = sync::hostname();
    let me = LeaderInfo {
        name: a
            .name
            .clone()
            .unwrap_or_else(|| if host.is_empty() { ip.to_string() } else { host.clone() }),
        ip,
        host,
        pid: std::process::id(),
        since: 0,
    };
    info!(name = %me.name, ip = %me.ip, lease_ttl = a.lease_ttl, "master started");
    let stop = sync::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let lease = tokio::select! {
            l = election::campaign(&client, LEADER_KEY, || leader_value(&me), describe_leader, a.lease_ttl, ctx.cfg.timeout) => l,
            _ = &mut stop => return Ok(()),
        };
        info!(name = %me.name, ip = %me.ip, lease = lease.id, "leading: this master now runs the sync and IPAM garbage collection");
        let why = tokio::select! {
            why = lead(&store, a, &me, &lease) => why,
            _ = &mut stop => {
                // Hand over at once rather than after the TTL.
                election::revoke(&client, &lease, ctx.cfg.timeout).await;
                info!("stopped; leadership released");
                return Ok(());
            }
        };
        warn!(reason = %why, "no longer leading; stopped the sync and garbage collection, waiting to lead again");
        election::revoke(&client, &lease, ctx.cfg.timeout).await;
    }
}

/// The leader key's value: who leads, since now.
fn leader_value(me: &LeaderInfo) -> Vec<u8> {
    let mut info = me.clone();
    info.since = calico_schema::now_secs();
    serde_json::to_vec(&info).unwrap_or_default()
}

fn describe_leader(value: &[u8]) -> String {
    serde_json::from_slice::<LeaderInfo>(value)
        .map(|l| format!("{} ({}, pid {} on {})", l.name, l.ip, l.pid, l.host))
        .unwrap_or_else(|_| "an unknown master".into())
}

// ------------------------------------------------------------------ in Docker

/// The `calicoctl master` command line a container runs: this one's flags, etcd's
/// connection and absolute paths (the container sees host paths at the same place).
fn container_args(g: &GlobalOpts, a: &MasterArgs, ip: IpAddr) -> Result<(Vec<String>, in_docker::Mounts)> {
    let abs = |p: &std::path::Path| -> Result<String> {
        Ok(std::path::absolute(p)
            .with_context(|| p.display().to_string())?
            .display()
            .to_string())
    };
    let mut args: Vec<String> = vec![
        "--etcd".into(),
        crate::conn::endpoints(g),
        "--timeout".into(),
        g.timeout.to_string(),
    ];
    let mut mounts = Vec::new();
    for (flag, file) in [
        ("--etcd-ca", &g.etcd_ca),
        ("--etcd-cert", &g.etcd_cert),
        ("--etcd-key", &g.etcd_key),
    ] {
        if let Some(f) = file {
            std::fs::metadata(f).with_context(|| format!("{flag} {}", f.display()))?;
            args.extend([flag.to_string(), abs(f)?]);
            mounts.push((abs(f)?, true));
        }
    }
    args.extend(["master".into(), "--ip".into(), ip.to_string()]);
    if let Some(n) = &a.name {
        args.extend(["--name".into(), n.clone()]);
    }
    if let Some(dir) = &a.sync_dir {
        if !dir.is_dir() {
            bail!("--sync-dir {}: not a directory", dir.display());
        }
        let dir = abs(dir)?;
        args.extend(["--sync-dir".into(), dir.clone()]);
        // The sync id defaults to one derived from the path: the same path inside.
        mounts.push((dir, true));
        if let Some(id) = &a.sync_id {
            args.extend(["--sync-id".into(), id.clone()]);
        }
        if a.prune {
            args.push("--prune".into());
        }
        if a.adopt {
            args.push("--adopt".into());
        }
        args.extend(["--sync-interval".into(), format!("{}ms", a.sync_interval.as_millis())]);
    }
    args.extend([
        "--lease-ttl".into(),
        a.lease_ttl.to_string(),
        "--gc-grace".into(),
        format!("{}ms", a.gc_grace.as_millis()),
        "--gc-interval".into(),
        format!("{}ms", a.gc_interval.as_millis()),
    ]);
    Ok((args, mounts))
}

async fn start_in_docker(g: &GlobalOpts, a: &MasterArgs, ip: IpAddr) -> Result<()> {
    if let Some(id) = &a.sync_id {
        sync::status::check_id(id)?;
    }
    let (args, mounts) = container_args(g, a, ip)?;
    let (docker, host) = in_docker::connect(g.docker_host.as_deref()).await?;
    let component = Component {
        kind: "master",
        name: MASTER_CONTAINER.into(),
        image: a
            .master_image
            .clone()
            .unwrap_or_else(|| in_docker::default_image("master")),
        args,
        mounts,
    };
    let st = in_docker::start(&docker, &host, &component).await?;
    // A master that cannot reach etcd or refuses its flags exits at once: say so here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    match in_docker::state(&docker, MASTER_CONTAINER).await? {
        Some(now) if now.running && now.restarts == 0 => {}
        Some(now) => bail!(
            "container {MASTER_CONTAINER} did not stay up ({}); its last output:\n{}",
            now.describe(MASTER_CONTAINER),
            in_docker::logs(&docker, MASTER_CONTAINER, 15).await
        ),
        None => bail!("container {MASTER_CONTAINER} is gone"),
    }
    println!(
        "Started the master in container {MASTER_CONTAINER} (image {}, pid {}) in dockerd at {host}",
        component.image, st.pid
    );
    println!("Log: `docker logs {MASTER_CONTAINER}`; state: `calicoctl master status`");
    Ok(())
}

async fn stop(g: &GlobalOpts) -> Result<()> {
    let (docker, host) = in_docker::connect(g.docker_host.as_deref()).await?;
    let Some(st) = in_docker::state(&docker, MASTER_CONTAINER).await? else {
        bail!(
            "no {MASTER_CONTAINER} container in dockerd at {host} (a master run in the foreground stops with Ctrl-C or SIGTERM)"
        );
    };
    in_docker::remove(&docker, MASTER_CONTAINER, Duration::from_secs(10)).await?;
    println!(
        "Stopped and removed container {MASTER_CONTAINER} ({} before) in dockerd at {host}",
        st.status
    );
    Ok(())
}

/// The container (if Docker can be asked) and the leader (if etcd can be): exit 0
/// when this host's master container runs.
async fn status(g: &GlobalOpts) -> Result<()> {
    let mut running = false;
    match in_docker::connect(g.docker_host.as_deref()).await {
        Ok((docker, host)) => match in_docker::state(&docker, MASTER_CONTAINER).await {
            Ok(Some(st)) => {
                running = st.running;
                println!("container: {}", st.describe(MASTER_CONTAINER));
            }
            Ok(None) => println!("container: none ({MASTER_CONTAINER} is not in dockerd at {host})"),
            Err(e) => println!("container: unknown ({e:#})"),
        },
        Err(e) => println!("container: unknown ({e:#})"),
    }
    match Ctx::connect(g).await {
        Ok(ctx) => match election::leader(&ctx.store.client(), LEADER_KEY, ctx.cfg.timeout).await {
            Ok(Some(v)) => match serde_json::from_slice::<LeaderInfo>(&v) {
                Ok(l) => println!(
                    "leader:    {} ({}, pid {} on {}), leading for {}",
                    l.name,
                    l.ip,
                    l.pid,
                    l.host,
                    crate::status::age(l.since).trim_end_matches(" ago")
                ),
                Err(_) => println!("leader:    an unknown master ({LEADER_KEY} is not a master's record)"),
            },
            Ok(None) => println!("leader:    none (no master leads)"),
            Err(e) => println!("leader:    unknown ({e})"),
        },
        Err(e) => println!("leader:    unknown ({e:#})"),
    }
    if !running {
        bail!("the {MASTER_CONTAINER} container is not running");
    }
    Ok(())
}
