//! `calicoctl ipam show|check|release`: look at and repair IP address management
//! (store/src/ipam.rs).
//!
//! Live handles: every Container resource has one, `container/<name>`
//! ([`container_handle`]). Handles outside `container/` belong to the Docker IPAM
//! driver (`calico-ipam` assigns addresses before Docker tells which endpoint gets
//! them), and whether they are still in use is Docker's to say, not etcd's: `check`
//! counts them as live and lists them, and `release` refuses them without `--force`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use calico_schema::{IpPool, Resource};
use calico_store::ipam::{container_handle, BlockInfo, CheckReport, Ipam};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::output::table;

/// The handle prefix of Container resources; anything else is the Docker driver's.
pub const CONTAINER_HANDLE_PREFIX: &str = "container/";

#[derive(Debug, Clone, Args)]
pub struct IpamArgs {
    #[command(subcommand)]
    pub command: IpamCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpamFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IpamCommand {
    /// Blocks (affinity, used, capacity) and handles; with --ip, who holds that address
    Show {
        /// Show only this address: its block, its pool and its holder
        #[arg(long, value_name = "IP")]
        ip: Option<IpAddr>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = IpamFormat::Table)]
        output: IpamFormat,
    },
    /// Check IPAM against the Containers and pools; exit 1 with a report if not clean
    Check {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = IpamFormat::Table)]
        output: IpamFormat,
    },
    /// Release one address
    Release {
        #[arg(long, value_name = "IP")]
        ip: IpAddr,
        /// Release it even though the Container holding it still exists (or the holder
        /// is a Docker endpoint calicoctl cannot check)
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(g: &GlobalOpts, args: &IpamArgs) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let ipam = Ipam::new(ctx.store.client(), ctx.cfg.timeout);
    match &args.command {
        IpamCommand::Show { ip, output } => show(&ctx, &ipam, *ip, *output).await,
        IpamCommand::Check { output } => check(&ctx, &ipam, *output).await,
        IpamCommand::Release { ip, force } => release(&ctx, &ipam, *ip, *force).await,
    }
}

fn ipam_err(e: calico_store::ipam::IpamError) -> anyhow::Error {
    anyhow!("IPAM: {e}")
}

struct World {
    containers: BTreeSet<String>,
    pools: Vec<IpPool>,
}

async fn world(ctx: &Ctx) -> Result<World> {
    let listing = ctx.call("list", ctx.store.list(None)).await?;
    let mut w = World {
        containers: BTreeSet::new(),
        pools: Vec::new(),
    };
    for r in listing.resources {
        match r {
            Resource::Container(c) => {
                w.containers.insert(c.metadata.name);
            }
            Resource::IpPool(p) => w.pools.push(p),
            _ => {}
        }
    }
    Ok(w)
}

/// Who a handle is, for people: `Container w1`, `Container w1 (deleted)`, `Docker`.
fn holder_text(handle: &str, w: &World) -> String {
    match handle.strip_prefix(CONTAINER_HANDLE_PREFIX) {
        Some(c) if w.containers.contains(c) => format!("Container {c}"),
        Some(c) => format!("Container {c} (deleted)"),
        None => "Docker IPAM driver".into(),
    }
}

fn pool_of(w: &World, ip: IpAddr) -> Option<&IpPool> {
    w.pools.iter().find(|p| p.spec.cidr.net().contains(&ip))
}

async fn show(ctx: &Ctx, ipam: &Ipam, ip: Option<IpAddr>, output: IpamFormat) -> Result<()> {
    let w = world(ctx).await?;
    let blocks = ipam.all_blocks().await.map_err(ipam_err)?;
    // One handle that does not decode is named, and the rest still shown.
    let listing = ipam.handle_listing().await.map_err(ipam_err)?;
    let handles = &listing.handles;
    let result = shown(&w, &blocks, handles, ip, output);
    for (key, why) in &listing.invalid {
        eprintln!("invalid: {key}: {why}");
    }
    result?;
    if !listing.invalid.is_empty() {
        bail!(
            "IPAM: {} handle keys hold values that do not decode (named above; `calicoctl ipam check` reports them too)",
            listing.invalid.len()
        );
    }
    Ok(())
}

