//! `Store::transact` against a real etcd: the read, decide, commit loop and its retries.

use calico_schema::{Kind, Resource};
use calico_store::testing::TestEtcd;
use calico_store::{Change, Changes, Step, Store, StoreConfig, StoreError, WriteMode, TRANSACT_ATTEMPTS};
use serde_json::json;

fn group(name: &str) -> Resource {
    Resource::from_json(json!({"apiVersion": "calico/v1", "kind": "Group", "metadata": {"name": name}, "spec": {}}))
        .unwrap()
}

async fn connect(etcd: &TestEtcd) -> Store {
    Store::connect(&StoreConfig::new(vec![etcd.endpoint()])).await.unwrap()
}

#[tokio::test]
async fn a_step_commits_and_returns_the_outcomes() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let done = store
        .transact("applying", async || -> Result<Step<&str>, StoreError> {
            let listing = store.list(None).await?;
            Ok(Step::Commit(
                Changes::write(vec![group("a")], WriteMode::Create, Some(listing.revision)),
                "written",
            ))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.value, "written");
    assert_eq!(done.outcomes.len(), 1);
    assert_eq!(done.outcomes[0].id, "Group/a");
    assert_eq!(done.outcomes[0].change, Change::Created);
    assert!(store.get(Kind::Group, "a").await.unwrap().is_some());

    // A dry run checks and writes nothing.
    let done = store
        .transact("deleting", async || -> Result<Step<()>, StoreError> {
            let listing = store.list(None).await?;
            let items = vec![(Kind::Group, "a".to_string(), None)];
            Ok(Step::Commit(
                Changes::delete(items, Some(listing.revision)).dry_run(true),
                (),
            ))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.outcomes[0].change, Change::Deleted);
    assert!(store.get(Kind::Group, "a").await.unwrap().is_some());
}

#[tokio::test]
async fn nothing_to_do_writes_nothing_and_a_refusal_is_the_steps_own_error() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let done = store
        .transact("applying", async || -> Result<Step<u32>, String> { Ok(Step::Done(7)) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.value, 7);
    assert!(done.outcomes.is_empty());
    assert!(store.list(None).await.unwrap().resources.is_empty());

    let refused = store
        .transact("applying", async || -> Result<Step<()>, String> {
            Err("no".to_string())
        })
        .await
        .unwrap();
    assert_eq!(refused.unwrap_err(), "no");
}

#[tokio::test]
async fn a_stale_read_runs_the_step_again() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let mut runs = 0;
    let done = store
        .transact("applying", async || -> Result<Step<u32>, StoreError> {
            runs += 1;
            let listing = store.list(None).await?;
            if runs == 1 {
                // Another writer lands between this step's read and its commit.
                store.write(&[group("other")], WriteMode::Apply, None, false).await?;
            }
            Ok(Step::Commit(
                Changes::write(vec![group("mine")], WriteMode::Apply, Some(listing.revision)),
                runs,
            ))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.value, 2);
    assert_eq!(runs, 2);
    assert_eq!(done.outcomes[0].change, Change::Created);
    assert_eq!(store.list(None).await.unwrap().resources.len(), 2);
}

#[tokio::test]
async fn a_store_that_keeps_changing_gives_up_after_the_attempts() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    let mut runs = 0u32;
    let err = store
        .transact("applying", async || -> Result<Step<()>, StoreError> {
            runs += 1;
            let listing = store.list(None).await?;
            store
                .write(&[group(&format!("other{runs}"))], WriteMode::Apply, None, false)
                .await?;
            Ok(Step::Commit(
                Changes::write(vec![group("mine")], WriteMode::Apply, Some(listing.revision)),
                (),
            ))
        })
        .await
        .unwrap_err();
    assert_eq!(runs, TRANSACT_ATTEMPTS);
    assert!(matches!(err, StoreError::KeptChanging { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("etcd kept changing while applying: gave up after {TRANSACT_ATTEMPTS} attempts; try again")
    );
    assert!(store.get(Kind::Group, "mine").await.unwrap().is_none());

    // `Again` counts as an attempt too.
    let mut runs = 0u32;
    let err = store
        .transact("removing the group", async || -> Result<Step<()>, StoreError> {
            runs += 1;
            Ok(Step::Again)
        })
        .await
        .unwrap_err();
    assert_eq!(runs, TRANSACT_ATTEMPTS);
    assert!(err.to_string().contains("while removing the group"), "{err}");
}

#[tokio::test]
async fn a_commit_that_fails_otherwise_is_the_stores_error() {
    let etcd = TestEtcd::start();
    let store = connect(&etcd).await;
    store.write(&[group("a")], WriteMode::Apply, None, false).await.unwrap();
    let mut runs = 0;
    let err = store
        .transact("creating", async || -> Result<Step<()>, StoreError> {
            runs += 1;
            let listing = store.list(None).await?;
            Ok(Step::Commit(
                Changes::write(vec![group("a")], WriteMode::Create, Some(listing.revision)),
                (),
            ))
        })
        .await
        .unwrap_err();
    assert_eq!(runs, 1);
    assert!(
        matches!(&err, StoreError::Conflict { id, .. } if id == "Group/a"),
        "{err:?}"
    );
}
