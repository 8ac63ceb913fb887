//! The Docker plugin server over real unix sockets, with a mock backend: what Docker
//! sends (bodies as libnetwork's Go client encodes them) and what it gets back.
//! No dockerd needed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use calico_agent::docker::plugin::{serve_with, PluginConfig, PluginError};
use calico_agent::docker::{
    serve, AddressRequest, Backend, EndpointCreate, EndpointInterface, JoinInfo, JoinRequest, NetworkCreate, PoolInfo,
    PoolRequest,
};
use ipnet::IpNet;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

// ---------------------------------------------------------------------------------
// A mock backend that records every call and keeps just enough state to refuse
// unknown networks and endpoints, like the real one.
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Call {
    CreateNetwork(NetworkCreate),
    DeleteNetwork(String),
    CreateEndpoint(EndpointCreate),
    DeleteEndpoint(String, String),
    Join(JoinRequest),
    Leave(String, String),
    OperInfo(String, String),
    ProgramExternal(String, String),
    RevokeExternal(String, String),
    RequestPool(PoolRequest),
    ReleasePool(String),
    RequestAddress(AddressRequest),
    ReleaseAddress(String, IpAddr),
}

#[derive(Default)]
struct MockState {
    calls: Vec<Call>,
    networks: BTreeSet<String>,
    endpoints: BTreeMap<String, String>,
    next_host: u8,
}

#[derive(Default)]
struct Mock {
    state: Mutex<MockState>,
    /// Handlers sleep this long first (to test the request timeout).
    delay: Option<Duration>,
}

impl Mock {
    fn record(&self, call: Call) {
        self.state.lock().unwrap().calls.push(call);
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    fn check_endpoint(&self, nid: &str, eid: &str) -> anyhow::Result<()> {
        let st = self.state.lock().unwrap();
        if !st.networks.contains(nid) {
            bail!("unknown network {nid}");
        }
        if st.endpoints.get(eid).map(String::as_str) != Some(nid) {
            bail!("unknown endpoint {eid} on network {nid}");
        }
        Ok(())
    }

    async fn pause(&self) {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
    }
}

impl Backend for Mock {
    async fn create_network(&self, req: NetworkCreate) -> anyhow::Result<()> {
        self.pause().await;
        self.record(Call::CreateNetwork(req.clone()));
        self.state.lock().unwrap().networks.insert(req.network_id);
        Ok(())
    }

    async fn delete_network(&self, network_id: String) -> anyhow::Result<()> {
        self.record(Call::DeleteNetwork(network_id.clone()));
        if !self.state.lock().unwrap().networks.remove(&network_id) {
            bail!("unknown network {network_id}");
        }
        Ok(())
    }

    async fn create_endpoint(&self, req: EndpointCreate) -> anyhow::Result<EndpointInterface> {
        self.record(Call::CreateEndpoint(req.clone()));
        if req.endpoint_id == "panic" {
            panic!("mock backend told to panic");
        }
        let mut st = self.state.lock().unwrap();
        if !st.networks.contains(&req.network_id) {
            bail!("unknown network {}", req.network_id);
        }
        st.endpoints.insert(req.endpoint_id, req.network_id);
        Ok(EndpointInterface {
            mac: Some("02:00:00:00:00:01".into()),
        })
    }

    async fn delete_endpoint(&self, network_id: String, endpoint_id: String) -> anyhow::Result<()> {
        self.record(Call::DeleteEndpoint(network_id.clone(), endpoint_id.clone()));
        self.check_endpoint(&network_id, &endpoint_id)?;
        self.state.lock().unwrap().endpoints.remove(&endpoint_id);
        Ok(())
    }

    async fn join(&self, req: JoinRequest) -> anyhow::Result<JoinInfo> {
        self.record(Call::Join(req.clone()));
        self.check_endpoint(&req.network_id, &req.endpoint_id)?;
        Ok(JoinInfo::calico(
            format!("tmp{}", &req.endpoint_id[..req.endpoint_id.len().min(11)]),
            false,
        ))
    }

    async fn leave(&self, network_id: String, endpoint_id: String) -> anyhow::Result<()> {
        self.record(Call::Leave(network_id.clone(), endpoint_id.clone()));
        self.check_endpoint(&network_id, &endpoint_id)
    }

    async fn endpoint_oper_info(
        &self,
        network_id: String,
        endpoint_id: String,
    ) -> anyhow::Result<BTreeMap<String, Value>> {
        self.record(Call::OperInfo(network_id.clone(), endpoint_id.clone()));
        self.check_endpoint(&network_id, &endpoint_id)?;
        Ok(BTreeMap::from([(
            "hostInterface".to_string(),
            json!("cali0123456789a"),
        )]))
    }

    async fn program_external_connectivity(&self, network_id: String, endpoint_id: String) -> anyhow::Result<()> {
        self.record(Call::ProgramExternal(network_id, endpoint_id));
        Ok(())
    }

    async fn revoke_external_connectivity(&self, network_id: String, endpoint_id: String) -> anyhow::Result<()> {
        self.record(Call::RevokeExternal(network_id, endpoint_id));
        Ok(())
    }

    async fn request_pool(&self, req: PoolRequest) -> anyhow::Result<PoolInfo> {
        self.record(Call::RequestPool(req.clone()));
        match req.pool {
            None => Ok(PoolInfo {
                pool_id: "calico-ipv4".into(),
                pool: "0.0.0.0/0".parse()?,
            }),
            Some(p) if p == "10.65.0.0/16".parse::<IpNet>()? => Ok(PoolInfo {
                pool_id: p.to_string(),
                pool: p,
            }),
            Some(p) => Err(anyhow!("no enabled IPPool has CIDR {p}")),
        }
    }