fn shown(
    w: &World,
    blocks: &[BlockInfo],
    handles: &std::collections::BTreeMap<String, calico_store::ipam::HandleInfo>,
    ip: Option<IpAddr>,
    output: IpamFormat,
) -> Result<()> {
    if let Some(ip) = ip {
        let block = blocks.iter().find(|b| b.cidr.contains(&ip));
        let holder = block.and_then(|b| b.allocations.get(&ip));
        let pool = pool_of(w, ip);
        if output == IpamFormat::Json {
            let v = json!({
                "ip": ip,
                "pool": pool.map(|p| p.metadata.name.clone()),
                "block": block.map(|b| b.cidr),
                "affinity": block.and_then(|b| b.affinity.clone()),
                "handle": holder,
                "node": holder.and_then(|h| handles.get(h)).map(|h| h.node.clone()),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let pool_text = match pool {
            Some(p) => format!(
                "pool {} ({}{})",
                p.metadata.name,
                p.spec.cidr,
                if p.spec.disabled { ", disabled" } else { "" }
            ),
            None => "no pool".into(),
        };
        let block_text = match block {
            Some(b) => format!(
                "block {} ({})",
                b.cidr,
                b.affinity
                    .as_deref()
                    .map(|a| format!("affine to {a}"))
                    .unwrap_or("no affinity".into())
            ),
            None => "no block".into(),
        };
        match holder {
            Some(h) => {
                let node = handles
                    .get(h)
                    .map(|i| format!(" on node {}", i.node))
                    .unwrap_or_default();
                println!(
                    "{ip} is held by {h} ({}{node}); {block_text}; {pool_text}",
                    holder_text(h, w)
                );
            }
            None => println!("{ip} is free; {block_text}; {pool_text}"),
        }
        return Ok(());
    }
    if output == IpamFormat::Json {
        let v = json!({ "blocks": blocks, "handles": handles });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if blocks.is_empty() {
        println!("No IPAM blocks.");
    } else {
        let rows: Vec<Vec<String>> = blocks
            .iter()
            .map(|b: &BlockInfo| {
                vec![
                    b.cidr.to_string(),
                    b.affinity.clone().unwrap_or_else(|| "-".into()),
                    b.allocated.to_string(),
                    b.capacity.to_string(),
                    pool_of(w, b.cidr.network())
                        .map(|p| p.metadata.name.clone())
                        .unwrap_or_else(|| "(none)".into()),
                ]
            })
            .collect();
        print!("{}", table(&["BLOCK", "AFFINITY", "USED", "CAPACITY", "POOL"], &rows));
    }
    println!();
    if handles.is_empty() {
        println!("No IPAM handles.");
    } else {
        let rows: Vec<Vec<String>> = handles
            .iter()
            .map(|(h, info)| {
                vec![
                    h.clone(),
                    info.node.clone(),
                    info.ips
                        .iter()
                        .map(std::string::ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    holder_text(h, w),
                ]
            })
            .collect();
        print!("{}", table(&["HANDLE", "NODE", "IPS", "HOLDER"], &rows));
    }
    Ok(())
}

/// The report as lines for people; empty when clean.
fn report_lines(r: &CheckReport) -> Vec<String> {
    let mut out = Vec::new();
    for (ip, h) in &r.leaked {
        out.push(format!("leaked: {ip} is allocated to {h}, which is not live"));
    }
    for (h, ip) in &r.dangling_handles {
        out.push(format!(
            "dangling: handle {h} lists {ip}, which no block allocates to it"
        ));
    }
    for (ip, h) in &r.unrecorded {
        out.push(format!(
            "unrecorded: {ip} is allocated to {h}, whose handle record does not list it"
        ));
    }
    for (ip, hs) in &r.duplicates {
        out.push(format!("duplicate: {ip} is held by {}", hs.join(", ")));
    }
    for (a, b) in &r.overlapping_blocks {
        out.push(format!("overlap: blocks {a} and {b} overlap"));
    }
    for b in &r.blocks_outside_pools {
        out.push(format!("orphan block: {b} is in no IPPool"));
    }
    for m in &r.affinity_mismatches {
        out.push(format!("affinity: {m}"));
    }
    for (k, e) in &r.invalid {
        out.push(format!("invalid: {k}: {e}"));
    }
    out
}

async fn check(ctx: &Ctx, ipam: &Ipam, output: IpamFormat) -> Result<()> {
    let w = world(ctx).await?;
    // Handles that do not decode are not lost here: `Ipam::check` reads them again and
    // lists them under `invalid`, which makes the report unclean.
    let handles = ipam.handle_listing().await.map_err(ipam_err)?.handles;
    let mut live: BTreeSet<String> = w.containers.iter().map(|c| container_handle(c)).collect();
    let docker: Vec<String> = handles
        .keys()
        .filter(|h| !h.starts_with(CONTAINER_HANDLE_PREFIX))
        .cloned()
        .collect();
    live.extend(docker.iter().cloned());
    let report = ipam.check(&live, &w.pools).await.map_err(ipam_err)?;
    let lines = report_lines(&report);
    if output == IpamFormat::Json {
        let v = json!({ "clean": report.is_clean(), "report": report, "dockerHandles": docker });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let addresses: usize = handles.values().map(|h| h.ips.len()).sum();
        println!(
            "Checked {} handles ({} of Docker endpoints, not checked against Docker) holding {addresses} addresses, {} Containers, {} pools",
            handles.len(),
            docker.len(),
            w.containers.len(),
            w.pools.len()
        );
        for l in &lines {
            println!("{l}");
        }
        if report.is_clean() {
            println!("IPAM is consistent");
        }
    }
    if !report.is_clean() {
        bail!(
            "IPAM is not consistent: {} problems (release leaked addresses with `calicoctl ipam release --ip IP`)",
            lines.len()
        );
    }
    Ok(())
}

async fn release(ctx: &Ctx, ipam: &Ipam, ip: IpAddr, force: bool) -> Result<()> {
    let w = world(ctx).await?;
    let blocks = ipam.all_blocks().await.map_err(ipam_err)?;
    let Some(holder) = blocks
        .iter()
        .find(|b| b.cidr.contains(&ip))
        .and_then(|b| b.allocations.get(&ip))
        .cloned()
    else {
        bail!("{ip} is not allocated");
    };
    if !force {
        match holder.strip_prefix(CONTAINER_HANDLE_PREFIX) {
            Some(c) if w.containers.contains(c) => bail!(
                "{ip} is held by Container {c}, which still exists; delete the Container (that releases it), or use --force"
            ),
            Some(_) => {}
            None => bail!(
                "{ip} is held by {holder}, a Docker endpoint's handle that calicoctl cannot check against Docker; use --force if you are sure it is gone"
            ),
        }
    }
    match ipam.release_ip(ip).await.map_err(ipam_err)? {
        Some(h) => {
            println!("Released {ip} (held by {h})");
            if let Some(c) = h
                .strip_prefix(CONTAINER_HANDLE_PREFIX)
                .filter(|c| w.containers.contains(*c))
            {
                eprintln!("warning: Container {c} still exists; its node's agent may claim an address for it again");
            }
            Ok(())
        }
        None => bail!("{ip} is not allocated (released by someone else meanwhile)"),
    }
}
