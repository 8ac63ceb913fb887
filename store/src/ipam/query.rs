//! The read-only API: what a handle holds, a node's blocks, every block and handle.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::block::{Block, Handle};
use super::etcd::{prefix, prefix_keys_only};
use super::keys::{affinity_node_prefix, key_string, parse_block_suffix};
use super::{BlockInfo, HandleInfo, HandleListing, Ipam, IpamError, HANDLES_PREFIX};

impl Ipam {
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

    /// Every handle and what it holds. Strict: one handle that does not decode fails
    /// the whole read, for callers that act on the list (release, plan) and must not
    /// act on a part of it. [`Ipam::handle_listing`] is the read for showing them.
    pub async fn handles(&self) -> Result<BTreeMap<String, HandleInfo>, IpamError> {
        let kvs = self.get("list handles", HANDLES_PREFIX, prefix()).await?;
        kvs.iter()
            .map(|kv| Handle::decode(kv).map(|h| (h.name, h.info)))
            .collect()
    }

    /// Every handle that decodes, and every key below the handles prefix that does not
    /// (named, with why): one garbage value must not hide all the others from
    /// `calicoctl ipam show` and `check`, which report it instead.
    pub async fn handle_listing(&self) -> Result<HandleListing, IpamError> {
        let kvs = self.get("list handles", HANDLES_PREFIX, prefix()).await?;
        let mut out = HandleListing::default();
        for kv in &kvs {
            match Handle::decode(kv) {
                Ok(h) => {
                    out.handles.insert(h.name, h.info);
                }
                Err(IpamError::Invalid { key, detail }) => out.invalid.push((key, detail)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
