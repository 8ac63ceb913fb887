//! The store against a real etcd (a throwaway one per test, see `calico_store::testing`).

use std::time::{Duration, Instant};

use calico_schema::{Kind, Resource};
use calico_store::testing::TestEtcd;
use calico_store::{
    decode_resource, resource_key, Change, Store, StoreConfig, StoreError, WatchEvent, WatchStream, WriteMode,
    DELETE_MARKER_KEY, RESOURCES_PREFIX,
};
use futures::StreamExt;
use serde_json::json;

fn group(name: &str) -> Resource {
    Resource::from_json(json!({"apiVersion": "calico/v1", "kind": "Group", "metadata": {"name": name}, "spec": {}}))
        .unwrap()
}

fn container(name: &str, groups: &[&str]) -> Resource {
    Resource::from_json(json!({
        "apiVersion": "calico/v1", "kind": "Container", "metadata": {"name": name},
        "spec": {"node": "host-a", "container": name, "groups": groups},
    }))
    .unwrap()
}

fn with_version(mut r: Resource, rv: &str) -> Resource {
    r.metadata_mut().resource_version = Some(rv.to_string());
    r
}

fn with_label(mut r: Resource, k: &str, v: &str) -> Resource {
    r.metadata_mut().labels.insert(k.into(), v.into());
    r
}

fn groups_of(r: &Resource) -> Vec<String> {
    match r {
        Resource::Container(c) => c.spec.groups.clone(),
        other => panic!("not a container: {other:?}"),
    }
}

async fn connect(etcd: &TestEtcd) -> Store {
    Store::connect(&StoreConfig::new(vec![etcd.endpoint()])).await.unwrap()
}

/// The raw bytes and mod revision of a key, or None.
async fn raw(store: &Store, key: &str) -> Option<(Vec<u8>, i64)> {
    let resp = store.client().get(key, None).await.unwrap();
    resp.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision()))
}

async fn current_revision(store: &Store) -> i64 {
    store
        .client()
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("a watch event within 20 s")
        .expect("stream")
}

#[tokio::test]
async fn create_get_list_round_trip() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let set = vec![container("c1", &["web"]), group("web"), group("db")];
    let out = store.write(&set, WriteMode::Create, None, false).await.unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|o| o.change == Change::Created));
    assert_eq!(out[0].id, "Container/c1");
    let rev = out[0].revision;
    assert!(
        out.iter().all(|o| o.revision == rev),
        "one transaction, one revision: {out:?}"
    );

    let got = store.get(Kind::Container, "c1").await.unwrap().unwrap();
    assert_eq!(
        got.metadata().resource_version.as_deref(),
        Some(rev.to_string().as_str())
    );
    assert_eq!(got.without_version(), set[0]);
    assert!(store.get(Kind::Container, "nope").await.unwrap().is_none());

    // The stored bytes carry no resourceVersion.
    let (bytes, _) = raw(&store, &resource_key(Kind::Group, "web")).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        group("web").to_json()
    );

    let all = store.list(None).await.unwrap();
    let ids: Vec<String> = all.resources.iter().map(Resource::id).collect();
    assert_eq!(
        ids,
        ["Group/db", "Group/web", "Container/c1"],
        "sorted by kind rank, then name"
    );
    assert!(all.invalid.is_empty());
    assert!(all.revision >= rev);
    assert!(all
        .resources
        .iter()
        .all(|r| r.metadata().resource_version.as_deref() == Some(&*rev.to_string())));
    let groups = store.list(Some(Kind::Group)).await.unwrap();
    assert_eq!(groups.resources.len(), 2);
}

#[tokio::test]
async fn apply_of_unchanged_content_writes_nothing() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let out = store.write(&[group("g")], WriteMode::Apply, None, false).await.unwrap();
    assert_eq!(out[0].change, Change::Created);
    let rev = out[0].revision;
    let before = current_revision(&store).await;

    let out = store.write(&[group("g")], WriteMode::Apply, None, false).await.unwrap();
    assert_eq!((out[0].change, out[0].revision), (Change::Unchanged, rev));
    // Also with the resourceVersion a `get` returned, as re-applying `get -o yaml` does.
    let got = store.get(Kind::Group, "g").await.unwrap().unwrap();
    let out = store.write(&[got], WriteMode::Replace, None, false).await.unwrap();
    assert_eq!((out[0].change, out[0].revision), (Change::Unchanged, rev));
    assert_eq!(current_revision(&store).await, before, "no revision bump");

    let out = store
        .write(&[with_label(group("g"), "a", "b")], WriteMode::Apply, None, false)
        .await
        .unwrap();
    assert_eq!(out[0].change, Change::Updated);
    assert!(out[0].revision > rev);
}

