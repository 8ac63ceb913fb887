//! Why a new connection is allowed or dropped: the policy model of docs/api.md
//! evaluated on the desired state, naming the rule that decides in each direction.
//!
//! Pure, like the renderers: the caller resolves every Container's addresses (explicit
//! or IPAM-assigned). The evaluation follows the contract, per direction, for the
//! workload at that end (egress at the source, ingress at the destination): the policies
//! selecting it, by order, where the first Allow or Deny decides, Pass skips to its
//! groups and Log goes on; then its groups in listed order, where the first Allow or
//! Deny decides and Pass goes on to the next group; otherwise drop. An address that is
//! no workload's has no policy of its own: only the workload end is checked.
//! Conntrack (replies of allowed connections) and anti-spoofing are outside its scope:
//! it explains the first packet of a connection from a workload's own address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use calico_schema::{
    Action, Container, EntityRule, Group, IpVersion, LabelSet, Policy, PolicyType, Resource, Rule, Selector,
};
use serde::Serialize;

/// The packet being explained: the first of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number; None: a protocol that no rule names (matches only rules
    /// without a protocol).
    pub protocol: Option<u8>,
    /// Destination port, for TCP, UDP, SCTP and UDPLite.
    pub port: Option<u16>,
    /// Source port; None: unknown, so rules that name source ports do not match and
    /// `notPorts` on the source exclude nothing.
    pub source_port: Option<u16>,
    /// ICMP type and code, for ICMP and ICMPv6.
    pub icmp: Option<(u8, u8)>,
    pub ip_version: IpVersion,
}

/// One end of the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A Container, by name.
    Workload(String),
    /// An address that is no Container's (a host, the internet).
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Allow,
    Deny,
}

/// What decided one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Decider {
    /// A policy's rule (index from 0 in its ingress or egress list).
    Policy { name: String, index: usize, rule: Rule },
    /// A group's rule; `default` when the group gives no rules of its own and this is
    /// the seed's default (members accept from each other, send anywhere).
    Group {
        name: String,
        index: usize,
        rule: Rule,
        default: bool,
    },
    /// No rule allowed or denied it: the end of the chain drops.
    NoRuleMatched,
}

/// A rule that matched without deciding (Pass or Log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Noted {
    /// `Policy/NAME` or `Group/NAME`.
    pub owner: String,
    pub index: usize,
    pub action: Action,
}

/// One direction at one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub direction: PolicyType,
    /// The Container whose rules decide.
    pub workload: String,
    pub node: String,
    pub verdict: Verdict,
    pub decided_by: Decider,
    /// Pass and Log rules that matched on the way, in order.
    pub noted: Vec<Noted>,
    /// Policies that select the workload in this direction, in evaluation order.
    pub policies: Vec<String>,
    /// Its groups, in listed order.
    pub groups: Vec<String>,
}

impl Step {
    /// The nft counter (rule comment, [`crate::rule_comment`]) of the rule that decided,
    /// or None when the end of the chain did.
    pub fn counter_name(&self) -> Option<String> {
        match &self.decided_by {
            Decider::Policy { name, index, .. } => Some(crate::rule_comment("Policy", name, self.direction, *index)),
            Decider::Group { name, index, .. } => Some(crate::rule_comment("Group", name, self.direction, *index)),
            Decider::NoRuleMatched => None,
        }
    }

    /// The nft counters of the Pass and Log rules that matched on the way.
    pub fn noted_counter_names(&self) -> Vec<String> {
        self.noted
            .iter()
            .map(|n| {
                let (kind, name) = n.owner.split_once('/').unwrap_or(("Policy", n.owner.as_str()));
                crate::rule_comment(kind, name, self.direction, n.index)
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub source: String,
    pub destination: String,
    /// The source's address the packet leaves from.
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub egress: Option<Step>,
    pub ingress: Option<Step>,
    /// Allow only when every direction that applies allows.
    pub verdict: Verdict,
}

/// Why a flow cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("Container '{0}' does not exist")]
    NoSuchContainer(String),
    #[error("Container '{0}' has no IPv{1} address")]
    NoAddress(String, u8),
    #[error("neither end is a Container: no policy applies between two outside addresses")]
    NoWorkload,
}

/// The desired state, indexed for evaluation.
pub struct World<'a> {
    groups: BTreeMap<&'a str, &'a Group>,
    containers: BTreeMap<&'a str, (&'a Container, Vec<IpAddr>)>,
    /// In evaluation order.
    policies: Vec<&'a Policy>,
}

