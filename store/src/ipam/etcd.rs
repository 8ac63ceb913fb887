//! IPAM's etcd plumbing: each call bounded by the timeout through the store's call
//! wrapper and error mapping, and the reads of handles and blocks the operations share.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;

use etcd_client::{GetOptions, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse};
use ipnet::IpNet;
use tracing::warn;

use super::block::{Block, Handle};
use super::keys::{block_key, cidrs_of, handle_key};
use super::plan::Plan;
use super::{Ipam, IpamError, BACKOFF_CAP, BLOCKS_PREFIX};
use crate::error::Failure;
use crate::retry::{MAX_DECODE, READ_CHUNK};

pub(super) async fn backoff(attempt: u32) {
    crate::retry::backoff(attempt, BACKOFF_CAP).await;
}

pub(super) fn gets(resp: &TxnResponse) -> Vec<Vec<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        })
        .collect()
}

pub(super) fn prefix_keys_only() -> Option<GetOptions> {
    Some(GetOptions::new().with_prefix().with_keys_only())
}

pub(super) fn prefix() -> Option<GetOptions> {
    Some(GetOptions::new().with_prefix())
}

impl Ipam {
    /// One etcd call bounded by the timeout; requests that never left this process
    /// (the balancer picked a dead member) are sent again (`crate::retry`).
    pub(super) async fn call<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, IpamError>
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

    pub(super) fn kv(&self) -> KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_DECODE)
    }

    pub(super) async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, IpamError> {
        self.call(what, || {
            let (mut c, txn) = (self.kv(), txn.clone());
            async move { c.txn(txn).await }
        })
        .await
    }

    pub(super) async fn get(
        &self,
        what: &str,
        key: &str,
        opts: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, IpamError> {
        let mut r = self
            .call(what, || {
                let (mut c, opts) = (self.kv(), opts.clone());
                async move { c.get(key, opts).await }
            })
            .await?;
        Ok(r.take_kvs())
    }

    pub(super) async fn read_handle(&self, handle: &str) -> Result<Option<Handle>, IpamError> {
        let kvs = self.get("read handle", &handle_key(handle), None).await?;
        kvs.first().map(Handle::decode).transpose()
    }

    /// Reads the given blocks in one round trip; absent ones are left out.
    pub(super) async fn read_blocks(&self, keys: &[String]) -> Result<Vec<Block>, IpamError> {
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
    pub(super) async fn block_cidrs(&self) -> Result<Vec<IpNet>, IpamError> {
        let kvs = self.get("list blocks", BLOCKS_PREFIX, prefix_keys_only()).await?;
        cidrs_of(&kvs)
    }

    /// A handle and the cidrs of every block, in one round trip.
    pub(super) async fn read_handle_and_cidrs(&self, handle: &str) -> Result<(Option<Handle>, Vec<IpNet>), IpamError> {
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

    pub(super) async fn read_all_blocks(&self) -> Result<Vec<Block>, IpamError> {
        let kvs = self.get("list blocks", BLOCKS_PREFIX, prefix()).await?;
        kvs.iter().map(Block::decode).collect()
    }

    /// Every block that decodes, for borrowing: one corrupt block elsewhere must not stop
    /// a node from assigning (`check` reports it).
    pub(super) async fn read_usable_blocks(&self) -> Result<Vec<Block>, IpamError> {
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
    pub(super) async fn blocks_holding(&self, cidrs: &[IpNet], ips: &[IpAddr]) -> Result<Vec<Block>, IpamError> {
        let keys: BTreeSet<String> = ips
            .iter()
            .filter_map(|ip| cidrs.iter().find(|c| c.contains(ip)))
            .map(block_key)
            .collect();
        self.read_blocks(&keys.into_iter().collect::<Vec<_>>()).await
    }

    pub(super) async fn commit(&self, what: &str, plan: Plan) -> Result<bool, IpamError> {
        let resp = self.txn(what, plan.into_txn()?).await?;
        Ok(resp.succeeded())
    }
}
