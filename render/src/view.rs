//! One node's view of the cluster: everything the renderers need, resolved once.
//!
//! The caller (agent or `calicoctl render`) owns I/O: it resolves every Container's
//! addresses (explicit `spec.ips` or IPAM-assigned) and this node's IPAM blocks. This
//! module only joins and indexes. Dangling references never panic: they are recorded in
//! [`NodeView::warnings`] and treated as empty (a group that does not exist has no
//! members; a selector that does not parse selects nothing).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use calico_schema::{
    BgpPeer, ClusterConfigSpec, Container, Group, IpPool, LabelSet, Node, Policy, PolicyType, Resource, Rule, Selector,
};
use ipnet::IpNet;

use crate::names::host_iface_name;

/// A Container running on this node, as the dataplane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The Container resource's name.
    pub name: String,
    /// Host side of its veth.
    pub iface: String,
    /// Its addresses, sorted, without duplicates.
    pub ips: Vec<IpAddr>,
    /// The groups it is a member of that exist, in the order listed in its spec.
    pub groups: Vec<String>,
    /// Policies selecting it with Ingress type, in evaluation order. Shared by every
    /// endpoint with the same labels (and so the same policies).
    pub ingress_policies: Arc<[String]>,
    /// Policies selecting it with Egress type, in evaluation order. Shared likewise.
    pub egress_policies: Arc<[String]>,
}

/// The addresses a rule's `selector`/`notSelector` text stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorSet {
    /// Canonical form: equal meaning, equal text, so equal sets are shared.
    pub canonical: String,
    /// Addresses of every Container, cluster-wide, that the selector matches.
    pub members: BTreeSet<IpAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub node: String,
    /// This node's Node resource, when declared.
    pub this_node: Option<Node>,
    /// The ClusterConfig named `default` (defaults when absent).
    pub config: ClusterConfigSpec,
    /// Local Containers that have addresses, sorted by name.
    pub endpoints: Vec<Endpoint>,
    /// Groups some local endpoint is a member of.
    pub groups: BTreeMap<String, Group>,
    /// Policies selecting at least one local endpoint.
    pub policies: BTreeMap<String, Policy>,
    /// Member addresses, cluster-wide, of every group named by a local endpoint or by a
    /// rule of a group or policy above. Groups that do not exist map to an empty set.
    pub group_members: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Every selector text used by those rules; absent when it does not parse.
    pub selectors: BTreeMap<String, SelectorSet>,
    /// All pools, sorted by name.
    pub pools: Vec<IpPool>,
    /// All nodes, sorted by name.
    pub nodes: Vec<Node>,
    /// BGPPeers that apply to this node, sorted by name.
    pub peers: Vec<BgpPeer>,
    /// This node's IPAM blocks, sorted.
    pub local_blocks: Vec<IpNet>,
    /// What was skipped and why: dangling references, unparsable selectors, local
    /// Containers without addresses.
    pub warnings: Vec<String>,
}

fn parse_selector(text: Option<&str>) -> Result<Selector, String> {
    match text {
        None => Ok(Selector::all()),
        Some(t) => Selector::parse(t).map_err(|e| e.to_string()),
    }
}

impl NodeView {
    /// Builds `node`'s view. `addrs` gives each Container's addresses by name; a
    /// Container missing from it falls back to its explicit `spec.ips` (which is what
    /// rendering from files, with no IPAM at hand, needs). `local_blocks` are this
    /// node's IPAM blocks.
    pub fn build(
        node: &str,
        resources: &[Resource],
        addrs: &BTreeMap<String, Vec<IpAddr>>,
        local_blocks: &[IpNet],
    ) -> NodeView {
        let mut warnings = Vec::new();
        let mut all_groups: BTreeMap<&str, &Group> = BTreeMap::new();
        let mut containers: BTreeMap<&str, &Container> = BTreeMap::new();
        let mut all_policies: BTreeMap<&str, &Policy> = BTreeMap::new();
        let mut pools = Vec::new();
        let mut nodes = Vec::new();
        let mut all_peers = Vec::new();
        let mut config = None;
        for r in resources {
            match r {
                Resource::Group(g) => {
                    all_groups.insert(&g.metadata.name, g);
                }
                Resource::Container(c) => {
                    containers.insert(&c.metadata.name, c);
                }
                Resource::Policy(p) => {
                    all_policies.insert(&p.metadata.name, p);
                }
                Resource::IpPool(p) => pools.push(p.clone()),
                Resource::Node(n) => nodes.push(n.clone()),
                Resource::BgpPeer(p) => all_peers.push(p.clone()),
                Resource::ClusterConfig(c) => {
                    if c.metadata.name == "default" {
                        config = Some(c.spec.clone());
                    } else {
                        warnings.push(format!(
                            "ClusterConfig/{} ignored: only the one named 'default' applies",
                            c.metadata.name
                        ));
                    }
                }
            }
        }
        pools.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        all_peers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let config = config.unwrap_or_default();
        let prefix = config.interface_prefix().to_string();

        // Cluster-wide: every Container's effective groups, labels and addresses, which
        // group and selector sets are computed from. Containers of one application share
        // their labels, so label sets are interned: selectors are evaluated once per
        // distinct label set, not once per Container.
        struct Member<'a> {
            c: &'a Container,
            groups: Vec<String>,
            /// Index into `label_sets`.
            labels: usize,
            ips: Vec<IpAddr>,
        }
        let mut label_sets: Vec<LabelSet> = Vec::new();
        let mut label_ids: HashMap<LabelSet, usize> = HashMap::new();
        let mut members = Vec::with_capacity(containers.len());
        for (name, c) in &containers {
            let mut ips: Vec<IpAddr> = match addrs.get(*name) {
                Some(a) => a.clone(),
                None => c.spec.ips.clone().unwrap_or_default(),
            };
            ips.sort();
            ips.dedup();
            let mut groups = Vec::new();
            for g in &c.spec.groups {
                if groups.contains(g) {
                    continue;
                }
                if all_groups.contains_key(g.as_str()) {
                    groups.push(g.clone());
                } else if c.spec.node == node {
                    // Only local dangling references are worth reporting on this node.
                    warnings.push(format!(
                        "Container/{name}: group '{g}' does not exist; it is not a member"
                    ));
                }
            }
            // The built-in `group` label lists only real memberships, so a selector on
            // `group == "x"` and membership of x always agree.
            let mut labels = c.selector_labels();
            if groups.is_empty() {
                labels.remove("group");
            } else {
                labels.insert("group".into(), groups.clone());
            }
            let labels = match label_ids.get(&labels) {
                Some(id) => *id,
                None => {
                    let id = label_sets.len();
                    label_sets.push(labels.clone());
                    label_ids.insert(labels, id);
                    id
                }
            };
            members.push(Member { c, groups, labels, ips });
        }

