//! A watch that survives etcd: resumes by revision after disconnects and re-lists
//! (emitting `Resync`) when the revision it needs was compacted away.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::retry::MAX_DECODE;
use crate::{Store, INTENT_KEY};

/// One change under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put {
        key: String,
        value: Vec<u8>,
        mod_revision: i64,
    },
    Delete {
        key: String,
        revision: i64,
    },
    /// The whole current state under the prefix, `(key, value, mod_revision)`, read at
    /// `revision`: replaces whatever the consumer had. Sent first when watching from 0,
    /// and whenever the history needed to resume was compacted.
    Resync {
        items: Vec<(String, Vec<u8>, i64)>,
        revision: i64,
    },
}

/// The events of [`Store::watch`]. Never ends on its own; dropping it stops the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<WatchEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl futures::Stream for WatchStream {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        // The task may be parked in a reconnect backoff or on etcd; stop it now rather
        // than when it next tries to send.
        self.task.abort();
    }
}

/// Bounded so a slow consumer slows the watch (etcd's flow control then holds events)
/// instead of growing memory without limit.
const CHANNEL: usize = 1024;

pub(crate) fn start(store: Store, prefix: String, from_revision: i64) -> WatchStream {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let task = tokio::spawn(run(store, prefix, from_revision, tx));
    WatchStream { rx, task }
}

/// Delay before the n-th consecutive reconnect (n >= 1): 100 ms doubling to 5 s, with
/// jitter so many agents do not hammer a recovering etcd in step.
fn retry_delay(failures: u32) -> Duration {
    use rand::Rng;
    let base = Duration::from_millis(100u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(5));
    let jitter = rand::rng().random_range(0..=base.as_millis() as u64 / 2);
    base + Duration::from_millis(jitter)
}

/// Why one watch connection ended.
enum End {
    /// The revision to resume from is gone: re-list.
    Compacted,
    /// Connection trouble or a server-side cancel: reconnect from the next revision.
    Broken(String),
    /// The consumer dropped the stream.
    Gone,
    /// A staged write's intent was deleted: re-list to deliver its whole change at once.
    Committed,
}

async fn run(store: Store, prefix: String, from_revision: i64, tx: mpsc::Sender<WatchEvent>) {
    // The revision the next watch starts at; 0 means "re-list first".
    let mut next = from_revision.max(0);
    let mut failures: u32 = 0;
    // A watch that covers the intent key hides staged writes: it drops their events
    // from the intent's creation to its deletion and then re-lists (see `staged`).
    let covers_intent = INTENT_KEY.starts_with(prefix.as_str());
    let mut staged = false;
    if covers_intent && next > 0 {
        // Started inside a staged write: its intent's creation is behind us.
        loop {
            match store.read_intent().await {
                Ok(intent) => {
                    staged = intent.is_some_and(|i| i.pre_revision() < next);
                    break;
                }
                Err(e) => {
                    failures += 1;
                    debug!(%prefix, error = %e, failures, "watch cannot read the intent; retrying");
                    tokio::time::sleep(retry_delay(failures)).await;
                }
            }
        }
    }
    loop {
        if next == 0 {
            let listed = if covers_intent {
                store.read_visible(&prefix, true).await
            } else {
                store.range(&prefix).await
            };
            // The re-list shows the state before any staged write in progress; the
            // watch from there replays that write's intent and hides it again.
            staged = false;
            match listed {
                Ok((items, revision)) => {
                    debug!(%prefix, revision, items = items.len(), "watch resync");
                    if tx.send(WatchEvent::Resync { items, revision }).await.is_err() {
                        return;
                    }
                    next = revision + 1;
                }
                Err(e) => {
                    failures += 1;
                    debug!(%prefix, error = %e, failures, "watch cannot list; retrying");
                    tokio::time::sleep(retry_delay(failures)).await;
                    continue;
                }
            }
        }
        match watch_once(&store, &prefix, &mut next, &mut failures, &mut staged, &tx).await {
            End::Gone => return,
            End::Committed => {
                debug!(%prefix, revision = next, "a staged write committed; re-listing");
                next = 0;
            }
            End::Compacted => {
                info!(%prefix, revision = next, "watch history compacted; re-listing");
                next = 0;
            }
            End::Broken(why) => {
                failures += 1;
                // The first failure is worth a line; repeated ones while etcd stays down are not.
                if failures == 1 {
                    warn!(%prefix, resume_at = next, error = %why, "watch interrupted; reconnecting");
                } else {
                    debug!(%prefix, resume_at = next, error = %why, failures, "watch reconnect failed");
                }
                tokio::time::sleep(retry_delay(failures)).await;
            }
        }
    }
}

