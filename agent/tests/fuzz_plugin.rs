//! Property tests ("fuzzing" on stable Rust, with proptest) of what a Docker client
//! controls: the JSON bodies of every plugin method, sent over the real plugin sockets
//! to a backend that accepts everything (so decoding and checking reach as far as they
//! can), and the CALICO_* environment of a container.
//!
//! Properties: every body gets HTTP 200 or 400 with a JSON answer; a refusal names the
//! driver and, when the body could not be decoded (400), the method; no handler panics
//! (the server would answer "the handler panicked"); each input is answered within
//! `PER_INPUT`. The environment parser never panics, names the variable it refuses, and
//! what it accepts is what the variables said. No root needed.
//!
//! `scripts/fuzz.sh` runs these with many more cases; failing inputs are kept by
//! proptest in `tests/fuzz_plugin.proptest-regressions` and tried first on every run.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use calico_agent::docker::env::{parse_calico_env, CalicoIp, ENV_GROUP, ENV_IP, ENV_PROFILE};
use calico_agent::docker::{
    AddressRequest, Backend, EndpointCreate, EndpointInterface, JoinInfo, JoinRequest, NetworkCreate, PluginServer,
    PoolInfo, PoolRequest,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[path = "../../schema/tests/fuzz_support/mod.rs"]
mod fuzz_support;
use fuzz_support::{cases, mutated_json, timed};

/// A backend that says yes to everything, answering with what the request asked for.
struct Yes;

impl Backend for Yes {
    async fn create_network(&self, _req: NetworkCreate) -> anyhow::Result<()> {
        Ok(())
    }
    async fn delete_network(&self, _network_id: String) -> anyhow::Result<()> {
        Ok(())
    }
    async fn create_endpoint(&self, req: EndpointCreate) -> anyhow::Result<EndpointInterface> {
        Ok(EndpointInterface {
            mac: req.mac.or_else(|| Some("02:00:00:00:00:01".into())),
        })
    }
    async fn delete_endpoint(&self, _network_id: String, _endpoint_id: String) -> anyhow::Result<()> {
        Ok(())
    }
    async fn join(&self, _req: JoinRequest) -> anyhow::Result<JoinInfo> {
        Ok(JoinInfo::calico("tmp0123456789", true))
    }
    async fn leave(&self, _network_id: String, _endpoint_id: String) -> anyhow::Result<()> {
        Ok(())
    }
    async fn endpoint_oper_info(
        &self,
        _network_id: String,
        _endpoint_id: String,
    ) -> anyhow::Result<BTreeMap<String, Value>> {
        Ok(BTreeMap::new())
    }
    async fn program_external_connectivity(&self, _network_id: String, _endpoint_id: String) -> anyhow::Result<()> {
        Ok(())
    }
    async fn revoke_external_connectivity(&self, _network_id: String, _endpoint_id: String) -> anyhow::Result<()> {
        Ok(())
    }
    async fn request_pool(&self, req: PoolRequest) -> anyhow::Result<PoolInfo> {
        let pool = req.pool.unwrap_or_else(|| "0.0.0.0/0".parse().expect("literal"));
        Ok(PoolInfo {
            pool_id: pool.to_string(),
            pool,
        })
    }
    async fn release_pool(&self, _pool_id: String) -> anyhow::Result<()> {
        Ok(())
    }
    async fn request_address(&self, req: AddressRequest) -> anyhow::Result<IpAddr> {
        Ok(req.address.unwrap_or(IpAddr::from([10, 65, 0, 1])))
    }
    async fn release_address(&self, _pool_id: String, _address: IpAddr) -> anyhow::Result<()> {
        Ok(())
    }
}

/// One plugin server for the whole test binary, on its own runtime.
struct Harness {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    _server: PluginServer,
    network: PathBuf,
    ipam: PathBuf,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let server = rt
            .block_on(calico_agent::docker::serve(dir.path(), Arc::new(Yes)))
            .expect("serve");
        Harness {
            network: server.network_socket().to_path_buf(),
            ipam: server.ipam_socket().to_path_buf(),
            rt,
            _dir: dir,
            _server: server,
        }
    })
}

