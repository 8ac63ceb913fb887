//! The IP pools as IPAM uses them: which blocks and addresses may be handed out, and the
//! next free block of a pool.

use std::collections::HashSet;
use std::net::IpAddr;

use calico_schema::IpPool;
use ipnet::IpNet;
use tracing::warn;

use super::block::overlaps;
use super::SCAN_SLACK;

/// The pools as IPAM uses them: which blocks and addresses may be handed out.
pub(super) struct Pools<'a> {
    enabled: Vec<&'a IpPool>,
    disabled: Vec<&'a IpPool>,
}

impl<'a> Pools<'a> {
    pub(super) fn new(pools: &'a [IpPool]) -> Pools<'a> {
        let mut enabled: Vec<&IpPool> = pools.iter().filter(|p| !p.spec.disabled).collect();
        let mut disabled: Vec<&IpPool> = pools.iter().filter(|p| p.spec.disabled).collect();
        // Callers list pools in any order; a fixed order makes every writer pick the
        // same next block, so races end in one winner rather than several half-used blocks.
        enabled.sort_by_key(|p| p.spec.cidr.net());
        disabled.sort_by_key(|p| p.spec.cidr.net());
        Pools { enabled, disabled }
    }

    pub(super) fn has_version(&self, v: u8) -> bool {
        self.enabled.iter().any(|p| p.spec.cidr.version() == v)
    }

    pub(super) fn ip_usable(&self, ip: IpAddr) -> bool {
        self.enabled.iter().any(|p| p.spec.cidr.net().contains(&ip))
            && !self.disabled.iter().any(|p| p.spec.cidr.net().contains(&ip))
    }

    /// A block may be allocated from when an enabled pool holds it and no disabled pool
    /// overlaps it.
    pub(super) fn block_usable(&self, net: &IpNet) -> bool {
        self.enabled.iter().any(|p| p.spec.cidr.net().contains(net))
            && !self.disabled.iter().any(|p| overlaps(&p.spec.cidr.net(), net))
    }

    pub(super) fn enabled_pool_of(&self, ip: IpAddr) -> Option<&'a IpPool> {
        self.enabled.iter().copied().find(|p| p.spec.cidr.net().contains(&ip))
    }

    /// The first block of version `v` that no existing (or planned) block overlaps.
    pub(super) fn next_free_block(&self, v: u8, existing: &[IpNet]) -> Option<IpNet> {
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
