//! Concurrent writers and an absent etcd.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

fn base() -> (TestEtcd, String, tempfile::TempDir) {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "base.yaml",
        &format!(
            "apiVersion: calico/v1\nkind: Node\nmetadata:\n  name: n1\nspec: {{}}\n---\n\
             apiVersion: calico/v1\nkind: Container\nmetadata:\n  name: c1\nspec:\n  node: n1\n  netns: /var/run/netns/c1\n{}",
            (0..8)
                .map(|i| format!("---\napiVersion: calico/v1\nkind: Group\nmetadata:\n  name: g{i}\nspec: {{}}\n"))
                .collect::<String>()
        ),
    );
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    (etcd, ep, dir)
}

#[test]
fn two_writers_with_one_resource_version_exactly_one_wins() {
    let (_etcd, ep, _dir) = base();
    for round in 0..3 {
        // A fresh group each round, so the label is new in each.
        let g = format!("g{}", 5 + round);
        let y = ctl(&ep, &["get", "group", &g, "-o", "yaml"]);
        y.assert_ok();
        assert!(y.stdout.contains("resourceVersion:"), "{}", y.stdout);
        let with_label = |v: &str| {
            y.stdout.replace(
                &format!("  name: {g}\n"),
                &format!("  name: {g}\n  labels:\n    writer: {v}\n"),
            )
        };
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let ca = spawn_stdin(&ep, &["apply", "-f", "-"], &with_label(&a));
        let cb = spawn_stdin(&ep, &["apply", "-f", "-"], &with_label(&b));
        let ra: Run = ca.wait_with_output().unwrap().into();
        let rb: Run = cb.wait_with_output().unwrap().into();
        let (winner, loser, wlabel) = match (ra.ok(), rb.ok()) {
            (true, false) => (&ra, &rb, &a),
            (false, true) => (&rb, &ra, &b),
            _ => panic!("round {round}: expected exactly one winner:\n{ra:?}\n{rb:?}"),
        };
        assert_eq!(winner.stdout, format!("Group/{g} configured\n"));
        assert!(loser.code.is_some());
        assert!(loser.stderr.to_lowercase().contains("conflict"), "{}", loser.stderr);
        // Located at the precondition that failed.
        assert!(
            loser.stderr.starts_with("<stdin>:") && loser.stderr.contains("metadata.resourceVersion: "),
            "{}",
            loser.stderr
        );
        assert!(loser.stderr.contains(&format!("Group/{g}")), "{}", loser.stderr);
        let j = ctl(&ep, &["get", "group", &g, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&j.assert_ok().stdout).unwrap();
        assert_eq!(v["metadata"]["labels"]["writer"], wlabel.as_str());
    }
}

#[test]
fn eight_parallel_addtogroup_all_land() {
    let (_etcd, ep, _dir) = base();
    let children: Vec<_> = (0..8)
        .map(|i| spawn(&ep, &["addtogroup", "c1", &format!("g{i}")]))
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let r: Run = c.wait_with_output().unwrap().into();
        assert_eq!(r.assert_ok().stdout, format!("Added c1 to group g{i}\n"));
    }
    let j = ctl(&ep, &["get", "container", "c1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&j.assert_ok().stdout).unwrap();
    let mut groups: Vec<String> = v["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap_or_default().to_string())
        .collect();
    groups.sort();
    assert_eq!(groups, (0..8).map(|i| format!("g{i}")).collect::<Vec<_>>());

    // And eight parallel removals all land too.
    let children: Vec<_> = (0..8)
        .map(|i| spawn(&ep, &["removefromgroup", "c1", &format!("g{i}")]))
        .collect();
    for c in children {
        let r: Run = c.wait_with_output().unwrap().into();
        r.assert_ok();
    }
    let j = ctl(&ep, &["get", "container", "c1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&j.assert_ok().stdout).unwrap();
    assert!(v["spec"].get("groups").is_none(), "{v}");
}

/// Every command that needs etcd, with valid arguments.
fn etcd_commands(file: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(std::string::ToString::to_string).collect::<Vec<_>>();
    vec![
        s(&["apply", "-f", file]),
        s(&["create", "-f", file]),
        s(&["replace", "-f", file]),
        s(&["get", "groups"]),
        s(&["get", "all", "-o", "yaml"]),
        s(&["get", "containers", "-o", "wide"]),
        s(&["delete", "group", "g0"]),
        s(&["delete", "-f", file]),
        s(&["diff", "-f", file]),
        s(&["addgroup", "x"]),
        s(&["removegroup", "g0"]),
        s(&["showgroups"]),
        s(&["showgroups", "--detailed"]),
        s(&["addtogroup", "c1", "g0"]),
        s(&["removefromgroup", "c1", "g0"]),
    ]
}

/// Runs every command in parallel against `endpoint`; each must fail within `limit`,
/// naming the endpoint.
fn all_fail_within(endpoint: &str, extra: &[&str], file: &str, limit: Duration) {
    let started = Instant::now();
    let children: Vec<_> = etcd_commands(file)
        .into_iter()
        .map(|args| {
            let mut full: Vec<&str> = extra.to_vec();
            full.extend(args.iter().map(String::as_str));
            let child = spawn(endpoint, &full);
            (args.join(" "), child)
        })
        .collect();
    for (what, child) in children {
        let r: Run = child.wait_with_output().unwrap().into();
        let took = started.elapsed();
        assert!(took < limit, "`{what}` took {took:?} (limit {limit:?})");
        assert!(r.code.is_some() && !r.ok(), "`{what}` did not fail: {r:?}");
        assert!(r.stderr.contains(endpoint), "`{what}`: no endpoint in {:?}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "`{what}`: {:?}", r.stderr);
        if what.starts_with("diff") {
            assert_eq!(r.code, Some(2), "diff exits 2 on errors");
        }
    }
}

#[test]
fn stopped_etcd_fails_fast_and_names_the_endpoint() {
    let (mut etcd, ep, dir) = base();
    let f = write_file(
        dir.path(),
        "g.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: g0\nspec: {}\n",
    );
    etcd.stop();
    all_fail_within(&ep, &[], &f, Duration::from_secs(7));
    all_fail_within(&ep, &["--timeout", "1"], &f, Duration::from_secs(3));
    // validate, schema and version never need etcd.
    ctl(&ep, &["validate", "-f", &f]).assert_ok();
    ctl(&ep, &["schema"]).assert_ok();
    ctl(&ep, &["version"]).assert_ok();
}

/// A loopback port that accepts connections and never says a word: the case where a
/// client would hang without its own deadlines.
struct SilentServer {
    port: u16,
}

impl SilentServer {
    fn start() -> SilentServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            for c in l.incoming() {
                if Instant::now() > deadline {
                    break;
                }
                if let Ok(c) = c {
                    held.push(c);
                }
            }
        });
        SilentServer { port }
    }
}

#[test]
fn silent_etcd_times_out_on_the_configured_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "g.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: g0\nspec: {}\n",
    );
    let silent = SilentServer::start();
    let ep = format!("127.0.0.1:{}", silent.port);
    all_fail_within(&ep, &[], &f, Duration::from_secs(7));
    all_fail_within(&ep, &["--timeout", "1"], &f, Duration::from_secs(3));
    // The environment variable works like the flag.
    let started = Instant::now();
    let r: Run = command(&ep, &["get", "groups"])
        .env("CALICO_TIMEOUT", "1")
        .output()
        .unwrap()
        .into();
    r.assert_fails();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// A loopback HTTP/1 server that answers every request with 400; `hold` keeps each
/// connection open after the answer, otherwise it is closed.
fn plain_http_server(hold: bool) -> String {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            if hold {
                held.push(c);
            }
        }
    });
    ep
}

/// Something other than etcd on the port (a plain HTTP server): every command fails at
/// once with one line naming the endpoint, and says what is wrong rather than a bare
/// "h2 protocol error". A server that closes the connection on us must be an error too,
/// never SIGPIPE killing calicoctl (it was, while SIGPIPE had its default action).
#[test]
fn a_plain_http_server_is_named_as_not_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "g.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: g0\nspec: {}\n",
    );
    for hold in [false, true] {
        let ep = plain_http_server(hold);
        all_fail_within(&ep, &["--timeout", "2"], &f, Duration::from_secs(5));
        if hold {
            let r = ctl(&ep, &["get", "groups", "--timeout", "2"]);
            assert!(
                r.stderr.contains(&format!("etcd at {ep} is unreachable"))
                    && r.stderr.contains("does not speak etcd's gRPC"),
                "{}",
                r.stderr
            );
        }
    }
}
