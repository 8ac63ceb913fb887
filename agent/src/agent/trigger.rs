//! What wakes the reconcile, and the debounce that collects a burst into one: the two
//! etcd watches (resources and IPAM) applied to the cache, the periodic full resync,
//! a requeue coming due, and dockerd saying something changed.

use std::future::Future;
use std::time::{Duration, Instant};

use calico_store::{Store, WatchEvent, WatchStream, IPAM_PREFIX, RESOURCES_PREFIX};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Interval;

use super::requeue::Requeue;
use crate::cache::Cache;

/// Why the loop woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A watch event was applied to the cache; `true` when it changed something.
    Watch(bool),
    /// The periodic full resync is due: every workload and artefact is checked again.
    Resync,
    /// A requeued reconcile is due.
    Requeue,
    /// dockerd (re)started or changed its networks: it may have rewritten its iptables
    /// chains.
    Docker,
    /// The agent is stopping.
    Stop,
}

/// The agent's watches of etcd, kept in the cache, and the resync timer.
pub(crate) struct Triggers {
    resources: WatchStream,
    ipam: WatchStream,
    resources_synced: bool,
    ipam_synced: bool,
    resync: Interval,
    debounce: Debounce,
    /// When the last reconcile ended (the run loop says so): what tells a lone change
    /// from a burst.
    last_reconciled: Option<Instant>,
}

/// How long a wake waits before the reconcile, so that a burst is folded into one.
///
/// A change that finds the agent idle (no reconcile ended within `window`) waits only
/// `settle`: long enough for the rest of the etcd transaction that caused it, and the
/// other watch's events of the same operation, to reach the channels, and no more, so a
/// lone change is not delayed by the window. A wake within `window` of the last
/// reconcile's end is part of a burst (events that arrived while a reconcile ran, or a
/// stream of writes): it waits the whole window, and everything both watches queued
/// meanwhile is folded into the one next reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Debounce {
    pub window: Duration,
    pub settle: Duration,
}

/// The idle wait: a few milliseconds, so the events of one operation (a transaction's
/// puts, IPAM's handle beside the Container) land together.
pub(crate) const SETTLE: Duration = Duration::from_millis(2);

impl Debounce {
    /// `window` for bursts; the idle wait is [`SETTLE`], never more than `window`.
    pub(crate) fn new(window: Duration) -> Debounce {
        Debounce {
            window,
            settle: SETTLE.min(window),
        }
    }

    /// How long a wake at `now` waits, given when the last reconcile ended.
    pub(crate) fn delay(&self, last_reconciled: Option<Instant>, now: Instant) -> Duration {
        match last_reconciled {
            Some(end) if now.saturating_duration_since(end) < self.window => self.window,
            _ => self.settle,
        }
    }
}

impl Triggers {
    /// Starts both watches from the current revision.
    pub(crate) fn start(store: &Store, resync: Duration, debounce: Duration) -> Triggers {
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Triggers {
            resources: store.watch(RESOURCES_PREFIX, 0),
            ipam: store.watch(IPAM_PREFIX, 0),
            resources_synced: false,
            ipam_synced: false,
            resync,
            debounce: Debounce::new(debounce),
            last_reconciled: None,
        }
    }

    /// Both watches have listed their prefix once: only then may the reconcile remove
    /// anything (a partial view must never remove live workloads).
    pub(crate) fn synced(&self) -> bool {
        self.resources_synced && self.ipam_synced
    }

    /// Waits for the next reason to reconcile; a watch event is applied to `cache` on
    /// the way.
    pub(crate) async fn wait(
        &mut self,
        cache: &mut Cache,
        requeue: &Requeue,
        docker_changed: impl Future<Output = ()>,
        stop: &mut watch::Receiver<bool>,
    ) -> Wake {
        tokio::select! {
            Some(ev) = self.resources.next() => {
                if matches!(ev, WatchEvent::Resync { .. }) { self.resources_synced = true; }
                Wake::Watch(apply_partial(cache, ev, RESOURCES_PREFIX))
            }
            Some(ev) = self.ipam.next() => {
                if matches!(ev, WatchEvent::Resync { .. }) { self.ipam_synced = true; }
                Wake::Watch(apply_partial(cache, ev, IPAM_PREFIX))
            }
            _ = self.resync.tick() => Wake::Resync,
            _ = requeue.due() => Wake::Requeue,
            _ = docker_changed => Wake::Docker,
            _ = stop.changed() => Wake::Stop,
        }
    }

    /// The run loop finished a reconcile: a wake soon after is part of a burst.
    pub(crate) fn reconciled(&mut self) {
        self.last_reconciled = Some(Instant::now());
    }