    async fn release_pool(&self, pool_id: String) -> anyhow::Result<()> {
        self.record(Call::ReleasePool(pool_id));
        Ok(())
    }

    async fn request_address(&self, req: AddressRequest) -> anyhow::Result<IpAddr> {
        self.record(Call::RequestAddress(req.clone()));
        if let Some(a) = req.address {
            return Ok(a);
        }
        let mut st = self.state.lock().unwrap();
        st.next_host += 1;
        Ok(IpAddr::from([10, 65, 0, st.next_host]))
    }

    async fn release_address(&self, pool_id: String, address: IpAddr) -> anyhow::Result<()> {
        self.record(Call::ReleaseAddress(pool_id, address));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// A minimal HTTP/1.1 client over a unix socket, sending what Docker's plugin client
// sends (POST, its Accept header, no Content-Type).
// ---------------------------------------------------------------------------------

struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

async fn raw_request(sock: &Path, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut stream = UnixStream::connect(sock).await.unwrap();
    let head = format!(
        "{method} /{path} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    // Responses are small and not chunked (Content-Length), so the rest is the body.
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("response body {body:?} is not JSON: {e}"));
    Reply {
        status,
        content_type,
        body,
    }
}

async fn post(sock: &Path, method: &str, body: Value) -> Reply {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    raw_request(sock, "POST", method, &bytes).await
}

/// POST and expect success: HTTP 200 without Err.
async fn ok(sock: &Path, method: &str, body: Value) -> Value {
    let r = post(sock, method, body).await;
    assert_eq!(r.status, 200, "{method}: {}", r.body);
    assert!(r.body.get("Err").is_none_or(|e| e == ""), "{method}: {}", r.body);
    r.body
}

/// Expect a failure with this status whose Err contains `needle`.
fn assert_err(r: &Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let err = r.body["Err"].as_str().unwrap_or_else(|| panic!("no Err in {}", r.body));
    assert!(err.contains(needle), "Err {err:?} does not mention {needle:?}");
}

const NID: &str = "5f3d1a0c9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f";
const EID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

async fn start(mock: Arc<Mock>) -> (tempfile::TempDir, calico_agent::docker::PluginServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), mock).await.unwrap();
    (dir, server)
}

// ---------------------------------------------------------------------------------

#[tokio::test]
async fn handshake_and_capabilities() {
    let (dir, server) = start(Arc::new(Mock::default())).await;
    assert_eq!(server.network_socket(), dir.path().join("calico.sock"));
    assert_eq!(server.ipam_socket(), dir.path().join("calico-ipam.sock"));
    let net = server.network_socket();
    let ipam = server.ipam_socket();

    // Docker sends these with no body at all.
    let r = post(net, "Plugin.Activate", Value::Null).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"Implements": ["NetworkDriver"]}));
    assert_eq!(r.content_type, "application/vnd.docker.plugins.v1+json");
    assert_eq!(
        ok(ipam, "Plugin.Activate", Value::Null).await,
        json!({"Implements": ["IpamDriver"]})
    );

    let caps = ok(net, "NetworkDriver.GetCapabilities", Value::Null).await;
    assert_eq!(caps["Scope"], "local");
    let caps = ok(ipam, "IpamDriver.GetCapabilities", Value::Null).await;
    assert_eq!(caps["RequiresMACAddress"], false);
    let spaces = ok(ipam, "IpamDriver.GetDefaultAddressSpaces", Value::Null).await;
    assert_eq!(
        spaces,
        json!({"LocalDefaultAddressSpace": "CalicoLocal", "GlobalDefaultAddressSpace": "CalicoGlobal"})
    );

    // Each socket serves only its own driver: the other's methods are unknown (404),
    // which is how Docker detects optional methods.
    let r = post(net, "IpamDriver.RequestPool", json!({})).await;
    assert_err(&r, 404, "unknown method");
    let r = post(ipam, "NetworkDriver.Join", json!({})).await;
    assert_err(&r, 404, "unknown method");

    server.shutdown().await.unwrap();
    assert!(!dir.path().join("calico.sock").exists());
    assert!(!dir.path().join("calico-ipam.sock").exists());
}

