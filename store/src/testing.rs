//! A throwaway etcd for tests: its own data directory and free loopback ports,
//! stopped (and its directory removed) when dropped, even when the test panics.

// Test support: a failure to set up is a test failure, so it panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd owned by a test.
pub struct TestEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TestEtcd {
    /// Starts etcd and waits until it answers. Panics (it is test support) with etcd's
    /// own log when it does not come up.
    pub fn start() -> TestEtcd {
        let dir = tempfile::Builder::new()
            .prefix("calico-etcd-")
            .tempdir()
            .expect("temp dir for etcd");
        let client_port = free_port().expect("free port");
        let peer_port = free_port().expect("free port");
        let mut e = TestEtcd {
            child: None,
            dir,
            client_port,
            peer_port,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            // etcd's default limits (128 ops, 1.5 MiB per txn): large change sets are
            // staged, and every test proves that against what users run.
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd (is etcd-server installed?)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                // Listening is not serving; one health read proves it.
                let ok = Command::new("curl")
                    .args(["-sf", &format!("http://127.0.0.1:{}/health", self.client_port)])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(true);
                if ok {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not start; log:\n{}", self.log());
    }

    /// `127.0.0.1:PORT`, as `--etcd` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// etcd's pid while it runs (the demo's `--keep` hands it to its teardown script).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its data directory and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops etcd, keeping its data, so a test can see how clients behave without it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs openssl in `dir`, panicking with its stderr when it fails (tests make their PKI with it).
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is openssl installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes, in `dir`, a CA (`ca.pem`), a server certificate for 127.0.0.1 usable for
/// peers too (`server.pem`, `server.key`) and a client certificate (`client.pem`,
/// `client.key`), all EC P-256, valid for a day.
pub fn make_pki(dir: &std::path::Path) {
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=calico-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ];
    ca.extend(key);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("write server.ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write client.ext");
    for who in ["server", "client"] {
        let (k, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        let mut req = vec!["req", "-subj", "/CN=calico-test", "-keyout", &k, "-out", &csr];
        req.extend(key);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

/// One member of a [`TlsEtcdCluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A three-member (or n-member) etcd cluster on loopback that requires TLS with client
/// certificates from clients and speaks TLS between peers. Members can be stopped and
/// started again; all are stopped when dropped.
pub struct TlsEtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl TlsEtcdCluster {
    pub fn start(n: usize) -> TlsEtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("calico-etcd-cluster-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("pki")).expect("pki dir");
        make_pki(&dir.path().join("pki"));
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{}", i + 1),
                client_port: free_port().expect("free port"),
                peer_port: free_port().expect("free port"),
                child: None,
            })
            .collect();
        let mut c = TlsEtcdCluster { members, dir };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i);
        }
        c
    }

    /// A file of the cluster's PKI (`ca.pem`, `client.pem`, `client.key`, ...).
    pub fn pki(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join("pki").join(file)
    }

    pub fn tls_files(&self) -> crate::TlsFiles {
        crate::TlsFiles {
            ca: Some(self.pki("ca.pem")),
            cert: Some(self.pki("client.pem")),
            key: Some(self.pki("client.key")),
        }
    }

    /// The flags calicoctl and calico-node take for this cluster: all endpoints, TLS.
    pub fn flags(&self) -> Vec<String> {
        let p = |f: &str| self.pki(f).display().to_string();
        vec![
            "--etcd".into(),
            self.endpoints(),
            "--etcd-ca".into(),
            p("ca.pem"),
            "--etcd-cert".into(),
            p("client.pem"),
            "--etcd-key".into(),
            p("client.key"),
        ]
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,...`
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let p = |f: &str| self.pki(f).display().to_string();
        let m = &self.members[i];
        let client = format!("https://127.0.0.1:{}", m.client_port);
        let peer = format!("https://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", self.dir.path().join(&m.name).display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=calico-test")
            .arg(format!("--cert-file={}", p("server.pem")))
            .arg(format!("--key-file={}", p("server.key")))
            .arg(format!("--trusted-ca-file={}", p("ca.pem")))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", p("server.pem")))
            .arg(format!("--peer-key-file={}", p("server.key")))
            .arg(format!("--peer-trusted-ca-file={}", p("ca.pem")))
            .arg("--peer-client-cert-auth")
            // Quick elections: a test measures failover, not etcd's WAN defaults.
            .arg("--heartbeat-interval=100")
            .arg("--election-timeout=1000")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd (is etcd-server installed?)");
        self.members[i].child = Some(child);
    }

    fn etcdctl(&self, endpoints: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--cacert={}", self.pki("ca.pem").display()))
            .arg(format!("--cert={}", self.pki("client.pem").display()))
            .arg(format!("--key={}", self.pki("client.key").display()))
            .arg("--command-timeout=2s")
            .args(args)
            .output()
    }

    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .etcdctl(&self.endpoint(i), &["endpoint", "health"])
                .is_ok_and(|o| o.status.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd member {} did not become healthy; log:\n{}", i + 1, self.log(i));
    }

    /// Stops member `i` with SIGKILL (a crash), keeping its data.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again and waits until it is healthy.
    pub fn start_member(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Index of the current leader, asked of the running members.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<String> = (0..self.members.len())
            .filter(|&i| self.running(i))
            .map(|i| self.endpoint(i))
            .collect();
        let out = self
            .etcdctl(&running.join(","), &["endpoint", "status", "-w", "json"])
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        for st in v.as_array()? {
            let header = &st["Status"]["header"];
            if header["member_id"] == st["Status"]["leader"] {
                let ep = st["Endpoint"].as_str()?;
                return (0..self.members.len()).find(|&i| ep.ends_with(&format!(":{}", self.members[i].client_port)));
            }
        }
        None
    }
}

impl Drop for TlsEtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Puts raw `(key, value)` pairs, bypassing the store's encoding and checks: the floor
/// benchmarks compare the store's writes against. One etcd transaction when they fit
/// etcd's default limits, else consecutive transactions of at most [`crate::PIECE_OPS`]
/// puts (not atomic: the floor of the bytes' transport, not of the guarantee).
pub async fn raw_put_txn(store: &crate::Store, items: Vec<(String, Vec<u8>)>) -> Result<(), crate::StoreError> {
    let mut client = store.client();
    for chunk in items.chunks(crate::PIECE_OPS) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.clone(), None))
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .map_err(|e| crate::error::from_etcd(&store.config().endpoints.join(","), e))?;
    }
    Ok(())
}
