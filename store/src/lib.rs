//! calico-docker's datastore: etcd, through etcd-client.
//!
//! Key layout (all under `/calico/v1/`):
//! - `resources/<kind-segment>/<name>`: one resource, JSON, without resourceVersion
//!   (the resourceVersion users see is the key's etcd mod revision);
//! - `status/containers/<name>`: a Container's observed state (written by its node's agent);
//! - `status/nodes/<name>`: an agent's own status;
//! - `ipam/...`: address management (see `ipam`);
//! - `sync/<id>/status`: a GitOps sync's last result;
//! - `meta/resources-deleted`: touched by every resource delete, so that a guarded write
//!   notices deletions too (a deleted key leaves no mod revision behind to compare).
//!
//! Writes of several resources are one etcd transaction, guarded so that what was
//! validated is still what is stored when the write lands.

// Product code handles every failure; panics are for tests (and test support).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
pub mod election;
mod error;
pub mod ipam;
mod retry;
pub mod testing;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use calico_schema::{Kind, Resource};
use etcd_client::{Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use retry::{MAX_DECODE, READ_CHUNK};
use tracing::{debug, warn};

pub use config::{StoreConfig, TlsFiles, DEFAULT_TIMEOUT};
pub use error::{EtcdFailure, StoreError};
pub use watch::{WatchEvent, WatchStream};

pub const PREFIX: &str = "/calico/v1/";
pub const RESOURCES_PREFIX: &str = "/calico/v1/resources/";
pub const STATUS_PREFIX: &str = "/calico/v1/status/";
pub const IPAM_PREFIX: &str = "/calico/v1/ipam/";
/// Written in the same transaction as every resource delete; see the module docs.
pub const DELETE_MARKER_KEY: &str = "/calico/v1/meta/resources-deleted";

/// How often `write`/`delete` re-read and retry when a concurrent writer changed a
/// key they did not hold a precondition on.
const WRITE_ATTEMPTS: u32 = 20;
const UPDATE_ATTEMPTS: u32 = 50;

/// The etcd key of a resource.
pub fn resource_key(kind: Kind, name: &str) -> String {
    format!("{RESOURCES_PREFIX}{}/{name}", kind.key_segment())
}

fn id_of(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Decodes a stored resource, checking it is stored under its own key, with
/// resourceVersion set to the key's mod revision.
pub fn decode_resource(key: &str, value: &[u8], mod_revision: i64) -> Result<Resource, StoreError> {
    let invalid = |detail: String| StoreError::Invalid {
        key: key.to_string(),
        detail,
    };
    let v: serde_json::Value = serde_json::from_slice(value).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let mut r = Resource::from_json(v).map_err(|(path, msg)| {
        if path.is_empty() || path == "." {
            invalid(msg)
        } else {
            invalid(format!("{path}: {msg}"))
        }
    })?;
    let expected = resource_key(r.kind(), r.name());
    if expected != key {
        // A value copied to the wrong key would otherwise shadow or duplicate the real one.
        return Err(invalid(format!("holds {} whose key would be {expected}", r.id())));
    }
    r.metadata_mut().resource_version = Some(mod_revision.to_string());
    Ok(r)
}

/// The bytes stored for a resource: its JSON without resourceVersion, which lives in
/// etcd's mod revision instead.
fn encode_resource(r: &Resource) -> Vec<u8> {
    // Serializing a serde_json::Value cannot fail.
    serde_json::to_vec(&r.without_version().to_json()).unwrap_or_default()
}

/// How a resource write or delete ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create or update.
    Apply,
    /// Must not exist yet.
    Create,
    /// Must exist already.
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

/// What happened to one resource.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `Kind/name`.
    pub id: String,
    pub change: Change,
    /// The revision the change was written at; for `Unchanged`, the key's mod revision;
    /// for a dry run, the revision the checks ran against.
    pub revision: i64,
}

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

/// A handle on etcd. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    kv: KvClient,
    pub(crate) cfg: StoreConfig,
    endpoints: String,
}

/// One stored key: value and mod revision.
type Current = Option<(Vec<u8>, i64)>;

/// One attempt's transaction: compares, operations, and the outcomes it will have.
type Prepared = (Vec<Compare>, Vec<TxnOp>, Vec<Outcome>);

