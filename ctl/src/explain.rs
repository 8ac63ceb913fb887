//! `calicoctl explain SRC DST`: whether the first packet of a connection from SRC to
//! DST is allowed, and the exact rule that decides it in each direction, from the
//! desired state (etcd, or files with `-f`). The evaluation is calico_render::explain;
//! this module resolves the two ends and prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use calico_render::explain::{explain, Decider, Explanation, Flow, Peer, Step, Verdict, World};
use calico_render::nft::{RuleCount, RuleCounters};
use calico_schema::{Container, IpVersion, PolicyType, Protocol, Resource};
use clap::{Args, ValueEnum};

use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::resolve::Resolver;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// Each direction, its verdict and the deciding rule as YAML
    Text,
    /// The whole explanation as one JSON object
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Where the packet comes from: a Container name, a Docker container name or ID, or
    /// an IP address (a Container's, or an outside one)
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Where it goes: as SRC
    #[arg(value_name = "DST")]
    pub dst: String,
    /// The protocol: TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number
    #[arg(long, default_value = "TCP", value_parser = |s: &str| s.parse::<Protocol>())]
    pub proto: Protocol,
    /// The destination port (needed for TCP, UDP, SCTP and UDPLite)
    #[arg(long)]
    pub port: Option<u16>,
    /// The source port [default: unknown; rules that name source ports do not match]
    #[arg(long)]
    pub sport: Option<u16>,
    /// The ICMP type [default: echo request, 8 for ICMP and 128 for ICMPv6]
    #[arg(long = "icmp-type")]
    pub icmp_type: Option<u8>,
    /// The ICMP code
    #[arg(long = "icmp-code", default_value_t = 0)]
    pub icmp_code: u8,
    /// Explain the IPv6 packet [default: IPv4, or the version of an address given]
    #[arg(long)]
    pub ipv6: bool,
    /// Explain from these files or directories instead of etcd (Containers then need
    /// explicit `ips`); repeatable
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: ExplainFormat,
    /// Also print the deciding rule's packet and byte counters, asked of the agent of
    /// the node that decides (its /counters, at the HTTP address in its status in etcd)
    #[arg(long)]
    pub counters: bool,
    /// With --counters: ask this agent (HOST:PORT) instead of the one each node reports
    #[arg(long, value_name = "HOST:PORT", requires = "counters")]
    pub agent: Option<String>,
}

/// The deciding rule's counter in one direction, as its node's agent reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Counted {
    /// The nft rule comment the counter is found by (`Policy/db ingress[2]`).
    rule: String,
    node: String,
    /// None when the agent holds no such rule (not rendered there, or the end of the
    /// chain decided).
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<RuleCount>,
}

#[derive(Debug, Default, serde::Serialize)]
struct CountedSteps {
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<Counted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress: Option<Counted>,
}

#[derive(serde::Serialize)]
struct WithCounters<'a> {
    #[serde(flatten)]
    explanation: &'a Explanation,
    counters: &'a CountedSteps,
}