#[tokio::test]
async fn create_of_existing_and_replace_of_missing_conflict() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&[group("g")], WriteMode::Create, None, false)
        .await
        .unwrap();
    let e = store
        .write(&[group("g")], WriteMode::Create, None, false)
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Conflict { id, .. } if id == "Group/g"), "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");

    let e = store
        .write(&[group("h")], WriteMode::Replace, None, false)
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Conflict { id, .. } if id == "Group/h"), "{e}");
    assert!(store.get(Kind::Group, "h").await.unwrap().is_none());

    let out = store
        .write(&[with_label(group("g"), "x", "y")], WriteMode::Replace, None, false)
        .await
        .unwrap();
    assert_eq!(out[0].change, Change::Updated);

    // A resourceVersion on a key that does not exist cannot match.
    let e = store
        .write(&[with_version(group("new"), "5")], WriteMode::Apply, None, false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
}

#[tokio::test]
async fn a_failed_cas_in_a_set_writes_nothing() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let out = store
        .write(&[group("a"), group("b"), group("c")], WriteMode::Create, None, false)
        .await
        .unwrap();
    let rev = out[0].revision;
    let keys: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| resource_key(Kind::Group, n))
        .collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(raw(&store, k).await);
    }
    let revision_before = current_revision(&store).await;

    let set = vec![
        with_version(with_label(group("a"), "x", "1"), &rev.to_string()),
        with_version(with_label(group("b"), "x", "1"), &(rev - 1).to_string()),
        with_label(group("c"), "x", "1"),
        group("d"),
    ];
    let e = store.write(&set, WriteMode::Apply, None, false).await.unwrap_err();
    match &e {
        StoreError::Conflict { id, detail } => {
            assert_eq!(id, "Group/b");
            assert!(
                detail.contains(&(rev - 1).to_string()) && detail.contains(&rev.to_string()),
                "{detail}"
            );
        }
        other => panic!("expected a conflict, got {other}"),
    }
    for (k, b) in keys.iter().zip(&before) {
        assert_eq!(&raw(&store, k).await, b, "{k} changed");
    }
    assert!(before[3].is_none());
    assert_eq!(current_revision(&store).await, revision_before);

    // Dry run: every check, no write.
    let ok = vec![with_label(group("a"), "x", "1"), group("d")];
    let out = store.write(&ok, WriteMode::Apply, None, true).await.unwrap();
    assert_eq!(
        out.iter().map(|o| o.change).collect::<Vec<_>>(),
        [Change::Updated, Change::Created]
    );
    assert_eq!(current_revision(&store).await, revision_before);
    assert!(raw(&store, &keys[3]).await.is_none());
    let e = store.write(&set, WriteMode::Apply, None, true).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }));
}

#[tokio::test]
async fn two_writers_with_the_same_version_one_wins() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&[group("g")], WriteMode::Create, None, false)
        .await
        .unwrap();
    for round in 0..5 {
        let got = store.get(Kind::Group, "g").await.unwrap().unwrap();
        let one = with_label(got.clone(), "writer", &format!("one-{round}"));
        let two = with_label(got.clone(), "writer", &format!("two-{round}"));
        let (s1, s2) = (store.clone(), store.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { s1.write(&[one], WriteMode::Apply, None, false).await }),
            tokio::spawn(async move { s2.write(&[two], WriteMode::Replace, None, false).await }),
        );
        let results = [r1.unwrap(), r2.unwrap()];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(
            matches!(loser, StoreError::Conflict { id, .. } if id == "Group/g"),
            "{loser}"
        );
    }
}

