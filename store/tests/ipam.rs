//! IPAM against a real etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use calico_schema::{object, IpPool, IpPoolSpec, Kind};
use calico_store::ipam::{container_handle, Ipam, IpamError};
use calico_store::testing::TestEtcd;
use ipnet::IpNet;

fn pool(cidr: &str, block_size: Option<u8>, disabled: bool) -> IpPool {
    object(
        Kind::IPPool,
        format!("pool-{}", cidr.replace(['/', ':', '.'], "-")),
        IpPoolSpec {
            cidr: cidr.parse().unwrap(),
            block_size,
            nat_outgoing: false,
            disabled,
        },
    )
}

async fn client(e: &TestEtcd) -> etcd_client::Client {
    etcd_client::Client::connect([e.endpoint()], None).await.unwrap()
}

async fn ipam(e: &TestEtcd) -> Ipam {
    Ipam::new(client(e).await, Duration::from_secs(5))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn live(handles: &[&str]) -> BTreeSet<String> {
    handles.iter().map(std::string::ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_assign_is_stable_and_release_frees() {
    let mut e = TestEtcd::start();
    let pools = [pool("10.65.0.0/16", None, false)];
    let ipam = ipam(&e).await;
    let h = container_handle("web");
    assert_eq!(h, "container/web");

    let a = ipam.auto_assign(&h, "n1", &pools, true).await.unwrap();
    assert_eq!(
        a,
        vec![ip("10.65.0.0")],
        "a /26 block uses all its addresses, the network one too"
    );
    assert_eq!(ipam.auto_assign(&h, "n1", &pools, true).await.unwrap(), a);
    // Even when asked on another node (the Container moved): the handle keeps its address.
    assert_eq!(ipam.auto_assign(&h, "n2", &pools, false).await.unwrap(), a);
    assert_eq!(
        ipam.handles().await.unwrap()[&h].node,
        "n2",
        "the handle follows the Container"
    );
    assert_eq!(ipam.handle_ips(&h).await.unwrap(), a);
    assert_eq!(ipam.node_blocks("n1").await.unwrap(), vec![net("10.65.0.0/26")]);
    assert!(ipam.node_blocks("n2").await.unwrap().is_empty());

    // A new client (agent restart) and an etcd restart keep it.
    e.restart();
    let again = Ipam::new(client(&e).await, Duration::from_secs(5));
    assert_eq!(again.auto_assign(&h, "n1", &pools, false).await.unwrap(), a);

    let other = again.auto_assign("container/db", "n1", &pools, false).await.unwrap();
    assert_eq!(other, vec![ip("10.65.0.1")]);
    let handles = again.handles().await.unwrap();
    assert_eq!(handles.len(), 2);
    assert_eq!(handles["container/web"].node, "n1");

    assert_eq!(again.release_handle(&h).await.unwrap(), a);
    assert!(again.handle_ips(&h).await.unwrap().is_empty());
    assert!(
        again.release_handle(&h).await.unwrap().is_empty(),
        "release is idempotent"
    );
    let blocks = again.all_blocks().await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].affinity.as_deref(), Some("n1"));
    assert_eq!(blocks[0].allocated, 1);
    assert_eq!(blocks[0].capacity, 64);
    assert_eq!(
        blocks[0].allocations,
        BTreeMap::from([(ip("10.65.0.1"), "container/db".to_string())])
    );

    // A released address is not handed out again at once.
    let next = again.auto_assign("container/web", "n1", &pools, false).await.unwrap();
    assert_eq!(next, vec![ip("10.65.0.2")]);

    let report = again
        .check(&live(&["container/web", "container/db"]), &pools)
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    let report = again.check(&live(&["container/web"]), &pools).await.unwrap();
    assert_eq!(report.leaked, vec![(ip("10.65.0.1"), "container/db".to_string())]);
    assert!(!report.is_clean());
    assert_eq!(
        again.release_ip(ip("10.65.0.1")).await.unwrap(),
        Some("container/db".to_string())
    );
    assert_eq!(again.release_ip(ip("10.65.0.1")).await.unwrap(), None);
    assert!(again.handle_ips("container/db").await.unwrap().is_empty());
    let report = again.check(&live(&["container/web"]), &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_addresses_conflict_names_the_holder() {
    let e = TestEtcd::start();
    let pools = [pool("10.65.0.0/16", None, false)];
    let ipam = ipam(&e).await;

    ipam.assign_ips("container/a", "n1", &[ip("10.65.0.5")], &pools)
        .await
        .unwrap();
    ipam.assign_ips("container/a", "n1", &[ip("10.65.0.5")], &pools)
        .await
        .unwrap();
    match ipam.assign_ips("container/b", "n2", &[ip("10.65.0.5")], &pools).await {
        Err(IpamError::InUse { ip: i, holder }) => {
            assert_eq!(i, ip("10.65.0.5"));
            assert_eq!(holder, "container/a");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    // All or nothing: b got neither address.
    assert!(matches!(
        ipam.assign_ips("container/b", "n2", &[ip("10.65.0.9"), ip("10.65.0.5")], &pools)
            .await,
        Err(IpamError::InUse { .. })
    ));
    assert!(ipam.handle_ips("container/b").await.unwrap().is_empty());
    assert!(matches!(
        ipam.assign_ips("container/b", "n2", &[ip("10.99.0.1")], &pools).await,
        Err(IpamError::NotInPool(a)) if a == ip("10.99.0.1")
    ));
    // The explicit address's block was created affine to n1.
    assert_eq!(ipam.node_blocks("n1").await.unwrap(), vec![net("10.65.0.0/26")]);

    // Automatic assignment on n1 works around it, over two blocks.
    let mut got = BTreeSet::new();
    for i in 0..70 {
        let a = ipam
            .auto_assign(&format!("container/auto{i}"), "n1", &pools, false)
            .await
            .unwrap();
        assert_eq!(a.len(), 1);
        assert_ne!(a[0], ip("10.65.0.5"));
        assert!(got.insert(a[0]), "duplicate {}", a[0]);
    }
    assert_eq!(
        ipam.node_blocks("n1").await.unwrap(),
        vec![net("10.65.0.0/26"), net("10.65.0.64/26")]
    );

    // Explicit addresses add to the handle; an auto-assigned address can't be taken.
    ipam.assign_ips("container/a", "n1", &[ip("10.65.200.1")], &pools)
        .await
        .unwrap();
    assert_eq!(
        ipam.handle_ips("container/a").await.unwrap(),
        vec![ip("10.65.0.5"), ip("10.65.200.1")]
    );
    match ipam.assign_ips("container/b", "n1", &[ip("10.65.0.0")], &pools).await {
        Err(IpamError::InUse { holder, .. }) => assert_eq!(holder, "container/auto0"),
        other => panic!("expected InUse, got {other:?}"),
    }

    // Released, the address is free for another handle.
    assert_eq!(
        ipam.release_ip(ip("10.65.0.5")).await.unwrap(),
        Some("container/a".to_string())
    );
    assert_eq!(ipam.handle_ips("container/a").await.unwrap(), vec![ip("10.65.200.1")]);
    ipam.assign_ips("container/b", "n2", &[ip("10.65.0.5")], &pools)
        .await
        .unwrap();
    let mut all = live(&["container/a", "container/b"]);
    all.extend((0..70).map(|i| format!("container/auto{i}")));
    let report = ipam.check(&all, &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// A handle gives up some of its addresses (a Container whose spec dropped one): only
/// those it holds, the rest stays, and the handle goes with its last address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_ips_frees_only_the_handles_own_and_keeps_the_rest() {
    let e = TestEtcd::start();
    let pools = [
        pool("10.65.0.0/16", None, false),
        pool("fd00:65::/64", Some(122), false),
    ];
    let ipam = ipam(&e).await;
    let (m, other) = (container_handle("multi"), container_handle("other"));
    ipam.assign_ips(&m, "n1", &[ip("10.65.2.1"), ip("fd00:65::2:1")], &pools)
        .await
        .unwrap();
    ipam.assign_ips(&other, "n1", &[ip("10.65.2.9")], &pools).await.unwrap();

    // Another handle's address and a free one are not released through this handle.
    let r = ipam
        .release_ips(&m, &[ip("fd00:65::2:1"), ip("10.65.2.9"), ip("10.65.3.3")])
        .await
        .unwrap();
    assert_eq!(r, vec![ip("fd00:65::2:1")]);
    assert_eq!(ipam.handle_ips(&m).await.unwrap(), vec![ip("10.65.2.1")]);
    assert_eq!(ipam.handle_ips(&other).await.unwrap(), vec![ip("10.65.2.9")]);
    // Idempotent; and the freed address can be taken.
    assert!(ipam.release_ips(&m, &[ip("fd00:65::2:1")]).await.unwrap().is_empty());
    ipam.assign_ips(&other, "n1", &[ip("fd00:65::2:1")], &pools)
        .await
        .unwrap();
    let report = ipam.check(&live(&[&m, &other]), &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");

    // The last address: the handle goes too.
    assert_eq!(
        ipam.release_ips(&m, &[ip("10.65.2.1")]).await.unwrap(),
        vec![ip("10.65.2.1")]
    );
    assert!(!ipam.handles().await.unwrap().contains_key(&m));
    let report = ipam.check(&live(&[&other]), &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_pools_are_never_used() {
    let e = TestEtcd::start();
    let ipam = ipam(&e).await;
    let only_disabled = [pool("10.70.0.0/24", None, true)];
    assert!(matches!(
        ipam.auto_assign("container/x", "n1", &only_disabled, true).await,
        Err(IpamError::NoPool)
    ));
    assert!(matches!(
        ipam.assign_ips("container/x", "n1", &[ip("10.70.0.3")], &only_disabled)
            .await,
        Err(IpamError::NotInPool(_))
    ));

    // n1 gets a block in 10.70 while it is enabled ...
    let first = [pool("10.70.0.0/24", None, false)];
    let a = ipam.auto_assign("container/a", "n1", &first, false).await.unwrap();
    assert_eq!(a, vec![ip("10.70.0.0")]);
    // ... then 10.70 is disabled and 10.71 added: the affine block is no longer used.
    let pools = [pool("10.70.0.0/24", None, true), pool("10.71.0.0/24", None, false)];
    for i in 0..80 {
        let got = ipam
            .auto_assign(&format!("container/b{i}"), "n1", &pools, false)
            .await
            .unwrap();
        assert!(net("10.71.0.0/24").contains(&got[0]), "{got:?}");
    }
    assert_eq!(
        ipam.node_blocks("n1").await.unwrap(),
        vec![net("10.70.0.0/26"), net("10.71.0.0/26"), net("10.71.0.64/26")]
    );
    // Not even borrowed: with 10.71 full, the free space in 10.70 stays unused.
    for i in 80..256 {
        ipam.auto_assign(&format!("container/b{i}"), &format!("n{}", i % 3), &pools, false)
            .await
            .unwrap();
    }
    assert!(matches!(
        ipam.auto_assign("container/last", "n1", &pools, false).await,
        Err(IpamError::Exhausted { version: 4 })
    ));
    assert!(ipam.handle_ips("container/last").await.unwrap().is_empty());
    let mut all = live(&["container/a"]);
    all.extend((0..256).map(|i| format!("container/b{i}")));
    let report = ipam.check(&all, &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6() {
    let e = TestEtcd::start();
    let ipam = ipam(&e).await;
    let pools = [pool("10.65.0.0/16", None, false), pool("fd00:1::/64", None, false)];
    let a = ipam.auto_assign("container/a", "n1", &pools, true).await.unwrap();
    assert_eq!(a, vec![ip("10.65.0.0"), ip("fd00:1::")]);
    let b = ipam.auto_assign("container/b", "n1", &pools, false).await.unwrap();
    assert_eq!(b, vec![ip("10.65.0.1")]);
    let c = ipam.auto_assign("container/c", "n2", &pools, true).await.unwrap();
    assert_eq!(c, vec![ip("10.65.0.64"), ip("fd00:1::40")]);
    assert_eq!(
        ipam.node_blocks("n1").await.unwrap(),
        vec![net("10.65.0.0/26"), net("fd00:1::/122")]
    );
    ipam.assign_ips("container/d", "n2", &[ip("fd00:1::1:5")], &pools)
        .await
        .unwrap();
    assert_eq!(ipam.node_blocks("n2").await.unwrap().len(), 3);
    assert_eq!(ipam.release_handle("container/a").await.unwrap(), a);

    // IPv6 only.
    let v6 = [pool("fd00:2::/112", Some(120), false)];
    assert_eq!(
        ipam.auto_assign("container/e", "n3", &v6, true).await.unwrap(),
        vec![ip("fd00:2::")]
    );
    assert!(matches!(
        ipam.auto_assign("container/f", "n3", &v6, false).await,
        Err(IpamError::NoPool)
    ));
    let mut all_pools = pools.to_vec();
    all_pools.extend(v6);
    let report = ipam
        .check(
            &live(&["container/b", "container/c", "container/d", "container/e"]),
            &all_pools,
        )
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrows_when_the_pool_is_carved_up() {
    let e = TestEtcd::start();
    let ipam = ipam(&e).await;
    // Four blocks of four addresses.
    let pools = [pool("10.80.0.0/28", Some(30), false)];
    let mut n1 = Vec::new();
    for i in 0..12 {
        n1.extend(
            ipam.auto_assign(&format!("container/a{i}"), "n1", &pools, false)
                .await
                .unwrap(),
        );
    }
    let b = ipam.auto_assign("container/b", "n2", &pools, false).await.unwrap();
    assert_eq!(b, vec![ip("10.80.0.12")]);
    assert_eq!(ipam.node_blocks("n1").await.unwrap().len(), 3);
    assert_eq!(ipam.node_blocks("n2").await.unwrap(), vec![net("10.80.0.12/30")]);
    // n1's blocks are full and no block is left to claim: n1 borrows from n2's block.
    for i in 12..15 {
        let got = ipam
            .auto_assign(&format!("container/a{i}"), "n1", &pools, false)
            .await
            .unwrap();
        assert!(net("10.80.0.12/30").contains(&got[0]), "{got:?}");
        n1.extend(got);
    }
    assert_eq!(ipam.handles().await.unwrap()["container/a14"].node, "n1");
    assert_eq!(n1.iter().collect::<BTreeSet<_>>().len(), 15);
    assert!(matches!(
        ipam.auto_assign("container/z", "n2", &pools, false).await,
        Err(IpamError::Exhausted { version: 4 })
    ));
    // Affinity is unchanged by borrowing.
    assert_eq!(ipam.node_blocks("n2").await.unwrap(), vec![net("10.80.0.12/30")]);
    let blocks = ipam.all_blocks().await.unwrap();
    assert!(blocks.iter().all(|b| b.allocated == 4 && b.capacity == 4), "{blocks:?}");

    // Freed, the space goes back to whoever asks next.
    ipam.release_handle("container/a0").await.unwrap();
    assert_eq!(
        ipam.auto_assign("container/z", "n2", &pools, false).await.unwrap(),
        vec![ip("10.80.0.0")]
    );
    let mut all: BTreeSet<String> = (1..15).map(|i| format!("container/a{i}")).collect();
    all.extend(["container/b".to_string(), "container/z".to_string()]);
    let report = ipam.check(&all, &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_assign_release_cycles_leave_nothing_behind() {
    let e = TestEtcd::start();
    let ipam = ipam(&e).await;
    let pools = [pool("10.65.0.0/24", Some(28), false)];
    let handles: Vec<String> = (0..4).map(|i| container_handle(&format!("c{i}"))).collect();
    let mut held: BTreeMap<String, IpAddr> = BTreeMap::new();
    let start = Instant::now();
    for i in 0..1000 {
        let h = &handles[i % 4];
        let node = format!("n{}", i % 2);
        let got = if i % 10 == 9 {
            // Now and then an explicit address instead.
            let want = ip(&format!("10.65.0.{}", 200 + i % 4));
            ipam.assign_ips(h, &node, &[want], &pools).await.unwrap();
            want
        } else {
            ipam.auto_assign(h, &node, &pools, false).await.unwrap()[0]
        };
        if let Some(prev) = held.get(h) {
            assert_eq!(*prev, got, "cycle {i}: {h} still holds its address");
        }
        assert!(
            held.iter().all(|(o, a)| o == h || *a != got),
            "cycle {i}: {got} handed out twice: {held:?}"
        );
        held.insert(h.clone(), got);
        let victim = &handles[(i + 2) % 4];
        let released = ipam.release_handle(victim).await.unwrap();
        assert_eq!(released.first(), held.remove(victim).as_ref());
    }
    for h in &handles {
        ipam.release_handle(h).await.unwrap();
    }
    println!("1000 assign/release cycles: {:?}", start.elapsed());
    let report = ipam.check(&BTreeSet::new(), &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(ipam.handles().await.unwrap().is_empty());
    let blocks = ipam.all_blocks().await.unwrap();
    assert!(blocks.iter().all(|b| b.allocated == 0), "{blocks:?}");
    assert!(blocks.iter().all(|b| b.affinity.is_some()), "only affine blocks stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_assignments_are_distinct() {
    let e = TestEtcd::start();
    let base = client(&e).await;
    let pools = vec![pool("10.90.0.0/16", None, false)];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..3 {
        for i in 0..100 {
            let ipam = Ipam::new(base.clone(), Duration::from_secs(10));
            let pools = pools.clone();
            tasks.push(tokio::spawn(async move {
                let h = container_handle(&format!("n{n}-c{i}"));
                let ips = ipam.auto_assign(&h, &format!("node{n}"), &pools, false).await?;
                Ok::<_, IpamError>((h, n, ips))
            }));
        }
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    let elapsed = start.elapsed();
    println!("300 concurrent auto_assigns (3 nodes x 100): {elapsed:?}");

    let ipam = Ipam::new(base, Duration::from_secs(10));
    let distinct: BTreeSet<IpAddr> = results.iter().flat_map(|(_, _, ips)| ips.iter().copied()).collect();
    assert_eq!(distinct.len(), 300);
    assert!(results.iter().all(|(_, _, ips)| ips.len() == 1));
    for n in 0..3 {
        let blocks = ipam.node_blocks(&format!("node{n}")).await.unwrap();
        assert_eq!(blocks.len(), 2, "node{n}: {blocks:?}");
        for (_, _, ips) in results.iter().filter(|(_, m, _)| *m == n) {
            assert!(
                blocks.iter().any(|b| b.contains(&ips[0])),
                "node{n} got {ips:?} outside its blocks"
            );
        }
    }
    let all: BTreeSet<String> = results.iter().map(|(h, _, _)| h.clone()).collect();
    let report = ipam.check(&all, &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(ipam.handles().await.unwrap().len(), 300);
}

/// The agent's way: one Ipam per node, cloned into concurrent tasks, which take turns
/// per node instead of racing for the node's block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_assignments_through_shared_clones() {
    let e = TestEtcd::start();
    let pools = vec![pool("10.91.0.0/16", None, false)];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        // Each node has its own client, as separate hosts would.
        nodes.push(Ipam::new(client(&e).await, Duration::from_secs(10)));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (n, node_ipam) in nodes.iter().enumerate() {
        for i in 0..100 {
            let ipam = node_ipam.clone();
            let pools = pools.clone();
            tasks.push(tokio::spawn(async move {
                let h = container_handle(&format!("n{n}-c{i}"));
                let ips = ipam.auto_assign(&h, &format!("node{n}"), &pools, false).await?;
                Ok::<_, IpamError>((h, ips))
            }));
        }
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    println!(
        "300 concurrent auto_assigns through 3 shared per-node Ipams: {:?}",
        start.elapsed()
    );
    let distinct: BTreeSet<IpAddr> = results.iter().flat_map(|(_, ips)| ips.iter().copied()).collect();
    assert_eq!(distinct.len(), 300);
    let all: BTreeSet<String> = results.iter().map(|(h, _)| h.clone()).collect();
    let report = nodes[0].check(&all, &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    for n in 0..3 {
        assert_eq!(nodes[0].node_blocks(&format!("node{n}")).await.unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_assignments_of_one_handle_agree() {
    let e = TestEtcd::start();
    let base = client(&e).await;
    let pools = vec![pool("10.65.0.0/16", None, false)];
    let mut tasks = Vec::new();
    for i in 0..20 {
        let ipam = Ipam::new(base.clone(), Duration::from_secs(10));
        let pools = pools.clone();
        tasks.push(tokio::spawn(async move {
            ipam.auto_assign("container/same", &format!("n{}", i % 2), &pools, true)
                .await
        }));
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let ipam = Ipam::new(base, Duration::from_secs(10));
    let report = ipam.check(&live(&["container/same"]), &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    let blocks = ipam.all_blocks().await.unwrap();
    assert_eq!(blocks.iter().map(|b| b.allocated).sum::<usize>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_is_unavailable_within_the_timeout() {
    let mut e = TestEtcd::start();
    let pools = [pool("10.65.0.0/16", None, false)];
    let ipam = Ipam::new(client(&e).await, Duration::from_millis(500));
    let a = ipam.auto_assign("container/a", "n1", &pools, false).await.unwrap();
    e.stop();
    let t = Instant::now();
    let err = ipam.auto_assign("container/b", "n1", &pools, false).await.unwrap_err();
    assert!(matches!(err, IpamError::Unavailable(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(matches!(
        ipam.release_handle("container/a").await,
        Err(IpamError::Unavailable(_))
    ));
    e.restart();
    // The same client recovers once etcd is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        match ipam.auto_assign("container/a", "n1", &pools, false).await {
            Ok(v) => break v,
            Err(IpamError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(again, a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_is_an_error_not_a_panic() {
    let e = TestEtcd::start();
    let mut c = client(&e).await;
    let pools = [pool("10.65.0.0/16", None, false)];
    let ipam = Ipam::new(c.clone(), Duration::from_secs(5));
    ipam.auto_assign("container/ok", "n1", &pools, false).await.unwrap();

    c.put("/calico/v1/ipam/blocks/10.65.1.0_26", "{not json", None)
        .await
        .unwrap();
    c.put(
        "/calico/v1/ipam/blocks/10.65.2.0_26",
        r#"{"cidr":"10.65.3.0/26"}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        "/calico/v1/ipam/blocks/10.65.4.0_26",
        r#"{"cidr":"10.65.4.0/26","allocations":{"64":"container/x"}}"#,
        None,
    )
    .await
    .unwrap();
    c.put("/calico/v1/ipam/handles/container%2Fbad", "[1,2]", None)
        .await
        .unwrap();
    assert!(matches!(ipam.all_blocks().await, Err(IpamError::Invalid { .. })));
    assert!(matches!(ipam.handles().await, Err(IpamError::Invalid { .. })));
    // The listing for people names the bad key and keeps the good handle.
    let listing = ipam.handle_listing().await.unwrap();
    assert_eq!(listing.handles.keys().collect::<Vec<_>>(), ["container/ok"]);
    assert_eq!(listing.invalid.len(), 1, "{listing:?}");
    assert_eq!(listing.invalid[0].0, "/calico/v1/ipam/handles/container%2Fbad");
    assert!(!listing.invalid[0].1.is_empty());
    assert!(matches!(
        ipam.handle_ips("container/bad").await,
        Err(IpamError::Invalid { .. })
    ));
    let report = ipam.check(&live(&["container/ok"]), &pools).await.unwrap();
    assert_eq!(report.invalid.len(), 4, "{report:?}");
    assert!(!report.is_clean());
    // The node's own blocks are fine, so it still assigns.
    ipam.auto_assign("container/ok2", "n1", &pools, false).await.unwrap();
    // A new node claims a block around the corrupt ones (their keys still count as taken).
    assert_eq!(
        ipam.auto_assign("container/n2", "n2", &pools, false).await.unwrap(),
        vec![ip("10.65.0.64")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_inconsistencies() {
    let e = TestEtcd::start();
    let mut c = client(&e).await;
    let pools = [pool("10.65.0.0/16", None, false)];
    let ipam = Ipam::new(c.clone(), Duration::from_secs(5));
    ipam.auto_assign("container/a", "n1", &pools, false).await.unwrap();
    // A handle naming an address no block gives it, and a block outside every pool.
    c.put(
        "/calico/v1/ipam/handles/container%2Fghost",
        r#"{"ips":["10.65.9.9"],"node":"n1"}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        "/calico/v1/ipam/blocks/10.99.0.0_26",
        r#"{"cidr":"10.99.0.0/26","affinity":null,"allocations":{"1":"container/lost"}}"#,
        None,
    )
    .await
    .unwrap();
    let report = ipam
        .check(&live(&["container/a", "container/ghost"]), &pools)
        .await
        .unwrap();
    assert_eq!(
        report.dangling_handles,
        vec![("container/ghost".to_string(), ip("10.65.9.9"))]
    );
    assert_eq!(report.blocks_outside_pools, vec![net("10.99.0.0/26")]);
    assert_eq!(report.leaked, vec![(ip("10.99.0.1"), "container/lost".to_string())]);
    assert_eq!(report.unrecorded, vec![(ip("10.99.0.1"), "container/lost".to_string())]);
    assert!(report.duplicates.is_empty());
    // Repairs: release the leaked address (its unaffine block goes with it) and the ghost.
    assert_eq!(
        ipam.release_ip(ip("10.99.0.1")).await.unwrap(),
        Some("container/lost".to_string())
    );
    assert_eq!(
        ipam.release_handle("container/ghost").await.unwrap(),
        vec![ip("10.65.9.9")]
    );
    let report = ipam.check(&live(&["container/a"]), &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(ipam.all_blocks().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_node_frees_its_blocks() {
    let e = TestEtcd::start();
    let pools = [pool("10.65.0.0/16", None, false)];
    let ipam = ipam(&e).await;
    for i in 0..70 {
        ipam.auto_assign(&format!("container/a{i}"), "n1", &pools, false)
            .await
            .unwrap();
    }
    let b = ipam.auto_assign("container/b", "n2", &pools, false).await.unwrap();
    assert_eq!(ipam.node_blocks("n1").await.unwrap().len(), 2);
    // Release all of the second block's addresses: that block is empty, the first is not.
    for i in 64..70 {
        ipam.release_handle(&format!("container/a{i}")).await.unwrap();
    }
    ipam.release_node("n1", false).await.unwrap();
    assert_eq!(ipam.node_blocks("n1").await.unwrap(), vec![net("10.65.0.0/26")]);
    assert_eq!(ipam.handles().await.unwrap().len(), 65);
    ipam.release_node("n1", true).await.unwrap();
    assert!(ipam.node_blocks("n1").await.unwrap().is_empty());
    let handles = ipam.handles().await.unwrap();
    assert_eq!(handles.keys().collect::<Vec<_>>(), vec!["container/b"]);
    assert_eq!(ipam.all_blocks().await.unwrap().len(), 1);
    let report = ipam.check(&live(&["container/b"]), &pools).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    // The freed space is claimed afresh.
    let c = ipam.auto_assign("container/c", "n3", &pools, false).await.unwrap();
    assert_eq!(c, vec![ip("10.65.0.0")]);
    assert_eq!(b, vec![ip("10.65.0.128")]);
}
