//! Release: of a handle, of one address, and of a deleted node's handles and blocks.

use std::net::IpAddr;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tracing::{debug, info, warn};

use super::block::{to_json, Block, Handle};
use super::etcd::{backoff, prefix};
use super::keys::{affinity_key, block_key, handle_key};
use super::plan::Plan;
use super::{check_name, HandleInfo, Ipam, IpamError, HANDLES_PREFIX, MAX_ATTEMPTS};

impl Ipam {
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
            free_addresses(&mut plan, &blocks, handle, &h.info.ips);
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

    /// Releases those of `ips` that `handle` holds, keeping its other addresses (the
    /// handle goes when it has none left); returns what was released. An address held
    /// by another handle, or by none, is left alone: a Container that dropped an
    /// address from its spec frees only its own. Idempotent.
    pub async fn release_ips(&self, handle: &str, ips: &[IpAddr]) -> Result<Vec<IpAddr>, IpamError> {
        let hkey = handle_key(handle);
        for attempt in 0..MAX_ATTEMPTS {
            let (h, cidrs) = self.read_handle_and_cidrs(handle).await?;
            let Some(h) = h else {
                return Ok(Vec::new());
            };
            let gone: Vec<IpAddr> = h.info.ips.iter().copied().filter(|ip| ips.contains(ip)).collect();
            if gone.is_empty() {
                return Ok(gone);
            }
            let blocks = self.blocks_holding(&cidrs, &gone).await?;
            let mut plan = Plan::default();
            free_addresses(&mut plan, &blocks, handle, &gone);
            plan.guard_handle(&hkey, Some(&h));
            let rest: Vec<IpAddr> = h.info.ips.iter().copied().filter(|ip| !gone.contains(ip)).collect();
            if rest.is_empty() {
                plan.ops.push(TxnOp::delete(hkey.as_str(), None));
            } else {
                let doc = HandleInfo {
                    ips: rest,
                    node: h.info.node.clone(),
                };
                plan.ops.push(TxnOp::put(hkey.as_str(), to_json(&hkey, &doc)?, None));
            }
            if self.commit("release addresses", plan).await? {
                debug!(%handle, ips = ?gone, "released addresses");
                return Ok(gone);
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

/// Frees in `plan` each of `ips` that `handle` holds in its block (of `blocks`); an
/// address in no block, or held by another handle, is only logged.
fn free_addresses(plan: &mut Plan, blocks: &[Block], handle: &str, ips: &[IpAddr]) {
    for ip in ips {
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
}
