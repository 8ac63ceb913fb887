//! Plumbing of one workload: a veth pair from the host into the workload's
//! network namespace, the workload's addresses and routes, and the host-side
//! settings that make the host answer for the workload's gateway.
//!
//! The workload sees a point-to-point world: its addresses are /32 (/128) and
//! its only neighbour is a fixed gateway, 169.254.1.1 (fe80::ecee:eeff:feee:eeee
//! for IPv6), which no host actually owns. The host side of every veth carries
//! the same MAC, ee:ee:ee:ee:ee:ee, so the workload's frames to the "gateway"
//! land on the host, which routes them by its `/32 dev caliX` routes (installed
//! by [`super::routes`], not here).
//!
//! - [`spec`]: what a workload's plumbing should be, and the fixed gateway addresses.
//! - [`plumber`]: the real [`WorkloadPlumbing`], making and removing the pair.
//! - [`handoff`]: for a runtime that moves the workload end itself (Docker's Join): the
//!   pair made in the host namespace ([`Plumber::create_handoff_pair`]), the gateway
//!   neighbour inside the workload ([`add_gateway_neighbour`]).
//! - `configure`: the settings of each end once the pair exists.
//!
//! The netlink helpers they share (a link by name, attributes) are in `dataplane::link`.

use std::io;
use std::net::IpAddr;

use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::Handle;

use super::netns::NetnsError;

mod configure;

pub mod handoff;
pub mod plumber;
pub mod spec;

pub use handoff::add_gateway_neighbour;
pub use plumber::Plumber;
pub use spec::{host_ifname, WorkloadSpec, GATEWAY_V4, GATEWAY_V6, HOST_MAC, MAX_IFNAME_LEN};

/// What [`Plumber::setup`] found or made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ifname: String,
    /// Index inside the workload's namespace.
    pub ifindex: u32,
    /// The workload side's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ips: Vec<IpAddr>,
    /// `false` when an existing, correct pair was fixed up in place.
    pub created: bool,
}

/// A host-side interface, as listed by [`Plumber::list_host_ifaces`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIface {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub is_veth: bool,
    /// The peer's namespace id as seen from the host (`None`: same namespace
    /// or not a veth).
    pub peer_netns_id: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("invalid workload spec: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{action} ({link}, netns {netns}): {source}")]
    Netlink {
        action: &'static str,
        link: String,
        netns: String,
        // Boxed: rtnetlink's error can carry a whole netlink message.
        source: Box<rtnetlink::Error>,
    },
    #[error("set sysctl {key}={value} (netns {netns}): {source}")]
    Sysctl {
        key: String,
        value: String,
        netns: String,
        source: io::Error,
    },
    #[error("{action} ({link}, netns {netns}): {detail}")]
    Unexpected {
        action: &'static str,
        link: String,
        netns: String,
        detail: String,
    },
}

/// Every failure of a [`Plumber::teardown_all`], which keeps going past them.
#[derive(Debug, thiserror::Error)]
#[error("teardown failed for {} interface(s): {}", .errors.len(), join_errors(.errors))]
pub struct TeardownError {
    pub errors: Vec<WorkloadError>,
}

fn join_errors(errors: &[WorkloadError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Attaches the netavark-style "what were we doing" context to netlink errors.
trait Wrap<T> {
    fn wrap(self, action: &'static str, link: &str, netns: &str) -> Result<T, WorkloadError>;
}

impl<T> Wrap<T> for Result<T, rtnetlink::Error> {
    fn wrap(self, action: &'static str, link: &str, netns: &str) -> Result<T, WorkloadError> {
        self.map_err(|source| WorkloadError::Netlink {
            action,
            link: link.to_string(),
            netns: netns.to_string(),
            source: Box::new(source),
        })
    }
}

/// The operations the reconcile loop needs, so it can run against a fake.
pub trait WorkloadPlumbing: Send + Sync {
    fn setup(
        &self,
        spec: &WorkloadSpec,
    ) -> impl std::future::Future<Output = Result<WorkloadInfo, WorkloadError>> + Send;
    /// Removes the pair; `Ok(false)` when it was already gone.
    fn teardown(&self, host_ifname: &str) -> impl std::future::Future<Output = Result<bool, WorkloadError>> + Send;
    fn list_host_ifaces(
        &self,
        prefix: &str,
    ) -> impl std::future::Future<Output = Result<Vec<HostIface>, WorkloadError>> + Send;
}

/// [`super::link::link_by_name`], its error saying what was looked up and where.
pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
    netns: &str,
) -> Result<Option<LinkMessage>, WorkloadError> {
    super::link::link_by_name(handle, name)
        .await
        .wrap("look up link", name, netns)
}