impl Store {
    /// Connects and proves etcd answers. Fails with `Unavailable`, naming all endpoints,
    /// within `cfg.timeout` when none does.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let endpoints = cfg.endpoints_text();
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Unavailable {
                endpoints,
                detail: "no etcd endpoints were given".into(),
            });
        }
        let deadline = tokio::time::Instant::now() + cfg.timeout;
        let options = cfg.connect_options()?;

        // etcd-client connects lazily and its balancer can wait (rather than fail) while no
        // endpoint is up, so a down etcd might only show as a timeout. A plain TCP connect
        // first turns "connection refused" into an immediate, precise error.
        reachable(cfg, deadline).await?;

        let connect = Client::connect(cfg.urls(), Some(options));
        let client = match tokio::time::timeout_at(deadline, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(error::from_etcd(&endpoints, e)),
            Err(_) => return Err(error::timed_out(&endpoints, cfg.timeout)),
        };
        let kv = client.kv_client().max_decoding_message_size(MAX_DECODE);
        let store = Store {
            inner: Arc::new(Inner {
                client,
                kv,
                cfg: cfg.clone(),
                endpoints,
            }),
        };

        // One read proves etcd serves requests (TLS accepted, quorum present), not just
        // that a port is open.
        let probe =
            store.kv_call(|mut kv| async move { kv.get(PREFIX, Some(GetOptions::new().with_count_only())).await });
        match tokio::time::timeout_at(deadline, probe).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(error::timed_out(&store.inner.endpoints, cfg.timeout)),
        }
    }

    /// A clone of the etcd client, for code that needs etcd directly (IPAM).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    fn kv(&self) -> KvClient {
        self.inner.kv.clone()
    }

    /// Runs one etcd call bounded by the configured timeout. etcd-client's own timeout
    /// only starts once a connection is picked; while every endpoint is down its balancer
    /// can wait indefinitely, so this outer bound is what guarantees nothing hangs.
    pub(crate) async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match retry::call(self.inner.cfg.timeout, attempt).await {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(error::from_etcd(&self.inner.endpoints, e)),
            None => Err(error::timed_out(&self.inner.endpoints, self.inner.cfg.timeout)),
        }
    }

    /// [`Store::call`] with a fresh KV client per attempt.
    pub(crate) async fn kv_call<T, F, Fut>(&self, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(|| f(self.kv())).await
    }

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
        let items = resp
            .take_kvs()
            .into_iter()
            .map(|kv| {
                let rev = kv.mod_revision();
                let (k, v) = kv.into_key_value();
                (String::from_utf8_lossy(&k).into_owned(), v, rev)
            })
            .collect();
        Ok((items, revision))
    }

    /// Lists resources, of one kind or all, in one consistent read.
    pub async fn list(&self, kind: Option<Kind>) -> Result<Listing, StoreError> {
        let prefix = match kind {
            Some(k) => format!("{RESOURCES_PREFIX}{}/", k.key_segment()),
            None => RESOURCES_PREFIX.to_string(),
        };
        let (items, revision) = self.range(&prefix).await?;
        let mut listing = Listing {
            revision,
            ..Default::default()
        };
        for (key, value, rev) in items {
            match decode_resource(&key, &value, rev) {
                Ok(r) => listing.resources.push(r),
                Err(e) => {
                    warn!(%key, error = %e, "undecodable resource in etcd");
                    let detail = match e {
                        StoreError::Invalid { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    listing.invalid.push((key, detail));
                }
            }
        }
        listing
            .resources
            .sort_by(|a, b| (a.kind().rank(), a.name()).cmp(&(b.kind().rank(), b.name())));
        Ok(listing)
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        let key = resource_key(kind, name);
        match self.read_one(&key).await? {
            Some((value, rev)) => decode_resource(&key, &value, rev).map(Some),
            None => Ok(None),
        }
    }

    async fn read_one(&self, key: &str) -> Result<Current, StoreError> {
        let mut resp = self.kv_call(|mut kv| async move { kv.get(key, None).await }).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let rev = kv.mod_revision();
            (kv.into_key_value().1, rev)
        }))
    }

    /// Reads several keys, each with its mod revision. Each chunk is one transaction;
    /// chunks need not agree on a revision because the write that follows compares
    /// every key's mod revision anyway.
    async fn read_keys(&self, keys: &[String]) -> Result<Vec<Current>, StoreError> {
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

    /// The compares of a guard revision: nothing under resources/ modified after `g`,
    /// and no resource deleted after `g` (the delete marker).
    fn guard_compares(guard: Option<i64>) -> Vec<Compare> {
        match guard {
            Some(g) => vec![
                Compare::mod_revision(RESOURCES_PREFIX, CompareOp::Less, g.saturating_add(1)).with_prefix(),
                Compare::mod_revision(DELETE_MARKER_KEY, CompareOp::Less, g.saturating_add(1)),
            ],
            None => Vec::new(),
        }
    }

    /// Whether a guard still holds, checked by a transaction with only its compares.
    async fn guard_holds(&self, guard: i64) -> Result<bool, StoreError> {
        let txn = Txn::new().when(Self::guard_compares(Some(guard)));
        let resp = self.kv_call(|kv| kv_txn(kv, &txn)).await?;
        Ok(resp.succeeded())
    }

    /// Writes a set of resources in one etcd transaction: all or nothing. Per resource,
    /// `Apply` creates or updates, `Create` requires it to be absent, `Replace` requires
    /// it to exist (both `Conflict` otherwise). A non-empty `metadata.resourceVersion` is a compare-and-swap on the
    /// key's mod revision. `guard_revision` makes the write fail with `Stale` if any
    /// resource changed (or was deleted) after that revision. Resources whose stored
    /// content is already equal are not written (`Unchanged`, no revision bump).
    /// `dry_run` runs every check, including the transaction's compares, and writes nothing.
    pub async fn write(
        &self,
        set: &[Resource],
        mode: WriteMode,
        guard_revision: Option<i64>,
        dry_run: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.commit(set, &[], mode, guard_revision, dry_run).await
    }

    /// Deletes resources in one transaction. Each item is (kind, name, optional
    /// resourceVersion precondition). A missing one is `NotFound` and nothing is deleted.
    pub async fn delete(
        &self,
        items: &[(Kind, String, Option<String>)],
        guard_revision: Option<i64>,
        dry_run: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.commit(&[], items, WriteMode::Apply, guard_revision, dry_run).await
    }

    /// Writes `puts` and deletes `deletes` in one etcd transaction: all or nothing, with
    /// the semantics of [`Store::write`] for the puts (`mode` applies to every one) and of
    /// [`Store::delete`] for the deletes (a missing one is `NotFound`; the delete marker is
    /// touched when there is any). A resource may appear only once across both lists.
    /// Outcomes are the puts' then the deletes', in order. When a precondition fails and
    /// `guard_revision` no longer holds either, the result is `Stale`: what failed was
    /// decided against a state the caller has to re-read anyway.
    pub async fn commit(
        &self,
        puts: &[Resource],
        deletes: &[(Kind, String, Option<String>)],
        mode: WriteMode,
        guard_revision: Option<i64>,
        dry_run: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        if puts.is_empty() && deletes.is_empty() {
            return Ok(Vec::new());
        }
        let put_keys = puts.iter().map(|r| resource_key(r.kind(), r.name()));
        let delete_keys = deletes.iter().map(|(k, n, _)| resource_key(*k, n));
        let keys: Vec<String> = put_keys.chain(delete_keys).collect();
        let ids = puts
            .iter()
            .map(Resource::id)
            .chain(deletes.iter().map(|(k, n, _)| id_of(*k, n)));
        check_duplicates(keys.iter().zip(ids))?;
        for (key, r) in keys.iter().zip(puts) {
            // Schema validation rejects such names already; this keeps a bypass of it
            // from writing a key that another resource's key would contain.
            if r.name().is_empty() || r.name().contains('/') {
                return Err(StoreError::Invalid {
                    key: key.clone(),
                    detail: format!("resource name {:?} is empty or contains '/'", r.name()),
                });
            }
        }
        let values: Vec<Vec<u8>> = puts.iter().map(encode_resource).collect();

        for attempt in 0..WRITE_ATTEMPTS {
            let current = self.read_keys(&keys).await?;
            let prepared = Self::prepare(puts, deletes, mode, guard_revision, &keys, &values, &current);
            let (compares, ops, mut outcomes) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    if let Some(g) = guard_revision {
                        if !self.guard_holds(g).await? {
                            return Err(StoreError::Stale);
                        }
                    }
                    return Err(e);
                }
            };
            let txn = Txn::new()
                .when(compares)
                .and_then(if dry_run { Vec::new() } else { ops });
            let mut resp = self
                .kv_call(|kv| kv_txn(kv, &txn))
                .await
                .map_err(|e| txn_limit_hint(e, keys.len()))?;
            if resp.succeeded() {
                let revision = resp.take_header().map(|h| h.revision()).unwrap_or(0);
                for o in outcomes.iter_mut().filter(|o| o.change != Change::Unchanged) {
                    o.revision = revision;
                }
                return Ok(outcomes);
            }
            // Something changed between the read and the transaction. A failed guard is
            // the caller's to handle (re-validate); anything else is re-read, and the
            // checks then report a real conflict or the retry goes through.
            if let Some(g) = guard_revision {
                if !self.guard_holds(g).await? {
                    return Err(StoreError::Stale);
                }
            }
            debug!(attempt, "resource write raced with another writer; re-reading");
            backoff(attempt).await;
        }
        let first = match (puts.first(), deletes.first()) {
            (Some(r), _) => r.id(),
            (None, Some((k, n, _))) => id_of(*k, n),
            (None, None) => unreachable!("an empty commit returns early"),
        };
        Err(StoreError::Conflict {
            id: first,
            detail: format!("the stored resources kept changing; gave up after {WRITE_ATTEMPTS} attempts"),
        })
    }

    /// The transaction of one `commit` attempt, checked against `current` (what was
    /// just read of `keys`: the puts' keys, then the deletes'): its compares, its
    /// operations, and the outcomes it will have.
    fn prepare(
        puts: &[Resource],
        deletes: &[(Kind, String, Option<String>)],
        mode: WriteMode,
        guard_revision: Option<i64>,
        keys: &[String],
        values: &[Vec<u8>],
        current: &[Current],
    ) -> Result<Prepared, StoreError> {
        let mut compares = Self::guard_compares(guard_revision);
        let mut ops = Vec::new();
        let mut outcomes = Vec::with_capacity(keys.len());
        for (i, r) in puts.iter().enumerate() {
            let id = r.id();
            let key = &keys[i];
            let actual = current[i].as_ref().map_or(0, |c| c.1);
            check_version(&id, r.metadata().resource_version.as_deref(), actual)?;
            match (mode, &current[i]) {
                (WriteMode::Create, Some((_, rev))) => {
                    return Err(StoreError::Conflict {
                        id,
                        detail: format!("it already exists (resourceVersion {rev})"),
                    });
                }
                (WriteMode::Replace, None) => {
                    return Err(StoreError::Conflict {
                        id,
                        detail: "it does not exist".into(),
                    });
                }
                _ => {}
            }
            // Compare every key against what was just read, even unchanged ones: the
            // decision "unchanged" and the checks above hold only for that content.
            compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, actual));
            let unchanged = current[i].as_ref().is_some_and(|(v, rev)| {
                decode_resource(key, v, *rev).is_ok_and(|stored| stored.without_version() == r.without_version())
            });
            let change = match (&current[i], unchanged) {
                (_, true) => Change::Unchanged,
                (Some(_), false) => Change::Updated,
                (None, false) => Change::Created,
            };
            if change != Change::Unchanged {
                ops.push(TxnOp::put(key.as_str(), values[i].clone(), None));
            }
            outcomes.push(Outcome {
                id,
                change,
                revision: actual,
            });
        }
        for (j, (kind, name, rv)) in deletes.iter().enumerate() {
            let i = puts.len() + j;
            let id = id_of(*kind, name);
            let Some((_, actual)) = current[i] else {
                return Err(StoreError::NotFound { id });
            };
            check_version(&id, rv.as_deref(), actual)?;
            compares.push(Compare::mod_revision(keys[i].as_str(), CompareOp::Equal, actual));
            ops.push(TxnOp::delete(keys[i].as_str(), None));
            outcomes.push(Outcome {
                id,
                change: Change::Deleted,
                revision: actual,
            });
        }
        if !deletes.is_empty() {
            ops.push(TxnOp::put(DELETE_MARKER_KEY, Vec::new(), None));
        }
        Ok((compares, ops, outcomes))
    }

    /// Read-modify-write of one resource, compare-and-swap on its mod revision, retried
    /// with jittered backoff when someone else wrote in between (up to 50 tries).
    /// `f` returns Ok(true) when it changed the resource, Ok(false) for no change (nothing
    /// is written), Err(msg) to abort (returned as `Conflict { id, detail: msg }`).
    /// `f` may run several times, each time on a fresh read.
    pub async fn update<F>(&self, kind: Kind, name: &str, mut f: F) -> Result<Outcome, StoreError>
    where
        F: FnMut(&mut Resource) -> Result<bool, String> + Send,
    {
        let key = resource_key(kind, name);
        let id = id_of(kind, name);
        for attempt in 0..UPDATE_ATTEMPTS {
            let Some((value, rev)) = self.read_one(&key).await? else {
                return Err(StoreError::NotFound { id });
            };
            let mut r = decode_resource(&key, &value, rev)?;
            let before = r.without_version();
            match f(&mut r) {
                Err(detail) => return Err(StoreError::Conflict { id, detail }),
                Ok(false) => {
                    return Ok(Outcome {
                        id,
                        change: Change::Unchanged,
                        revision: rev,
                    })
                }
                Ok(true) => {}
            }
            if r.kind() != kind || r.name() != name {
                return Err(StoreError::Conflict {
                    id,
                    detail: format!("an update may not rename it to {}", r.id()),
                });
            }
            if r.without_version() == before {
                return Ok(Outcome {
                    id,
                    change: Change::Unchanged,
                    revision: rev,
                });
            }
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                .and_then(vec![TxnOp::put(key.as_str(), encode_resource(&r), None)]);
            let mut resp = self.kv_call(|kv| kv_txn(kv, &txn)).await?;
            if resp.succeeded() {
                let revision = resp.take_header().map(|h| h.revision()).unwrap_or(0);
                return Ok(Outcome {
                    id,
                    change: Change::Updated,
                    revision,
                });
            }
            debug!(%id, attempt, "update raced with another writer; retrying");
            backoff(attempt).await;
        }
        Err(StoreError::Conflict {
            id,
            detail: format!("still contended after {UPDATE_ATTEMPTS} attempts"),
        })
    }

    fn json_key(suffix: &str) -> String {
        format!("{PREFIX}{suffix}")
    }

    /// Stores a plain JSON value at `/calico/v1/<suffix>` (status, sync state; not
    /// resources). Returns the revision of the write.
    pub async fn put_json<T: serde::Serialize + Sync>(&self, suffix: &str, value: &T) -> Result<i64, StoreError> {
        let key = Self::json_key(suffix);
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Invalid {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        let mut resp = self
            .kv_call(|mut kv| {
                let (key, bytes) = (key.clone(), bytes.clone());
                async move { kv.put(key, bytes, None).await }
            })
            .await?;
        Ok(resp.take_header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Reads the JSON value at `/calico/v1/<suffix>`; `Invalid` when it does not decode.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, suffix: &str) -> Result<Option<T>, StoreError> {
        let key = Self::json_key(suffix);
        match self.read_one(&key).await? {
            None => Ok(None),
            Some((value, _)) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| StoreError::Invalid {
                    key,
                    detail: e.to_string(),
                }),
        }
    }

    /// Every JSON value under `/calico/v1/<suffix_prefix>`, sorted by key. Each comes with
    /// its key suffix (the key without `/calico/v1/`, as `get_json` takes it) and its own
    /// decode result, so one bad value does not hide the others.
    pub async fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        suffix_prefix: &str,
    ) -> Result<Vec<(String, Result<T, String>)>, StoreError> {
        let (items, _) = self.range(&Self::json_key(suffix_prefix)).await?;
        Ok(items
            .into_iter()
            .map(|(key, value, _)| {
                let suffix = key.strip_prefix(PREFIX).unwrap_or(&key).to_string();
                (suffix, serde_json::from_slice(&value).map_err(|e| e.to_string()))
            })
            .collect())
    }

    /// Deletes the value at `/calico/v1/<suffix>`; deleting a missing one is not an error.
    pub async fn delete_json(&self, suffix: &str) -> Result<(), StoreError> {
        let key = Self::json_key(suffix);
        self.kv_call(|mut kv| {
            let key = key.clone();
            async move { kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// Watches every key under `prefix` (a full key prefix such as `RESOURCES_PREFIX`)
    /// from `from_revision` (0: start with a `Resync` of the current state). See
    /// [`WatchStream`]. Must be called within a tokio runtime.
    pub fn watch(&self, prefix: &str, from_revision: i64) -> WatchStream {
        watch::start(self.clone(), prefix.to_string(), from_revision)
    }
}

/// Fails when the same resource appears twice: etcd rejects a transaction that writes
/// one key twice, and which of two versions should win is the user's decision.
fn check_duplicates<'a>(pairs: impl Iterator<Item = (&'a String, String)>) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    for (key, id) in pairs {
        if !seen.insert(key) {
            return Err(StoreError::Conflict {
                id,
                detail: "it appears more than once in the same request".into(),
            });
        }
    }
    Ok(())
}

