//! The published schema (what editors use) refuses what `calicoctl validate` refuses
//! about one resource alone, and accepts everything valid, including every example.

use calico_schema::{load_str, schema_value, yaml};
use serde_json::{json, Value};

fn published() -> jsonschema::Validator {
    jsonschema::validator_for(&schema_value()).expect("the published schema compiles")
}

fn doc(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "calico/v1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

/// The same document as YAML (JSON is YAML) for the loader.
fn loader_refuses(d: &Value) -> bool {
    load_str("t.yaml", &d.to_string()).is_err()
}

#[test]
fn editor_schema_refuses_what_validate_refuses_about_one_resource() {
    let v = published();
    let bad = [
        (
            "container and netns both set",
            doc("Container", json!({"node": "n", "container": "c", "netns": "/x"})),
        ),
        ("neither container nor netns", doc("Container", json!({"node": "n"}))),
        (
            "an IPv4 octet above 255",
            doc("Container", json!({"node": "n", "netns": "/x", "ips": ["10.65.0.999"]})),
        ),
        (
            "an address that is not one",
            doc("Container", json!({"node": "n", "netns": "/x", "ips": ["web"]})),
        ),
        (
            "blockSize 40 in an IPv4 pool",
            doc("IPPool", json!({"cidr": "10.70.0.0/16", "blockSize": 40})),
        ),
        (
            "blockSize 26 in an IPv6 pool",
            doc("IPPool", json!({"cidr": "fd00:1::/48", "blockSize": 26})),
        ),
        ("an IPv4 prefix over 32", doc("IPPool", json!({"cidr": "10.70.0.0/33"}))),
        ("an IPv6 prefix over 128", doc("IPPool", json!({"cidr": "fd00::/129"}))),
        (
            "a BGP peer address that is not one",
            doc("BGPPeer", json!({"peerIP": "10.0.0.256", "asNumber": 64600})),
        ),
        (
            "a BGP peer with node and nodeSelector",
            doc(
                "BGPPeer",
                json!({"peerIP": "10.0.0.1", "asNumber": 64600, "node": "n", "nodeSelector": "a == \"b\""}),
            ),
        ),
        (
            "an IPv6 address as a node's ipv4",
            doc("Node", json!({"ipv4": "fd00::1/64"})),
        ),
        (
            "an IPv4 address as a node's ipv6",
            doc("Node", json!({"ipv6": "10.0.0.1/24"})),
        ),
        (
            "a route reflector cluster ID that is not IPv4",
            doc("Node", json!({"routeReflectorClusterID": "1.2.3"})),
        ),
        (
            "a rule net with a bad address",
            doc(
                "Policy",
                json!({"selector": "all()", "ingress": [{"action": "Allow", "source": {"nets": ["10.1.2.300/32"]}}]}),
            ),
        ),
    ];
    for (what, d) in &bad {
        assert!(!v.is_valid(d), "the published schema lets through {what}: {d}");
        assert!(loader_refuses(d), "calicoctl validate accepts {what}: {d}");
    }
}

#[test]
fn editor_schema_accepts_valid_addresses_and_every_example() {
    let v = published();
    let good = [
        doc(
            "Container",
            json!({"node": "n", "netns": "/x", "ips": ["10.65.0.1", "fd00::1"]}),
        ),
        doc(
            "Container",
            json!({"node": "n", "netns": "/x", "ips": ["2001:db8:0:0:0:0:0:1"]}),
        ),
        doc(
            "Container",
            json!({"node": "n", "netns": "/x", "ips": ["::ffff:10.0.0.1"]}),
        ),
        doc("Container", json!({"node": "n", "container": "web-1"})),
        doc("IPPool", json!({"cidr": "10.70.0.0/16", "blockSize": 20})),
        doc("IPPool", json!({"cidr": "fd00:1::/48", "blockSize": 122})),
        doc("IPPool", json!({"cidr": "fd00:1::/48"})),
        doc(
            "Node",
            json!({"ipv4": "172.17.0.2/16", "ipv6": "fd00::2/64", "routeReflectorClusterID": "1.0.0.1"}),
        ),
        doc("BGPPeer", json!({"peerIP": "fd00::fe", "asNumber": 64600, "node": "n"})),
        doc(
            "Policy",
            json!({"selector": "all()", "egress": [{"action": "Allow", "destination": {"nets": ["0.0.0.0/0", "::/0", "10.0.0.1"]}}]}),
        ),
    ];
    for d in &good {
        let errors: Vec<String> = v.iter_errors(d).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{d}: {errors:?}");
        assert!(!loader_refuses(d), "calicoctl validate refuses {d}");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for f in calico_schema::load::yaml_files(&dir).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        for d in yaml::parse_documents(&f.display().to_string(), &text).unwrap() {
            let errors: Vec<String> = v.iter_errors(&d.value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", f.display());
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} example documents");
}
