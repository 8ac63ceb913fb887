//! Hostile input (docs/security.md): a "billion laughs" YAML file, an oversized file,
//! and a symlink out of a sync directory are refused with a located error, quickly and
//! without reading or expanding them; a running sync reports a hostile commit like any
//! invalid revision, keeps the last good state live, stays up, and applies the next
//! good commit.

mod sync_support;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use calico_schema::Kind;
use sync_support::*;

/// Nine levels of nine aliases: 9^9 (387 million) nodes if expanded; a few hundred
/// bytes of text.
fn billion_laughs() -> String {
    let mut t = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..=9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        t.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    t
}

#[test]
fn validate_refuses_alias_bombs_and_huge_files_quickly() {
    let d = tempfile::tempdir().unwrap();
    let laughs = d.path().join("laughs.yaml");
    std::fs::write(&laughs, billion_laughs()).unwrap();
    let started = Instant::now();
    let r = ctl("127.0.0.1:1", &["validate", "-f", laughs.to_str().unwrap()]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("laughs.yaml:7:"), "{r:?}");
    assert!(r.stderr.contains("grows past 200000 nodes at this alias"), "{r:?}");

    // The same on standard input.
    let mut child = std::process::Command::new(BIN)
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(billion_laughs().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(":7:") && stderr.contains("alias"), "{stderr}");

    // A 17 MiB file is refused by its size, before it is read.
    let big = d.path().join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(17 * 1024 * 1024).unwrap();
    let r = ctl("127.0.0.1:1", &["validate", "-f", big.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("big.yaml") && r.stderr.contains("at most 16777216"),
        "{r:?}"
    );
}

#[test]
fn sync_survives_a_hostile_commit_and_never_reads_outside_its_directory() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("repo");
    std::fs::create_dir(&dir).unwrap();
    // A secret outside the directory, which a symlink inside it points to.
    let secret = d.path().join("secret.yaml");
    std::fs::write(&secret, "kind: Group\nmetadata: {name: SECRET-CONTENT}\n").unwrap();
    std::fs::write(dir.join("good.yaml"), docs(&[group("g1", "1")])).unwrap();

    let mut sync = Proc::spawn(
        "sync",
        &ep,
        &["sync", "--dir", dir.to_str().unwrap(), "--id", "t", "--interval", "1s"],
    );
    wait_for(Duration::from_secs(10), || db.get(Kind::Group, "g1")).expect("first revision applied");
    let before = db.versions();

    // The hostile commit: an alias bomb and a symlink out of the directory, beside a
    // valid new document. Nothing of it is applied.
    std::fs::write(dir.join("laughs.yaml"), billion_laughs()).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("link.yaml")).unwrap();
    std::fs::write(dir.join("more.yaml"), docs(&[group("g2", "1")])).unwrap();
    let status = wait_for(Duration::from_secs(10), || {
        db.status("t")
            .filter(|s| s["lastError"].to_string().contains("link.yaml"))
    })
    .unwrap_or_else(|| panic!("no error reported; status {:?}\n{}", db.status("t"), sync.log()));
    let err = status["lastError"].to_string();
    assert!(err.contains("outside the sync directory"), "{err}");
    assert!(err.contains("laughs.yaml:7:"), "{err}");
    assert!(!err.contains("SECRET-CONTENT"), "{err}");
    assert!(!sync.log().contains("SECRET-CONTENT"));
    assert!(sync.alive(), "the sync died: {}", sync.log());
    assert_eq!(db.versions(), before, "nothing of the hostile revision was applied");

    // The next good commit applies.
    std::fs::remove_file(dir.join("laughs.yaml")).unwrap();
    std::fs::remove_file(dir.join("link.yaml")).unwrap();
    wait_for(Duration::from_secs(10), || db.get(Kind::Group, "g2")).expect("good revision applied");
    assert!(sync.alive());

    // --once says the same with its exit code.
    std::os::unix::fs::symlink(&secret, dir.join("link.yaml")).unwrap();
    let r = ctl(&ep, &["sync", "--once", "--dir", dir.to_str().unwrap(), "--id", "t"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("outside the sync directory"), "{r:?}");
    assert!(!r.stderr.contains("SECRET-CONTENT"), "{r:?}");
}

