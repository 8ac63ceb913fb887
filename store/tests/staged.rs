//! Change sets larger than one etcd transaction, against a real etcd at its default
//! limits (128 operations, 1.5 MiB per request): staged behind the intent key and still
//! all or nothing to `list`, `get` and the watch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use calico_schema::{Kind, Resource};
use calico_store::testing::TestEtcd;
use calico_store::{
    Change, Store, StoreConfig, StoreError, WatchEvent, WriteMode, HEARTBEAT_PREFIX, INTENT_KEY, RESOURCES_PREFIX,
};
use etcd_client::{PutOptions, Txn, TxnOp};
use futures::StreamExt;
use serde_json::json;

fn container(name: &str, tag: &str) -> Resource {
    Resource::from_json(json!({
        "apiVersion": "calico/v1", "kind": "Container",
        "metadata": {"name": name, "labels": {"tag": tag}},
        "spec": {"node": "host-a", "container": name},
    }))
    .unwrap()
}

fn containers(n: usize, tag: &str) -> Vec<Resource> {
    (0..n).map(|i| container(&format!("c{i:05}"), tag)).collect()
}

async fn connect(etcd: &TestEtcd) -> Store {
    Store::connect(&StoreConfig::new(vec![etcd.endpoint()])).await.unwrap()
}

fn tag_of(r: &Resource) -> String {
    r.metadata().labels.get("tag").cloned().unwrap_or_default()
}

/// How many stored Containers carry each tag: a reader's whole view, in one number per tag.
fn tags(resources: &[Resource]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in resources.iter().filter(|r| r.kind() == Kind::Container) {
        *out.entry(tag_of(r)).or_default() += 1;
    }
    out
}

