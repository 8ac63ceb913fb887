//! One etcd call over several endpoints, bounded by the timeout; the backoff after a
//! lost race; and the limits every etcd request of the store and of IPAM shares.
//!
//! etcd-client balances requests over every endpoint through tonic's balanced channel,
//! whose per-endpoint services report ready even while their endpoint is down and
//! fail the request handed to them with the connect error. With one member of three
//! dead, about a third of all calls would fail although two members serve. A request
//! that failed that way never left this process, so sending it again (the balancer
//! picks again) is safe for reads and writes alike; nothing else is retried here, since
//! a request that reached etcd may have been applied.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

/// Pause between attempts: short, since the failure was immediate and local.
const PAUSE: Duration = Duration::from_millis(5);

/// Responses can be large (a full listing of a big cluster's resources or IPAM blocks, a
/// watch catching up), and tonic's default 4 MiB decode limit would turn them into errors.
pub(crate) const MAX_DECODE: usize = 256 * 1024 * 1024;
/// etcd's default --max-txn-ops is 128; reads of many keys are split to stay under it.
pub(crate) const READ_CHUNK: usize = 100;

/// Jittered exponential backoff after a transaction lost a race: a random pause of up to
/// 1 ms, 2 ms, 4 ms ... doubling up to `cap`. The jitter keeps contending writers from
/// retrying in lockstep.
pub(crate) async fn backoff(attempt: u32, cap: Duration) {
    let ceiling = Duration::from_millis(1u64 << attempt.min(16)).min(cap);
    let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    tokio::time::sleep(Duration::from_micros(rand::random_range(0..=micros))).await;
}

/// The call failed before a connection existed: nothing was sent.
pub(crate) fn never_sent(e: &etcd_client::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        // hyper-util's connector ("tcp connect error") and tonic's ("error trying to
        // connect"); a refused TCP connect has the I/O kind as its root.
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Runs `attempt` until it succeeds, fails in a way that may have reached etcd, or
/// `timeout` passes (`None`). Each attempt makes a fresh request.
pub(crate) async fn call<T, F, Fut>(timeout: Duration, mut attempt: F) -> Option<Result<T, etcd_client::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + timeout;
    let mut tries = 1u32;
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Err(_) => return None,
            Ok(Err(e)) if never_sent(&e) && Instant::now() + PAUSE < deadline => {
                debug!(tries, error = %e, "etcd endpoint not connected; sending the request again");
                tries += 1;
                tokio::time::sleep(PAUSE).await;
            }
            Ok(r) => return Some(r),
        }
    }
}
