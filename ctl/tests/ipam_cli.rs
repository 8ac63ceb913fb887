//! `calicoctl ipam show|check|release`, `render` from etcd (IPAM addresses and blocks),
//! `reset`, and `diags` with no agent, against a real etcd. Addresses are assigned
//! through the store's IPAM, as the agent does.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use calico_schema::{object, IpPool, IpPoolSpec, Kind};
use calico_store::ipam::{container_handle, Ipam};
use common::*;

const SETUP: &str = "
apiVersion: calico/v1
kind: IPPool
metadata: {name: pool1}
spec: {cidr: 10.70.0.0/16, blockSize: 26}
---
apiVersion: calico/v1
kind: Node
metadata: {name: n1}
spec: {ipv4: 172.31.0.1/24}
---
apiVersion: calico/v1
kind: Group
metadata: {name: g}
spec: {}
---
apiVersion: calico/v1
kind: Container
metadata: {name: w1}
spec: {node: n1, netns: /var/run/netns/w1, groups: [g]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: w2}
spec: {node: n1, netns: /var/run/netns/w2, groups: [g]}
";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ipam(ep: &str) -> (tokio::runtime::Runtime, Ipam) {
    let rt = rt();
    let ipam = rt.block_on(async {
        let s = calico_store::Store::connect(&calico_store::StoreConfig::from_list(ep))
            .await
            .unwrap();
        Ipam::new(s.client(), Duration::from_secs(5))
    });
    (rt, ipam)
}

fn pools() -> Vec<IpPool> {
    vec![object(
        Kind::IPPool,
        "pool1",
        IpPoolSpec {
            cidr: "10.70.0.0/16".parse().unwrap(),
            block_size: Some(26),
            nat_outgoing: false,
            disabled: false,
        },
    )]
}

/// Applies SETUP and assigns w1, w2 (and a leaked handle, and a Docker handle) their
/// addresses. Returns (w1 ip, w2 ip, leaked ip, docker ip).
fn setup(ep: &str) -> (IpAddr, IpAddr, IpAddr, IpAddr) {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "setup.yaml", SETUP);
    ctl(ep, &["apply", "-f", &f]).assert_ok();
    let (rt, ipam) = ipam(ep);
    let pools = pools();
    rt.block_on(async {
        let a = ipam
            .auto_assign(&container_handle("w1"), "n1", &pools, false)
            .await
            .unwrap()[0];
        let b = ipam
            .auto_assign(&container_handle("w2"), "n1", &pools, false)
            .await
            .unwrap()[0];
        let c = ipam
            .auto_assign(&container_handle("ghost"), "n1", &pools, false)
            .await
            .unwrap()[0];
        let d = ipam.auto_assign("docker/ep-0123", "n2", &pools, false).await.unwrap()[0];
        (a, b, c, d)
    })
}

