//! calico-docker's datastore: etcd, through etcd-client.
//!
//! Key layout (all under `/calico/v1/`):
//! - `resources/<kind-segment>/<name>`: one resource, JSON, without resourceVersion
//!   (the resourceVersion users see is the key's etcd mod revision);
//! - `status/containers/<name>`: a Container's observed state (written by its node's agent);
//! - `status/nodes/<name>`: an agent's own status;
//! - `ipam/...`: address management (see `ipam`);
//! - `sync/<id>/status`: a GitOps sync's last result.
//!
//! Writes of several resources are one etcd transaction, guarded so that what was
//! validated is still what is stored when the write lands.

pub mod testing;

use calico_schema::{Kind, Resource};

pub const PREFIX: &str = "/calico/v1/";
pub const RESOURCES_PREFIX: &str = "/calico/v1/resources/";
pub const STATUS_PREFIX: &str = "/calico/v1/status/";
pub const IPAM_PREFIX: &str = "/calico/v1/ipam/";

/// The etcd key of a resource.
pub fn resource_key(kind: Kind, name: &str) -> String {
    format!("{RESOURCES_PREFIX}{}/{name}", kind.key_segment())
}
