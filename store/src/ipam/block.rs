//! The documents IPAM stores and their codec: a block (its cidr, affinity and
//! allocations by offset) with the arithmetic of offsets and addresses, and a handle's
//! record; plus the small cidr helpers they share.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etcd_client::KeyValue;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::keys::{block_key, key_string, unescape};
use super::{BlockInfo, HandleInfo, IpamError, HANDLES_PREFIX, MAX_BLOCK_HOST_BITS};

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
pub(super) struct Block {
    pub(super) key: String,
    pub(super) doc: BlockDoc,
    /// 0: not in etcd yet (created by this transaction).
    pub(super) mod_revision: i64,
}

impl Block {
    pub(super) fn new(cidr: IpNet, affinity: Option<String>) -> Block {
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

    pub(super) fn decode(kv: &KeyValue) -> Result<Block, IpamError> {
        let key = key_string(kv)?;
        let doc = decode_block(&key, kv.value())?;
        Ok(Block {
            key,
            doc,
            mod_revision: kv.mod_revision(),
        })
    }

    pub(super) fn capacity(&self) -> u64 {
        1u64 << host_bits(&self.doc.cidr)
    }

    pub(super) fn free(&self) -> u64 {
        self.capacity().saturating_sub(self.doc.allocations.len() as u64)
    }

    pub(super) fn offset_of(&self, ip: IpAddr) -> Option<u32> {
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

    pub(super) fn ip_at(&self, off: u32) -> IpAddr {
        match self.doc.cidr.network() {
            IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n).wrapping_add(off))),
            IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n).wrapping_add(u128::from(off)))),
        }
    }

    /// Allocates the first free address at or after the cursor (wrapping), skipping
    /// addresses `usable` refuses (those inside a disabled pool).
    pub(super) fn take_free(&mut self, handle: &str, usable: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
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

    pub(super) fn info(&self) -> BlockInfo {
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

/// Decodes and checks the block stored at `key`: its cidr is the one the key names, a
/// network address no larger than any pool allows, and every allocation is inside it
/// and names a handle. `Invalid`, naming the key, otherwise. Public so that the fuzz
/// tests can feed it hostile values without an etcd.
pub fn decode_block(key: &str, value: &[u8]) -> Result<BlockDoc, IpamError> {
    let invalid = |detail: String| IpamError::Invalid {
        key: key.to_string(),
        detail,
    };
    let doc: BlockDoc = serde_json::from_slice(value).map_err(|e| invalid(format!("bad block JSON: {e}")))?;
    // The key must be the block's one spelling of its cidr: a block under another
    // ("FD00::40_122" for fd00::40/122) is missed by lookups of `block_key` and its
    // addresses could be handed out again from a second block of the same cidr.
    if key != block_key(&doc.cidr) {
        return Err(invalid(format!(
            "the key does not name the block's cidr {} (its key is {})",
            doc.cidr,
            block_key(&doc.cidr)
        )));
    }
    if doc.cidr.trunc() != doc.cidr {
        return Err(invalid(format!("cidr {} has host bits set", doc.cidr)));
    }
    if host_bits(&doc.cidr) > MAX_BLOCK_HOST_BITS {
        return Err(invalid(format!("block {} is larger than any pool allows", doc.cidr)));
    }
    if let Some((off, _)) = doc.allocations.iter().next_back() {
        if u64::from(*off) >= 1u64 << host_bits(&doc.cidr) {
            return Err(invalid(format!("allocation offset {off} is outside the block")));
        }
    }
    if doc.allocations.values().any(String::is_empty) {
        return Err(invalid("an allocation has an empty handle".into()));
    }
    Ok(doc)
}

/// Decodes the handle record stored at `key`: the handle's name (from the key) and
/// what it holds; `Invalid`, naming the key, when the value does not decode. Public so
/// that the fuzz tests can feed it hostile values without an etcd.
pub fn decode_handle(key: &str, value: &[u8]) -> Result<(String, HandleInfo), IpamError> {
    let invalid = |detail: &str| IpamError::Invalid {
        key: key.to_string(),
        detail: detail.to_string(),
    };
    let escaped = key
        .strip_prefix(HANDLES_PREFIX)
        .ok_or_else(|| invalid("not a handle key"))?;
    // One handle, one key: a name read from a non-canonical spelling would be released
    // (or looked up) under another key than the one it was read from.
    let name = unescape(escaped)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("the key is not a handle name escaped as calico-docker writes it (only %25 and %2F)"))?;
    let info: HandleInfo = serde_json::from_slice(value).map_err(|e| IpamError::Invalid {
        key: key.to_string(),
        detail: format!("bad handle JSON: {e}"),
    })?;
    Ok((name, info))
}

/// A handle record as read.
#[derive(Debug, Clone)]
pub(super) struct Handle {
    pub(super) name: String,
    pub(super) info: HandleInfo,
    pub(super) mod_revision: i64,
}

impl Handle {
    pub(super) fn decode(kv: &KeyValue) -> Result<Handle, IpamError> {
        let key = key_string(kv)?;
        let (name, info) = decode_handle(&key, kv.value())?;
        Ok(Handle {
            name,
            info,
            mod_revision: kv.mod_revision(),
        })
    }
}

pub(super) fn host_bits(net: &IpNet) -> u8 {
    net.max_prefix_len().saturating_sub(net.prefix_len())
}

pub(super) fn version_of(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

pub(super) fn net_version(net: &IpNet) -> u8 {
    version_of(&net.network())
}

pub(super) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub(super) fn to_json<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(v).map_err(|e| IpamError::Invalid {
        key: key.to_string(),
        detail: format!("cannot encode: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_only_decodes_at_its_own_key() {
        let doc = br#"{"cidr":"fd00::40/122","allocations":{"3":"container/a"}}"#;
        assert!(decode_block("/calico/v1/ipam/blocks/fd00::40_122", doc).is_ok());
        for key in [
            "/calico/v1/ipam/blocks/FD00::40_122",
            "/calico/v1/ipam/blocks/fd00:0::40_122",
            "fd00::40_122",
            "/calico/v1/ipam/blocks/fd00::80_122",
        ] {
            match decode_block(key, doc) {
                Err(IpamError::Invalid { key: k, detail }) => {
                    assert_eq!(k, key);
                    assert!(detail.contains("does not name the block's cidr"), "{detail}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
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
