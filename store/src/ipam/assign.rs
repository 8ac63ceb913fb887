//! Assignment: `auto_assign` (the node's blocks, else a new block, else a borrowed
//! address) and `assign_ips` (explicit addresses).

use std::collections::BTreeSet;
use std::net::IpAddr;

use calico_schema::IpPool;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnResponse};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::block::{net_version, overlaps, to_json, Block, Handle};
use super::etcd::{backoff, gets, prefix_keys_only};
use super::keys::{affinity_node_prefix, block_key, handle_key, key_string, parse_block_suffix};
use super::plan::Plan;
use super::pools::Pools;
use super::{check_name, HandleInfo, Ipam, IpamError, MAX_ATTEMPTS};
use crate::retry::READ_CHUNK;

/// What `auto_assign` reads: the handle, the node's affinity index and (up to a chunk
/// of) the node's blocks as last known.
pub(super) fn assign_reads(hkey: &str, node: &str, affine_keys: &[String]) -> Vec<TxnOp> {
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

/// One `auto_assign` call: the handle, the node, the pools and the IP versions wanted.
struct Request<'a> {
    handle: &'a str,
    node: &'a str,
    hkey: String,
    aff_prefix: String,
    pools: Pools<'a>,
    versions: Vec<u8>,
}

impl<'a> Request<'a> {
    fn new(handle: &'a str, node: &'a str, pools: &'a [IpPool], want_v6: bool) -> Result<Request<'a>, IpamError> {
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
        Ok(Request {
            handle,
            node,
            hkey: handle_key(handle),
            aff_prefix: affinity_node_prefix(node),
            pools,
            versions,
        })
    }

    /// An address of version `v` from a block affine to this node with a usable free one.
    fn take_affine(&self, plan: &mut Plan, affine: &[Block], v: u8) -> Option<IpAddr> {
        affine
            .iter()
            .filter(|b| {
                b.doc.affinity.as_deref() == Some(self.node)
                    && net_version(&b.doc.cidr) == v
                    && b.free() > 0
                    && self.pools.block_usable(&b.doc.cidr)
            })
            .find_map(|b| plan.block(b).take_free(self.handle, |a| self.pools.ip_usable(a)))
    }
}

/// One attempt's choice of addresses beyond the node's own blocks: the plan so far, and
/// the reads needed only then, made at most once each.
struct Picking<'p> {
    ipam: &'p Ipam,
    req: &'p Request<'p>,
    plan: Plan,
    /// The cidr of every block (from the keys).
    cidrs: Option<Vec<IpNet>>,
    /// Every block that decodes.
    all: Option<Vec<Block>>,
}