/// Polls `list` and `get` until `stop`, returning every distinct view seen.
fn poll_views(store: Store, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<BTreeMap<String, usize>>> {
    tokio::spawn(async move {
        let mut seen: Vec<BTreeMap<String, usize>> = Vec::new();
        // The states go none, a, b, none; `get` of the first Container written and then
        // of the last may see a later state for the last (a commit in between), never
        // an earlier one (which only half a change shows).
        let mut left_start = false;
        while !stop.load(Ordering::Relaxed) {
            let view = tags(&store.list(Some(Kind::Container)).await.unwrap().resources);
            let first = store.get(Kind::Container, "c00000").await.unwrap().map(|r| tag_of(&r));
            let mut phase = |t: &Option<String>| {
                let p = match t.as_deref() {
                    None if left_start => 3,
                    None => 0,
                    Some("a") => 1,
                    Some("b") => 2,
                    Some(other) => panic!("unexpected tag {other}"),
                };
                left_start |= p > 0;
                p
            };
            let pf = phase(&first);
            let last = store.get(Kind::Container, "c09999").await.unwrap().map(|r| tag_of(&r));
            let pl = phase(&last);
            assert!(pl >= pf, "get saw half a change: first {first:?}, last {last:?}");
            if !seen.contains(&view) {
                seen.push(view);
            }
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_resources_commit_all_or_nothing_at_etcds_default_limits() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let stop = Arc::new(AtomicBool::new(false));
    let views = poll_views(store.clone(), stop.clone());

    // A watcher's whole view, after every event it is given.
    let mut watch = store.watch(RESOURCES_PREFIX, 0);
    let watcher = tokio::spawn(async move {
        let mut state: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut views: Vec<BTreeMap<String, usize>> = Vec::new();
        while let Some(ev) = watch.next().await {
            match ev {
                WatchEvent::Resync { items, .. } => {
                    state = items.into_iter().map(|(k, v, _)| (k, v)).collect();
                }
                WatchEvent::Put { key, value, .. } => {
                    state.insert(key, value);
                }
                WatchEvent::Delete { key, .. } => {
                    state.remove(&key);
                }
            }
            assert!(!state.contains_key(INTENT_KEY), "the watch passed the intent on");
            let mut view = BTreeMap::new();
            for v in state.values() {
                let v: serde_json::Value = serde_json::from_slice(v).unwrap();
                let tag = v["metadata"]["labels"]["tag"].as_str().unwrap_or("").to_string();
                *view.entry(tag).or_insert(0usize) += 1;
            }
            let done = view.is_empty() && views.iter().any(|v| v.contains_key("b"));
            views.push(view);
            if done {
                break;
            }
        }
        views
    });

    let first = store
        .write(&containers(10_000, "a"), WriteMode::Apply, None, false)
        .await
        .unwrap();
    assert_eq!(first.len(), 10_000);
    assert!(first.iter().all(|o| o.change == Change::Created && o.revision > 0));
    assert_eq!(
        tags(&store.list(None).await.unwrap().resources),
        BTreeMap::from([("a".into(), 10_000)])
    );
    assert!(store.client().get(INTENT_KEY, None).await.unwrap().kvs().is_empty());
    let hb = store
        .client()
        .get(HEARTBEAT_PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(hb.kvs().is_empty(), "the heartbeat outlived its write");

    // An update of all 10k, then a delete of all 10k, each as one change.
    store
        .write(&containers(10_000, "b"), WriteMode::Apply, None, false)
        .await
        .unwrap();
    let deletes: Vec<(Kind, String, Option<String>)> = (0..10_000)
        .map(|i| (Kind::Container, format!("c{i:05}"), None))
        .collect();
    let gone = store.delete(&deletes, None, false).await.unwrap();
    assert!(gone.iter().all(|o| o.change == Change::Deleted));
    assert!(store.list(None).await.unwrap().resources.is_empty());

    stop.store(true, Ordering::Relaxed);
    let seen = views.await.unwrap();
    let whole = |v: &BTreeMap<String, usize>| v.is_empty() || (v.len() == 1 && v.values().all(|n| *n == 10_000));
    assert!(seen.iter().all(whole), "a reader saw half a change: {seen:?}");
    assert!(seen.len() >= 2, "the reader never saw a change land: {seen:?}");

    let wviews = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .unwrap()
        .unwrap();
    assert!(wviews.iter().all(whole), "the watch gave half a change: {wviews:?}");
    for tag in ["a", "b"] {
        assert!(
            wviews.iter().any(|v| v.get(tag) == Some(&10_000)),
            "the watch never showed all of {tag}: {wviews:?}"
        );
    }
}

#[tokio::test]
async fn a_dry_run_of_a_large_set_writes_nothing() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let out = store
        .write(&containers(500, "a"), WriteMode::Apply, None, true)
        .await
        .unwrap();
    assert_eq!(out.len(), 500);
    assert!(store.list(None).await.unwrap().resources.is_empty());
    assert!(store.client().get(INTENT_KEY, None).await.unwrap().kvs().is_empty());

    // Re-writing a large set unchanged writes nothing at all, not even an intent.
    store
        .write(&containers(500, "a"), WriteMode::Apply, None, false)
        .await
        .unwrap();
    let before = store
        .client()
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let out = store
        .write(&containers(500, "a"), WriteMode::Apply, None, false)
        .await
        .unwrap();
    assert!(out.iter().all(|o| o.change == Change::Unchanged));
    let after = store
        .client()
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(before, after, "an unchanged large write bumped the revision");
}

#[tokio::test]
async fn a_large_set_with_a_stale_guard_or_version_writes_nothing() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&containers(300, "a"), WriteMode::Apply, None, false)
        .await
        .unwrap();
    let guard = store.list(None).await.unwrap().revision;
    store
        .write(&[container("other", "x")], WriteMode::Apply, None, false)
        .await
        .unwrap();
    let e = store
        .write(&containers(300, "b"), WriteMode::Apply, Some(guard), false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Stale), "{e}");
    let mut set = containers(300, "b");
    set[299].metadata_mut().resource_version = Some("1".into());
    let e = store.write(&set, WriteMode::Apply, None, false).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    assert_eq!(tags(&store.list(None).await.unwrap().resources).get("a"), Some(&300));
}

/// A writer that died mid-write: its intent and part of its change are in etcd, its
/// heartbeat's lease is gone. Made by hand, as the store's writer would leave it.
async fn dead_writer(store: &Store, written: usize) {
    let mut client = store.client();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let hb = format!("{HEARTBEAT_PREFIX}{lease:x}");
    let doc = json!({"writer": "a test's dead writer", "heartbeat": hb, "writes": 10_000});
    client
        .txn(Txn::new().and_then(vec![
            TxnOp::put(INTENT_KEY, doc.to_string(), None),
            TxnOp::put(hb.as_str(), "", Some(PutOptions::new().with_lease(lease))),
        ]))
        .await
        .unwrap();
    // Half of the change: updates of existing keys, new keys, and a delete.
    let pieces: Vec<Resource> = containers(written, "b");
    for chunk in pieces.chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|r| {
                let key = calico_store::resource_key(r.kind(), r.name());
                TxnOp::put(key, serde_json::to_vec(&r.without_version().to_json()).unwrap(), None)
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    client
        .delete(calico_store::resource_key(Kind::Container, "c00199"), None)
        .await
        .unwrap();
    client.lease_revoke(lease).await.unwrap();
}

#[tokio::test]
async fn a_dead_writers_half_change_is_invisible_and_the_next_writer_rolls_it_back() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&containers(200, "a"), WriteMode::Apply, None, false)
        .await
        .unwrap();
    let before = store.list(None).await.unwrap();
    dead_writer(&store, 500).await;

    // Readers see the state before the intent, resourceVersions included.
    let during = store.list(None).await.unwrap();
    assert_eq!(during.resources, before.resources);
    assert_eq!(tags(&during.resources), BTreeMap::from([("a".into(), 200)]));
    assert_eq!(
        tag_of(&store.get(Kind::Container, "c00000").await.unwrap().unwrap()),
        "a"
    );
    assert!(store.get(Kind::Container, "c00199").await.unwrap().is_some());
    assert!(store.get(Kind::Container, "c00300").await.unwrap().is_none());

    // The next writer rolls it back and then writes. It creates a key the dead writer
    // had put: what the uncommitted piece holds is no conflict.
    let out = store
        .write(&[container("c00300", "n")], WriteMode::Create, None, false)
        .await
        .unwrap();
    assert_eq!(out[0].change, Change::Created);
    assert!(store.client().get(INTENT_KEY, None).await.unwrap().kvs().is_empty());
    let after = store.list(None).await.unwrap();
    assert_eq!(
        tags(&after.resources),
        BTreeMap::from([("a".into(), 200), ("n".into(), 1)])
    );
}

