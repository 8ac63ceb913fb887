//! An agent started without --log follows ClusterConfig's logLevel: debug lines appear
//! when it is set to debug, and info lines stop when it is set to warn; one started
//! with --log keeps the level it was given.

use std::time::Duration;

use calico_e2e::cluster::Cluster;
use calico_e2e::serial;

fn cluster_config(level: &str) -> String {
    format!("apiVersion: calico/v1\nkind: ClusterConfig\nmetadata: {{name: default}}\nspec: {{logLevel: {level}}}\n")
}

fn group(name: &str) -> String {
    format!("apiVersion: calico/v1\nkind: Group\nmetadata: {{name: {name}}}\nspec: {{}}\n")
}

/// The part of `log` after its last line containing `marker`.
fn after<'a>(log: &'a str, marker: &str) -> &'a str {
    log.rfind(marker).map_or("", |i| &log[i..])
}

#[test]
fn the_agent_follows_cluster_config_log_level_unless_fixed_by_flag() {
    let _g = serial();
    std::env::remove_var("CALICO_LOG");
    let mut c = Cluster::new(2).expect("cluster");
    c.start_agent(0).expect("agent following ClusterConfig");
    c.start_agent_with(1, &["--log".into(), "info".into()])
        .expect("agent with --log");
    let reconciled = |name: &str| {
        Cluster::wait_for(Duration::from_secs(15), || {
            c.agents[name].log().contains("loading the nftables table whole")
        })
    };
    assert!(reconciled("host1") && reconciled("host2"));
    assert!(
        !c.agents["host1"].log().contains("DEBUG"),
        "{}",
        c.agents["host1"].log()
    );

    // debug: the reconcile's debug line shows up on host1 only.
    c.apply(&cluster_config("debug")).expect("logLevel debug");
    c.apply(&group("g1")).expect("a change to reconcile");
    let debug_seen = Cluster::wait_for(Duration::from_secs(15), || {
        let log = c.agents["host1"].log();
        after(&log, "log level set by ClusterConfig").contains("DEBUG")
    });
    assert!(debug_seen, "{}", c.agents["host1"].log());
    assert!(
        c.agents["host1"].log().contains("from=\"info\" to=\"debug\"")
            || c.agents["host1"].log().contains("from=info to=debug"),
        "{}",
        c.agents["host1"].log()
    );
    assert!(
        !c.agents["host2"].log().contains("DEBUG"),
        "--log info was overridden:\n{}",
        c.agents["host2"].log()
    );

    // warn: after the switch, no more INFO or DEBUG lines, though changes keep coming.
    c.apply(&cluster_config("warn")).expect("logLevel warn");
    let switched = Cluster::wait_for(Duration::from_secs(15), || {
        c.agents["host1"].log().contains("to=\"warn\"") || c.agents["host1"].log().contains("to=warn")
    });
    assert!(switched, "{}", c.agents["host1"].log());
    for i in 0..3 {
        c.apply(&group(&format!("w{i}"))).expect("changes at warn");
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = c.agents["host1"].log();
    let tail = after(&log, "log level set by ClusterConfig");
    let later: Vec<&str> = tail
        .lines()
        .skip(1)
        .filter(|l| l.contains(" INFO ") || l.contains(" DEBUG "))
        .collect();
    assert!(
        later.is_empty(),
        "lines below warn after the switch:\n{}",
        later.join("\n")
    );
    // The fixed agent still logs at info.
    assert!(
        c.agents["host2"].log().contains(" INFO "),
        "{}",
        c.agents["host2"].log()
    );
}
