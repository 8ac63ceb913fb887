//! Where a one-change reconcile spends its time, without root: the reconcile against
//! the fakes of `tests`, at growing endpoint counts. Ignored (it measures, it does not
//! check); run it in release:
//!
//! ```text
//! cargo test --release -p calico-agent --lib -- --ignored --nocapture bench_one_change
//! ```
//!
//! `BENCH_ONE_CHANGE_SIZES` (default `1000,10000`) picks the local endpoint counts;
//! `BENCH_CLUSTER=1` adds the cluster-shaped view (100 local endpoints, 50k remote
//! endpoints in group sets, 1k policies). Every figure is a median of `ROUNDS`, printed
//! beside the from-scratch reconcile of the same state (the first one, which loads the
//! table whole) as a ratio.

use std::time::{Duration, Instant};

use calico_store::WatchEvent;

use super::plan;
use super::tests::{cache, rec};
use crate::cache::Cache;

const ROUNDS: usize = 7;
const GROUPS: usize = 20;

fn put(key: String, value: String) -> WatchEvent {
    WatchEvent::Put {
        key,
        value: value.into_bytes(),
        mod_revision: 100,
    }
}

fn container_doc(name: &str, node: &str, ip: &str, group: usize) -> (String, String) {
    (
        format!("/calico/v1/resources/containers/{name}"),
        format!(
            r#"{{"apiVersion":"calico/v1","kind":"Container","metadata":{{"name":"{name}"}},"spec":{{"node":"{node}","netns":"/run/netns/{name}","ips":["{ip}"],"groups":["g{group}"]}}}}"#
        ),
    )
}

/// A policy selecting group g<k % GROUPS>, letting g<(k+10) % GROUPS> in on TCP `port`
/// (the e2e bench's policy).
fn policy_doc(k: usize, port: u16) -> (String, String) {
    (
        format!("/calico/v1/resources/policies/p{k}"),
        format!(
            r#"{{"apiVersion":"calico/v1","kind":"Policy","metadata":{{"name":"p{k}"}},"spec":{{"order":{k},"selector":"group == \"g{}\"","ingress":[{{"action":"Allow","protocol":"TCP","source":{{"selector":"group == \"g{}\""}},"destination":{{"ports":[{port},443,"8000:8080"]}}}},{{"action":"Pass"}}]}}}}"#,
            k % GROUPS,
            (k + 10) % GROUPS
        ),
    )
}

fn ip4(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)
}