/// Runs the command; returns whether the packet is allowed (the exit code says it).
pub async fn run(g: &GlobalOpts, args: &ExplainArgs) -> Result<bool> {
    let offline = !args.files.is_empty();
    let (resources, addrs) = if offline {
        let loaded = crate::input::load_sources(&args.files)?;
        (loaded.into_iter().map(|l| l.resource).collect(), BTreeMap::new())
    } else {
        crate::desired::from_etcd(&Ctx::connect(g).await?).await?
    };
    let containers: Vec<Container> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Container(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let mut resolver = Resolver::new();
    if !offline {
        resolver = resolver.with_docker(Box::new(crate::docker_lookup::BollardLookup::new(
            g.docker_host.as_deref(),
        )));
    }
    let src = peer(&resolver, &args.src, &containers).await?;
    let dst = peer(&resolver, &args.dst, &containers).await?;
    let flow = flow(args, &src, &dst)?;
    let world = World::new(&resources, &addrs);
    let e = explain(&world, &src, &dst, &flow).map_err(|e| anyhow!("{e}"))?;
    let counted = if args.counters {
        Some(counters(g, args, &e, offline).await?)
    } else {
        None
    };
    match (args.output, &counted) {
        (ExplainFormat::Json, None) => println!("{}", serde_json::to_string_pretty(&e)?),
        (ExplainFormat::Json, Some(c)) => println!(
            "{}",
            serde_json::to_string_pretty(&WithCounters {
                explanation: &e,
                counters: c
            })?
        ),
        (ExplainFormat::Text, _) => print!("{}", text(&e, args, counted.as_ref())?),
    }
    Ok(e.verdict == Verdict::Allow)
}

/// Each direction's deciding rule's counter, from the agent of the node that decides.
async fn counters(g: &GlobalOpts, args: &ExplainArgs, e: &Explanation, offline: bool) -> Result<CountedSteps> {
    let ctx = if args.agent.is_none() {
        if offline {
            bail!("--counters with -f needs --agent HOST:PORT (no etcd to find the node's agent in)");
        }
        Some(Ctx::connect(g).await?)
    } else {
        None
    };
    let mut by_node: BTreeMap<String, RuleCounters> = BTreeMap::new();
    let mut out = CountedSteps::default();
    for step in [&e.egress, &e.ingress].into_iter().flatten() {
        let Some(rule) = step.counter_name() else { continue };
        if !by_node.contains_key(&step.node) {
            let addr = match (&args.agent, &ctx) {
                (Some(a), _) => a.clone(),
                (None, Some(ctx)) => crate::observed::agent_status(ctx, &step.node)
                    .await?
                    .and_then(|s| s.http)
                    .ok_or_else(|| anyhow!("node {}'s agent reports no HTTP address in etcd", step.node))?,
                (None, None) => bail!("no agent to ask"),
            };
            by_node.insert(step.node.clone(), fetch_counters(&addr).await?);
        }
        let count = by_node.get(&step.node).and_then(|c| c.get(&rule)).copied();
        let c = Counted {
            rule,
            node: step.node.clone(),
            count,
        };
        match step.direction {
            PolicyType::Egress => out.egress = Some(c),
            PolicyType::Ingress => out.ingress = Some(c),
        }
    }
    Ok(out)
}

async fn fetch_counters(addr: &str) -> Result<RuleCounters> {
    let (code, body) = crate::agent_http::get(addr, "/counters", std::time::Duration::from_secs(5)).await?;
    if code != 200 {
        bail!("the agent at {addr} answered /counters with {code}: {}", body.trim());
    }
    serde_json::from_str(&body).map_err(|e| anyhow!("the agent at {addr} sent unreadable /counters: {e}"))
}

async fn peer(resolver: &Resolver, query: &str, containers: &[Container]) -> Result<Peer> {
    if let Ok(ip) = query.parse::<IpAddr>() {
        return Ok(Peer::Address(ip));
    }
    Ok(Peer::Workload(resolver.resolve(query, containers).await?))
}

fn flow(args: &ExplainArgs, src: &Peer, dst: &Peer) -> Result<Flow> {
    let given_v6 = [src, dst].iter().find_map(|p| match p {
        Peer::Address(ip) => Some(ip.is_ipv6()),
        Peer::Workload(_) => None,
    });
    let v6 = match given_v6 {
        Some(v6) if args.ipv6 && !v6 => bail!("--ipv6 with an IPv4 address"),
        Some(v6) => v6,
        None => args.ipv6 || args.proto == Protocol::IcmpV6,
    };
    if let (Peer::Address(a), Peer::Address(b)) = (src, dst) {
        if a.is_ipv6() != b.is_ipv6() {
            bail!("{a} and {b} are of different IP versions");
        }
    }
    if args.proto.has_ports() && args.port.is_none() {
        bail!("--proto {} needs --port", args.proto);
    }
    if !args.proto.has_ports() && (args.port.is_some() || args.sport.is_some()) {
        bail!("--proto {} has no ports", args.proto);
    }
    let icmp = match args.proto {
        Protocol::Icmp => Some((args.icmp_type.unwrap_or(8), args.icmp_code)),
        Protocol::IcmpV6 => Some((args.icmp_type.unwrap_or(128), args.icmp_code)),
        _ if args.icmp_type.is_some() => bail!("--icmp-type needs --proto ICMP or ICMPv6"),
        _ => None,
    };
    Ok(Flow {
        protocol: Some(args.proto.number()),
        port: args.port,
        source_port: args.sport,
        icmp,
        ip_version: if v6 { IpVersion::V6 } else { IpVersion::V4 },
    })
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allowed",
        Verdict::Deny => "dropped",
    }
}

