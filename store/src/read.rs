//! Reads: resources (one, or a consistent listing), raw prefixes (dump, count, delete),
//! and the keyed reads a commit checks against.

use calico_schema::{Kind, Resource};
use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};
use tracing::warn;

use crate::client::kv_txn;
use crate::codec::{decode_resource, resource_key};
use crate::retry::READ_CHUNK;
use crate::{EtcdFailure, Store, StoreError, RESOURCES_PREFIX};

/// A consistent read of resources.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Sorted by (kind rank, name); `metadata.resource_version` is the key's mod revision.
    pub resources: Vec<Resource>,
    /// `(key, error)` for values that do not decode; reported, never silently dropped.
    pub invalid: Vec<(String, String)>,
    /// The etcd header revision of the read (a watch from `revision + 1` misses nothing).
    pub revision: i64,
}

impl Listing {
    /// Decodes one stored resource into the listing, or records why it does not decode.
    pub(crate) fn add(&mut self, key: String, value: &[u8], rev: i64) {
        match decode_resource(&key, value, rev) {
            Ok(r) => self.resources.push(r),
            Err(e) => {
                warn!(%key, error = %e, "undecodable resource in etcd");
                let detail = match e {
                    StoreError::Invalid { detail, .. } => detail,
                    other => other.to_string(),
                };
                self.invalid.push((key, detail));
            }
        }
    }

    /// Puts the resources in listing order: by kind rank, then name.
    pub(crate) fn sort(&mut self) {
        self.resources
            .sort_by(|a, b| (a.kind().rank(), a.name()).cmp(&(b.kind().rank(), b.name())));
    }
}

/// A stored key as (key, value, mod revision), as ranges return them.
pub(crate) fn raw_item(kv: etcd_client::KeyValue) -> (String, Vec<u8>, i64) {
    let rev = kv.mod_revision();
    let (k, v) = kv.into_key_value();
    (String::from_utf8_lossy(&k).into_owned(), v, rev)
}

/// One stored key: value and mod revision.
pub(crate) type Current = Option<(Vec<u8>, i64)>;

impl Store {
    /// How many keys there are under `prefix`.
    pub async fn count_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        let resp = self
            .kv_call(|mut kv| async move {
                kv.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
                    .await
            })
            .await?;
        Ok(resp.count())
    }

    /// Deletes every key under `prefix` in one range delete; how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        let resp = self
            .kv_call(|mut kv| async move {
                kv.delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix()))
                    .await
            })
            .await?;
        Ok(resp.deleted())
    }

    /// Every key under `prefix`, raw: (key, value, mod revision), and the read's
    /// revision. For dumps; resources are read with [`Store::list`].
    pub async fn dump(&self, prefix: &str) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), StoreError> {
        self.range(prefix).await
    }

    /// Every key under `prefix` with value and mod revision, and the read's revision.
    pub(crate) async fn range(&self, prefix: &str) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), StoreError> {
        let mut resp = self
            .kv_call(|mut kv| async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let revision = resp.take_header().map(|h| h.revision()).unwrap_or(0);
        let items = resp.take_kvs().into_iter().map(raw_item).collect();
        Ok((items, revision))
    }

    /// Lists resources, of one kind or all, in one consistent read (at the pre-intent
    /// revision while a staged write is in progress; see `staged`).
    pub async fn list(&self, kind: Option<Kind>) -> Result<Listing, StoreError> {
        let prefix = match kind {
            Some(k) => format!("{RESOURCES_PREFIX}{}/", k.key_segment()),
            None => RESOURCES_PREFIX.to_string(),
        };
        let (items, revision) = self.read_visible(&prefix, true).await?;
        let mut listing = Listing {
            revision,
            ..Default::default()
        };
        for (key, value, rev) in items {
            listing.add(key, &value, rev);
        }
        listing.sort();
        Ok(listing)
    }

    /// One resource, as [`Store::list`] would show it.
    pub async fn get(&self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        let key = resource_key(kind, name);
        let (items, _) = self.read_visible(&key, false).await?;
        match items.into_iter().next() {
            Some((_, value, rev)) => decode_resource(&key, &value, rev).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) async fn read_one(&self, key: &str) -> Result<Current, StoreError> {
        let mut resp = self.kv_call(|mut kv| async move { kv.get(key, None).await }).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let rev = kv.mod_revision();
            (kv.into_key_value().1, rev)
        }))
    }

    /// Reads several keys, each with its mod revision. Each chunk is one transaction;
    /// chunks need not agree on a revision because the write that follows compares
    /// every key's mod revision anyway.
    pub(crate) async fn read_keys(&self, keys: &[String]) -> Result<Vec<Current>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_CHUNK) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let txn = Txn::new().and_then(ops);
            let resp = self.kv_call(|kv| kv_txn(kv, &txn)).await?;
            let responses = resp.op_responses();
            if responses.len() != chunk.len() {
                return Err(StoreError::Etcd(EtcdFailure::new(format!(
                    "a read of {} keys returned {} answers",
                    chunk.len(),
                    responses.len()
                ))));
            }
            for r in responses {
                let cur = match r {
                    TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next().map(|kv| {
                        let rev = kv.mod_revision();
                        (kv.into_key_value().1, rev)
                    }),
                    _ => {
                        return Err(StoreError::Etcd(EtcdFailure::new(
                            "a read returned something other than a range",
                        )))
                    }
                };
                out.push(cur);
            }
        }
        Ok(out)
    }
}
