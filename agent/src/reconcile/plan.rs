//! What should be: the pure half of the reconcile. Every function here is a calculation
//! from the cache (and from what earlier steps found) to a desired state; none touches
//! the dataplane, IPAM or etcd, so each is unit-tested on plain values.
//!
//! The plan is made in stages, between the steps that make it so, because later parts
//! depend on how earlier steps went, as in Felix's calculation graph: a Container whose
//! addresses IPAM could not give, or whose plumbing failed, is left out of the view
//! (fail closed), so the view, and the ruleset, routes and bird.conf rendered from it,
//! can only be planned once the workload step has run.
//!
//! 1. [`Inputs`]: the cache's resources, the cluster config and the pools.
//! 2. [`stale_handles`]: this node's IPAM handles whose Container is gone.
//! 3. [`addresses`]: how each Container gets its addresses (known, or ask IPAM).
//! 4. [`workloads`]: this node's workloads to plumb, keyed by host interface.
//! 5. [`view`]: the node's view with only programmed workloads as endpoints, from which
//!    `calico_render` renders the ruleset, the routes and bird.conf.
//! 6. [`changed_statuses`]: the Container statuses to write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use calico_render::NodeView;
use calico_schema::{ClusterConfigSpec, Container, ContainerStatus, EndpointState, IpPool, Resource};

use super::{container_handle, PlannedWorkload, WorkloadResolver};
use crate::cache::Cache;

/// The cache's resources as the reconcile reads them.
pub struct Inputs {
    pub resources: Vec<Resource>,
    pub config: ClusterConfigSpec,
    /// Host interfaces with this prefix are ours.
    pub prefix: String,
    pub pools: Vec<IpPool>,
}

impl Inputs {
    pub fn new(resources: Vec<Resource>) -> Inputs {
        let config = cluster_config(&resources);
        let prefix = config.interface_prefix().to_string();
        let pools = resources
            .iter()
            .filter_map(|r| {
                if let Resource::IpPool(p) = r {
                    Some(p.clone())
                } else {
                    None
                }
            })
            .collect();
        Inputs {
            resources,
            config,
            prefix,
            pools,
        }
    }

    /// Every Container, of every node (their addresses feed the group and selector sets).
    pub fn containers(&self) -> Vec<&Container> {
        self.resources
            .iter()
            .filter_map(|r| if let Resource::Container(c) = r { Some(c) } else { None })
            .collect()
    }
}

