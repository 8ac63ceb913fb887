//! Docker's legacy (v1) plugin protocol for the `calico` network driver and the
//! `calico-ipam` IPAM driver, served on two unix sockets.
//!
//! Docker finds a legacy plugin by its socket: `<dir>/<name>.sock` under
//! /run/docker/plugins, so the driver names are the socket names. It POSTs
//! `/Plugin.Activate`, then `/<Interface>.<Method>` with a JSON body (empty for the
//! capability calls) and an `Accept: application/vnd.docker.plugins.v1.2+json` header,
//! and usually no Content-Type at all: bodies are parsed whatever the headers say.
//!
//! Errors follow libnetwork's docs/remote.md: a body that cannot be decoded (bad JSON,
//! a missing ID, an unparsable CIDR) gets HTTP 400, an operation that fails gets
//! HTTP 200; both carry `{"Err": "<message>"}` (and `Error`, which is what the IPAM
//! API reads), which Docker shows to the user. An unknown URL gets 404, which is how
//! Docker learns an optional method is absent.
//!
//! - [`wire`]: the JSON bodies.
//! - [`server`]: the sockets, one route per method, and what every call shares
//!   (POST only, body limit, time limit, panics, the error body).
//! - `network`, `ipam`: each driver's methods, from a wire request to a
//!   [`super::Backend`] call and back; `call`: what those handlers share (the fault a
//!   call fails with, decoding, parsing).
//!
//! Arrows: `server` -> `network`, `ipam` -> `call` -> `wire`; all of them -> this
//! module's constants and [`super::backend`]. Nothing here knows the Calico side.

mod call;
mod ipam;
mod network;
pub mod server;
pub mod wire;

use std::time::Duration;

pub use server::{serve, serve_with, PluginConfig, PluginError, PluginServer, SOCKET_MODE};

/// Where dockerd looks for legacy plugin sockets.
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";
/// `docker network create --driver calico`
pub const NETWORK_DRIVER_NAME: &str = "calico";
/// `docker network create --ipam-driver calico-ipam`
pub const IPAM_DRIVER_NAME: &str = "calico-ipam";
/// The address spaces calico-ipam reports; CreateNetwork uses them to recognise that
/// the network's addresses come from calico-ipam.
pub const LOCAL_ADDRESS_SPACE: &str = "CalicoLocal";
pub const GLOBAL_ADDRESS_SPACE: &str = "CalicoGlobal";
/// Content type of plugin responses (what Docker's own plugin helpers send).
pub const PLUGIN_CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// How long a request may take before the plugin gives up and answers `Err`: Docker
/// holds locks on the container while it waits, so a hung datastore must not hang
/// `docker run` forever.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
