//! Property tests ("fuzzing" on stable Rust, with proptest) of the etcd values the
//! agent and calicoctl decode, which anyone with write access to etcd controls: stored
//! resources (`decode_resource`), the plain JSON status values (`decode_json` of
//! ContainerStatus and AgentStatus) and IPAM's blocks and handles (`decode_block`,
//! `decode_handle`). No etcd needed: the decoders take the key and the bytes.
//!
//! Properties, on arbitrary bytes and on mutated valid values: no panic; each value is
//! decoded within `PER_INPUT`; a refusal is `Invalid` and names the key; what decodes
//! is stored at its own key and survives encoding and decoding again unchanged.
//!
//! `scripts/fuzz.sh` runs these with many more cases; failing inputs are kept by
//! proptest in `tests/fuzz_values.proptest-regressions` and tried first on every run.

use calico_schema::{AgentStatus, ContainerStatus, Resource};
use calico_store::ipam::{block_key, decode_block, decode_handle, handle_key, BlockDoc, HandleInfo, IpamError};
use calico_store::{decode_json, decode_resource, resource_key, StoreError};
use proptest::prelude::*;
use serde_json::{json, Value};

#[path = "../../schema/tests/fuzz_support/mod.rs"]
mod fuzz_support;
use fuzz_support::{cases, mutated_json, timed};

/// The example resources, each as stored (JSON without resourceVersion) with its key.
fn stored_examples() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read example");
        for l in calico_schema::load_str("example.yaml", &text).expect("examples load") {
            let r = l.resource.without_version();
            out.push((resource_key(r.kind(), r.name()), r.to_json()));
        }
    }
    out
}

fn blocks() -> Vec<BlockDoc> {
    vec![
        BlockDoc {
            cidr: "10.65.0.64/26".parse().expect("literal"),
            affinity: Some("host:node1".into()),
            allocations: [(0, "container/a".into()), (5, "container/b".into())].into(),
            next: 6,
        },
        BlockDoc {
            cidr: "fd00::40/122".parse().expect("literal"),
            affinity: None,
            allocations: [(63, "container/c".into())].into(),
            next: 0,
        },
    ]
}

/// Keys a hostile or careless writer might use for a block: its own, another's, the
/// same cidr spelt differently, junk.
fn block_key_for(doc: &BlockDoc) -> impl Strategy<Value = String> {
    let own = block_key(&doc.cidr);
    let upper = own
        .to_uppercase()
        .replace("/CALICO/V1/IPAM/BLOCKS/", "/calico/v1/ipam/blocks/");
    prop_oneof![
        4 => Just(own),
        1 => Just(upper),
        1 => Just("/calico/v1/ipam/blocks/fd00:0::40_122".to_string()),
        1 => Just("/calico/v1/ipam/blocks/10.65.0.0_16".to_string()),
        1 => "/calico/v1/ipam/blocks/[0-9a-f.:_/]{0,20}",
        1 => any::<String>(),
    ]
}

/// The key a refusal names, when it is the kind of refusal it should be.
fn store_key(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::Invalid { key, .. } => Some(key),
        _ => None,
    }
}

fn ipam_key(e: &IpamError) -> Option<&str> {
    match e {
        IpamError::Invalid { key, .. } => Some(key),
        _ => None,
    }
}

/// Decode `value` from `key` in bounded time: a refusal names `key`; what decodes
/// passes `accepted`, and once `encode`d decodes again to the same thing.
fn check_decoder<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    key: &str,
    value: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    refused_key: impl Fn(&E) -> Option<&str>,
    encode: impl Fn(&T) -> Vec<u8>,
    accepted: impl Fn(&T) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match timed(key, &String::from_utf8_lossy(value), || decode(value)) {
        Ok(v) => {
            accepted(&v)?;
            let again =
                decode(&encode(&v)).map_err(|e| TestCaseError::fail(format!("{key}: re-decoding {v:?}: {e:?}")))?;
            prop_assert_eq!(again, v);
        }
        Err(e) => prop_assert_eq!(refused_key(&e), Some(key), "{:?}", e),
    }
    Ok(())
}

fn to_vec<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn check_resource(key: &str, value: &[u8], rev: i64) -> Result<(), TestCaseError> {
    check_decoder(
        key,
        value,
        |v| decode_resource(key, v, rev),
        store_key,
        // As the store writes it: without resourceVersion.
        |r: &Resource| to_vec(&r.without_version().to_json()),
        |r| {
            prop_assert_eq!(resource_key(r.kind(), r.name()), key);
            prop_assert_eq!(r.metadata().resource_version.clone(), Some(rev.to_string()));
            Ok(())
        },
    )
}

fn check_json<T>(key: &str, value: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    check_decoder(key, value, |v| decode_json::<T>(key, v), store_key, to_vec, |_| Ok(()))
}

fn check_block(key: &str, value: &[u8]) -> Result<(), TestCaseError> {
    check_decoder(
        key,
        value,
        |v| decode_block(key, v),
        ipam_key,
        to_vec,
        |doc| {
            // One cidr, one key: a block under another spelling of its cidr would be
            // missed by lookups of `block_key` and could be allocated twice.
            prop_assert_eq!(block_key(&doc.cidr), key);
            Ok(())
        },
    )
}