#[tokio::test]
async fn guard_revision_detects_writes_and_deletes() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&[group("a"), group("b")], WriteMode::Create, None, false)
        .await
        .unwrap();
    let seen = store.list(None).await.unwrap().revision;

    // Nothing changed since: the guard holds (also for a no-op write).
    store
        .write(&[group("a")], WriteMode::Apply, Some(seen), false)
        .await
        .unwrap();
    let out = store
        .write(&[group("c")], WriteMode::Apply, Some(seen), false)
        .await
        .unwrap();
    let seen = out[0].revision;

    // Another writer changes an unrelated resource.
    store
        .write(&[with_label(group("b"), "k", "v")], WriteMode::Apply, None, false)
        .await
        .unwrap();
    let e = store
        .write(&[group("d")], WriteMode::Apply, Some(seen), false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Stale), "{e}");
    let e = store
        .write(&[group("d")], WriteMode::Apply, Some(seen), true)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Stale), "dry run checks the guard too: {e}");
    let e = store
        .delete(&[(Kind::Group, "a".into(), None)], Some(seen), false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Stale), "{e}");
    assert!(store.get(Kind::Group, "d").await.unwrap().is_none());
    assert!(store.get(Kind::Group, "a").await.unwrap().is_some());

    // A delete leaves no mod revision under resources/, yet still invalidates a guard.
    let seen = store.list(None).await.unwrap().revision;
    store
        .delete(&[(Kind::Group, "c".into(), None)], None, false)
        .await
        .unwrap();
    let e = store
        .write(&[group("d")], WriteMode::Apply, Some(seen), false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Stale), "{e}");
}