/// `docker network create --driver calico --ipam-driver calico-ipam -o group=web NET`,
/// `docker run --net NET`, `docker stop`, `docker network rm NET`, in Docker's order.
#[tokio::test]
async fn full_lifecycle_reaches_the_backend() {
    let mock = Arc::new(Mock::default());
    let (_dir, server) = start(mock.clone()).await;
    let net = server.network_socket();
    let ipam = server.ipam_socket();

    let pool = ok(
        ipam,
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CalicoLocal", "Pool": "", "SubPool": "", "Options": {}, "V6": false}),
    )
    .await;
    assert_eq!(
        pool,
        json!({"PoolID": "calico-ipv4", "Pool": "0.0.0.0/0", "Data": {"com.docker.network.gateway": "0.0.0.0/0"}})
    );

    ok(
        net,
        "NetworkDriver.CreateNetwork",
        json!({
            "NetworkID": NID,
            "Options": {
                "com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": {"group": "web"}
            },
            "IPv4Data": [{"AddressSpace": "CalicoLocal", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0", "AuxAddresses": null}],
            "IPv6Data": null
        }),
    )
    .await;

    let addr = ok(
        ipam,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "calico-ipv4", "Address": "", "Options": null}),
    )
    .await;
    assert_eq!(addr, json!({"Address": "10.65.0.1/32", "Data": {}}));

    // Docker passes the IPAM address; no MAC was asked for, so the driver may set one.
    let ep = ok(
        net,
        "NetworkDriver.CreateEndpoint",
        json!({
            "NetworkID": NID, "EndpointID": EID,
            "Interface": {"Address": "10.65.0.1/32", "AddressIPv6": "", "MacAddress": ""},
            "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
        }),
    )
    .await;
    assert_eq!(ep, json!({"Interface": {"MacAddress": "02:00:00:00:00:01"}}));

    let join = ok(
        net,
        "NetworkDriver.Join",
        json!({"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/0123456789ab", "Options": {}}),
    )
    .await;
    assert_eq!(
        join,
        json!({
            "InterfaceName": {"SrcName": "tmpa1b2c3d4e5f", "DstPrefix": "eth"},
            "Gateway": "169.254.1.1",
            "StaticRoutes": [{"Destination": "169.254.1.1/32", "RouteType": 1}],
            "DisableGatewayService": false
        })
    );
    ok(
        net,
        "NetworkDriver.ProgramExternalConnectivity",
        json!({"NetworkID": NID, "EndpointID": EID, "Options": {}}),
    )
    .await;
    let info = ok(
        net,
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": NID, "EndpointID": EID}),
    )
    .await;
    assert_eq!(info, json!({"Value": {"hostInterface": "cali0123456789a"}}));

    ok(
        net,
        "NetworkDriver.RevokeExternalConnectivity",
        json!({"NetworkID": NID, "EndpointID": EID}),
    )
    .await;
    ok(net, "NetworkDriver.Leave", json!({"NetworkID": NID, "EndpointID": EID})).await;
    ok(
        net,
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": NID, "EndpointID": EID}),
    )
    .await;
    ok(
        ipam,
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": "calico-ipv4", "Address": "10.65.0.1"}),
    )
    .await;
    ok(net, "NetworkDriver.DeleteNetwork", json!({"NetworkID": NID})).await;
    // Docker "releases" the gateway marker it got from RequestPool: never the backend's business.
    ok(
        ipam,
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": "calico-ipv4", "Address": "0.0.0.0"}),
    )
    .await;
    ok(ipam, "IpamDriver.ReleasePool", json!({"PoolID": "calico-ipv4"})).await;

    let calls = mock.calls();
    let ip: IpAddr = "10.65.0.1".parse().unwrap();
    let expected = vec![
        Call::RequestPool(PoolRequest {
            address_space: "CalicoLocal".into(),
            pool: None,
            options: BTreeMap::new(),
            v6: false,
        }),
        Call::CreateNetwork(NetworkCreate {
            network_id: NID.into(),
            group: Some("web".into()),
            options: BTreeMap::from([("group".to_string(), "web".to_string())]),
            ipv4: vec![calico_agent::docker::PoolData {
                address_space: "CalicoLocal".into(),
                pool: "0.0.0.0/0".parse().unwrap(),
            }],
            ipv6: vec![],
        }),
        Call::RequestAddress(AddressRequest {
            pool_id: "calico-ipv4".into(),
            address: None,
            options: BTreeMap::new(),
        }),
        Call::CreateEndpoint(EndpointCreate {
            network_id: NID.into(),
            endpoint_id: EID.into(),
            ipv4: Some("10.65.0.1/32".parse().unwrap()),
            ipv6: None,
            mac: None,
            options: serde_json::from_value(
                json!({"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}),
            )
            .unwrap(),
        }),
        Call::Join(JoinRequest {
            network_id: NID.into(),
            endpoint_id: EID.into(),
            sandbox_key: "/var/run/docker/netns/0123456789ab".into(),
            options: serde_json::Map::new(),
        }),
        Call::ProgramExternal(NID.into(), EID.into()),
        Call::OperInfo(NID.into(), EID.into()),
        Call::RevokeExternal(NID.into(), EID.into()),
        Call::Leave(NID.into(), EID.into()),
        Call::DeleteEndpoint(NID.into(), EID.into()),
        Call::ReleaseAddress("calico-ipv4".into(), ip),
        Call::DeleteNetwork(NID.into()),
        Call::ReleasePool("calico-ipv4".into()),
    ];
    assert_eq!(calls, expected);
    server.shutdown().await.unwrap();
}

/// `--subnet` and `--ip`: the pool is named by its CIDR and the requested address is
/// passed through; a user-given MAC is never answered back (Docker would refuse).
#[tokio::test]
async fn explicit_subnet_ip_and_mac() {
    let mock = Arc::new(Mock::default());
    let (_dir, server) = start(mock.clone()).await;
    let net = server.network_socket();
    let ipam = server.ipam_socket();

    let pool = ok(
        ipam,
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CalicoLocal", "Pool": "10.65.0.0/16"}),
    )
    .await;
    assert_eq!(pool["PoolID"], "10.65.0.0/16");
    assert_eq!(pool["Pool"], "10.65.0.0/16");
    assert_eq!(pool["Data"]["com.docker.network.gateway"], "0.0.0.0/0");

    let r = post(
        ipam,
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "CalicoLocal", "Pool": "10.99.0.0/16"}),
    )
    .await;
    assert_err(&r, 200, "no enabled IPPool has CIDR 10.99.0.0/16");

    let addr = ok(
        ipam,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "10.65.0.0/16", "Address": "10.65.3.7", "Options": {}}),
    )
    .await;
    assert_eq!(addr["Address"], "10.65.3.7/32");
    assert!(mock.calls().contains(&Call::RequestAddress(AddressRequest {
        pool_id: "10.65.0.0/16".into(),
        address: Some("10.65.3.7".parse().unwrap()),
        options: BTreeMap::new(),
    })));

    ok(
        net,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NID, "Options": {}, "IPv4Data": [{"AddressSpace": "CalicoLocal", "Pool": "10.65.0.0/16", "Gateway": "0.0.0.0/0"}]}),
    )
    .await;
    let ep = ok(
        net,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.65.3.7/32", "MacAddress": "02:42:ac:11:00:09"}}),
    )
    .await;
    assert_eq!(
        ep,
        json!({}),
        "nothing may be answered back for fields Docker already set"
    );
    let Some(Call::CreateEndpoint(create)) = mock
        .calls()
        .into_iter()
        .rev()
        .find(|c| matches!(c, Call::CreateEndpoint(_)))
    else {
        panic!("no CreateEndpoint call")
    };
    assert_eq!(create.mac.as_deref(), Some("02:42:ac:11:00:09"));
    assert_eq!(create.ipv4, Some("10.65.3.7/32".parse().unwrap()));
    server.shutdown().await.unwrap();
}

