//! The transaction builder: the blocks one change touches, each guarded at the revision
//! it was read at, and the extra compares and operations, turned into one etcd `Txn`.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::block::{to_json, Block, Handle};
use super::keys::affinity_key;
use super::IpamError;

/// A transaction being built: blocks touched (with the revision they were read at) and
/// extra operations.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) blocks: BTreeMap<String, Block>,
    pub(super) compares: Vec<Compare>,
    pub(super) ops: Vec<TxnOp>,
}

impl Plan {
    pub(super) fn block(&mut self, b: &Block) -> &mut Block {
        self.blocks.entry(b.key.clone()).or_insert_with(|| b.clone())
    }

    /// Guards on the handle: unchanged since read, or still absent.
    pub(super) fn guard_handle(&mut self, key: &str, h: Option<&Handle>) {
        self.compares.push(match h {
            Some(h) => Compare::mod_revision(key, CompareOp::Equal, h.mod_revision),
            None => Compare::version(key, CompareOp::Equal, 0),
        });
    }

    /// The transaction: every block compared at the revision it was read (or absent),
    /// written back, deleted when empty and unaffine, and indexed when created affine.
    pub(super) fn into_txn(self) -> Result<Txn, IpamError> {
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
