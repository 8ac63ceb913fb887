//! Docker integration (API.md section 3).
//!
//! - [`plugin`]: the libnetwork remote network driver `calico` and IPAM driver
//!   `calico-ipam`, served on two unix sockets; protocol only, the Calico side is a
//!   [`Backend`] the agent implements.
//! - [`backend`]: that trait and the parsed requests it receives.
//! - [`client`]: dockerd's API: connecting, inspecting containers and networks.
//! - [`env`]: the seed's `CALICO_IP` / `CALICO_GROUP` environment of a container.
//! - [`events`]: follows dockerd's container events (the seed's `CALICO_IP` path) and
//!   re-lists containers whenever it reconnects.
//! - [`context`]: the state the rest shares ([`context::Ctx`]: store, IPAM, dockerd
//!   client, host netlink; what is known of Docker's containers and endpoints).
//! - [`calico`]: the agent's [`Backend`]: IPPools, IPAM, Docker-owned Containers, veths.
//! - [`seed`]: the event consumer: `CALICO_IP` containers, cleanup after restarts.
//! - [`integration`]: how the agent runs all of it (resolver, IPAM guard, start/stop).
//! - [`status`]: the Container statuses the agent's reconcile writes, for Join to wait on.
//! - [`host`]: a sandbox's path from here, the wait for its gateway neighbour, dockerd's
//!   pid (the kernel work is `dataplane::workload::handoff`'s).
//!
//! Arrows (a module uses only those to its right; none points back):
//!
//! ```text
//! integration -> calico, seed, plugin, context, events, client
//! calico      -> context, backend, host, dataplane (through the context's Plumber)
//! seed        -> context, events, client, env, plugin (the driver name), dataplane
//! context     -> status, client, host (dockerd's pid), dataplane
//! plugin      -> backend
//! events      -> client -> env; client -> backend (the group option)
//! backend, host -> dataplane
//! ```
//!
//! docs/docker.md describes how Docker's calls map to Calico resources.

pub mod backend;
pub mod calico;
pub mod client;
pub mod context;
pub mod env;
pub mod events;
pub mod host;
pub mod integration;
pub mod plugin;
pub mod seed;
pub mod status;

pub use backend::{
    AddressRequest, Backend, EndpointCreate, EndpointInterface, JoinInfo, JoinRequest, NetworkCreate, PoolData,
    PoolInfo, PoolRequest, StaticRoute, GROUP_OPTION,
};
pub use integration::{DockerConfig, DockerIntegration};
pub use plugin::{
    serve, serve_with, PluginConfig, PluginError, PluginServer, DEFAULT_PLUGIN_DIR, IPAM_DRIVER_NAME,
    NETWORK_DRIVER_NAME,
};