        // Policy selectors, parsed once; a policy whose selector does not parse selects
        // nothing rather than everything.
        let mut policy_order: Vec<(&Policy, Selector)> = Vec::new();
        for p in all_policies.values() {
            match parse_selector(p.spec.selector.as_deref()) {
                Ok(s) => policy_order.push((p, s)),
                Err(e) => warnings.push(format!(
                    "Policy/{}: selector does not parse ({e}); it selects nothing",
                    p.metadata.name
                )),
            }
        }
        policy_order.sort_by_key(|(p, _)| p.sort_key());

        // Per distinct label set of a local endpoint: the policies selecting it, by
        // direction, in evaluation order.
        type Selected = (Arc<[String]>, Arc<[String]>);
        let mut selected: Vec<Option<Selected>> = vec![None; label_sets.len()];
        let mut endpoints = Vec::new();
        let mut groups = BTreeMap::new();
        let mut policies = BTreeMap::new();
        for m in &members {
            if m.c.spec.node != node {
                continue;
            }
            let name = &m.c.metadata.name;
            if m.ips.is_empty() {
                warnings.push(format!("Container/{name}: no addresses yet; not programmed"));
                continue;
            }
            let (ingress_policies, egress_policies) = selected[m.labels]
                .get_or_insert_with(|| {
                    let labels = &label_sets[m.labels];
                    let mut ingress = Vec::new();
                    let mut egress = Vec::new();
                    for (p, sel) in &policy_order {
                        if !sel.matches(labels) {
                            continue;
                        }
                        let pname = &p.metadata.name;
                        if p.applies_to(PolicyType::Ingress) {
                            ingress.push(pname.clone());
                        }
                        if p.applies_to(PolicyType::Egress) {
                            egress.push(pname.clone());
                        }
                        if !policies.contains_key(pname) {
                            policies.insert(pname.clone(), (*p).clone());
                        }
                    }
                    (ingress.into(), egress.into())
                })
                .clone();
            for g in &m.groups {
                if groups.contains_key(g) {
                    continue;
                }
                if let Some(grp) = all_groups.get(g.as_str()) {
                    groups.insert(g.clone(), (*grp).clone());
                }
            }
            endpoints.push(Endpoint {
                name: name.clone(),
                iface: host_iface_name(&prefix, name),
                ips: m.ips.clone(),
                groups: m.groups.clone(),
                ingress_policies,
                egress_policies,
            });
        }

