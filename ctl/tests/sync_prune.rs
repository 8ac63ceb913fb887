//! Ownership: deleting a file prunes exactly the resources this sync owns from it with
//! --prune, and nothing without; Docker-owned Containers, imperatively made resources
//! and another sync's resources are never changed; imperative commands refuse to change
//! what a sync owns.

mod sync_support;

use std::time::Duration;

use calico_schema::Kind;
use sync_support::*;

const FOREIGN: &str = "apiVersion: calico/v1\nkind: Node\nmetadata: {name: host-a}\nspec: {}\n---\n\
apiVersion: calico/v1\nkind: Group\nmetadata: {name: imperative}\nspec: {}\n---\n\
apiVersion: calico/v1\nkind: Container\nmetadata:\n  name: docker-web\n  annotations: {calico/owner: docker}\n\
spec: {node: host-a, container: web-1, groups: [imperative]}\n---\n\
apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: theirs\n  annotations: {calico/owner: 'sync:other', calico/source: theirs.yaml}\nspec: {}\n";

fn once(ep: &str, dir: &std::path::Path, extra: &[&str]) -> Run {
    let mut args = vec!["sync", "--once", "--dir", dir.to_str().unwrap(), "--id", "mine"];
    args.extend_from_slice(extra);
    ctl(ep, &args)
}

#[test]
fn deleting_a_file_prunes_exactly_its_owned_resources_and_only_with_prune() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    db.put_yaml(FOREIGN);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::create_dir(dir.join("apps")).unwrap();
    std::fs::write(dir.join("apps/a.yaml"), docs(&[group("a1", "1"), policy("a2", "1")])).unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        docs(&[group("b1", "1"), container("b2", "host-a", &["b1"], "1")]),
    )
    .unwrap();
    once(&ep, dir, &[])
        .code
        .eq(&Some(0))
        .then_some(())
        .expect("first apply");
    let owned: Vec<String> = db.owned("sync:mine").into_keys().collect();
    assert_eq!(owned, ["Container/b2", "Group/a1", "Group/b1", "Policy/a2"]);
    assert_eq!(source_of(&db.owned("sync:mine")["Policy/a2"]), Some("apps/a.yaml"));
    let before = db.versions();

    // The file goes. Without --prune: nothing is deleted, nothing rewritten; the status
    // lists what is orphaned.
    std::fs::remove_file(dir.join("apps/a.yaml")).unwrap();
    let r = once(&ep, dir, &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(db.versions(), before);
    let st = db.status("mine").unwrap();
    assert_eq!(st["orphaned"], serde_json::json!(["Group/a1", "Policy/a2"]), "{st}");
    assert_eq!(st["resources"], 2);

    // With --prune: exactly a1 and a2 go; every other resource keeps its version.
    let r = once(&ep, dir, &["--prune"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let mut expected = before.clone();
    expected.remove("Group/a1");
    expected.remove("Policy/a2");
    assert_eq!(db.versions(), expected);
    assert!(
        db.get(Kind::Container, "docker-web").is_some(),
        "Docker's Container survives"
    );
    assert!(db.status("mine").unwrap().get("orphaned").is_none());

    // A running sync with --prune does the same as soon as a file is deleted.
    let _sync = Proc::spawn(
        "sync",
        &ep,
        &[
            "sync",
            "--dir",
            dir.to_str().unwrap(),
            "--id",
            "mine",
            "--prune",
            "--interval",
            "60s",
        ],
    );
    std::fs::write(dir.join("c.yaml"), group("c1", "1")).unwrap();
    assert!(wait_for(Duration::from_secs(5), || db.get(Kind::Group, "c1")).is_some());
    let before = db.versions();
    std::fs::remove_file(dir.join("c.yaml")).unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || db
            .get(Kind::Group, "c1")
            .is_none()
            .then_some(()))
        .is_some(),
        "c1 pruned"
    );
    let mut expected = before;
    expected.remove("Group/c1");
    assert_eq!(db.versions(), expected);
}

