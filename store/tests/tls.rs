//! The store over TLS with client certificates, against an etcd that requires them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_schema::{Kind, Resource};
use calico_store::testing::make_pki;
use calico_store::{Store, StoreConfig, StoreError, TlsFiles, WriteMode};
use serde_json::json;

struct TlsEtcd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    pki: PathBuf,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_tls_etcd() -> TlsEtcd {
    let dir = tempfile::Builder::new().prefix("calico-etcd-tls-").tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    make_pki(&pki);
    let (port, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let p = |f: &str| pki.join(f).display().to_string();
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let child = Command::new("etcd")
        .arg("--name=tls")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=tls={peer_url}"))
        .arg(format!("--cert-file={}", p("server.pem")))
        .arg(format!("--key-file={}", p("server.key")))
        .arg(format!("--trusted-ca-file={}", p("ca.pem")))
        .arg("--client-cert-auth")
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn etcd");
    let e = TlsEtcd {
        child,
        port,
        pki,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "etcd with TLS did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    e
}

fn cfg(e: &TlsEtcd, endpoint: String, tls: TlsFiles) -> StoreConfig {
    let mut c = StoreConfig::new(vec![endpoint]);
    c.timeout = Duration::from_secs(3);
    c.tls = Some(tls);
    let _ = e;
    c
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let e = start_tls_etcd();
    let files = TlsFiles {
        ca: Some(e.pki.join("ca.pem")),
        cert: Some(e.pki.join("client.pem")),
        key: Some(e.pki.join("client.key")),
    };
    let group =
        Resource::from_json(json!({"apiVersion": "calico/v1", "kind": "Group", "metadata": {"name": "g"}, "spec": {}}))
            .unwrap();

    // host:port with TLS files, and an explicit https:// URL: both speak TLS. etcd may
    // still be starting up behind its open port, so allow it a few tries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let store = loop {
        match Store::connect(&cfg(&e, format!("127.0.0.1:{}", e.port), files.clone())).await {
            Ok(s) => break s,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("TLS connect failed: {err}"),
        }
    };
    store.write(&[group], WriteMode::Create, None, false).await.unwrap();
    let store2 = Store::connect(&cfg(&e, format!("https://127.0.0.1:{}", e.port), files.clone()))
        .await
        .unwrap();
    assert!(store2.get(Kind::Group, "g").await.unwrap().is_some());

    // Without a client certificate etcd refuses us; with no CA we cannot trust etcd.
    // Either way: a clear error within the timeout, never a hang.
    for tls in [
        TlsFiles {
            ca: files.ca.clone(),
            ..Default::default()
        },
        TlsFiles::default(),
    ] {
        let c = cfg(&e, format!("127.0.0.1:{}", e.port), tls);
        let t = Instant::now();
        let err = match Store::connect(&c).await {
            Ok(s) => s
                .list(None)
                .await
                .expect_err("listing without a valid TLS setup must fail"),
            Err(err) => err,
        };
        assert!(
            t.elapsed() < c.timeout * 2 + Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            matches!(err, StoreError::Unavailable { .. } | StoreError::Etcd(_)),
            "{err}"
        );
        eprintln!("expected TLS failure: {err}");
    }

    // Missing files are reported by name.
    let c = cfg(
        &e,
        format!("127.0.0.1:{}", e.port),
        TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..files
        },
    );
    let err = Store::connect(&c).await.err().expect("missing CA file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
