//! The node agent's side-effect layer: everything that changes the kernel or
//! runs a process. Each piece sits behind a small trait so the reconcile logic
//! can be tested against fakes without root.
//!
//! - [`netns`]: run code inside a network namespace on a dedicated OS thread.
//! - [`workload`]: veth plumbing of one workload.
//! - [`routes`]: reconcile the routes carrying our route protocol number.
//! - [`nft`]: apply our nftables table in one transaction.
//! - [`bird`]: BIRD 2 configuration and supervision.
//! - [`iptables`]: the FORWARD accept chain for workloads in iptables' filter table.
//! - [`command`]: run a helper program with its stderr captured.

pub mod bird;
pub mod command;
pub mod iptables;
pub mod netns;
pub mod nft;
pub mod routes;
pub mod workload;

/// The positive errno carried by a netlink error, if it is one.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}