/// etcd's default limits (128 operations, 1.5 MiB per request) are easy to reach with one
/// transaction per applied directory; say which setting to raise.
fn txn_limit_hint(e: StoreError, items: usize) -> StoreError {
    match e {
        StoreError::Etcd(f) if f.contains("too many operations") => StoreError::Etcd(f.noted(&format!(
            "{items} resources in one transaction; raise etcd's --max-txn-ops"
        ))),
        StoreError::Etcd(f) if f.contains("request is too large") => StoreError::Etcd(f.noted(&format!(
            "{items} resources in one transaction; raise etcd's --max-request-bytes"
        ))),
        other => other,
    }
}

/// A given, non-empty resourceVersion must equal the stored mod revision (0 = absent).
fn check_version(id: &str, given: Option<&str>, actual: i64) -> Result<(), StoreError> {
    let Some(rv) = given.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    if rv.parse::<i64>().ok() == Some(actual) {
        return Ok(());
    }
    let now = if actual == 0 {
        "it does not exist".to_string()
    } else {
        format!("it is at {actual}")
    };
    Err(StoreError::Conflict {
        id: id.to_string(),
        detail: format!("resourceVersion {rv} was expected but {now}; re-read it and retry"),
    })
}

/// One transaction attempt (the transaction is cloned: a retried attempt sends it anew).
fn kv_txn(
    mut kv: KvClient,
    txn: &Txn,
) -> impl Future<Output = Result<etcd_client::TxnResponse, etcd_client::Error>> + use<> {
    let txn = txn.clone();
    async move { kv.txn(txn).await }
}