#[tokio::test]
async fn the_master_call_rolls_back_a_dead_writers_intent_and_leaves_a_live_one() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&containers(150, "a"), WriteMode::Apply, None, false)
        .await
        .unwrap();
    assert!(!store.clear_stale_intent().await.unwrap());
    dead_writer(&store, 300).await;
    assert!(store.clear_stale_intent().await.unwrap());
    assert!(!store.clear_stale_intent().await.unwrap());
    let raw = store
        .client()
        .get(
            RESOURCES_PREFIX,
            Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(raw.count(), 150, "keys the dead writer added are still stored");
    assert_eq!(
        tags(&store.list(None).await.unwrap().resources),
        BTreeMap::from([("a".into(), 150)])
    );

    // A live writer's intent (its heartbeat's lease alive) is left alone.
    let mut client = store.client();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let hb = format!("{HEARTBEAT_PREFIX}{lease:x}");
    let doc = json!({"writer": "a live writer", "heartbeat": hb, "writes": 1});
    client
        .txn(Txn::new().and_then(vec![
            TxnOp::put(INTENT_KEY, doc.to_string(), None),
            TxnOp::put(hb.as_str(), "", Some(PutOptions::new().with_lease(lease))),
        ]))
        .await
        .unwrap();
    assert!(!store.clear_stale_intent().await.unwrap());
    assert!(!client.get(INTENT_KEY, None).await.unwrap().kvs().is_empty());
    // A writer waits for it, and goes ahead once its writer is gone.
    let s2 = store.clone();
    let w = tokio::spawn(async move { s2.write(&[container("late", "l")], WriteMode::Apply, None, false).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!w.is_finished(), "a writer went ahead during a live staged write");
    client.lease_revoke(lease).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(tags(&store.list(None).await.unwrap().resources).get("l"), Some(&1));
}

#[tokio::test]
async fn a_resource_over_etcds_request_limit_names_the_limit_and_leaves_nothing() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let mut big = container("big", "a");
    big.metadata_mut()
        .annotations
        .insert("blob".into(), "x".repeat(1700 * 1024));
    let e = store.write(&[big], WriteMode::Apply, None, false).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Etcd(m) if m.contains("raise etcd's --max-request-bytes")),
        "{e}"
    );
    assert!(store.list(None).await.unwrap().resources.is_empty());
    assert!(store.client().get(INTENT_KEY, None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_large_writers_at_once_each_land_whole() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let (s1, s2) = (store.clone(), store.clone());
    let w1 = tokio::spawn(async move { s1.write(&containers(2_000, "x"), WriteMode::Apply, None, false).await });
    let w2 = tokio::spawn(async move { s2.write(&containers(2_000, "y"), WriteMode::Apply, None, false).await });
    let mut seen = Vec::new();
    while !(w1.is_finished() && w2.is_finished()) {
        let v = tags(&store.list(None).await.unwrap().resources);
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    w1.await.unwrap().unwrap();
    w2.await.unwrap().unwrap();
    let last = tags(&store.list(None).await.unwrap().resources);
    seen.push(last.clone());
    let whole = |v: &BTreeMap<String, usize>| v.is_empty() || (v.len() == 1 && v.values().all(|n| *n == 2_000));
    assert!(seen.iter().all(whole), "a reader saw the writers mixed: {seen:?}");
    assert!(whole(&last) && !last.is_empty());
    assert!(store.client().get(INTENT_KEY, None).await.unwrap().kvs().is_empty());
}
