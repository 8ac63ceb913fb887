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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use calico_schema::IpPool;
use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use crate::error::{EtcdFailure, Failure};
use crate::retry::{MAX_DECODE, READ_CHUNK};

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

/// The result of [`Ipam::check`]. Every list is sorted; empty lists mean consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Allocated addresses whose handle is not live (the GC releases these).
    pub leaked: Vec<(IpAddr, String)>,
    /// (handle, address): the handle lists an address that no block allocates to it.
    pub dangling_handles: Vec<(String, IpAddr)>,
    /// (address, handle): a block allocates an address to a handle whose record does
    /// not list it (or does not exist).
    pub unrecorded: Vec<(IpAddr, String)>,
    /// Addresses held in two places: by several handles, or in overlapping blocks.
    pub duplicates: Vec<(IpAddr, Vec<String>)>,
    /// Pairs of blocks that overlap.
    pub overlapping_blocks: Vec<(IpNet, IpNet)>,
    /// Blocks inside no pool (enabled or disabled), e.g. after a pool was deleted.
    pub blocks_outside_pools: Vec<IpNet>,
    /// Disagreements between a block's affinity and the per-node affinity index.
    pub affinity_mismatches: Vec<String>,
    /// (key, problem): keys that do not decode.
    pub invalid: Vec<(String, String)>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty()
            && self.dangling_handles.is_empty()
            && self.unrecorded.is_empty()
            && self.duplicates.is_empty()
            && self.overlapping_blocks.is_empty()
            && self.blocks_outside_pools.is_empty()
            && self.affinity_mismatches.is_empty()
            && self.invalid.is_empty()
    }
}

// ------------------------------------------------------------------ stored documents

/// The JSON stored at a block key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDoc {
    pub cidr: IpNet,
    #[serde(default)]
    pub affinity: Option<String>,
    /// Offset of the address in the block -> handle.
    #[serde(default)]
    pub allocations: BTreeMap<u32, String>,
    /// Where the next search for a free offset starts, so that a released address is
    /// not handed out again at once (stale conntrack entries, late packets).
    #[serde(default)]
    pub next: u32,
}

/// A block as read, with the revision to compare against when writing it back.
#[derive(Debug, Clone)]
struct Block {
    key: String,
    doc: BlockDoc,
    /// 0: not in etcd yet (created by this transaction).
    mod_revision: i64,
}

impl Block {
    fn new(cidr: IpNet, affinity: Option<String>) -> Block {
        Block {
            key: block_key(&cidr),
            doc: BlockDoc {
                cidr,
                affinity,
                allocations: BTreeMap::new(),
                next: 0,
            },
            mod_revision: 0,
        }
    }

    fn decode(kv: &KeyValue) -> Result<Block, IpamError> {
        let key = key_string(kv)?;
        let invalid = |detail: String| IpamError::Invalid {
            key: key.clone(),
            detail,
        };
        let doc: BlockDoc = serde_json::from_slice(kv.value()).map_err(|e| invalid(format!("bad block JSON: {e}")))?;
        let from_key = parse_block_suffix(key.strip_prefix(BLOCKS_PREFIX).unwrap_or(&key));
        if from_key != Some(doc.cidr) {
            return Err(invalid(format!("the key does not name the block's cidr {}", doc.cidr)));
        }
        if doc.cidr.trunc() != doc.cidr {
            return Err(invalid(format!("cidr {} has host bits set", doc.cidr)));
        }
        if host_bits(&doc.cidr) > MAX_BLOCK_HOST_BITS {
            return Err(invalid(format!("block {} is larger than any pool allows", doc.cidr)));
        }
        let b = Block {
            key: key.clone(),
            doc,
            mod_revision: kv.mod_revision(),
        };
        if let Some((off, _)) = b.doc.allocations.iter().next_back() {
            if u64::from(*off) >= b.capacity() {
                return Err(invalid(format!("allocation offset {off} is outside the block")));
            }
        }
        if b.doc.allocations.values().any(std::string::String::is_empty) {
            return Err(invalid("an allocation has an empty handle".into()));
        }
        Ok(b)
    }

    fn capacity(&self) -> u64 {
        1u64 << host_bits(&self.doc.cidr)
    }

    fn free(&self) -> u64 {
        self.capacity().saturating_sub(self.doc.allocations.len() as u64)
    }

    fn offset_of(&self, ip: IpAddr) -> Option<u32> {
        if !self.doc.cidr.contains(&ip) {
            return None;
        }
        let off = match (ip, self.doc.cidr.network()) {
            (IpAddr::V4(a), IpAddr::V4(n)) => u128::from(u32::from(a) - u32::from(n)),
            (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(a) - u128::from(n),
            _ => return None,
        };
        u32::try_from(off).ok()
    }

    fn ip_at(&self, off: u32) -> IpAddr {
        match self.doc.cidr.network() {
            IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n).wrapping_add(off))),
            IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n).wrapping_add(u128::from(off)))),
        }
    }

    /// Allocates the first free address at or after the cursor (wrapping), skipping
    /// addresses `usable` refuses (those inside a disabled pool).
    fn take_free(&mut self, handle: &str, usable: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
        let cap = self.capacity();
        let start = u64::from(self.doc.next) % cap;
        for i in 0..cap {
            let off = u32::try_from((start + i) % cap).ok()?;
            if self.doc.allocations.contains_key(&off) || !usable(self.ip_at(off)) {
                continue;
            }
            self.doc.allocations.insert(off, handle.to_string());
            self.doc.next = u32::try_from((u64::from(off) + 1) % cap).unwrap_or(0);
            return Some(self.ip_at(off));
        }
        None
    }

    fn info(&self) -> BlockInfo {
        BlockInfo {
            cidr: self.doc.cidr,
            affinity: self.doc.affinity.clone(),
            allocated: self.doc.allocations.len(),
            capacity: self.capacity(),
            allocations: self
                .doc
                .allocations
                .iter()
                .map(|(o, h)| (self.ip_at(*o), h.clone()))
                .collect(),
        }
    }
}

