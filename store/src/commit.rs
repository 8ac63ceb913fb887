//! Writes: guarded multi-resource transactions (`write`, `delete`, `commit`), checked
//! against what was just read and retried when a concurrent writer got in between, and
//! the compare-and-swap read-modify-write of one resource (`update`).

use std::time::Duration;

use calico_schema::{Kind, Resource};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tracing::debug;

use crate::client::kv_txn;
use crate::codec::{decode_resource, encode_resource, id_of, resource_key};
use crate::read::Current;
use crate::staged::{fits_one_txn, no_intent, txn_op, Op, Staged};
use crate::{retry, Store, StoreError, DELETE_MARKER_KEY, RESOURCES_PREFIX};

/// How often `write`/`delete` re-read and retry when a concurrent writer changed a
/// key they did not hold a precondition on.
const WRITE_ATTEMPTS: u32 = 20;
const UPDATE_ATTEMPTS: u32 = 50;

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

/// One attempt's change: the per-key compares (what it was decided on), the writes,
/// and the outcomes it will have.
type Prepared = (Vec<Compare>, Vec<Op>, Vec<Outcome>);

impl Store {
    /// The compares of a guard revision: nothing under resources/ modified after `g`,
    /// and no resource deleted after `g` (the delete marker).
    pub(crate) fn guard_compares(guard: Option<i64>) -> Vec<Compare> {
        match guard {
            Some(g) => vec![
                Compare::mod_revision(RESOURCES_PREFIX, CompareOp::Less, g.saturating_add(1)).with_prefix(),
                Compare::mod_revision(DELETE_MARKER_KEY, CompareOp::Less, g.saturating_add(1)),
            ],
            None => Vec::new(),
        }
    }

    /// Whether a guard still holds, checked by a transaction with only its compares.
    pub(crate) async fn guard_holds(&self, guard: &[Compare]) -> Result<bool, StoreError> {
        let txn = Txn::new().when(guard.to_vec());
        let resp = self.kv_call(|kv| kv_txn(kv, &txn)).await?;
        Ok(resp.succeeded())
    }

    /// Writes a set of resources in one etcd transaction (staged above etcd's limits;
    /// see `staged`): all or nothing. Per resource,
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
        let guard = guard_revision.map(|g| Self::guard_compares(Some(g)));
        self.commit_guarded(puts, deletes, mode, guard, dry_run).await
    }

    /// [`Store::commit`] guarded by `guard`'s compares (what the caller read, e.g. a
    /// [`crate::Scope`]): `Stale` when they fail.
    pub(crate) async fn commit_guarded(
        &self,
        puts: &[Resource],
        deletes: &[(Kind, String, Option<String>)],
        mode: WriteMode,
        guard: Option<Vec<Compare>>,
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
            let prepared = Self::prepare(puts, deletes, mode, &keys, &values, &current);
            let (expected, ops, mut outcomes) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    // What was read may be a staged write's uncommitted pieces: decide
                    // again once it has committed or been rolled back.
                    if self.read_intent().await?.is_some() {
                        self.settle_intent().await?;
                        continue;
                    }
                    if let Some(g) = &guard {
                        if !self.guard_holds(g).await? {
                            return Err(StoreError::Stale);
                        }
                    }
                    return Err(e);
                }
            };
            let guard_now = guard.clone().unwrap_or_default();
            if fits_one_txn(&ops, guard_now.len() + expected.len() + 1) {
                let mut compares = guard_now;
                compares.push(no_intent());
                compares.extend(expected);
                let txn = Txn::new().when(compares).and_then(if dry_run {
                    Vec::new()
                } else {
                    ops.iter().map(txn_op).collect()
                });
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
            } else {
                let staged = self.write_staged(guard_now, &expected, &ops, dry_run).await;
                match staged.map_err(|e| txn_limit_hint(e, 1))? {
                    Staged::Done(revisions) => {
                        let changed = outcomes.iter_mut().filter(|o| o.change != Change::Unchanged);
                        for (o, rev) in changed.zip(revisions) {
                            if !dry_run {
                                o.revision = rev;
                            }
                        }
                        return Ok(outcomes);
                    }
                    Staged::Raced => {}
                }
            }
            // Something changed between the read and the transaction. A staged write
            // in progress is waited for (or rolled back when its writer is gone) first.
            // A failed guard is the caller's to handle (re-validate); anything else is
            // re-read, and the checks then report a real conflict or the retry goes through.
            self.settle_intent().await?;
            if let Some(g) = &guard {
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
    pub(crate) fn prepare(
        puts: &[Resource],
        deletes: &[(Kind, String, Option<String>)],
        mode: WriteMode,
        keys: &[String],
        values: &[Vec<u8>],
        current: &[Current],
    ) -> Result<Prepared, StoreError> {
        let mut compares = Vec::new();
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
                ops.push((key.clone(), Some(values[i].clone())));
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
            ops.push((keys[i].clone(), None));
            outcomes.push(Outcome {
                id,
                change: Change::Deleted,
                revision: actual,
            });
        }
        if !deletes.is_empty() {
            ops.push((DELETE_MARKER_KEY.to_string(), Some(Vec::new())));
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
                .when(vec![
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
                    no_intent(),
                ])
                .and_then(vec![TxnOp::put(key.as_str(), encode_resource(&r), None)]);
            let mut resp = self.kv_call(|kv| kv_txn(kv, &txn)).await?;
            if !resp.succeeded() {
                self.settle_intent().await?;
            }
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
    let what = if items == 1 {
        "a resource too large for one transaction".to_string()
    } else {
        format!("{items} resources in one transaction")
    };
    match e {
        StoreError::Etcd(f) if f.contains("too many operations") => {
            StoreError::Etcd(f.noted(&format!("{what}; raise etcd's --max-txn-ops")))
        }
        StoreError::Etcd(f) if f.contains("request is too large") => {
            StoreError::Etcd(f.noted(&format!("{what}; raise etcd's --max-request-bytes")))
        }
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

/// The longest pause between two attempts of a resource write that lost a race.
const WRITE_BACKOFF_CAP: Duration = Duration::from_millis(200);

async fn backoff(attempt: u32) {
    retry::backoff(attempt, WRITE_BACKOFF_CAP).await;
}
