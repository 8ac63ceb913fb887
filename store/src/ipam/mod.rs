//! IP address management (IPAM) over etcd.
//!
//! Every Container gets its own routable address from an enabled IPPool. Pools are
//! carved into blocks (`blockSize`, default /26 and /122); a block is normally affine to
//! one node, which routes the whole block, so a node needs one route per block rather
//! than one per container. See docs/ipam.md for the full story.
//!
//! Keys (all under `/calico/v1/ipam/`):
//! - `blocks/<cidr with / as _>`: JSON [`BlockDoc`]: the block's cidr, its affinity (a
//!   node or none) and its allocations (offset in the block -> handle);
//! - `handles/<handle, / and % percent-escaped>`: JSON {ips, node}: what one handle holds;
//! - `affinity/<node>/<cidr with / as _>`: an empty index key, so that a node finds its
//!   blocks without reading every block. Always written in the same transaction as the
//!   block's `affinity` field, which is the truth; `check` reports any disagreement.
//!
//! Concurrency: every change is one etcd transaction that compares the mod revision of
//! each block it touches (or `version == 0` when it creates one) and the handle key's
//! revision (or absence). A lost race changes nothing and is retried with jittered
//! backoff, so no address is ever handed out twice, whoever runs at the same time.
//!
//! One file per concern: `keys` (the key codec), `block` (the stored documents and their
//! codec), `pools` (which blocks and addresses pools allow), `plan` (the transaction
//! builder), `etcd` (calls and shared reads), then the API: `assign`, `release`, `query`
//! and `check`. This file holds the public types and the `Ipam` handle.

mod assign;
mod block;
mod check;
mod etcd;
mod keys;
mod plan;
mod pools;
mod query;
mod release;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use etcd_client::Client;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;

use crate::error::EtcdFailure;

pub use block::{decode_block, decode_handle, BlockDoc};
pub use check::CheckReport;
pub use keys::{block_key, handle_key};

/// Everything IPAM stores lives under this prefix (the store's `IPAM_PREFIX`).
pub const IPAM_ROOT: &str = crate::IPAM_PREFIX;
pub const BLOCKS_PREFIX: &str = "/calico/v1/ipam/blocks/";
pub const HANDLES_PREFIX: &str = "/calico/v1/ipam/handles/";
pub const AFFINITY_PREFIX: &str = "/calico/v1/ipam/affinity/";

/// Conflicting attempts before an operation gives up. Every conflict means another
/// writer made progress, so this is only reached under pathological contention.
const MAX_ATTEMPTS: u32 = 1000;
/// Blocks larger than this many host bits are refused as invalid data (pools allow at
/// most 12: blockSize 20 for IPv4, 116 for IPv6).
const MAX_BLOCK_HOST_BITS: u8 = 16;
/// How many candidate blocks past the existing ones a search for a free block looks at.
const SCAN_SLACK: usize = 65536;
/// The longest pause between two attempts that lost a race: short, because IPAM retries
/// up to `MAX_ATTEMPTS` times and a Container waits on it.
const BACKOFF_CAP: Duration = Duration::from_millis(32);

/// The one IPAM handle of a Container resource.
pub fn container_handle(container_name: &str) -> String {
    format!("container/{container_name}")
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no enabled IP pool to assign addresses from")]
    NoPool,
    #[error("no free IPv{version} address left in any enabled IP pool")]
    Exhausted { version: u8 },
    #[error("{ip} is already in use by {holder}")]
    InUse { ip: IpAddr, holder: String },
    #[error("{0} is not in any enabled IP pool")]
    NotInPool(IpAddr),
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("invalid IPAM data at {key}: {detail}")]
    Invalid { key: String, detail: String },
    #[error("gave up after {attempts} attempts that all lost a race with other IPAM writers")]
    Contended { attempts: u32 },
    #[error("etcd: {0}")]
    Etcd(EtcdFailure),
}

/// A block as `all_blocks` (and `calicoctl ipam show`) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockInfo {
    pub cidr: IpNet,
    pub affinity: Option<String>,
    pub allocated: usize,
    pub capacity: u64,
    pub allocations: BTreeMap<IpAddr, String>,
}

/// What one handle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleInfo {
    pub ips: Vec<IpAddr>,
    pub node: String,
}

/// The handles as [`Ipam::handle_listing`] reads them: those that decode, and the keys
/// that do not, `(key, why)`, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HandleListing {
    pub handles: BTreeMap<String, HandleInfo>,
    pub invalid: Vec<(String, String)>,
}

/// IPAM over etcd. Cheap to clone (the etcd client is a shared channel).
#[derive(Clone)]
pub struct Ipam {
    client: Client,
    timeout: Duration,
    /// Per-node turns shared by clones (see `auto_assign`).
    turns: Arc<StdMutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

impl Ipam {
    /// IPAM through `client`, each etcd request bounded by `timeout`. Clones share the
    /// client and take turns assigning for the same node; separate `Ipam`s (like
    /// separate processes) are kept apart by etcd alone.
    pub fn new(client: Client, timeout: Duration) -> Ipam {
        Ipam {
            client,
            timeout,
            turns: Arc::default(),
        }
    }

    fn node_turn(&self, node: &str) -> Arc<AsyncMutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        turns.entry(node.to_string()).or_default().clone()
    }
}

fn check_name(what: &str, s: &str) -> Result<(), IpamError> {
    if s.is_empty() {
        return Err(IpamError::Invalid {
            key: what.to_string(),
            detail: format!("empty {what}"),
        });
    }
    Ok(())
}
