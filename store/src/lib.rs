//! calico-docker's datastore: etcd, through etcd-client.
//!
//! Key layout (all under `/calico/v1/`):
//! - `resources/<kind-segment>/<name>`: one resource, JSON, without resourceVersion
//!   (the resourceVersion users see is the key's etcd mod revision);
//! - `status/containers/<name>`: a Container's observed state (written by its node's agent);
//! - `status/nodes/<name>`: an agent's own status;
//! - `ipam/...`: address management (see `ipam`);
//! - `sync/<id>/status`: a GitOps sync's last result;
//! - `meta/resources-deleted`: touched by every resource delete, so that a guarded write
//!   notices deletions too (a deleted key leaves no mod revision behind to compare);
//! - `resources/.intent`, `txn/heartbeat/<lease>`: a staged write in progress.
//!
//! Writes of several resources are one etcd transaction, guarded so that what was
//! validated is still what is stored when the write lands; a change set larger than
//! etcd's per-transaction limits is staged behind an intent key and still all or
//! nothing to every reader (see `staged`).
//!
//! Where each part lives: [`Store`] and its connection in `client`; the resource codec
//! in `codec`; reads (`get`, `list`, dumps) in `read`; the reads of only what a change
//! depends on, and their guard ([`Scope`]), in `scope`; guarded writes (`write`, `delete`,
//! `commit`, `update`) in `commit`; the read, decide, commit loop ([`Store::transact`]) in
//! `transact`; JSON values beside the resources in `json`; the
//! watch in `watch`; the one etcd call wrapper, backoff and limits in `retry`; the
//! mapping of etcd-client errors in `error`; address management in [`ipam`]; leader
//! election in [`election`]; test etcd servers in [`testing`].

// Product code handles every failure; panics are for tests (and test support).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod client;
mod codec;
mod commit;
mod config;
pub mod election;
mod error;
pub mod ipam;
mod json;
mod read;
mod retry;
mod scope;
mod staged;
pub mod testing;
mod transact;
mod watch;

pub use client::Store;
pub use codec::{decode_resource, resource_key};
pub use commit::{Change, Outcome, WriteMode};
pub use config::{StoreConfig, TlsFiles, DEFAULT_TIMEOUT};
pub use error::{EtcdFailure, StoreError};
pub use json::decode_json;
pub use read::Listing;
pub use scope::{Scope, SCOPE_MAX_READS};
pub use staged::{HEARTBEAT_PREFIX, INTENT_KEY, PAUSE_ENV, PIECE_BYTES, PIECE_OPS};
pub use transact::{Changes, Step, Transacted, TRANSACT_ATTEMPTS};
pub use watch::{WatchEvent, WatchStream};

pub const PREFIX: &str = "/calico/v1/";
pub const RESOURCES_PREFIX: &str = "/calico/v1/resources/";
pub const STATUS_PREFIX: &str = "/calico/v1/status/";
pub const IPAM_PREFIX: &str = "/calico/v1/ipam/";
/// Written in the same transaction as every resource delete; see the module docs.
pub const DELETE_MARKER_KEY: &str = "/calico/v1/meta/resources-deleted";