        // Everything the rendered rules refer to by identity.
        let mut group_refs: BTreeSet<String> = groups.keys().cloned().collect();
        let mut selector_refs: BTreeSet<String> = BTreeSet::new();
        for g in groups.values() {
            for rule in g.ingress_rules().iter().chain(g.egress_rules().iter()) {
                collect_refs(rule, &mut group_refs, &mut selector_refs);
            }
        }
        for p in policies.values() {
            for rule in p.spec.ingress.iter().chain(p.spec.egress.iter()) {
                collect_refs(rule, &mut group_refs, &mut selector_refs);
            }
        }
        // Each Container's addresses under each group it is a member of, in one pass.
        let mut by_group: BTreeMap<&str, BTreeSet<IpAddr>> =
            group_refs.iter().map(|g| (g.as_str(), BTreeSet::new())).collect();
        for m in &members {
            for g in &m.groups {
                if let Some(set) = by_group.get_mut(g.as_str()) {
                    set.extend(m.ips.iter().copied());
                }
            }
        }
        let mut group_members = BTreeMap::new();
        for g in &group_refs {
            if !all_groups.contains_key(g.as_str()) && !groups.contains_key(g) {
                warnings.push(format!(
                    "a rule names group '{g}', which does not exist: it has no members"
                ));
            }
            let set = by_group.remove(g.as_str()).unwrap_or_default();
            group_members.insert(g.clone(), set);
        }
        let mut selectors = BTreeMap::new();
        for text in &selector_refs {
            match Selector::parse(text) {
                Ok(sel) => {
                    let hit: Vec<bool> = label_sets.iter().map(|l| sel.matches(l)).collect();
                    let set = members
                        .iter()
                        .filter(|m| hit[m.labels])
                        .flat_map(|m| m.ips.iter().copied())
                        .collect();
                    selectors.insert(
                        text.clone(),
                        SelectorSet {
                            canonical: sel.canonical(),
                            members: set,
                        },
                    );
                }
                Err(e) => warnings.push(format!(
                    "rule selector '{text}' does not parse ({e}): rules using it never match"
                )),
            }
        }

        let this_node = nodes.iter().find(|n| n.metadata.name == node).cloned();
        let node_labels = {
            let mut l: LabelSet = this_node
                .as_ref()
                .map(|n| {
                    n.metadata
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), vec![v.clone()]))
                        .collect()
                })
                .unwrap_or_default();
            l.insert("node".into(), vec![node.to_string()]);
            l
        };
        let mut peers = Vec::new();
        for p in all_peers {
            let applies = match (&p.spec.node, &p.spec.node_selector) {
                (Some(n), _) => n == node,
                (None, Some(s)) => match Selector::parse(s) {
                    Ok(sel) => sel.matches(&node_labels),
                    Err(e) => {
                        warnings.push(format!(
                            "BGPPeer/{}: nodeSelector does not parse ({e}); it applies nowhere",
                            p.metadata.name
                        ));
                        false
                    }
                },
                (None, None) => true,
            };
            if applies {
                peers.push(p);
            }
        }

        let mut local_blocks = local_blocks.iter().map(ipnet::IpNet::trunc).collect::<Vec<_>>();
        local_blocks.sort();
        local_blocks.dedup();

        NodeView {
            node: node.to_string(),
            this_node,
            config,
            endpoints,
            groups,
            policies,
            group_members,
            selectors,
            pools,
            nodes,
            peers,
            local_blocks,
            warnings,
        }
    }

    /// The endpoint owning `iface`, for tools that start from an interface name.
    pub fn endpoint_by_iface(&self, iface: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.iface == iface)
    }
}

fn collect_refs(rule: &Rule, groups: &mut BTreeSet<String>, selectors: &mut BTreeSet<String>) {
    let add = |set: &mut BTreeSet<String>, s: &String| {
        if !set.contains(s) {
            set.insert(s.clone());
        }
    };
    for side in [&rule.source, &rule.destination] {
        for g in &side.groups {
            add(groups, g);
        }
        for s in side.selector.iter().chain(side.not_selector.iter()) {
            add(selectors, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_schema::{object, ContainerSpec, GroupSpec, Kind};

    fn container(name: &str, node: &str, ip: &str, groups: &[&str]) -> Resource {
        Resource::Container(object(
            Kind::Container,
            name,
            ContainerSpec {
                node: node.into(),
                netns: Some(format!("/var/run/netns/{name}")),
                ips: Some(vec![ip.parse().unwrap()]),
                groups: groups.iter().map(std::string::ToString::to_string).collect(),
                ..Default::default()
            },
        ))
    }

    #[test]
    fn dangling_group_is_not_membership() {
        let rs = vec![
            Resource::Group(object(Kind::Group, "web", GroupSpec::default())),
            container("a", "n1", "10.65.0.1", &["web", "ghost"]),
            container("b", "n2", "10.65.0.2", &["web"]),
            container("c", "n1", "10.65.0.3", &[]),
        ];
        let v = NodeView::build("n1", &rs, &BTreeMap::new(), &[]);
        assert_eq!(v.endpoints.len(), 2);
        assert_eq!(v.endpoints[0].groups, vec!["web".to_string()]);
        assert!(v.warnings.iter().any(|w| w.contains("ghost")));
        let web = &v.group_members["web"];
        assert_eq!(web.len(), 2, "remote members count too");
    }

    #[test]
    fn addrs_override_spec() {
        let rs = vec![container("a", "n1", "10.65.0.1", &[])];
        let mut addrs = BTreeMap::new();
        addrs.insert("a".to_string(), vec!["10.65.0.9".parse().unwrap()]);
        let v = NodeView::build("n1", &rs, &addrs, &[]);
        assert_eq!(v.endpoints[0].ips, vec!["10.65.0.9".parse::<IpAddr>().unwrap()]);
    }
}
