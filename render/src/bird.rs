//! bird.conf for BIRD 2: one daemon carrying IPv4 and IPv6.
//!
//! What goes where:
//! - static protocols hold the node's IPAM blocks as blackholes (and host routes for
//!   local workloads whose address lies outside every local block): that is what the
//!   node originates;
//! - BGP exports pool routes only (originated here or, for route reflectors and
//!   external peers, learned) and imports pool routes only, so a peer can never inject a
//!   default route;
//! - the kernel protocols write BGP-learned pool routes into the kernel and never the
//!   node's own (the agent programs those with protocol 80); they learn the kernel's
//!   other routes, and the direct protocol the interface routes (which `learn` skips),
//!   so that multihop sessions can resolve next hops.

use std::fmt::Write as _;
use std::net::IpAddr;

use calico_schema::{Node, DEFAULT_AS_NUMBER};
use ipnet::IpNet;

use crate::view::NodeView;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BirdError {
    #[error("node '{0}' has no Node resource: BIRD needs its address")]
    NoNode(String),
    #[error("node '{0}' has no IPv4 address: BIRD needs one as its router id")]
    NoRouterId(String),
}

/// A BIRD symbol from an address: `10.0.0.2` -> `10_0_0_2`, `fd00::1` -> `fd00__1`.
fn addr_symbol(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "_")
}

fn node_as(n: &Node, cluster_as: u32) -> u32 {
    n.spec.as_number.unwrap_or(cluster_as)
}

fn node_addr(n: &Node, fam: u8) -> Option<IpNet> {
    match fam {
        4 => n.spec.ipv4.map(|a| a.0),
        _ => n.spec.ipv6.map(|a| a.0),
    }
}

struct Session {
    name: String,
    description: String,
    fam: u8,
    local: IpAddr,
    local_as: u32,
    neighbor: IpAddr,
    neighbor_as: u32,
    direct: bool,
    passive: bool,
    rr_client_of: Option<std::net::Ipv4Addr>,
}

/// Whether `peer` is on a subnet this node is directly attached to: then the session is
/// `direct` (next hops resolve through the interface); otherwise `multihop`.
fn on_link(local: &IpNet, peer: &IpAddr) -> bool {
    local.prefix_len() < local.max_prefix_len() && local.contains(peer)
}

fn pool_function(out: &mut String, fam: u8, pools: &[IpNet]) {
    let nets: Vec<String> = pools
        .iter()
        .filter(|p| matches!(p, IpNet::V4(_)) == (fam == 4))
        .map(|p| format!("{p}+"))
        .collect();
    let _ = writeln!(out, "function calico_pool{fam}()");
    let _ = writeln!(out, "{{");
    if nets.is_empty() {
        let _ = writeln!(out, "  return false;");
    } else {
        let _ = writeln!(out, "  return net ~ [ {} ];", nets.join(", "));
    }
    let _ = writeln!(out, "}}\n");
}

fn filters(out: &mut String, fam: u8) {
    let _ = writeln!(
        out,
        "# Kernel -> BIRD: everything but pool routes, so multihop sessions can resolve next hops.\n\
         filter calico_kernel_import{fam}\n{{\n  if calico_pool{fam}() then reject;\n  accept;\n}}\n\n\
         # BIRD -> kernel: only pool routes learned from peers; the node's own are the agent's.\n\
         filter calico_kernel_export{fam}\n{{\n  if source = RTS_BGP && calico_pool{fam}() then accept;\n  reject;\n}}\n\n\
         # Peers -> BIRD: pool routes only.\n\
         filter calico_bgp_import{fam}\n{{\n  if calico_pool{fam}() then accept;\n  reject;\n}}\n\n\
         # BIRD -> peers: pool routes this node originates, and those it reflects or relays.\n\
         filter calico_bgp_export{fam}\n{{\n  if calico_pool{fam}() && (source = RTS_STATIC || source = RTS_BGP) then accept;\n  reject;\n}}\n"
    );
}