/// A handle record as read.
#[derive(Debug, Clone)]
struct Handle {
    name: String,
    info: HandleInfo,
    mod_revision: i64,
}

impl Handle {
    fn decode(kv: &KeyValue) -> Result<Handle, IpamError> {
        let key = key_string(kv)?;
        let name = unescape(key.strip_prefix(HANDLES_PREFIX).unwrap_or(&key));
        let info: HandleInfo = serde_json::from_slice(kv.value()).map_err(|e| IpamError::Invalid {
            key: key.clone(),
            detail: format!("bad handle JSON: {e}"),
        })?;
        Ok(Handle {
            name,
            info,
            mod_revision: kv.mod_revision(),
        })
    }
}

// ------------------------------------------------------------------ keys

fn host_bits(net: &IpNet) -> u8 {
    net.max_prefix_len().saturating_sub(net.prefix_len())
}

fn block_suffix(cidr: &IpNet) -> String {
    cidr.to_string().replace('/', "_")
}

fn parse_block_suffix(s: &str) -> Option<IpNet> {
    s.replace('_', "/").parse().ok()
}

pub fn block_key(cidr: &IpNet) -> String {
    format!("{BLOCKS_PREFIX}{}", block_suffix(cidr))
}

pub fn handle_key(handle: &str) -> String {
    format!("{HANDLES_PREFIX}{}", escape(handle))
}

fn affinity_node_prefix(node: &str) -> String {
    format!("{AFFINITY_PREFIX}{}/", escape(node))
}

fn affinity_key(node: &str, cidr: &IpNet) -> String {
    format!("{}{}", affinity_node_prefix(node), block_suffix(cidr))
}

/// Percent-escapes `%` and `/`, so a handle or node name is one key segment.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("%25") {
            out.push('%');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("%2F").or_else(|| tail.strip_prefix("%2f")) {
            out.push('/');
            rest = r;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn key_string(kv: &KeyValue) -> Result<String, IpamError> {
    kv.key_str().map(str::to_string).map_err(|e| IpamError::Invalid {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        detail: format!("key is not UTF-8: {e}"),
    })
}

/// The cidrs named by a listing of block keys.
fn cidrs_of(kvs: &[KeyValue]) -> Result<Vec<IpNet>, IpamError> {
    kvs.iter()
        .map(|kv| {
            let key = key_string(kv)?;
            parse_block_suffix(key.strip_prefix(BLOCKS_PREFIX).unwrap_or(&key)).ok_or_else(|| IpamError::Invalid {
                key: key.clone(),
                detail: "the key does not name a cidr".into(),
            })
        })
        .collect()
}

fn to_json<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(v).map_err(|e| IpamError::Invalid {
        key: key.to_string(),
        detail: format!("cannot encode: {e}"),
    })
}

fn gets(resp: &TxnResponse) -> Vec<Vec<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        })
        .collect()
}

/// What `auto_assign` reads: the handle, the node's affinity index and (up to a chunk
/// of) the node's blocks as last known.
fn assign_reads(hkey: &str, node: &str, affine_keys: &[String]) -> Vec<TxnOp> {
    let mut ops = vec![
        TxnOp::get(hkey, None),
        TxnOp::get(affinity_node_prefix(node), prefix_keys_only()),
    ];
    ops.extend(
        affine_keys
            .iter()
            .take(READ_CHUNK)
            .map(|k| TxnOp::get(k.as_str(), None)),
    );
    ops
}

fn prefix_keys_only() -> Option<GetOptions> {
    Some(GetOptions::new().with_prefix().with_keys_only())
}

fn prefix() -> Option<GetOptions> {
    Some(GetOptions::new().with_prefix())
}

