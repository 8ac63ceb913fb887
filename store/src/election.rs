//! Leader election on an etcd lease (used by `calicoctl master`): the leader key is
//! created only if absent (compare version 0) and bound to a lease the leader keeps
//! alive. A [`Fence`] says until when the leader may act: a lease renewed at `t` with
//! TTL `ttl` lives at least until `t + ttl`, less a margin, so a leader stops before
//! any other can have taken over (the argument is in docs/gitops.md).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Until when the leader may act: a lease renewed at `t` with TTL `ttl` lives at least
/// until `t + ttl`; a margin keeps clocks and scheduling delays on the safe side.
#[derive(Clone)]
pub struct Fence(Arc<Mutex<Instant>>);

impl Fence {
    pub fn new(until: Instant) -> Fence {
        Fence(Arc::new(Mutex::new(until)))
    }
    pub fn set(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = until;
    }
    pub fn until(&self) -> Instant {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    pub fn valid(&self) -> bool {
        Instant::now() < self.until()
    }
}

pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
    /// When the grant was requested: the lease lives at least until this + ttl.
    pub granted: Instant,
}

pub fn margin(ttl: Duration) -> Duration {
    (ttl / 5).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

fn poll(ttl: Duration) -> Duration {
    (ttl / 8).clamp(Duration::from_millis(100), Duration::from_millis(500))
}

async fn within<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from etcd within {d:?}")),
    }
}

/// The leader key's value now (None: nobody leads), bounded by `call`.
pub async fn leader(client: &Client, key: &str, call: Duration) -> Result<Option<Vec<u8>>, String> {
    let mut kv = client.kv_client();
    let resp = within(call, kv.get(key, None)).await?;
    Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
}

/// Gives the lease up at once (a leader handing over), bounded by `call`; best effort.
pub async fn revoke(client: &Client, lease: &Lease, call: Duration) {
    let mut l = client.lease_client();
    let _ = within(call, l.revoke(lease.id)).await;
}

/// Waits until this master holds the leader key. Never gives up (etcd outages are waited
/// out); cancelled by dropping it.
pub async fn campaign(
    client: &Client,
    key: &str,
    value: impl Fn() -> Vec<u8>,
    describe: impl Fn(&[u8]) -> String,
    ttl_secs: u64,
    call: Duration,
) -> Lease {
    let ttl = Duration::from_secs(ttl_secs);
    let mut kv = client.kv_client();
    let mut leases = client.lease_client();
    let mut waiting_for: Option<String> = None;
    loop {
        let attempt: Result<Option<Lease>, String> = async {
            let cur = within(call, kv.get(key, None)).await?;
            if let Some(kv0) = cur.kvs().first() {
                let who = describe(kv0.value());
                if waiting_for.as_deref() != Some(who.as_str()) {
                    info!(leader = %who, "waiting: another master leads");
                    waiting_for = Some(who);
                }
                return Ok(None);
            }
            let granted = Instant::now();
            let g = within(call, leases.grant(ttl_secs as i64, None)).await?;
            let txn = Txn::new()
                .when(vec![Compare::version(key, CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(
                    key,
                    value(),
                    Some(PutOptions::new().with_lease(g.id())),
                )]);
            let won = within(call, kv.txn(txn)).await?.succeeded();
            if won {
                let real = Duration::from_secs(g.ttl().max(1) as u64);
                return Ok(Some(Lease {
                    id: g.id(),
                    ttl: real,
                    granted,
                }));
            }
            let _ = within(call, leases.revoke(g.id())).await;
            Ok(None)
        }
        .await;
        match attempt {
            Ok(Some(l)) => return l,
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot take part in the leader election; retrying"),
        }
        tokio::time::sleep(poll(ttl)).await;
    }
}

/// Keeps the lease alive and the fence up to date; returns why leadership ended.
pub async fn keep_leading(client: &Client, key: &str, lease: &Lease, fence: &Fence, call: Duration) -> String {
    let mut leases = client.lease_client();
    let mut kv = client.kv_client();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let every = (lease.ttl / 3).max(Duration::from_millis(200));
    loop {
        let until = fence.until();
        // Wake for the next renewal, and never sleep past the fence.
        tokio::time::sleep_until((Instant::now() + every).min(until)).await;
        if !fence.valid() {
            return format!("the lease could not be renewed within its {:?} TTL", lease.ttl);
        }
        let sent = Instant::now();
        let deadline = (sent + call).min(fence.until());
        let renewed: Result<i64, String> = async {
            if stream.is_none() {
                // Opening the stream sends a first keep-alive and reads its answer (an
                // error when the lease is gone): a renewal to the full TTL.
                let (k, s) = tokio::time::timeout_at(deadline, leases.keep_alive(lease.id))
                    .await
                    .map_err(|_| "no answer from etcd".to_string())?
                    .map_err(|e| e.to_string())?;
                stream = Some((k, s));
                return Ok(lease.ttl.as_secs().max(1) as i64);
            } else if let Some((k, _)) = stream.as_mut() {
                tokio::time::timeout_at(deadline, k.keep_alive())
                    .await
                    .map_err(|_| "no answer from etcd".to_string())?
                    .map_err(|e| e.to_string())?;
            }
            let (_, s) = stream.as_mut().ok_or_else(|| "no keep-alive stream".to_string())?;
            match tokio::time::timeout_at(deadline, s.message()).await {
                Err(_) => Err("no keep-alive answer from etcd".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(None)) => Err("etcd closed the keep-alive stream".to_string()),
                Ok(Ok(Some(r))) => Ok(r.ttl()),
            }
        }
        .await;
        match renewed {
            Ok(ttl) if ttl <= 0 => return "the lease expired".into(),
            Ok(ttl) => {
                fence.set(sent + Duration::from_secs(ttl as u64) - margin(lease.ttl));
            }
            Err(e) => {
                debug!(error = %e, "lease renewal failed; retrying");
                stream = None;
                continue;
            }
        }
        // The key must still be ours (someone may have deleted it by hand).
        match tokio::time::timeout_at((Instant::now() + call).min(fence.until()), kv.get(key, None)).await {
            Ok(Ok(r)) => match r.kvs().first() {
                Some(k) if k.lease() == lease.id => {}
                Some(_) => return "another master holds the leader key".into(),
                None => return "the leader key was deleted".into(),
            },
            _ => debug!("cannot read the leader key; relying on the lease"),
        }
    }
}