/// The `default` ClusterConfig, or the defaults when there is none.
pub fn cluster_config(resources: &[Resource]) -> ClusterConfigSpec {
    resources
        .iter()
        .find_map(|r| match r {
            Resource::ClusterConfig(c) if c.metadata.name == "default" => Some(c.spec.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// This node's Container handles in IPAM whose Container is gone: their addresses are
/// to be released (only once the cache is synced, which the caller checks).
pub fn stale_handles(cache: &Cache, node: &str, containers: &[&Container]) -> Vec<String> {
    let live: BTreeSet<String> = containers.iter().map(|c| container_handle(&c.metadata.name)).collect();
    cache
        .handles()
        .filter(|(h, rec)| h.starts_with("container/") && rec.node == node && !live.contains(h))
        .map(|(h, _)| h)
        .collect()
}

/// Addresses IPAM records for this node's Container `c` that its explicit `ips` no
/// longer list (an address taken out of the spec, or auto-assigned ones before `ips`
/// was given): to be released, so they are free for others.
pub fn surplus(cache: &Cache, node: &str, c: &Container) -> Vec<IpAddr> {
    let (Some(ips), true) = (&c.spec.ips, c.spec.node == node) else {
        return Vec::new();
    };
    match cache.handle(&container_handle(&c.metadata.name)) {
        Some(h) if h.node == node => h.ips.iter().copied().filter(|ip| !ips.contains(ip)).collect(),
        _ => Vec::new(),
    }
}

/// How one Container gets its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    /// Known without asking IPAM: another node's Container (its spec, or IPAM's
    /// record), or an assignment made by an earlier reconcile whose handle the watch
    /// has not brought yet.
    Known(Vec<IpAddr>),
    /// This node's explicit addresses, already claimed: by an earlier reconcile, or
    /// recorded in IPAM for this Container on this node (a restarted agent). The claim
    /// is remembered so IPAM is asked once.
    Claimed(Vec<IpAddr>),
    /// IPAM's record of an assignment to this node's Container: any assignment still
    /// remembered as pending has arrived.
    Recorded(Vec<IpAddr>),
    /// This node's explicit addresses, to be claimed in IPAM.
    Claim(Vec<IpAddr>),
    /// Ask IPAM to assign addresses to this node's Container.
    Assign,
}

/// What [`addresses`] needs to know of what earlier reconciles did.
pub struct AddressMemory<'a> {
    pub claimed: &'a BTreeMap<String, Vec<IpAddr>>,
    pub assigned: &'a BTreeMap<String, Vec<IpAddr>>,
}

/// How `c` gets its addresses: explicit ones claimed, the others assigned, asking IPAM
/// only for what neither IPAM's record (in the cache) nor an earlier reconcile knows.
pub fn addresses(node: &str, c: &Container, cache: &Cache, memory: &AddressMemory<'_>) -> Addresses {
    let name = &c.metadata.name;
    let handle = container_handle(name);
    let local = c.spec.node == node;
    let known = cache.handle_ips(&handle).cloned();
    // IPAM already records these addresses for this Container on this node (a
    // restarted agent, or a claim made by an earlier reconcile): no need to ask.
    let recorded = |ips: &Vec<IpAddr>| {
        cache
            .handle(&handle)
            .is_some_and(|h| h.node == node && ips.iter().all(|ip| h.ips.contains(ip)))
    };
    match (&c.spec.ips, local) {
        (Some(ips), true) => {
            if memory.claimed.get(name) == Some(ips) || recorded(ips) {
                Addresses::Claimed(ips.clone())
            } else {
                Addresses::Claim(ips.clone())
            }
        }
        (Some(ips), false) => Addresses::Known(ips.clone()),
        (None, true) => match known {
            Some(ips) if !ips.is_empty() => Addresses::Recorded(ips),
            // Assigned by an earlier reconcile; the watch has not brought the
            // handle yet.
            _ => match memory.assigned.get(name) {
                Some(ips) => Addresses::Known(ips.clone()),
                None => Addresses::Assign,
            },
        },
        (None, false) => Addresses::Known(known.unwrap_or_default()),
    }
}

/// This node's workloads, keyed by host interface, and an error status for each local
/// Container that cannot be plumbed because it is not resolvable now.
#[derive(Debug, Default)]
pub struct Workloads {
    pub desired: BTreeMap<String, PlannedWorkload>,
    pub unresolved: BTreeMap<String, ContainerStatus>,
}

/// The workloads of this node's Containers. Those that already have a status (their
/// IPAM failed) are skipped: not plumbed, and so cut off.
pub fn workloads<R: WorkloadResolver>(
    node: &str,
    input: &Inputs,
    containers: &[&Container],
    addrs: &BTreeMap<String, Vec<IpAddr>>,
    failed: &BTreeMap<String, ContainerStatus>,
    resolver: &R,
) -> Workloads {
    let mut out = Workloads::default();
    for c in containers.iter().filter(|c| c.spec.node == node) {
        let name = &c.metadata.name;
        if failed.contains_key(name) {
            continue;
        }
        let host_ifname = calico_render::host_iface_name(&input.prefix, name);
        let ips = addrs.get(name).cloned().unwrap_or_default();
        match resolver.resolve(c) {
            Ok(netns) => {
                out.desired.insert(
                    host_ifname.clone(),
                    PlannedWorkload {
                        name: name.clone(),
                        host_ifname,
                        netns,
                        ifname: c.interface_name().to_string(),
                        ips,
                        mtu: input.config.mtu(),
                    },
                );
            }
            Err(e) => {
                out.unresolved
                    .insert(name.clone(), status(node, &host_ifname, &ips, EndpointState::Error, e));
            }
        }
    }
    out
}

/// The node's view, from which the three artefacts are rendered. Only programmed
/// workloads are endpoints here (dispatch entries, host routes): a local Container that
/// failed (IPAM, plumbing, not resolvable) is left out of the view entirely, so it stays
/// cut off (fail closed) and nothing routes to its half-made plumbing. (Without an
/// address entry the view would fall back to the spec's ips and program it anyway.)
pub fn view(
    node: &str,
    resources: Vec<Resource>,
    addrs: BTreeMap<String, Vec<IpAddr>>,
    statuses: &BTreeMap<String, ContainerStatus>,
    blocks: &[ipnet::IpNet],
) -> NodeView {
    let cut_off: BTreeSet<String> = resources
        .iter()
        .filter_map(|r| if let Resource::Container(c) = r { Some(c) } else { None })
        .filter(|c| c.spec.node == node)
        .map(|c| &c.metadata.name)
        .filter(|n| !statuses.get(*n).is_some_and(|s| s.state == EndpointState::Programmed))
        .cloned()
        .collect();
    let programmed: BTreeMap<String, Vec<IpAddr>> = addrs.into_iter().filter(|(n, _)| !cut_off.contains(n)).collect();
    let resources: Vec<Resource> = if cut_off.is_empty() {
        resources
    } else {
        resources
            .into_iter()
            .filter(|r| !matches!(r, Resource::Container(c) if cut_off.contains(&c.metadata.name)))
            .collect()
    };
    NodeView::build(node, &resources, &programmed, blocks)
}

/// The statuses that changed since `last` (ignoring the timestamp): `Some` to write,
/// `None` to delete.
pub fn changed_statuses(
    last: &BTreeMap<String, ContainerStatus>,
    now: &BTreeMap<String, ContainerStatus>,
) -> Vec<(String, Option<ContainerStatus>)> {
    let mut changed = Vec::new();
    for (name, st) in now {
        let same = last.get(name).is_some_and(|old| {
            ContainerStatus {
                updated: st.updated,
                ..old.clone()
            } == *st
        });
        if !same {
            changed.push((name.clone(), Some(st.clone())));
        }
    }
    for name in last.keys() {
        if !now.contains_key(name) {
            changed.push((name.clone(), None));
        }
    }
    changed
}

/// A Container's status as of now.
pub fn status(node: &str, ifname: &str, ips: &[IpAddr], state: EndpointState, message: String) -> ContainerStatus {
    ContainerStatus {
        node: node.to_string(),
        host_interface: ifname.to_string(),
        ips: ips.to_vec(),
        state,
        message,
        updated: calico_schema::now_secs(),
    }
}

#[cfg(test)]
mod tests {
    //! The plan on plain values: no dataplane, no IPAM. The cache is the reconcile
    //! tests' (an IPPool 10.65.0.0/16 and the Node h1).

    use super::super::tests::cache;
    use super::super::NetnsOnly;
    use super::*;

    fn container(name: &str, node: &str, ips: Option<&str>) -> (String, String) {
        let ips = ips.map(|i| format!(r#","ips":["{i}"]"#)).unwrap_or_default();
        (
            format!("/calico/v1/resources/containers/{name}"),
            format!(
                r#"{{"apiVersion":"calico/v1","kind":"Container","metadata":{{"name":"{name}"}},"spec":{{"node":"{node}","netns":"/run/netns/{name}"{ips}}}}}"#
            ),
        )
    }

    fn handle(name: &str, node: &str, ip: &str) -> (String, String) {
        (
            format!("/calico/v1/ipam/handles/container%2F{name}"),
            format!(r#"{{"ips":["{ip}"],"node":"{node}"}}"#),
        )
    }

    fn build(docs: &[(String, String)]) -> Cache {
        let docs: Vec<(&str, String)> = docs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        cache(&docs)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn inputs_find_pools_prefix_and_containers() {
        let c = build(&[container("x", "h1", None), container("y", "h2", None)]);
        let input = Inputs::new(c.resources());
        assert_eq!(input.prefix, "cali");
        assert_eq!(input.pools.len(), 1);
        let names: Vec<&str> = input.containers().iter().map(|c| c.metadata.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn stale_handles_are_this_nodes_without_a_container() {
        let c = build(&[
            container("x", "h1", None),
            handle("x", "h1", "10.65.0.1"),
            handle("gone", "h1", "10.65.0.2"),
            handle("elsewhere", "h2", "10.65.0.3"),
        ]);
        let input = Inputs::new(c.resources());
        assert_eq!(
            stale_handles(&c, "h1", &input.containers()),
            vec![container_handle("gone")]
        );
    }

    #[test]
    fn addresses_ask_ipam_only_for_what_nobody_knows() {
        let c = build(&[
            container("explicit", "h1", Some("10.65.0.9")),
            container("recorded-explicit", "h1", Some("10.65.0.8")),
            handle("recorded-explicit", "h1", "10.65.0.8"),
            container("auto", "h1", None),
            container("recorded", "h1", None),
            handle("recorded", "h1", "10.65.0.7"),
            container("pending", "h1", None),
            container("remote", "h2", Some("10.65.1.1")),
            container("remote-auto", "h2", None),
            handle("remote-auto", "h2", "10.65.1.2"),
        ]);
        let input = Inputs::new(c.resources());
        let claimed = BTreeMap::new();
        let assigned = BTreeMap::from([("pending".to_string(), vec![ip("10.65.0.6")])]);
        let memory = AddressMemory {
            claimed: &claimed,
            assigned: &assigned,
        };
        let plan: BTreeMap<&str, Addresses> = input
            .containers()
            .into_iter()
            .map(|ct| (ct.metadata.name.as_str(), addresses("h1", ct, &c, &memory)))
            .collect();
        assert_eq!(plan["explicit"], Addresses::Claim(vec![ip("10.65.0.9")]));
        assert_eq!(plan["recorded-explicit"], Addresses::Claimed(vec![ip("10.65.0.8")]));
        assert_eq!(plan["auto"], Addresses::Assign);
        assert_eq!(plan["recorded"], Addresses::Recorded(vec![ip("10.65.0.7")]));
        assert_eq!(plan["pending"], Addresses::Known(vec![ip("10.65.0.6")]));
        assert_eq!(plan["remote"], Addresses::Known(vec![ip("10.65.1.1")]));
        assert_eq!(plan["remote-auto"], Addresses::Known(vec![ip("10.65.1.2")]));

        // Once claimed, explicit addresses are not claimed again.
        let claimed = BTreeMap::from([("explicit".to_string(), vec![ip("10.65.0.9")])]);
        let memory = AddressMemory {
            claimed: &claimed,
            assigned: &assigned,
        };
        let explicit = input
            .containers()
            .into_iter()
            .find(|ct| ct.metadata.name == "explicit")
            .unwrap();
        assert_eq!(
            addresses("h1", explicit, &c, &memory),
            Addresses::Claimed(vec![ip("10.65.0.9")])
        );
    }

    #[test]
    fn workloads_skip_failed_and_report_unresolvable() {
        let mut docs = vec![
            container("a", "h1", None),
            container("b", "h1", None),
            container("r", "h2", None),
        ];
        docs.push((
            "/calico/v1/resources/containers/d".to_string(),
            r#"{"apiVersion":"calico/v1","kind":"Container","metadata":{"name":"d"},"spec":{"node":"h1","container":"web"}}"#
                .to_string(),
        ));
        let c = build(&docs);
        let input = Inputs::new(c.resources());
        let containers = input.containers();
        let addrs = BTreeMap::from([("a".to_string(), vec![ip("10.65.0.1")])]);
        let failed = BTreeMap::from([(
            "b".to_string(),
            status("h1", "", &[], EndpointState::Error, "IPAM: full".into()),
        )]);
        let w = workloads("h1", &input, &containers, &addrs, &failed, &NetnsOnly);
        let names: Vec<&str> = w.desired.values().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        let a = &w.desired[&calico_render::host_iface_name("cali", "a")];
        assert_eq!(a.ips, vec![ip("10.65.0.1")]);
        assert_eq!(a.netns.as_deref(), Some(std::path::Path::new("/run/netns/a")));
        assert_eq!(w.unresolved.keys().collect::<Vec<_>>(), ["d"]);
        assert_eq!(w.unresolved["d"].state, EndpointState::Error);
        assert!(w.unresolved["d"].message.contains("no Docker connection"));
    }

    #[test]
    fn the_view_leaves_out_what_is_not_programmed() {
        let c = build(&[
            container("ok", "h1", Some("10.65.0.1")),
            container("bad", "h1", Some("10.65.0.2")),
            container("remote", "h2", Some("10.65.1.1")),
        ]);
        let addrs = BTreeMap::from([
            ("ok".to_string(), vec![ip("10.65.0.1")]),
            ("bad".to_string(), vec![ip("10.65.0.2")]),
            ("remote".to_string(), vec![ip("10.65.1.1")]),
        ]);
        let statuses = BTreeMap::from([
            (
                "ok".to_string(),
                status("h1", "caliok", &addrs["ok"], EndpointState::Programmed, String::new()),
            ),
            (
                "bad".to_string(),
                status("h1", "calibad", &addrs["bad"], EndpointState::Error, "x".into()),
            ),
        ]);
        let v = view("h1", c.resources(), addrs, &statuses, &[]);
        let routes = calico_render::render_routes(&v);
        let dsts: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
        assert!(dsts.contains(&"10.65.0.1/32".to_string()), "{dsts:?}");
        assert!(!dsts.contains(&"10.65.0.2/32".to_string()), "{dsts:?}");
    }

    #[test]
    fn changed_statuses_ignore_the_timestamp() {
        let st = |state, updated| ContainerStatus {
            updated,
            ..status("h1", "cali1", &[], state, String::new())
        };
        let last = BTreeMap::from([
            ("same".to_string(), st(EndpointState::Programmed, 1)),
            ("flipped".to_string(), st(EndpointState::Programmed, 1)),
            ("gone".to_string(), st(EndpointState::Programmed, 1)),
        ]);
        let now = BTreeMap::from([
            ("same".to_string(), st(EndpointState::Programmed, 2)),
            ("flipped".to_string(), st(EndpointState::Error, 2)),
            ("new".to_string(), st(EndpointState::Programmed, 2)),
        ]);
        let changed = changed_statuses(&last, &now);
        let summary: Vec<(&str, bool)> = changed.iter().map(|(n, s)| (n.as_str(), s.is_some())).collect();
        assert_eq!(summary, [("flipped", true), ("new", true), ("gone", false)]);
    }
}
