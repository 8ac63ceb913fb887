//! An apply too large for one etcd transaction (a staged write, at etcd's default
//! limits) reaches the agent whole: the ruleset it commits (its run directory's
//! nft.json) holds none or all of the new endpoints, never part of them.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use calico_e2e::cluster::{bin, Cluster};
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::serial;

const N: usize = 3_000;

/// The remote endpoints' addresses (10.65.100.0 and up) in the committed ruleset.
fn remote_ips(c: &Cluster) -> usize {
    let Ok(text) = std::fs::read_to_string(c.agents["host1"].run_dir.join("nft.json")) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("nft.json is JSON (written by rename)");
    let mut found = BTreeSet::new();
    let mut stack = vec![&v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => {
                let third = s.strip_prefix("10.65.").and_then(|r| r.split('.').next());
                if third.and_then(|t| t.parse::<u32>().ok()).is_some_and(|t| t >= 100) {
                    found.insert(s.clone());
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    found.len()
}

#[test]
fn the_agent_commits_a_staged_apply_whole() {
    let _g = serial();
    let c = scenario::cluster(1, None, &[("a", 0, Some("10.65.0.1"), "G")]).expect("cluster");
    await_ping(&c, "a", ip("10.65.0.1"), Duration::from_secs(30));
    assert_eq!(remote_ips(&c), 0);

    let mut yaml =
        String::from("apiVersion: calico/v1\nkind: Node\nmetadata: {name: host9}\nspec: {ipv4: 192.0.2.9/24}\n");
    for i in 0..N {
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Container\nmetadata: {{name: r{i}}}\nspec: {{node: host9, container: r{i}, ips: [10.65.{}.{}], groups: [G]}}\n",
            100 + i / 250,
            1 + i % 250
        ));
    }
    let mut apply = Command::new(bin("calicoctl"))
        .args(c.etcd_flags())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn calicoctl");
    apply
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        seen.insert(remote_ips(&c));
        if seen.contains(&N) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never committed the apply: saw {seen:?}\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = apply.wait_with_output().expect("calicoctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(seen, BTreeSet::from([0, N]), "the agent committed part of the apply");
}