fn check_handle(key: &str, value: &[u8]) -> Result<(), TestCaseError> {
    check_decoder(
        key,
        value,
        |v| decode_handle(key, v),
        ipam_key,
        |(_, info)| to_vec(info),
        |(name, _)| {
            // One handle, one key: the name read must lead back to the key it was read
            // from, or a release would touch another key.
            prop_assert_eq!(handle_key(name), key);
            Ok(())
        },
    )
}

fn container_status() -> Value {
    json!({"node": "node1", "hostInterface": "cali0123456789a", "ips": ["10.65.0.5", "fd00::5"],
           "state": "Programmed", "message": "", "updated": 1700000000u64})
}

fn agent_status() -> Value {
    serde_json::to_value(AgentStatus {
        node: "node1".into(),
        pid: 42,
        version: "0.1.0".into(),
        ready: true,
        errors: vec!["x".into()],
        invalid_data: vec!["/calico/v1/resources/x".into()],
        bird_pid: Some(43),
        http: Some("127.0.0.1:9099".into()),
        ..AgentStatus::default()
    })
    .expect("encode")
}

const STATUS_KEY: &str = "/calico/v1/status/containers/web-1";
const AGENT_KEY: &str = "/calico/v1/status/nodes/node1";

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..256)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn resources_any_bytes(i in 0..stored_examples().len(), value in bytes(), rev in any::<i64>()) {
        check_resource(&stored_examples()[i].0, &value, rev)?;
    }

    #[test]
    fn resources_mutated(
        (i, value) in mutated_json(stored_examples().into_iter().map(|(_, v)| v).collect()),
        other_key in any::<prop::sample::Index>(),
        own_key in prop::bool::weighted(0.8),
        rev in 1i64..1_000_000,
    ) {
        let ex = stored_examples();
        let key = if own_key { &ex[i].0 } else { &ex[other_key.index(ex.len())].0 };
        check_resource(key, &value, rev)?;
    }

    #[test]
    fn status_values_any_bytes(value in bytes()) {
        check_json::<ContainerStatus>(STATUS_KEY, &value)?;
        check_json::<AgentStatus>(AGENT_KEY, &value)?;
    }

    #[test]
    fn status_values_mutated((i, value) in mutated_json(vec![container_status(), agent_status()])) {
        if i == 0 {
            check_json::<ContainerStatus>(STATUS_KEY, &value)?;
        } else {
            check_json::<AgentStatus>(AGENT_KEY, &value)?;
        }
    }

    #[test]
    fn blocks_any_bytes(key in block_key_for(&blocks()[0]), value in bytes()) {
        check_block(&key, &value)?;
        check_handle(&key, &value)?;
    }

    #[test]
    fn blocks_mutated(
        ((i, value), k0, k1) in (
            mutated_json(blocks().iter().map(|b| serde_json::to_value(b).expect("encode")).collect()),
            block_key_for(&blocks()[0]),
            block_key_for(&blocks()[1]),
        )
    ) {
        check_block(if i == 0 { &k0 } else { &k1 }, &value)?;
    }

    #[test]
    fn handles_mutated(
        (_, value) in mutated_json(vec![serde_json::to_value(HandleInfo {
            ips: vec!["10.65.0.5".parse().expect("literal")],
            node: "node1".into(),
        }).expect("encode")]),
        name in "[a-z/%]{0,12}",
    ) {
        check_handle(&handle_key(&name), &value)?;
    }

    /// Keys spelled any way under the handles prefix, not only as `handle_key` writes
    /// them (`%2f`, a lone `%`, `%41`...).
    #[test]
    fn handles_under_any_key(escaped in "[a-zA-Z/%2F5]{0,12}") {
        let value = to_vec(&HandleInfo { ips: vec!["10.65.0.5".parse().expect("literal")], node: "node1".into() });
        check_handle(&format!("/calico/v1/ipam/handles/{escaped}"), &value)?;
    }
}

/// Regression (found in review of issue 11): a lowercase `%2f` decoded as `/`, so the
/// handle read from `.../handles/a%2fb` was `a/b`, whose own key is `a%2Fb`; and
/// (found by `handles_under_any_key`) a key nested below the prefix, `handles/a/b`,
/// read as the handle `a/b`, whose key is also `a%2Fb`.
#[test]
fn non_canonical_handle_keys_are_refused() {
    let value = to_vec(&HandleInfo {
        ips: vec!["10.65.0.5".parse().expect("literal")],
        node: "node1".into(),
    });
    for bad in ["a%2fb", "a%b", "a%", "%41", "", "a/b"] {
        let key = format!("/calico/v1/ipam/handles/{bad}");
        match decode_handle(&key, &value) {
            Err(IpamError::Invalid { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(
        decode_handle("/calico/v1/ipam/blocks/x", &value).is_err(),
        "not a handle key"
    );
    let (name, _) = decode_handle("/calico/v1/ipam/handles/a%2Fb%25", &value).expect("canonical");
    assert_eq!(name, "a/b%");
}

/// The seeds decode: the mutations start from valid values.
#[test]
fn the_seed_values_decode() {
    for (key, value) in stored_examples() {
        decode_resource(&key, &serde_json::to_vec(&value).expect("encode"), 7).expect(&key);
    }
    decode_json::<ContainerStatus>(STATUS_KEY, container_status().to_string().as_bytes()).expect("status");
    decode_json::<AgentStatus>(AGENT_KEY, agent_status().to_string().as_bytes()).expect("agent status");
    for b in blocks() {
        decode_block(&block_key(&b.cidr), &serde_json::to_vec(&b).expect("encode")).expect("block");
    }
}
