//! The calico-docker node agent: keeps one host's dataplane (workload veths, the
//! nftables table, routes, BIRD) equal to what etcd says it should be.

pub mod agent;
pub mod cache;
pub mod dataplane;
pub mod docker;
pub mod http;
pub mod linux;
pub mod metrics;
pub mod reconcile;
