//! `calicoctl apply` of more resources than one etcd transaction holds, against an etcd
//! at its default limits: it succeeds, `get` sees none or all of it, and a writer
//! killed mid-write leaves the old state, which the next apply restores and builds on.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{command, ctl, TestEtcd};

const N: usize = 10_000;

fn containers_yaml(n: usize, tag: &str) -> String {
    let mut s =
        String::from("apiVersion: calico/v1\nkind: Node\nmetadata: {name: host-a}\nspec: {ipv4: 10.0.0.1/24}\n");
    for i in 0..n {
        s.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Container\nmetadata: {{name: c{i:05}, labels: {{tag: {tag}}}}}\nspec: {{node: host-a, container: c{i:05}}}\n"
        ));
    }
    s
}

/// What `calicoctl get container -o json` shows: how many Containers carry each tag.
fn view(endpoint: &str) -> BTreeMap<String, usize> {
    let run = ctl(endpoint, &["get", "container", "-o", "json"]);
    run.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let mut out = BTreeMap::new();
    for item in v["items"].as_array().expect("items") {
        let tag = item["metadata"]["labels"]["tag"].as_str().unwrap_or("").to_string();
        *out.entry(tag).or_insert(0usize) += 1;
    }
    out
}

fn only(tag: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(tag.to_string(), n)])
}

/// How many Containers etcd holds with `tag`, read raw (not as readers see them).
fn raw_tagged(endpoint: &str, tag: &str) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let store = calico_store::Store::connect(&calico_store::StoreConfig::from_list(endpoint))
            .await
            .expect("connect");
        let (kvs, _) = store.dump("/calico/v1/resources/containers/").await.expect("dump");
        kvs.iter()
            .filter(|(_, v, _)| {
                serde_json::from_slice::<serde_json::Value>(v).is_ok_and(|v| v["metadata"]["labels"]["tag"] == tag)
            })
            .count()
    })
}

fn intent_present(endpoint: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let store = calico_store::Store::connect(&calico_store::StoreConfig::from_list(endpoint))
            .await
            .expect("connect");
        let (kvs, _) = store.dump(calico_store::INTENT_KEY).await.expect("dump");
        !kvs.is_empty()
    })
}

#[test]
fn an_apply_of_ten_thousand_is_one_change_to_concurrent_gets() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, containers_yaml(N, "a")).expect("write");

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (ep, stop) = (ep.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let v = view(&ep);
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
            seen
        })
    };
    let run = ctl(&ep, &["apply", "-f", file.to_str().expect("utf8")]);
    run.assert_ok();
    assert_eq!(run.stdout.lines().filter(|l| l.ends_with(" created")).count(), N + 1);
    // One more poll after the apply returned.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = poller.join().expect("poller");
    assert!(
        seen.iter().all(|v| v.is_empty() || *v == only("a", N)),
        "a get saw half the apply: {seen:?}"
    );
    assert!(seen.contains(&only("a", N)), "{seen:?}");
    assert_eq!(view(&ep), only("a", N));
}

