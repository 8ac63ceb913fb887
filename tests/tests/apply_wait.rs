//! `calicoctl apply --wait` returns when every running agent enforces the change: right
//! after it returns, the packet meets the new policy, with no retry loop; an agent that
//! cannot enforce it (killed here) is named when the wait times out.

use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::{can_ping, serial};

const WLS: &[scenario::Wl] = &[("a", 0, Some("10.65.0.1"), "G"), ("e", 1, Some("10.65.1.5"), "G")];

const DENY_PING_TO_E: &str = "apiVersion: calico/v1
kind: Policy
metadata: {name: no-ping-e}
spec:
  order: 1
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
    let mut c = scenario::cluster(2, None, WLS).expect("cluster");
    await_ping(&c, "a", ip("10.65.1.5"), Duration::from_secs(40));
    for round in 0..3 {
        let t = Instant::now();
        let (code, out, err) = ctl_wait(&c, &["apply", "--wait", "-f", "-"], DENY_PING_TO_E);
        assert_eq!(code, Some(0), "round {round}: {out}{err}\n{}", c.dump_logs());
        assert!(out.contains("enforced on host1, host2 in "), "{out}");
        eprintln!("round {round}: deny enforced after {:?}", t.elapsed());
        // No waiting here: the wait was the apply's.
        assert!(
            !can_ping(c.wl("a"), ip("10.65.1.5"), 1),
            "round {round}: ping passed after apply --wait returned"
        );

        let t = Instant::now();
        let (code, out, err) = ctl_wait(&c, &["delete", "-f", "-"], DENY_PING_TO_E);
        assert_eq!(code, Some(0), "{out}{err}");
        // delete has no --wait: wait for the agents' report by applying an unrelated
        // change with --wait (it is enforced after the delete, which came first).
        let marker = format!("apiVersion: calico/v1\nkind: Group\nmetadata: {{name: marker{round}}}\n");
        let (code, out, err) = ctl_wait(&c, &["apply", "--wait", "-f", "-"], &marker);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            can_ping(c.wl("a"), ip("10.65.1.5"), 1),
            "round {round}: ping still dropped"
        );
        eprintln!("round {round}: allow enforced after {:?}", t.elapsed());
    }

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
    assert!(!err.contains("host1: enforces"), "host1 enforced it: {err}");
}
