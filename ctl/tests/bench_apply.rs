//! Benchmarks (ignored; run with `cargo test -p calicoctl --release --test bench_apply -- --ignored --nocapture --test-threads=1`):
//! `calicoctl apply` of N resources against raw etcd puts of the same bytes (one
//! transaction, or pieces of 120 above etcd's default limits), and a one-resource apply
//! with 100, 10k and 100k resources stored against one raw put of the same bytes, each
//! on a throwaway etcd in the same run. Prints the figures.

mod common;

use std::time::{Duration, Instant};

use common::{ctl, TestEtcd};

fn groups_yaml(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| {
            format!(
                "---\napiVersion: calico/v1\nkind: Group\nmetadata: {{name: g{i}, labels: {{run: {tag}}}}}\nspec:\n  ingress:\n    - action: Allow\n      protocol: TCP\n      source: {{nets: [10.{}.{}.0/24]}}\n      destination: {{ports: [80, 443, \"8000:8080\"]}}\n",
                i / 256,
                i % 256
            )
        })
        .collect()
}

fn raw_put(endpoint: &str, n: usize, tag: &str) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = calico_store::Store::connect(&calico_store::StoreConfig::from_list(endpoint))
            .await
            .expect("connect");
        let loaded = calico_schema::load_str("bench.yaml", &groups_yaml(n, tag)).expect("valid");
        let items: Vec<(String, Vec<u8>)> = loaded
            .iter()
            .map(|l| {
                let key = format!("/calico/raw/{}", l.resource.name());
                let val = serde_json::to_vec(&l.resource.without_version().to_json()).expect("json");
                (key, val)
            })
            .collect();
        let t = Instant::now();
        calico_store::testing::raw_put_txn(&store, items).await.expect("txn");
        t.elapsed()
    })
}

#[test]
#[ignore]
fn bench_apply_vs_raw_puts() {
    let etcd = TestEtcd::start();
    let dir = tempfile::tempdir().expect("tmp");
    for n in [100usize, 1000, 10_000] {
        let file = dir.path().join(format!("g{n}.yaml"));
        std::fs::write(&file, groups_yaml(n, &format!("a{n}"))).expect("write");
        let t = Instant::now();
        ctl(&etcd.endpoint(), &["apply", "-f", file.to_str().expect("utf8")]).assert_ok();
        let apply = t.elapsed();
        // Re-applying unchanged content: validation and comparison, no write.
        let t = Instant::now();
        ctl(&etcd.endpoint(), &["apply", "-f", file.to_str().expect("utf8")]).assert_ok();
        let noop = t.elapsed();
        let raw = raw_put(&etcd.endpoint(), n, &format!("r{n}"));
        println!(
            "N={n:5}: calicoctl apply {:8.1} ms (unchanged re-apply {:8.1} ms), raw etcd txn of the same bytes {:7.1} ms, ratio {:5.1}x",
            apply.as_secs_f64() * 1e3,
            noop.as_secs_f64() * 1e3,
            raw.as_secs_f64() * 1e3,
            apply.as_secs_f64() / raw.as_secs_f64()
        );
        ctl(&etcd.endpoint(), &["delete", "-f", file.to_str().expect("utf8")]).assert_ok();
    }
}

fn container_yaml(name: &str, tag: &str) -> String {
    format!(
        "apiVersion: calico/v1\nkind: Container\nmetadata: {{name: {name}, labels: {{run: {tag}}}}}\nspec: {{node: host-a, container: {name}, groups: [web]}}\n"
    )
}

/// Fills etcd with `n` Containers (and their Node and Group) by raw puts, as the store
/// encodes them.
fn fill(endpoint: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = calico_store::Store::connect(&calico_store::StoreConfig::from_list(endpoint))
            .await
            .expect("connect");
        let mut texts = vec![String::from(
            "apiVersion: calico/v1\nkind: Node\nmetadata: {name: host-a}\nspec: {ipv4: 10.0.0.1/24}\n---\napiVersion: calico/v1\nkind: Group\nmetadata: {name: web}\nspec: {}\n",
        )];
        // The loader takes up to 50k documents a file.
        for start in (0..n).step_by(10_000) {
            let mut text = String::new();
            for i in start..n.min(start + 10_000) {
                text.push_str("---\n");
                text.push_str(&container_yaml(&format!("fill{i:06}"), "fill"));
            }
            texts.push(text);
        }
        let loaded: Vec<calico_schema::Loaded> = texts
            .iter()
            .flat_map(|t| calico_schema::load_str("fill.yaml", t).expect("valid"))
            .collect();
        let items: Vec<(String, Vec<u8>)> = loaded
            .iter()
            .map(|l| {
                let r = &l.resource;
                let key = calico_store::resource_key(r.kind(), r.name());
                (key, serde_json::to_vec(&r.without_version().to_json()).expect("json"))
            })
            .collect();
        calico_store::testing::raw_put_txn(&store, items).await.expect("fill");
    });
}

/// One raw etcd put of `bytes` (the baseline), from a fresh connection as calicoctl makes.
fn raw_put_one(endpoint: &str, key: &str, bytes: Vec<u8>) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = calico_store::Store::connect(&calico_store::StoreConfig::from_list(endpoint))
            .await
            .expect("connect");
        let t = Instant::now();
        calico_store::testing::raw_put_txn(&store, vec![(key.to_string(), bytes)])
            .await
            .expect("put");
        t.elapsed()
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `calicoctl apply` of one Container with 100, 10k and 100k resources stored: its cost
/// follows what it touches (its key, its Node, its Group), not the store's size.
#[test]
#[ignore]
fn bench_one_resource_apply_vs_store_size() {
    const RUNS: usize = 7;
    let dir = tempfile::tempdir().expect("tmp");
    for n in [100usize, 10_000, 100_000] {
        let etcd = TestEtcd::start();
        let ep = etcd.endpoint();
        let t = Instant::now();
        fill(&ep, n);
        let filled = t.elapsed();
        let (mut applies, mut raws, mut gets) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            let name = format!("one{run}");
            let text = container_yaml(&name, "bench");
            let file = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&file, &text).expect("write");
            let t = Instant::now();
            let out = ctl(&ep, &["apply", "-f", file.to_str().expect("utf8")]);
            applies.push(t.elapsed());
            out.assert_ok();
            assert!(out.stdout.contains("created"), "{out:?}");
            // The process and connection floor: a one-key read by the same binary.
            let t = Instant::now();
            ctl(&ep, &["get", "node", "host-a"]).assert_ok();
            gets.push(t.elapsed());
            let r = &calico_schema::load_str("one.yaml", &text).expect("valid")[0].resource;
            let bytes = serde_json::to_vec(&r.without_version().to_json()).expect("json");
            raws.push(raw_put_one(&ep, &format!("/calico/raw/{name}"), bytes));
        }
        let (apply, raw, get) = (median(applies), median(raws), median(gets));
        println!(
            "stored={n:6} (filled in {:5.1} s): calicoctl apply of 1 Container {:6.1} ms, raw etcd put of the same bytes {:5.2} ms, ratio {:6.1}x; calicoctl get of 1 Node (process + connect floor) {:6.1} ms, apply/get {:4.2}x",
            filled.as_secs_f64(),
            apply.as_secs_f64() * 1e3,
            raw.as_secs_f64() * 1e3,
            apply.as_secs_f64() / raw.as_secs_f64(),
            get.as_secs_f64() * 1e3,
            apply.as_secs_f64() / get.as_secs_f64(),
        );
    }
}
