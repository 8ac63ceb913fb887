//! Reading only what a change depends on: named resources and whole kinds, in one
//! consistent read, and the guard that holds exactly while they are unchanged. What an
//! apply of one resource costs then follows what it touches, not the datastore's size.

use calico_schema::Kind;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::codec::resource_key;
use crate::staged::{Intent, INTENT_KEY};
use crate::{EtcdFailure, Listing, Store, StoreError, DELETE_MARKER_KEY, RESOURCES_PREFIX};

/// Keys and kinds read past this many go to a full listing instead: a change that
/// touches that much reads about as much either way, and its guard (about one compare
/// per read) must fit one transaction beside the change's own compares (one per
/// resource) for the change to stay a single transaction.
pub const SCOPE_MAX_READS: usize = 50;

/// What a scoped read saw, as the guard of the commit that follows it.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Each key read and its mod revision then (0: absent).
    pub keys: Vec<(String, i64)>,
    /// Each kind's prefix read whole.
    pub prefixes: Vec<String>,
    /// The revision read at.
    pub revision: i64,
}

impl Scope {
    /// The compares that hold while nothing read has changed: every key at its read mod
    /// revision (still absent when it was), nothing under a whole-read prefix modified
    /// since, and, when a prefix was read, no resource deleted since (the delete marker:
    /// a deletion leaves no mod revision behind).
    pub fn compares(&self) -> Vec<Compare> {
        let after = self.revision.saturating_add(1);
        let mut out: Vec<Compare> = self
            .keys
            .iter()
            .map(|(k, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
            .collect();
        for p in &self.prefixes {
            out.push(Compare::mod_revision(p.as_str(), CompareOp::Less, after).with_prefix());
        }
        if !self.prefixes.is_empty() {
            out.push(Compare::mod_revision(DELETE_MARKER_KEY, CompareOp::Less, after));
        }
        out
    }
}

fn kind_prefix(k: Kind) -> String {
    format!("{RESOURCES_PREFIX}{}/", k.key_segment())
}

impl Store {
    /// Reads the resources named by `keys` and every resource of `kinds`, in one
    /// transaction (at the pre-intent revision while a staged write is in progress).
    /// Returns them as a listing (absent keys are simply not in it) and the scope that
    /// guards a commit decided on them. Past [`SCOPE_MAX_READS`] it lists everything
    /// and returns no scope: the commit is then guarded by the listing's revision.
    pub async fn read_scope(
        &self,
        keys: impl IntoIterator<Item = (Kind, String)>,
        kinds: impl IntoIterator<Item = Kind>,
    ) -> Result<(Listing, Option<Scope>), StoreError> {
        let kinds: Vec<Kind> = kinds.into_iter().collect();
        // A key inside a kind read whole is read with it.
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|(k, _)| !kinds.contains(k))
            .map(|(k, n)| resource_key(k, &n))
            .collect();
        if keys.len() + kinds.len() > SCOPE_MAX_READS {
            return Ok((self.list(None).await?, None));
        }
        let prefixes: Vec<String> = kinds.iter().map(|k| kind_prefix(*k)).collect();
        let (mut items, revision) = match self.scope_txn(&keys, &prefixes, None).await? {
            (_, _, Some(intent)) => {
                let pre = intent.pre_revision();
                let (items, _, _) = self.scope_txn(&keys, &prefixes, Some(pre)).await?;
                (items, pre)
            }
            (items, revision, None) => (items, revision),
        };
        let mut scope = Scope {
            keys: keys.iter().map(|k| (k.clone(), 0)).collect(),
            prefixes,
            revision,
        };
        let mut listing = Listing {
            revision,
            ..Default::default()
        };
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items.dedup_by(|a, b| a.0 == b.0);
        for (key, value, rev) in items {
            if let Some(k) = scope.keys.iter_mut().find(|(k, _)| *k == key) {
                k.1 = rev;
            }
            listing.add(key, &value, rev);
        }
        listing.sort();
        Ok((listing, Some(scope)))
    }

    /// One read of the intent, `keys` and `prefixes`, at `revision` (None: now).
    #[allow(clippy::type_complexity)]
    async fn scope_txn(
        &self,
        keys: &[String],
        prefixes: &[String],
        revision: Option<i64>,
    ) -> Result<(Vec<(String, Vec<u8>, i64)>, i64, Option<Intent>), StoreError> {
        let at = |o: GetOptions| match revision {
            Some(r) => o.with_revision(r),
            None => o,
        };
        let mut ops = vec![TxnOp::get(INTENT_KEY, None)];
        ops.extend(keys.iter().map(|k| TxnOp::get(k.as_str(), Some(at(GetOptions::new())))));
        ops.extend(
            prefixes
                .iter()
                .map(|p| TxnOp::get(p.as_str(), Some(at(GetOptions::new().with_prefix())))),
        );
        let txn = Txn::new().and_then(ops);
        let mut resp = self.kv_call(|kv| crate::client::kv_txn(kv, &txn)).await?;
        let header = resp.take_header().map(|h| h.revision()).unwrap_or(0);
        let mut intent = None;
        let mut items = Vec::new();
        for (i, r) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(mut g) = r else {
                return Err(StoreError::Etcd(EtcdFailure::new(
                    "a read returned something other than a range",
                )));
            };
            for kv in g.take_kvs() {
                if i == 0 {
                    intent = Some(Intent::from_kv(&kv));
                    continue;
                }
                items.push(crate::read::raw_item(kv));
            }
        }
        Ok((items, header, intent))
    }
}
