//! Formatting resources for people (tables, rule summaries) and for machines (YAML
//! that re-applies unchanged, JSON).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use calico_schema::{
    ContainerStatus, EntityRule, Group, IcmpMatch, Resource, Rule, API_VERSION, OWNER_ANNOTATION, SOURCE_ANNOTATION,
};
use serde_json::{json, Value};

/// An object with its observed `status` after the fields users write: what `get -o
/// yaml|json` prints. apply ignores `status`, so the output re-applies unchanged.
#[derive(serde::Serialize)]
struct WithStatus<'a, T: serde::Serialize> {
    #[serde(flatten)]
    object: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a ContainerStatus>,
}

/// The observed status of a resource, if it has one (Containers the agent reported).
fn status_of<'a>(r: &Resource, status: &'a BTreeMap<String, ContainerStatus>) -> Option<&'a ContainerStatus> {
    match r {
        Resource::Container(_) => status.get(r.name()),
        _ => None,
    }
}

/// One resource as a YAML document, fields in the order users write them
/// (apiVersion, kind, metadata, spec), resourceVersion included when set.
pub fn to_yaml(r: &Resource) -> Result<String> {
    to_yaml_with(r, None)
}

fn to_yaml_with(r: &Resource, status: Option<&ContainerStatus>) -> Result<String> {
    fn y<T: serde::Serialize>(
        object: &T,
        status: Option<&ContainerStatus>,
    ) -> Result<String, serde_saphyr::ser::Error> {
        serde_saphyr::to_string(&WithStatus { object, status })
    }
    let text = match r {
        Resource::Group(o) => y(o, status),
        Resource::Container(o) => y(o, status),
        Resource::Policy(o) => y(o, status),
        Resource::IpPool(o) => y(o, status),
        Resource::Node(o) => y(o, status),
        Resource::BgpPeer(o) => y(o, status),
        Resource::ClusterConfig(o) => y(o, status),
    }
    .with_context(|| format!("cannot write {} as YAML", r.id()))?;
    Ok(if text.ends_with('\n') { text } else { text + "\n" })
}

/// A multi-document YAML stream, each Container with the status its agent reported.
pub fn to_yaml_stream(rs: &[Resource], status: &BTreeMap<String, ContainerStatus>) -> Result<String> {
    let mut out = String::new();
    for (i, r) in rs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&to_yaml_with(r, status_of(r, status))?);
    }
    Ok(out)
}

/// JSON: the object itself for a single named resource, a List object otherwise.
pub fn to_json(rs: &[Resource], single: bool, status: &BTreeMap<String, ContainerStatus>) -> Result<String> {
    let one = |r: &Resource| {
        let mut v = r.to_json();
        if let (Some(st), Value::Object(obj)) = (status_of(r, status), &mut v) {
            obj.insert("status".into(), serde_json::to_value(st).unwrap_or(Value::Null));
        }
        v
    };
    let v = if single && rs.len() == 1 {
        one(&rs[0])
    } else {
        json!({
            "apiVersion": API_VERSION,
            "kind": "List",
            "items": rs.iter().map(one).collect::<Vec<Value>>(),
        })
    };
    let mut s = serde_json::to_string_pretty(&v).context("cannot write JSON")?;
    s.push('\n');
    Ok(s)
}

