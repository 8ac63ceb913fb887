//! All-or-nothing resource writes larger than one etcd transaction (etcd's defaults
//! allow 128 operations and 1.5 MiB per request).
//!
//! A change set that fits one transaction is one transaction. A larger one is staged:
//!
//! 1. The writer grants a lease and, in one transaction that compares the intent key
//!    absent (and the caller's guard), creates the intent key [`INTENT_KEY`] and a
//!    heartbeat key bound to the lease (kept alive while the writer lives). The
//!    intent's create revision minus one is the *pre-intent revision*: the state every
//!    reader keeps seeing until the change is complete.
//! 2. It checks, in chunks, that every key it read still has the mod revision it read
//!    (nobody else can write resources/ once the intent exists, so this proves nothing
//!    changed between its read and the intent).
//! 3. It writes the change in pieces of at most [`PIECE_OPS`] operations and
//!    [`PIECE_BYTES`] bytes, each comparing the intent (its mod revision) and the
//!    heartbeat (alive).
//! 4. The last transaction deletes the intent and the heartbeat: the commit point.
//!
//! Every resource writer compares the intent absent, so while it exists only its owner
//! writes under resources/. Readers ([`Store::list`], [`Store::get`], the watch's
//! re-list) that see an intent read at the pre-intent revision (etcd MVCC). The watch of
//! resources/ drops events between the intent's creation and its deletion and then
//! re-lists, so a watcher gets the whole change as one `Resync`, never half of it.
//!
//! An intent whose heartbeat is gone (the writer died; its lease expired) is rolled back
//! by the next writer that meets it, or by the master: every key under resources/ that
//! differs from the pre-intent revision is restored to it (or deleted), in pieces, and
//! the intent is deleted last. Until then readers still see the pre-intent state.
//!
//! The pre-intent revision must not be compacted while an intent lives; nothing here
//! compacts, and an operator compaction during a staged write makes its rollback fail
//! with an error naming the revision (the intent then stays, and readers keep failing
//! to read at it, rather than seeing half a change).

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::client::kv_txn;
use crate::{EtcdFailure, Store, StoreError, DELETE_MARKER_KEY, RESOURCES_PREFIX};

/// The intent of a staged write in progress. Under resources/ so that one watch of
/// resources/ sees it in order with the pieces; every resource read skips it.
pub const INTENT_KEY: &str = "/calico/v1/resources/.intent";
/// Heartbeat keys of staged writers, each bound to its writer's lease.
pub const HEARTBEAT_PREFIX: &str = "/calico/v1/txn/heartbeat/";
/// Operations per transaction: under etcd's default --max-txn-ops (128), with room for
/// the compares a transaction carries besides.
pub const PIECE_OPS: usize = 120;
/// Bytes of keys and values per transaction: under etcd's default --max-request-bytes
/// (1.5 MiB), with room for the request's framing.
pub const PIECE_BYTES: usize = 1024 * 1024;
/// How long a dead writer's intent blocks others before it can be rolled back.
const LEASE_TTL_SECS: i64 = 5;
/// How long a writer waits for another's live staged write to finish.
const WAIT_FOR_INTENT: Duration = Duration::from_secs(300);
/// Test hook: a staged writer stops (sleeps) after this many pieces, so a test can kill
/// it mid-write.
pub const PAUSE_ENV: &str = "CALICO_STORE_TEST_PAUSE_AFTER_PIECES";

/// One write of a staged change: a put (`Some(value)`) or a delete (`None`).
pub(crate) type Op = (String, Option<Vec<u8>>);

/// The intent's value: who writes, and where its heartbeat is (for diagnosis and for
/// the staleness check).
#[derive(Debug, Serialize, Deserialize)]
struct IntentDoc {
    writer: String,
    heartbeat: String,
    writes: usize,
}

/// An intent as read.
#[derive(Debug)]
pub(crate) struct Intent {
    create_revision: i64,
    mod_revision: i64,
    doc: Option<IntentDoc>,
}