#[test]
fn show_check_release() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let (w1, w2, ghost, docker) = setup(&ep);

    // show: the blocks with affinity and use, and every handle.
    let r = ctl(&ep, &["ipam", "show"]);
    r.assert_ok();
    assert!(r.stdout.contains("BLOCK"), "{}", r.stdout);
    let n1_block = r
        .stdout
        .lines()
        .find(|l| l.contains(" n1 "))
        .unwrap_or_else(|| panic!("no block affine to n1:\n{}", r.stdout));
    let cols: Vec<&str> = n1_block.split_whitespace().collect();
    assert_eq!(cols[1..], ["n1", "3", "64", "pool1"], "{n1_block}");
    assert!(
        r.stdout.lines().any(|l| l.contains(" n2 ") && l.contains(" 1 ")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("container/w1") && r.stdout.contains("Container w1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Container ghost (deleted)"), "{}", r.stdout);
    assert!(
        r.stdout.contains("docker/ep-0123") && r.stdout.contains("Docker IPAM driver"),
        "{}",
        r.stdout
    );

    // show --ip: who holds it.
    let r = ctl(&ep, &["ipam", "show", "--ip", &w1.to_string()]);
    r.assert_ok();
    assert!(
        r.stdout
            .contains(&format!("{w1} is held by container/w1 (Container w1 on node n1)")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("affine to n1") && r.stdout.contains("pool pool1"),
        "{}",
        r.stdout
    );
    let r = ctl(&ep, &["ipam", "show", "--ip", "10.70.200.1"]);
    r.assert_ok();
    assert!(
        r.stdout.contains("10.70.200.1 is free; no block; pool pool1"),
        "{}",
        r.stdout
    );
    let r = ctl(&ep, &["ipam", "show", "--ip", &w2.to_string(), "-o", "json"]);
    r.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["handle"], "container/w2");
    assert_eq!(v["node"], "n1");
    let r = ctl(&ep, &["ipam", "show", "-o", "json"]);
    r.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["blocks"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["handles"]["container/w1"]["ips"][0], w1.to_string());

    // check: the ghost's address leaked; the Docker handle is not judged.
    let r = ctl(&ep, &["ipam", "check"]);
    r.assert_fails();
    assert!(
        r.stdout
            .contains(&format!("leaked: {ghost} is allocated to container/ghost")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("docker/ep-0123, which"), "{}", r.stdout);
    assert!(r.stdout.contains("1 of Docker endpoints"), "{}", r.stdout);
    assert!(r.stderr.contains("IPAM is not consistent: 1 problems"), "{}", r.stderr);
    let r = ctl(&ep, &["ipam", "check", "-o", "json"]);
    r.assert_fails();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert_eq!(v["report"]["leaked"][0][0], ghost.to_string());

    // release: refused for a live Container's address and for Docker's without --force.
    let r = ctl(&ep, &["ipam", "release", "--ip", &w1.to_string()]);
    r.assert_fails();
    assert!(
        r.stderr.contains("held by Container w1, which still exists"),
        "{}",
        r.stderr
    );
    let r = ctl(&ep, &["ipam", "release", "--ip", &docker.to_string()]);
    r.assert_fails();
    assert!(
        r.stderr.contains("docker/ep-0123") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    // The leaked one goes without --force; then check is clean.
    let r = ctl(&ep, &["ipam", "release", "--ip", &ghost.to_string()]);
    r.assert_ok();
    assert!(
        r.stdout
            .contains(&format!("Released {ghost} (held by container/ghost)")),
        "{}",
        r.stdout
    );
    let r = ctl(&ep, &["ipam", "check"]);
    r.assert_ok();
    assert!(r.stdout.contains("IPAM is consistent"), "{}", r.stdout);
    // A free address is an error.
    let r = ctl(&ep, &["ipam", "release", "--ip", &ghost.to_string()]);
    r.assert_fails();
    assert!(r.stderr.contains("is not allocated"), "{}", r.stderr);
    // --force releases a live Container's address (with a warning).
    let r = ctl(&ep, &["ipam", "release", "--ip", &w2.to_string(), "--force"]);
    r.assert_ok();
    assert!(r.stderr.contains("Container w2 still exists"), "{}", r.stderr);
    let (rt, ipam) = ipam(&ep);
    let held: BTreeSet<IpAddr> = rt.block_on(async {
        ipam.handles()
            .await
            .unwrap()
            .values()
            .flat_map(|h| h.ips.clone())
            .collect()
    });
    assert_eq!(held, [w1, docker].into_iter().collect(), "what is left held");
}

/// A garbage value planted under the handles prefix is named by `ipam show` (which
/// still shows every other handle) and by `ipam check`; both exit non-zero.
#[test]
fn a_bad_handle_is_named_and_the_rest_shown() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let (w1, _, _, docker) = setup(&ep);
    put_raw(&ep, "ipam/handles/docker%2Fgarbage", b"\xff{not json");
    let bad_key = "/calico/v1/ipam/handles/docker%2Fgarbage";

    let r = ctl(&ep, &["ipam", "show"]);
    r.assert_fails();
    assert!(r.stderr.contains(&format!("invalid: {bad_key}: ")), "{}", r.stderr);
    assert!(
        r.stderr.contains("1 handle keys hold values that do not decode"),
        "{}",
        r.stderr
    );
    for shown in ["container/w1", "container/w2", "container/ghost", "docker/ep-0123"] {
        assert!(r.stdout.contains(shown), "{shown} missing:\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains(&w1.to_string()) && r.stdout.contains(&docker.to_string()),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("garbage"),
        "the bad handle is not a row: {}",
        r.stdout
    );

    let r = ctl(&ep, &["ipam", "show", "-o", "json"]);
    r.assert_fails();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(v["handles"].as_object().map(serde_json::Map::len), Some(4), "{v}");
    assert!(r.stderr.contains(bad_key), "{}", r.stderr);

    let r = ctl(&ep, &["ipam", "check"]);
    r.assert_fails();
    assert!(r.stdout.contains(&format!("invalid: {bad_key}: ")), "{}", r.stdout);
    assert!(r.stdout.contains("Checked 4 handles"), "{}", r.stdout);
}

#[test]
fn render_from_etcd_uses_ipam_addresses_and_blocks() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let (w1, w2, _, _) = setup(&ep);
    let r = ctl(&ep, &["render", "--node", "n1", "--what", "routes"]);
    r.assert_ok();
    assert!(r.stdout.contains("blackhole 10.70.0.0/26 proto 80"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("{w1}/32 dev cali")), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("{w2}/32 dev cali")), "{}", r.stdout);
    let r = ctl(&ep, &["render", "--node", "n1", "-o", "json"]);
    r.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["node"], "n1");
    assert!(v["bird"].as_str().unwrap().contains("router id 172.31.0.1;"), "{v}");
    let r = ctl(&ep, &["render", "--node", "nope"]);
    r.assert_fails();
    assert!(r.stderr.contains("node 'nope' is not known"), "{}", r.stderr);
}

