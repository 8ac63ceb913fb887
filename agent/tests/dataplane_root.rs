//! The dataplane layer against the real kernel, nftables and BIRD.
//!
//! Needs root (network namespaces, veth, nft, bird). Every test makes its
//! own uniquely named namespaces, which play both "host" and "workload", and
//! removes them, their links, tables and processes even when it panics.
//! Traffic only ever goes to addresses inside those namespaces.
//!
//! Run: `cargo test -p calico-agent --test dataplane_root -- --test-threads=1`

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use calico_agent::dataplane::bird::{self, BirdError, BirdOptions, BirdSupervisor};
use calico_agent::dataplane::command::CommandError;
use calico_agent::dataplane::netns::{read_sysctl, run_in_netns};
use calico_agent::dataplane::nft::{self, NftApplier, NftCommand, NftError};
use calico_agent::dataplane::routes::{list_owned_routes, reconcile_routes, RouteError, RouteSpec};
use calico_agent::dataplane::workload::{host_ifname, Plumber, WorkloadSpec};
use serde_json::Value;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            // Skipping is opt-in, so a CI run without root fails instead of passing untested.
            if std::env::var_os("CALICO_ALLOW_SKIP").is_none() {
                panic!("needs root (network namespaces, nft, bird); CALICO_ALLOW_SKIP=1 skips");
            }
            eprintln!("SKIPPED: needs root (network namespaces, nft, bird)");
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "cdp{}{}{}",
            tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs a command inside, panicking with its stderr on failure.
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn try_exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// A veth `name` with its peer `{name}p`, both up and both inside (this
    /// kernel has no dummy driver): a link with carrier going nowhere.
    fn add_link_pair(&self, name: &str) {
        let peer = format!("{name}p");
        self.exec(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]);
        self.exec(&["ip", "link", "set", name, "up"]);
        self.exec(&["ip", "link", "set", &peer, "up"]);
    }

    /// `ip -n NS -j ARGS...` parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["ip", "-n", &self.name, "-j"];
        full.extend_from_slice(args);
        let out = sh(&full);
        if out.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j output {out:?}: {e}"))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace takes its links (and the veth peers outside),
        // routes and nft tables with it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ping(from: &Netns, to: &str) {
    let out = from.try_exec(&["ping", "-c", "1", "-W", "2", to]);
    assert!(
        out.status.success(),
        "ping {to} from {} failed: {}{}",
        from.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sysctl_in(ns: &Netns, key: &str) -> String {
    let path = ns.path();
    let key = key.to_string();
    run_in_netns(Some(&path), move || read_sysctl(&key)).unwrap().unwrap()
}

fn addrs_of(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_plumbing_carries_packets_and_tears_down_clean() {
    require_root!();
    let host = Netns::new("h");
    let wl1 = Netns::new("a");
    let wl2 = Netns::new("b");

    // The host has an eth0 of its own, as real ones do: the peer is created
    // under that name directly inside the workload, so the names never meet.
    host.exec(&["ip", "link", "add", "eth0", "type", "bridge"]);
    let plumber = Plumber::new(Some(host.path())).await.unwrap();
    plumber.enable_ipv6_forwarding().await.unwrap();

    let name1 = host_ifname("cali", &wl1.name);
    let name2 = host_ifname("cali", &wl2.name);
    let spec1 = WorkloadSpec::new(&name1, wl1.path(), vec![ip("10.65.0.1"), ip("fd00:65::1")]);
    let mut spec2 = WorkloadSpec::new(&name2, wl2.path(), vec![ip("10.65.0.2"), ip("fd00:65::2")]);
    spec2.mtu = Some(1400);

    let t = Instant::now();
    let info1 = plumber.setup(&spec1).await.unwrap();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let info2 = plumber.setup(&spec2).await.unwrap();
    let second_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(info1.created && info2.created);
    eprintln!("TIMING workload setup (v4+v6): first {first_ms:.2} ms, second {second_ms:.2} ms");

    // Inside the workload.
    let mut a = addrs_of(&wl1, "eth0");
    a.retain(|s| !s.starts_with("fe80"));
    a.sort();
    assert_eq!(a, vec!["10.65.0.1/32", "fd00:65::1/128"]);
    let link = wl1.ip_json(&["link", "show", "dev", "eth0"]);
    assert!(link[0]["flags"].as_array().unwrap().contains(&Value::from("UP")));
    assert_eq!(link[0]["address"], info1.mac.as_str());
    let routes = wl1.ip_json(&["-4", "route", "show"]);
    let has = |dst: &str, gw: Option<&str>, scope: Option<&str>| {
        routes.as_array().unwrap().iter().any(|r| {
            r["dst"] == dst
                && r["dev"] == "eth0"
                && gw.is_none_or(|g| r["gateway"] == g)
                && scope.is_none_or(|s| r["scope"] == s)
        })
    };
    assert!(has("default", Some("169.254.1.1"), None), "{routes}");
    assert!(has("169.254.1.1", None, Some("link")), "{routes}");
    let routes6 = wl1.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(routes6[0]["gateway"], "fe80::ecee:eeff:feee:eeee", "{routes6}");
    let neigh = wl1.ip_json(&["neigh", "show", "dev", "eth0"]);
    for gw in ["169.254.1.1", "fe80::ecee:eeff:feee:eeee"] {
        let n = neigh
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == gw)
            .unwrap_or_else(|| panic!("no neighbour {gw}: {neigh}"));
        assert_eq!(n["lladdr"], "ee:ee:ee:ee:ee:ee");
        assert!(
            n["state"].as_array().unwrap().contains(&Value::from("PERMANENT")),
            "{n}"
        );
    }
    assert_eq!(wl2.ip_json(&["link", "show", "dev", "eth0"])[0]["mtu"], 1400);

    // On the host.
    let hl = host.ip_json(&["link", "show", "dev", &name1]);
    assert_eq!(hl[0]["address"], "ee:ee:ee:ee:ee:ee");
    assert!(hl[0]["flags"].as_array().unwrap().contains(&Value::from("UP")));
    assert_eq!(host.ip_json(&["link", "show", "dev", &name2])[0]["mtu"], 1400);
    assert_eq!(sysctl_in(&host, &format!("net/ipv4/conf/{name1}/proxy_arp")), "1");
    assert_eq!(sysctl_in(&host, &format!("net/ipv4/neigh/{name1}/proxy_delay")), "0");
    assert_eq!(sysctl_in(&host, &format!("net/ipv4/conf/{name1}/forwarding")), "1");
    assert_eq!(sysctl_in(&host, &format!("net/ipv6/conf/{name1}/proxy_ndp")), "1");
    // The workload's sysctls did not leak into the test process's namespace.
    assert!(read_sysctl(&format!("net/ipv4/conf/{name1}/proxy_arp")).is_err());

    let listed = plumber.list_host_ifaces("cali").await.unwrap();
    let mut names: Vec<_> = listed.iter().map(|i| i.name.clone()).collect();
    names.sort();
    let mut expected = vec![name1.clone(), name2.clone()];
    expected.sort();
    assert_eq!(names, expected);
    assert!(listed.iter().all(|i| i.up && i.is_veth && i.peer_netns_id.is_some()));

    // Host routes to the workloads, as the agent will program them.
    let desired = vec![
        RouteSpec::unicast("10.65.0.1/32".parse().unwrap(), &name1),
        RouteSpec::unicast("10.65.0.2/32".parse().unwrap(), &name2),
        RouteSpec::unicast("fd00:65::1/128".parse().unwrap(), &name1),
        RouteSpec::unicast("fd00:65::2/128".parse().unwrap(), &name2),
    ];
    let summary = reconcile_routes(plumber.host_handle(), &desired).await.unwrap();
    assert_eq!(summary.added.len(), 4);

    ping(&wl1, "10.65.0.2");
    ping(&wl2, "10.65.0.1");
    ping(&wl1, "fd00:65::2");
    ping(&wl2, "fd00:65::1");

    // Idempotent: a second setup keeps the pair and the traffic.
    let t = Instant::now();
    let again = plumber.setup(&spec1).await.unwrap();
    eprintln!(
        "TIMING workload setup, existing pair fixed up: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(!again.created);
    assert_eq!((again.host_ifindex, again.ifindex), (info1.host_ifindex, info1.ifindex));

    // Fix-up: a changed address list replaces the old addresses.
    let mut moved = spec1.clone();
    moved.ips = vec![ip("10.65.0.11"), ip("fd00:65::1")];
    assert!(!plumber.setup(&moved).await.unwrap().created);
    let mut a = addrs_of(&wl1, "eth0");
    a.retain(|s| !s.starts_with("fe80"));
    a.sort();
    assert_eq!(a, vec!["10.65.0.11/32", "fd00:65::1/128"]);
    plumber.setup(&spec1).await.unwrap();

    // Something else under the workload's host name is replaced by the pair.
    assert!(plumber.teardown(&name2).await.unwrap());
    host.exec(&["ip", "link", "add", &name2, "type", "bridge"]);
    let redone = plumber.setup(&spec2).await.unwrap();
    assert!(redone.created);
    reconcile_routes(plumber.host_handle(), &desired).await.unwrap();
    ping(&wl1, "10.65.0.2");
    ping(&wl2, "fd00:65::1");

    // Teardown leaves nothing: no host links, no workload links, no routes.
    assert_eq!(plumber.teardown_all(&[&name1, &name2]).await.unwrap(), 2);
    assert!(plumber.list_host_ifaces("cali").await.unwrap().is_empty());
    for wl in [&wl1, &wl2] {
        let links = wl.ip_json(&["link", "show"]);
        let names: Vec<_> = links.as_array().unwrap().iter().map(|l| l["ifname"].clone()).collect();
        assert_eq!(names, vec![Value::from("lo")], "{}", wl.name);
    }
    assert_eq!(host.ip_json(&["route", "show", "proto", "80"]), Value::Array(vec![]));
    assert_eq!(
        host.ip_json(&["-6", "route", "show", "proto", "80"]),
        Value::Array(vec![])
    );
    assert!(!plumber.teardown(&name1).await.unwrap(), "second teardown is a no-op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_setup_timing_many() {
    require_root!();
    let host = Netns::new("h");
    let wls: Vec<Netns> = (0..16).map(|_| Netns::new("w")).collect();
    let plumber = Plumber::new(Some(host.path())).await.unwrap();
    let specs: Vec<WorkloadSpec> = wls
        .iter()
        .enumerate()
        .map(|(i, w)| {
            WorkloadSpec::new(
                host_ifname("cali", &w.name),
                w.path(),
                vec![ip(&format!("10.66.0.{}", i + 1))],
            )
        })
        .collect();

    let mut times = Vec::new();
    for spec in &specs[..8] {
        let t = Instant::now();
        plumber.setup(spec).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "TIMING workload setup (v4 only) sequential x8: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        times[0], times[4], times[7]
    );

    let t = Instant::now();
    let results = futures::future::join_all(specs[8..].iter().map(|s| plumber.setup(s))).await;
    eprintln!(
        "TIMING workload setup (v4 only) 8 concurrent: {:.2} ms total",
        t.elapsed().as_secs_f64() * 1e3
    );
    for r in results {
        r.unwrap();
    }
    let names: Vec<String> = specs.iter().map(|s| s.host_ifname.clone()).collect();
    assert_eq!(plumber.teardown_all(&names).await.unwrap(), 16);
}

/// How many routes to exactly `dst` with protocol `proto` (`ip -j` omits
/// the protocol field for `boot`, so filter instead of reading it).
fn foreign_count(ns: &Netns, family: &str, dst: &str, proto: &str) -> usize {
    let v = ns.ip_json(&[family, "route", "show", "exact", dst, "proto", proto]);
    v.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reconcile_touches_only_our_protocol() {
    require_root!();
    let host = Netns::new("r");
    host.add_link_pair("d0");
    host.add_link_pair("d1");
    let handle = calico_agent::dataplane::netns::netlink_in_netns(Some(&host.path()))
        .await
        .unwrap();

    let net = |s: &str| s.parse().unwrap();
    let mut desired = vec![
        RouteSpec::unicast(net("10.70.0.1/32"), "d0"),
        RouteSpec::unicast(net("10.70.0.2/32"), "d0"),
        RouteSpec::blackhole(net("10.70.1.0/26")),
        RouteSpec::unicast(net("fd00:70::1/128"), "d0"),
        RouteSpec::blackhole(net("fd00:70:1::/122")),
    ];
    let s = reconcile_routes(&handle, &desired).await.unwrap();
    assert_eq!((s.added.len(), s.unchanged), (5, 0));
    let ours = host.ip_json(&["route", "show", "proto", "80"]);
    assert_eq!(ours.as_array().unwrap().len(), 3, "{ours}");
    let bh = ours
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "10.70.1.0/26")
        .unwrap();
    assert_eq!(bh["type"], "blackhole");
    let r1 = ours
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "10.70.0.1")
        .unwrap();
    assert_eq!((r1["dev"].as_str(), r1["scope"].as_str()), (Some("d0"), Some("link")));
    assert_eq!(
        host.ip_json(&["-6", "route", "show", "proto", "80"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Foreign routes: one beside ours, one exactly where we want a route.
    host.exec(&["ip", "route", "add", "10.70.0.3/32", "dev", "d0", "proto", "static"]);
    host.exec(&["ip", "route", "add", "10.70.2.0/24", "dev", "d0", "proto", "boot"]);
    host.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:70::3/128",
        "dev",
        "d0",
        "proto",
        "static",
    ]);

    // Same set again: nothing to do.
    let s = reconcile_routes(&handle, &desired).await.unwrap();
    assert_eq!(
        (s.added.len(), s.replaced.len(), s.removed.len(), s.unchanged),
        (0, 0, 0, 5)
    );

    // A prefix held by a foreign route is refused, not overwritten.
    desired.push(RouteSpec::blackhole(net("10.70.2.0/24")));
    match reconcile_routes(&handle, &desired).await {
        Err(RouteError::Incomplete { summary, failures }) => {
            assert_eq!(summary.unchanged, 5);
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(failures[0].route.contains("10.70.2.0/24"), "{failures:?}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(foreign_count(&host, "-4", "10.70.2.0/24", "boot"), 1);
    desired.pop();

    // Moves: unicast to another device, and unicast to blackhole, in place.
    desired[0] = RouteSpec::unicast(net("10.70.0.1/32"), "d1");
    desired[1] = RouteSpec::blackhole(net("10.70.0.2/32"));
    let s = reconcile_routes(&handle, &desired).await.unwrap();
    assert_eq!((s.replaced.len(), s.unchanged), (2, 3), "{s:?}");
    assert_eq!(host.ip_json(&["route", "show", "10.70.0.1"])[0]["dev"], "d1");
    assert_eq!(host.ip_json(&["route", "show", "10.70.0.2"])[0]["type"], "blackhole");

    // A missing device is a failure for that route only.
    let mut with_missing = desired.clone();
    with_missing.push(RouteSpec::unicast(net("10.70.0.9/32"), "nope0"));
    let err = reconcile_routes(&handle, &with_missing).await.unwrap_err();
    assert!(err.to_string().contains("device nope0 not found"), "{err}");

    // Shrink: everything of ours not desired goes, nothing foreign does.
    let small = vec![RouteSpec::unicast(net("10.70.0.1/32"), "d1")];
    let s = reconcile_routes(&handle, &small).await.unwrap();
    assert_eq!((s.removed.len(), s.unchanged), (4, 1), "{s:?}");
    assert_eq!(list_owned_routes(&handle).await.unwrap(), small);
    let ours = host.ip_json(&["route", "show", "proto", "80"]);
    assert_eq!(ours.as_array().unwrap().len(), 1, "{ours}");
    assert_eq!(
        host.ip_json(&["-6", "route", "show", "proto", "80"]),
        Value::Array(vec![])
    );
    assert_eq!(foreign_count(&host, "-4", "10.70.0.3", "static"), 1);
    assert_eq!(foreign_count(&host, "-4", "10.70.2.0/24", "boot"), 1);
    assert_eq!(foreign_count(&host, "-6", "fd00:70::3", "static"), 1);

    // Empty desired set removes ours and still nothing else.
    let s = reconcile_routes(&handle, &[]).await.unwrap();
    assert_eq!(s.removed.len(), 1);
    assert_eq!(foreign_count(&host, "-4", "10.70.0.3", "static"), 1);
    assert_eq!(foreign_count(&host, "-4", "10.70.2.0/24", "boot"), 1);
    assert_eq!(foreign_count(&host, "-6", "fd00:70::3", "static"), 1);
}

fn table_batch(chain: &str, extra_rule: Option<Value>) -> nftables::schema::Nftables<'static> {
    let mut body = vec![
        serde_json::json!({"add": {"chain": {"family": "inet", "table": "calico", "name": chain,
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
        serde_json::json!({"add": {"set": {"family": "inet", "table": "calico", "name": "members",
            "type": "ipv4_addr", "elem": ["10.65.0.1", "10.65.0.2"]}}}),
        serde_json::json!({"add": {"rule": {"family": "inet", "table": "calico", "chain": chain, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@members"}},
            {"counter": null}, {"accept": null}]}}}),
    ];
    body.extend(extra_rule);
    let body = body.into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
    nft::replace_table(nft::TABLE_FAMILY, nft::TABLE_NAME, body)
}

fn chains_of(listing: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(listing).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("chain").map(|c| c["name"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn nft_replaces_our_table_atomically() {
    require_root!();
    let host = Netns::new("n");
    let nft = NftCommand::new().in_netns(host.path());
    // A table that is not ours must survive everything below.
    host.exec(&["nft", "add", "table", "ip", "docker_like"]);

    assert_eq!(nft.list_table(nft::TABLE_FAMILY, nft::TABLE_NAME).unwrap(), None);

    let first = table_batch("fwd-one", None);
    nft.check(&first).unwrap();
    let t = Instant::now();
    nft.apply(&first).unwrap();
    eprintln!(
        "TIMING nft apply small table: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let listed = nft.list_table(nft::TABLE_FAMILY, nft::TABLE_NAME).unwrap().unwrap();
    assert_eq!(chains_of(&listed), vec!["fwd-one"]);

    // Applying again replaces the table whole: the old chain is gone.
    nft.apply(&table_batch("fwd-two", None)).unwrap();
    let good = nft.list_table(nft::TABLE_FAMILY, nft::TABLE_NAME).unwrap().unwrap();
    assert_eq!(chains_of(&good), vec!["fwd-two"]);
    // And again, idempotently.
    nft.apply(&table_batch("fwd-two", None)).unwrap();

    // A broken batch fails with nft's own message, and changes nothing.
    let broken = table_batch(
        "fwd-three",
        Some(
            serde_json::json!({"add": {"rule": {"family": "inet", "table": "calico", "chain": "fwd-three",
            "expr": [{"jump": {"target": "no-such-chain"}}]}}}),
        ),
    );
    let err = nft.check(&broken).unwrap_err();
    assert!(matches!(err, NftError::Command(CommandError::Failed { .. })), "{err}");
    let before = nft.list_table(nft::TABLE_FAMILY, nft::TABLE_NAME).unwrap().unwrap();
    match nft.apply(&broken) {
        Err(NftError::Command(CommandError::Failed { stderr, command, .. })) => {
            assert!(stderr.contains("Error"), "stderr: {stderr}");
            assert!(
                stderr.contains("no-such-chain") || stderr.contains("No such file"),
                "stderr: {stderr}"
            );
            assert!(command.contains("-j -f -"), "{command}");
            eprintln!("nft's error, as reported: {stderr}");
        }
        other => panic!("expected nft failure, got {other:?}"),
    }
    let after = nft.list_table(nft::TABLE_FAMILY, nft::TABLE_NAME).unwrap().unwrap();
    assert_eq!(before, after, "failed transaction must leave the table intact");
    assert_eq!(chains_of(&after), vec!["fwd-two"]);

    host.exec(&["nft", "list", "table", "ip", "docker_like"]);
    nft.apply(&nft::delete_table(nft::TABLE_FAMILY, nft::TABLE_NAME))
        .unwrap();
    assert_eq!(nft.list_table(nft::TABLE_FAMILY, nft::TABLE_NAME).unwrap(), None);
    host.exec(&["nft", "list", "table", "ip", "docker_like"]);
}

/// The agent's path: whole loads and deltas as nft text (`load_text`), read back as
/// text (`list_table_text`). A whole text load replaces the table in one transaction
/// (also when none exists yet), a failed one reports nft's own message and changes
/// nothing, and other tables are not touched.
#[test]
fn nft_text_loads_replace_and_fail_atomically() {
    require_root!();
    let host = Netns::new("x");
    let nft = NftCommand::new().in_netns(host.path());
    host.exec(&["nft", "add", "table", "ip", "docker_like"]);
    assert_eq!(nft.list_table_text(nft::TABLE_FAMILY, nft::TABLE_NAME).unwrap(), None);
    let whole = |chain: &str| {
        format!("add table inet calico\ndelete table inet calico\ntable inet calico {{\n\tchain {chain} {{\n\t\tcounter packets 0 bytes 0 drop\n\t}}\n}}\n")
    };
    nft.load_text(whole("one").as_bytes()).unwrap();
    nft.load_text(whole("two").as_bytes()).unwrap();
    let listed = nft
        .list_table_text(nft::TABLE_FAMILY, nft::TABLE_NAME)
        .unwrap()
        .unwrap();
    assert!(
        listed.contains("chain two {") && !listed.contains("chain one"),
        "{listed}"
    );
    // A delta as text.
    nft.load_text(b"add chain inet calico three\nadd rule inet calico three accept comment \"x\"\n")
        .unwrap();
    let listed = nft
        .list_table_text(nft::TABLE_FAMILY, nft::TABLE_NAME)
        .unwrap()
        .unwrap();
    assert!(listed.contains("\t\taccept comment \"x\""), "{listed}");
    // The second line fails: neither line is committed, and the error is nft's.
    let bad = b"add chain inet calico four\nadd rule inet calico four jump no-such-chain\n";
    match nft.load_text(bad) {
        Err(NftError::Command(CommandError::Failed { stderr, command, .. })) => {
            assert!(
                stderr.contains("Error") && stderr.contains("no-such-chain"),
                "stderr: {stderr}"
            );
            assert!(command.contains("-f -"), "{command}");
        }
        other => panic!("expected nft failure, got {other:?}"),
    }
    let after = nft
        .list_table_text(nft::TABLE_FAMILY, nft::TABLE_NAME)
        .unwrap()
        .unwrap();
    assert_eq!(after, listed, "a failed transaction must leave the table intact");
    host.exec(&["nft", "list", "table", "ip", "docker_like"]);
    nft.apply(&nft::delete_table(nft::TABLE_FAMILY, nft::TABLE_NAME))
        .unwrap();
}

const BIRD_CONF: &str = r#"
router id 10.99.0.1;
protocol device dev1 { scan time 10; }
protocol kernel kernel4 { ipv4 { import none; export none; }; }
protocol bgp peer1 {
  local 10.99.0.1 as 64512;
  neighbor 10.99.0.2 as 64513;
  ipv4 { import none; export none; };
}
"#;

fn process_alive(pid: u32) -> bool {
    // Zombies count as gone: the supervisor reaps asynchronously.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_supervisor_checks_reports_and_restarts() {
    require_root!();
    let host = Netns::new("bd");
    // The BGP neighbour's subnet is on a veth whose both ends are inside the
    // namespace: its connection attempts never leave it.
    host.add_link_pair("d0");
    host.exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", "d0"]);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bird.conf");

    bird::write_config(&conf, BIRD_CONF).await.unwrap();
    // A bad config is refused with BIRD's message and the good one stays.
    match bird::write_config(&conf, "router id 10.99.0.1;\nprotocol nonsense {}\n").await {
        Err(BirdError::Check { output, .. }) => assert!(output.contains("syntax error"), "{output}"),
        other => panic!("expected a check failure, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), BIRD_CONF);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temp files left behind: {leftovers:?}");

    let mut opts = BirdOptions::new(&conf, dir.path().join("bird.ctl"));
    opts.pid_file = Some(dir.path().join("bird.pid"));
    opts.log = Some(dir.path().join("bird.log"));
    opts.netns = Some(host.path());
    opts.backoff_initial = Duration::from_millis(100);
    let sup = BirdSupervisor::start(opts.clone()).await.unwrap();
    sup.wait_ready(Duration::from_secs(10)).await.unwrap();
    let pid = sup.pid().unwrap();
    // BIRD really runs in the test namespace.
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let host_ns_ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(host.path()).unwrap().ino()
    };
    assert_eq!(ns_of(pid), PathBuf::from(format!("net:[{host_ns_ino}]")));

    // A second supervisor on the same socket is refused.
    assert!(matches!(
        BirdSupervisor::start(opts.clone()).await,
        Err(BirdError::AlreadyRunning(_))
    ));

    let protos = sup.protocols().await.unwrap();
    let names: Vec<_> = protos.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["dev1", "kernel4", "peer1"], "{protos:?}");
    assert_eq!(protos[0].proto, "Device");
    assert_eq!(protos[0].state, "up");
    assert_eq!(protos[1].proto, "Kernel");
    let bgp = protos[2].bgp.as_ref().expect("BGP details");
    assert_eq!(protos[2].proto, "BGP");
    assert_eq!(bgp.neighbor_address, Some(ip("10.99.0.2")));
    assert_eq!(bgp.neighbor_as, Some(64513));
    assert_eq!(bgp.local_as, Some(64512));
    assert!(["Idle", "Connect", "Active"].contains(&bgp.state.as_str()), "{bgp:?}");

    // Reconfigure with a new protocol.
    let more = format!("{BIRD_CONF}\nprotocol static static4 {{ ipv4; route 10.98.0.0/24 blackhole; }}\n");
    bird::write_config(&conf, &more).await.unwrap();
    sup.reconfigure().await.unwrap();
    let protos = sup.protocols().await.unwrap();
    assert!(
        protos.iter().any(|p| p.name == "static4" && p.proto == "Static"),
        "{protos:?}"
    );

    // kill -9: the supervisor notices and starts a new BIRD.
    sh(&["kill", "-9", &pid.to_string()]);
    wait_for("bird restart", Duration::from_secs(10), || {
        sup.restarts() == 1 && sup.pid().is_some_and(|p| p != pid)
    })
    .await;
    let new_pid = sup.pid().unwrap();
    assert!(sup.last_exit().unwrap().contains("signal: 9"), "{:?}", sup.last_exit());
    sup.wait_ready(Duration::from_secs(10)).await.unwrap();
    let protos = sup.protocols().await.unwrap();
    assert!(protos.iter().any(|p| p.name == "static4"), "{protos:?}");
    assert_eq!(ns_of(new_pid), PathBuf::from(format!("net:[{host_ns_ino}]")));

    sup.stop().await;
    wait_for("bird exit", Duration::from_secs(10), || !process_alive(new_pid)).await;
    assert!(
        !dir.path().join("bird.ctl").exists(),
        "graceful stop removes the socket"
    );

    // Dropping without stop() kills BIRD too (the panic path).
    let sup = BirdSupervisor::start(opts).await.unwrap();
    let pid = sup.pid().unwrap();
    drop(sup);
    wait_for("bird killed on drop", Duration::from_secs(10), || !process_alive(pid)).await;
}
