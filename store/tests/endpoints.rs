//! Several endpoints, some of them dead: every call still succeeds. etcd-client's
//! balancer hands requests to dead endpoints too; the store sends those (which never
//! left the process) again.

use std::time::Duration;

use calico_schema::{Kind, Resource};
use calico_store::ipam::Ipam;
use calico_store::testing::TestEtcd;
use calico_store::{Store, StoreConfig, WriteMode};
use serde_json::json;

fn dead_endpoint() -> String {
    // Bound and dropped: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    format!("127.0.0.1:{port}")
}

#[tokio::test]
async fn dead_endpoints_among_live_ones_fail_no_call() {
    let etcd = TestEtcd::start();
    let mut cfg = StoreConfig::new(vec![dead_endpoint(), etcd.endpoint(), dead_endpoint()]);
    cfg.timeout = Duration::from_secs(3);
    let store = Store::connect(&cfg)
        .await
        .expect("connect with one live endpoint of three");
    for i in 0..60 {
        let g = Resource::from_json(json!({"apiVersion": "calico/v1", "kind": "Group",
            "metadata": {"name": format!("g{i}")}, "spec": {}}))
        .unwrap();
        store.write(&[g], WriteMode::Create, None, false).await.expect("write");
        assert!(store.get(Kind::Group, &format!("g{i}")).await.expect("read").is_some());
        store
            .put_json(&format!("status/nodes/n{i}"), &json!({"i": i}))
            .await
            .expect("put");
    }
    assert_eq!(store.list(None).await.expect("list").resources.len(), 60);
    // IPAM goes through the same client.
    let ipam = Ipam::new(store.client(), cfg.timeout);
    let pool: calico_schema::IpPool = serde_json::from_value(json!({"apiVersion": "calico/v1", "kind": "IPPool",
        "metadata": {"name": "p"}, "spec": {"cidr": "10.70.0.0/16"}}))
    .unwrap();
    for i in 0..20 {
        let ips = ipam
            .auto_assign(&format!("h{i}"), "node1", std::slice::from_ref(&pool), false)
            .await
            .expect("assign");
        assert_eq!(ips.len(), 1);
    }
}
