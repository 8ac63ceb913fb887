//! Who can reach whom: [`explain`](crate::explain) over every ordered pair of a set of
//! Containers and a set of probes, and the difference a change makes to it (what
//! `calicoctl diff` reports as opened and closed).

use std::collections::BTreeSet;
use std::fmt;

use calico_schema::{IpVersion, Protocol, Resource};
use serde::Serialize;

use crate::explain::{explain, Decider, Explanation, Flow, Peer, Step, Verdict, World};

/// One kind of first packet: ICMP echo, or a protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    pub protocol: Protocol,
    pub port: Option<u16>,
}

impl Serialize for Probe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.protocol.to_string().to_lowercase();
        match self.port {
            Some(p) => write!(f, "{proto}/{p}"),
            None => f.write_str(&proto),
        }
    }
}

impl Probe {
    pub const ICMP: Probe = Probe {
        protocol: Protocol::Icmp,
        port: None,
    };

    fn flow(&self, version: IpVersion) -> Flow {
        let icmp = match (self.protocol, version) {
            (Protocol::Icmp | Protocol::IcmpV6, IpVersion::V6) => Some((128, 0)),
            (Protocol::Icmp | Protocol::IcmpV6, IpVersion::V4) => Some((8, 0)),
            _ => None,
        };
        let protocol = match (self.protocol, version) {
            (Protocol::Icmp, IpVersion::V6) => Protocol::IcmpV6,
            (Protocol::IcmpV6, IpVersion::V4) => Protocol::Icmp,
            (p, _) => p,
        };
        Flow {
            protocol: Some(protocol.number()),
            port: self.port,
            source_port: None,
            icmp,
            ip_version: version,
        }
    }
}

/// ICMP echo, and every destination port the rules of `resources` name, with the rule's
/// protocol (a range by its first port): the probes that tell the rules apart.
pub fn probes_named(resources: &[&[Resource]]) -> Vec<Probe> {
    let mut out = BTreeSet::from([Probe::ICMP]);
    for rs in resources {
        for r in rs.iter() {
            let rules: Vec<&calico_schema::Rule> = match r {
                Resource::Policy(p) => p.spec.ingress.iter().chain(&p.spec.egress).collect(),
                Resource::Group(g) => g
                    .spec
                    .ingress
                    .iter()
                    .flatten()
                    .chain(g.spec.egress.iter().flatten())
                    .collect(),
                _ => continue,
            };
            for rule in rules {
                let Some(protocol) = rule.protocol.filter(Protocol::has_ports) else {
                    continue;
                };
                for port in &rule.destination.ports {
                    out.insert(Probe {
                        protocol,
                        port: Some(port.first()),
                    });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The verdict for every ordered pair (source row, destination column) and probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    pub names: Vec<String>,
    pub probes: Vec<Probe>,
    /// `cells[src][dst]`: per probe, allowed or not; None on the diagonal and where the
    /// two share no IP version (or one has no address yet).
    pub cells: Vec<Vec<Option<Vec<bool>>>>,
    /// `why[src][dst]`: per probe, what decides it ([`decided_by`]); empty where the
    /// cell is None.
    pub why: Vec<Vec<Vec<String>>>,
}

/// The IP version two Containers can talk over: IPv4 when both have it, else IPv6.
fn common_version(w: &World<'_>, a: &str, b: &str) -> Option<IpVersion> {
    let has = |n: &str, v4: bool| {
        w.addresses(n)
            .is_some_and(|ips| ips.iter().any(|ip| ip.is_ipv4() == v4))
    };
    if has(a, true) && has(b, true) {
        Some(IpVersion::V4)
    } else if has(a, false) && has(b, false) {
        Some(IpVersion::V6)
    } else {
        None
    }
}

fn explain_pair(w: &World<'_>, src: &str, dst: &str, probe: &Probe) -> Option<Explanation> {
    let version = common_version(w, src, dst)?;
    explain(
        w,
        &Peer::Workload(src.to_string()),
        &Peer::Workload(dst.to_string()),
        &probe.flow(version),
    )
    .ok()
}

pub fn matrix(w: &World<'_>, names: &[String], probes: &[Probe]) -> Matrix {
    let mut cells = Vec::new();
    let mut why = Vec::new();
    for src in names {
        let (mut row, mut row_why) = (Vec::new(), Vec::new());
        for dst in names {
            let explained: Option<Vec<Explanation>> = if src == dst {
                None
            } else {
                probes.iter().map(|p| explain_pair(w, src, dst, p)).collect()
            };
            row.push(
                explained
                    .as_ref()
                    .map(|es| es.iter().map(|e| e.verdict == Verdict::Allow).collect()),
            );
            row_why.push(
                explained
                    .map(|es| es.iter().map(decided_by).collect())
                    .unwrap_or_default(),
            );
        }
        cells.push(row);
        why.push(row_why);
    }
    Matrix {
        names: names.to_vec(),
        probes: probes.to_vec(),
        cells,
        why,
    }
}

/// A pair and probe whose verdict a change turns around.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub source: String,
    pub destination: String,
    pub probe: Probe,
    /// True: now allowed; false: now dropped.
    pub opens: bool,
    /// What decides it after the change (`Policy db-web spec.ingress[2]`, ...).
    pub by: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} {} ({})",
            if self.opens { "opens" } else { "closes" },
            self.source,
            self.destination,
            self.probe,
            self.by
        )
    }
}

