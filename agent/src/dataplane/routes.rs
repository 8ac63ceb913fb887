//! Reconciliation of the routes this project owns.
//!
//! Ownership is the route protocol number: every route we add carries
//! [`RTPROT_CALICO`], and only routes carrying it are ever replaced or
//! removed. Routes of the kernel, BIRD (12), DHCP, Docker or an operator are
//! never touched, even where they cover the same prefix; if one occupies the
//! exact slot a desired route needs, the kernel refuses our add and that is
//! reported as a failure instead of being overwritten.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::link::{link_name, netlink_errno};

/// Our route protocol number. 80 is what Calico uses (`calico` in its
/// rt_protos); it is unassigned in iproute2's /etc/iproute2/rt_protos, so
/// `ip route show proto 80` lists exactly our routes.
pub const RTPROT_CALICO: u8 = 80;

/// One route we want in the main table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Destination; host bits are ignored (the kernel would reject them).
    pub dst: IpNet,
    pub kind: RouteKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteKind {
    /// `dst dev <dev> scope link`: a local workload behind its veth.
    Unicast { dev: String },
    /// `blackhole dst`: a local IPAM block, so unused addresses in it are
    /// dropped here instead of following the default route out.
    Blackhole,
}

impl RouteSpec {
    pub fn unicast(dst: IpNet, dev: impl Into<String>) -> Self {
        RouteSpec {
            dst,
            kind: RouteKind::Unicast { dev: dev.into() },
        }
    }

    pub fn blackhole(dst: IpNet) -> Self {
        RouteSpec {
            dst,
            kind: RouteKind::Blackhole,
        }
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RouteKind::Unicast { dev } => write!(f, "{} dev {dev}", self.dst.trunc()),
            RouteKind::Blackhole => write!(f, "blackhole {}", self.dst.trunc()),
        }
    }
}

/// What a reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSummary {
    pub added: Vec<RouteSpec>,
    /// Ours, at the right prefix, but pointing elsewhere: replaced in place.
    pub replaced: Vec<RouteSpec>,
    /// Ours and no longer desired (as found in the kernel).
    pub removed: Vec<String>,
    pub unchanged: usize,
}

/// One route that could not be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteFailure {
    pub action: &'static str,
    pub route: String,
    pub error: String,
}

impl fmt::Display for RouteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.action, self.route, self.error)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("list {what}: {source}")]
    List {
        what: &'static str,
        source: Box<rtnetlink::Error>,
    },
    /// Everything else was done; these routes were not.
    #[error("route reconcile incomplete, {} failure(s): {}", .failures.len(),
        .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Incomplete {
        summary: RouteSummary,
        failures: Vec<RouteFailure>,
    },
}

/// The reconcile loop's view of route programming, so it can run on a fake.
pub trait RouteProgrammer: Send + Sync {
    fn reconcile(
        &self,
        desired: &[RouteSpec],
    ) -> impl std::future::Future<Output = Result<RouteSummary, RouteError>> + Send;
}

/// Route programming through an rtnetlink handle (bound to the host's namespace).
#[derive(Clone)]
pub struct NetlinkRoutes {
    handle: Handle,
}

impl NetlinkRoutes {
    pub fn new(handle: Handle) -> Self {
        NetlinkRoutes { handle }
    }
}

impl RouteProgrammer for NetlinkRoutes {
    async fn reconcile(&self, desired: &[RouteSpec]) -> Result<RouteSummary, RouteError> {
        reconcile_routes(&self.handle, desired).await
    }
}

/// A route of ours as found in the kernel.
struct Owned {
    dst: IpNet,
    msg: RouteMessage,
}

