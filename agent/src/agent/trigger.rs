//! What wakes the reconcile, and the debounce that collects a burst into one: the two
//! etcd watches (resources and IPAM) applied to the cache, the periodic full resync,
//! a requeue coming due, and dockerd saying something changed.

use std::future::Future;
use std::time::Duration;

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
    debounce: Duration,
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
            debounce,
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

    /// Debounce: lets a burst of events land before computing, then applies what both
    /// watches queued meanwhile. Both: a burst of IPAM events (many Containers assigned
    /// at once) left queued would cost one reconcile each, and reconciles that see no
    /// handle yet ask IPAM again.
    pub(crate) async fn debounce(&mut self, cache: &mut Cache) {
        tokio::time::sleep(self.debounce).await;
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
