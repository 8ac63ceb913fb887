//! The routes a node owns: each local workload's host route through its veth, and a
//! blackhole for each of the node's IPAM blocks (so an unused address in a local block is
//! dropped here instead of following the default route out, and so BIRD has something to
//! export for the whole block).

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::view::NodeView;

/// Our route protocol number (`ip route ... proto 80`): the agent changes or removes only
/// routes carrying it. 80 is what Calico uses and is unassigned in iproute2's rt_protos.
pub const RTPROT_CALICO: u8 = 80;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteKind {
    /// `dst dev <iface> scope link`.
    Dev(String),
    /// `blackhole dst`.
    Blackhole,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub kind: RouteKind,
}

impl fmt::Display for RouteSpec {
    /// `ip route` syntax, so the text form can be pasted into `ip route add`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RouteKind::Dev(dev) => write!(f, "{} dev {dev} scope link proto {RTPROT_CALICO}", self.dst),
            RouteKind::Blackhole => write!(f, "blackhole {} proto {RTPROT_CALICO}", self.dst),
        }
    }
}

/// The whole set of routes `view`'s node should have with protocol [`RTPROT_CALICO`],
/// sorted by destination. When two local workloads claim the same address (which apply
/// rejects, but a stale datastore could hold) the first by name keeps it.
pub fn render_routes(view: &NodeView) -> Vec<RouteSpec> {
    let mut seen = BTreeSet::new();
    let host_routes = view.endpoints.iter().map(|e| e.ips.len()).sum::<usize>();
    let mut out = Vec::with_capacity(view.local_blocks.len() + host_routes);
    for b in &view.local_blocks {
        out.push(RouteSpec {
            dst: *b,
            kind: RouteKind::Blackhole,
        });
    }
    for ep in &view.endpoints {
        for ip in &ep.ips {
            let dst = IpNet::from(*ip);
            if seen.insert(dst) {
                out.push(RouteSpec {
                    dst,
                    kind: RouteKind::Dev(ep.iface.clone()),
                });
            }
        }
    }
    // The order (and the deduplication) a BTreeSet would give.
    out.sort_unstable();
    out.dedup();
    out
}
