//! calico-docker's resource model: the seven kinds of API.md, their JSON Schema,
//! YAML loading that keeps positions, validation, and the selector language.
//!
//! Everything a user writes passes through here before it reaches etcd, and everything
//! the agent reads from etcd is decoded with these same types and checks.
//!
//! Beside the resources: `birdc` (the one parser of BIRD's status text), `host` (what
//! the agent and calicoctl of one host share without etcd: the run directory's file
//! names, dockerd's socket), `limits` (every bound on outside input) and [`now_secs`].

// Product code handles every failure; panics are for tests (and test support).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod birdc;
pub mod error;
pub mod host;
pub mod limits;
pub mod load;
pub mod net;
pub mod reference;
pub mod resource;
pub mod schema_doc;
pub mod selector;
pub mod validate;
pub mod yaml;

pub use error::{Diagnostic, Diagnostics};
pub use host::{docker_host_of, docker_socket, RunDir, UnsupportedDockerHost, DEFAULT_DOCKER_HOST, DEFAULT_RUN_DIR};
pub use load::{check_loaded_set, load_path, load_str, Loaded};
pub use net::{Cidr, IfaceAddr, Port, Protocol};
pub use resource::*;
pub use schema_doc::{schema_text, schema_value};
pub use selector::{LabelSet, Selector};

/// Seconds since the Unix epoch: the unit of every timestamp in statuses and records
/// (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