/// Options Calico cannot honour are refused with a message saying what to do.
#[tokio::test]
async fn unsupported_options_are_explained() {
    let mock = Arc::new(Mock::default());
    let (_dir, server) = start(mock.clone()).await;
    let net = server.network_socket();
    let ipam = server.ipam_socket();

    let r = post(
        ipam,
        "IpamDriver.RequestPool",
        json!({"Pool": "10.65.0.0/16", "SubPool": "10.65.1.0/24"}),
    )
    .await;
    assert_err(&r, 200, "--ip-range is not supported");
    let r = post(ipam, "IpamDriver.RequestPool", json!({"Pool": "10.65.0.1/16"})).await;
    assert_err(&r, 200, "did you mean 10.65.0.0/16");
    let r = post(
        ipam,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "10.65.0.0/16", "Address": "10.65.0.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    assert_err(&r, 200, "leave out --gateway");

    let create = |opts: Value, space: &str| json!({"NetworkID": NID, "Options": opts, "IPv4Data": [{"AddressSpace": space, "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}]});
    let r = post(net, "NetworkDriver.CreateNetwork", create(json!({}), "LocalDefault")).await;
    assert_err(&r, 200, "--ipam-driver calico-ipam");
    let r = post(
        net,
        "NetworkDriver.CreateNetwork",
        create(json!({"com.docker.network.generic": {"mtu": "9000"}}), "CalicoLocal"),
    )
    .await;
    assert_err(&r, 200, "unknown option -o mtu");
    let r = post(
        net,
        "NetworkDriver.CreateNetwork",
        create(
            json!({"com.docker.network.generic": {"group": "no good"}}),
            "CalicoLocal",
        ),
    )
    .await;
    assert_err(&r, 200, "not a valid group name");
    let r = post(
        net,
        "NetworkDriver.CreateNetwork",
        create(json!({"com.docker.network.internal": true}), "CalicoLocal"),
    )
    .await;
    assert_err(&r, 200, "--internal");
    let r = post(net, "NetworkDriver.AllocateNetwork", json!({"NetworkID": NID})).await;
    assert_err(&r, 200, "swarm-scoped networks are not supported");

    // None of these reached the backend's network side.
    assert!(!mock
        .calls()
        .iter()
        .any(|c| matches!(c, Call::CreateNetwork(_) | Call::RequestAddress(_))));
    server.shutdown().await.unwrap();
}

/// Garbage in, a clear `Err` out, and the server keeps serving.
#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let mock = Arc::new(Mock::default());
    let (_dir, server) = start(mock.clone()).await;
    let net = server.network_socket();
    let ipam = server.ipam_socket();

    let r = raw_request(net, "POST", "NetworkDriver.CreateNetwork", b"{\"NetworkID\": ").await;
    assert_err(&r, 400, "NetworkDriver.CreateNetwork: malformed JSON body");
    let r = raw_request(net, "POST", "NetworkDriver.CreateEndpoint", b"").await;
    assert_err(&r, 400, "NetworkDriver.CreateEndpoint: empty request body");
    let r = raw_request(net, "POST", "NetworkDriver.Join", b"null").await;
    assert_err(&r, 400, "empty request body");
    let r = raw_request(ipam, "POST", "IpamDriver.ReleaseAddress", b"[1,2,3]").await;
    assert_err(&r, 400, "IpamDriver.ReleaseAddress: malformed JSON body");
    let r = raw_request(net, "POST", "NetworkDriver.Leave", &[0xff, 0xfe]).await;
    assert_err(&r, 400, "not UTF-8");

    let r = post(net, "NetworkDriver.CreateNetwork", json!({"Options": {}})).await;
    assert_err(&r, 400, "NetworkDriver.CreateNetwork: missing NetworkID");
    let r = post(net, "NetworkDriver.Join", json!({"NetworkID": NID, "EndpointID": EID})).await;
    assert_err(&r, 400, "missing SandboxKey");
    let r = post(net, "NetworkDriver.DeleteEndpoint", json!({"NetworkID": NID})).await;
    assert_err(&r, 400, "missing EndpointID");
    let r = post(
        net,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.65.0.300/32"}}),
    )
    .await;
    assert_err(&r, 400, "Interface.Address \"10.65.0.300/32\" is not a CIDR");
    let r = post(
        net,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NID, "EndpointID": EID, "Interface": null}),
    )
    .await;
    assert_err(&r, 200, "--ipam-driver calico-ipam");
    let r = post(
        ipam,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "p", "Address": "ten"}),
    )
    .await;
    assert_err(&r, 400, "Address \"ten\" is not an IP address");
    let r = post(ipam, "IpamDriver.RequestAddress", json!({"Address": "10.65.0.1"})).await;
    assert_err(&r, 400, "missing PoolID");
    let r = post(
        net,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NID, "IPv4Data": [{"AddressSpace": "CalicoLocal", "Pool": "x"}]}),
    )
    .await;
    assert_err(&r, 400, "IPv4Data.Pool \"x\" is not a CIDR");

    // Unknown network / endpoint: the backend's refusal reaches Docker verbatim.
    let r = post(
        net,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": "nope", "EndpointID": EID, "Interface": {"Address": "10.65.0.9/32"}}),
    )
    .await;
    assert_err(&r, 200, "calico: NetworkDriver.CreateEndpoint: unknown network nope");
    let r = post(
        net,
        "NetworkDriver.Join",
        json!({"NetworkID": "nope", "EndpointID": EID, "SandboxKey": "/x"}),
    )
    .await;
    assert_err(&r, 200, "unknown network nope");
    let r = post(net, "NetworkDriver.DeleteNetwork", json!({"NetworkID": "nope"})).await;
    assert_err(&r, 200, "unknown network nope");

    // Unknown URLs are 404 (Docker's "not implemented"), other HTTP methods 405.
    let r = post(net, "NetworkDriver.Frobnicate", json!({})).await;
    assert_err(&r, 404, "unknown method \"NetworkDriver.Frobnicate\"");
    let r = raw_request(net, "GET", "Plugin.Activate", b"").await;
    assert_err(&r, 405, "POST");

    // A panicking backend fails that request only.
    let r = post(
        net,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NID, "EndpointID": "panic", "Interface": {"Address": "10.65.0.9/32"}}),
    )
    .await;
    assert_err(&r, 200, "internal error");

    // Still serving, on both sockets.
    assert_eq!(
        ok(net, "Plugin.Activate", Value::Null).await,
        json!({"Implements": ["NetworkDriver"]})
    );
    assert_eq!(
        ok(ipam, "Plugin.Activate", Value::Null).await,
        json!({"Implements": ["IpamDriver"]})
    );
    server.shutdown().await.unwrap();
}