/// The longest pause between two attempts of a resource write that lost a race.
const WRITE_BACKOFF_CAP: Duration = Duration::from_millis(200);

async fn backoff(attempt: u32) {
    retry::backoff(attempt, WRITE_BACKOFF_CAP).await;
}

/// Checks a TCP connection to some endpoint can be opened, trying all concurrently.
/// Succeeds as soon as one connects; fails with every endpoint's reason when none does.
async fn reachable(cfg: &StoreConfig, deadline: tokio::time::Instant) -> Result<(), StoreError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut attempts: FuturesUnordered<_> = cfg
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| async move {
            let hp = config::host_port(e);
            match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(hp)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err((i, format!("{hp}: {err}"))),
                Err(_) => Err((
                    i,
                    format!("{hp}: no TCP connection within {}", error::human(cfg.timeout)),
                )),
            }
        })
        .collect();
    let mut reasons = Vec::new();
    while let Some(r) = attempts.next().await {
        match r {
            Ok(()) => return Ok(()),
            Err(reason) => reasons.push(reason),
        }
    }
    // In the order the user gave the endpoints, not the order they failed in.
    reasons.sort();
    let reasons: Vec<String> = reasons.into_iter().map(|(_, r)| r).collect();
    Err(StoreError::Unavailable {
        endpoints: cfg.endpoints_text(),
        detail: reasons.join("; "),
    })
}