#[test]
fn reset_needs_yes_without_a_terminal() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    setup(&ep);
    let before = dump(&ep);
    let r = ctl(&ep, &["reset"]);
    r.assert_fails();
    assert!(r.stderr.contains("pass --yes"), "{}", r.stderr);
    assert_eq!(dump(&ep).values, before.values, "nothing deleted");
    let r = ctl(&ep, &["reset", "--yes", "--datastore-only"]);
    r.assert_ok();
    assert!(r.stdout.starts_with("Deleted "), "{}", r.stdout);
    assert!(dump(&ep).values.is_empty(), "everything under /calico/v1/ is gone");
    let r = ctl(&ep, &["get", "all"]);
    r.assert_ok();
    let r = ctl(&ep, &["ipam", "show"]);
    r.assert_ok();
    assert!(
        r.stdout.contains("No IPAM blocks.") && r.stdout.contains("No IPAM handles."),
        "{}",
        r.stdout
    );
}

/// Without an agent, diags still writes an archive: the datastore dump (secrets left
/// out) and a list of what it could not collect.
#[test]
fn diags_without_an_agent() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    setup(&ep);
    put(
        &ep,
        "status/secrets-test",
        &serde_json::json!({"password": "hunter2", "keyFile": "/etc/calico/key.pem"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let out = dir.path().join("d.tar.gz");
    let r = ctl(
        &ep,
        &[
            "diags",
            "--run-dir",
            run.to_str().unwrap(),
            "--log-dir",
            dir.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    r.assert_ok();
    assert!(r.stderr.contains("not collected: calico-node.log"), "{}", r.stderr);
    let x = dir.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let st = std::process::Command::new("tar")
        .args(["xzf", out.to_str().unwrap(), "-C", x.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let top = std::fs::read_dir(&x).unwrap().next().unwrap().unwrap().path();
    let ds = std::fs::read_to_string(top.join("datastore.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ds).unwrap();
    assert!(v["keys"]["/calico/v1/resources/containers/w1"].is_object(), "{ds}");
    assert!(!ds.contains("hunter2"), "a secret leaked into diags");
    assert!(ds.contains("/etc/calico/key.pem"), "paths are kept");
    let errors = std::fs::read_to_string(top.join("errors.txt")).unwrap();
    assert!(errors.contains("birdc-protocols.txt"), "{errors}");
    assert!(top.join("diags.txt").exists());
}

/// A private key planted in the run directory is never archived: diags collects files
/// by name (not the directory), and what it collects is scrubbed, even when one of
/// those names is a symlink to the key, a log caught the key, bird.conf holds a BGP
/// password, or an etcd value (JSON or not) carries a key.
#[test]
fn diags_leaves_out_a_key_planted_in_the_run_dir() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    setup(&ep);
    let pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIPLANTEDKEYMATERIAL0123456789\n-----END EC PRIVATE KEY-----\n";
    put(
        &ep,
        "status/planted",
        &serde_json::json!({"note": format!("oops {pem}")}),
    );
    put_raw(&ep, "status/planted-raw", format!("not json {pem}").as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("etcd-key.pem"), pem).unwrap();
    std::os::unix::fs::symlink(run.join("etcd-key.pem"), run.join("nft.json")).unwrap();
    std::fs::write(
        run.join("bird.conf"),
        "protocol bgp peer1 {\n  neighbor 10.0.0.2 as 64512;\n  password \"PLANTEDBGPPASSWORD\";\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("calico-node.log"),
        format!("INFO started\nERROR could not parse key file: {pem}INFO still running\n"),
    )
    .unwrap();
    let out = dir.path().join("d.tar.gz");
    let r = ctl(
        &ep,
        &[
            "diags",
            "--run-dir",
            run.to_str().unwrap(),
            "--log-dir",
            dir.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    r.assert_ok();
    let x = dir.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let st = std::process::Command::new("tar")
        .args(["xzf", out.to_str().unwrap(), "-C", x.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let top = std::fs::read_dir(&x).unwrap().next().unwrap().unwrap().path();
    let mut names = Vec::new();
    for e in std::fs::read_dir(&top).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
        assert!(
            !text.contains("PLANTEDKEYMATERIAL"),
            "the key leaked into {name}:\n{text}"
        );
        assert!(!text.contains("PRIVATE KEY-----"), "a key block in {name}:\n{text}");
        assert!(
            !text.contains("PLANTEDBGPPASSWORD"),
            "the BGP password leaked into {name}:\n{text}"
        );
        names.push(name);
    }
    names.sort();
    assert!(!names.iter().any(|n| n.contains("etcd-key")), "{names:?}");
    // The files themselves were collected, scrubbed rather than dropped.
    let log = std::fs::read_to_string(top.join("calico-node.log")).unwrap();
    assert!(
        log.contains("INFO still running") && log.contains("(left out of diags)"),
        "{log}"
    );
    let conf = std::fs::read_to_string(top.join("bird.conf")).unwrap();
    assert!(conf.contains("neighbor 10.0.0.2 as 64512;"), "{conf}");
    let ds = std::fs::read_to_string(top.join("datastore.json")).unwrap();
    assert!(
        ds.contains("/calico/v1/status/planted-raw") && ds.contains("not json"),
        "{ds}"
    );
}
