//! Semantic checks beyond what the JSON Schema can say.
//!
//! `check_resource` looks at one resource alone; `check_set` looks at a set being
//! applied together with what is already stored (references, overlaps, immutable
//! fields, address conflicts). Both return issues as field paths, which the loader
//! turns into `file:line:col` through the document's span map.

use crate::limits::{MAX_NETS_PER_LIST, MAX_PORTS_PER_LIST, MAX_RULES_PER_DIRECTION};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::resource::*;
use crate::selector::Selector;

/// Where in the field the problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The field's value.
    Value,
    /// The field's key (unknown or misplaced fields).
    Key,
    /// A character offset inside a one-line string value (selectors).
    Content(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub at: At,
    pub message: String,
}

impl Issue {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue {
            path: path.into(),
            at: At::Value,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn name_issue(path: &str, what: &str, name: &str) -> Option<Issue> {
    (!is_valid_name(name)).then(|| {
        Issue::new(
            path,
            format!(
                "'{name}' is not a valid {what} name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)"
            ),
        )
    })
}

fn check_selector(out: &mut Vec<Issue>, path: &str, text: &str) {
    if let Err(e) = Selector::parse(text) {
        out.push(Issue {
            path: path.to_string(),
            at: At::Content(e.column.saturating_sub(1)),
            message: format!("invalid selector: {e}"),
        });
    }
}

/// Reserved ranges no pool may overlap: loopback, link-local, multicast.
fn reserved_ranges() -> Vec<(IpNet, &'static str)> {
    [
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ]
    .iter()
    .filter_map(|(n, why)| n.parse().ok().map(|n| (n, *why)))
    .collect()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks one resource on its own.
pub fn check_resource(r: &Resource) -> Vec<Issue> {
    let mut out = Vec::new();
    let md = r.metadata();
    if let Some(i) = name_issue("metadata.name", &r.kind().as_str().to_ascii_lowercase(), &md.name) {
        out.push(i);
    }
    for (k, v) in &md.labels {
        let p = format!("metadata.labels.{k}");
        let key_ok =
            !k.is_empty() && k.len() <= 253 && k.bytes().all(|c| c.is_ascii_alphanumeric() || b"_./-".contains(&c));
        if !key_ok {
            out.push(Issue {
                path: p.clone(),
                at: At::Key,
                message: format!("label key '{k}' must be 1-253 of A-Z a-z 0-9 _ . / -"),
            });
        }
        if v.len() > 63 || v.contains(['"', '\'', '\n']) {
            out.push(Issue::new(p, "label values are at most 63 characters, without quotes or newlines (selectors must be able to name them)"));
        }
    }
    match r {
        Resource::Group(g) => {
            check_rules(&mut out, "spec.ingress", g.spec.ingress.as_deref().unwrap_or(&[]));
            check_rules(&mut out, "spec.egress", g.spec.egress.as_deref().unwrap_or(&[]));
        }
        Resource::Container(c) => check_container(&mut out, c),
        Resource::Policy(p) => {
            if let Some(s) = &p.spec.selector {
                check_selector(&mut out, "spec.selector", s);
            }
            if let Some(ts) = &p.spec.types {
                if ts.is_empty() {
                    out.push(Issue::new("spec.types", "types must name Ingress, Egress or both"));
                }
                if !ts.contains(&PolicyType::Ingress) && !p.spec.ingress.is_empty() {
                    out.push(Issue::new(
                        "spec.ingress",
                        "ingress rules given but types does not include Ingress",
                    ));
                }
                if !ts.contains(&PolicyType::Egress) && !p.spec.egress.is_empty() {
                    out.push(Issue::new(
                        "spec.egress",
                        "egress rules given but types does not include Egress",
                    ));
                }
            }
            check_rules(&mut out, "spec.ingress", &p.spec.ingress);
            check_rules(&mut out, "spec.egress", &p.spec.egress);
        }
        Resource::IpPool(p) => check_pool(&mut out, p),
        Resource::Node(n) => {
            if n.spec.ipv4.is_some_and(|a| !a.addr().is_ipv4()) {
                out.push(Issue::new("spec.ipv4", "must be an IPv4 address"));
            }
            if n.spec.ipv6.is_some_and(|a| a.addr().is_ipv4()) {
                out.push(Issue::new("spec.ipv6", "must be an IPv6 address"));
            }
            if n.spec.as_number == Some(0) {
                out.push(Issue::new("spec.asNumber", "AS number 0 is reserved"));
            }
        }
        Resource::BgpPeer(p) => {
            if p.spec.node.is_some() && p.spec.node_selector.is_some() {
                out.push(Issue::new("spec.nodeSelector", "give node or nodeSelector, not both"));
            }
            if let Some(s) = &p.spec.node_selector {
                check_selector(&mut out, "spec.nodeSelector", s);
            }
            if p.spec.as_number == 0 {
                out.push(Issue::new("spec.asNumber", "AS number 0 is reserved"));
            }
        }
        Resource::ClusterConfig(c) => {
            if c.metadata.name != "default" {
                out.push(Issue::new(
                    "metadata.name",
                    format!(
                        "there is one ClusterConfig and it is named 'default', not '{}'",
                        c.metadata.name
                    ),
                ));
            }
            if c.spec.as_number == Some(0) {
                out.push(Issue::new("spec.asNumber", "AS number 0 is reserved"));
            }
        }
    }
    out
}

fn check_container(out: &mut Vec<Issue>, c: &Container) {
    let s = &c.spec;
    if let Some(i) = name_issue("spec.node", "node", &s.node) {
        out.push(i);
    }
    match (&s.container, &s.netns) {
        (Some(_), Some(_)) => out.push(Issue::new("spec.netns", "give container or netns, not both")),
        (None, None) => out.push(Issue::new(
            "spec",
            "one of container (a Docker name or ID) or netns (a namespace path) is required",
        )),
        (None, Some(ns)) if !ns.starts_with('/') => {
            out.push(Issue::new("spec.netns", format!("'{ns}' must be an absolute path")));
        }
        (Some(d), None) if d.is_empty() => out.push(Issue::new("spec.container", "must not be empty")),
        _ => {}
    }
    if let Some(ifname) = &s.interface {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', ':']) || ifname == "." || ifname == ".."
        {
            out.push(Issue::new(
                "spec.interface",
                format!("'{ifname}' is not a valid interface name (1-15 characters, no '/', ':' or spaces)"),
            ));
        }
    }
    if let Some(ips) = &s.ips {
        let mut seen = HashSet::new();
        for (i, ip) in ips.iter().enumerate() {
            if !seen.insert(ip) {
                out.push(Issue::new(format!("spec.ips[{i}]"), format!("{ip} is listed twice")));
            }
        }
        if ips.iter().filter(|ip| ip.is_ipv4()).count() > 1 || ips.iter().filter(|ip| ip.is_ipv6()).count() > 1 {
            out.push(Issue::new("spec.ips", "at most one IPv4 and one IPv6 address"));
        }
    }
    let mut seen = HashSet::new();
    for (i, g) in s.groups.iter().enumerate() {
        let p = format!("spec.groups[{i}]");
        if let Some(issue) = name_issue(&p, "group", g) {
            out.push(issue);
        } else if !seen.insert(g) {
            out.push(Issue::new(p, format!("group '{g}' is listed twice")));
        }
    }
}

fn check_pool(out: &mut Vec<Issue>, p: &IpPool) {
    let net = p.spec.cidr.net();
    for (r, why) in reserved_ranges() {
        if overlaps(&net, &r) {
            out.push(Issue::new(
                "spec.cidr",
                format!("{net} overlaps the reserved {why} range {r}"),
            ));
        }
    }
    let bs = p.block_size();
    let (lo, hi) = if p.spec.cidr.is_ipv4() { (20, 32) } else { (116, 128) };
    if !(lo..=hi).contains(&bs) {
        out.push(Issue::new(
            "spec.blockSize",
            format!(
                "blockSize {bs} must be {lo}-{hi} for an IPv{} pool",
                p.spec.cidr.version()
            ),
        ));
    } else if bs < net.prefix_len() {
        out.push(Issue::new(
            "spec.blockSize",
            format!("blocks of /{bs} are larger than the pool {net}"),
        ));
    }
}

fn check_rules(out: &mut Vec<Issue>, base: &str, rules: &[Rule]) {
    if rules.len() > MAX_RULES_PER_DIRECTION {
        out.push(Issue::new(
            base.to_string(),
            format!("at most {MAX_RULES_PER_DIRECTION} rules, found {}", rules.len()),
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        check_rule(out, &format!("{base}[{i}]"), r);
    }
}

fn check_rule(out: &mut Vec<Issue>, p: &str, r: &Rule) {
    let ports_ok = r.protocol.is_some_and(|pr| pr.has_ports());
    for (side, e) in [("source", &r.source), ("destination", &r.destination)] {
        let sp = format!("{p}.{side}");
        if !ports_ok {
            for (field, list) in [("ports", &e.ports), ("notPorts", &e.not_ports)] {
                if !list.is_empty() {
                    out.push(Issue::new(
                        format!("{sp}.{field}"),
                        "ports need protocol TCP, UDP, SCTP or UDPLite on the rule",
                    ));
                }
            }
        }
        for (field, list) in [("ports", &e.ports), ("notPorts", &e.not_ports)] {
            if list.len() > MAX_PORTS_PER_LIST {
                out.push(Issue::new(
                    format!("{sp}.{field}"),
                    format!("at most {MAX_PORTS_PER_LIST} ports, found {}", list.len()),
                ));
            }
        }
        for (field, list) in [("nets", &e.nets), ("notNets", &e.not_nets)] {
            if list.len() > MAX_NETS_PER_LIST {
                out.push(Issue::new(
                    format!("{sp}.{field}"),
                    format!("at most {MAX_NETS_PER_LIST} nets, found {}", list.len()),
                ));
            }
            if let Some(v) = r.ip_version {
                let want = u8::from(v);
                for (j, n) in list.iter().enumerate() {
                    if n.version() != want {
                        out.push(Issue::new(
                            format!("{sp}.{field}[{j}]"),
                            format!("{n} is IPv{} but the rule has ipVersion {want}", n.version()),
                        ));
                    }
                }
            }
        }
        for (j, g) in e.groups.iter().enumerate() {
            if let Some(i) = name_issue(&format!("{sp}.groups[{j}]"), "group", g) {
                out.push(i);
            }
        }
        if let Some(s) = &e.selector {
            check_selector(out, &format!("{sp}.selector"), s);
        }
        if let Some(s) = &e.not_selector {
            check_selector(out, &format!("{sp}.notSelector"), s);
        }
    }
    if let Some(icmp) = &r.icmp {
        if !r.protocol.is_some_and(|pr| pr.is_icmp()) {
            out.push(Issue::new(
                format!("{p}.icmp"),
                "icmp matches need protocol ICMP or ICMPv6 on the rule",
            ));
        }
        if icmp.code.is_some() && icmp.icmp_type.is_none() {
            out.push(Issue::new(format!("{p}.icmp.code"), "an ICMP code needs an ICMP type"));
        }
    }
    match (r.protocol.map(|p| p.number()), r.ip_version) {
        (Some(1), Some(IpVersion::V6)) => out.push(Issue::new(
            format!("{p}.ipVersion"),
            "protocol ICMP is IPv4; use ICMPv6 with ipVersion 6",
        )),
        (Some(58), Some(IpVersion::V4)) => out.push(Issue::new(
            format!("{p}.ipVersion"),
            "protocol ICMPv6 is IPv6; use ICMP with ipVersion 4",
        )),
        _ => {}
    }
    if r.protocol.is_some() && r.protocol == r.not_protocol {
        out.push(Issue::new(
            format!("{p}.notProtocol"),
            "protocol and notProtocol are the same: the rule can never match",
        ));
    }
}

/// Context for cross-resource checks: what is stored now.
pub struct Existing<'a> {
    pub resources: &'a [Resource],
    /// False for offline validation: references to things outside the set are not checked.
    pub complete: bool,
}

/// Checks the set as it would be stored, against what is stored. Returns, per item of
/// `set` (by index), the issues found.
pub fn check_set(set: &[&Resource], existing: &Existing<'_>) -> Vec<(usize, Issue)> {
    let mut out = Vec::new();
    // Duplicates inside the set.
    let mut first: HashMap<(Kind, &str), usize> = HashMap::new();
    for (i, r) in set.iter().enumerate() {
        if let Some(j) = first.insert((r.kind(), r.name()), i) {
            first.insert((r.kind(), r.name()), j);
            out.push((
                i,
                Issue::new("metadata.name", format!("{} is defined twice in this apply", r.id())),
            ));
        }
    }
    // The world after the apply: stored resources overlaid with the set.
    let mut world: BTreeMap<(Kind, String), &Resource> = BTreeMap::new();
    for r in existing.resources {
        world.insert((r.kind(), r.name().to_string()), r);
    }
    let stored = world.clone();
    for r in set {
        world.insert((r.kind(), r.name().to_string()), r);
    }
    let known = |k: Kind, n: &str| world.contains_key(&(k, n.to_string()));

    let pools: Vec<&IpPool> = world
        .values()
        .filter_map(|r| if let Resource::IpPool(p) = r { Some(p) } else { None })
        .collect();

    for (i, r) in set.iter().enumerate() {
        match r {
            Resource::Container(c) => {
                if existing.complete && !known(Kind::Node, &c.spec.node) {
                    out.push((
                        i,
                        Issue::new("spec.node", format!("Node '{}' does not exist", c.spec.node)),
                    ));
                }
                for (j, g) in c.spec.groups.iter().enumerate() {
                    if existing.complete && !known(Kind::Group, g) {
                        out.push((
                            i,
                            Issue::new(format!("spec.groups[{j}]"), format!("Group '{g}' does not exist")),
                        ));
                    }
                }
                for (j, ip) in c.spec.ips.iter().flatten().enumerate() {
                    let p = format!("spec.ips[{j}]");
                    let pool = pools.iter().find(|pl| pl.spec.cidr.net().contains(ip));
                    match pool {
                        None if !pools.is_empty() || existing.complete => {
                            out.push((i, Issue::new(p.clone(), format!("{ip} is not in any IPPool"))));
                        }
                        Some(pl) if pl.spec.disabled => out.push((
                            i,
                            Issue::new(
                                p.clone(),
                                format!("{ip} is in IPPool '{}', which is disabled", pl.metadata.name),
                            ),
                        )),
                        _ => {}
                    }
                    if let Some(holder) = ip_holder(&world, *ip, &c.metadata.name) {
                        out.push((
                            i,
                            Issue::new(p, format!("{ip} is already held by Container '{holder}'")),
                        ));
                    }
                }
            }
            Resource::Group(g) => {
                refs_in_rules(
                    &mut out,
                    i,
                    "spec.ingress",
                    g.spec.ingress.as_deref().unwrap_or(&[]),
                    &|n| !existing.complete || known(Kind::Group, n),
                );
                refs_in_rules(
                    &mut out,
                    i,
                    "spec.egress",
                    g.spec.egress.as_deref().unwrap_or(&[]),
                    &|n| !existing.complete || known(Kind::Group, n),
                );
            }
            Resource::Policy(p) => {
                refs_in_rules(&mut out, i, "spec.ingress", &p.spec.ingress, &|n| {
                    !existing.complete || known(Kind::Group, n)
                });
                refs_in_rules(&mut out, i, "spec.egress", &p.spec.egress, &|n| {
                    !existing.complete || known(Kind::Group, n)
                });
            }
            Resource::IpPool(p) => {
                if let Some(Resource::IpPool(old)) = stored.get(&(Kind::IPPool, p.metadata.name.clone())) {
                    if old.spec.cidr != p.spec.cidr {
                        out.push((
                            i,
                            Issue::new(
                                "spec.cidr",
                                format!(
                                    "cidr is immutable (stored: {}); delete and recreate the pool",
                                    old.spec.cidr
                                ),
                            ),
                        ));
                    }
                    if old.block_size() != p.block_size() {
                        out.push((
                            i,
                            Issue::new(
                                "spec.blockSize",
                                format!("blockSize is immutable (stored: {})", old.block_size()),
                            ),
                        ));
                    }
                }
                for other in &pools {
                    if other.metadata.name != p.metadata.name && overlaps(&other.spec.cidr.net(), &p.spec.cidr.net()) {
                        out.push((
                            i,
                            Issue::new(
                                "spec.cidr",
                                format!(
                                    "{} overlaps IPPool '{}' ({})",
                                    p.spec.cidr, other.metadata.name, other.spec.cidr
                                ),
                            ),
                        ));
                    }
                }
            }
            Resource::BgpPeer(b) => {
                if let Some(n) = &b.spec.node {
                    if existing.complete && !known(Kind::Node, n) {
                        out.push((i, Issue::new("spec.node", format!("Node '{n}' does not exist"))));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// What [`check_set`] reads of `existing` for `set`, so that a caller can read only
/// that: the resources it names (each one's own key, and those it references), and the
/// kinds it needs whole (every IPPool to check addresses and overlaps, every Container
/// to find who holds a static address). Kept beside `check_set`: a check added there
/// that reads more must say so here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dependencies {
    pub keys: BTreeSet<(Kind, String)>,
    pub kinds: BTreeSet<Kind>,
}

pub fn dependencies<'a>(set: impl IntoIterator<Item = &'a Resource>) -> Dependencies {
    let mut d = Dependencies::default();
    let rule_groups = |keys: &mut BTreeSet<(Kind, String)>, rules: &[Rule]| {
        for r in rules {
            for g in r.source.groups.iter().chain(&r.destination.groups) {
                keys.insert((Kind::Group, g.clone()));
            }
        }
    };
    for r in set {
        d.keys.insert((r.kind(), r.name().to_string()));
        match r {
            Resource::Container(c) => {
                d.keys.insert((Kind::Node, c.spec.node.clone()));
                for g in &c.spec.groups {
                    d.keys.insert((Kind::Group, g.clone()));
                }
                if c.spec.ips.as_ref().is_some_and(|ips| !ips.is_empty()) {
                    d.kinds.insert(Kind::IPPool);
                    d.kinds.insert(Kind::Container);
                }
            }
            Resource::Group(g) => {
                rule_groups(&mut d.keys, g.spec.ingress.as_deref().unwrap_or(&[]));
                rule_groups(&mut d.keys, g.spec.egress.as_deref().unwrap_or(&[]));
            }
            Resource::Policy(p) => {
                rule_groups(&mut d.keys, &p.spec.ingress);
                rule_groups(&mut d.keys, &p.spec.egress);
            }
            Resource::IpPool(_) => {
                d.kinds.insert(Kind::IPPool);
            }
            Resource::BgpPeer(b) => {
                if let Some(n) = &b.spec.node {
                    d.keys.insert((Kind::Node, n.clone()));
                }
            }
            Resource::Node(_) | Resource::ClusterConfig(_) => {}
        }
    }
    d
}

fn refs_in_rules(out: &mut Vec<(usize, Issue)>, i: usize, base: &str, rules: &[Rule], ok: &dyn Fn(&str) -> bool) {
    for (ri, r) in rules.iter().enumerate() {
        for (side, e) in [("source", &r.source), ("destination", &r.destination)] {
            for (j, g) in e.groups.iter().enumerate() {
                if !ok(g) {
                    out.push((
                        i,
                        Issue::new(
                            format!("{base}[{ri}].{side}.groups[{j}]"),
                            format!("Group '{g}' does not exist"),
                        ),
                    ));
                }
            }
        }
    }
}

/// The Container (other than `me`) whose spec claims `ip`.
fn ip_holder(world: &BTreeMap<(Kind, String), &Resource>, ip: IpAddr, me: &str) -> Option<String> {
    world.values().find_map(|r| match r {
        Resource::Container(c) if c.metadata.name != me && c.spec.ips.iter().flatten().any(|x| *x == ip) => {
            Some(c.metadata.name.clone())
        }
        _ => None,
    })
}

/// Checks a deletion against what would still reference the deleted resource.
pub fn check_delete(kind: Kind, name: &str, remaining: &[Resource]) -> Vec<String> {
    let mut users = Vec::new();
    for r in remaining {
        match (kind, r) {
            (Kind::Group, Resource::Container(c)) if c.spec.groups.iter().any(|g| g == name) => users.push(r.id()),
            (Kind::Node, Resource::Container(c)) if c.spec.node == name => users.push(r.id()),
            _ => {}
        }
    }
    users
}

/// True when `cidr` lies inside an enabled pool of `pools`.
pub fn in_enabled_pool(pools: &[IpPool], ip: IpAddr) -> Option<&IpPool> {
    pools
        .iter()
        .find(|p| !p.spec.disabled && p.spec.cidr.net().contains(&ip))
}
