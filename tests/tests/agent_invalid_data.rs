//! Invalid values written straight into etcd, past calicoctl's checks, are reported
//! (agent log, status/nodes/<name>.invalidData, the calico_invalid_data metric) and
//! ignored: the last good state stays in effect, also across an agent restart, and
//! the agent does not crash.

use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{self, await_ping, ip};
use calico_e2e::serial;

const GROUP_KEY: &str = "/calico/v1/resources/groups/G";
const POLICY_KEY: &str = "/calico/v1/resources/policies/deny-all";

fn invalid_keys(c: &Cluster, node: &str) -> Vec<String> {
    c.node_status(node)
        .and_then(|s| s["invalidData"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

#[test]
fn invalid_data_is_reported_and_ignored() {
    let _g = serial();
    let wls: &[scenario::Wl] = &[
        ("a", 0, Some("10.65.0.1"), "G"),
        ("b", 0, Some("10.65.0.2"), "B"),
        ("e", 1, Some("10.65.1.5"), "G"),
    ];
    let addrs = [("a", ip("10.65.0.1")), ("b", ip("10.65.0.2")), ("e", ip("10.65.1.5"))];
    let mut c = scenario::cluster(2, None, wls).expect("cluster");
    await_ping(&c, "a", ip("10.65.1.5"), Duration::from_secs(30));
    await_ping(&c, "e", ip("10.65.0.1"), Duration::from_secs(10));
    let before = c.ping_matrix(&addrs);
    assert_eq!(before, vec!["a->e", "e->a"]);

    // Not JSON, over a live Group every workload of G depends on.
    c.etcd_put_raw(GROUP_KEY, b"{\"apiVersion\": \"calico/v1\", \"kind\": \"Gro")
        .unwrap();
    // Valid JSON, a bad selector; were it applied it would cut everyone off.
    c.etcd_put_raw(
        POLICY_KEY,
        br#"{"apiVersion":"calico/v1","kind":"Policy","metadata":{"name":"deny-all"},"spec":{"order":1,"selector":"all() &&","ingress":[{"action":"Deny"}],"egress":[{"action":"Deny"}]}}"#,
    )
    .unwrap();

    for node in ["host1", "host2"] {
        let ok = Cluster::wait_for(Duration::from_secs(10), || {
            let keys = invalid_keys(&c, node);
            keys.iter().any(|k| k.starts_with(GROUP_KEY))
                && keys.iter().any(|k| k.starts_with(POLICY_KEY))
                && c.agents[node].metric("calico_invalid_data") == Some(2.0)
        });
        assert!(
            ok,
            "{node} status: {:?}\nmetrics:\n{}\n{}",
            c.node_status(node),
            c.agents[node].metrics(),
            c.dump_logs()
        );
    }
    let keys = invalid_keys(&c, "host1");
    assert!(keys.iter().any(|k| k.contains("not JSON")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("selector")), "{keys:?}");
    let log = c.agents["host1"].log();
    assert!(
        log.contains("ignoring invalid data in etcd") && log.contains(GROUP_KEY),
        "{log}"
    );
    assert_eq!(c.ping_matrix(&addrs), before, "invalid data changed the matrix");
    assert!(c.agent("host1").alive() && c.agent("host2").alive(), "an agent crashed");

    // A restarted agent keeps the last good Group it persisted (it is not in etcd any
    // more) instead of acting as if G did not exist.
    c.agent("host1").stop();
    c.agent("host1").start();
    assert!(Cluster::wait_for(Duration::from_secs(10), || {
        c.agents["host1"]
            .metric("calico_reconciles_total")
            .is_some_and(|n| n >= 1.0)
    }));
    assert!(c.agents["host1"]
        .log()
        .contains("keeping the last good value from the previous run"));
    assert_eq!(c.ping_matrix(&addrs), before, "the restart lost the last good state");
    assert_eq!(c.agents["host1"].metric("calico_invalid_data"), Some(2.0));

    // Repaired: reported no more, and the repaired values apply.
    c.apply("apiVersion: calico/v1\nkind: Group\nmetadata: {name: G}\nspec: {}\n")
        .unwrap();
    c.ctl(&["delete", "policy", "deny-all"]).unwrap();
    for node in ["host1", "host2"] {
        let ok = Cluster::wait_for(Duration::from_secs(10), || {
            c.agents[node].metric("calico_invalid_data") == Some(0.0) && invalid_keys(&c, node).is_empty()
        });
        assert!(ok, "{node}: {:?}", c.node_status(node));
    }
    assert!(!c.agents["host1"].run_dir.join("last-good.json").exists());
    c.ctl(&["addtogroup", "b", "G"]).unwrap();
    await_ping(&c, "b", ip("10.65.1.5"), Duration::from_secs(10));
}