/// Runs one etcd watch from `*next`, forwarding events and advancing `*next` past each
/// delivered revision, until it ends.
async fn watch_once(
    store: &Store,
    prefix: &str,
    next: &mut i64,
    failures: &mut u32,
    staged: &mut bool,
    tx: &mpsc::Sender<WatchEvent>,
) -> End {
    let client = store.inner.client.watch_client().max_decoding_message_size(MAX_DECODE);
    let options = WatchOptions::new().with_prefix().with_start_revision(*next);
    let started = store
        .call(|| {
            let (mut client, options) = (client.clone(), options.clone());
            async move { client.watch(prefix, Some(options)).await }
        })
        .await;
    let mut stream = match started {
        Ok(s) => s,
        Err(e) => return End::Broken(e.to_string()),
    };
    // etcd answers a watch creation at once; bound that wait like any request so a
    // half-open connection cannot park the watch forever.
    let timeout = store.inner.cfg.timeout;
    let mut created = false;
    loop {
        let msg = if created {
            tokio::select! {
                m = stream.message() => m,
                _ = tx.closed() => return End::Gone,
            }
        } else {
            match tokio::time::timeout(timeout, stream.message()).await {
                Ok(m) => m,
                Err(_) => return End::Broken(format!("no answer to the watch request within {timeout:?}")),
            }
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return End::Broken("etcd closed the watch stream".into()),
            Err(e) => return End::Broken(e.to_string()),
        };
        if resp.created() && !created {
            created = true;
            // A working watch: the next outage starts its backoff from the beginning.
            *failures = 0;
        }
        if resp.compact_revision() > 0 {
            return End::Compacted;
        }
        if resp.canceled() {
            return End::Broken(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
        }
        match forward(resp, next, staged, tx).await {
            Err(()) => return End::Gone,
            Ok(true) => return End::Committed,
            Ok(false) => {}
        }
    }
}

/// Sends a response's events in order. etcd never splits one revision across
/// responses, so after a response `*next` is one past its last revision. Events of a
/// staged write are dropped; `Ok(true)` when its intent was deleted (the caller
/// re-lists, so what follows in this response is covered by that).
async fn forward(
    resp: WatchResponse,
    next: &mut i64,
    staged: &mut bool,
    tx: &mpsc::Sender<WatchEvent>,
) -> Result<bool, ()> {
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let rev = kv.mod_revision();
        if kv.key() == INTENT_KEY.as_bytes() {
            match ev.event_type() {
                EventType::Put => *staged = true,
                EventType::Delete if *staged => return Ok(true),
                EventType::Delete => {}
            }
            *next = (*next).max(rev + 1);
            continue;
        }
        if *staged {
            *next = (*next).max(rev + 1);
            continue;
        }
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let out = match ev.event_type() {
            EventType::Put => WatchEvent::Put {
                key,
                value: kv.value().to_vec(),
                mod_revision: rev,
            },
            EventType::Delete => WatchEvent::Delete { key, revision: rev },
        };
        tx.send(out).await.map_err(|_| ())?;
        *next = (*next).max(rev + 1);
    }
    Ok(false)
}

impl Store {
    /// Watches every key under `prefix` (a full key prefix such as `RESOURCES_PREFIX`)
    /// from `from_revision` (0: start with a `Resync` of the current state). See
    /// [`WatchStream`]. Must be called within a tokio runtime.
    pub fn watch(&self, prefix: &str, from_revision: i64) -> WatchStream {
        start(self.clone(), prefix.to_string(), from_revision)
    }
}
