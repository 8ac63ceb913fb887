//! Drift: owned resources changed or deleted in etcd behind the sync's back are restored
//! on the next interval, each drift reported in the log and counted in the status; while
//! a later revision is refused, the last good one is still what gets restored.

mod sync_support;

use std::time::Duration;

use calico_schema::Kind;
use sync_support::*;

#[test]
fn changes_behind_the_syncs_back_are_restored_and_reported() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("nodes.yaml"), node("host-a", "1")).unwrap();
    std::fs::write(
        dir.join("groups.yaml"),
        docs(&[group("g1", "1"), group("g2", "1"), group("g3", "1")]),
    )
    .unwrap();
    std::fs::write(dir.join("web.yaml"), container("web", "host-a", &["g1"], "1")).unwrap();
    let sync = Proc::spawn(
        "sync",
        &ep,
        &[
            "sync",
            "--dir",
            dir.to_str().unwrap(),
            "--id",
            "drift",
            "--interval",
            "700ms",
        ],
    );
    let owner = "sync:drift";
    assert!(wait_for(Duration::from_secs(10), || (db.owned(owner).len() == 5).then_some(())).is_some());
    let applied = db.owned(owner);
    // Quiet while nothing changes: no writes on the intervals.
    let versions = db.versions();
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(db.versions(), versions, "an idle sync writes nothing");
    assert_eq!(db.status("drift").unwrap()["driftsCorrected"], 0);

    // Behind its back: a spec edited directly in etcd, a Group deleted, a label changed
    // by a forced apply, and the owner annotation stripped from a Container.
    db.put_yaml(
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: g1\n  labels: {rev: \"1\"}\n  annotations: {calico/owner: 'sync:drift', calico/source: groups.yaml}\nspec:\n  egress: []\n",
    );
    db.delete(Kind::Group, "g2");
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), group("g3", "edited")).unwrap();
    let r = ctl(&ep, &["apply", "--force", "-f", f.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{r:?}");
    db.put_yaml(&container("web", "host-a", &[], "1"));

    // Restored within the next interval (plus a pass).
    let restored = wait_for(Duration::from_secs(3), || {
        let now = db.owned(owner);
        let same = applied
            .iter()
            .all(|(id, r)| now.get(id).is_some_and(|n| n.without_version() == r.without_version()));
        (same && now.len() == applied.len()).then_some(())
    });
    assert!(restored.is_some(), "not restored: {:#?}", db.owned(owner));

    let st = wait_for(Duration::from_secs(2), || {
        db.status("drift").filter(|s| s["driftsCorrected"] == 4)
    })
    .unwrap_or_else(|| panic!("status: {:?}", db.status("drift")));
    let mut drifts: Vec<(String, String, String)> = st["drifts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["change"].as_str().unwrap().to_string(),
                d["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    drifts.sort();
    assert_eq!(
        drifts,
        [
            ("Container/web".into(), "changed".into(), "web.yaml".into()),
            ("Group/g1".into(), "changed".into(), "groups.yaml".into()),
            ("Group/g2".into(), "deleted".into(), "groups.yaml".into()),
            ("Group/g3".into(), "changed".into(), "groups.yaml".into()),
        ]
    );
    let log = sync.log();
    assert!(
        log.contains("drift: Group/g2 was deleted in etcd behind the sync's back; recreated"),
        "{log}"
    );
    assert!(
        log.contains("drift: Group/g1 was changed in etcd behind the sync's back; restored"),
        "{log}"
    );
    let text = ctl(&ep, &["sync", "status", "--id", "drift"]);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.strip_prefix("Drifts corrected:").is_some_and(|v| v.trim() == "4")),
        "{}",
        text.stdout
    );

    // A refused revision keeps the last good one live, drift included.
    std::fs::write(
        dir.join("groups.yaml"),
        "apiVersion: calico/v1\nkind: Group\nmetadata: {name: g1}\nspec: {bogus: 1}\n",
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(3), || db
        .status("drift")
        .filter(|s| s.get("lastError").is_some()))
    .is_some());
    db.delete(Kind::Group, "g3");
    assert!(
        wait_for(Duration::from_secs(3), || db.get(Kind::Group, "g3")).is_some(),
        "g3 restored from the last good revision"
    );
    assert!(wait_for(Duration::from_secs(2), || db
        .status("drift")
        .filter(|s| s["driftsCorrected"] == 5))
    .is_some());
    // After all that, an idle sync is quiet again.
    let versions = db.versions();
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(db.versions(), versions);
}
