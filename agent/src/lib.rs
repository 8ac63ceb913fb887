//! The calico-docker node agent: keeps one host's dataplane (workload veths, the
//! nftables table, routes, BIRD) equal to what etcd says it should be.

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