#[test]
fn a_writer_killed_mid_apply_leaves_the_old_state_and_the_next_apply_restores_it() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, containers_yaml(N, "a")).expect("write");
    std::fs::write(&b, containers_yaml(N, "b")).expect("write");
    ctl(&ep, &["apply", "-f", a.to_str().expect("utf8")]).assert_ok();

    // The second apply stops after 20 pieces (2400 of its 10k writes), alive.
    let mut child = command(&ep, &["apply", "-f", b.to_str().expect("utf8")])
        .env(calico_store::PAUSE_ENV, "20")
        .spawn()
        .expect("spawn calicoctl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while raw_tagged(&ep, "b") < 20 * calico_store::PIECE_OPS {
        assert!(Instant::now() < deadline, "the paused apply never wrote its pieces");
        assert!(child.try_wait().expect("try_wait").is_none(), "the apply ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(intent_present(&ep));
    // Half of it is in etcd; readers see none of it.
    assert_eq!(view(&ep), only("a", N));

    child.kill().expect("SIGKILL calicoctl");
    child.wait().expect("reap");
    assert_eq!(view(&ep), only("a", N), "readers changed view when the writer died");
    assert!(raw_tagged(&ep, "b") >= 20 * calico_store::PIECE_OPS);

    // The next apply waits out the dead writer's lease, rolls it back, then writes.
    let one = dir.path().join("one.yaml");
    std::fs::write(
        &one,
        "apiVersion: calico/v1\nkind: Container\nmetadata: {name: late, labels: {tag: n}}\nspec: {node: host-a, container: late}\n",
    )
    .expect("write");
    let t = Instant::now();
    let run = ctl(&ep, &["apply", "-f", one.to_str().expect("utf8")]);
    run.assert_ok();
    assert!(run.stdout.contains("Container/late created"), "{run:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!intent_present(&ep));
    assert_eq!(raw_tagged(&ep, "b"), 0, "the dead writer's pieces were not rolled back");
    assert_eq!(view(&ep), BTreeMap::from([("a".to_string(), N), ("n".to_string(), 1)]));

    // And the killed apply, run again, goes through whole.
    ctl(&ep, &["apply", "-f", b.to_str().expect("utf8")]).assert_ok();
    assert_eq!(view(&ep), BTreeMap::from([("b".to_string(), N), ("n".to_string(), 1)]));
}

#[test]
fn a_sync_revision_of_ten_thousand_applies_and_prunes_whole() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let d = tempfile::tempdir().expect("tmp");
    let dir = d.path().join("conf");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("c.yaml"), containers_yaml(N, "a")).expect("write");
    let d_arg = dir.to_str().expect("utf8");
    let sync = ["sync", "--dir", d_arg, "--id", "big", "--prune", "--once"];
    ctl(&ep, &sync).assert_ok();
    assert_eq!(view(&ep), only("a", N));
    // The next revision changes every Container and prunes half of them.
    std::fs::write(dir.join("c.yaml"), containers_yaml(N / 2, "b")).expect("write");
    ctl(&ep, &sync).assert_ok();
    assert_eq!(view(&ep), only("b", N / 2));
    assert!(!intent_present(&ep));
}

/// A child process killed when dropped, even when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_master_rolls_back_a_killed_writers_half_change() {
    const M: usize = 1_000;
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, containers_yaml(M, "a")).expect("write");
    std::fs::write(&b, containers_yaml(M, "b")).expect("write");
    ctl(&ep, &["apply", "-f", a.to_str().expect("utf8")]).assert_ok();

    let mut writer = Reaped(
        command(&ep, &["apply", "-f", b.to_str().expect("utf8")])
            .env(calico_store::PAUSE_ENV, "3")
            .spawn()
            .expect("spawn calicoctl"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw_tagged(&ep, "b") < 3 * calico_store::PIECE_OPS {
        assert!(Instant::now() < deadline, "the paused apply never wrote its pieces");
        std::thread::sleep(Duration::from_millis(100));
    }
    writer.0.kill().expect("SIGKILL calicoctl");
    writer.0.wait().expect("reap");
    assert_eq!(view(&ep), only("a", M));

    // No other writer comes: the master's next pass after the lease expires cleans up.
    let _master = Reaped(
        command(&ep, &["master", "--ip", "127.0.0.1", "--gc-interval", "200ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn master"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while intent_present(&ep) {
        assert!(
            Instant::now() < deadline,
            "the master did not roll back the dead writer's intent"
        );
        assert_eq!(view(&ep), only("a", M), "readers saw the dead writer's change");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(raw_tagged(&ep, "b"), 0, "the dead writer's pieces are still stored");
    assert_eq!(view(&ep), only("a", M));
}

/// A set of about a hundred, near the one-transaction limit with its guard: applied,
/// re-applied unchanged, dry-run changed, applied changed.
#[test]
fn a_hundred_resources_apply_re_apply_unchanged_and_dry_run() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, containers_yaml(99, "a")).expect("write");
    let f = file.to_str().expect("utf8");
    let run = ctl(&ep, &["apply", "-f", f]);
    run.assert_ok();
    assert_eq!(run.stdout.lines().filter(|l| l.ends_with(" created")).count(), 100);
    let run = ctl(&ep, &["apply", "-f", f]);
    run.assert_ok();
    assert_eq!(
        run.stdout.lines().filter(|l| l.ends_with(" unchanged")).count(),
        100,
        "{run:?}"
    );
    std::fs::write(&file, containers_yaml(99, "b")).expect("write");
    let run = ctl(&ep, &["apply", "--dry-run", "-f", f]);
    run.assert_ok();
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.ends_with(" configured (dry run)"))
            .count(),
        99,
        "{run:?}"
    );
    assert_eq!(view(&ep), only("a", 99));
    ctl(&ep, &["apply", "-f", f]).assert_ok();
    assert_eq!(view(&ep), only("b", 99));
}