#[test]
fn never_takes_over_what_it_does_not_own() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    db.put_yaml(FOREIGN);
    let before = db.versions();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // One good document and three that name resources owned by others.
    std::fs::write(dir.join("ok.yaml"), group("fine", "1")).unwrap();
    std::fs::write(
        dir.join("clash.yaml"),
        docs(&[
            container("docker-web", "host-a", &[], "1"),
            group("theirs", "1"),
            group("imperative", "1"),
        ]),
    )
    .unwrap();
    let r = once(&ep, dir, &["--prune"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stderr);
    assert!(
        lines[0].starts_with(
            "error: clash.yaml:4:9: metadata.name: Container/docker-web already exists and is owned by Docker"
        ),
        "{}",
        r.stderr
    );
    assert!(
        lines[1].contains(
            "Group/theirs already exists and is owned by another sync directory (sync 'other', file theirs.yaml)"
        ),
        "{}",
        r.stderr
    );
    assert!(
        lines[2].contains("Group/imperative already exists and was created outside this sync"),
        "{}",
        r.stderr
    );
    assert!(lines[2].contains("--adopt"), "{}", r.stderr);
    assert_eq!(db.versions(), before, "nothing applied, not even ok.yaml");

    // --adopt takes over the unowned one only: Docker's and the other sync's stay refused.
    let r = once(&ep, dir, &["--adopt"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 2, "{}", r.stderr);
    std::fs::write(dir.join("clash.yaml"), group("imperative", "1")).unwrap();
    let r = once(&ep, dir, &["--adopt"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let g = db.get(Kind::Group, "imperative").unwrap();
    assert_eq!(source_of(&g), Some("clash.yaml"));
    assert_eq!(rev_of(&g), Some("1"));
}

#[test]
fn imperative_commands_refuse_to_change_sync_owned_resources() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    db.put_yaml(FOREIGN);
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    std::fs::write(d.path().join("sub/web.yaml"), group("web", "1")).unwrap();
    assert_eq!(once(&ep, d.path(), &[]).code, Some(0));
    let before = db.versions();

    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), group("web", "9")).unwrap();
    let file = f.path().to_str().unwrap();
    for args in [
        vec!["apply", "-f", file],
        vec!["replace", "-f", file],
        vec!["delete", "group", "web"],
        vec!["removegroup", "web"],
    ] {
        let r = ctl(&ep, &args);
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("owned by a sync directory (file sub/web.yaml)"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert_eq!(db.versions(), before);
    // diff follows apply's rules: refused the same way (diff's error exit is 2), and with
    // --force it shows what apply --force would write (the ownership annotations kept).
    let r = ctl(&ep, &["diff", "-f", file]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("owned by a sync directory (file sub/web.yaml)"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let r = ctl(&ep, &["diff", "--force", "-f", file]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("+"), "{}", r.stdout);
    let changed: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---"))
        .collect();
    assert!(
        !changed
            .iter()
            .any(|l| l.contains("calico/owner") || l.contains("calico/source")),
        "diff --force shows the ownership annotations going away: {}",
        r.stdout
    );
    assert!(!changed.is_empty(), "{}", r.stdout);
    assert_eq!(db.versions(), before);
    // The backup round trip writes everything back as it is: nothing is refused, nothing
    // changes; diff agrees.
    let dump0 = ctl(&ep, &["get", "all", "-o", "yaml"]);
    let backup0 = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(backup0.path(), &dump0.stdout).unwrap();
    let r = ctl(&ep, &["diff", "-f", backup0.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let dump = ctl(&ep, &["get", "all", "-o", "yaml"]);
    let backup = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(dump.code, Some(0), "{dump:?}");
    std::fs::write(backup.path(), &dump.stdout).unwrap();
    let r = ctl(&ep, &["apply", "-f", backup.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("Group/web unchanged"), "{}", r.stdout);
    assert_eq!(db.versions(), before);
    // --force overrides; the next sync pass then reports and restores it (drift).
    let r = ctl(&ep, &["apply", "--force", "-f", file]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(rev_of(&db.get(Kind::Group, "web").unwrap()), Some("9"));
    assert_eq!(once(&ep, d.path(), &[]).code, Some(0));
    let g = db.get(Kind::Group, "web").unwrap();
    assert_eq!(rev_of(&g), Some("1"));
    assert_eq!(source_of(&g), Some("sub/web.yaml"));
}
