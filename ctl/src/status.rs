//! `calicoctl status`: this host's agent (process, health, what it last reported to
//! etcd), its BGP sessions as BIRD sees them, and the Containers it programmed.
//!
//! Each part is gathered on its own, so a part that cannot be had (agent down, BIRD
//! down, etcd away) is reported as such and the others are still shown. BIRD is asked
//! through its control socket (`birdc`), so this works when the agent runs its
//! dataplane in another network namespace.
//!
//! Exit status: 0 when the agent is running, 1 when it is not (after printing the rest).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use calico_schema::now_secs;
use calico_schema::{AgentStatus, ContainerStatus, EndpointState, Resource};
use clap::Args;

use crate::agent_http;
use crate::agent_proc::{ProcState, AGENT_BINARY};
use crate::birdc::birdc;
use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::in_docker;
use crate::observed::{agent_status, agent_status_key, container_status};
use crate::output::table;
use crate::run_dir::{node_name, AgentFiles, RunDir, RunDirArg};

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The Node [default: the one the agent was started for, else the hostname]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub dirs: RunDirArg,
}

/// One protocol of `birdc show protocols all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    pub proto: String,
    pub state: String,
    pub since: String,
    pub info: String,
    pub description: Option<String>,
    pub bgp_state: Option<String>,
    pub neighbor: Option<String>,
    pub last_error: Option<String>,
    pub local_as: Option<u32>,
    pub neighbor_as: Option<u32>,
}

/// `show protocols all` (and plain `show protocols`) as `status` prints it: parsed by
/// the shared parser, with the info column's runs of spaces folded for the table.
pub fn parse_protocols(text: &str) -> Vec<Protocol> {
    calico_schema::birdc::parse_protocols(text)
        .into_iter()
        .map(|p| {
            let (bgp_state, neighbor, last_error, local_as, neighbor_as) = match p.bgp {
                Some(b) => (
                    Some(b.state),
                    b.neighbor_address.map(|a| a.to_string()),
                    b.last_error,
                    b.local_as,
                    b.neighbor_as,
                ),
                None => (None, None, None, None, None),
            };
            Protocol {
                name: p.name,
                proto: p.proto,
                state: p.state,
                since: p.since,
                info: p.info.split_whitespace().collect::<Vec<_>>().join(" "),
                description: p.description,
                bgp_state,
                neighbor,
                last_error,
                local_as,
                neighbor_as,
            }
        })
        .collect()
}

/// The kind of a BGP session, from the protocol names bird.conf uses (calico-render:
/// `Mesh_*`, `Rr_*`, `Peer_*`) and, for peers, whether the BGPPeer names nodes.
fn session_type(p: &Protocol, peers: Option<&BTreeMap<String, bool>>) -> String {
    if p.name.starts_with("Mesh_") {
        return "node-to-node mesh".into();
    }
    if p.name.starts_with("Rr_") {
        return "route reflector".into();
    }
    if p.name.starts_with("Peer_") {
        let peer = p.description.as_deref().and_then(|d| d.strip_prefix("BGPPeer "));
        return match (peer, peers) {
            (Some(name), Some(map)) => match map.get(name) {
                Some(true) => format!("node-specific ({name})"),
                Some(false) => format!("global ({name})"),
                None => format!("BGP peer ({name})"),
            },
            (Some(name), None) => format!("BGP peer ({name})"),
            _ => "BGP peer".into(),
        };
    }
    "BGP".into()
}

/// iBGP or eBGP with the AS numbers, from BIRD's own `Local AS` and `Neighbor AS`
/// (what it runs, not what etcd asks for): `iBGP 64511`, `eBGP 64512-64513` (local
/// first); empty when BIRD does not say.
fn bgp_kind(p: &Protocol) -> String {
    match (p.local_as, p.neighbor_as) {
        (Some(l), Some(n)) if l == n => format!("iBGP {l}"),
        (Some(l), Some(n)) => format!("eBGP {l}-{n}"),
        _ => String::new(),
    }
}

