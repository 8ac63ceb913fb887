//! Load on the Docker plugin with the real backend (CalicoBackend over etcd, no Docker
//! needed for the IPAM driver): 100 concurrent RequestAddress calls, then 100 more
//! concurrent calls mixing releases of half of them with new requests. Every call is
//! answered (HTTP 200, no Err), no address is handed out twice, IPAM holds exactly the
//! addresses the answers say are held, and IPAM's consistency check (what `calicoctl
//! ipam check` runs) is clean. Needs etcd (scripts/install-deps.sh); run it under
//! `flock /tmp/calico-e2e.lock`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_agent::docker::calico::CalicoBackend;
use calico_agent::docker::context::Ctx;
use calico_agent::docker::serve;
use calico_schema::{object, IpPool, IpPoolSpec, Kind, Resource};
use calico_store::ipam::Ipam;
use calico_store::testing::TestEtcd;
use calico_store::{Store, StoreConfig, WriteMode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const CONCURRENT: usize = 100;

/// One POST over a fresh connection; (status, JSON body).
async fn post(sock: &Path, method: &str, body: &Value) -> Result<(u16, Value), String> {
    let mut stream = UnixStream::connect(sock).await.map_err(|e| format!("connect: {e}"))?;
    let body = body.to_string();
    let req = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    let v = serde_json::from_str(body).map_err(|e| format!("body {body:?}: {e}"))?;
    Ok((status, v))
}

/// The call succeeded: HTTP 200 and no Err.
fn answered(method: &str, r: Result<(u16, Value), String>) -> Value {
    let (status, v) = r.unwrap_or_else(|e| panic!("{method}: {e}"));
    assert_eq!(status, 200, "{method}: {v}");
    assert!(v.get("Err").is_none_or(|e| e == ""), "{method}: {v}");
    v
}

fn address_of(v: &Value) -> IpAddr {
    let a = v["Address"].as_str().unwrap_or_else(|| panic!("no Address in {v}"));
    a.split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{a}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_are_all_answered_and_ipam_stays_consistent() {
    let etcd = TestEtcd::start();
    let store = Store::connect(&StoreConfig::from_list(&etcd.endpoint())).await.unwrap();
    let pool: IpPool = object(
        Kind::IPPool,
        "load-pool",
        IpPoolSpec {
            cidr: "10.77.0.0/16".parse().unwrap(),
            block_size: Some(26),
            nat_outgoing: false,
            disabled: false,
        },
    );
    store
        .write(&[Resource::IpPool(pool.clone())], WriteMode::Apply, None, false)
        .await
        .unwrap();
    let ipam = Arc::new(Ipam::new(store.client(), Duration::from_secs(5)));
    let ctx = Arc::new(Ctx::new(
        "load-node".into(),
        store.clone(),
        ipam.clone(),
        None,
        "unix:///nonexistent/docker.sock".into(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), Arc::new(CalicoBackend::new(ctx))).await.unwrap();
    let sock: PathBuf = server.ipam_socket().to_path_buf();
    let pool_id = answered(
        "RequestPool",
        post(
            &sock,
            "IpamDriver.RequestPool",
            &json!({"AddressSpace": "CalicoGlobal"}),
        )
        .await,
    )["PoolID"]
        .as_str()
        .unwrap()
        .to_string();

    // 100 concurrent requests for an address.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENT {
        let (sock, pool_id) = (sock.clone(), pool_id.clone());
        tasks.push(tokio::spawn(async move {
            post(&sock, "IpamDriver.RequestAddress", &json!({"PoolID": pool_id})).await
        }));
    }
    let mut first = Vec::new();
    for t in tasks {
        first.push(address_of(&answered("RequestAddress", t.await.unwrap())));
    }
    let first_took = started.elapsed();
    let distinct: BTreeSet<IpAddr> = first.iter().copied().collect();
    assert_eq!(distinct.len(), CONCURRENT, "an address was handed out twice: {first:?}");
    assert!(
        distinct.iter().all(|ip| pool.spec.cidr.net().contains(ip)),
        "{distinct:?}"
    );

    // 100 more at once: half release the first half's addresses, half request new ones.
    let started = Instant::now();
    let mut releases = Vec::new();
    let mut requests = Vec::new();
    for ip in &first[..CONCURRENT / 2] {
        let (sock, pool_id, ip) = (sock.clone(), pool_id.clone(), *ip);
        releases.push(tokio::spawn(async move {
            post(
                &sock,
                "IpamDriver.ReleaseAddress",
                &json!({"PoolID": pool_id, "Address": ip.to_string()}),
            )
            .await
        }));
    }
    for _ in 0..CONCURRENT / 2 {
        let (sock, pool_id) = (sock.clone(), pool_id.clone());
        requests.push(tokio::spawn(async move {
            post(&sock, "IpamDriver.RequestAddress", &json!({"PoolID": pool_id})).await
        }));
    }
    for t in releases {
        answered("ReleaseAddress", t.await.unwrap());
    }
    let mut second = Vec::new();
    for t in requests {
        second.push(address_of(&answered("RequestAddress", t.await.unwrap())));
    }
    let mixed_took = started.elapsed();
    eprintln!(
        "{CONCURRENT} concurrent RequestAddress: {first_took:?}; {CONCURRENT} mixed release/request: {mixed_took:?}"
    );

    // What IPAM holds is exactly what the answers say is held, one address a handle.
    let kept: BTreeSet<IpAddr> = first[CONCURRENT / 2..].iter().copied().collect();
    let new: BTreeSet<IpAddr> = second.iter().copied().collect();
    assert_eq!(new.len(), CONCURRENT / 2, "an address was handed out twice: {second:?}");
    assert!(
        kept.is_disjoint(&new),
        "a held address was handed out again: {kept:?} {new:?}"
    );
    let expected: BTreeSet<IpAddr> = kept.union(&new).copied().collect();
    let handles = ipam.handles().await.unwrap();
    let mut held = BTreeSet::new();
    for (h, info) in &handles {
        assert_eq!(info.ips.len(), 1, "{h} holds {:?}", info.ips);
        assert_eq!(info.node, "load-node");
        held.extend(info.ips.iter().copied());
    }
    assert_eq!(held, expected, "IPAM holds other addresses than the plugin handed out");
    let live: BTreeSet<String> = handles.keys().cloned().collect();
    let report = ipam.check(&live, &[pool]).await.unwrap();
    assert!(report.is_clean(), "ipam check: {report:?}");
    server.shutdown().await.unwrap();
}