impl<'a> World<'a> {
    /// `addrs`: Containers' addresses by name; a Container missing from it has its
    /// explicit `spec.ips`.
    pub fn new(resources: &'a [Resource], addrs: &BTreeMap<String, Vec<IpAddr>>) -> World<'a> {
        let mut w = World {
            groups: BTreeMap::new(),
            containers: BTreeMap::new(),
            policies: Vec::new(),
        };
        for r in resources {
            match r {
                Resource::Group(g) => {
                    w.groups.insert(g.metadata.name.as_str(), g);
                }
                Resource::Container(c) => {
                    let mut ips = addrs
                        .get(&c.metadata.name)
                        .cloned()
                        .or_else(|| c.spec.ips.clone())
                        .unwrap_or_default();
                    ips.sort();
                    ips.dedup();
                    w.containers.insert(c.metadata.name.as_str(), (c, ips));
                }
                Resource::Policy(p) => w.policies.push(p),
                _ => {}
            }
        }
        w.policies.sort_by_key(|p| p.sort_key());
        w
    }

    /// The Container holding `ip`, if any.
    pub fn holder(&self, ip: IpAddr) -> Option<&'a str> {
        self.containers
            .iter()
            .find(|(_, (_, ips))| ips.contains(&ip))
            .map(|(name, _)| *name)
    }

    /// The Containers' names, sorted.
    pub fn container_names(&self) -> Vec<&'a str> {
        self.containers.keys().copied().collect()
    }

    /// A Container's addresses.
    pub fn addresses(&self, name: &str) -> Option<&[IpAddr]> {
        self.containers.get(name).map(|(_, ips)| ips.as_slice())
    }

    /// A Container's selector labels, with only groups that exist.
    pub fn labels(&self, name: &str) -> Option<LabelSet> {
        let (c, _) = self.containers.get(name)?;
        let mut l = c.selector_labels();
        let groups = self.groups_of(name);
        if groups.is_empty() {
            l.remove("group");
        } else {
            l.insert("group".into(), groups);
        }
        Some(l)
    }

    /// The groups a Container is in that exist, in listed order, once each.
    fn groups_of(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some((c, _)) = self.containers.get(name) {
            for g in &c.spec.groups {
                if self.groups.contains_key(g.as_str()) && !out.contains(g) {
                    out.push(g.clone());
                }
            }
        }
        out
    }

    fn selects(&self, selector: Option<&str>, labels: &LabelSet) -> bool {
        // A selector that does not parse selects nothing, as in the dataplane.
        Selector::parse(selector.unwrap_or("all()")).is_ok_and(|s| s.matches(labels))
    }
}

/// The two ends resolved: a workload's name (if it is one) and the packet's address.
struct End<'w> {
    workload: Option<&'w str>,
    ip: IpAddr,
    labels: Option<LabelSet>,
    groups: Vec<String>,
}

fn resolve<'w>(w: &World<'w>, peer: &Peer, version: IpVersion) -> Result<End<'w>, ExplainError> {
    let workload = match peer {
        Peer::Workload(name) => {
            let (key, _) = w
                .containers
                .get_key_value(name.as_str())
                .ok_or_else(|| ExplainError::NoSuchContainer(name.clone()))?;
            Some(*key)
        }
        Peer::Address(ip) => w.holder(*ip),
    };
    let ip = match (peer, workload) {
        (Peer::Address(ip), _) => *ip,
        (Peer::Workload(_), Some(name)) => {
            let want_v4 = version == IpVersion::V4;
            *w.addresses(name)
                .unwrap_or_default()
                .iter()
                .find(|a| a.is_ipv4() == want_v4)
                .ok_or_else(|| ExplainError::NoAddress(name.to_string(), if want_v4 { 4 } else { 6 }))?
        }
        (Peer::Workload(name), None) => return Err(ExplainError::NoSuchContainer(name.clone())),
    };
    Ok(End {
        workload,
        ip,
        labels: workload.and_then(|n| w.labels(n)),
        groups: workload.map(|n| w.groups_of(n)).unwrap_or_default(),
    })
}