fn version_of(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

fn net_version(net: &IpNet) -> u8 {
    version_of(&net.network())
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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

// ------------------------------------------------------------------ pools

/// The pools as IPAM uses them: which blocks and addresses may be handed out.
struct Pools<'a> {
    enabled: Vec<&'a IpPool>,
    disabled: Vec<&'a IpPool>,
}

impl<'a> Pools<'a> {
    fn new(pools: &'a [IpPool]) -> Pools<'a> {
        let mut enabled: Vec<&IpPool> = pools.iter().filter(|p| !p.spec.disabled).collect();
        let mut disabled: Vec<&IpPool> = pools.iter().filter(|p| p.spec.disabled).collect();
        // Callers list pools in any order; a fixed order makes every writer pick the
        // same next block, so races end in one winner rather than several half-used blocks.
        enabled.sort_by_key(|p| p.spec.cidr.net());
        disabled.sort_by_key(|p| p.spec.cidr.net());
        Pools { enabled, disabled }
    }

    fn has_version(&self, v: u8) -> bool {
        self.enabled.iter().any(|p| p.spec.cidr.version() == v)
    }

    fn ip_usable(&self, ip: IpAddr) -> bool {
        self.enabled.iter().any(|p| p.spec.cidr.net().contains(&ip))
            && !self.disabled.iter().any(|p| p.spec.cidr.net().contains(&ip))
    }

    /// A block may be allocated from when an enabled pool holds it and no disabled pool
    /// overlaps it.
    fn block_usable(&self, net: &IpNet) -> bool {
        self.enabled.iter().any(|p| p.spec.cidr.net().contains(net))
            && !self.disabled.iter().any(|p| overlaps(&p.spec.cidr.net(), net))
    }

    fn enabled_pool_of(&self, ip: IpAddr) -> Option<&'a IpPool> {
        self.enabled.iter().copied().find(|p| p.spec.cidr.net().contains(&ip))
    }

    /// The first block of version `v` that no existing (or planned) block overlaps.
    fn next_free_block(&self, v: u8, existing: &[IpNet]) -> Option<IpNet> {
        for pool in self.enabled.iter().filter(|p| p.spec.cidr.version() == v) {
            let net = pool.spec.cidr.net();
            let bs = pool.block_size();
            let Ok(subnets) = net.subnets(bs) else {
                warn!(pool = %net, block_size = bs, "pool block size is invalid; skipping the pool");
                continue;
            };
            let exact: HashSet<IpNet> = existing.iter().copied().filter(|e| e.prefix_len() == bs).collect();
            let others: Vec<IpNet> = existing
                .iter()
                .copied()
                .filter(|e| e.prefix_len() != bs && overlaps(e, &net))
                .collect();
            let in_pool = existing.iter().filter(|e| net.contains(*e)).count() as u128;
            let total = 1u128.checked_shl(u32::from(bs - net.prefix_len())).unwrap_or(u128::MAX);
            if others.is_empty() && in_pool >= total {
                continue; // every block of the pool exists
            }
            // Blocks are carved in order, so a free one turns up after at most as many
            // candidates as there are blocks; the bound only matters for odd layouts
            // (blocks of another size), which then cost a bounded scan, not a hang.
            let limit = usize::try_from(in_pool)
                .unwrap_or(usize::MAX)
                .saturating_add(others.len() + SCAN_SLACK);
            for cand in subnets.take(limit) {
                if !exact.contains(&cand) && !others.iter().any(|o| overlaps(o, &cand)) && self.block_usable(&cand) {
                    return Some(cand);
                }
            }
        }
        None
    }
}

// ------------------------------------------------------------------ the client

/// IPAM over etcd. Cheap to clone (the etcd client is a shared channel).
#[derive(Clone)]
pub struct Ipam {
    client: Client,
    timeout: Duration,
    /// Per-node turns shared by clones (see `auto_assign`).
    turns: Arc<StdMutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

/// A transaction being built: blocks touched (with the revision they were read at) and
/// extra operations.
#[derive(Default)]
struct Plan {
    blocks: BTreeMap<String, Block>,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
}

impl Plan {
    fn block(&mut self, b: &Block) -> &mut Block {
        self.blocks.entry(b.key.clone()).or_insert_with(|| b.clone())
    }

    /// Guards on the handle: unchanged since read, or still absent.
    fn guard_handle(&mut self, key: &str, h: Option<&Handle>) {
        self.compares.push(match h {
            Some(h) => Compare::mod_revision(key, CompareOp::Equal, h.mod_revision),
            None => Compare::version(key, CompareOp::Equal, 0),
        });
    }

    /// The transaction: every block compared at the revision it was read (or absent),
    /// written back, deleted when empty and unaffine, and indexed when created affine.
    fn into_txn(self) -> Result<Txn, IpamError> {
        let mut compares = self.compares;
        let mut ops = Vec::new();
        for b in self.blocks.into_values() {
            if b.mod_revision == 0 {
                compares.push(Compare::version(b.key.as_str(), CompareOp::Equal, 0));
                if let Some(node) = &b.doc.affinity {
                    ops.push(TxnOp::put(affinity_key(node, &b.doc.cidr), Vec::new(), None));
                }
            } else {
                compares.push(Compare::mod_revision(b.key.as_str(), CompareOp::Equal, b.mod_revision));
            }
            if b.doc.allocations.is_empty() && b.doc.affinity.is_none() {
                if b.mod_revision != 0 {
                    ops.push(TxnOp::delete(b.key.as_str(), None));
                }
            } else {
                ops.push(TxnOp::put(b.key.as_str(), to_json(&b.key, &b.doc)?, None));
            }
        }
        ops.extend(self.ops);
        Ok(Txn::new().when(compares).and_then(ops))
    }
}

async fn backoff(attempt: u32) {
    crate::retry::backoff(attempt, BACKOFF_CAP).await;
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

    /// One etcd call bounded by the timeout; requests that never left this process
    /// (the balancer picked a dead member) are sent again (`crate::retry`).
    async fn call<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, IpamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match crate::retry::call(self.timeout, attempt).await {
            None => Err(IpamError::Unavailable(format!(
                "{what}: no answer from etcd within {}",
                crate::error::human(self.timeout)
            ))),
            Some(Err(e)) => Err(match crate::error::classify(e) {
                Failure::Unavailable(detail) => IpamError::Unavailable(format!("{what}: {detail}")),
                Failure::Refused(f) => IpamError::Etcd(f.during(what)),
            }),
            Some(Ok(v)) => Ok(v),
        }
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_DECODE)
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, IpamError> {
        self.call(what, || {
            let (mut c, txn) = (self.kv(), txn.clone());
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn get(&self, what: &str, key: &str, opts: Option<GetOptions>) -> Result<Vec<KeyValue>, IpamError> {
        let mut r = self
            .call(what, || {
                let (mut c, opts) = (self.kv(), opts.clone());
                async move { c.get(key, opts).await }
            })
            .await?;
        Ok(r.take_kvs())
    }

    async fn read_handle(&self, handle: &str) -> Result<Option<Handle>, IpamError> {
        let kvs = self.get("read handle", &handle_key(handle), None).await?;
        kvs.first().map(Handle::decode).transpose()
    }

    /// Reads the given blocks in one round trip; absent ones are left out.
    async fn read_blocks(&self, keys: &[String]) -> Result<Vec<Block>, IpamError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(READ_CHUNK) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let resp = self.txn("read blocks", Txn::new().and_then(ops)).await?;
            for kv in gets(&resp).iter().flatten() {
                out.push(Block::decode(kv)?);
            }
        }
        Ok(out)
    }

    /// The cidrs of every block, from the keys alone.
    async fn block_cidrs(&self) -> Result<Vec<IpNet>, IpamError> {
        let kvs = self.get("list blocks", BLOCKS_PREFIX, prefix_keys_only()).await?;
        cidrs_of(&kvs)
    }

    /// A handle and the cidrs of every block, in one round trip.
    async fn read_handle_and_cidrs(&self, handle: &str) -> Result<(Option<Handle>, Vec<IpNet>), IpamError> {
        let txn = Txn::new().and_then(vec![
            TxnOp::get(handle_key(handle), None),
            TxnOp::get(BLOCKS_PREFIX, prefix_keys_only()),
        ]);
        let resp = self.txn("read handle and block list", txn).await?;
        let mut got = gets(&resp).into_iter();
        let h = got.next().unwrap_or_default().first().map(Handle::decode).transpose()?;
        let cidrs = cidrs_of(&got.next().unwrap_or_default())?;
        Ok((h, cidrs))
    }

    async fn read_all_blocks(&self) -> Result<Vec<Block>, IpamError> {
        let kvs = self.get("list blocks", BLOCKS_PREFIX, prefix()).await?;
        kvs.iter().map(Block::decode).collect()
    }

    /// Every block that decodes, for borrowing: one corrupt block elsewhere must not stop
    /// a node from assigning (`check` reports it).
    async fn read_usable_blocks(&self) -> Result<Vec<Block>, IpamError> {
        let kvs = self.get("list blocks", BLOCKS_PREFIX, prefix()).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| match Block::decode(kv) {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!(error = %e, "skipping an undecodable block");
                    None
                }
            })
            .collect())
    }

    /// The existing blocks (of `cidrs`) holding the given addresses, in one round trip.
    async fn blocks_holding(&self, cidrs: &[IpNet], ips: &[IpAddr]) -> Result<Vec<Block>, IpamError> {
        let keys: BTreeSet<String> = ips
            .iter()
            .filter_map(|ip| cidrs.iter().find(|c| c.contains(ip)))
            .map(block_key)
            .collect();
        self.read_blocks(&keys.into_iter().collect::<Vec<_>>()).await
    }

    async fn commit(&self, what: &str, plan: Plan) -> Result<bool, IpamError> {
        let resp = self.txn(what, plan.into_txn()?).await?;
        Ok(resp.succeeded())
    }

    /// Idempotent per handle: if the handle already holds addresses, returns them
    /// (stable IPs across restarts). Otherwise assigns one IPv4 address (and one IPv6
    /// when `want_v6` and an enabled IPv6 pool exists) from enabled pools: first from
    /// blocks affine to `node` with free space, else from a new block claimed for the
    /// node, else borrowed from any other block. Either every address is assigned or none.
    pub async fn auto_assign(
        &self,
        handle: &str,
        node: &str,
        pools: &[IpPool],
        want_v6: bool,
    ) -> Result<Vec<IpAddr>, IpamError> {
        check_name("handle", handle)?;
        check_name("node", node)?;
        let pools = Pools::new(pools);
        let mut versions = Vec::new();
        if pools.has_version(4) {
            versions.push(4);
        }
        if want_v6 && pools.has_version(6) {
            versions.push(6);
        }
        if versions.is_empty() {
            return Err(IpamError::NoPool);
        }
        let hkey = handle_key(handle);
        let aff_prefix = affinity_node_prefix(node);
        // Clones of one Ipam take turns per node: they would only race for the same block.
        let turn = self.node_turn(node);
        let _turn = turn.lock().await;
        // The node's affine blocks as last seen: read with the handle in one round trip,
        // and again by the failure branch of a transaction that lost a race, so a retry
        // needs no extra read.
        let mut known: Vec<String> = Vec::new();
        let mut pending: Option<TxnResponse> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let resp = match pending.take() {
                Some(r) => r,
                None => {
                    self.txn(
                        "read handle and blocks",
                        Txn::new().and_then(assign_reads(&hkey, node, &known)),
                    )
                    .await?
                }
            };
            let read_revision = resp.header().map(etcd_client::ResponseHeader::revision).unwrap_or(0);
            let mut got = gets(&resp).into_iter();
            let existing = got.next().unwrap_or_default();
            let affinities = got.next().unwrap_or_default();
            let h = existing.first().map(Handle::decode).transpose()?;
            if let Some(h) = &h {
                if !h.info.ips.is_empty() && h.info.node == node {
                    return Ok(h.info.ips.clone());
                }
                if !h.info.ips.is_empty() {
                    // The Container moved: it keeps its addresses, and the handle records
                    // its new node, so that GC of the old node leaves them alone.
                    let doc = HandleInfo {
                        ips: h.info.ips.clone(),
                        node: node.to_string(),
                    };
                    let txn = Txn::new()
                        .when(vec![Compare::mod_revision(
                            hkey.as_str(),
                            CompareOp::Equal,
                            h.mod_revision,
                        )])
                        .and_then(vec![TxnOp::put(hkey.as_str(), to_json(&hkey, &doc)?, None)])
                        .or_else(assign_reads(&hkey, node, &known));
                    let resp = self.txn("move handle", txn).await?;
                    if resp.succeeded() {
                        info!(%handle, from = %h.info.node, to = %node, "handle moved to another node");
                        return Ok(doc.ips);
                    }
                    pending = Some(resp);
                    continue;
                }
            }
            let mut affine = Vec::new();
            for kv in got.flatten() {
                affine.push(Block::decode(&kv)?);
            }
            let mut affine_keys = Vec::new();
            for kv in &affinities {
                let key = key_string(kv)?;
                match key.strip_prefix(&aff_prefix).and_then(parse_block_suffix) {
                    Some(cidr) => affine_keys.push(block_key(&cidr)),
                    None => warn!(%key, "ignoring an affinity key that names no block"),
                }
            }
            let missing: Vec<String> = affine_keys
                .iter()
                .filter(|k| !affine.iter().any(|b| &b.key == *k))
                .cloned()
                .collect();
            affine.extend(self.read_blocks(&missing).await?);
            affine.sort_by_key(|b| b.doc.cidr);
            known = affine_keys;

            let mut plan = Plan::default();
            let mut ips = Vec::new();
            let mut cidrs: Option<Vec<IpNet>> = None;
            let mut all: Option<Vec<Block>> = None;
            let mut guarded_affinity = false;
            for &v in &versions {
                // 1. A block affine to this node with a usable free address.
                let mut ip = None;
                for b in affine.iter().filter(|b| {
                    b.doc.affinity.as_deref() == Some(node)
                        && net_version(&b.doc.cidr) == v
                        && b.free() > 0
                        && pools.block_usable(&b.doc.cidr)
                }) {
                    ip = plan.block(b).take_free(handle, |a| pools.ip_usable(a));
                    if ip.is_some() {
                        break;
                    }
                }
                if ip.is_none() && !guarded_affinity {
                    // Claiming or borrowing is right only while no other writer has
                    // claimed a block for this node since we read its affinities:
                    // otherwise, retry and use that block (no needless extra claims).
                    plan.compares.push(
                        Compare::create_revision(aff_prefix.as_str(), CompareOp::Less, read_revision + 1).with_prefix(),
                    );
                    guarded_affinity = true;
                }
                // 2. A new block claimed for this node.
                if ip.is_none() {
                    if cidrs.is_none() {
                        cidrs = Some(self.block_cidrs().await?);
                    }
                    let mut taken = cidrs.clone().unwrap_or_default();
                    taken.extend(plan.blocks.values().map(|b| b.doc.cidr));
                    if let Some(cidr) = pools.next_free_block(v, &taken) {
                        let mut b = Block::new(cidr, Some(node.to_string()));
                        ip = b.take_free(handle, |a| pools.ip_usable(a));
                        debug!(%node, block = %cidr, "claiming a block");
                        plan.blocks.insert(b.key.clone(), b);
                    }
                }
                // 3. Borrowed from any other block with room.
                if ip.is_none() {
                    if all.is_none() {
                        all = Some(self.read_usable_blocks().await?);
                    }
                    for b in all
                        .iter()
                        .flatten()
                        .filter(|b| net_version(&b.doc.cidr) == v && b.free() > 0 && pools.block_usable(&b.doc.cidr))
                    {
                        ip = plan.block(b).take_free(handle, |a| pools.ip_usable(a));
                        if let Some(ip) = ip {
                            debug!(%node, %ip, block = %b.doc.cidr, affinity = ?b.doc.affinity, "borrowing an address");
                            break;
                        }
                    }
                }
                match ip {
                    Some(ip) => ips.push(ip),
                    None => return Err(IpamError::Exhausted { version: v }),
                }
            }
            plan.guard_handle(&hkey, h.as_ref());
            let doc = HandleInfo {
                ips: ips.clone(),
                node: node.to_string(),
            };
            plan.ops.push(TxnOp::put(hkey.as_str(), to_json(&hkey, &doc)?, None));
            let claimed: Vec<IpNet> = plan
                .blocks
                .values()
                .filter(|b| b.mod_revision == 0)
                .map(|b| b.doc.cidr)
                .collect();
            let resp = self
                .txn("assign", plan.into_txn()?.or_else(assign_reads(&hkey, node, &known)))
                .await?;
            if resp.succeeded() {
                for c in claimed {
                    info!(%node, block = %c, "claimed block");
                }
                debug!(%handle, %node, ?ips, attempts = attempt + 1, "assigned");
                return Ok(ips);
            }
            debug!(%handle, attempt, "assignment lost a race; retrying");
            pending = Some(resp);
            backoff(attempt).await;
        }
        Err(IpamError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Claims specific addresses for a handle (explicit Container ips, `docker --ip`).
    /// Every address must lie in an enabled pool; one held by another handle is refused
    /// with `InUse` naming the holder; one this handle already holds is fine. Adds to
    /// what the handle holds (release the rest with `release_ip`). A block that does not
    /// exist yet is created affine to `node`. All or nothing.
    pub async fn assign_ips(
        &self,
        handle: &str,
        node: &str,
        ips: &[IpAddr],
        pools: &[IpPool],
    ) -> Result<(), IpamError> {
        check_name("handle", handle)?;
        check_name("node", node)?;
        let pools = Pools::new(pools);
        let mut wanted: Vec<IpAddr> = Vec::new();
        for ip in ips {
            if !pools.ip_usable(*ip) {
                return Err(IpamError::NotInPool(*ip));
            }
            if !wanted.contains(ip) {
                wanted.push(*ip);
            }
        }
        let hkey = handle_key(handle);
        for attempt in 0..MAX_ATTEMPTS {
            let (h, cidrs) = self.read_handle_and_cidrs(handle).await?;
            let existing_keys: BTreeSet<String> = wanted
                .iter()
                .filter_map(|ip| cidrs.iter().find(|c| c.contains(ip)))
                .map(block_key)
                .collect();
            let existing = self.read_blocks(&existing_keys.into_iter().collect::<Vec<_>>()).await?;
            let mut plan = Plan::default();
            let mut changed = false;
            for ip in &wanted {
                let block = match existing.iter().find(|b| b.doc.cidr.contains(ip)) {
                    Some(b) => plan.block(b),
                    None => {
                        // A block the pool would carve around the address, affine to this node.
                        let pool = pools.enabled_pool_of(*ip).ok_or(IpamError::NotInPool(*ip))?;
                        let cidr = IpNet::new(*ip, pool.block_size())
                            .map_err(|e| IpamError::Invalid {
                                key: pool.metadata.name.clone(),
                                detail: format!("pool block size: {e}"),
                            })?
                            .trunc();
                        let key = block_key(&cidr);
                        if let Some(other) = cidrs.iter().find(|c| overlaps(c, &cidr)) {
                            return Err(IpamError::Invalid {
                                key,
                                detail: format!("the block for {ip} would overlap existing block {other}"),
                            });
                        }
                        plan.blocks
                            .entry(key)
                            .or_insert_with(|| Block::new(cidr, Some(node.to_string())))
                    }
                };
                let off = block.offset_of(*ip).ok_or(IpamError::NotInPool(*ip))?;
                match block.doc.allocations.get(&off) {
                    Some(holder) if holder == handle => {}
                    Some(holder) => {
                        return Err(IpamError::InUse {
                            ip: *ip,
                            holder: holder.clone(),
                        })
                    }
                    None => {
                        block.doc.allocations.insert(off, handle.to_string());
                        changed = true;
                    }
                }
            }
            let mut all_ips = h.as_ref().map(|h| h.info.ips.clone()).unwrap_or_default();
            for ip in &wanted {
                if !all_ips.contains(ip) {
                    all_ips.push(*ip);
                    changed = true;
                }
            }
            let node_changed = h.as_ref().is_some_and(|h| h.info.node != node);
            if !changed && !node_changed {
                return Ok(());
            }
            plan.guard_handle(&hkey, h.as_ref());
            let doc = HandleInfo {
                ips: all_ips,
                node: node.to_string(),
            };
            plan.ops.push(TxnOp::put(hkey.as_str(), to_json(&hkey, &doc)?, None));
            if self.commit("assign addresses", plan).await? {
                debug!(%handle, %node, ips = ?wanted, "assigned explicit addresses");
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(IpamError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Releases every address of a handle and the handle itself; returns what it held.
    /// Idempotent: an unknown handle releases nothing.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let hkey = handle_key(handle);
        for attempt in 0..MAX_ATTEMPTS {
            let (h, cidrs) = self.read_handle_and_cidrs(handle).await?;
            let Some(h) = h else {
                return Ok(Vec::new());
            };
            let blocks = self.blocks_holding(&cidrs, &h.info.ips).await?;
            let mut plan = Plan::default();
            for ip in &h.info.ips {
                let Some(b) = blocks.iter().find(|b| b.doc.cidr.contains(ip)) else {
                    warn!(%handle, %ip, "released address is in no block");
                    continue;
                };
                let b = plan.block(b);
                match b.offset_of(*ip) {
                    Some(off) if b.doc.allocations.get(&off).map(String::as_str) == Some(handle) => {
                        b.doc.allocations.remove(&off);
                    }
                    _ => warn!(%handle, %ip, "released address was not allocated to the handle"),
                }
            }
            plan.guard_handle(&hkey, Some(&h));
            plan.ops.push(TxnOp::delete(hkey.as_str(), None));
            if self.commit("release handle", plan).await? {
                debug!(%handle, ips = ?h.info.ips, "released");
                return Ok(h.info.ips);
            }
            backoff(attempt).await;
        }
        Err(IpamError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// Releases one address, whoever holds it; returns the handle that held it, or None
    /// when it was free. The handle keeps its other addresses (and goes when it has none).
    pub async fn release_ip(&self, ip: IpAddr) -> Result<Option<String>, IpamError> {
        for attempt in 0..MAX_ATTEMPTS {
            let cidrs = self.block_cidrs().await?;
            let blocks = self.blocks_holding(&cidrs, &[ip]).await?;
            let Some(b) = blocks.first() else {
                return Ok(None);
            };
            let Some(off) = b.offset_of(ip) else {
                return Ok(None);
            };
            let Some(holder) = b.doc.allocations.get(&off).cloned() else {
                return Ok(None);
            };
            let hkey = handle_key(&holder);
            let h = self.read_handle(&holder).await?;
            let mut plan = Plan::default();
            plan.block(b).doc.allocations.remove(&off);
            plan.guard_handle(&hkey, h.as_ref());
            if let Some(h) = &h {
                let rest: Vec<IpAddr> = h.info.ips.iter().copied().filter(|a| *a != ip).collect();
                if rest.is_empty() {
                    plan.ops.push(TxnOp::delete(hkey.as_str(), None));
                } else {
                    let doc = HandleInfo {
                        ips: rest,
                        node: h.info.node.clone(),
                    };
                    plan.ops.push(TxnOp::put(hkey.as_str(), to_json(&hkey, &doc)?, None));
                }
            }
            if self.commit("release address", plan).await? {
                debug!(%ip, %holder, "released address");
                return Ok(Some(holder));
            }
            backoff(attempt).await;
        }
        Err(IpamError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// The addresses a handle holds (empty when it holds none).
    pub async fn handle_ips(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self.read_handle(handle).await?.map(|h| h.info.ips).unwrap_or_default())
    }

    /// The blocks affine to a node, sorted: what it routes and exports over BGP.
    pub async fn node_blocks(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        let p = affinity_node_prefix(node);
        let kvs = self.get("list node blocks", &p, prefix_keys_only()).await?;
        let mut out = Vec::new();
        for kv in &kvs {
            let key = key_string(kv)?;
            match key.strip_prefix(&p).and_then(parse_block_suffix) {
                Some(c) => out.push(c),
                None => {
                    return Err(IpamError::Invalid {
                        key,
                        detail: "the affinity key names no block".into(),
                    })
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every block, sorted by cidr.
    pub async fn all_blocks(&self) -> Result<Vec<BlockInfo>, IpamError> {
        let mut out: Vec<BlockInfo> = self.read_all_blocks().await?.iter().map(Block::info).collect();
        out.sort_by_key(|b| b.cidr);
        Ok(out)
    }

    /// Every handle and what it holds.
    pub async fn handles(&self) -> Result<BTreeMap<String, HandleInfo>, IpamError> {
        let kvs = self.get("list handles", HANDLES_PREFIX, prefix()).await?;
        kvs.iter()
            .map(|kv| Handle::decode(kv).map(|h| (h.name, h.info)))
            .collect()
    }

    /// A consistency report over one snapshot of everything IPAM stores; see
    /// [`CheckReport`]. `live_handles` are the handles that should exist (one per
    /// Container resource); `pools` are every IPPool, enabled or not. Undecodable keys are
    /// reported, not errors.
    pub async fn check(&self, live_handles: &BTreeSet<String>, pools: &[IpPool]) -> Result<CheckReport, IpamError> {
        let kvs = self.get("read IPAM", IPAM_ROOT, prefix()).await?;
        let mut r = CheckReport::default();
        let mut blocks = Vec::new();
        let mut handles = BTreeMap::new();
        let mut index: BTreeSet<(String, IpNet)> = BTreeSet::new();
        for kv in &kvs {
            let key = match key_string(kv) {
                Ok(k) => k,
                Err(e) => {
                    r.invalid
                        .push((String::from_utf8_lossy(kv.key()).into_owned(), e.to_string()));
                    continue;
                }
            };
            if key.starts_with(BLOCKS_PREFIX) {
                match Block::decode(kv) {
                    Ok(b) => blocks.push(b),
                    Err(e) => r.invalid.push((key, e.to_string())),
                }
            } else if key.starts_with(HANDLES_PREFIX) {
                match Handle::decode(kv) {
                    Ok(h) => {
                        handles.insert(h.name.clone(), h);
                    }
                    Err(e) => r.invalid.push((key, e.to_string())),
                }
            } else if let Some(rest) = key.strip_prefix(AFFINITY_PREFIX) {
                match rest
                    .split_once('/')
                    .and_then(|(n, c)| Some((unescape(n), parse_block_suffix(c)?)))
                {
                    Some(entry) => {
                        index.insert(entry);
                    }
                    None => r.invalid.push((key, "the affinity key names no node and block".into())),
                }
            }
        }

        // Addresses as the blocks see them, and as the handles see them.
        let mut by_blocks: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for b in &blocks {
            for (off, h) in &b.doc.allocations {
                by_blocks.entry(b.ip_at(*off)).or_default().push(h.clone());
            }
        }
        let mut by_handles: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for h in handles.values() {
            for ip in &h.info.ips {
                by_handles.entry(*ip).or_default().push(h.name.clone());
            }
        }
        for (ip, holders) in &by_blocks {
            for h in holders {
                if !live_handles.contains(h) {
                    r.leaked.push((*ip, h.clone()));
                }
                if !handles.get(h).is_some_and(|rec| rec.info.ips.contains(ip)) {
                    r.unrecorded.push((*ip, h.clone()));
                }
            }
        }
        for (ip, holders) in &by_handles {
            for h in holders {
                if !by_blocks.get(ip).is_some_and(|hs| hs.contains(h)) {
                    r.dangling_handles.push((h.clone(), *ip));
                }
            }
        }
        let mut dup: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
        for map in [&by_blocks, &by_handles] {
            for (ip, holders) in map.iter().filter(|(_, hs)| hs.len() > 1) {
                dup.entry(*ip).or_default().extend(holders.iter().cloned());
            }
        }
        r.duplicates = dup.into_iter().map(|(ip, hs)| (ip, hs.into_iter().collect())).collect();

        blocks.sort_by_key(|b| b.doc.cidr);
        for (i, a) in blocks.iter().enumerate() {
            for b in &blocks[i + 1..] {
                if overlaps(&a.doc.cidr, &b.doc.cidr) {
                    r.overlapping_blocks.push((a.doc.cidr, b.doc.cidr));
                }
            }
            if !pools.iter().any(|p| p.spec.cidr.net().contains(&a.doc.cidr)) {
                r.blocks_outside_pools.push(a.doc.cidr);
            }
            if let Some(n) = &a.doc.affinity {
                if !index.contains(&(n.clone(), a.doc.cidr)) {
                    r.affinity_mismatches
                        .push(format!("block {} is affine to {n} but not in its index", a.doc.cidr));
                }
            }
        }
        for (n, c) in &index {
            match blocks.iter().find(|b| b.doc.cidr == *c) {
                None => r
                    .affinity_mismatches
                    .push(format!("{n}'s index names block {c}, which does not exist")),
                Some(b) if b.doc.affinity.as_deref() != Some(n.as_str()) => r.affinity_mismatches.push(format!(
                    "{n}'s index names block {c}, which is affine to {}",
                    b.doc.affinity.as_deref().unwrap_or("no node")
                )),
                Some(_) => {}
            }
        }
        r.leaked.sort();
        r.unrecorded.sort();
        r.dangling_handles.sort();
        r.invalid.sort();
        Ok(r)
    }

    /// For garbage collection of a deleted Node: when `release_addresses`, releases every
    /// handle recorded for the node; then releases the node's affinity on its empty
    /// blocks (which deletes them). Blocks still holding addresses stay affine: call again
    /// once they are empty.
    pub async fn release_node(&self, node: &str, release_addresses: bool) -> Result<(), IpamError> {
        check_name("node", node)?;
        if release_addresses {
            // Tolerant of bad records: one undecodable handle must not stop the GC.
            for kv in self.get("list handles", HANDLES_PREFIX, prefix()).await? {
                match Handle::decode(&kv) {
                    Ok(h) if h.info.node == node => {
                        self.release_handle(&h.name).await?;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "skipping an undecodable handle"),
                }
            }
        }
        for cidr in self.node_blocks(node).await? {
            let bkey = block_key(&cidr);
            let akey = affinity_key(node, &cidr);
            let mut done = false;
            for attempt in 0..MAX_ATTEMPTS {
                let kvs = self.get("read block", &bkey, None).await?;
                let b = kvs.first().map(Block::decode).transpose()?;
                let txn = match &b {
                    // A stale index entry: drop it.
                    None => Txn::new()
                        .when(vec![Compare::version(bkey.as_str(), CompareOp::Equal, 0)])
                        .and_then(vec![TxnOp::delete(akey.as_str(), None)]),
                    Some(b) if b.doc.affinity.as_deref() != Some(node) => Txn::new()
                        .when(vec![Compare::mod_revision(
                            bkey.as_str(),
                            CompareOp::Equal,
                            b.mod_revision,
                        )])
                        .and_then(vec![TxnOp::delete(akey.as_str(), None)]),
                    Some(b) if b.doc.allocations.is_empty() => Txn::new()
                        .when(vec![Compare::mod_revision(
                            bkey.as_str(),
                            CompareOp::Equal,
                            b.mod_revision,
                        )])
                        .and_then(vec![
                            TxnOp::delete(bkey.as_str(), None),
                            TxnOp::delete(akey.as_str(), None),
                        ]),
                    Some(b) => {
                        info!(%node, block = %cidr, allocated = b.doc.allocations.len(), "block still in use; keeping its affinity");
                        done = true;
                        break;
                    }
                };
                if self.txn("release affinity", txn).await?.succeeded() {
                    info!(%node, block = %cidr, "released block affinity");
                    done = true;
                    break;
                }
                backoff(attempt).await;
            }
            if !done {
                return Err(IpamError::Contended { attempts: MAX_ATTEMPTS });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for s in ["container/web", "a%2Fb", "%", "x/y/z%25", "plain"] {
            let e = escape(s);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unescape(&e), s);
        }
        assert_eq!(handle_key("container/web"), "/calico/v1/ipam/handles/container%2Fweb");
    }

    #[test]
    fn block_keys() {
        let v4: IpNet = "10.65.0.64/26".parse().unwrap();
        let v6: IpNet = "fd00::40/122".parse().unwrap();
        assert_eq!(block_key(&v4), "/calico/v1/ipam/blocks/10.65.0.64_26");
        assert_eq!(parse_block_suffix("10.65.0.64_26"), Some(v4));
        assert_eq!(parse_block_suffix(&block_suffix(&v6)), Some(v6));
    }

    #[test]
    fn offsets_and_cursor() {
        let mut b = Block::new("10.0.0.0/30".parse().unwrap(), None);
        assert_eq!(b.capacity(), 4);
        let a = b.take_free("h1", |_| true).unwrap();
        assert_eq!(a, "10.0.0.0".parse::<IpAddr>().unwrap());
        let c = b.take_free("h2", |_| true).unwrap();
        assert_eq!(b.offset_of(c), Some(1));
        b.doc.allocations.remove(&0);
        // The cursor moves on: the released address comes back only after the others.
        assert_eq!(b.take_free("h3", |_| true), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(b.take_free("h4", |_| true), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(b.take_free("h5", |_| true), Some("10.0.0.0".parse().unwrap()));
        assert_eq!(b.take_free("h6", |_| true), None);
        let mut v6 = Block::new("fd00::/126".parse().unwrap(), None);
        assert_eq!(v6.take_free("h", |_| true), Some("fd00::".parse().unwrap()));
        assert_eq!(v6.offset_of("fd00::3".parse().unwrap()), Some(3));
        assert_eq!(v6.offset_of("fd00::4".parse().unwrap()), None);
    }
}