/// Every method of both drivers, each with a valid body as libnetwork sends it.
fn methods() -> Vec<(&'static str, Value)> {
    let nid = "5f3d1a0c9e8b7a6f5e4d3c2b1a0f9e8d";
    let eid = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    vec![
        ("Plugin.Activate", Value::Null),
        ("NetworkDriver.GetCapabilities", Value::Null),
        (
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": nid, "Options": {"com.docker.network.enable_ipv6": false,
                   "com.docker.network.generic": {"group": "web"}},
                   "IPv4Data": [{"AddressSpace": "CalicoLocal", "Pool": "10.65.0.0/16", "Gateway": "0.0.0.0/0", "AuxAddresses": null}],
                   "IPv6Data": [{"AddressSpace": "CalicoLocal", "Pool": "fd00::/64", "Gateway": "::/0"}]}),
        ),
        ("NetworkDriver.DeleteNetwork", json!({"NetworkID": nid})),
        (
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": nid, "EndpointID": eid, "Options": {},
                   "Interface": {"Address": "10.65.0.5/32", "AddressIPv6": "fd00::5/128", "MacAddress": ""}}),
        ),
        (
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": nid, "EndpointID": eid}),
        ),
        (
            "NetworkDriver.EndpointOperInfo",
            json!({"NetworkID": nid, "EndpointID": eid}),
        ),
        (
            "NetworkDriver.Join",
            json!({"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/abc", "Options": null}),
        ),
        ("NetworkDriver.Leave", json!({"NetworkID": nid, "EndpointID": eid})),
        (
            "NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID": nid, "EndpointID": eid, "Options": {"com.docker.network.portmap": []}}),
        ),
        (
            "NetworkDriver.RevokeExternalConnectivity",
            json!({"NetworkID": nid, "EndpointID": eid}),
        ),
        (
            "NetworkDriver.DiscoverNew",
            json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.2"}}),
        ),
        (
            "NetworkDriver.DiscoverDelete",
            json!({"DiscoveryType": 1, "DiscoveryData": null}),
        ),
        (
            "NetworkDriver.AllocateNetwork",
            json!({"NetworkID": nid, "Options": {}}),
        ),
        ("NetworkDriver.FreeNetwork", json!({"NetworkID": nid})),
        ("IpamDriver.GetCapabilities", Value::Null),
        ("IpamDriver.GetDefaultAddressSpaces", Value::Null),
        (
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "CalicoLocal", "Pool": "10.65.0.0/16", "SubPool": "", "Options": {}, "V6": false}),
        ),
        ("IpamDriver.ReleasePool", json!({"PoolID": "10.65.0.0/16"})),
        (
            "IpamDriver.RequestAddress",
            json!({"PoolID": "10.65.0.0/16", "Address": "10.65.0.7", "Options": {"RequestAddressType": ""}}),
        ),
        (
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": "10.65.0.0/16", "Address": "10.65.0.7"}),
        ),
        (
            "IpamDriver.DiscoverNew",
            json!({"DiscoveryType": 1, "DiscoveryData": {}}),
        ),
    ]
}

