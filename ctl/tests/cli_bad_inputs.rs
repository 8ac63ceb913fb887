//! Bad input never reaches etcd, and every error names file:line:col and the field.
//!
//! Each case is applied on its own and as the last of ten documents in one file (the
//! nine before it valid); both must fail with the exact location and leave etcd byte
//! for byte unchanged (same keys, values, revisions and header revision).

mod common;

use common::*;

fn head(kind: &str, name: &str) -> String {
    format!("apiVersion: calico/v1\nkind: {kind}\nmetadata:\n  name: {name}\n")
}

struct Case {
    name: &'static str,
    text: String,
    line: usize,
    col: usize,
    /// The field path; empty for the whole document.
    path: &'static str,
    message: &'static str,
}

fn case(name: &'static str, text: String, line: usize, col: usize, path: &'static str, message: &'static str) -> Case {
    Case {
        name,
        text,
        line,
        col,
        path,
        message,
    }
}

/// Cases against a store holding examples/ (pool 10.65.0.0/16 /26, nodes host1/host2,
/// groups A_C_E/B/D, workload-a..e at 10.65.0.1-5).
fn cases() -> Vec<Case> {
    let ports51: Vec<String> = (0..51).map(|i| (1000 + i).to_string()).collect();
    let c = |n: &str| head("Container", n);
    let pol = |n: &str| head("Policy", n);
    let pool = |n: &str| head("IPPool", n);
    vec![
        case("malformed YAML", head("Group", "m") + "spec: {ingress: [}\n", 5, 18, "", "YAML syntax error"),
        case("duplicate key", head("Group", "d") + "  name: e\nspec: {}\n", 5, 3, "metadata.name", "duplicate key 'name' (first defined at line "),
        case("unknown field in spec", head("Group", "u") + "spec:\n  ingres: []\n", 6, 3, "spec.ingres", "unknown field 'ingres'"),
        case("unknown top-level field", head("Group", "u") + "spec: {}\nextra: 1\n", 6, 1, "extra", "unknown field 'extra'"),
        case("wrong type (number)", pool("p2") + "spec:\n  cidr: 10.70.0.0/16\n  blockSize: abc\n", 7, 14, "spec.blockSize", "\"abc\""),
        case("wrong type (list)", head("Group", "w") + "spec:\n  ingress: notalist\n", 6, 12, "spec.ingress", "\"notalist\""),
        case("bad CIDR", pool("p2") + "spec:\n  cidr: 10.70.0.0/33\n", 6, 9, "spec.cidr", "is not a CIDR"),
        case("non-strict CIDR", pool("p2") + "spec:\n  cidr: 10.70.0.1/16\n", 6, 9, "spec.cidr", "host bits set"),
        case("pool overlapping a stored pool", pool("p2") + "spec:\n  cidr: 10.65.128.0/17\n", 6, 9, "spec.cidr", "overlaps IPPool 'default-ipv4'"),
        case("reserved pool range", pool("p2") + "spec:\n  cidr: 127.0.0.0/16\n", 6, 9, "spec.cidr", "reserved loopback range"),
        case("bad selector, with column", pol("s") + "spec:\n  selector: tier == \"db\" &&& x\n", 6, 28, "spec.selector", "invalid selector: column 16"),
        case("bad quoted selector, with column", pol("s") + "spec:\n  selector: 'tier = \"db\"'\n", 6, 19, "spec.selector", "invalid selector: column 6"),
        case("port without protocol", pol("pp") + "spec:\n  ingress:\n    - action: Allow\n      destination:\n        ports: [80]\n", 9, 16, "spec.ingress[0].destination.ports", "ports need protocol"),
        case("port 65536", pol("pp") + "spec:\n  ingress:\n    - action: Allow\n      protocol: TCP\n      destination:\n        ports: [80, 65536]\n", 10, 21, "spec.ingress[0].destination.ports[1]", "port 65536 is out of range"),
        case("reversed port range", pol("rr") + "spec:\n  ingress:\n    - action: Allow\n      protocol: UDP\n      destination:\n        ports: [\"90:80\"]\n", 10, 17, "spec.ingress[0].destination.ports[0]", "reversed"),
        case("ICMP fields without ICMP", pol("ic") + "spec:\n  ingress:\n    - action: Allow\n      protocol: TCP\n      icmp: {type: 8}\n", 9, 13, "spec.ingress[0].icmp", "need protocol ICMP"),
        case("ICMP with ipVersion 6", pol("i6") + "spec:\n  ingress:\n    - action: Allow\n      protocol: ICMP\n      ipVersion: 6\n", 9, 18, "spec.ingress[0].ipVersion", "protocol ICMP is IPv4"),
        case("ipVersion mismatch with nets", pol("iv") + "spec:\n  egress:\n    - action: Allow\n      ipVersion: 6\n      destination:\n        nets: [fd00::/8, 10.0.0.0/8]\n", 10, 26, "spec.egress[0].destination.nets[1]", "10.0.0.0/8 is IPv4 but the rule has ipVersion 6"),
        case("more than 50 ports", pol("tm") + &format!("spec:\n  ingress:\n    - action: Allow\n      protocol: TCP\n      destination:\n        ports: [{}]\n", ports51.join(", ")), 10, 16, "spec.ingress[0].destination.ports", "more than 50 items"),
        case("bad action", pol("ba") + "spec:\n  ingress:\n    - action: Accept\n", 7, 15, "spec.ingress[0].action", "\"Accept\""),
        case("ingress rules without Ingress type", pol("ty") + "spec:\n  types: [Egress]\n  ingress:\n    - action: Allow\n", 8, 5, "spec.ingress", "types does not include Ingress"),
        case("dangling group", c("c9") + "spec:\n  node: host1\n  netns: /x\n  groups: [A_C_E, nosuch]\n", 8, 19, "spec.groups[1]", "Group 'nosuch' does not exist"),
        case("dangling node", c("c9") + "spec:\n  node: nosuch\n  netns: /x\n", 6, 9, "spec.node", "Node 'nosuch' does not exist"),
        case("immutable IPPool cidr", pool("default-ipv4") + "spec:\n  cidr: 10.66.0.0/16\n  blockSize: 26\n", 6, 9, "spec.cidr", "cidr is immutable"),
        case("immutable IPPool blockSize", pool("default-ipv4") + "spec:\n  cidr: 10.65.0.0/16\n  blockSize: 28\n", 7, 14, "spec.blockSize", "blockSize is immutable"),
        case("blockSize out of range", pool("p2") + "spec:\n  cidr: 10.70.0.0/16\n  blockSize: 33\n", 7, 14, "spec.blockSize", "must be 20-32"),
        case("explicit IP outside pools", c("c9") + "spec:\n  node: host1\n  netns: /x\n  ips: [10.99.0.1]\n", 8, 9, "spec.ips[0]", "10.99.0.1 is not in any IPPool"),
        case("IP held by another Container", c("c9") + "spec:\n  node: host1\n  netns: /x\n  ips: [10.65.0.1]\n", 8, 9, "spec.ips[0]", "already held by Container 'workload-a'"),
        case("invalid IP", c("c9") + "spec:\n  node: host1\n  netns: /x\n  ips: [10.65.0.300]\n", 8, 9, "spec.ips[0]", "'10.65.0.300' is not an IP address"),
        case("both container and netns", c("c9") + "spec:\n  node: host1\n  container: web-1\n  netns: /x\n", 8, 10, "spec.netns", "not both"),
        case("neither container nor netns", c("c9") + "spec:\n  node: host1\n", 6, 3, "spec", "one of container"),
        case("relative netns", c("c9") + "spec:\n  node: host1\n  netns: var/run/x\n", 7, 10, "spec.netns", "must be an absolute path"),
        case("missing spec.node", c("c9") + "spec:\n  netns: /x\n", 6, 3, "spec", "missing required field 'node'"),
        case("interface name too long", c("c9") + "spec:\n  node: host1\n  netns: /x\n  interface: averyverylongname0\n", 8, 14, "spec.interface", "not a valid interface name"),
        case("group listed twice", c("c9") + "spec:\n  node: host1\n  netns: /x\n  groups: [B, B]\n", 8, 15, "spec.groups[1]", "listed twice"),
        case("ClusterConfig not named default", head("ClusterConfig", "main") + "spec: {}\n", 4, 9, "metadata.name", "named 'default'"),
        case("mtu out of range", head("ClusterConfig", "default") + "spec:\n  mtu: 100\n", 6, 8, "spec.mtu", "minimum of 576"),
        case("bad name", head("Group", "-bad-") + "spec: {}\n", 4, 9, "metadata.name", "is not a valid name"),
        case("missing name", "apiVersion: calico/v1\nkind: Group\nmetadata:\n  labels: {a: b}\nspec: {}\n".into(), 4, 3, "metadata", "missing required field 'name'"),
        case("bad label key", "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: g\n  labels:\n    \"bad key\": x\nspec: {}\n".into(), 6, 5, "metadata.labels.bad key", "label key 'bad key'"),
        case("wrong apiVersion", "apiVersion: calico/v2\nkind: Group\nmetadata:\n  name: g\nspec: {}\n".into(), 1, 13, "apiVersion", "must be \"calico/v1\""),
        case("unknown kind", "apiVersion: calico/v1\nkind: Gruop\nmetadata:\n  name: g\nspec: {}\n".into(), 2, 7, "kind", "unknown kind 'Gruop'"),
        // A Group or ClusterConfig may leave spec out (all its fields have defaults).
        case("missing spec", head("IPPool", "ms"), 1, 1, "", "missing required field 'spec'"),
        case("not a mapping", "- just\n- a list\n".into(), 1, 1, "", "a document must be a mapping"),
        case("BGPPeer with node and nodeSelector", head("BGPPeer", "pe") + "spec:\n  peerIP: 10.0.0.254\n  asNumber: 64600\n  node: host1\n  nodeSelector: rack == \"r1\"\n", 9, 17, "spec.nodeSelector", "not both"),
        case("AS number 0", head("Node", "n9") + "spec:\n  asNumber: 0\n", 6, 13, "spec.asNumber", "AS number 0 is reserved"),
        case("defined twice in one apply", head("Group", "tw") + "spec: {}\n---\n" + &head("Group", "tw") + "spec: {}\n", 10, 9, "metadata.name", "Group/tw is defined twice"),
    ]
}