/// Explains the first packet of `flow` from `src` to `dst`.
pub fn explain(w: &World<'_>, src: &Peer, dst: &Peer, flow: &Flow) -> Result<Explanation, ExplainError> {
    let s = resolve(w, src, flow.ip_version)?;
    let d = resolve(w, dst, flow.ip_version)?;
    if s.workload.is_none() && d.workload.is_none() {
        return Err(ExplainError::NoWorkload);
    }
    let ctx = Ctx {
        w,
        src: &s,
        dst: &d,
        flow,
    };
    let egress = s.workload.map(|name| ctx.direction(name, PolicyType::Egress, &s));
    let ingress = d.workload.map(|name| ctx.direction(name, PolicyType::Ingress, &d));
    let denied = [&egress, &ingress]
        .iter()
        .any(|st| st.as_ref().is_some_and(|st| st.verdict == Verdict::Deny));
    Ok(Explanation {
        source: s.workload.map_or_else(|| s.ip.to_string(), str::to_string),
        destination: d.workload.map_or_else(|| d.ip.to_string(), str::to_string),
        source_ip: s.ip,
        destination_ip: d.ip,
        egress,
        ingress,
        verdict: if denied { Verdict::Deny } else { Verdict::Allow },
    })
}

struct Ctx<'a, 'w> {
    w: &'a World<'w>,
    src: &'a End<'w>,
    dst: &'a End<'w>,
    flow: &'a Flow,
}

/// How one rule list ended.
enum Outcome {
    Decided(usize, Action),
    Passed,
    Fell,
}

impl Ctx<'_, '_> {
    fn direction(&self, workload: &str, dir: PolicyType, at: &End<'_>) -> Step {
        let labels = at.labels.clone().unwrap_or_default();
        let node = self
            .w
            .containers
            .get(workload)
            .map(|(c, _)| c.spec.node.clone())
            .unwrap_or_default();
        let policies: Vec<&Policy> = self
            .w
            .policies
            .iter()
            .copied()
            .filter(|p| p.applies_to(dir) && self.w.selects(p.spec.selector.as_deref(), &labels))
            .collect();
        let mut noted = Vec::new();
        let step = |verdict, decided_by| Step {
            direction: dir,
            workload: workload.to_string(),
            node: node.clone(),
            verdict,
            decided_by,
            noted: Vec::new(),
            policies: policies.iter().map(|p| p.metadata.name.clone()).collect(),
            groups: at.groups.clone(),
        };
        let decide = |action: Action| match action {
            Action::Allow => Verdict::Allow,
            _ => Verdict::Deny,
        };
        for p in &policies {
            let rules = if dir == PolicyType::Ingress {
                &p.spec.ingress
            } else {
                &p.spec.egress
            };
            let owner = format!("Policy/{}", p.metadata.name);
            match self.first_decision(rules, &owner, &mut noted) {
                Outcome::Decided(i, action) => {
                    let mut s = step(
                        decide(action),
                        Decider::Policy {
                            name: p.metadata.name.clone(),
                            index: i,
                            rule: rules[i].clone(),
                        },
                    );
                    s.noted = noted;
                    return s;
                }
                Outcome::Passed => break,
                Outcome::Fell => {}
            }
        }
        for g in &at.groups {
            let Some(group) = self.w.groups.get(g.as_str()) else {
                continue;
            };
            let (rules, default) = if dir == PolicyType::Ingress {
                (group.ingress_rules(), group.spec.ingress.is_none())
            } else {
                (group.egress_rules(), group.spec.egress.is_none())
            };
            let owner = format!("Group/{g}");
            if let Outcome::Decided(i, action) = self.first_decision(&rules, &owner, &mut noted) {
                let mut s = step(
                    decide(action),
                    Decider::Group {
                        name: g.clone(),
                        index: i,
                        rule: rules[i].clone(),
                        default,
                    },
                );
                s.noted = noted;
                return s;
            }
        }
        let mut s = step(Verdict::Deny, Decider::NoRuleMatched);
        s.noted = noted;
        s
    }

