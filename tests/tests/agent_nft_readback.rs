//! The periodic check reads our nftables table back: a resync that finds it as loaded
//! sends nothing (the table, its handle and its counters stay), and a table changed
//! behind the agent's back is loaded whole again at the next resync (5 s in tests).

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
}