/// Nine valid documents, so the case is the tenth.
fn nine_valid_documents() -> (String, usize) {
    let mut s = String::new();
    for i in 0..9 {
        s.push_str(&head("Group", &format!("pad-{i}")));
        s.push_str("spec: {}\n---\n");
    }
    let lines = s.lines().count();
    (s, lines)
}

#[track_caller]
fn expect_located(r: &Run, file: &str, line: usize, col: usize, c: &Case, variant: &str) {
    assert!(
        !r.ok() && r.code.is_some(),
        "{} ({variant}): expected failure, got {r:?}",
        c.name
    );
    let location = if c.path.is_empty() {
        format!("{file}:{line}:{col}: ")
    } else {
        format!("{file}:{line}:{col}: {}: ", c.path)
    };
    let hit = r.stderr.lines().find(|l| l.starts_with(&location)).unwrap_or_else(|| {
        panic!(
            "{} ({variant}): no line starting with {location:?} in:\n{}",
            c.name, r.stderr
        )
    });
    assert!(
        hit.contains(c.message),
        "{} ({variant}): {hit:?} does not say {:?}",
        c.name,
        c.message
    );
    assert!(r.stdout.is_empty(), "{} ({variant}): printed {:?}", c.name, r.stdout);
}

#[test]
fn bad_inputs_fail_located_and_leave_etcd_untouched() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let ex = examples_dir().display().to_string();
    ctl(&ep, &["apply", "-f", &ex]).assert_ok();
    let before = dump(&ep);
    assert!(before.values.len() >= 10 && before.versions.len() >= 10);

    let dir = tempfile::tempdir().unwrap();
    let (pad, pad_lines) = nine_valid_documents();
    for (i, c) in cases.iter().enumerate() {
        let single = write_file(dir.path(), &format!("case{i}.yaml"), &c.text);
        let r = ctl(&ep, &["apply", "-f", &single]);
        expect_located(&r, &single, c.line, c.col, c, "alone");
        assert_eq!(dump(&ep), before, "{}: etcd changed", c.name);

        let tenth = write_file(dir.path(), &format!("case{i}-tenth.yaml"), &format!("{pad}{}", c.text));
        let r = ctl(&ep, &["apply", "-f", &tenth]);
        expect_located(&r, &tenth, c.line + pad_lines, c.col, c, "tenth document");
        assert_eq!(dump(&ep), before, "{} (tenth document): etcd changed", c.name);

        // create and diff see the same problems and write nothing either.
        let r = ctl(&ep, &["create", "-f", &tenth]);
        expect_located(&r, &tenth, c.line + pad_lines, c.col, c, "create");
        let r = ctl(&ep, &["diff", "-f", &tenth]);
        assert_eq!(r.code, Some(2), "{}: diff should exit 2 on errors: {r:?}", c.name);
        assert_eq!(dump(&ep), before, "{} (create/diff): etcd changed", c.name);
    }

    // The padding alone is valid: the failures above were the case, not the pad.
    let pad_only = write_file(dir.path(), "pad.yaml", pad.trim_end_matches("---\n"));
    ctl(&ep, &["validate", "-f", &pad_only]).assert_ok();
}