/// Optional notifications Docker may send are accepted and need no backend.
/// A body over the plugin's 1 MiB limit is refused with a 400 and `{"Err": ...}`
/// naming the request, whether it says its length up front or not, without reaching
/// the backend; the server keeps serving.
#[tokio::test]
async fn oversized_bodies_are_refused_and_the_server_keeps_serving() {
    let mock = Arc::new(Mock::default());
    let (_dir, server) = start(mock.clone()).await;
    let net = server.network_socket().to_path_buf();
    let big = vec![b' '; (1 << 20) + 1];
    for chunked in [false, true] {
        let mut stream = UnixStream::connect(&net).await.unwrap();
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", big.len())
        };
        let head = format!(
            "POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: plugin\r\n{framing}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer and close before it has read everything: a failed
        // write here is the refusal arriving early, not an error of the test.
        let body = if chunked {
            let mut b = format!("{:x}\r\n", big.len()).into_bytes();
            b.extend_from_slice(&big);
            b.extend_from_slice(b"\r\n0\r\n\r\n");
            b
        } else {
            big.clone()
        };
        let _ = stream.write_all(&body).await;
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400"), "chunked {chunked}: {text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        let err = v["Err"].as_str().unwrap_or_default();
        assert!(
            err.contains("NetworkDriver.CreateNetwork") && err.contains("body"),
            "{err}"
        );
    }
    assert!(mock.calls().is_empty(), "the backend was called: {:?}", mock.calls());
    // Still serving.
    ok(server.ipam_socket(), "IpamDriver.GetCapabilities", Value::Null).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn discovery_and_free_network_are_accepted() {
    let (_dir, server) = start(Arc::new(Mock::default())).await;
    let body = json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.1", "self": true}});
    ok(server.network_socket(), "NetworkDriver.DiscoverNew", body.clone()).await;
    ok(server.network_socket(), "NetworkDriver.DiscoverDelete", body.clone()).await;
    ok(server.ipam_socket(), "IpamDriver.DiscoverNew", body).await;
    ok(
        server.network_socket(),
        "NetworkDriver.FreeNetwork",
        json!({"NetworkID": NID}),
    )
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_backend_times_out_with_a_clear_message() {
    let mock = Arc::new(Mock {
        delay: Some(Duration::from_secs(5)),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = PluginConfig {
        dir: dir.path().to_path_buf(),
        request_timeout: Duration::from_secs(1),
    };
    let server = serve_with(&config, mock).await.unwrap();
    let r = post(
        server.network_socket(),
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NID, "IPv4Data": [{"AddressSpace": "CalicoLocal", "Pool": "0.0.0.0/0", "Gateway": "0.0.0.0/0"}]}),
    )
    .await;
    assert_err(&r, 200, "no answer within 1s");
    server.shutdown().await.unwrap();
}

/// A dead agent's sockets are replaced; a live agent's are not stolen.
#[tokio::test]
async fn stale_sockets_are_replaced_live_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Leave stale sockets behind: bound, then the listener dropped (nobody accepts).
    for name in ["calico.sock", "calico-ipam.sock"] {
        drop(std::os::unix::net::UnixListener::bind(dir.path().join(name)).unwrap());
        assert!(dir.path().join(name).exists());
    }
    let first = serve(dir.path(), Arc::new(Mock::default())).await.unwrap();
    assert_eq!(
        ok(first.network_socket(), "Plugin.Activate", Value::Null).await["Implements"][0],
        "NetworkDriver"
    );

    match serve(dir.path(), Arc::new(Mock::default())).await {
        Err(PluginError::InUse(path)) => assert_eq!(path, dir.path().join("calico.sock")),
        Err(e) => panic!("expected InUse, got {e}"),
        Ok(_) => panic!("a second server stole a live socket"),
    }
    // The refused second server did not disturb the first.
    assert_eq!(
        ok(first.ipam_socket(), "Plugin.Activate", Value::Null).await["Implements"][0],
        "IpamDriver"
    );

    // A regular file in the way is not deleted.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("calico.sock"), b"not a socket").unwrap();
    let err = serve(other.path(), Arc::new(Mock::default()))
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("not a socket"), "{err}");

    first.shutdown().await.unwrap();
    // And the directory is created when missing (dockerd may not have made it yet).
    let nested = dir.path().join("run/docker/plugins");
    let s = serve(&nested, Arc::new(Mock::default())).await.unwrap();
    assert!(nested.join("calico.sock").exists());
    s.shutdown().await.unwrap();
}

/// Docker keeps connections alive and fires requests concurrently.
#[tokio::test]
async fn concurrent_requests() {
    let mock = Arc::new(Mock::default());
    let (_dir, server) = start(mock.clone()).await;
    let ipam = server.ipam_socket().to_path_buf();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let ipam = ipam.clone();
        tasks.push(tokio::spawn(async move {
            ok(&ipam, "IpamDriver.RequestAddress", json!({"PoolID": "calico-ipv4"})).await["Address"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        got.insert(t.await.unwrap());
    }
    assert_eq!(got.len(), 20, "every request got its own address: {got:?}");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------
// Against a real dockerd: a private daemon in its own mount and network namespaces
// (its /run/docker/plugins is a bind mount of our temp dir), so nothing on the host
// changes. Skipped, with a note, where dockerd is missing or we are not root.
// ---------------------------------------------------------------------------------

use std::path::PathBuf;
use std::process::{Child, Command, Output};

use calico_agent::docker::client::DockerClient;
use calico_agent::docker::env::CalicoIp;
use calico_agent::docker::events::{DockerEvent, EventFollower, EventsConfig, NetworkAction};

struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Dockerd {
    /// Start a private dockerd, or `None` (test skipped) where that is impossible.
    fn start() -> Option<Dockerd> {
        let root = unsafe { libc::geteuid() } == 0;
        let have = |bin: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !root || !have("dockerd") || !have("docker") || !have("unshare") || !Path::new("/bin/busybox").exists() {
            eprintln!("SKIP: needs root, dockerd, docker, unshare and /bin/busybox");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("calico-dockerd.").tempdir().unwrap();
        for sub in ["plugins", "data", "exec", "rootfs/bin"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let mut d = Dockerd { dir, child: None };
        d.spawn();
        // An image from the static busybox: no registry is reachable.
        let rootfs = d.dir.path().join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ip"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let import = format!(
            "tar -C {} -c . | docker -H {} import - calico-test/busybox",
            rootfs.display(),
            d.host()
        );
        let out = Command::new("sh").args(["-c", &import]).output().unwrap();
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(d)
    }

    fn spawn(&mut self) {
        let p = self.dir.path();
        // Private /run (so /run/docker/plugins is ours), private network namespace.
        let script = format!(
            "set -e\nmount --make-rprivate /\nmount -t tmpfs none /run\nmkdir -p /run/docker/plugins\n\
             mount --bind {plugins} /run/docker/plugins\nip link set lo up\n\
             exec dockerd --data-root {data} --exec-root {exec} -H {host} --pidfile {p}/docker.pid \
             --bridge=none --iptables=false --ip6tables=false >>{p}/dockerd.log 2>&1\n",
            plugins = p.join("plugins").display(),
            data = p.join("data").display(),
            exec = p.join("exec").display(),
            host = self.host(),
            p = p.display(),
        );
        // unshare and sh exec, so the child's PID is dockerd's.
        let child = Command::new("unshare")
            .args(["-m", "-n", "sh", "-c", &script])
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..300 {
            if self.docker_ok(&["version"]).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dockerd did not come up: {}", self.log());
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(std::process::Child::id).unwrap()
    }

    fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .unwrap()
    }

    fn docker_ok(&self, args: &[&str]) -> Option<String> {
        let out = self.docker(args);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Run docker and insist on success.
    fn must(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// SIGTERM and wait (dockerd stops its containers and its containerd).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..200 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.docker(&["rm", "-f", "-v", "c1", "c2", "seed1"]);
        }
        self.stop();
    }
}

/// The mock, plus real veths in dockerd's namespace so Docker can move them.
struct VethMock {
    inner: Mock,
    netns: PathBuf,
}

fn ip_in(netns: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("ip")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Backend for VethMock {
    async fn create_network(&self, req: NetworkCreate) -> anyhow::Result<()> {
        self.inner.create_network(req).await
    }
    async fn delete_network(&self, id: String) -> anyhow::Result<()> {
        self.inner.delete_network(id).await
    }
    async fn create_endpoint(&self, req: EndpointCreate) -> anyhow::Result<EndpointInterface> {
        self.inner.create_endpoint(req).await?;
        // Let the kernel pick the container-side MAC.
        Ok(EndpointInterface::default())
    }
    async fn delete_endpoint(&self, nid: String, eid: String) -> anyhow::Result<()> {
        self.inner.delete_endpoint(nid, eid).await
    }
    async fn join(&self, req: JoinRequest) -> anyhow::Result<JoinInfo> {
        let info = self.inner.join(req.clone()).await?;
        let host = format!("cali{}", &req.endpoint_id[..11]);
        ip_in(
            &self.netns,
            &["link", "add", &host, "type", "veth", "peer", "name", &info.src_name],
        )?;
        ip_in(&self.netns, &["link", "set", &host, "up"])?;
        Ok(info)
    }
    async fn leave(&self, nid: String, eid: String) -> anyhow::Result<()> {
        self.inner.leave(nid, eid.clone()).await?;
        ip_in(&self.netns, &["link", "del", &format!("cali{}", &eid[..11])])
    }
    async fn program_external_connectivity(&self, nid: String, eid: String) -> anyhow::Result<()> {
        self.inner.program_external_connectivity(nid, eid).await
    }
    async fn revoke_external_connectivity(&self, nid: String, eid: String) -> anyhow::Result<()> {
        self.inner.revoke_external_connectivity(nid, eid).await
    }
    async fn request_pool(&self, req: PoolRequest) -> anyhow::Result<PoolInfo> {
        self.inner.request_pool(req).await
    }
    async fn release_pool(&self, id: String) -> anyhow::Result<()> {
        self.inner.release_pool(id).await
    }
    async fn request_address(&self, req: AddressRequest) -> anyhow::Result<IpAddr> {
        self.inner.request_address(req).await
    }
    async fn release_address(&self, pool: String, addr: IpAddr) -> anyhow::Result<()> {
        self.inner.release_address(pool, addr).await
    }
}

/// What real Docker 20.10 sends, end to end: network create with `-o group`, run,
/// stop/start, rm, network rm; and that the container comes up configured the
/// Calico way (a /32, the link-local gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dockerd_drives_the_plugin() {
    let Some(d) = Dockerd::start() else { return };
    let mock = Arc::new(VethMock {
        inner: Mock::default(),
        netns: d.netns(),
    });
    let server = serve(&d.plugin_dir(), mock.clone()).await.unwrap();

    let create = tokio::task::block_in_place(|| {
        d.must(&[
            "network",
            "create",
            "--driver",
            "calico",
            "--ipam-driver",
            "calico-ipam",
            "-o",
            "group=web",
            // Labels and --attachable are Docker's business: they must not upset the driver.
            "--label",
            "team=blue",
            "--attachable",
            "calnet",
        ])
    });
    let nid = create.trim().to_string();
    let sub = tokio::task::block_in_place(|| {
        d.must(&[
            "network",
            "create",
            "--driver",
            "calico",
            "--ipam-driver",
            "calico-ipam",
            "--subnet",
            "10.65.0.0/16",
            "calsub",
        ])
    });

    // A container on the catch-all network, and one with --ip on the --subnet one.
    tokio::task::block_in_place(|| {
        d.must(&[
            "run",
            "-d",
            "--name",
            "c1",
            "--net",
            "calnet",
            "calico-test/busybox",
            "sleep",
            "1000",
        ]);
        d.must(&[
            "run",
            "-d",
            "--name",
            "c2",
            "--net",
            "calsub",
            "--ip",
            "10.65.7.7",
            "calico-test/busybox",
            "sleep",
            "1000",
        ]);
    });
    let addr = tokio::task::block_in_place(|| d.must(&["exec", "c1", "ip", "-4", "addr", "show", "eth0"]));
    assert!(addr.contains("inet 10.65.0.1/32"), "{addr}");
    let routes = tokio::task::block_in_place(|| d.must(&["exec", "c1", "ip", "route"]));
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
    assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
    let ip = tokio::task::block_in_place(|| {
        d.must(&["inspect", "-f", "{{.NetworkSettings.Networks.calnet.IPAddress}}", "c1"])
    });
    assert_eq!(ip, "10.65.0.1", "docker inspect shows the Calico IP");
    let addr2 = tokio::task::block_in_place(|| d.must(&["exec", "c2", "ip", "-4", "addr", "show", "eth0"]));
    assert!(addr2.contains("inet 10.65.7.7/32"), "{addr2}");

    // Docker's own refusals and ours reach the user.
    let out = tokio::task::block_in_place(|| {
        d.docker(&[
            "network",
            "create",
            "--driver",
            "calico",
            "--ipam-driver",
            "calico-ipam",
            "-o",
            "mtu=9000",
            "bad1",
        ])
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown option -o mtu"),
        "{stderr}"
    );
    let out = tokio::task::block_in_place(|| d.docker(&["network", "create", "--driver", "calico", "bad2"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--ipam-driver calico-ipam"),
        "{stderr}"
    );

    // stop/start: Docker releases the address at stop and asks again at start. With
    // --ip it asks for the same address (stored in the container's IPAMConfig); without,
    // it asks for "any address" and says nothing about which container is asking.
    let before_restart = mock.inner.calls().len();
    tokio::task::block_in_place(|| {
        d.must(&["stop", "-t", "1", "c1", "c2"]);
        d.must(&["start", "c1", "c2"]);
    });
    let inspect_ip = |c: &str, net: &str| {
        let fmt = format!("{{{{.NetworkSettings.Networks.{net}.IPAddress}}}}");
        tokio::task::block_in_place(|| d.must(&["inspect", "-f", &fmt, c]))
    };
    assert_eq!(inspect_ip("c2", "calsub"), "10.65.7.7", "--ip survives stop/start");
    let restart: Vec<Call> = mock.inner.calls()[before_restart..].to_vec();
    assert!(restart.contains(&Call::ReleaseAddress(
        "10.65.0.0/16".into(),
        "10.65.7.7".parse().unwrap()
    )));
    let rerequests: Vec<Option<IpAddr>> = restart
        .iter()
        .filter_map(|c| {
            if let Call::RequestAddress(r) = c {
                Some(r.address)
            } else {
                None
            }
        })
        .collect();
    assert!(
        rerequests.contains(&Some("10.65.7.7".parse().unwrap())),
        "{rerequests:?}"
    );
    assert!(
        rerequests.contains(&None),
        "an auto-assigned address is not asked for again: {rerequests:?}"
    );
    eprintln!("c1 after stop/start: {} (was 10.65.0.1)", inspect_ip("c1", "calnet"));

    tokio::task::block_in_place(|| {
        d.must(&["rm", "-f", "c1", "c2"]);
        d.must(&["network", "rm", "calnet", "calsub"]);
    });

    let calls = mock.inner.calls();
    for c in &calls {
        eprintln!("{c:?}");
    }
    // The network's -o options and pool arrive as documented.
    let created: Vec<&NetworkCreate> = calls
        .iter()
        .filter_map(|c| if let Call::CreateNetwork(n) = c { Some(n) } else { None })
        .collect();
    assert_eq!(created[0].network_id, nid);
    assert_eq!(created[0].group.as_deref(), Some("web"));
    assert_eq!(created[0].ipv4[0].pool, "0.0.0.0/0".parse::<IpNet>().unwrap());
    assert_eq!(created[1].network_id, sub.trim());
    assert_eq!(created[1].ipv4[0].pool, "10.65.0.0/16".parse::<IpNet>().unwrap());
    // --ip arrives at IPAM as the requested address.
    assert!(calls
        .iter()
        .any(|c| matches!(c, Call::RequestAddress(r) if r.address == Some("10.65.7.7".parse().unwrap()))));
    // Every endpoint Docker created it also deleted, and every address came back.
    let count = |f: fn(&Call) -> bool| calls.iter().filter(|c| f(c)).count();
    assert_eq!(
        count(|c| matches!(c, Call::CreateEndpoint(_))),
        count(|c| matches!(c, Call::DeleteEndpoint(..)))
    );
    assert_eq!(
        count(|c| matches!(c, Call::Join(_))),
        count(|c| matches!(c, Call::Leave(..)))
    );
    assert_eq!(
        count(|c| matches!(c, Call::RequestAddress(_))),
        count(|c| matches!(c, Call::ReleaseAddress(..)))
    );
    server.shutdown().await.unwrap();
}

/// Wait for the next event matching `pred`, skipping others.
async fn next_matching(f: &mut EventFollower, what: &str, pred: impl Fn(&DockerEvent) -> bool) -> DockerEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, f.next()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("follower ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// The seed's path: `docker run --net=none -e CALICO_IP=auto -e CALICO_GROUP=web` is
/// seen start to destroy, and a dockerd restart is survived with a resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dockerd_events_and_resync() {
    let Some(mut d) = Dockerd::start() else { return };
    let mut follower = EventFollower::spawn(EventsConfig::new(d.host()));
    match next_matching(&mut follower, "first resync", |e| matches!(e, DockerEvent::Resync(_))).await {
        DockerEvent::Resync(list) => assert!(list.is_empty(), "{list:?}"),
        _ => unreachable!(),
    }

    let id = tokio::task::block_in_place(|| {
        d.must(&[
            "run",
            "-d",
            "--name",
            "seed1",
            "--net=none",
            "-e",
            "CALICO_IP=auto",
            "-e",
            "CALICO_GROUP=web",
            "calico-test/busybox",
            "sleep",
            "1000",
        ])
    });
    let started = next_matching(&mut follower, "start", |e| matches!(e, DockerEvent::Start(_))).await;
    let DockerEvent::Start(info) = started else {
        unreachable!()
    };
    assert_eq!(info.id, id);
    assert_eq!(info.name, "seed1");
    assert!(info.running && info.pid.is_some(), "{info:?}");
    assert_eq!(info.network_mode, "none");
    let req = info.seed_request().unwrap().unwrap();
    assert_eq!(req.ip, CalicoIp::Auto);
    assert_eq!(req.groups, vec!["web"]);
    // The netns path names a live namespace.
    assert!(Path::new(&info.netns_path().unwrap()).exists());

    // Inspection by name, and of networks, through the same client.
    let client = DockerClient::connect(&d.host()).await.unwrap();
    assert_eq!(client.inspect_container("seed1").await.unwrap().unwrap().id, id);
    assert!(client.inspect_container("no-such-container").await.unwrap().is_none());
    assert!(client.inspect_network("no-such-network").await.unwrap().is_none());
    let none = client.inspect_network("none").await.unwrap().unwrap();
    assert_eq!((none.name.as_str(), none.driver.as_str()), ("none", "null"));

    tokio::task::block_in_place(|| d.must(&["stop", "-t", "1", "seed1"]));
    let died = next_matching(&mut follower, "die", |e| matches!(e, DockerEvent::Die { .. })).await;
    assert_eq!(
        died,
        DockerEvent::Die {
            id: id.clone(),
            name: "seed1".into()
        }
    );

    // dockerd goes away and comes back: the follower reconnects and resyncs, listing
    // the stopped container too (a container missing from a resync is gone).
    tokio::task::block_in_place(|| {
        d.stop();
        std::thread::sleep(Duration::from_secs(1));
        d.spawn();
    });
    let resync = next_matching(&mut follower, "resync after restart", |e| {
        matches!(e, DockerEvent::Resync(_))
    })
    .await;
    let DockerEvent::Resync(list) = resync else {
        unreachable!()
    };
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((list[0].id.as_str(), list[0].running), (id.as_str(), false));

    // Network events carry name and driver.
    tokio::task::block_in_place(|| d.must(&["network", "create", "--driver", "bridge", "brnet"]))
        .trim()
        .to_string();
    let DockerEvent::Network {
        action, name, driver, ..
    } = next_matching(&mut follower, "network create", |e| {
        matches!(e, DockerEvent::Network { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(
        (action, name.as_str(), driver.as_str()),
        (NetworkAction::Create, "brnet", "bridge")
    );

    tokio::task::block_in_place(|| d.must(&["rm", "seed1"]));
    let destroyed = next_matching(&mut follower, "destroy", |e| matches!(e, DockerEvent::Destroy { .. })).await;
    assert_eq!(
        destroyed,
        DockerEvent::Destroy {
            id,
            name: "seed1".into()
        }
    );
    follower.stop();
}
