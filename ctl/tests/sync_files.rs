//! Files being written while the sync watches: an editor-style save (write a temp file,
//! rename it over) and a slow or stalled writer never lead to a partial apply. An
//! observer polls etcd throughout and every state it sees must be one whole revision.

mod sync_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sync_support::*;

type State = BTreeMap<String, String>;

fn state(db: &Db, owner: &str) -> State {
    db.owned(owner)
        .into_iter()
        .map(|(id, r)| (id, rev_of(&r).unwrap_or("").to_string()))
        .collect()
}

fn full(rev_a: &str, with_g3: bool) -> State {
    let mut s: State = [("Group/g1", rev_a), ("Group/g2", rev_a), ("Group/h1", "1")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    if with_g3 {
        s.insert("Group/g3".into(), rev_a.into());
    }
    s
}

/// Records every distinct state of the owned resources until stopped.
struct Observer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<State>>>,
}

impl Observer {
    fn start(endpoint: &str, owner: &str) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ep, owner) = (stop.clone(), endpoint.to_string(), owner.to_string());
        let thread = std::thread::spawn(move || {
            let db = Db::connect(&ep);
            let mut seen: Vec<State> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let st = state(&db, &owner);
                if seen.last() != Some(&st) {
                    seen.push(st);
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            seen
        });
        Observer {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<State> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("observer")
    }
}

#[test]
fn editor_saves_and_half_written_files_never_apply_partially() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("conf");
    std::fs::create_dir(&dir).unwrap();
    let a = dir.join("a.yaml");
    std::fs::write(&a, docs(&[group("g1", "1"), group("g2", "1")])).unwrap();
    std::fs::write(dir.join("b.yaml"), group("h1", "1")).unwrap();

    // --prune makes any partial read dangerous: a truncated a.yaml would delete groups.
    let sync = Proc::spawn(
        "sync",
        &ep,
        &[
            "sync",
            "--dir",
            dir.to_str().unwrap(),
            "--id",
            "files",
            "--prune",
            "--interval",
            "60s",
        ],
    );
    let owner = "sync:files";
    assert!(
        wait_for(Duration::from_secs(10), || (state(&db, owner) == full("1", false))
            .then_some(()))
        .is_some()
    );
    let obs = Observer::start(&ep, owner);

    // 1. Editor-style save: a dot temp file (skipped by the sync), renamed over the file.
    let tmp = dir.join(".a.yaml.tmp");
    std::fs::write(&tmp, docs(&[group("g1", "2"), group("g2", "2"), group("g3", "2")])).unwrap();
    std::fs::rename(&tmp, &a).unwrap();
    // Editors' other leftovers are not YAML files to the sync.
    std::fs::write(dir.join("a.yaml~"), "garbage: [").unwrap();
    std::fs::write(dir.join("#a.yaml#"), "garbage: [").unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || (state(&db, owner) == full("2", true))
            .then_some(()))
        .is_some(),
        "{:?}",
        state(&db, owner)
    );

    // 2. A slow writer: the file is truncated, then written in pieces with pauses shorter
    //    than the debounce. Empty, one-document and cut-in-the-middle states all exist on
    //    disk for a while; none may be applied.
    let text = docs(&[group("g1", "3"), group("g2", "3"), group("g3", "3")]);
    {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&a).unwrap();
        let bytes = text.as_bytes();
        // Empty, then cut at each document boundary (each a valid file on its own that
        // would prune the missing groups), then in the middle of a line.
        let mut cuts = vec![0];
        cuts.extend(text.match_indices("---\n").map(|(i, _)| i));
        cuts.push(bytes.len() - 10);
        cuts.push(bytes.len());
        std::thread::sleep(Duration::from_millis(60));
        for w in cuts.windows(2) {
            f.write_all(&bytes[w[0]..w[1]]).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    assert!(
        wait_for(Duration::from_secs(2), || (state(&db, owner) == full("3", true))
            .then_some(()))
        .is_some(),
        "{:?}",
        state(&db, owner)
    );

    // 3. A stalled writer: half a document, then a long pause. It is read, refused
    //    (located), and revision 3 stays live; once the rest is written, it applies.
    let text4 = docs(&[group("g1", "4"), group("g2", "4"), group("g3", "4")]);
    let half = "apiVersion: calico/v1\nkind: Gro";
    assert!(text4.starts_with("apiVersion: calico/v1\nkind: Gro"));
    {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&a).unwrap();
        f.write_all(half.as_bytes()).unwrap();
        f.flush().unwrap();
        let st = wait_for(Duration::from_secs(3), || {
            db.status("files").filter(|s| s.get("lastError").is_some())
        })
        .expect("the half-written file is reported");
        let err = st["lastError"]["errors"][0].as_str().unwrap().to_string();
        assert!(err.starts_with("a.yaml:2:7: kind: unknown kind 'Gro'"), "{err}");
        assert_eq!(state(&db, owner), full("3", true));
        f.write_all(&text4.as_bytes()[half.len()..]).unwrap();
        f.flush().unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(2), || (state(&db, owner) == full("4", true))
            .then_some(()))
        .is_some(),
        "{:?}",
        state(&db, owner)
    );
    let st = wait_for(Duration::from_secs(2), || {
        db.status("files").filter(|s| s.get("lastError").is_none())
    })
    .expect("the error clears");
    assert_eq!(st["resources"], 4);

    let seen = obs.finish();
    let allowed = [full("2", true), full("3", true), full("4", true), full("1", false)];
    for s in &seen {
        assert!(
            allowed.contains(s),
            "a partial state was live: {s:?}\nall seen: {seen:#?}\n{}",
            sync.log()
        );
    }
    assert!(seen.len() >= 3, "{seen:#?}");
}
