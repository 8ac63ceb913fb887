//! The periodic check reads our nftables table back: a resync that finds it as loaded
//! sends nothing (the table, its handle and its counters stay), also after deltas (the
//! listing is compared with the printed table, no reload needed), and a table changed
//! behind the agent's back (a rule inserted, a rule deleted) is loaded whole again at
//! the next resync (5 s in tests).

use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{await_ping, await_programmed, cluster, ip};
use calico_e2e::{can_ping, serial};

fn table_handle(c: &Cluster) -> u64 {
    let h = c.table_handle(0);
    assert!(h != 0, "no table inet calico");
    h
}

#[test]
fn resyncs_keep_an_untouched_table_and_repair_a_changed_one() {
    let _g = serial();
    let c = cluster(
        1,
        None,
        &[("a", 0, Some("10.65.0.1"), "g"), ("b", 0, Some("10.65.0.2"), "g")],
    )
    .expect("cluster");
    await_programmed(&c, "a", Duration::from_secs(30));
    await_programmed(&c, "b", Duration::from_secs(30));
    await_ping(&c, "a", ip("10.65.0.2"), Duration::from_secs(30));

    // Two resyncs (5 s each) later the table is the same object: nothing was sent.
    // (The first check after start may load once more if the start-up listing raced
    // a reconcile; give it one period to settle.)
    std::thread::sleep(Duration::from_secs(6));
    let handle = table_handle(&c);
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        table_handle(&c),
        handle,
        "a resync that found nothing changed replaced the table"
    );

    // Someone inserts a drop into our forward chain: traffic stops, then the agent
    // notices at its next check and loads the table whole.
    c.host_ns(0)
        .exec(&["nft", "insert", "rule", "inet", "calico", "forward", "drop"])
        .expect("tamper");
    assert!(
        !can_ping(c.wl("a"), ip("10.65.0.2"), 1),
        "the inserted drop did not drop"
    );
    let t = Instant::now();
    let repaired = Cluster::wait_for(Duration::from_secs(15), || table_handle(&c) != handle);
    assert!(repaired, "the changed table was never loaded again\n{}", c.dump_logs());
    eprintln!("changed table loaded again after {:?}", t.elapsed());
    await_ping(&c, "a", ip("10.65.0.2"), Duration::from_secs(5));
    assert!(c.agents["host1"].log().contains("changed behind the agent's back"));

    // A policy goes to the kernel as a delta (the table stays the same object); the
    // resyncs after it compare the listing and load nothing.
    let handle = table_handle(&c);
    c.apply(
        "apiVersion: calico/v1\nkind: Policy\nmetadata: {name: readback-delta}\nspec:\n  order: 5\n  selector: group == \"g\"\n  ingress:\n    - action: Allow\n      protocol: TCP\n      destination: {ports: [8080]}\n",
    )
    .expect("apply policy");
    let listed = || {
        c.host_ns(0)
            .exec(&["nft", "list", "table", "inet", "calico"])
            .unwrap_or_default()
    };
    assert!(
        Cluster::wait_for(Duration::from_secs(15), || listed().contains("pol-in-readback-delta")),
        "the policy never reached the table\n{}",
        c.dump_logs()
    );
    assert_eq!(table_handle(&c), handle, "the policy was not a delta");
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        table_handle(&c),
        handle,
        "a resync after deltas reloaded an untouched table"
    );

    // `calicoctl render --what nft` (text) is what the kernel lists, as the agent's
    // check compares them (counters zeroed, element and object order aside).
    let rendered = c
        .ctl(&["render", "--node", "host1", "--what", "nft"])
        .expect("calicoctl render");
    let kernel = listed();
    assert_eq!(
        calico_render::normalize_listing(&rendered),
        calico_render::normalize_listing(&kernel),
        "calicoctl render --what nft is not what nft lists\nrendered:\n{rendered}\nkernel:\n{kernel}"
    );

    // A rule deleted by hand is found and repaired.
    let handles = c
        .host_ns(0)
        .exec(&["nft", "-a", "list", "chain", "inet", "calico", "pol-in-readback-delta"])
        .expect("list chain");
    let rule = handles
        .lines()
        .filter(|l| l.contains("dport 8080"))
        .find_map(|l| l.split("# handle ").nth(1))
        .map(|h| h.trim().to_string())
        .expect("a rule handle");
    c.host_ns(0)
        .exec(&[
            "nft",
            "delete",
            "rule",
            "inet",
            "calico",
            "pol-in-readback-delta",
            "handle",
            &rule,
        ])
        .expect("delete rule");
    assert!(!listed().contains("dport 8080"), "the rule is still there");
    let repaired = Cluster::wait_for(Duration::from_secs(15), || listed().contains("tcp dport 8080"));
    assert!(repaired, "the deleted rule was never repaired\n{}", c.dump_logs());
    assert_ne!(table_handle(&c), handle, "repaired by a whole load");
}