/// POST `body` to `method` on its driver's socket: the status and the JSON answer.
fn call(method: &str, body: &[u8]) -> (u16, Value) {
    let h = harness();
    let sock = if method.starts_with("IpamDriver.") {
        &h.ipam
    } else {
        &h.network
    };
    h.rt.block_on(async {
        let mut stream = UnixStream::connect(sock).await.expect("connect");
        let head = format!(
            "POST /{method} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write");
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8(buf).expect("the answer is UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let value = serde_json::from_str(body).unwrap_or_else(|e| panic!("answer {body:?} is not JSON: {e}"));
        (status, value)
    })
}

/// The properties every answer has, whatever the body.
fn check(method: &str, body: &[u8]) -> Result<(), TestCaseError> {
    let (status, answer) = timed(method, &String::from_utf8_lossy(body), || call(method, body));
    prop_assert!(status == 200 || status == 400, "{method}: HTTP {status}: {answer}");
    match answer.get("Err").and_then(Value::as_str) {
        None | Some("") => prop_assert_eq!(status, 200, "{}: a refusal without Err: {}", method, answer),
        Some(err) => {
            prop_assert!(!err.contains("panicked"), "{method}: {err}");
            prop_assert!(
                err.starts_with("calico: ") || err.starts_with("calico-ipam: "),
                "{method}: the refusal does not name the driver: {err}"
            );
            if status == 400 {
                prop_assert!(
                    err.contains(method),
                    "{method}: the refusal does not name the method: {err}"
                );
            }
        }
    }
    Ok(())
}

fn method_index() -> impl Strategy<Value = usize> {
    0..methods().len()
}

/// Text a CALICO_* value might hold: addresses, names, separators, junk.
fn env_value() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec!["auto", "AUTO", ",", " ", "="]).prop_map(str::to_string),
        "(25[0-6]|[0-9]{1,3})(\\.[0-9]{1,3}){0,4}",
        "[0-9a-fA-F:]{0,12}",
        "[A-Za-z0-9_.-]{0,70}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn env_entry() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![ENV_IP, ENV_GROUP, ENV_PROFILE, "PATH", "CALICO_IPX", " CALICO_IP"])
            .prop_map(str::to_string),
        "[A-Z_]{0,10}",
    ];
    prop_oneof![
        (key, env_value()).prop_map(|(k, v)| format!("{k}={v}")),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn any_bytes_to_any_method_get_a_clear_answer(i in method_index(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        check(methods()[i].0, &body)?;
    }

    #[test]
    fn any_json_to_any_method_gets_a_clear_answer(i in method_index(), body in fuzz_support::any_json()) {
        check(methods()[i].0, &serde_json::to_vec(&body).unwrap_or_default())?;
    }

    #[test]
    fn mutated_valid_bodies_get_a_clear_answer((i, body) in mutated_json(methods().into_iter().map(|(_, b)| b).collect())) {
        check(methods()[i].0, &body)?;
    }

    #[test]
    fn env_parser_never_panics_and_names_the_variable(env in prop::collection::vec(env_entry(), 0..6)) {
        match timed("parse_calico_env", &env, || parse_calico_env(&env)) {
            Ok(None) => {}
            Ok(Some(req)) => {
                if let CalicoIp::Addresses(a) = &req.ip {
                    prop_assert!(!a.is_empty(), "{:?}: no address", env);
                    prop_assert!(a.iter().filter(|x| x.is_ipv4()).count() <= 1, "{:?}", env);
                    prop_assert!(a.iter().filter(|x| x.is_ipv6()).count() <= 1, "{:?}", env);
                }
                for g in &req.groups {
                    prop_assert!(calico_schema::validate::is_valid_name(g), "{:?}: group {:?}", env, g);
                }
            }
            Err(e) => prop_assert!(
                [ENV_IP, ENV_GROUP, ENV_PROFILE].iter().any(|v| e.0.contains(v)),
                "{:?}: the error names no variable: {}", env, e
            ),
        }
    }
}

/// The valid bodies are valid: the mutations start from what Docker really sends.
#[test]
fn the_seed_bodies_succeed() {
    for (method, body) in methods() {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).expect("encode")
        };
        let (status, answer) = call(method, &bytes);
        let refused = answer.get("Err").and_then(Value::as_str).is_some_and(|e| !e.is_empty());
        // AllocateNetwork is refused by design (no swarm scope); it still decodes.
        assert!(
            status == 200 && (!refused || method == "NetworkDriver.AllocateNetwork"),
            "{method}: HTTP {status}: {answer}"
        );
    }
}