    /// Debounce ([`Debounce`]): waits the settle time when idle, the whole window in a
    /// burst, then applies what both watches queued meanwhile. Both: a burst of IPAM
    /// events (many Containers assigned at once) left queued would cost one reconcile
    /// each, and reconciles that see no handle yet ask IPAM again.
    pub(crate) async fn debounce(&mut self, cache: &mut Cache) {
        let wait = self.debounce.delay(self.last_reconciled, Instant::now());
        tokio::time::sleep(wait).await;
        while let Some(Some(ev)) = futures::FutureExt::now_or_never(self.resources.next()) {
            apply_partial(cache, ev, RESOURCES_PREFIX);
        }
        while let Some(Some(ev)) = futures::FutureExt::now_or_never(self.ipam.next()) {
            if matches!(ev, WatchEvent::Resync { .. }) {
                self.ipam_synced = true;
            }
            apply_partial(cache, ev, IPAM_PREFIX);
        }
    }
}

/// Applies an event from a watch of one prefix. A Resync of one prefix must not wipe
/// what the other watch put in the cache, so it is replayed as puts plus deletes.
fn apply_partial(cache: &mut Cache, ev: WatchEvent, prefix: &str) -> bool {
    match ev {
        WatchEvent::Resync { items, revision } => cache.resync_prefix(prefix, items, revision),
        other => cache.apply(other),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use calico_schema::{Kind, Resource};
    use calico_store::testing::TestEtcd;
    use calico_store::{StoreConfig, WriteMode};

    use super::*;

    fn containers(n: usize, tag: &str) -> Vec<Resource> {
        (0..n)
            .map(|i| {
                Resource::from_json(serde_json::json!({
                    "apiVersion": "calico/v1", "kind": "Container",
                    "metadata": {"name": format!("c{i:05}"), "labels": {"tag": tag}},
                    "spec": {"node": "host-a", "container": format!("c{i:05}")},
                }))
                .unwrap()
            })
            .collect()
    }

    fn tags(cache: &Cache) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in cache.resources().iter().filter(|r| r.kind() == Kind::Container) {
            let tag = r.metadata().labels.get("tag").cloned().unwrap_or_default();
            *out.entry(tag).or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn only_a_wake_soon_after_a_reconcile_waits_the_window() {
        let d = Debounce::new(Duration::from_millis(20));
        assert_eq!(d.settle, SETTLE);
        let now = Instant::now();
        let ago = |ms| now.checked_sub(Duration::from_millis(ms)).unwrap();
        // Idle: never reconciled, or long ago.
        assert_eq!(d.delay(None, now), SETTLE);
        assert_eq!(d.delay(Some(ago(1000)), now), SETTLE);
        assert_eq!(d.delay(Some(ago(20)), now), SETTLE);
        // A burst: events that came while (or just after) a reconcile ran.
        assert_eq!(d.delay(Some(ago(19)), now), d.window);
        assert_eq!(d.delay(Some(now), now), d.window);
        // The settle is never longer than the window asked for.
        assert_eq!(Debounce::new(Duration::from_millis(1)).settle, Duration::from_millis(1));
    }

    type Synced = (Triggers, Cache, Requeue, watch::Sender<bool>, watch::Receiver<bool>);

    async fn synced(store: &Store, window: Duration) -> Synced {
        let mut triggers = Triggers::start(store, Duration::from_secs(3600), window);
        let mut cache = Cache::default();
        let requeue = Requeue::default();
        let (stop_tx, mut stop) = watch::channel(false);
        while !triggers.synced() {
            tokio::time::timeout(
                Duration::from_secs(30),
                triggers.wait(&mut cache, &requeue, std::future::pending(), &mut stop),
            )
            .await
            .expect("the watches list within 30 s");
        }
        (triggers, cache, requeue, stop_tx, stop)
    }

    /// A change that finds the agent idle is reconciled after the settle time, not
    /// after the window (here 5 s, so the difference cannot be mistaken).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_change_is_not_held_for_the_window() {
        let etcd = TestEtcd::start();
        let store = Store::connect(&StoreConfig::new(vec![etcd.endpoint()])).await.unwrap();
        let window = Duration::from_secs(5);
        let (mut triggers, mut cache, requeue, _stop_tx, mut stop) = synced(&store, window).await;
        // The last reconcile ended long ago.
        triggers.last_reconciled = Instant::now().checked_sub(Duration::from_secs(60));
        let t = Instant::now();
        store
            .write(&containers(1, "lone"), WriteMode::Apply, None, false)
            .await
            .unwrap();
        let wake = tokio::time::timeout(
            Duration::from_secs(10),
            triggers.wait(&mut cache, &requeue, std::future::pending(), &mut stop),
        )
        .await
        .expect("a wake");
        let wake = match wake {
            // The resync timer's first tick is at once.
            Wake::Resync => tokio::time::timeout(
                Duration::from_secs(10),
                triggers.wait(&mut cache, &requeue, std::future::pending(), &mut stop),
            )
            .await
            .expect("a wake"),
            w => w,
        };
        assert_eq!(wake, Wake::Watch(true));
        triggers.debounce(&mut cache).await;
        let took = t.elapsed();
        assert_eq!(tags(&cache), BTreeMap::from([("lone".to_string(), 1)]));
        assert!(took < Duration::from_secs(1), "a lone change waited {took:?}");
    }

    /// Writes that keep coming while reconciles run are folded: the first reconciles at
    /// once, all the rest into one more (not one each).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_folded_into_the_next_reconcile() {
        const WRITES: usize = 10;
        let etcd = TestEtcd::start();
        let store = Store::connect(&StoreConfig::new(vec![etcd.endpoint()])).await.unwrap();
        let window = Duration::from_millis(1500);
        let (mut triggers, mut cache, requeue, _stop_tx, mut stop) = synced(&store, window).await;
        let started = Instant::now();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                // One Container each, 20 ms apart: 200 ms of writes, inside one window.
                for i in 0..WRITES {
                    let r = Resource::from_json(serde_json::json!({
                        "apiVersion": "calico/v1", "kind": "Container",
                        "metadata": {"name": format!("b{i:02}"), "labels": {"tag": "burst"}},
                        "spec": {"node": "host-a", "container": format!("b{i:02}")},
                    }))
                    .unwrap();
                    store.write(&[r], WriteMode::Apply, None, false).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let mut seen = Vec::new();
        let mut first_at = None;
        while seen.last() != Some(&WRITES) {
            let wake = tokio::time::timeout(
                Duration::from_secs(10),
                triggers.wait(&mut cache, &requeue, std::future::pending(), &mut stop),
            )
            .await
            .expect("a wake");
            // The resync timer's first tick is at once; the loop would reconcile on it
            // too, but it is not one of the writes' wakes.
            if wake == Wake::Resync {
                continue;
            }
            assert!(matches!(wake, Wake::Watch(_)), "{wake:?}");
            triggers.debounce(&mut cache).await;
            first_at.get_or_insert_with(|| started.elapsed());
            // The reconcile.
            seen.push(tags(&cache).get("burst").copied().unwrap_or(0));
            triggers.reconciled();
        }
        writer.await.unwrap();
        let first_at = first_at.unwrap();
        assert!(first_at < window, "the first change waited {first_at:?}");
        assert_eq!(
            seen.len(),
            2,
            "one reconcile at once, the rest folded into one: {seen:?}"
        );
    }

    /// What the agent reconciles from (the cache after a wake and its debounce) holds
    /// none or all of a change set too large for one etcd transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reconcile_never_sees_half_a_staged_write() {
        const N: usize = 5_000;
        let etcd = TestEtcd::start();
        let store = Store::connect(&StoreConfig::new(vec![etcd.endpoint()])).await.unwrap();
        let mut triggers = Triggers::start(&store, Duration::from_secs(3600), Duration::from_millis(1));
        let mut cache = Cache::default();
        let requeue = Requeue::default();
        let (_stop_tx, mut stop) = watch::channel(false);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for tag in ["a", "b"] {
                    store
                        .write(&containers(N, tag), WriteMode::Apply, None, false)
                        .await
                        .unwrap();
                }
            })
        };
        let mut views = Vec::new();
        while views.last() != Some(&BTreeMap::from([("b".to_string(), N)])) {
            let wake = tokio::time::timeout(
                Duration::from_secs(60),
                triggers.wait(&mut cache, &requeue, std::future::pending(), &mut stop),
            )
            .await
            .expect("no wake within a minute");
            // The resync timer's first tick is at once; only the watches wake it after.
            assert!(matches!(wake, Wake::Watch(_) | Wake::Resync), "{wake:?}");
            triggers.debounce(&mut cache).await;
            let v = tags(&cache);
            assert!(
                v.is_empty() || (v.len() == 1 && v.values().all(|n| *n == N)),
                "the reconcile would see half a change: {v:?}"
            );
            views.push(v);
        }
        writer.await.unwrap();
        assert!(views.contains(&BTreeMap::from([("a".to_string(), N)])), "{views:?}");
    }
}
