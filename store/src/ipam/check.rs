//! The consistency check: one snapshot of everything IPAM stores, compared with itself
//! (blocks, handles, the affinity index) and with the live handles and the pools.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use calico_schema::IpPool;
use ipnet::IpNet;
use serde::Serialize;

use super::block::{overlaps, Block, Handle};
use super::etcd::prefix;
use super::keys::{key_string, parse_block_suffix, unescape};
use super::{Ipam, IpamError, AFFINITY_PREFIX, BLOCKS_PREFIX, HANDLES_PREFIX, IPAM_ROOT};

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

impl Ipam {
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
                    .and_then(|(n, c)| Some((unescape(n)?, parse_block_suffix(c)?)))
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
}
