//! Two masters: exactly one leads; killing it hands leadership to the other within the
//! lease TTL; the leader runs the sync and collects IPAM garbage, each piece once; a
//! just-allocated address whose Container is not visible yet is not robbed.

mod sync_support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use calico_schema::{IpPool, Kind, Resource};
use calico_store::ipam::Ipam;
use sync_support::*;

const TTL: u64 = 2;

fn pools(db: &Db) -> Vec<IpPool> {
    db.list()
        .into_iter()
        .filter_map(|r| if let Resource::IpPool(p) = r { Some(p) } else { None })
        .collect()
}

fn assign(db: &Db, ipam: &Ipam, handle: &str, node: &str) -> Vec<IpAddr> {
    let ps = pools(db);
    db.block_on(ipam.auto_assign(handle, node, &ps, false)).expect("assign")
}

fn holds(db: &Db, ipam: &Ipam, handle: &str) -> bool {
    db.block_on(ipam.handles()).expect("handles").contains_key(handle)
}

fn leader(db: &Db) -> Option<serde_json::Value> {
    db.json("master/leader")
}

fn total(ps: &[&Proc], needle: &str) -> usize {
    ps.iter().map(|p| p.count(needle)).sum()
}

fn master(name: &str, ip: &str, ep: &str, dir: &str) -> Proc {
    Proc::spawn(
        name,
        ep,
        &[
            "master",
            "--ip",
            ip,
            "--name",
            name,
            "--lease-ttl",
            &TTL.to_string(),
            "--gc-grace",
            "1s",
            "--gc-interval",
            "200ms",
            "--sync-dir",
            dir,
            "--sync-id",
            "ha",
            "--sync-interval",
            "500ms",
        ],
    )
}