/// The state: `local` endpoints on h1, `remote` on h9, GROUPS groups, `policies`.
fn state(local: usize, remote: usize, policies: usize) -> Cache {
    let mut docs: Vec<(String, String)> = Vec::new();
    docs.push((
        "/calico/v1/resources/nodes/h9".into(),
        r#"{"apiVersion":"calico/v1","kind":"Node","metadata":{"name":"h9"},"spec":{"ipv4":"172.17.8.109/24"}}"#.into(),
    ));
    for g in 0..GROUPS {
        docs.push((
            format!("/calico/v1/resources/groups/g{g}"),
            format!(r#"{{"apiVersion":"calico/v1","kind":"Group","metadata":{{"name":"g{g}"}},"spec":{{}}}}"#),
        ));
    }
    for k in 0..policies {
        docs.push(policy_doc(k, 80));
    }
    for i in 0..local {
        docs.push(container_doc(&format!("m{i:05}"), "h1", &ip4(i + 1), i % GROUPS));
    }
    for i in 0..remote {
        docs.push(container_doc(
            &format!("r{i:05}"),
            "h9",
            &ip4(local + i + 1),
            i % GROUPS,
        ));
    }
    let refs: Vec<(&str, String)> = docs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    cache(&refs)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The pure phases of one reconcile of `c`, timed one by one (what `reconcile` does in
/// between is IPAM and plumbing, which the fakes make free).
#[derive(Default, Clone)]
struct Phases {
    inputs: Duration,
    view: Duration,
    render: Duration,
    delta: Duration,
    text: Duration,
    json: Duration,
    routes: Duration,
    bird: Duration,
}

fn phases(c: &Cache, committed: &calico_render::NftTable) -> Phases {
    let mut p = Phases::default();
    let t = Instant::now();
    let input = plan::Inputs::new(c.resources());
    let containers = input.containers();
    let addrs: std::collections::BTreeMap<String, Vec<std::net::IpAddr>> = containers
        .iter()
        .map(|c| (c.metadata.name.clone(), c.spec.ips.clone().unwrap_or_default()))
        .collect();
    let statuses = containers
        .iter()
        .filter(|c| c.spec.node == "h1")
        .map(|c| {
            let st = plan::status("h1", "", &[], calico_schema::EndpointState::Programmed, String::new());
            (c.metadata.name.clone(), st)
        })
        .collect();
    p.inputs = t.elapsed();
    let t = Instant::now();
    let view = plan::view("h1", input.resources, addrs, &statuses, &c.node_blocks("h1"));
    p.view = t.elapsed();
    let t = Instant::now();
    let table = calico_render::render_nft(&view);
    p.render = t.elapsed();
    let t = Instant::now();
    let delta = table.delta(committed);
    p.delta = t.elapsed();
    let t = Instant::now();
    if let calico_render::Delta::Patch(patch) = &delta {
        let _ = patch.to_text();
    }
    p.text = t.elapsed();
    drop(delta);
    let t = Instant::now();
    let _ = table.to_batch().to_json_bytes();
    p.json = t.elapsed();
    let t = Instant::now();
    let _ = calico_render::render_routes(&view);
    p.routes = t.elapsed();
    let t = Instant::now();
    let _ = calico_render::render_bird(&view);
    p.bird = t.elapsed();
    p
}

/// One kind of change: what to put before the measured reconcile, and what to put
/// (or delete) after it to go back.
struct Change {
    what: &'static str,
    apply: Vec<WatchEvent>,
    undo: Vec<WatchEvent>,
}

fn changes(local: usize, remote: usize) -> Vec<Change> {
    let next = local + remote + 10;
    let (lk, lv) = container_doc("xlocal", "h1", &ip4(next), 1);
    let (rk, rv) = container_doc("xremote", "h9", &ip4(next + 1), 1);
    let (pk, pv) = policy_doc(0, 81);
    let (_, p0) = policy_doc(0, 80);
    let del = |key: &str| WatchEvent::Delete {
        key: key.to_string(),
        revision: 100,
    };
    vec![
        Change {
            what: "local endpoint added",
            apply: vec![put(lk.clone(), lv)],
            undo: vec![del(&lk)],
        },
        Change {
            what: "remote endpoint added to a group",
            apply: vec![put(rk.clone(), rv)],
            undo: vec![del(&rk)],
        },
        Change {
            what: "policy rule edited",
            apply: vec![put(pk.clone(), pv)],
            undo: vec![put(pk, p0)],
        },
    ]
}

async fn run(label: &str, local: usize, remote: usize, policies: usize) {
    let t = Instant::now();
    let mut c = state(local, remote, policies);
    let built = t.elapsed();
    let mut r = rec();
    let t = Instant::now();
    let (report, _) = r.reconcile(&c).await;
    let scratch = t.elapsed();
    assert_eq!(report.programmed, local, "{:?}", report.errors);
    // A second reconcile with nothing changed: the floor of every reconcile today.
    let t = Instant::now();
    r.reconcile(&c).await;
    let unchanged = t.elapsed();
    println!(
        "BENCH one-change {label}: cache of {} resources built in {:.0} ms; from-scratch reconcile {:.1} ms; unchanged reconcile {:.1} ms",
        c.resources().len(),
        ms(built),
        ms(scratch),
        ms(unchanged)
    );
    for ch in changes(local, remote) {
        let mut total = Vec::new();
        let mut to_commit = Vec::new();
        let mut ph: Vec<Phases> = Vec::new();
        for _ in 0..ROUNDS {
            let committed = r.committed.clone().expect("a committed table");
            for ev in &ch.apply {
                c.apply(ev.clone());
            }
            ph.push(phases(&c, &committed));
            let t = Instant::now();
            let (report, _) = r.reconcile(&c).await;
            total.push(t.elapsed());
            to_commit.push(
                report
                    .nft_committed_at
                    .map_or(Duration::ZERO, |c| c.saturating_duration_since(t)),
            );
            assert_eq!(report.nft_loads, 1, "{}: one transaction", ch.what);
            assert_eq!(report.nft_whole_loads, 0, "{}: a delta", ch.what);
            for ev in &ch.undo {
                c.apply(ev.clone());
            }
            r.reconcile(&c).await;
        }
        let pick = |f: fn(&Phases) -> Duration| ms(median(ph.iter().map(f).collect()));
        let one = median(total);
        let commit = median(to_commit);
        println!(
            "BENCH one-change {label} {}: to the commit {:.1} ms, whole reconcile {:.1} ms ({:.2} of from-scratch) | inputs {:.1} view {:.1} render {:.1} delta {:.1} text {:.2} json {:.1} routes {:.1} bird {:.2}",
            ch.what,
            ms(commit),
            ms(one),
            one.as_secs_f64() / scratch.as_secs_f64(),
            pick(|p| p.inputs),
            pick(|p| p.view),
            pick(|p| p.render),
            pick(|p| p.delta),
            pick(|p| p.text),
            pick(|p| p.json),
            pick(|p| p.routes),
            pick(|p| p.bird),
        );
    }
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
async fn bench_one_change() {
    let sizes: Vec<usize> = std::env::var("BENCH_ONE_CHANGE_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        run(&format!("n={n}"), n, 0, 10).await;
    }
    if std::env::var("BENCH_CLUSTER").is_ok_and(|v| v == "1") {
        run("cluster (100 local, 50k remote, 1k policies)", 100, 50_000, 1000).await;
    }
}