/// Left-aligned columns separated by three spaces, kubectl style.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            l.push_str(c);
            if i + 1 < n {
                let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn or_dash(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

fn labels(r: &Resource) -> String {
    let l = &r.metadata().labels;
    if l.is_empty() {
        "-".into()
    } else {
        l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

fn rules_count(rules: &Option<Vec<Rule>>) -> String {
    match rules {
        None => "default".into(),
        Some(r) => r.len().to_string(),
    }
}

/// The header of the table for one kind (all resources given are of that kind).
pub fn kind_table(rs: &[Resource], wide: bool, status: &BTreeMap<String, ContainerStatus>) -> String {
    let Some(first) = rs.first() else {
        return String::new();
    };
    let (mut header, mut rows): (Vec<&str>, Vec<Vec<String>>) = match first {
        Resource::Group(_) => (vec!["NAME", "INGRESS", "EGRESS"], vec![]),
        Resource::Container(_) => (vec!["NAME", "NODE", "WORKLOAD", "IPS", "GROUPS"], vec![]),
        Resource::Policy(_) => (vec!["NAME", "ORDER", "SELECTOR", "TYPES", "INGRESS", "EGRESS"], vec![]),
        Resource::IpPool(_) => (vec!["NAME", "CIDR", "BLOCKSIZE", "NAT", "DISABLED"], vec![]),
        Resource::Node(_) => (vec!["NAME", "IPV4", "IPV6", "ASN", "RR-CLUSTER-ID"], vec![]),
        Resource::BgpPeer(_) => (vec!["NAME", "PEERIP", "ASN", "NODE"], vec![]),
        Resource::ClusterConfig(_) => (
            vec!["NAME", "ASN", "MESH", "ENDPOINT-TO-HOST", "PREFIX", "MTU", "LOGLEVEL"],
            vec![],
        ),
    };
    let container_kind = matches!(first, Resource::Container(_));
    if wide {
        if container_kind {
            header.extend(["INTERFACE", "HOST-INTERFACE", "STATUS-IPS", "STATE"]);
        }
        header.push("LABELS");
    }
    for r in rs {
        let mut row = match r {
            Resource::Group(g) => vec![
                g.metadata.name.clone(),
                rules_count(&g.spec.ingress),
                rules_count(&g.spec.egress),
            ],
            Resource::Container(c) => {
                let workload = match (&c.spec.container, &c.spec.netns) {
                    (Some(d), _) => format!("docker:{d}"),
                    (None, Some(ns)) => format!("netns:{ns}"),
                    (None, None) => "-".into(),
                };
                let ips = match &c.spec.ips {
                    Some(ips) => join(ips),
                    None => "auto".into(),
                };
                vec![
                    c.metadata.name.clone(),
                    c.spec.node.clone(),
                    workload,
                    ips,
                    join(&c.spec.groups),
                ]
            }
            Resource::Policy(p) => {
                let types: Vec<&str> = [calico_schema::PolicyType::Ingress, calico_schema::PolicyType::Egress]
                    .into_iter()
                    .filter(|t| p.applies_to(*t))
                    .map(|t| match t {
                        calico_schema::PolicyType::Ingress => "Ingress",
                        calico_schema::PolicyType::Egress => "Egress",
                    })
                    .collect();
                vec![
                    p.metadata.name.clone(),
                    p.spec.order.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                    p.spec.selector.clone().unwrap_or_else(|| "all()".into()),
                    join(types),
                    p.spec.ingress.len().to_string(),
                    p.spec.egress.len().to_string(),
                ]
            }
            Resource::IpPool(p) => vec![
                p.metadata.name.clone(),
                p.spec.cidr.to_string(),
                p.block_size().to_string(),
                p.spec.nat_outgoing.to_string(),
                p.spec.disabled.to_string(),
            ],
            Resource::Node(n) => vec![
                n.metadata.name.clone(),
                or_dash(n.spec.ipv4.map(|a| a.to_string())),
                or_dash(n.spec.ipv6.map(|a| a.to_string())),
                n.spec
                    .as_number
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "(cluster)".into()),
                or_dash(n.spec.route_reflector_cluster_id.map(|a| a.to_string())),
            ],
            Resource::BgpPeer(b) => vec![
                b.metadata.name.clone(),
                b.spec.peer_ip.to_string(),
                b.spec.as_number.to_string(),
                match (&b.spec.node, &b.spec.node_selector) {
                    (Some(n), _) => n.clone(),
                    (None, Some(s)) => format!("selector: {s}"),
                    (None, None) => "(all)".into(),
                },
            ],
            Resource::ClusterConfig(c) => vec![
                c.metadata.name.clone(),
                c.spec.as_number().to_string(),
                c.spec.node_to_node_mesh().to_string(),
                format!("{:?}", c.spec.endpoint_to_host_action()),
                c.spec.interface_prefix().to_string(),
                c.spec.mtu().to_string(),
                c.spec
                    .log_level
                    .map(|l| format!("{l:?}").to_ascii_lowercase())
                    .unwrap_or_else(|| "info".into()),
            ],
        };
        if wide {
            if let Resource::Container(c) = r {
                let st = status.get(&c.metadata.name);
                row.push(c.interface_name().to_string());
                row.push(or_dash(st.map(|s| s.host_interface.clone())));
                row.push(st.map(|s| join(&s.ips)).unwrap_or_else(|| "-".into()));
                row.push(match st {
                    None => "-".into(),
                    Some(s) if !s.message.is_empty() => format!("{} ({})", s.state, s.message),
                    Some(s) => s.state.to_string(),
                });
            }
            row.push(labels(r));
        }
        rows.push(row);
    }
    table(&header, &rows)
}

/// Where a sync directory owns this resource, the file it came from.
pub fn sync_owner(r: &Resource) -> Option<String> {
    let ann = &r.metadata().annotations;
    let owner = ann.get(OWNER_ANNOTATION)?;
    if !owner.starts_with("sync:") {
        return None;
    }
    Some(ann.get(SOURCE_ANNOTATION).cloned().unwrap_or_else(|| owner.clone()))
}

fn entity(e: &EntityRule) -> Vec<String> {
    let mut parts = Vec::new();
    if !e.groups.is_empty() {
        parts.push(format!("groups {}", e.groups.join(",")));
    }
    if let Some(s) = &e.selector {
        parts.push(format!("selector '{s}'"));
    }
    if let Some(s) = &e.not_selector {
        parts.push(format!("not selector '{s}'"));
    }
    if !e.nets.is_empty() {
        parts.push(format!("nets {}", join(&e.nets)));
    }
    if !e.not_nets.is_empty() {
        parts.push(format!("not nets {}", join(&e.not_nets)));
    }
    if !e.ports.is_empty() {
        parts.push(format!("ports {}", join(&e.ports)));
    }
    if !e.not_ports.is_empty() {
        parts.push(format!("not ports {}", join(&e.not_ports)));
    }
    parts
}

fn icmp(m: &IcmpMatch) -> String {
    match (m.icmp_type, m.code) {
        (Some(t), Some(c)) => format!("type {t} code {c}"),
        (Some(t), None) => format!("type {t}"),
        (None, Some(c)) => format!("code {c}"),
        (None, None) => "any".into(),
    }
}

/// A rule in one line: `Allow TCP from groups web to ports 80`.
pub fn rule_summary(r: &Rule) -> String {
    let mut s = format!("{:?}", r.action);
    if let Some(v) = r.ip_version {
        s.push_str(&format!(" IPv{}", u8::from(v)));
    }
    if let Some(p) = &r.protocol {
        s.push_str(&format!(" {p}"));
    }
    if let Some(p) = &r.not_protocol {
        s.push_str(&format!(" not {p}"));
    }
    if let Some(m) = &r.icmp {
        s.push_str(&format!(" icmp {}", icmp(m)));
    }
    let src = entity(&r.source);
    if !src.is_empty() {
        s.push_str(&format!(" from {}", src.join(" ")));
    }
    let dst = entity(&r.destination);
    if !dst.is_empty() {
        s.push_str(&format!(" to {}", dst.join(" ")));
    }
    s
}

/// `showgroups --detailed`: each group with its members and effective rules.
/// One member of a group as `showgroups --detailed` lists it.
pub struct Member {
    pub name: String,
    pub node: String,
    /// The addresses the agent programmed (or, before that, the spec's).
    pub ips: Vec<std::net::IpAddr>,
    /// `Programmed`, `Error: ...`, or `not yet programmed`.
    pub state: String,
}

pub fn group_detail(g: &Group, detail: &[Member]) -> String {
    let members: Vec<String> = detail.iter().map(|m| m.name.clone()).collect();
    let mut out = format!("Group {}\n", g.metadata.name);
    out.push_str(&format!(
        "  members: {}\n",
        if members.is_empty() {
            "(none)".to_string()
        } else {
            members.join(", ")
        }
    ));
    for (dir, given, rules) in [
        ("ingress", g.spec.ingress.is_some(), g.ingress_rules()),
        ("egress", g.spec.egress.is_some(), g.egress_rules()),
    ] {
        out.push_str(&format!("  {dir}{}:\n", if given { "" } else { " (default)" }));
        if rules.is_empty() {
            out.push_str("    (no rules: nothing allowed)\n");
        }
        for r in &rules {
            out.push_str(&format!("    - {}\n", rule_summary(r)));
        }
    }
    if !detail.is_empty() {
        out.push_str("  member addresses:\n");
        let rows: Vec<Vec<String>> = detail
            .iter()
            .map(|m| {
                let ips = if m.ips.is_empty() {
                    "(none yet)".to_string()
                } else {
                    m.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                };
                vec![m.name.clone(), ips, m.node.clone(), m.state.clone()]
            })
            .collect();
        for line in table(&["NAME", "IPS", "NODE", "STATE"], &rows).lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}