#[test]
fn one_leader_fails_over_within_the_ttl_and_collects_garbage_once() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    let ipam = db.ipam();
    db.put_yaml(
        "apiVersion: calico/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.65.0.0/16}\n---\n\
         apiVersion: calico/v1\nkind: Node\nmetadata: {name: n1}\nspec: {}\n---\n\
         apiVersion: calico/v1\nkind: Node\nmetadata: {name: n2}\nspec: {}\n---\n\
         apiVersion: calico/v1\nkind: Container\nmetadata: {name: c1}\nspec: {node: n1, netns: /x}\n---\n\
         apiVersion: calico/v1\nkind: Container\nmetadata: {name: c2}\nspec: {node: n2, netns: /y}\n",
    );
    let c1_ip = assign(&db, &ipam, "container/c1", "n1");
    assign(&db, &ipam, "container/c2", "n2");
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap().to_string();
    std::fs::write(d.path().join("g.yaml"), group("ha", "1")).unwrap();

    let mut a = master("a", "127.0.0.1", &ep, &dir);
    let mut b = master("b", "127.0.0.2", &ep, &dir);

    // Exactly one leads; the other waits.
    let first = wait_for(Duration::from_secs(10), || leader(&db)).expect("a leader");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(total(&[&a, &b], "leading:"), 1, "a:\n{}\nb:\n{}", a.log(), b.log());
    let (lead, wait) = if first["name"] == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(first["pid"], lead.pid());
    assert!(lead.count("leading:") == 1);
    assert!(wait.log().contains("waiting: another master leads"), "{}", wait.log());
    assert_eq!(leader(&db).unwrap()["pid"], lead.pid(), "leadership is stable");

    // The leader runs the sync.
    assert!(wait_for(Duration::from_secs(5), || db.get(Kind::Group, "ha")).is_some());
    let st = db.status("ha").unwrap();
    assert!(
        st["runner"]
            .as_str()
            .unwrap()
            .starts_with(&format!("master {}", lead.name)),
        "{st}"
    );

    // IPAM garbage of a deleted Container is collected, once.
    db.delete(Kind::Container, "c1");
    assert!(
        wait_for(Duration::from_secs(6), || (!holds(&db, &ipam, "container/c1"))
            .then_some(()))
        .is_some(),
        "c1's address collected"
    );
    let live: BTreeSet<String> = ["container/c2".to_string()].into();
    let report = db.block_on(ipam.check(&live, &pools(&db))).unwrap();
    assert!(
        report.leaked.is_empty() && report.dangling_handles.is_empty(),
        "{report:?}"
    );
    let all = db.block_on(ipam.all_blocks()).unwrap();
    assert!(
        all.iter().all(|blk| !blk.allocations.contains_key(&c1_ip[0])),
        "{all:?}"
    );

    // A just-allocated address whose Container resource shows up late is not robbed.
    let young_ip = assign(&db, &ipam, "container/young", "n1");
    std::thread::sleep(Duration::from_millis(600));
    db.put_yaml("apiVersion: calico/v1\nkind: Container\nmetadata: {name: young}\nspec: {node: n1, netns: /z}\n");
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(db.block_on(ipam.handle_ips("container/young")).unwrap(), young_ip);
    assert_eq!(total(&[&a, &b], "gc: released the addresses of Container c1"), 1);
    assert_eq!(total(&[&a, &b], "gc: released"), 1, "nothing else collected");

    // Several TTLs have passed: still one leader, never interrupted.
    assert_eq!(total(&[&a, &b], "leading:"), 1, "a:\n{}\nb:\n{}", a.log(), b.log());
    assert_eq!(
        total(&[&a, &b], "no longer leading"),
        0,
        "a:\n{}\nb:\n{}",
        a.log(),
        b.log()
    );

    // Kill the leader: the other takes over within the TTL (plus etcd's expiry tick and
    // one poll).
    let (lead, wait) = if first["name"] == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let old_released = lead.log().matches("gc: released").count();
    let t0 = Instant::now();
    lead.kill();
    let next = wait_for(Duration::from_secs(TTL + 5), || {
        leader(&db).filter(|l| l["pid"] == wait.pid())
    })
    .expect("the other master takes over");
    let took = t0.elapsed();
    eprintln!("leadership moved after {took:?}");
    assert!(took <= Duration::from_millis(TTL * 1000 + 1500), "took {took:?}");
    assert_eq!(next["name"], wait.name.as_str());
    assert!(wait_for(Duration::from_secs(2), || (wait.count("leading:") == 1).then_some(())).is_some());

    // The new leader collects new garbage: a deleted Container, and a Node that is gone
    // (its Container first, then its blocks), each once.
    db.delete(Kind::Container, "young");
    db.delete(Kind::Container, "c2");
    db.delete(Kind::Node, "n2");
    let gone = wait_for(Duration::from_secs(8), || {
        let blocks = db.block_on(ipam.all_blocks()).unwrap();
        let n2_blocks = blocks.iter().any(|blk| blk.affinity.as_deref() == Some("n2"));
        (!n2_blocks && !holds(&db, &ipam, "container/young") && !holds(&db, &ipam, "container/c2")).then_some(())
    });
    assert!(gone.is_some(), "{}", wait.log());
    let report = db.block_on(ipam.check(&BTreeSet::new(), &pools(&db))).unwrap();
    assert!(report.is_clean(), "{report:?}");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        wait.count("gc: released the addresses of Container young"),
        1,
        "{}",
        wait.log()
    );
    assert_eq!(
        wait.count("gc: released the addresses of Container c2"),
        1,
        "{}",
        wait.log()
    );
    assert_eq!(
        wait.count("gc: released the blocks and addresses of Node n2"),
        1,
        "{}",
        wait.log()
    );
    assert_eq!(
        lead.log().matches("gc: released").count(),
        old_released,
        "the dead one did nothing"
    );

    // ... and runs the sync: a change to the directory is applied by it.
    std::fs::write(d.path().join("g.yaml"), group("ha", "2")).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || db
            .get(Kind::Group, "ha")
            .filter(|g| rev_of(g) == Some("2")))
        .is_some(),
        "{}",
        wait.log()
    );
    let st = db.status("ha").unwrap();
    assert!(
        st["runner"]
            .as_str()
            .unwrap()
            .starts_with(&format!("master {}", wait.name)),
        "{st}"
    );
    if std::env::var_os("SHOW_LOGS").is_some() {
        eprintln!(
            "---- {} ----\n{}---- {} ----\n{}",
            lead.name,
            lead.log(),
            wait.name,
            wait.log()
        );
    }
}

#[test]
fn a_stopped_master_hands_over_at_once() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let db = Db::connect(&ep);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("g.yaml"), group("ha", "1")).unwrap();
    let dir = d.path().to_str().unwrap();
    let a = master("a", "127.0.0.1", &ep, dir);
    wait_for(Duration::from_secs(10), || leader(&db).filter(|l| l["pid"] == a.pid())).expect("a leads");
    let b = master("b", "127.0.0.2", &ep, dir);
    assert!(wait_for(Duration::from_secs(5), || b.log().contains("waiting").then_some(())).is_some());
    // SIGTERM: the leader revokes its lease on the way out.
    let t0 = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    wait_for(Duration::from_secs(5), || leader(&db).filter(|l| l["pid"] == b.pid())).expect("b leads");
    assert!(t0.elapsed() < Duration::from_secs(TTL), "took {:?}", t0.elapsed());
    assert!(
        wait_for(Duration::from_secs(2), || a
            .log()
            .contains("leadership released")
            .then_some(()))
        .is_some(),
        "{}",
        a.log()
    );
}