/// What decides an explanation: the deciding step's rule, by its place.
pub fn decided_by(e: &Explanation) -> String {
    // The direction that dropped it decides; when both allow, name both.
    let steps: Vec<&Step> = [&e.egress, &e.ingress].into_iter().flatten().collect();
    let deciding: Vec<&Step> = match steps.iter().find(|s| s.verdict == Verdict::Deny) {
        Some(s) => vec![*s],
        None => steps,
    };
    deciding
        .iter()
        .map(|s| {
            let dir = match s.direction {
                calico_schema::PolicyType::Ingress => "ingress",
                calico_schema::PolicyType::Egress => "egress",
            };
            match &s.decided_by {
                Decider::Policy { name, index, .. } => format!("Policy {name} spec.{dir}[{index}]"),
                Decider::Group {
                    name, default: true, ..
                } => format!("Group {name}'s default {dir} rule"),
                Decider::Group { name, index, .. } => format!("Group {name} spec.{dir}[{index}]"),
                Decider::NoRuleMatched => format!("no {dir} rule at {} allows it", s.workload),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every pair (of Containers in both states) and probe whose verdict differs between
/// `before` and `after`, in order.
pub fn impact(before: &World<'_>, after: &World<'_>, probes: &[Probe]) -> Vec<Change> {
    let names: BTreeSet<&str> = before
        .container_names()
        .into_iter()
        .filter(|n| after.addresses(n).is_some())
        .collect();
    let mut out = Vec::new();
    for src in &names {
        for dst in &names {
            if src == dst {
                continue;
            }
            for p in probes {
                let old = explain_pair(before, src, dst, p).map(|e| e.verdict);
                let Some(new) = explain_pair(after, src, dst, p) else {
                    continue;
                };
                if old.is_some_and(|o| o != new.verdict) {
                    out.push(Change {
                        source: src.to_string(),
                        destination: dst.to_string(),
                        probe: *p,
                        opens: new.verdict == Verdict::Allow,
                        by: decided_by(&new),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn load(yaml: &str) -> Vec<Resource> {
        calico_schema::load_str("t.yaml", yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|l| l.resource)
            .collect()
    }

    const BASE: &str = "
apiVersion: calico/v1
kind: Group
metadata: {name: web}
---
apiVersion: calico/v1
kind: Group
metadata: {name: db}
---
apiVersion: calico/v1
kind: Container
metadata: {name: w1}
spec: {node: n, netns: /a, ips: [10.0.0.1], groups: [web]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: w2}
spec: {node: n, netns: /b, ips: [10.0.0.2], groups: [web]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: d1}
spec: {node: n, netns: /c, ips: [10.0.0.3], groups: [db]}
";

    const OPEN_DB: &str = "
---
apiVersion: calico/v1
kind: Policy
metadata: {name: db-web}
spec:
  selector: group == \"db\"
  ingress:
    - action: Allow
      protocol: TCP
      source: {groups: [web]}
      destination: {ports: [5432]}
";

    #[test]
    fn the_matrix_follows_the_groups() {
        let rs = load(BASE);
        let w = World::new(&rs, &BTreeMap::new());
        let names: Vec<String> = w.container_names().iter().map(ToString::to_string).collect();
        let m = matrix(&w, &names, &[Probe::ICMP]);
        assert_eq!(names, ["d1", "w1", "w2"]);
        // w1 <-> w2 share a group; d1 is alone.
        assert_eq!(m.cells[1][2], Some(vec![true]));
        assert_eq!(m.cells[2][1], Some(vec![true]));
        assert_eq!(m.cells[1][0], Some(vec![false]));
        assert_eq!(m.cells[0][1], Some(vec![false]));
        assert_eq!(m.cells[0][0], None);
    }

    #[test]
    fn impact_names_what_a_policy_opens_and_by_which_rule() {
        let before = load(BASE);
        let after = load(&format!("{BASE}{OPEN_DB}"));
        let probes = probes_named(&[&before, &after]);
        assert_eq!(
            probes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["tcp/5432", "icmp"]
        );
        let (b, a) = (
            World::new(&before, &BTreeMap::new()),
            World::new(&after, &BTreeMap::new()),
        );
        let changes: Vec<String> = impact(&b, &a, &probes).iter().map(ToString::to_string).collect();
        assert_eq!(
            changes,
            [
                "opens w1 -> d1 tcp/5432 (Group web's default egress rule, Policy db-web spec.ingress[0])",
                "opens w2 -> d1 tcp/5432 (Group web's default egress rule, Policy db-web spec.ingress[0])",
            ]
        );
        // The reverse change closes the same pairs.
        let closes: Vec<String> = impact(&a, &b, &probes).iter().map(ToString::to_string).collect();
        assert_eq!(
            closes,
            [
                "closes w1 -> d1 tcp/5432 (no ingress rule at d1 allows it)",
                "closes w2 -> d1 tcp/5432 (no ingress rule at d1 allows it)",
            ]
        );
        assert!(impact(&a, &a, &probes).is_empty());
    }
}