#[test]
fn stdin_errors_are_named_stdin() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let before = dump(&ep);
    let text = head("Group", "d") + "  name: e\nspec: {}\n";
    let r = ctl_stdin(&ep, &["apply", "-f", "-"], &text);
    r.assert_fails();
    assert!(
        r.stderr.starts_with("<stdin>:5:3: metadata.name: duplicate key 'name'"),
        "{}",
        r.stderr
    );
    assert_eq!(dump(&ep), before);
}

#[test]
fn every_problem_of_every_file_is_reported_at_once() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(
        dir.path(),
        "a.yaml",
        &(head("IPPool", "p") + "spec:\n  cidr: 10.1.0.1/16\n"),
    );
    let b = write_file(dir.path(), "b.yaml", &(head("Group", "g") + "spec:\n  bogus: 1\n"));
    let r = ctl(&ep, &["apply", "-f", &a, "-f", &b]);
    r.assert_fails();
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    assert!(lines[0].starts_with(&format!("{a}:6:9: spec.cidr: ")), "{}", r.stderr);
    assert!(lines[1].starts_with(&format!("{b}:6:3: spec.bogus: ")), "{}", r.stderr);
}

/// Every structural error of every document is reported in one run, in the order of the
/// text, each in its own words (an optional port or protocol is not "valid under none of
/// anyOf"), and a second document's errors are not hidden behind the first's.
#[test]
fn every_error_of_a_document_is_reported_sorted_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let text = head("Policy", "many")
        + "spec:\n  order: 100\n  selector: tier == \"db\"\n  bogus: 1\n  ingress:\n    - action: Accept\n      protocol: tcpx\n      destination:\n        ports: [80, \"9:x\", 70000]\n---\n"
        + &head("IPPool", "p")
        + "spec:\n  cidr: 10.1.0.0/16\n  extra: true\n";
    let f = write_file(dir.path(), "multi.yaml", &text);
    // validate is offline: the endpoint is never contacted.
    let r = ctl("127.0.0.1:1", &["validate", "-f", &f]);
    r.assert_fails();
    let got: Vec<&str> = r.stderr.lines().collect();
    let want = [
        format!("{f}:8:3: spec.bogus: unknown field 'bogus'"),
        format!("{f}:10:15: spec.ingress[0].action: \"Accept\" is not one of Allow, Deny, Log, Pass"),
        format!("{f}:11:17: spec.ingress[0].protocol: unknown protocol 'tcpx'"),
        format!("{f}:13:21: spec.ingress[0].destination.ports[1]: 'x' is not a port number"),
        format!("{f}:13:28: spec.ingress[0].destination.ports[2]: port 70000 is out of range"),
        format!("{f}:21:3: spec.extra: unknown field 'extra'"),
    ];
    assert_eq!(got.len(), want.len(), "{}", r.stderr);
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g.starts_with(w.as_str()),
            "got {g:?}, want it to start with {w:?}\n{}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("anyOf"), "{}", r.stderr);
}

/// Lower-case protocol names, as the seed wrote them, are accepted by the schema (and so
/// by editors using it) exactly as by calicoctl.
#[test]
fn lowercase_protocol_names_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        head("Policy", "lc") + "spec:\n  selector: all()\n  ingress:\n    - action: Allow\n      protocol: udp\n";
    let f = write_file(dir.path(), "lc.yaml", &text);
    ctl("127.0.0.1:1", &["validate", "-f", &f]).assert_ok();
}