fn text(e: &Explanation, args: &ExplainArgs, counted: Option<&CountedSteps>) -> Result<String> {
    let mut out = String::new();
    let what = match (args.port, args.icmp_type) {
        (Some(p), _) => format!("{} port {p}", args.proto),
        _ => args.proto.to_string(),
    };
    writeln!(
        out,
        "{} ({}) -> {} ({}) {what}: {}",
        e.source,
        e.source_ip,
        e.destination,
        e.destination_ip,
        verdict_word(e.verdict)
    )?;
    if e.egress.is_none() {
        writeln!(
            out,
            "egress: {} is no Container's address: no policy of ours applies there",
            e.source_ip
        )?;
    }
    for step in [&e.egress, &e.ingress].into_iter().flatten() {
        let c = counted.map(|c| match step.direction {
            PolicyType::Egress => c.egress.as_ref(),
            PolicyType::Ingress => c.ingress.as_ref(),
        });
        step_text(&mut out, step, c)?;
    }
    if e.ingress.is_none() {
        writeln!(
            out,
            "ingress: {} is no Container's address: no policy of ours applies there",
            e.destination_ip
        )?;
    }
    Ok(out)
}

/// `counted`: None without --counters; Some(None) when the end of the chain decided.
fn step_text(out: &mut String, s: &Step, counted: Option<Option<&Counted>>) -> Result<()> {
    let dir = match s.direction {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    };
    writeln!(
        out,
        "{dir} at {} (node {}): {}",
        s.workload,
        s.node,
        verdict_word(s.verdict)
    )?;
    let rule_yaml = |rule: &calico_schema::Rule| -> Result<String> {
        let y = serde_saphyr::to_string(rule).map_err(|e| anyhow!("{e}"))?;
        Ok(y.lines().map(|l| format!("      {l}\n")).collect())
    };
    match &s.decided_by {
        Decider::Policy { name, index, rule } => {
            writeln!(out, "    by Policy/{name} spec.{dir}[{index}]:")?;
            out.push_str(&rule_yaml(rule)?);
        }
        Decider::Group {
            name,
            index,
            rule,
            default,
        } => {
            if *default {
                let means = match s.direction {
                    PolicyType::Ingress => "members accept from each other",
                    PolicyType::Egress => "members may send anywhere",
                };
                writeln!(out, "    by Group/{name}'s default {dir} rule ({means}):")?;
            } else {
                writeln!(out, "    by Group/{name} spec.{dir}[{index}]:")?;
            }
            out.push_str(&rule_yaml(rule)?);
        }
        Decider::NoRuleMatched => {
            writeln!(out, "    by no rule: nothing allowed or denied it, so it is dropped")?;
        }
    }
    match counted {
        None => {}
        Some(None) => writeln!(
            out,
            "    counters: none per rule (the end of the chain's drop is shared by the endpoints with the same policies)"
        )?,
        Some(Some(Counted {
            rule,
            node,
            count: Some(c),
        })) => writeln!(
            out,
            "    counters: {} packets, {} bytes (nft rule \"{rule}\" on node {node})",
            c.packets, c.bytes
        )?,
        Some(Some(Counted { rule, node, count: None })) => writeln!(
            out,
            "    counters: node {node}'s table has no rule \"{rule}\" (not rendered there yet?)"
        )?,
    }
    for n in &s.noted {
        let dir = match s.direction {
            PolicyType::Ingress => "ingress",
            PolicyType::Egress => "egress",
        };
        writeln!(
            out,
            "    on the way: {} spec.{dir}[{}] ({:?})",
            n.owner, n.index, n.action
        )?;
    }
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    writeln!(out, "    policies selecting it for {dir}: {}", list(&s.policies))?;
    writeln!(out, "    its groups: {}", list(&s.groups))?;
    Ok(())
}
