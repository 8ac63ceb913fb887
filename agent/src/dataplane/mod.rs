//! The node agent's side-effect layer: everything that changes the kernel or
//! runs a process. Each piece sits behind a small trait so the reconcile logic
//! can be tested against fakes without root.
//!
//! - [`netns`]: run code inside a network namespace on a dedicated OS thread.
//! - [`workload`]: veth plumbing of one workload (also the pair Docker's Join hands to
//!   Docker, and the gateway neighbour inside a container).
//! - `link`: the netlink helpers everything here shares (a link by name, attributes).
//! - [`routes`]: reconcile the routes carrying our route protocol number.
//! - [`nft`]: apply our nftables table in one transaction.
//! - [`bird`]: BIRD 2 configuration and supervision.
//! - [`iptables`]: the FORWARD accept chain for workloads in iptables' filter table.
//! - [`command`]: run a helper program with its stderr captured.

pub mod bird;
pub mod command;
pub mod iptables;
pub(crate) mod link;
pub mod netns;
pub mod nft;
pub mod routes;
pub mod workload;
