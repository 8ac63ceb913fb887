//! Scoped reads: only the named resources and kinds, and a guard that fails exactly
//! when one of them changed.

use calico_schema::{Kind, Resource};
use calico_store::testing::TestEtcd;
use calico_store::{Changes, Step, Store, StoreConfig, WriteMode, SCOPE_MAX_READS};
use serde_json::json;

fn group(name: &str, tag: &str) -> Resource {
    Resource::from_json(json!({"apiVersion": "calico/v1", "kind": "Group",
        "metadata": {"name": name, "labels": {"tag": tag}}, "spec": {}}))
    .unwrap()
}

fn pool(name: &str, cidr: &str) -> Resource {
    Resource::from_json(json!({"apiVersion": "calico/v1", "kind": "IPPool",
        "metadata": {"name": name}, "spec": {"cidr": cidr}}))
    .unwrap()
}

async fn connect(etcd: &TestEtcd) -> Store {
    Store::connect(&StoreConfig::new(vec![etcd.endpoint()])).await.unwrap()
}

async fn put(store: &Store, r: Resource) {
    store.write(&[r], WriteMode::Apply, None, false).await.unwrap();
}

/// Commits `r` guarded by `scope` the way `transact` does; whether the guard failed
/// (the step ran again, and then wrote nothing).
async fn guard_failed(store: &Store, r: Resource, scope: Option<calico_store::Scope>, rev: i64) -> bool {
    let mut runs = 0;
    store
        .transact("testing", async || -> Result<Step<()>, ()> {
            runs += 1;
            if runs > 1 {
                return Ok(Step::Done(()));
            }
            Ok(Step::Commit(
                Changes::write(vec![r.clone()], WriteMode::Apply, Some(rev)).scoped(scope.clone()),
                (),
            ))
        })
        .await
        .unwrap()
        .unwrap();
    runs > 1
}

#[tokio::test]
async fn a_scoped_read_returns_what_was_named_and_guards_only_that() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    for n in ["a", "b", "c"] {
        put(&store, group(n, "1")).await;
    }
    put(&store, pool("p1", "10.1.0.0/16")).await;

    let keys = [(Kind::Group, "a".to_string()), (Kind::Group, "missing".to_string())];
    let (listing, scope) = store.read_scope(keys.clone(), [Kind::IPPool]).await.unwrap();
    let ids: Vec<String> = listing.resources.iter().map(Resource::id).collect();
    assert_eq!(ids, ["IPPool/p1", "Group/a"], "in kind rank order, as list gives them");
    let scope = scope.expect("a small read is scoped");
    assert_eq!(scope.keys.len(), 2);
    assert!(scope.keys.iter().any(|(k, rev)| k.ends_with("/missing") && *rev == 0));

    // An unrelated write does not fail the guard: the commit goes through at once.
    put(&store, group("b", "2")).await;
    let mut tries = 0;
    store
        .transact("testing", async || -> Result<Step<()>, ()> {
            tries += 1;
            let (l, s) = if tries == 1 {
                (listing.clone(), Some(scope.clone()))
            } else {
                store.read_scope(keys.clone(), [Kind::IPPool]).await.unwrap()
            };
            Ok(Step::Commit(
                Changes::write(vec![group("a", "3")], WriteMode::Apply, Some(l.revision)).scoped(s),
                (),
            ))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tries, 1, "an unrelated write made the scoped guard fail");

    // A read key changed, a missing one created, a kind member added or deleted: each fails it.
    let fresh = || async { store.read_scope(keys.clone(), [Kind::IPPool]).await.unwrap() };
    for change in 0..4 {
        let (l, s) = fresh().await;
        match change {
            0 => put(&store, group("a", "4")).await,
            1 => put(&store, group("missing", "4")).await,
            2 => put(&store, pool("p2", "10.2.0.0/16")).await,
            _ => {
                store
                    .delete(&[(Kind::IPPool, "p2".into(), None)], None, false)
                    .await
                    .unwrap();
            }
        }
        assert!(
            guard_failed(&store, group("a", "5"), s, l.revision).await,
            "change {change}"
        );
        if change == 1 {
            store
                .delete(&[(Kind::Group, "missing".into(), None)], None, false)
                .await
                .unwrap();
        }
    }

    // Too many reads: a full listing, guarded by its revision.
    let many = (0..=SCOPE_MAX_READS).map(|i| (Kind::Group, format!("g{i}")));
    let (all, scope) = store.read_scope(many, []).await.unwrap();
    assert!(scope.is_none());
    assert_eq!(all.resources.len(), 4);
}