#[tokio::test]
async fn commit_puts_and_deletes_in_one_transaction() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&[group("a"), group("b"), group("c")], WriteMode::Create, None, false)
        .await
        .unwrap();
    let seen = store.list(None).await.unwrap().revision;
    let del = |n: &str| (Kind::Group, n.to_string(), None::<String>);

    // A failing precondition anywhere writes nothing: a missing delete target...
    let e = store
        .commit(
            &[group("d")],
            &[del("a"), del("zz")],
            WriteMode::Apply,
            Some(seen),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::NotFound { id } if id == "Group/zz"), "{e}");
    // ...or a put whose mode does not hold.
    let e = store
        .commit(&[group("b")], &[del("a")], WriteMode::Create, Some(seen), false)
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Conflict { id, .. } if id == "Group/b"), "{e}");
    // The same resource put and deleted is refused.
    let e = store
        .commit(&[group("a")], &[del("a")], WriteMode::Apply, None, false)
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Conflict { id, .. } if id == "Group/a"), "{e}");
    assert_eq!(current_revision(&store).await, seen, "nothing was written");

    // Dry run: every check, no write.
    let out = store
        .commit(&[group("d")], &[del("a")], WriteMode::Apply, Some(seen), true)
        .await
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(current_revision(&store).await, seen);

    // Both land at one revision; unchanged puts are not written; the marker is touched.
    let out = store
        .commit(
            &[group("d"), group("b"), with_label(group("c"), "k", "v")],
            &[del("a")],
            WriteMode::Apply,
            Some(seen),
            false,
        )
        .await
        .unwrap();
    let got: Vec<(&str, Change)> = out.iter().map(|o| (o.id.as_str(), o.change)).collect();
    assert_eq!(
        got,
        [
            ("Group/d", Change::Created),
            ("Group/b", Change::Unchanged),
            ("Group/c", Change::Updated),
            ("Group/a", Change::Deleted),
        ]
    );
    let rev = out[0].revision;
    assert!(rev > seen);
    assert!(out.iter().all(|o| o.change == Change::Unchanged || o.revision == rev));
    assert_eq!(current_revision(&store).await, rev, "one transaction");
    assert_eq!(raw(&store, DELETE_MARKER_KEY).await.unwrap().1, rev);
    let names: Vec<String> = store
        .list(None)
        .await
        .unwrap()
        .resources
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    assert_eq!(names, ["b", "c", "d"]);

    // The guard from before that commit no longer holds: Stale, also when a precondition
    // (the delete of "a", gone since) fails first; nothing written.
    let e = store
        .commit(&[group("e")], &[del("b")], WriteMode::Apply, Some(seen), false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Stale), "{e}");
    let e = store
        .commit(&[group("e")], &[del("a")], WriteMode::Apply, Some(seen), false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Stale), "{e}");
    assert_eq!(current_revision(&store).await, rev);

    // Empty: nothing to do.
    assert!(store
        .commit(&[], &[], WriteMode::Apply, Some(seen), false)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_all_land() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&[container("c", &[])], WriteMode::Create, None, false)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let g = format!("g{i}");
            s.update(Kind::Container, "c", move |r| {
                let Resource::Container(c) = r else {
                    return Err("not a container".into());
                };
                if c.spec.groups.contains(&g) {
                    return Ok(false);
                }
                c.spec.groups.push(g.clone());
                Ok(true)
            })
            .await
        }));
    }
    for t in tasks {
        let o = t.await.unwrap().unwrap();
        assert_eq!(o.change, Change::Updated);
    }
    let mut groups = groups_of(&store.get(Kind::Container, "c").await.unwrap().unwrap());
    groups.sort();
    assert_eq!(groups, (0..8).map(|i| format!("g{i}")).collect::<Vec<_>>());

    // No change: nothing written. Abort: a conflict carrying the message. Missing: NotFound.
    let rev = current_revision(&store).await;
    let o = store.update(Kind::Container, "c", |_| Ok(false)).await.unwrap();
    assert_eq!(o.change, Change::Unchanged);
    let o = store.update(Kind::Container, "c", |_| Ok(true)).await.unwrap();
    assert_eq!(o.change, Change::Unchanged, "reported a change but content is equal");
    assert_eq!(current_revision(&store).await, rev);
    let e = store
        .update(Kind::Container, "c", |_| Err("group x is missing".into()))
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Conflict { id, detail } if id == "Container/c" && detail == "group x is missing"));
    let e = store.update(Kind::Container, "nope", |_| Ok(true)).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn delete_semantics() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let out = store
        .write(&[group("a"), group("b")], WriteMode::Create, None, false)
        .await
        .unwrap();
    let rev = out[0].revision;

    // One missing: NotFound, and nothing is deleted.
    let e = store
        .delete(
            &[(Kind::Group, "a".into(), None), (Kind::Group, "zz".into(), None)],
            None,
            false,
        )
        .await;
    assert!(
        matches!(&e, Err(StoreError::NotFound { id }) if id == "Group/zz"),
        "{e:?}"
    );
    assert!(store.get(Kind::Group, "a").await.unwrap().is_some());

    // Wrong version: Conflict.
    let e = store
        .delete(&[(Kind::Group, "a".into(), Some((rev + 100).to_string()))], None, false)
        .await;
    assert!(matches!(e, Err(StoreError::Conflict { .. })), "{e:?}");

    // Dry run: nothing deleted.
    let out = store
        .delete(&[(Kind::Group, "a".into(), Some(rev.to_string()))], None, true)
        .await
        .unwrap();
    assert_eq!(out[0].change, Change::Deleted);
    assert!(store.get(Kind::Group, "a").await.unwrap().is_some());

    let out = store
        .delete(
            &[
                (Kind::Group, "a".into(), Some(rev.to_string())),
                (Kind::Group, "b".into(), None),
            ],
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        ["Group/a", "Group/b"]
    );
    assert!(out.iter().all(|o| o.change == Change::Deleted && o.revision > rev));
    assert!(store.list(None).await.unwrap().resources.is_empty());
    let e = store.delete(&[(Kind::Group, "a".into(), None)], None, false).await;
    assert!(matches!(e, Err(StoreError::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_changes_in_order_and_resumes_across_a_restart() {
    let mut etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&[group("pre")], WriteMode::Create, None, false)
        .await
        .unwrap();

    let mut w = store.watch(RESOURCES_PREFIX, 0);
    let WatchEvent::Resync { items, revision } = next_event(&mut w).await else {
        panic!("expected a resync first")
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].0, resource_key(Kind::Group, "pre"));
    assert!(revision >= items[0].2);

    let a = store
        .write(&[group("a")], WriteMode::Create, None, false)
        .await
        .unwrap()[0]
        .revision;
    let b = store
        .write(&[group("b")], WriteMode::Create, None, false)
        .await
        .unwrap()[0]
        .revision;
    let d = store
        .delete(&[(Kind::Group, "a".into(), None)], None, false)
        .await
        .unwrap()[0]
        .revision;
    match next_event(&mut w).await {
        WatchEvent::Put {
            key,
            value,
            mod_revision,
        } => {
            assert_eq!(
                (key.as_str(), mod_revision),
                (resource_key(Kind::Group, "a").as_str(), a)
            );
            assert_eq!(
                decode_resource(&key, &value, mod_revision).unwrap().without_version(),
                group("a")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(next_event(&mut w).await, WatchEvent::Put { mod_revision, .. } if mod_revision == b));
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Delete {
            key: resource_key(Kind::Group, "a"),
            revision: d
        }
    );

    // etcd goes away and comes back: the same store and the same watch carry on, with
    // nothing missed and nothing repeated.
    tokio::task::block_in_place(|| etcd.restart());
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        match store.write(&[group("c")], WriteMode::Create, None, false).await {
            Ok(o) => break o[0].revision,
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    };
    match next_event(&mut w).await {
        WatchEvent::Put { key, mod_revision, .. } => {
            assert_eq!((key, mod_revision), (resource_key(Kind::Group, "c"), c));
        }
        other => panic!("expected the put of c after the restart, got {other:?}"),
    }
    // A watch that was down while writes happened catches up from where it was.
    tokio::task::block_in_place(|| etcd.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| etcd.restart());
    let mut direct = store.client();
    let resp = loop {
        match direct
            .put(resource_key(Kind::Group, "e"), group("e").to_json().to_string(), None)
            .await
        {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline + Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let e_rev = resp.header().unwrap().revision();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Put { mod_revision, .. } if mod_revision == e_rev));
}

#[tokio::test]
async fn watch_from_a_compacted_revision_resyncs() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let first = store
        .write(&[group("a")], WriteMode::Create, None, false)
        .await
        .unwrap()[0]
        .revision;
    store
        .write(&[group("b")], WriteMode::Create, None, false)
        .await
        .unwrap();
    store
        .delete(&[(Kind::Group, "a".into(), None)], None, false)
        .await
        .unwrap();
    let now = current_revision(&store).await;
    store.client().compact(now, None).await.unwrap();

    let mut w = store.watch(RESOURCES_PREFIX, first);
    match next_event(&mut w).await {
        WatchEvent::Resync { items, revision } => {
            assert_eq!(
                items.iter().map(|i| i.0.clone()).collect::<Vec<_>>(),
                [resource_key(Kind::Group, "b")]
            );
            assert!(revision >= now);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let c = store
        .write(&[group("c")], WriteMode::Create, None, false)
        .await
        .unwrap()[0]
        .revision;
    assert!(matches!(next_event(&mut w).await, WatchEvent::Put { mod_revision, .. } if mod_revision == c));

    // A watch from a revision still in history replays it, without a resync.
    let mut w2 = store.watch(RESOURCES_PREFIX, c);
    assert!(matches!(next_event(&mut w2).await, WatchEvent::Put { mod_revision, .. } if mod_revision == c));
}

#[tokio::test]
async fn unavailable_etcd_fails_fast_and_names_the_endpoints() {
    let mut etcd = TestEtcd::start();
    let mut cfg = StoreConfig::new(vec![etcd.endpoint()]);
    cfg.timeout = Duration::from_secs(2);
    let store = Store::connect(&cfg).await.unwrap();
    store
        .write(&[group("a")], WriteMode::Create, None, false)
        .await
        .unwrap();
    etcd.stop();

    let other = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let both = StoreConfig {
        endpoints: vec![etcd.endpoint(), format!("http://{other}")],
        ..cfg.clone()
    };
    for c in [&cfg, &both] {
        let t = Instant::now();
        let e = Store::connect(c).await.err().expect("connect must fail");
        assert!(
            t.elapsed() < cfg.timeout + Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        let msg = e.to_string();
        eprintln!("connect error: {msg}");
        assert!(matches!(e, StoreError::Unavailable { .. }), "{msg}");
        for ep in &c.endpoints {
            assert!(msg.contains(ep.as_str()), "{msg} should name {ep}");
        }
    }

    // A store connected before etcd went away: every call fails within the timeout.
    let t = Instant::now();
    let e = store.list(None).await.unwrap_err();
    assert!(
        t.elapsed() < cfg.timeout + Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains(&etcd.endpoint()), "{e}");
    eprintln!("list error: {e}");
    let t = Instant::now();
    let e = store
        .write(&[group("b")], WriteMode::Apply, None, false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
    assert!(
        t.elapsed() < cfg.timeout + Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    // And it works again once etcd is back.
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.list(None).await {
            Ok(l) => {
                assert_eq!(l.resources.len(), 1);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    }
}

#[tokio::test]
async fn undecodable_values_are_reported() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store
        .write(&[group("good")], WriteMode::Create, None, false)
        .await
        .unwrap();
    let mut c = store.client();
    let bad = resource_key(Kind::Group, "bad");
    let misplaced = resource_key(Kind::Group, "elsewhere");
    let unknown_field = resource_key(Kind::Group, "odd");
    c.put(bad.as_str(), "{not json", None).await.unwrap();
    c.put(misplaced.as_str(), group("good").to_json().to_string(), None)
        .await
        .unwrap();
    let mut odd = group("odd").to_json();
    odd["spec"]["color"] = json!("red");
    c.put(unknown_field.as_str(), odd.to_string(), None).await.unwrap();

    let l = store.list(None).await.unwrap();
    assert_eq!(l.resources.iter().map(Resource::id).collect::<Vec<_>>(), ["Group/good"]);
    let keys: Vec<&str> = l.invalid.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, [bad.as_str(), misplaced.as_str(), unknown_field.as_str()]);
    assert!(l.invalid[2].1.contains("color"), "{:?}", l.invalid[2]);

    for key in [&bad, &misplaced, &unknown_field] {
        let (value, rev) = raw(&store, key).await.unwrap();
        let e = decode_resource(key, &value, rev).unwrap_err();
        assert!(matches!(&e, StoreError::Invalid { key: k, .. } if k == key), "{e}");
    }
    assert!(matches!(
        store.get(Kind::Group, "bad").await,
        Err(StoreError::Invalid { .. })
    ));
    // Applying a good value over a bad one repairs it.
    let out = store
        .write(&[group("bad")], WriteMode::Apply, None, false)
        .await
        .unwrap();
    assert_eq!(out[0].change, Change::Updated);
}

#[tokio::test]
async fn json_values() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let rev = store.put_json("status/nodes/a", &json!({"up": true})).await.unwrap();
    assert!(rev > 0);
    store.put_json("status/nodes/b", &json!({"up": false})).await.unwrap();
    store
        .client()
        .put("/calico/v1/status/nodes/c", "garbage", None)
        .await
        .unwrap();
    let v: Option<serde_json::Value> = store.get_json("status/nodes/a").await.unwrap();
    assert_eq!(v, Some(json!({"up": true})));
    let none: Option<serde_json::Value> = store.get_json("status/nodes/zz").await.unwrap();
    assert!(none.is_none());
    assert!(matches!(
        store.get_json::<serde_json::Value>("status/nodes/c").await,
        Err(StoreError::Invalid { .. })
    ));

    let all = store.list_json::<serde_json::Value>("status/nodes/").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["status/nodes/a", "status/nodes/b", "status/nodes/c"]);
    assert_eq!(all[1].1.as_ref().unwrap(), &json!({"up": false}));
    assert!(all[2].1.is_err());

    store.delete_json("status/nodes/a").await.unwrap();
    store.delete_json("status/nodes/a").await.unwrap();
    assert_eq!(
        store
            .list_json::<serde_json::Value>("status/nodes/")
            .await
            .unwrap()
            .len(),
        2
    );
    // Status values are not resources: a resource listing does not see them.
    assert!(store.list(None).await.unwrap().resources.is_empty());
}

/// etcd's own count of open watchers, from its metrics endpoint.
fn etcd_watchers(etcd: &TestEtcd) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", etcd.endpoint())])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .map(|v| v.trim().parse::<f64>().expect("a number") as u64)
        .expect("etcd_debugging_mvcc_watcher_total in etcd's metrics")
}

#[tokio::test]
async fn dropping_a_watch_stops_it() {
    fn stream_like<T: futures::Stream<Item = WatchEvent> + Unpin + Send>(_: &T) {}
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let mut w = store.watch(RESOURCES_PREFIX, 0);
    stream_like(&w);
    assert!(matches!(next_event(&mut w).await, WatchEvent::Resync { .. }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcd_watchers(&etcd) != 1 {
        assert!(Instant::now() < deadline, "etcd never counted the watcher");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(w);
    while etcd_watchers(&etcd) != 0 {
        assert!(
            Instant::now() < deadline,
            "the watch is still open in etcd after the stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_resource_name_with_a_slash_is_refused() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let mut bad = group("x");
    bad.metadata_mut().name = "a/b".into();
    let e = store.write(&[bad], WriteMode::Apply, None, false).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
}