impl Intent {
    pub(crate) fn from_kv(kv: &etcd_client::KeyValue) -> Intent {
        Intent {
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            doc: serde_json::from_slice(kv.value()).ok(),
        }
    }

    /// The revision readers see while the intent exists.
    pub(crate) fn pre_revision(&self) -> i64 {
        self.create_revision - 1
    }
}

/// The compare every resource writer carries: no staged write in progress.
pub(crate) fn no_intent() -> Compare {
    Compare::version(INTENT_KEY, CompareOp::Equal, 0)
}

fn etcd_failure(text: impl Into<String>) -> StoreError {
    StoreError::Etcd(EtcdFailure::new(text))
}

fn kvs_of(resp: TxnOpResponse) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
    match resp {
        TxnOpResponse::Get(mut g) => Ok(g.take_kvs()),
        _ => Err(etcd_failure("a read returned something other than a range")),
    }
}

fn header_revision(resp: &mut TxnResponse) -> i64 {
    resp.take_header().map(|h| h.revision()).unwrap_or(0)
}

/// Splits `ops` into transactions within etcd's default limits, in order.
pub(crate) fn pieces(ops: &[Op]) -> Vec<&[Op]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (k, v)) in ops.iter().enumerate() {
        let size = k.len() + v.as_ref().map_or(0, Vec::len);
        if i > start && (i - start >= PIECE_OPS || bytes + size > PIECE_BYTES) {
            out.push(&ops[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < ops.len() {
        out.push(&ops[start..]);
    }
    out
}

/// Whether `ops` (plus `compares` compares) fit one transaction at etcd's defaults.
pub(crate) fn fits_one_txn(ops: &[Op], compares: usize) -> bool {
    let bytes: usize = ops.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
    ops.len() <= PIECE_OPS && compares <= PIECE_OPS && bytes <= PIECE_BYTES
}

pub(crate) fn txn_op(op: &Op) -> TxnOp {
    match op {
        (k, Some(v)) => TxnOp::put(k.as_str(), v.clone(), None),
        (k, None) => TxnOp::delete(k.as_str(), None),
    }
}

/// A lease kept alive by a background task until dropped (then it expires within its
/// TTL, or is revoked at once by [`Lease::revoke`]).
struct Lease {
    id: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// How a staged write ended when it did not commit.
pub(crate) enum Staged {
    /// Committed; the revision of each op, in order, and the commit revision.
    Done(Vec<i64>),
    /// The intent could not be created or a key changed before it: re-read and retry
    /// (nothing was written).
    Raced,
}

impl Store {
    async fn grant_lease(&self) -> Result<Lease, StoreError> {
        let lc = self.inner.client.lease_client();
        let grant = self
            .call(|| {
                let mut lc = lc.clone();
                async move { lc.grant(LEASE_TTL_SECS, None).await }
            })
            .await?;
        let id = grant.id();
        let mut lc = lc.clone();
        let keeper = tokio::spawn(async move {
            let Ok((mut keeper, mut stream)) = lc.keep_alive(id).await else {
                warn!(lease = id, "cannot keep the staged write's lease alive");
                return;
            };
            loop {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                if keeper.keep_alive().await.is_err() || !matches!(stream.message().await, Ok(Some(_))) {
                    warn!(lease = id, "the staged write's lease keep-alive stopped");
                    return;
                }
            }
        });
        Ok(Lease { id, keeper })
    }

    async fn revoke(&self, lease: Lease) {
        let mut lc = self.inner.client.lease_client();
        // Best effort: an unrevoked lease expires within its TTL anyway.
        let _ = tokio::time::timeout(self.inner.cfg.timeout, lc.revoke(lease.id)).await;
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.kv_call(|kv| kv_txn(kv, &txn)).await
    }

    /// The intent, if a staged write is in progress.
    pub(crate) async fn read_intent(&self) -> Result<Option<Intent>, StoreError> {
        let mut resp = self
            .kv_call(|mut kv| async move { kv.get(INTENT_KEY, None).await })
            .await?;
        Ok(resp.take_kvs().first().map(Intent::from_kv))
    }

    /// Reads the keys under `prefix` (or one key, `prefix == false`) as readers must see
    /// them: at the pre-intent revision while a staged write is in progress. Returns
    /// `(key, value, mod revision)` without the intent key, and the revision read at.
    pub(crate) async fn read_visible(
        &self,
        key: &str,
        prefix: bool,
    ) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), StoreError> {
        let opts = || prefix.then(|| GetOptions::new().with_prefix());
        let txn = Txn::new().and_then(vec![TxnOp::get(INTENT_KEY, None), TxnOp::get(key, opts())]);
        let mut resp = self.txn(txn).await?;
        let mut revision = header_revision(&mut resp);
        let mut answers = resp.op_responses().into_iter();
        let (Some(intent), Some(range)) = (answers.next(), answers.next()) else {
            return Err(etcd_failure("a read of two ranges returned fewer answers"));
        };
        let intent = kvs_of(intent)?.first().map(Intent::from_kv);
        let mut kvs = kvs_of(range)?;
        if let Some(intent) = intent {
            let pre = intent.pre_revision();
            debug!(pre, "a staged write is in progress; reading at its pre-intent revision");
            let o = opts().unwrap_or_default().with_revision(pre);
            let mut resp = self
                .kv_call(|mut kv| {
                    let o = o.clone();
                    async move { kv.get(key, Some(o)).await }
                })
                .await
                .map_err(|e| during(e, &format!("reading at the pre-intent revision {pre}")))?;
            kvs = resp.take_kvs();
            revision = pre;
        }
        let items = kvs
            .into_iter()
            .filter(|kv| kv.key() != INTENT_KEY.as_bytes())
            .map(crate::read::raw_item)
            .collect();
        Ok((items, revision))
    }

    /// Waits until no staged write is in progress: returns at once when there is none,
    /// rolls back one whose writer is gone, and waits (up to five minutes) for a live one.
    pub(crate) async fn settle_intent(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_INTENT;
        loop {
            let Some(intent) = self.read_intent().await? else {
                return Ok(());
            };
            if !self.intent_alive(&intent).await? {
                self.roll_back(&intent).await?;
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                let writer = intent.doc.as_ref().map_or("?", |d| d.writer.as_str());
                return Err(etcd_failure(format!(
                    "a staged write by {writer} ({INTENT_KEY}) is still in progress after {}s",
                    WAIT_FOR_INTENT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rolls back a staged write whose writer is gone (the master calls this on each
    /// pass). Returns whether there was one to roll back.
    pub async fn clear_stale_intent(&self) -> Result<bool, StoreError> {
        let Some(intent) = self.read_intent().await? else {
            return Ok(false);
        };
        if self.intent_alive(&intent).await? {
            return Ok(false);
        }
        self.roll_back(&intent).await?;
        Ok(true)
    }

    async fn intent_alive(&self, intent: &Intent) -> Result<bool, StoreError> {
        // An intent that does not decode has no heartbeat to wait for.
        let Some(doc) = &intent.doc else { return Ok(false) };
        let hb = doc.heartbeat.clone();
        let resp = self
            .kv_call(|mut kv| {
                let hb = hb.clone();
                async move { kv.get(hb, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(resp.count() > 0)
    }

    /// Restores every key under resources/ to the intent's pre-intent revision, in
    /// pieces guarded by the intent being unchanged, then deletes the intent.
    async fn roll_back(&self, intent: &Intent) -> Result<(), StoreError> {
        let pre = intent.pre_revision();
        let o = GetOptions::new().with_prefix().with_revision(pre);
        let mut before = self
            .kv_call(|mut kv| {
                let o = o.clone();
                async move { kv.get(RESOURCES_PREFIX, Some(o)).await }
            })
            .await
            .map_err(|e| {
                during(
                    e,
                    &format!("rolling back the staged write at {INTENT_KEY} to revision {pre}"),
                )
            })?;
        let before: HashMap<Vec<u8>, Vec<u8>> = before
            .take_kvs()
            .into_iter()
            .map(etcd_client::KeyValue::into_key_value)
            .collect();
        let (now, _) = self.range(RESOURCES_PREFIX).await?;
        let mut ops: Vec<Op> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (key, _, rev) in &now {
            if key == INTENT_KEY {
                continue;
            }
            seen.insert(key.as_bytes().to_vec());
            if *rev > pre {
                match before.get(key.as_bytes()) {
                    Some(v) => ops.push((key.clone(), Some(v.clone()))),
                    None => ops.push((key.clone(), None)),
                }
            }
        }
        for (k, v) in &before {
            if !seen.contains(k) {
                ops.push((String::from_utf8_lossy(k).into_owned(), Some(v.clone())));
            }
        }
        let writer = intent.doc.as_ref().map_or("?", |d| d.writer.as_str());
        info!(
            writer,
            pre,
            keys = ops.len(),
            "rolling back a staged write whose writer is gone"
        );
        let guard = || Compare::mod_revision(INTENT_KEY, CompareOp::Equal, intent.mod_revision);
        for piece in pieces(&ops) {
            let txn = Txn::new()
                .when(vec![guard()])
                .and_then(piece.iter().map(txn_op).collect::<Vec<_>>());
            if !self.txn(txn).await?.succeeded() {
                // Someone else finished (or is finishing) this rollback.
                return Ok(());
            }
        }
        let txn = Txn::new().when(vec![guard()]).and_then(vec![
            TxnOp::delete(INTENT_KEY, None),
            TxnOp::put(DELETE_MARKER_KEY, Vec::new(), None),
        ]);
        self.txn(txn).await?;
        Ok(())
    }

    /// Writes `ops` as a staged change (see the module docs). `guard` holds the
    /// caller's guard compares, `expected` the mod revisions the change was decided on
    /// (as compares, checked once the intent exists). `dry_run` checks only.
    pub(crate) async fn write_staged(
        &self,
        guard: Vec<Compare>,
        expected: &[Compare],
        ops: &[Op],
        dry_run: bool,
    ) -> Result<Staged, StoreError> {
        if dry_run || ops.is_empty() {
            // Nothing to write (a dry run, or everything unchanged): checking each chunk
            // at its own revision is as good as a read, and takes no intent.
            let checks: Vec<Compare> = guard.into_iter().chain(expected.iter().cloned()).collect();
            for chunk in checks.chunks(PIECE_OPS - 1) {
                let mut when = chunk.to_vec();
                when.push(no_intent());
                if !self.txn(Txn::new().when(when)).await?.succeeded() {
                    return Ok(Staged::Raced);
                }
            }
            return Ok(Staged::Done(vec![0; ops.len()]));
        }
        let lease = self.grant_lease().await?;
        let heartbeat = format!("{HEARTBEAT_PREFIX}{:x}", lease.id);
        let doc = IntentDoc {
            writer: format!(
                "pid {} on {}",
                std::process::id(),
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default()
            ),
            heartbeat: heartbeat.clone(),
            writes: ops.len(),
        };
        let doc = serde_json::to_vec(&doc).map_err(|e| etcd_failure(format!("encoding the intent: {e}")))?;
        let mut when = guard;
        when.push(no_intent());
        let create = Txn::new().when(when).and_then(vec![
            TxnOp::put(INTENT_KEY, doc, None),
            TxnOp::put(
                heartbeat.as_str(),
                Vec::new(),
                Some(PutOptions::new().with_lease(lease.id)),
            ),
        ]);
        let mut resp = self.txn(create).await?;
        if !resp.succeeded() {
            self.revoke(lease).await;
            return Ok(Staged::Raced);
        }
        let created = header_revision(&mut resp);
        let owned = || {
            vec![
                Compare::mod_revision(INTENT_KEY, CompareOp::Equal, created),
                Compare::version(heartbeat.as_str(), CompareOp::Greater, 0),
            ]
        };
        // Nobody else writes resources/ now: what still matches what was read matched
        // at the intent's creation too.
        for chunk in expected.chunks(PIECE_OPS) {
            if !self.txn(Txn::new().when(chunk.to_vec())).await?.succeeded() {
                debug!("a key changed before the intent was created; abandoning the staged write");
                let abort = Txn::new().when(owned()).and_then(vec![
                    TxnOp::delete(INTENT_KEY, None),
                    TxnOp::delete(heartbeat.as_str(), None),
                ]);
                self.txn(abort).await?;
                self.revoke(lease).await;
                return Ok(Staged::Raced);
            }
        }
        let pause_after: Option<usize> = std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse().ok());
        let mut revisions = Vec::with_capacity(ops.len());
        for (n, piece) in pieces(ops).into_iter().enumerate() {
            if pause_after == Some(n) {
                warn!(pieces = n, "{PAUSE_ENV} is set: pausing the staged write (test hook)");
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let txn = Txn::new()
                .when(owned())
                .and_then(piece.iter().map(txn_op).collect::<Vec<_>>());
            let mut resp = match self.txn(txn).await {
                Ok(r) => r,
                Err(e) => {
                    // etcd refused a piece (a resource over its request limit) or is
                    // gone: undo what was written now rather than after the lease
                    // expires; the next writer or the master does it if this fails.
                    self.revoke(lease).await;
                    let intent = Intent {
                        create_revision: created,
                        mod_revision: created,
                        doc: None,
                    };
                    if let Err(undo) = self.roll_back(&intent).await {
                        warn!(error = %undo, "cannot roll back the failed staged write yet");
                    }
                    return Err(e);
                }
            };
            if !resp.succeeded() {
                return Err(lost(created));
            }
            let rev = header_revision(&mut resp);
            revisions.extend(std::iter::repeat_n(rev, piece.len()));
        }
        let mut last = vec![TxnOp::delete(INTENT_KEY, None), TxnOp::delete(heartbeat.as_str(), None)];
        if ops.iter().any(|(_, v)| v.is_none()) {
            last.push(TxnOp::put(DELETE_MARKER_KEY, Vec::new(), None));
        }
        if !self.txn(Txn::new().when(owned()).and_then(last)).await?.succeeded() {
            return Err(lost(created));
        }
        self.revoke(lease).await;
        Ok(Staged::Done(revisions))
    }
}

fn lost(created: i64) -> StoreError {
    etcd_failure(format!(
        "the staged write begun at revision {created} lost its intent (its lease expired); \
         nothing of it is visible and it will be rolled back"
    ))
}

fn during(e: StoreError, what: &str) -> StoreError {
    match e {
        StoreError::Etcd(f) => StoreError::Etcd(f.during(what)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(n: usize, size: usize) -> Op {
        (format!("k{n}"), Some(vec![0; size]))
    }

    #[test]
    fn pieces_respect_both_limits_and_keep_order() {
        let ops: Vec<Op> = (0..300).map(|i| op(i, 10)).collect();
        let p = pieces(&ops);
        assert_eq!(p.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![120, 120, 60]);
        let flat: Vec<&Op> = p.iter().flat_map(|p| p.iter()).collect();
        assert!(flat.iter().zip(&ops).all(|(a, b)| *a == b));

        let big: Vec<Op> = (0..5).map(|i| op(i, 400 * 1024)).collect();
        let p = pieces(&big);
        assert_eq!(p.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert!(pieces(&[]).is_empty());
        // One op bigger than a piece still goes alone (etcd then names the limit).
        assert_eq!(pieces(&[op(0, 2 * PIECE_BYTES)]).len(), 1);
    }

    #[test]
    fn one_txn_only_within_limits() {
        let ops: Vec<Op> = (0..100).map(|i| op(i, 10)).collect();
        assert!(fits_one_txn(&ops, 103));
        assert!(!fits_one_txn(&ops, 129));
        let ops: Vec<Op> = (0..121).map(|i| op(i, 10)).collect();
        assert!(!fits_one_txn(&ops, 3));
        assert!(!fits_one_txn(&[op(0, PIECE_BYTES + 1)], 1));
    }
}