pub fn age(secs: u64) -> String {
    let d = now_secs().saturating_sub(secs);
    match d {
        0..=119 => format!("{d}s ago"),
        120..=7199 => format!("{}m ago", d / 60),
        _ => format!("{}h ago", d / 3600),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// What etcd knows, or why it could not be asked.
struct FromEtcd {
    report: Result<Option<AgentStatus>, String>,
    containers: Vec<String>,
    statuses: BTreeMap<String, ContainerStatus>,
    /// BGPPeer name -> whether it is node-specific.
    peers: BTreeMap<String, bool>,
}

async fn from_etcd(g: &GlobalOpts, name: &str) -> Result<FromEtcd> {
    let ctx = Ctx::connect(g).await?;
    let report = agent_status(&ctx, name).await.map_err(|e| format!("{e:#}"));
    let listing = ctx.call("list", ctx.store.list(None)).await?;
    let mut containers = Vec::new();
    let mut peers = BTreeMap::new();
    for r in &listing.resources {
        match r {
            Resource::Container(c) if c.spec.node == name => containers.push(c.metadata.name.clone()),
            Resource::BgpPeer(p) => {
                peers.insert(
                    p.metadata.name.clone(),
                    p.spec.node.is_some() || p.spec.node_selector.is_some(),
                );
            }
            _ => {}
        }
    }
    let statuses = container_status(&ctx).await?;
    Ok(FromEtcd {
        report,
        containers,
        statuses,
        peers,
    })
}

pub async fn run(g: &GlobalOpts, args: &StatusArgs) -> Result<()> {
    let run = RunDir(args.dirs.run_dir.clone());
    let name = node_name(args.name.as_deref(), &run)?;
    let record = run.read_record().filter(|r| r.name == name);
    let agent = run.agent();
    let etcd = from_etcd(g, &name).await;

    // ---- the agent
    let mut out = format!("Agent for node {name} (run dir {})\n", run.0.display());
    let process = match &agent {
        ProcState::Running(pid) => format!("running, pid {pid}"),
        ProcState::NoPidFile => format!("not running (no {})", run.agent_pid().display()),
        ProcState::BadPidFile(t) => format!("unknown ({} holds '{t}')", run.agent_pid().display()),
        ProcState::Stale(pid) => format!("not running (pid {pid} from the pid file is gone)"),
    };
    let mut rows: Vec<(&str, String)> = vec![("process", process)];
    if let Some(c) = record.as_ref().and_then(|r| r.container.as_ref()) {
        let state = match in_docker::connect(Some(&c.docker_host)).await {
            Ok((docker, _)) => match in_docker::state(&docker, &c.name).await {
                Ok(Some(st)) => st.describe(&c.name),
                Ok(None) => format!("{} (no such container in dockerd at {})", c.name, c.docker_host),
                Err(e) => format!("{}: unknown ({e:#})", c.name),
            },
            Err(e) => format!("{}: unknown ({e:#})", c.name),
        };
        rows.push(("container", state));
    }
    let report = match &etcd {
        Ok(e) => e.report.clone(),
        Err(e) => Err(format!("{e:#}")),
    };
    let http = record.as_ref().and_then(|r| r.http.clone()).or_else(|| {
        report
            .as_ref()
            .ok()
            .and_then(|r| r.as_ref())
            .and_then(|r| r.http.clone())
    });
    if agent.running().is_some() {
        rows.push((
            "health",
            match &http {
                None => "unknown (no HTTP endpoint)".into(),
                Some(h) => {
                    let probe = |path: &'static str| async move {
                        match agent_http::get(h, path, Duration::from_secs(2)).await {
                            Ok((code, body)) => format!("{code} {}", body.trim()),
                            Err(e) => format!("no answer ({e})"),
                        }
                    };
                    format!(
                        "http://{h}/healthz: {}; /readyz: {}",
                        probe("/healthz").await,
                        probe("/readyz").await
                    )
                }
            },
        ));
    }
    if let Some(r) = &record {
        if let Some(ns) = &r.netns {
            rows.push(("netns", ns.clone()));
        }
        if let Some(l) = &r.log_file {
            rows.push(("log", l.clone()));
        }
    }
    match &report {
        Ok(Some(r)) => {
            let stale = if agent.running().is_none() {
                " (the agent is not running: this is its last report)"
            } else {
                ""
            };
            rows.push((
                "last reconcile",
                if r.last_reconcile == 0 {
                    format!("never{stale}")
                } else {
                    format!("{}{stale}", age(r.last_reconcile))
                },
            ));
            rows.push(("ready", if r.ready { "yes".into() } else { "no".to_string() }));
            rows.push(("version", format!("{} (pid {})", r.version, r.pid)));
            rows.push(("BIRD restarts", r.bird_restarts.to_string()));
            rows.push((
                "errors",
                if r.errors.is_empty() {
                    "none".into()
                } else {
                    r.errors.len().to_string()
                },
            ));
            rows.push((
                "invalid data",
                if r.invalid_data.is_empty() {
                    "none".into()
                } else {
                    format!("{} keys ignored", r.invalid_data.len())
                },
            ));
        }
        Ok(None) => rows.push((
            "reported",
            format!("nothing yet (no {} in etcd)", agent_status_key(&name)),
        )),
        Err(e) => rows.push(("reported", format!("unknown: {e}"))),
    }
    for (k, v) in &rows {
        out.push_str(&format!("  {:<15} {v}\n", format!("{k}:")));
    }
    if let Ok(Some(r)) = &report {
        for e in &r.errors {
            out.push_str(&format!("    error: {e}\n"));
        }
        for e in &r.invalid_data {
            out.push_str(&format!("    invalid: {e}\n"));
        }
    }

    // ---- BGP
    out.push('\n');
    let sock = run.bird_ctl();
    let bird_pid = match run.bird() {
        ProcState::Running(p) => format!("pid {p}"),
        _ => "no live pid file".into(),
    };
    match birdc(&sock, &["show", "protocols", "all"]).await {
        Ok(text) => {
            out.push_str(&format!("BGP sessions (BIRD {bird_pid}, {})\n", sock.display()));
            let peers = etcd.as_ref().ok().map(|e| &e.peers);
            let rows: Vec<Vec<String>> = parse_protocols(&text)
                .iter()
                .filter(|p| p.proto == "BGP")
                .map(|p| {
                    let node = p
                        .description
                        .as_deref()
                        .and_then(|d| d.strip_prefix("Node "))
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    vec![
                        format!("{}{node}", p.neighbor.clone().unwrap_or_else(|| p.name.clone())),
                        session_type(p, peers),
                        bgp_kind(p),
                        p.state.clone(),
                        p.since.clone(),
                        if p.info.is_empty() {
                            p.bgp_state.clone().unwrap_or_default()
                        } else {
                            p.info.clone()
                        },
                    ]
                })
                .collect();
            if rows.is_empty() {
                out.push_str("  (no BGP sessions configured)\n");
            } else {
                out.push_str(&indent(&table(
                    &["PEER", "TYPE", "AS", "STATE", "SINCE", "INFO"],
                    &rows,
                )));
            }
        }
        Err(e) => {
            out.push_str(&format!(
                "BGP sessions: unknown: BIRD does not answer on {} ({bird_pid}): {e:#}\n",
                sock.display()
            ));
        }
    }

    // ---- endpoints
    out.push('\n');
    match &etcd {
        Ok(e) => {
            let (mut programmed, mut failed, mut pending) = (0, 0, 0);
            let mut failures = Vec::new();
            for c in &e.containers {
                match e.statuses.get(c) {
                    Some(st) if st.state == EndpointState::Programmed => programmed += 1,
                    Some(st) if st.state == EndpointState::Error => {
                        failed += 1;
                        failures.push(format!("{c}: {}", st.message));
                    }
                    _ => pending += 1,
                }
            }
            out.push_str(&format!(
                "Endpoints on {name}: {} Containers: {programmed} programmed, {failed} failed, {pending} pending\n",
                e.containers.len()
            ));
            for f in failures {
                out.push_str(&format!("  failed: {f}\n"));
            }
        }
        Err(err) => out.push_str(&format!("Endpoints on {name}: unknown: {err:#}\n")),
    }
    print!("{out}");
    if agent.running().is_none() {
        bail!("the {AGENT_BINARY} agent for node {name} is not running (start it with `calicoctl node --ip ...`)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     23:39:22.073

Mesh_172_30_0_2 BGP        ---        start  23:39:22.073  Active        Socket: Network unreachable
  Description:    Node t2
  BGP state:          Active
    Neighbor address: 172.30.0.2
    Neighbor AS:      64511
    Local AS:         64511
    Last error:       Socket: Network unreachable

Peer_10_0_0_9 BGP        ---        up     2024-05-01 10:00:00  Established
  Description:    BGPPeer tor
  BGP state:          Established
    Neighbor address: 10.0.0.9
    Neighbor AS:      65002
    Local AS:         64511
";

    #[test]
    fn parses_and_types_sessions() {
        let p = parse_protocols(SAMPLE);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "Mesh_172_30_0_2");
        assert_eq!(p[1].description.as_deref(), Some("Node t2"));
        assert_eq!(p[1].info, "Active Socket: Network unreachable");
        assert_eq!(p[1].neighbor.as_deref(), Some("172.30.0.2"));
        assert_eq!(p[2].since, "2024-05-01 10:00:00");
        assert_eq!(p[2].info, "Established");
        assert_eq!(session_type(&p[1], None), "node-to-node mesh");
        assert_eq!(bgp_kind(&p[1]), "iBGP 64511");
        assert_eq!(bgp_kind(&p[2]), "eBGP 64511-65002");
        assert_eq!(bgp_kind(&p[0]), "");
        let mut peers = BTreeMap::new();
        peers.insert("tor".to_string(), false);
        assert_eq!(session_type(&p[2], Some(&peers)), "global (tor)");
        peers.insert("tor".to_string(), true);
        assert_eq!(session_type(&p[2], Some(&peers)), "node-specific (tor)");
    }
}
