//! TLS failures with etcd read as what is wrong and how to fix it, not as rustls's enum
//! names: here an X.509 v1 server certificate (what `openssl x509 -req` makes without an
//! extension file) and a CA that did not sign etcd's certificate.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_store::testing::openssl;
use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A one-member etcd serving TLS with `cert`/`key` from `dir` (and asking clients for a
/// certificate signed by `dir`'s CA when `client_auth`); returns it and its endpoint.
fn tls_etcd(dir: &std::path::Path, cert: &str, key: &str, client_auth: bool) -> (Etcd, String) {
    let data = tempfile::tempdir_in(dir).unwrap().keep();
    let (client, peer) = (free_port(), free_port());
    let child = Command::new("etcd")
        .arg("--name=t")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=https://127.0.0.1:{client}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-cluster=t=http://127.0.0.1:{peer}"))
        .arg(format!("--cert-file={}", dir.join(cert).display()))
        .arg(format!("--key-file={}", dir.join(key).display()))
        .args(if client_auth {
            vec![
                "--client-cert-auth".to_string(),
                format!("--trusted-ca-file={}", dir.join("ca.pem").display()),
            ]
        } else {
            vec![]
        })
        .arg("--log-level=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd (is etcd-server installed?)");
    let etcd = Etcd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (etcd, format!("127.0.0.1:{client}"))
}

#[test]
fn tls_certificate_problems_say_what_to_fix() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    calico_store::testing::make_pki(dir);
    // A v1 server certificate: signed by the same CA, no extensions.
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "v1.key",
            "-out",
            "v1.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            "v1.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "v1.pem",
        ],
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.join("v1.pem"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("Version: 1"),
        "openssl made no v1 certificate"
    );

    let ca = dir.join("ca.pem").display().to_string();
    let (_etcd, ep) = tls_etcd(dir, "v1.pem", "v1.key", false);
    let r = ctl(&ep, &["--etcd-ca", &ca, "--timeout", "3", "get", "groups"]);
    r.assert_fails();
    assert!(
        r.stderr.contains(&format!("etcd at {ep} is unreachable")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("is X.509 v1") && r.stderr.contains("reissue it"),
        "{}",
        r.stderr
    );
    drop(_etcd);

    // A CA that did not sign etcd's certificate.
    let other = tempfile::tempdir().unwrap();
    calico_store::testing::make_pki(other.path());
    let other_ca = other.path().join("ca.pem").display().to_string();
    let (etcd, ep) = tls_etcd(dir, "server.pem", "server.key", false);
    let r = ctl(&ep, &["--etcd-ca", &other_ca, "--timeout", "3", "get", "groups"]);
    r.assert_fails();
    assert!(
        r.stderr.contains("not signed by the CA given with --etcd-ca"),
        "{}",
        r.stderr
    );

    // The right CA, but the endpoint's name is not the certificate's (localhost is not
    // in its subjectAltName, which names only 127.0.0.1).
    let port = ep.rsplit(':').next().unwrap();
    let r = ctl(
        &format!("localhost:{port}"),
        &["--etcd-ca", &ca, "--timeout", "3", "get", "groups"],
    );
    r.assert_fails();
    assert!(
        r.stderr.contains("does not name the host or IP in --etcd"),
        "{}",
        r.stderr
    );
    drop(etcd);

    // etcd wants a client certificate and none is given.
    let (_etcd, ep) = tls_etcd(dir, "server.pem", "server.key", true);
    let r = ctl(&ep, &["--etcd-ca", &ca, "--timeout", "3", "get", "groups"]);
    r.assert_fails();
    assert!(r.stderr.contains("give --etcd-cert and --etcd-key"), "{}", r.stderr);
    let client = |f: &str| dir.join(f).display().to_string();
    let r = ctl(
        &ep,
        &[
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &client("client.pem"),
            "--etcd-key",
            &client("client.key"),
            "get",
            "groups",
        ],
    );
    assert!(r.ok(), "{}", r.stderr);
}