/// Renders bird.conf for `view`'s node.
pub fn render_bird(view: &NodeView) -> Result<String, BirdError> {
    let me = view
        .this_node
        .as_ref()
        .ok_or_else(|| BirdError::NoNode(view.node.clone()))?;
    let Some(IpAddr::V4(router_id)) = me.spec.ipv4.map(|a| a.addr()) else {
        return Err(BirdError::NoRouterId(view.node.clone()));
    };
    let cluster_as = view.config.as_number.unwrap_or(DEFAULT_AS_NUMBER);
    let my_as = node_as(me, cluster_as);
    let pools: Vec<IpNet> = view.pools.iter().map(|p| p.spec.cidr.net()).collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# bird.conf for node {}, rendered by calico-docker. Do not edit: the agent replaces it.\n",
        view.node
    );
    let _ = writeln!(out, "router id {router_id};\n");
    for fam in [4u8, 6] {
        pool_function(&mut out, fam, &pools);
    }
    for fam in [4u8, 6] {
        filters(&mut out, fam);
    }

    let _ = writeln!(out, "protocol device\n{{\n  scan time 10;\n}}\n");
    // The kernel protocol's `learn` skips the kernel's own interface routes, so without
    // these a multihop session's next hop (a peer on this host's subnet) resolves
    // through nothing and its routes arrive unreachable. Workload interfaces and lo
    // carry no subnet a peer is on; pool prefixes never come from here. Nothing here is
    // exported: the BGP and kernel export filters take static and BGP routes only.
    let prefix = view.config.interface_prefix();
    let _ = writeln!(
        out,
        "# Interface routes: what next hops of multihop sessions resolve through.\n\
         protocol direct\n{{\n  interface -\"{prefix}*\", -\"lo\", \"*\";\n  \
         ipv4 {{ import filter calico_kernel_import4; }};\n  \
         ipv6 {{ import filter calico_kernel_import6; }};\n}}\n"
    );
    for fam in [4u8, 6] {
        let _ = writeln!(
            out,
            "protocol kernel kernel{fam}\n{{\n  ipv{fam} {{\n    import filter calico_kernel_import{fam};\n    export filter calico_kernel_export{fam};\n  }};\n  learn;\n  merge paths on;\n  graceful restart on;\n  scan time 10;\n}}\n"
        );
    }

    // What this node originates.
    for fam in [4u8, 6] {
        let is_fam = |n: &IpNet| matches!(n, IpNet::V4(_)) == (fam == 4);
        let blocks: Vec<&IpNet> = view.local_blocks.iter().filter(|b| is_fam(b)).collect();
        let mut routes: Vec<String> = blocks.iter().map(|b| format!("  route {b} blackhole;")).collect();
        for ep in &view.endpoints {
            for ip in &ep.ips {
                let host = IpNet::from(*ip);
                if is_fam(&host) && !blocks.iter().any(|b| b.contains(ip)) {
                    routes.push(format!("  route {host} via \"{}\";", ep.iface));
                }
            }
        }
        if routes.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "# The node's IPAM blocks, and workloads outside them, as BGP originates them.\n\
             protocol static calico_static{fam}\n{{\n  ipv{fam};\n{}\n}}\n",
            routes.join("\n")
        );
    }

    let _ = writeln!(
        out,
        "template bgp calico_bgp\n{{\n  graceful restart on;\n  connect delay time 2;\n  connect retry time 5;\n  error wait time 5, 30;\n}}\n"
    );

    let mut sessions: Vec<Session> = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let reflectors: Vec<&Node> = view
        .nodes
        .iter()
        .filter(|n| n.spec.route_reflector_cluster_id.is_some())
        .collect();
    let i_am_rr = me.spec.route_reflector_cluster_id;
    for other in &view.nodes {
        if other.metadata.name == me.metadata.name {
            continue;
        }
        let other_as = node_as(other, cluster_as);
        // Route reflectors replace the mesh: reflectors peer with everyone, the others
        // only with reflectors.
        let (kind, rr_client_of) = if !reflectors.is_empty() {
            match (i_am_rr, other.spec.route_reflector_cluster_id) {
                (Some(id), None) if other_as == my_as => ("Rr", Some(id)),
                (Some(_), _) => ("Rr", None),
                (None, Some(_)) => ("Rr", None),
                (None, None) => continue,
            }
        } else if view.config.node_to_node_mesh() {
            ("Mesh", None)
        } else {
            continue;
        };
        for fam in [4u8, 6] {
            let (Some(local), Some(remote)) = (node_addr(me, fam), node_addr(other, fam)) else {
                continue;
            };
            let neighbor = remote.addr();
            sessions.push(Session {
                name: format!("{kind}_{}", addr_symbol(&neighbor)),
                description: format!("Node {}", other.metadata.name),
                fam,
                local: local.addr(),
                local_as: my_as,
                neighbor,
                neighbor_as: other_as,
                direct: on_link(&local, &neighbor),
                // Both ends compute the same answer, so exactly one side listens: no
                // connection collisions on every restart.
                passive: local.addr() > neighbor,
                rr_client_of,
            });
        }
    }
    for p in &view.peers {
        let neighbor = p.spec.peer_ip;
        let fam = if neighbor.is_ipv4() { 4 } else { 6 };
        let Some(local) = node_addr(me, fam) else {
            comments.push(format!(
                "# BGPPeer/{} skipped: node has no IPv{fam} address",
                p.metadata.name
            ));
            continue;
        };
        if local.addr() == neighbor || sessions.iter().any(|s| s.neighbor == neighbor) {
            comments.push(format!(
                "# BGPPeer/{} skipped: {neighbor} is this node or already a neighbor",
                p.metadata.name
            ));
            continue;
        }
        sessions.push(Session {
            name: format!("Peer_{}", addr_symbol(&neighbor)),
            description: format!("BGPPeer {}", p.metadata.name),
            fam,
            local: local.addr(),
            local_as: my_as,
            neighbor,
            neighbor_as: p.spec.as_number,
            direct: on_link(&local, &neighbor),
            passive: false,
            rr_client_of: None,
        });
    }
    for c in &comments {
        let _ = writeln!(out, "{c}");
    }
    if !comments.is_empty() {
        out.push('\n');
    }
    for s in &sessions {
        let fam = s.fam;
        let _ = writeln!(out, "protocol bgp {} from calico_bgp\n{{", s.name);
        let _ = writeln!(out, "  description \"{}\";", s.description);
        let _ = writeln!(out, "  local {} as {};", s.local, s.local_as);
        let _ = writeln!(out, "  neighbor {} as {};", s.neighbor, s.neighbor_as);
        let _ = writeln!(out, "  {};", if s.direct { "direct" } else { "multihop" });
        if s.passive {
            let _ = writeln!(out, "  passive on;");
        }
        if let Some(id) = s.rr_client_of {
            let _ = writeln!(out, "  rr client;\n  rr cluster id {id};");
        }
        let _ = writeln!(
            out,
            "  ipv{fam} {{\n    import filter calico_bgp_import{fam};\n    export filter calico_bgp_export{fam};\n  }};\n}}\n"
        );
    }
    Ok(out)
}
