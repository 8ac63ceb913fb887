//! The calico-docker node agent: keeps one host's dataplane (workload veths, the
//! nftables table, routes, BIRD) equal to what etcd says it should be.
//!
//! - [`agent`]: the run loop (triggers, debounce, requeue with backoff, status writes).
//! - [`cache`]: the agent's copy of etcd.
//! - [`reconcile`]: what should be ([`reconcile::plan`], pure) and the steps that make
//!   it so through the [`Dataplane`] and [`AddressManager`] traits.
//! - [`linux`]: the real [`Dataplane`]; [`dataplane`]: everything that touches the
//!   kernel or runs a process.
//! - [`docker`]: the Docker plugin and dockerd's events.
//! - [`http`], [`metrics`]: /healthz, /readyz, /status and /metrics.

// Product code handles every failure; panics are for tests (and test support).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod cache;
pub mod dataplane;
pub mod docker;
pub mod http;
pub mod linux;
pub mod metrics;
pub mod reconcile;

pub use agent::{run, AgentConfig};
pub use reconcile::{AddressManager, Dataplane, Reconciler, Report, WorkloadResolver};
