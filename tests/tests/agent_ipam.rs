//! IPAM through the agent: Containers without `ips` get addresses, keep them across
//! agent restarts, release them on delete; 30 Containers created at once on three
//! hosts get distinct addresses and reach their group. (The store's own tests cover
//! IPAM itself at scale: 1000 create/delete cycles with a clean check and 300
//! concurrent assignments over three nodes, in store/tests/ipam.rs.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{self, await_ping, await_programmed};
use calico_e2e::{can_ping, serial};
use calico_schema::Resource;
use calico_store::ipam::{container_handle, Ipam};

/// IPAM's handles (name -> addresses) and whether `ipam check` is clean against the
/// Containers and pools stored now.
fn ipam_state(c: &Cluster) -> (BTreeMap<String, Vec<IpAddr>>, bool, String) {
    c.with_store(|s| {
        Box::pin(async move {
            let ipam = Ipam::new(s.client(), Duration::from_secs(3));
            let handles = ipam.handles().await?.into_iter().map(|(h, i)| (h, i.ips)).collect();
            let listing = s.list(None).await?;
            let mut live = BTreeSet::new();
            let mut pools = Vec::new();
            for r in listing.resources {
                match r {
                    Resource::Container(ct) => {
                        live.insert(container_handle(&ct.metadata.name));
                    }
                    Resource::IpPool(p) => pools.push(p),
                    _ => {}
                }
            }
            let report = ipam.check(&live, &pools).await?;
            Ok((handles, report.is_clean(), format!("{report:?}")))
        })
    })
    .expect("read IPAM")
}

#[test]
fn auto_assigned_ips_are_stable_across_restarts_and_released_on_delete() {
    let _g = serial();
    let wls: &[scenario::Wl] = &[("x", 0, None, "G"), ("y", 1, None, "G")];
    let mut c = scenario::cluster(2, None, wls).expect("cluster");
    let x = await_programmed(&c, "x", Duration::from_secs(15));
    let y = await_programmed(&c, "y", Duration::from_secs(15));
    assert_eq!((x.len(), y.len()), (1, 1), "one v4 address each: {x:?} {y:?}");
    assert_ne!(x, y);
    let pool: ipnet::IpNet = "10.65.0.0/16".parse().unwrap();
    assert!(pool.contains(&x[0]) && pool.contains(&y[0]));
    // The spec is never rewritten: the address is status only.
    let stored = c.with_store(|s| Box::pin(async move { Ok(s.get(calico_schema::Kind::Container, "x").await?) }));
    match stored.unwrap() {
        Some(Resource::Container(ct)) => assert_eq!(ct.spec.ips, None),
        other => panic!("{other:?}"),
    }
    await_ping(&c, "x", y[0], Duration::from_secs(30));
    await_ping(&c, "y", x[0], Duration::from_secs(10));
    let inside = c.wl("x").exec(&["ip", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(inside.contains(&format!("{}/32", x[0])), "{inside}");

    // Restarts, graceful and not, keep the addresses.
    c.agent("host1").stop();
    c.agent("host1").start();
    c.agent("host2").kill9();
    c.agent("host2").start();
    for a in ["host1", "host2"] {
        assert!(Cluster::wait_for(Duration::from_secs(15), || {
            c.agents[a].metric("calico_reconciles_total").is_some_and(|n| n >= 1.0)
        }));
    }
    assert_eq!(await_programmed(&c, "x", Duration::from_secs(5)), x);
    assert_eq!(await_programmed(&c, "y", Duration::from_secs(5)), y);
    let inside = c.wl("x").exec(&["ip", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(inside.contains(&format!("{}/32", x[0])), "{inside}");
    await_ping(&c, "x", y[0], Duration::from_secs(10));
    let (handles, clean, report) = ipam_state(&c);
    assert_eq!(handles.get("container/x"), Some(&x));
    assert!(clean, "{report}");

    // Deleting the Container releases its address.
    c.ctl(&["delete", "container", "x"]).unwrap();
    let ok = Cluster::wait_for(Duration::from_secs(10), || {
        !ipam_state(&c).0.contains_key("container/x") && c.container_status("x").is_none()
    });
    assert!(ok, "x's address was not released\n{}", c.dump_logs());
    let (handles, clean, report) = ipam_state(&c);
    assert_eq!(handles.get("container/y"), Some(&y));
    assert!(clean, "{report}");
    assert!(
        c.host_ns(0)
            .exec(&["ip", "link", "show"])
            .unwrap()
            .matches("cali")
            .count()
            == 0
    );
}

#[test]
fn thirty_containers_at_once_on_three_hosts_get_distinct_ips_and_reach_their_group() {
    let _g = serial();
    const N: usize = 30;
    let mut c = scenario::cluster(3, None, &[]).expect("cluster");
    let group = |i: usize| format!("g{}", i % 5);
    let mut yaml = String::new();
    for g in 0..5 {
        yaml.push_str(&format!(
            "---\napiVersion: calico/v1\nkind: Group\nmetadata: {{name: g{g}}}\nspec: {{}}\n"
        ));
    }
    let names: Vec<String> = (0..N).map(|i| format!("w{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        c.workload_ns(n).unwrap();
        yaml.push_str(&c.container_yaml(n, &format!("host{}", i % 3 + 1), None, &[&group(i)]));
    }
    let t = Instant::now();
    c.apply(&yaml).unwrap();
    let ips: Vec<IpAddr> = names
        .iter()
        .map(|n| {
            let v = await_programmed(&c, n, Duration::from_secs(30));
            assert_eq!(v.len(), 1, "{n}: {v:?}");
            v[0]
        })
        .collect();
    let programmed = t.elapsed();
    let distinct: BTreeSet<&IpAddr> = ips.iter().collect();
    assert_eq!(distinct.len(), N, "duplicate addresses: {ips:?}");

    // Each reaches the next member of its group (always on another host), and not a
    // member of another group; probed in parallel.
    let partner = |i: usize| (i + 5) % N; // same group, host (i+5)%3 != i%3
    let stranger = |i: usize| (i + 1) % N; // other group
    let reach_all = || {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..N)
                .map(|i| {
                    let (from, to) = (c.wl(&names[i]), ips[partner(i)]);
                    s.spawn(move || can_ping(from, to, 1))
                })
                .collect();
            hs.into_iter().all(|h| h.join().unwrap_or(false))
        })
    };
    assert!(
        Cluster::wait_for(Duration::from_secs(30), reach_all),
        "not every workload reached its group\n{}",
        c.dump_logs()
    );
    let reachable = t.elapsed();
    let leaks: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..N)
            .map(|i| {
                let (from, to) = (c.wl(&names[i]), ips[stranger(i)]);
                let label = format!("{}->{}", names[i], names[stranger(i)]);
                s.spawn(move || can_ping(from, to, 1).then_some(label))
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().ok().flatten()).collect()
    });
    assert!(leaks.is_empty(), "reached across groups: {leaks:?}");
    let (handles, clean, report) = ipam_state(&c);
    assert_eq!(handles.len(), N);
    assert!(clean, "{report}");
    println!(
        "{N} Containers on 3 hosts: all programmed after {programmed:?}, all reaching their group after {reachable:?}"
    );
}