impl Picking<'_> {
    /// An address of version `v` from a new block claimed for the node, if a pool has
    /// a free block.
    async fn claim_block(&mut self, v: u8) -> Result<Option<IpAddr>, IpamError> {
        if self.cidrs.is_none() {
            self.cidrs = Some(self.ipam.block_cidrs().await?);
        }
        let mut taken = self.cidrs.clone().unwrap_or_default();
        taken.extend(self.plan.blocks.values().map(|b| b.doc.cidr));
        let Some(cidr) = self.req.pools.next_free_block(v, &taken) else {
            return Ok(None);
        };
        let mut b = Block::new(cidr, Some(self.req.node.to_string()));
        let ip = b.take_free(self.req.handle, |a| self.req.pools.ip_usable(a));
        debug!(node = %self.req.node, block = %cidr, "claiming a block");
        self.plan.blocks.insert(b.key.clone(), b);
        Ok(ip)
    }

    /// An address of version `v` borrowed from any block with room.
    async fn borrow(&mut self, v: u8) -> Result<Option<IpAddr>, IpamError> {
        if self.all.is_none() {
            self.all = Some(self.ipam.read_usable_blocks().await?);
        }
        let req = self.req;
        for b in self
            .all
            .iter()
            .flatten()
            .filter(|b| net_version(&b.doc.cidr) == v && b.free() > 0 && req.pools.block_usable(&b.doc.cidr))
        {
            if let Some(ip) = self.plan.block(b).take_free(req.handle, |a| req.pools.ip_usable(a)) {
                debug!(node = %req.node, %ip, block = %b.doc.cidr, affinity = ?b.doc.affinity, "borrowing an address");
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }
}

impl Ipam {
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
        let req = Request::new(handle, node, pools, want_v6)?;
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
                        Txn::new().and_then(assign_reads(&req.hkey, node, &known)),
                    )
                    .await?
                }
            };
            let read_revision = resp.header().map(etcd_client::ResponseHeader::revision).unwrap_or(0);
            let mut got = gets(&resp).into_iter();
            let existing = got.next().unwrap_or_default();
            let affinities = got.next().unwrap_or_default();
            let h = existing.first().map(Handle::decode).transpose()?;
            if let Some(h) = h.as_ref().filter(|h| !h.info.ips.is_empty()) {
                if h.info.node == node {
                    return Ok(h.info.ips.clone());
                }
                match self.move_handle(&req, h, &known).await? {
                    Ok(ips) => return Ok(ips),
                    Err(resp) => {
                        pending = Some(resp);
                        continue;
                    }
                }
            }
            let (affine, affine_keys) = self.affine_blocks(&req, got.flatten().collect(), &affinities).await?;
            known = affine_keys;
            let (plan, ips) = self.plan_assignment(&req, &affine, read_revision).await?;
            match self.commit_assignment(&req, plan, h.as_ref(), ips, &known).await? {
                Ok(ips) => {
                    debug!(%handle, %node, ?ips, attempts = attempt + 1, "assigned");
                    return Ok(ips);
                }
                Err(resp) => pending = Some(resp),
            }
            debug!(%handle, attempt, "assignment lost a race; retrying");
            backoff(attempt).await;
        }
        Err(IpamError::Contended { attempts: MAX_ATTEMPTS })
    }

    /// The Container moved: it keeps its addresses, and the handle records its new node,
    /// so that GC of the old node leaves them alone. `Err` is the failed transaction's
    /// re-read when another writer changed the handle first.
    async fn move_handle(
        &self,
        req: &Request<'_>,
        h: &Handle,
        known: &[String],
    ) -> Result<Result<Vec<IpAddr>, TxnResponse>, IpamError> {
        let hkey = req.hkey.as_str();
        let doc = HandleInfo {
            ips: h.info.ips.clone(),
            node: req.node.to_string(),
        };
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(hkey, CompareOp::Equal, h.mod_revision)])
            .and_then(vec![TxnOp::put(hkey, to_json(hkey, &doc)?, None)])
            .or_else(assign_reads(hkey, req.node, known));
        let resp = self.txn("move handle", txn).await?;
        if resp.succeeded() {
            info!(handle = %req.handle, from = %h.info.node, to = %req.node, "handle moved to another node");
            return Ok(Ok(doc.ips));
        }
        Ok(Err(resp))
    }

    /// The node's affine blocks, sorted by cidr: those `read` with the handle, plus any
    /// the affinity index names that were not among them. Also the index's block keys,
    /// which the next attempt reads with the handle.
    async fn affine_blocks(
        &self,
        req: &Request<'_>,
        read: Vec<etcd_client::KeyValue>,
        affinities: &[etcd_client::KeyValue],
    ) -> Result<(Vec<Block>, Vec<String>), IpamError> {
        let mut affine = Vec::new();
        for kv in &read {
            affine.push(Block::decode(kv)?);
        }
        let mut affine_keys = Vec::new();
        for kv in affinities {
            let key = key_string(kv)?;
            match key.strip_prefix(&req.aff_prefix).and_then(parse_block_suffix) {
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
        Ok((affine, affine_keys))
    }

    /// One address per IP version, each from the first of: the node's own blocks, a new
    /// block claimed for the node, a block borrowed from anywhere. The plan holds every
    /// block touched; nothing is written yet.
    async fn plan_assignment(
        &self,
        req: &Request<'_>,
        affine: &[Block],
        read_revision: i64,
    ) -> Result<(Plan, Vec<IpAddr>), IpamError> {
        let mut p = Picking {
            ipam: self,
            req,
            plan: Plan::default(),
            cidrs: None,
            all: None,
        };
        let mut ips = Vec::new();
        let mut guarded_affinity = false;
        for &v in &req.versions {
            let mut ip = req.take_affine(&mut p.plan, affine, v);
            if ip.is_none() && !guarded_affinity {
                // Claiming or borrowing is right only while no other writer has
                // claimed a block for this node since we read its affinities:
                // otherwise, retry and use that block (no needless extra claims).
                p.plan.compares.push(
                    Compare::create_revision(req.aff_prefix.as_str(), CompareOp::Less, read_revision + 1).with_prefix(),
                );
                guarded_affinity = true;
            }
            if ip.is_none() {
                ip = p.claim_block(v).await?;
            }
            if ip.is_none() {
                ip = p.borrow(v).await?;
            }
            match ip {
                Some(ip) => ips.push(ip),
                None => return Err(IpamError::Exhausted { version: v }),
            }
        }
        Ok((p.plan, ips))
    }

    /// Writes the plan and the handle's record in one transaction, guarded on the handle
    /// as read (`h`). `Err` is the failed transaction's re-read of the handle and blocks.
    async fn commit_assignment(
        &self,
        req: &Request<'_>,
        mut plan: Plan,
        h: Option<&Handle>,
        ips: Vec<IpAddr>,
        known: &[String],
    ) -> Result<Result<Vec<IpAddr>, TxnResponse>, IpamError> {
        let hkey = req.hkey.as_str();
        plan.guard_handle(hkey, h);
        let doc = HandleInfo {
            ips,
            node: req.node.to_string(),
        };
        plan.ops.push(TxnOp::put(hkey, to_json(hkey, &doc)?, None));
        let claimed: Vec<IpNet> = plan
            .blocks
            .values()
            .filter(|b| b.mod_revision == 0)
            .map(|b| b.doc.cidr)
            .collect();
        let resp = self
            .txn("assign", plan.into_txn()?.or_else(assign_reads(hkey, req.node, known)))
            .await?;
        if !resp.succeeded() {
            return Ok(Err(resp));
        }
        for c in claimed {
            info!(node = %req.node, block = %c, "claimed block");
        }
        Ok(Ok(doc.ips))
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
}
