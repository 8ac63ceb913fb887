//! Benchmark (ignored; run with `cargo test -p calicoctl --release --test bench_apply -- --ignored --nocapture`):
//! `calicoctl apply` of N resources against raw etcd puts of the same bytes in one
//! transaction, on the same throwaway etcd in the same run. Prints the figures.

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
    for n in [100usize, 1000, 3000] {
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