/// The master's sync (the leader runs it) meets a hostile git commit: an alias bomb, a
/// committed symlink to /etc/shadow and a symlink loop. It is reported like any
/// invalid revision, the last good state stays, the master keeps leading, and the next
/// good commit applies.
#[test]
fn the_master_survives_a_hostile_commit() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    let mut repo = Repo::new();
    let c1 = repo.commit(&[("g.yaml", Some(&docs(&[group("g1", "1")])))], "good");
    repo.publish(&c1);
    let current = repo.current();
    let mut master = Proc::spawn(
        "master",
        &ep,
        &[
            "master",
            "--ip",
            "127.0.0.1",
            "--name",
            "m1",
            "--sync-dir",
            current.to_str().unwrap(),
            "--sync-id",
            "hm",
            "--sync-interval",
            "500ms",
        ],
    );
    wait_for(Duration::from_secs(15), || db.get(Kind::Group, "g1"))
        .unwrap_or_else(|| panic!("first revision not applied:\n{}", master.log()));
    let before = db.versions();

    std::os::unix::fs::symlink("/etc/shadow", repo.work.join("shadow.yaml")).unwrap();
    std::os::unix::fs::symlink(".", repo.work.join("loop")).unwrap();
    let laughs = billion_laughs();
    let more = docs(&[group("g2", "1")]);
    let c2 = repo.commit(&[("laughs.yaml", Some(&laughs)), ("more.yaml", Some(&more))], "hostile");
    repo.publish(&c2);
    let status = wait_for(Duration::from_secs(15), || {
        db.status("hm")
            .filter(|s| s["lastError"].to_string().contains("shadow.yaml"))
    })
    .unwrap_or_else(|| panic!("no error reported; status {:?}\n{}", db.status("hm"), master.log()));
    let err = status["lastError"].to_string();
    assert!(
        err.contains("a symlink to /etc/shadow, outside the sync directory"),
        "{err}"
    );
    assert!(err.contains("laughs.yaml:7:"), "{err}");
    assert!(!err.contains("root:"), "shadow's content in the report: {err}");
    assert!(master.alive(), "the master died: {}", master.log());
    assert_eq!(db.versions(), before, "nothing of the hostile revision was applied");
    assert!(db.get(Kind::Group, "g2").is_none());

    // Still the leader, still syncing: the next good commit applies.
    std::fs::remove_file(repo.work.join("shadow.yaml")).unwrap();
    std::fs::remove_file(repo.work.join("loop")).unwrap();
    let c3 = repo.commit(&[("laughs.yaml", None)], "fixed");
    repo.publish(&c3);
    wait_for(Duration::from_secs(15), || db.get(Kind::Group, "g2"))
        .unwrap_or_else(|| panic!("good revision not applied:\n{}", master.log()));
    assert!(master.alive());
}

/// Every command that takes `-f DIR` reads the directory as the sync does: a symlink out
/// of it (to a file, to a directory) is refused, naming the path and where it points, and
/// nothing is applied; links inside it (a git-sync style `current -> .rev1`, a file
/// link to a dot-file inside) are followed; `-f FILE` naming a link is read (it was
/// named).
#[test]
fn every_f_dir_command_refuses_a_symlink_out_of_the_directory() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("repo");
    std::fs::create_dir_all(dir.join(".rev1")).unwrap();
    std::fs::write(
        dir.join(".rev1/nodes.yaml"),
        docs(&[
            node("n1", "1"),
            container("w1", "n1", &["g1"], "1"),
            container("w2", "n1", &["g1"], "1"),
        ]),
    )
    .unwrap();
    std::fs::write(dir.join(".rev1/g1.txt"), group("g1", "1")).unwrap();
    std::os::unix::fs::symlink(".rev1", dir.join("current")).unwrap();
    std::os::unix::fs::symlink(".rev1/g1.txt", dir.join("g1.yaml")).unwrap();
    let secret = d.path().join("secret.yaml");
    std::fs::write(&secret, group("secret-content", "1")).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("link.yaml")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
    let ds = dir.to_str().unwrap();

    let file_refusal = format!(
        "{ds}/link.yaml: a symlink to {}, outside the directory {ds}; refused, not read",
        secret.display()
    );
    let dir_refusal =
        format!("{ds}/etc: a symlink to the directory /etc, outside the directory {ds}; refused, not read");
    let commands: Vec<Vec<&str>> = vec![
        vec!["apply", "-f", ds],
        vec!["create", "-f", ds],
        vec!["replace", "-f", ds],
        vec!["apply", "--dry-run", "-f", ds],
        vec!["diff", "-f", ds],
        vec!["delete", "-f", ds],
        vec!["validate", "-f", ds],
        vec!["render", "--node", "n1", "-f", ds],
        vec!["explain", "w1", "w2", "-f", ds],
        vec!["reach", "-f", ds],
    ];
    for args in &commands {
        let r = ctl(&ep, args);
        // diff, explain and reach exit 2 for trouble (1 is their answer: differences, a
        // drop, a disagreement).
        let code = if ["diff", "explain", "reach"].contains(&args[0]) {
            2
        } else {
            1
        };
        assert_eq!(r.code, Some(code), "{args:?}: {r:?}");
        assert!(r.stderr.contains(&file_refusal), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(&dir_refusal), "{args:?}: {}", r.stderr);
        assert!(
            !r.stderr.contains("secret-content") && !r.stdout.contains("secret-content"),
            "{args:?}: {r:?}"
        );
    }
    assert!(db.list().is_empty(), "nothing applied: {:?}", db.list());

    // Without the links out, the links inside are followed.
    std::fs::remove_file(dir.join("link.yaml")).unwrap();
    std::fs::remove_file(dir.join("etc")).unwrap();
    for args in [["validate", "-f", ds], ["apply", "-f", ds]] {
        let r = ctl(&ep, &args);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
    }
    for (kind, name) in [(Kind::Group, "g1"), (Kind::Node, "n1"), (Kind::Container, "w2")] {
        assert!(db.get(kind, name).is_some(), "{name} applied");
    }
    // A symlink named with -f FILE is the user's choice: read wherever it leads.
    std::os::unix::fs::symlink(&secret, d.path().join("named.yaml")).unwrap();
    let r = ctl(&ep, &["validate", "-f", d.path().join("named.yaml").to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{r:?}");
}