/// Makes the main table's protocol-[`RTPROT_CALICO`] routes, v4 and v6, exactly
/// `desired`. Per-route failures do not stop the others; they come back as
/// [`RouteError::Incomplete`] with the summary of what did happen.
pub async fn reconcile_routes(handle: &Handle, desired: &[RouteSpec]) -> Result<RouteSummary, RouteError> {
    let mut summary = RouteSummary::default();
    let mut failures = Vec::new();

    let mut want: BTreeMap<IpNet, &RouteSpec> = BTreeMap::new();
    for spec in desired {
        let dst = spec.dst.trunc();
        match want.get(&dst) {
            Some(first) if first.kind != spec.kind => failures.push(RouteFailure {
                action: "plan",
                route: spec.to_string(),
                error: format!("conflicts with desired {first}; keeping that one"),
            }),
            Some(_) => {}
            None => {
                want.insert(dst, spec);
            }
        }
    }

    let ifindex = if want.values().any(|s| matches!(s.kind, RouteKind::Unicast { .. })) {
        link_indexes(handle).await?
    } else {
        HashMap::new()
    };
    let owned = owned_routes(handle).await?;

    let mut by_dst: BTreeMap<IpNet, Vec<Owned>> = BTreeMap::new();
    for route in owned {
        by_dst.entry(route.dst).or_default().push(route);
    }

    // Removals first: a prefix that moved between blackhole and unicast is a
    // replace, but a stale route must not linger while adds are attempted.
    let mut present: BTreeMap<IpNet, Vec<Owned>> = BTreeMap::new();
    for (dst, routes) in by_dst {
        if want.contains_key(&dst) {
            present.insert(dst, routes);
            continue;
        }
        for route in routes {
            let text = describe(&route);
            match handle.route().del(route.msg).execute().await {
                Ok(()) => summary.removed.push(text),
                // Gone already (e.g. its device was deleted meanwhile).
                Err(e) if netlink_errno(&e) == Some(libc::ESRCH) => summary.removed.push(text),
                Err(e) => failures.push(RouteFailure {
                    action: "delete",
                    route: text,
                    error: e.to_string(),
                }),
            }
        }
    }

    for (dst, spec) in &want {
        let oif = match &spec.kind {
            RouteKind::Unicast { dev } => match ifindex.get(dev) {
                Some(i) => Some(*i),
                None => {
                    failures.push(RouteFailure {
                        action: "add",
                        route: spec.to_string(),
                        error: format!("device {dev} not found"),
                    });
                    continue;
                }
            },
            RouteKind::Blackhole => None,
        };
        let mut existing = present.remove(dst).unwrap_or_default();
        let matching = existing.iter().position(|r| matches_spec(&r.msg, &spec.kind, oif));
        let keep = matching.map(|i| existing.swap_remove(i));
        // Duplicates of ours at one prefix (different metrics): only one is wanted.
        let mut leftovers = existing;
        let replace_target = if keep.is_none() && leftovers.len() == 1 {
            leftovers.pop()
        } else {
            None
        };
        for extra in leftovers {
            let text = describe(&extra);
            match handle.route().del(extra.msg).execute().await {
                Ok(()) => summary.removed.push(text),
                Err(e) if netlink_errno(&e) == Some(libc::ESRCH) => summary.removed.push(text),
                Err(e) => failures.push(RouteFailure {
                    action: "delete duplicate",
                    route: text,
                    error: e.to_string(),
                }),
            }
        }
        if keep.is_some() {
            summary.unchanged += 1;
            continue;
        }
        let msg = build(*dst, &spec.kind, oif);
        if replace_target.is_some() {
            // Atomic in the kernel: traffic never sees the prefix missing.
            match handle.route().add(msg).replace().execute().await {
                Ok(()) => summary.replaced.push((*spec).clone()),
                Err(e) => failures.push(RouteFailure {
                    action: "replace",
                    route: spec.to_string(),
                    error: e.to_string(),
                }),
            }
        } else {
            // Exclusive create: if a foreign route holds this slot the kernel
            // says EEXIST and we leave it alone.
            match handle.route().add(msg).execute().await {
                Ok(()) => summary.added.push((*spec).clone()),
                Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => failures.push(RouteFailure {
                    action: "add",
                    route: spec.to_string(),
                    error: "a route of another protocol occupies this prefix; left untouched".into(),
                }),
                Err(e) => failures.push(RouteFailure {
                    action: "add",
                    route: spec.to_string(),
                    error: e.to_string(),
                }),
            }
        }
    }

    info!(
        added = summary.added.len(),
        replaced = summary.replaced.len(),
        removed = summary.removed.len(),
        unchanged = summary.unchanged,
        failed = failures.len(),
        "routes reconciled"
    );
    if failures.is_empty() {
        Ok(summary)
    } else {
        for f in &failures {
            warn!(failure = %f, "route not programmed");
        }
        Err(RouteError::Incomplete { summary, failures })
    }
}

