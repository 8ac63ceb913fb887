//! `calicoctl apply --wait` returns when every running agent enforces the change: on
//! three hosts, a connection probe right after it returns meets the new verdict, every
//! time in 50 tries, with no retry loop; an agent that cannot enforce it (killed here)
//! is named when the wait times out.

use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::{can_connect, can_ping, serial, Listener};

const WLS: &[scenario::Wl] = &[
    ("a", 0, Some("10.65.0.1"), "G"),
    ("e", 1, Some("10.65.1.5"), "G"),
    ("f", 2, Some("10.65.2.6"), "G"),
];

/// A policy on f's port 80 from a: Deny or Allow (then Pass for the rest).
fn port80(action: &str) -> String {
    format!(
        "apiVersion: calico/v1
kind: Policy
metadata: {{name: a-to-f-80}}
spec:
  order: 1
  selector: all()
  ingress:
    - action: {action}
      protocol: TCP
      source: {{nets: [10.65.0.1/32]}}
      destination: {{nets: [10.65.2.6/32], ports: [80]}}
    - action: Pass
"
    )
}

const DENY_PING_TO_E: &str = "apiVersion: calico/v1
kind: Policy
metadata: {name: no-ping-e}
spec:
  order: 0
  selector: all()
  ingress:
    - action: Deny
      protocol: ICMP
      destination: {nets: [10.65.1.5/32]}
    - action: Pass
";

fn ctl_wait(c: &Cluster, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(calico_e2e::cluster::bin("calicoctl"))
        .args(c.etcd_flags())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("calicoctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apply_wait_returns_when_the_change_is_enforced() {
    let _g = serial();
    let mut c = scenario::cluster(3, None, WLS).expect("cluster");
    await_ping(&c, "a", ip("10.65.1.5"), Duration::from_secs(40));
    await_ping(&c, "a", ip("10.65.2.6"), Duration::from_secs(40));
    await_ping(&c, "e", ip("10.65.2.6"), Duration::from_secs(40));
    let _l = Listener::start(c.wl("f"), 80).expect("listener");
    let probe = Duration::from_millis(300);
    let mut took = Vec::new();
    for round in 0..50 {
        let deny = round % 2 == 0;
        let t = Instant::now();
        let (code, out, err) = ctl_wait(
            &c,
            &["apply", "--wait", "-f", "-"],
            &port80(if deny { "Deny" } else { "Allow" }),
        );
        took.push(t.elapsed());
        assert_eq!(code, Some(0), "round {round}: {out}{err}\n{}", c.dump_logs());
        assert!(out.contains("enforced on host1, host2, host3 in "), "{out}");
        // No waiting here: the wait was the apply's.
        let connected = can_connect(c.wl("a"), ip("10.65.2.6"), 80, probe);
        assert_eq!(
            connected,
            !deny,
            "round {round}: a -> f:80 right after apply --wait of {}",
            if deny { "Deny" } else { "Allow" }
        );
    }
    took.sort();
    eprintln!(
        "apply --wait on 3 hosts, 50 tries: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );

    // The same for a policy that drops ping (order 0: before a-to-f-80, whose Pass would
    // skip it), then its delete (delete has no --wait: an
    // unrelated apply --wait after it is enforced after the delete, which came first).
    let (code, out, err) = ctl_wait(&c, &["apply", "--wait", "-f", "-"], DENY_PING_TO_E);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        !can_ping(c.wl("a"), ip("10.65.1.5"), 1),
        "ping passed after apply --wait returned"
    );
    let (code, out, err) = ctl_wait(&c, &["delete", "-f", "-"], DENY_PING_TO_E);
    assert_eq!(code, Some(0), "{out}{err}");
    let marker = "apiVersion: calico/v1\nkind: Group\nmetadata: {name: marker}\n";
    let (code, out, err) = ctl_wait(&c, &["apply", "--wait", "-f", "-"], marker);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        can_ping(c.wl("a"), ip("10.65.1.5"), 1),
        "ping still dropped after the delete"
    );

    // An agent that cannot enforce: killed, its status stays behind; the wait names it.
    c.agent("host2").kill9();
    let (code, out, err) = ctl_wait(
        &c,
        &["apply", "--wait", "--wait-timeout", "2", "-f", "-"],
        DENY_PING_TO_E,
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("Policy/no-ping-e created"), "{out}");
    assert!(err.contains("not enforced everywhere within 2s"), "{err}");
    assert!(err.contains("host2: enforces revision"), "{err}");
    assert!(
        !err.contains("host1: enforces") && !err.contains("host3: enforces"),
        "host1 and host3 enforced it: {err}"
    );
}

/// `sync status` shows, per node, whether its agent enforces the sync's last applied
/// revision (as Flux shows a Kustomization's health).
#[test]
fn sync_status_shows_per_node_enforcement() {
    let _g = serial();
    let mut c = scenario::cluster(2, None, WLS[..2].as_ref()).expect("cluster");
    await_ping(&c, "a", ip("10.65.1.5"), Duration::from_secs(40));
    let dir = tempfile::tempdir().expect("dir");
    let write = |action: &str| std::fs::write(dir.path().join("p.yaml"), port80(action)).expect("write");
    let d = dir.path().display().to_string();
    write("Deny");
    c.ctl(&["sync", "--dir", &d, "--once"]).expect("sync");
    let status = |c: &Cluster| c.ctl(&["sync", "status", "--dir", &d]).unwrap_or_default();
    let enforced = Cluster::wait_for(Duration::from_secs(10), || {
        let s = status(&c);
        s.contains("host1 enforced") && s.contains("host2 enforced")
    });
    assert!(enforced, "{}", status(&c));
    let json: serde_json::Value =
        serde_json::from_str(&c.ctl(&["sync", "status", "--dir", &d, "-o", "json"]).expect("json")).expect("parse");
    assert_eq!(
        json["enforcement"],
        serde_json::json!(["host1 enforced", "host2 enforced"])
    );

    // host2's agent stops: the next revision is enforced on host1 only.
    c.agent("host2").kill9();
    write("Allow");
    c.ctl(&["sync", "--dir", &d, "--once"]).expect("sync");
    let split = Cluster::wait_for(Duration::from_secs(10), || {
        let s = status(&c);
        s.contains("host1 enforced") && s.contains("host2 behind (at revision")
    });
    assert!(split, "{}", status(&c));
}
