//! `calicoctl explain`: the verdict and the rule that decides, offline from files and
//! from etcd (where a Container's address may be IPAM-assigned).

mod common;

use common::*;

fn examples() -> String {
    examples_dir().display().to_string()
}

fn explain(args: &[&str]) -> Run {
    let mut a = vec!["explain", "-f"];
    let ex = examples();
    a.push(&ex);
    a.extend_from_slice(args);
    ctl("127.0.0.1:1", &a)
}

#[test]
fn explain_names_the_deciding_rule_and_exits_by_verdict() {
    let r = explain(&["workload-a", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .starts_with("workload-a (10.65.0.1) -> workload-c (10.65.0.3) TCP port 5432: allowed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("by Policy/db-no-http spec.ingress[1]:"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("by Group/A_C_E's default egress rule"),
        "{}",
        r.stdout
    );

    // Port 80 on the db: the policy's Deny rule.
    let r = explain(&["workload-a", "workload-c", "--port", "80"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains("ingress at workload-c (node host1): dropped"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("by Policy/db-no-http spec.ingress[0]:"),
        "{}",
        r.stdout
    );

    // From B: the policy passes, and c's group takes only its members.
    let r = explain(&["workload-b", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains("by no rule: nothing allowed or denied it"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("on the way: Policy/db-no-http spec.ingress[2] (Pass)"),
        "{}",
        r.stdout
    );

    // An address stands for the Container holding it; an outside one has no rules.
    let r = explain(&["10.65.0.1", "192.0.2.1", "--port", "443"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.starts_with("workload-a (10.65.0.1) -> 192.0.2.1"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("ingress: 192.0.2.1 is no Container's address"),
        "{}",
        r.stdout
    );

    // JSON carries the same decision.
    let r = explain(&["workload-a", "workload-c", "--port", "80", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["verdict"], "Deny");
    assert_eq!(v["ingress"]["decided_by"]["kind"], "policy");
    assert_eq!(v["ingress"]["decided_by"]["name"], "db-no-http");
    assert_eq!(v["ingress"]["decided_by"]["index"], 0);
}

#[test]
fn explain_refuses_what_it_cannot_explain() {
    for (args, want) in [
        (
            &["workload-a", "nosuch", "--port", "1"][..],
            "no Container named 'nosuch'",
        ),
        (&["workload-a", "workload-c"][..], "--proto TCP needs --port"),
        (
            &["workload-a", "workload-c", "--proto", "ICMP", "--port", "1"][..],
            "--proto ICMP has no ports",
        ),
        (
            &["192.0.2.1", "192.0.2.2", "--port", "1"][..],
            "neither end is a Container",
        ),
        (
            &["workload-a", "workload-c", "--ipv6", "--port", "1"][..],
            "has no IPv6 address",
        ),
        (
            &["workload-a", "workload-c", "--proto", "tcpx"][..],
            "unknown protocol 'tcpx'",
        ),
    ] {
        let r = explain(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
}

/// From etcd, a Container without explicit ips has the address IPAM gave it.
#[test]
fn explain_from_etcd_uses_ipam_addresses() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    ctl(&ep, &["apply", "-f", &examples()]).assert_ok();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "c.yaml",
        "apiVersion: calico/v1\nkind: Container\nmetadata: {name: auto, labels: {tier: web}}\nspec: {node: host1, netns: /x, groups: [A_C_E]}\n",
    );
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    // Until an agent assigns it an address, it has none: a clear error, not a guess.
    let r = ctl(&ep, &["explain", "auto", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("Container 'auto' has no IPv4 address"),
        "{}",
        r.stderr
    );
    // Assign as the agent does: through IPAM, under the Container's handle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ip = rt.block_on(async {
        let s = calico_store::Store::connect(&calico_store::StoreConfig::from_list(&ep))
            .await
            .unwrap();
        let pools: Vec<calico_schema::IpPool> = s
            .list(Some(calico_schema::Kind::IPPool))
            .await
            .unwrap()
            .resources
            .into_iter()
            .filter_map(|r| match r {
                calico_schema::Resource::IpPool(p) => Some(p),
                _ => None,
            })
            .collect();
        let ipam = calico_store::ipam::Ipam::new(s.client(), std::time::Duration::from_secs(5));
        ipam.auto_assign(&calico_store::ipam::container_handle("auto"), "host1", &pools, false)
            .await
            .unwrap()[0]
    });
    let r = ctl(&ep, &["explain", "auto", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("auto ({ip}) -> workload-c")),
        "{}",
        r.stdout
    );
    // And by that address.
    let r = ctl(&ep, &["explain", &ip.to_string(), "workload-c", "--port", "5432"]);
    assert!(r.stdout.starts_with(&format!("auto ({ip})")), "{r:?}");
    let r = ctl(&ep, &["explain", "workload-a", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains("by Policy/db-no-http spec.ingress[1]:"),
        "{}",
        r.stdout
    );
}

const B_TO_DB: &str = "apiVersion: calico/v1\nkind: Policy\nmetadata:\n  name: b-to-db\nspec:\n  order: 50\n  selector: tier == \"db\"\n  ingress:\n    - action: Allow\n      protocol: TCP\n      source: {groups: [B]}\n      destination: {ports: [5432]}\n";

/// diff and apply --dry-run say which pairs a change opens and closes, and by which rule.
#[test]
fn diff_and_dry_run_print_the_reachability_impact() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    ctl(&ep, &["apply", "-f", &examples()]).assert_ok();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "b-to-db.yaml", B_TO_DB);
    let opens =
        "opens workload-b -> workload-c tcp/5432 (Group B's default egress rule, Policy b-to-db spec.ingress[0])";
    let r = ctl(&ep, &["diff", "-f", &f]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("reachability:\n"), "{}", r.stdout);
    assert!(r.stdout.contains(opens), "{}", r.stdout);
    // Only that pair and port change.
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.starts_with("  opens") || l.starts_with("  closes"))
            .count(),
        1,
        "{}",
        r.stdout
    );
    let r = ctl(&ep, &["apply", "--dry-run", "-f", &f]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(opens), "{}", r.stdout);
    // Applied, the same change backwards closes it.
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    ctl(&ep, &["explain", "workload-b", "workload-c", "--port", "5432"]).assert_ok();
    let lower = write_file(
        dir.path(),
        "lower.yaml",
        &B_TO_DB.replace("ports: [5432]", "ports: [5433]"),
    );
    let r = ctl(&ep, &["diff", "-f", &lower]);
    assert!(
        r.stdout
            .contains("closes workload-b -> workload-c tcp/5432 (no ingress rule at workload-c allows it)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("opens workload-b -> workload-c tcp/5433"),
        "{}",
        r.stdout
    );
    // An unchanged apply has nothing to say.
    let r = ctl(&ep, &["diff", "-f", &f]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains("reachability"), "{}", r.stdout);
}

#[test]
fn reach_prints_the_matrix_as_text_json_and_svg() {
    let ex = examples();
    let r = ctl("127.0.0.1:1", &["reach", "-f", &ex]);
    assert!(r.ok(), "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "probes: tcp/80, tcp/5432, tcp/8000, icmp (all: every probe passes)"
    );
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{}", r.stdout))
            .split_whitespace()
            .collect()
    };
    // Columns: A_C_E's members first (a, c, e), then b, then d.
    assert_eq!(
        row("FROM"),
        [
            "FROM",
            "\\",
            "TO",
            "GROUP",
            "workload-a",
            "workload-c",
            "workload-e",
            "workload-b",
            "workload-d"
        ]
    );
    assert_eq!(
        row("workload-a"),
        [
            "workload-a",
            "A_C_E",
            "-",
            "tcp/5432,tcp/8000,icmp",
            "all",
            "none",
            "none"
        ]
    );
    assert_eq!(
        row("workload-b"),
        ["workload-b", "B", "none", "none", "none", "-", "none"]
    );
    // Each cell agrees with explain.
    let e = ctl(
        "127.0.0.1:1",
        &["explain", "-f", &ex, "workload-a", "workload-c", "--port", "80"],
    );
    assert_eq!(
        e.code,
        Some(1),
        "tcp/80 is not in a -> c's cell, so explain must drop it: {e:?}"
    );

    let r = ctl(
        "127.0.0.1:1",
        &["reach", "-f", &ex, "group == \"A_C_E\"", "--port", "80", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(
        v["names"],
        serde_json::json!(["workload-a", "workload-c", "workload-e"])
    );
    assert_eq!(v["probes"], serde_json::json!(["icmp", "tcp/80"]));
    assert_eq!(v["cells"][0][1], serde_json::json!([true, false]));

    let r = ctl("127.0.0.1:1", &["reach", "-f", &ex, "-o", "svg"]);
    assert!(
        r.stdout.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{}",
        r.stdout
    );
    assert!(r.stdout.trim_end().ends_with("</svg>"));
    assert!(
        r.stdout.contains(
            "<title>workload-b -&gt; workload-c: none\ntcp/80: dropped by Policy db-no-http spec.ingress[0]\n"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout.matches("<rect x=").count(),
        25 + 2 * 3,
        "5x5 cells and a band per group on each axis"
    );
}

/// The examples' matrix as drawn: 602x652, cells 90 px from (142, 142), rows and
/// columns a, c, e, b, d, each cell's color its verdict.
fn assert_cells(png: &resvg::tiny_skia::Pixmap) {
    assert_eq!((png.width(), png.height()), (602, 652));
    let at = |row: u32, col: u32| {
        let p = png.pixel(142 + col * 90 + 45, 142 + row * 90 + 60).expect("inside");
        (p.red(), p.green(), p.blue())
    };
    assert_eq!(at(0, 2), (0x7c, 0xc8, 0x7c), "a -> e: all pass, green");
    assert_eq!(at(3, 1), (0xe8, 0x80, 0x80), "b -> c: none, red");
    assert_eq!(at(0, 1), (0xf5, 0xc4, 0x6b), "a -> c: some, amber");
}

/// `-o png` draws the same picture through resvg: the cells have their colors and the
/// names are written (install-deps.sh installs a font).
#[test]
fn reach_png_is_the_picture() {
    let out = std::process::Command::new(BIN)
        .args(["reach", "-f", &examples(), "-o", "png"])
        .output()
        .expect("calicoctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = resvg::tiny_skia::Pixmap::decode_png(&out.stdout).expect("a PNG");
    assert_cells(&png);
    // The row names are text left of the grid: dark pixels there.
    let dark = (0..120)
        .flat_map(|x| (150..230).map(move |y| (x, y)))
        .filter(|&(x, y)| png.pixel(x, y).is_some_and(|p| p.red() < 100 && p.alpha() > 0))
        .count();
    assert!(dark > 20, "no text drawn ({dark} dark pixels): is a font installed?");
}

/// The SVG as a browser shows it: headless Chromium (installed by install-deps.sh)
/// screenshots `reach -o svg` at its own size, and the cells have the colors the PNG
/// test checks (the same layout, drawn by another renderer).
#[test]
fn reach_svg_opens_in_a_browser() {
    let r = ctl("127.0.0.1:1", &["reach", "-f", &examples(), "-o", "svg"]);
    assert!(r.ok(), "{r:?}");
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("reach.svg");
    let shot = dir.path().join("shot.png");
    std::fs::write(&svg, &r.stdout).unwrap();
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg("--window-size=602,652")
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .expect("chromium (Debian's chromium package; scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = resvg::tiny_skia::Pixmap::decode_png(&std::fs::read(&shot).unwrap()).expect("a PNG");
    assert_cells(&png);
}

/// The README shows docs/reach.svg, which is `reach -f examples -o svg` exactly.
#[test]
fn the_readme_picture_is_current() {
    let r = ctl("127.0.0.1:1", &["reach", "-f", &examples(), "-o", "svg"]);
    assert!(r.ok(), "{r:?}");
    let path = workspace_file("docs/reach.svg");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &r.stdout).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == r.stdout,
        "docs/reach.svg is stale: UPDATE_DOCS=1 cargo test -p calicoctl --test explain the_readme_picture"
    );
    let readme = std::fs::read_to_string(workspace_file("README.md")).unwrap();
    assert!(
        readme.contains("(docs/reach.svg)"),
        "the README does not show docs/reach.svg"
    );
}

/// Serves `body` as /counters on a loopback port, to `n` requests, the way an agent does.
fn fake_agent(body: &'static str, n: usize) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 2048];
            let got = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..got]);
            assert!(req.starts_with("GET /counters "), "{req}");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn explain_counters_prints_the_deciding_rules_counts() {
    // a -> c port 5432: egress by A_C_E's default rule, ingress by db-no-http's rule 1,
    // both on host1: one request to its agent.
    let agent = fake_agent(
        r#"{"Group/A_C_E egress[0]":{"packets":12,"bytes":720},"Policy/db-no-http ingress[1]":{"packets":3,"bytes":180}}"#,
        1,
    );
    let r = explain(&[
        "workload-a",
        "workload-c",
        "--port",
        "5432",
        "--counters",
        "--agent",
        &agent,
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains("    counters: 12 packets, 720 bytes (nft rule \"Group/A_C_E egress[0]\" on node host1)\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("by Policy/db-no-http spec.ingress[1]:")
            && r.stdout.contains(
                "    counters: 3 packets, 180 bytes (nft rule \"Policy/db-no-http ingress[1]\" on node host1)\n"
            ),
        "{}",
        r.stdout
    );

    // b -> c: no rule decides ingress (no per-rule counter); the agent lacks B's rule.
    let agent = fake_agent(r#"{}"#, 1);
    let r = explain(&[
        "workload-b",
        "workload-c",
        "--port",
        "5432",
        "--counters",
        "--agent",
        &agent,
        "-o",
        "json",
    ]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["counters"]["egress"]["rule"], "Group/B egress[0]", "{v}");
    assert!(v["counters"]["egress"].get("count").is_none(), "{v}");
    assert!(v["counters"].get("ingress").is_none(), "{v}");
    assert_eq!(v["verdict"], "Deny", "{v}");
    let agent = fake_agent(r#"{}"#, 1);
    let r = explain(&[
        "workload-b",
        "workload-c",
        "--port",
        "5432",
        "--counters",
        "--agent",
        &agent,
    ]);
    assert!(
        r.stdout
            .contains("counters: node host1's table has no rule \"Group/B egress[0]\"")
            && r.stdout.contains("counters: none per rule"),
        "{}",
        r.stdout
    );

    // Offline, there is no etcd to find the node's agent in.
    let r = explain(&["workload-a", "workload-c", "--port", "5432", "--counters"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("--counters with -f needs --agent"), "{}", r.stderr);
}