    /// The first rule of `rules` that matches and allows or denies; Pass ends the list.
    fn first_decision(&self, rules: &[Rule], owner: &str, noted: &mut Vec<Noted>) -> Outcome {
        for (i, r) in rules.iter().enumerate() {
            if !self.rule_matches(r) {
                continue;
            }
            match r.action {
                Action::Allow | Action::Deny => return Outcome::Decided(i, r.action),
                Action::Pass | Action::Log => {
                    noted.push(Noted {
                        owner: owner.to_string(),
                        index: i,
                        action: r.action,
                    });
                    if r.action == Action::Pass {
                        return Outcome::Passed;
                    }
                }
            }
        }
        Outcome::Fell
    }

    fn rule_matches(&self, r: &Rule) -> bool {
        let f = self.flow;
        if let Some(p) = r.protocol {
            if f.protocol != Some(p.number()) {
                return false;
            }
        }
        if let Some(p) = r.not_protocol {
            if f.protocol == Some(p.number()) {
                return false;
            }
        }
        if r.ip_version.is_some_and(|v| v != f.ip_version) {
            return false;
        }
        if let Some(m) = r.icmp {
            let Some((t, c)) = f.icmp else { return false };
            if m.icmp_type.is_some_and(|mt| mt != t) || m.code.is_some_and(|mc| mc != c) {
                return false;
            }
        }
        self.entity_matches(&r.source, self.src, f.source_port) && self.entity_matches(&r.destination, self.dst, f.port)
    }