/// Our routes as the kernel has them, in `RouteSpec` form (devices by name,
/// `?<index>` if the device has no name any more); for diagnostics.
pub async fn list_owned_routes(handle: &Handle) -> Result<Vec<RouteSpec>, RouteError> {
    let names: HashMap<u32, String> = link_indexes(handle)
        .await?
        .into_iter()
        .map(|(name, index)| (index, name))
        .collect();
    let mut out: Vec<RouteSpec> = owned_routes(handle)
        .await?
        .into_iter()
        .filter_map(|r| {
            let kind = match r.msg.header.kind {
                RouteType::BlackHole => RouteKind::Blackhole,
                RouteType::Unicast => {
                    let oif = oif_of(&r.msg)?;
                    RouteKind::Unicast {
                        dev: names.get(&oif).cloned().unwrap_or_else(|| format!("?{oif}")),
                    }
                }
                _ => return None,
            };
            Some(RouteSpec { dst: r.dst, kind })
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn link_indexes(handle: &Handle) -> Result<HashMap<String, u32>, RouteError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| RouteError::List {
            what: "links",
            source: Box::new(e),
        })?;
    Ok(links
        .into_iter()
        .filter_map(|l| link_name(&l).map(|n| (n.to_string(), l.header.index)))
        .collect())
}

async fn owned_routes(handle: &Handle) -> Result<Vec<Owned>, RouteError> {
    let mut out = Vec::new();
    // Without strict checking the kernel ignores the dump request's header,
    // so filtering by table and protocol happens here.
    for (what, query) in [
        ("IPv4 routes", RouteMessageBuilder::<Ipv4Addr>::new().build()),
        ("IPv6 routes", RouteMessageBuilder::<Ipv6Addr>::new().build()),
    ] {
        let routes: Vec<RouteMessage> =
            handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| RouteError::List {
                    what,
                    source: Box::new(e),
                })?;
        out.extend(
            routes
                .into_iter()
                .filter(|m| {
                    u8::from(m.header.protocol) == RTPROT_CALICO && table_of(m) == u32::from(RouteHeader::RT_TABLE_MAIN)
                })
                .filter_map(|msg| {
                    Some(Owned {
                        dst: dst_of(&msg)?,
                        msg,
                    })
                }),
        );
    }
    debug!(count = out.len(), "owned routes listed");
    Ok(out)
}

fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn dst_of(msg: &RouteMessage) -> Option<IpNet> {
    let len = msg.header.destination_prefix_length;
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    let addr = match (addr, msg.header.address_family) {
        (Some(a), _) => a,
        // A default route has no RTA_DST.
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    IpNet::new(addr, len).ok()
}

fn oif_of(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn has_gateway(msg: &RouteMessage) -> bool {
    msg.attributes.iter().any(|a| {
        matches!(
            a,
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_)
        )
    })
}

fn matches_spec(msg: &RouteMessage, kind: &RouteKind, oif: Option<u32>) -> bool {
    match kind {
        RouteKind::Blackhole => msg.header.kind == RouteType::BlackHole,
        RouteKind::Unicast { .. } => {
            // IPv6 routes carry no scope; IPv4 ones must be `scope link`.
            let scope_ok = msg.header.address_family == AddressFamily::Inet6 || msg.header.scope == RouteScope::Link;
            msg.header.kind == RouteType::Unicast && oif_of(msg) == oif && !has_gateway(msg) && scope_ok
        }
    }
}

fn build(dst: IpNet, kind: &RouteKind, oif: Option<u32>) -> RouteMessage {
    let mut msg = match dst {
        IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .build(),
        IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .build(),
    };
    msg.header.protocol = RouteProtocol::from(RTPROT_CALICO);
    match (kind, oif) {
        (RouteKind::Unicast { .. }, Some(oif)) => {
            msg.header.kind = RouteType::Unicast;
            msg.header.scope = RouteScope::Link;
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        _ => {
            msg.header.kind = RouteType::BlackHole;
            msg.header.scope = RouteScope::Universe;
        }
    }
    msg
}

fn describe(route: &Owned) -> String {
    match route.msg.header.kind {
        RouteType::BlackHole => format!("blackhole {}", route.dst),
        _ => match oif_of(&route.msg) {
            Some(oif) => format!("{} oif {oif}", route.dst),
            None => route.dst.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_spec_json_shape() {
        let specs = vec![
            RouteSpec::unicast("10.65.0.5/32".parse().unwrap(), "cali0123456789a"),
            RouteSpec::blackhole("10.65.0.0/26".parse().unwrap()),
        ];
        let json = serde_json::to_string(&specs).unwrap();
        assert_eq!(
            json,
            r#"[{"dst":"10.65.0.5/32","kind":{"type":"unicast","dev":"cali0123456789a"}},{"dst":"10.65.0.0/26","kind":{"type":"blackhole"}}]"#
        );
        let back: Vec<RouteSpec> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, specs);
    }

    #[test]
    fn build_tags_our_protocol() {
        let msg = build("10.65.0.0/26".parse().unwrap(), &RouteKind::Blackhole, None);
        assert_eq!(u8::from(msg.header.protocol), RTPROT_CALICO);
        assert_eq!(msg.header.kind, RouteType::BlackHole);
        assert_eq!(dst_of(&msg), Some("10.65.0.0/26".parse().unwrap()));
        let msg = build(
            "fd00::5/128".parse().unwrap(),
            &RouteKind::Unicast { dev: "x".into() },
            Some(7),
        );
        assert!(matches_spec(&msg, &RouteKind::Unicast { dev: "x".into() }, Some(7)));
        assert!(!matches_spec(&msg, &RouteKind::Unicast { dev: "x".into() }, Some(8)));
        assert!(!matches_spec(&msg, &RouteKind::Blackhole, None));
    }
}