    fn entity_matches(&self, e: &EntityRule, end: &End<'_>, port: Option<u16>) -> bool {
        if !e.groups.is_empty() && !e.groups.iter().any(|g| end.groups.contains(g)) {
            return false;
        }
        // Selectors stand for the addresses of the Containers they select: an outside
        // address is in no selector's set, so `selector` misses it and `notSelector`
        // keeps it.
        if let Some(s) = &e.selector {
            if !end.labels.as_ref().is_some_and(|l| self.w.selects(Some(s), l)) {
                return false;
            }
        }
        if let Some(s) = &e.not_selector {
            if end.labels.as_ref().is_some_and(|l| self.w.selects(Some(s), l)) {
                return false;
            }
        }
        if !e.nets.is_empty() && !e.nets.iter().any(|n| n.net().contains(&end.ip)) {
            return false;
        }
        if e.not_nets.iter().any(|n| n.net().contains(&end.ip)) {
            return false;
        }
        if !e.ports.is_empty() && !port.is_some_and(|p| e.ports.iter().any(|r| r.contains(p))) {
            return false;
        }
        if port.is_some_and(|p| e.not_ports.iter().any(|r| r.contains(p))) {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::load_str;

    fn world_of(yaml: &str) -> Vec<Resource> {
        load_str("t.yaml", yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|l| l.resource)
            .collect()
    }

    const SEED: &str = "
apiVersion: calico/v1
kind: Group
metadata: {name: A_C_E}
---
apiVersion: calico/v1
kind: Group
metadata: {name: B}
---
apiVersion: calico/v1
kind: Container
metadata: {name: a, labels: {tier: web}}
spec: {node: h1, netns: /a, ips: [10.65.0.1], groups: [A_C_E]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: b}
spec: {node: h1, netns: /b, ips: [10.65.0.2], groups: [B]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: c, labels: {tier: db}}
spec: {node: h2, netns: /c, ips: [10.65.0.3], groups: [A_C_E]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: lonely}
spec: {node: h2, netns: /l, ips: [10.65.0.9]}
---
apiVersion: calico/v1
kind: Policy
metadata: {name: db}
spec:
  order: 10
  selector: tier == \"db\"
  ingress:
    - action: Log
    - action: Deny
      protocol: TCP
      destination: {ports: [80]}
    - action: Allow
      protocol: TCP
      source: {selector: tier == \"web\"}
      destination: {ports: [5432]}
    - action: Pass
";

    fn tcp(port: u16) -> Flow {
        Flow {
            protocol: Some(6),
            port: Some(port),
            source_port: None,
            icmp: None,
            ip_version: IpVersion::V4,
        }
    }

    fn wl(n: &str) -> Peer {
        Peer::Workload(n.into())
    }

    #[test]
    fn a_policy_rule_decides_and_is_named() {
        let rs = world_of(SEED);
        let w = World::new(&rs, &BTreeMap::new());
        let e = explain(&w, &wl("a"), &wl("c"), &tcp(5432)).unwrap();
        assert_eq!(e.verdict, Verdict::Allow);
        let ing = e.ingress.unwrap();
        assert!(matches!(&ing.decided_by, Decider::Policy { name, index: 2, .. } if name == "db"));
        assert_eq!(
            ing.noted,
            vec![Noted {
                owner: "Policy/db".into(),
                index: 0,
                action: Action::Log
            }]
        );
        // Egress at a: no policy selects it for egress; its group's default sends anywhere.
        let eg = e.egress.unwrap();
        assert!(matches!(&eg.decided_by, Decider::Group { name, default: true, .. } if name == "A_C_E"));

        let e = explain(&w, &wl("a"), &wl("c"), &tcp(80)).unwrap();
        assert_eq!(e.verdict, Verdict::Deny);
        assert!(matches!(
            &e.ingress.unwrap().decided_by,
            Decider::Policy { index: 1, .. }
        ));
    }

    #[test]
    fn pass_goes_on_to_the_groups() {
        let rs = world_of(SEED);
        let w = World::new(&rs, &BTreeMap::new());
        // tcp/22 from a: no Allow or Deny in the policy; Pass hands it to c's group,
        // whose default accepts members.
        let e = explain(&w, &wl("a"), &wl("c"), &tcp(22)).unwrap();
        assert_eq!(e.verdict, Verdict::Allow);
        let ing = e.ingress.unwrap();
        assert!(matches!(&ing.decided_by, Decider::Group { name, index: 0, default: true, .. } if name == "A_C_E"));
        assert_eq!(ing.noted.last().map(|n| n.action), Some(Action::Pass));
        // From b, not a member: the group's default does not match; nothing decides.
        let e = explain(&w, &wl("b"), &wl("c"), &tcp(22)).unwrap();
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.ingress.unwrap().decided_by, Decider::NoRuleMatched);
    }

    #[test]
    fn no_group_and_no_policy_is_drop_and_outside_addresses_have_no_rules() {
        let rs = world_of(SEED);
        let w = World::new(&rs, &BTreeMap::new());
        let e = explain(&w, &wl("lonely"), &wl("a"), &tcp(1)).unwrap();
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.egress.unwrap().decided_by, Decider::NoRuleMatched);
        // To an outside address: only egress at b applies, and its group sends anywhere.
        let out = Peer::Address("192.0.2.1".parse().unwrap());
        let e = explain(&w, &wl("b"), &out, &tcp(443)).unwrap();
        assert_eq!((e.verdict, e.ingress.is_none()), (Verdict::Allow, true));
        // From outside into a: its group accepts only members.
        let e = explain(&w, &out, &wl("a"), &tcp(443)).unwrap();
        assert_eq!((e.verdict, e.egress.is_none()), (Verdict::Deny, true));
        // An address a Container holds is that Container.
        let e = explain(&w, &Peer::Address("10.65.0.1".parse().unwrap()), &wl("c"), &tcp(5432)).unwrap();
        assert_eq!((e.source.as_str(), e.verdict), ("a", Verdict::Allow));
        assert_eq!(explain(&w, &out, &out, &tcp(1)), Err(ExplainError::NoWorkload));
        assert_eq!(
            explain(&w, &wl("nosuch"), &out, &tcp(1)),
            Err(ExplainError::NoSuchContainer("nosuch".into()))
        );
        let v6 = Flow {
            ip_version: IpVersion::V6,
            ..tcp(1)
        };
        assert_eq!(
            explain(&w, &wl("a"), &out, &v6),
            Err(ExplainError::NoAddress("a".into(), 6))
        );
    }
}
