//! Docker's legacy (v1) plugin protocol for the `calico` network driver and the
//! `calico-ipam` IPAM driver: the JSON bodies and the HTTP server on two unix sockets.
//!
//! Docker finds a legacy plugin by its socket: `<dir>/<name>.sock` under
//! /run/docker/plugins, so the driver names are the socket names. It POSTs
//! `/Plugin.Activate`, then `/<Interface>.<Method>` with a JSON body (empty for the
//! capability calls) and an `Accept: application/vnd.docker.plugins.v1.2+json` header,
//! and usually no Content-Type at all: bodies are parsed whatever the headers say.
//!
//! Errors follow libnetwork's docs/remote.md: a body that cannot be decoded (bad JSON,
//! a missing ID, an unparsable CIDR) gets HTTP 400, an operation that fails gets
//! HTTP 200; both carry `{"Err": "<message>"}` (and `Error`, which is what the IPAM
//! API reads), which Docker shows to the user. An
//! unknown URL gets 404, which is how Docker learns an optional method is absent.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use futures::FutureExt;
use ipnet::IpNet;
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backend::{
    AddressRequest, Backend, EndpointCreate, JoinInfo, JoinRequest, NetworkCreate, PoolData, PoolRequest, GROUP_OPTION,
};

/// Where dockerd looks for legacy plugin sockets.
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";
/// `docker network create --driver calico`
pub const NETWORK_DRIVER_NAME: &str = "calico";
/// `docker network create --ipam-driver calico-ipam`
pub const IPAM_DRIVER_NAME: &str = "calico-ipam";
/// The address spaces calico-ipam reports; CreateNetwork uses them to recognise that
/// the network's addresses come from calico-ipam.
pub const LOCAL_ADDRESS_SPACE: &str = "CalicoLocal";
pub const GLOBAL_ADDRESS_SPACE: &str = "CalicoGlobal";
/// Content type of plugin responses (what Docker's own plugin helpers send).
pub const PLUGIN_CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// How long a request may take before the plugin gives up and answers `Err`: Docker
/// holds locks on the container while it waits, so a hung datastore must not hang
/// `docker run` forever.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The option key Docker uses for the `-o` options of `docker network create`.
const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// IPAM option key saying what an address is for, and the value meaning "the gateway".
const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
const GATEWAY_LABEL: &str = "com.docker.network.gateway";
/// Largest request body read (Docker's are a few hundred bytes).
const BODY_LIMIT: usize = 1 << 20;

// ---------------------------------------------------------------------------------
// Wire types. Go encodes nil maps and slices as `null` and leaves out nothing, so
// every collection accepts `null`; unknown fields are ignored because Docker adds
// fields over time. Required IDs are checked after decoding so the message can name
// the field.
// ---------------------------------------------------------------------------------

/// Decode `null` as the type's default (Go's nil map / nil slice).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Every response may carry `Err`; empty means success.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// "local": each Docker host keeps its own network objects (no swarm allocation).
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

/// IPv4Data / IPv6Data entries of CreateNetwork and AllocateNetwork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    #[serde(rename = "Gateway", default, deserialize_with = "null_default")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", default, deserialize_with = "null_default")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    /// map[string]interface{}: `-o` options sit under "com.docker.network.generic".
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// DeleteNetwork and FreeNetwork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkIdRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
}

/// The interface of CreateEndpoint, both ways: addresses are CIDR strings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointInterfaceWire {
    #[serde(
        rename = "Address",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(
        rename = "MacAddress",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

impl EndpointInterfaceWire {
    fn is_empty(&self) -> bool {
        self.address.is_empty() && self.address_ipv6.is_empty() && self.mac_address.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default, deserialize_with = "null_default")]
    pub interface: EndpointInterfaceWire,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointResponse {
    /// Only values Docker did not supply: libnetwork rejects a driver that answers
    /// with a value for a field it already set ("driver modified interface ...").
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterfaceWire>,
}

/// DeleteEndpoint, EndpointOperInfo, Leave and RevokeExternalConnectivity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinRequestWire {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default, deserialize_with = "null_default")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StaticRouteWire {
    #[serde(rename = "Destination")]
    pub destination: String,
    /// 0: via NextHop; 1: connected (on-link), no NextHop.
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", default, skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

/// Route types of libnetwork's StaticRoute.
pub const ROUTE_TYPE_NEXTHOP: u8 = 0;
pub const ROUTE_TYPE_CONNECTED: u8 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", default, skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    #[serde(rename = "StaticRoutes", default)]
    pub static_routes: Vec<StaticRouteWire>,
    /// Docker attaches the container to docker_gwbridge only when a driver gives no
    /// gateway; Calico always gives one, so this stays false.
    #[serde(rename = "DisableGatewayService", default)]
    pub disable_gateway_service: bool,
}

/// ProgramExternalConnectivity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExternalConnectivityRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

/// DiscoverNew / DiscoverDelete (node discovery; Calico learns nodes from etcd).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryNotification {
    #[serde(rename = "DiscoveryType", default)]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData", default)]
    pub discovery_data: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpamCapabilitiesResponse {
    /// false: Docker need not invent a MAC before RequestAddress.
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// false: Docker need not replay pool and address requests when it restarts;
    /// calico-ipam keeps its allocations in etcd.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local_default_address_space: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global_default_address_space: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    #[serde(rename = "SubPool", default, deserialize_with = "null_default")]
    pub sub_pool: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default, deserialize_with = "null_default")]
    pub v6: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// A plain address ("10.65.0.5"), empty for "any".
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestAddressResponse {
    /// CIDR form: "10.65.0.5/32".
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
}

// ---------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------

/// Failure to start or stop the plugin server.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin socket {0} is being served by another live process; stop it or use another plugin directory")]
    InUse(PathBuf),
    #[error("plugin server task failed: {0}")]
    Task(String),
}

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// Directory of the two sockets; dockerd only looks in /run/docker/plugins (and
    /// /etc/docker/plugins, /usr/lib/docker/plugins), so a second Docker host needs
    /// its own mount namespace with a private directory mounted there.
    pub dir: PathBuf,
    pub request_timeout: Duration,
}

impl PluginConfig {
    pub fn new(dir: impl Into<PathBuf>) -> PluginConfig {
        PluginConfig {
            dir: dir.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig::new(DEFAULT_PLUGIN_DIR)
    }
}

/// The running plugin server. Dropping it stops accepting requests; call
/// [`PluginServer::shutdown`] to also wait for in-flight requests and remove the sockets.
pub struct PluginServer {
    network_socket: PathBuf,
    ipam_socket: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl PluginServer {
    /// `<dir>/calico.sock`
    pub fn network_socket(&self) -> &Path {
        &self.network_socket
    }

    /// `<dir>/calico-ipam.sock`
    pub fn ipam_socket(&self) -> &Path {
        &self.ipam_socket
    }

    /// Stop accepting, let in-flight requests finish, and remove both sockets so
    /// Docker does not talk to a dead plugin.
    pub async fn shutdown(mut self) -> Result<(), PluginError> {
        let _ = self.stop.send(true);
        let mut first_err = None;
        for task in self.tasks.drain(..) {
            let res = match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(PluginError::Task(e.to_string())),
                Err(e) => Err(PluginError::Task(e.to_string())),
            };
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        for path in [&self.network_socket, &self.ipam_socket] {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    first_err.get_or_insert(PluginError::Io {
                        path: path.clone(),
                        what: "removing",
                        source: e,
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for PluginServer {
    fn drop(&mut self) {
        // Tasks still running (no shutdown() call): tell them to stop accepting.
        let _ = self.stop.send(true);
    }
}

/// Serve both drivers from `dir` with the default request timeout.
pub async fn serve<B: Backend>(dir: &Path, backend: Arc<B>) -> Result<PluginServer, PluginError> {
    serve_with(&PluginConfig::new(dir), backend).await
}

/// Serve both drivers: `<dir>/calico.sock` (NetworkDriver) and `<dir>/calico-ipam.sock`
/// (IpamDriver). Stale sockets left by a dead agent are replaced; a socket some live
/// process still answers on is an error rather than silently stolen.
pub async fn serve_with<B: Backend>(config: &PluginConfig, backend: Arc<B>) -> Result<PluginServer, PluginError> {
    std::fs::create_dir_all(&config.dir).map_err(|source| PluginError::Io {
        path: config.dir.clone(),
        what: "creating the plugin directory",
        source,
    })?;
    let network_socket = config.dir.join(format!("{NETWORK_DRIVER_NAME}.sock"));
    let ipam_socket = config.dir.join(format!("{IPAM_DRIVER_NAME}.sock"));
    let network_listener = bind_fresh(&network_socket)?;
    let ipam_listener = bind_fresh(&ipam_socket)?;

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (driver, listener, path) in [
        (Driver::Network, network_listener, &network_socket),
        (Driver::Ipam, ipam_listener, &ipam_socket),
    ] {
        let shared = Arc::new(Shared {
            backend: backend.clone(),
            driver,
            timeout: config.request_timeout,
        });
        let app = Router::new().fallback(dispatch::<B>).with_state(shared);
        let mut rx = stop_rx.clone();
        let signal = async move {
            // Either a stop request or the server handle being gone ends serving.
            let _ = rx.wait_for(|stopped| *stopped).await;
        };
        tracing::info!(socket = %path.display(), driver = driver.name(), "docker plugin listening");
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(signal).await
        }));
    }
    Ok(PluginServer {
        network_socket,
        ipam_socket,
        stop,
        tasks,
    })
}

/// Bind a unix socket at `path`, replacing a stale one.
fn bind_fresh(path: &Path) -> Result<UnixListener, PluginError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(PluginError::Io {
                path: path.to_path_buf(),
                what: "refusing to replace a file that is not a socket",
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        // A socket nobody accepts on is left over from a dead process; one that
        // answers belongs to a live agent (a second instance must not steal it).
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(PluginError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|source| PluginError::Io {
            path: path.to_path_buf(),
            what: "removing the stale socket",
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        what: "binding",
        source,
    })?;
    // Whoever can connect can create networks and take addresses: root (dockerd) only,
    // whatever umask the agent was started with.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        what: "restricting the socket to root",
        source,
    })?;
    Ok(listener)
}

/// The plugin sockets' mode: owner (root) and group read-write, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Network,
    Ipam,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Network => NETWORK_DRIVER_NAME,
            Driver::Ipam => IPAM_DRIVER_NAME,
        }
    }
}

struct Shared<B> {
    backend: Arc<B>,
    driver: Driver,
    timeout: Duration,
}

/// Why a request failed: the HTTP status and the message for `Err`.
#[derive(Debug)]
struct Fault {
    status: StatusCode,
    message: String,
}

impl Fault {
    /// The request could not be decoded (HTTP 400, per docs/remote.md).
    fn bad_request(message: impl Into<String>) -> Fault {
        Fault {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The request was understood but cannot be carried out.
    fn failed(message: impl Into<String>) -> Fault {
        Fault {
            status: StatusCode::OK,
            message: message.into(),
        }
    }
}

type Outcome = Result<Value, Fault>;

async fn dispatch<B: Backend>(State(shared): State<Arc<Shared<B>>>, req: Request) -> Response {
    let started = Instant::now();
    let driver = shared.driver.name();
    let path = req.uri().path().trim_start_matches('/').to_string();
    let http_method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT).await;

    let outcome = match body {
        Err(e) => Err(Fault::bad_request(format!("reading the request body of {path}: {e}"))),
        Ok(_) if http_method != Method::POST => Err(Fault {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{path}: plugin methods are called with POST, not {http_method}"),
        }),
        Ok(body) => {
            tracing::debug!(driver, method = %path, body = %String::from_utf8_lossy(&body), "docker plugin request");
            match tokio::time::timeout(
                shared.timeout,
                AssertUnwindSafe(handle(&shared, &path, &body)).catch_unwind(),
            )
            .await
            {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_panic)) => Err(Fault::failed(format!(
                    "{path}: internal error (the handler panicked; see the agent log)"
                ))),
                Err(_) => Err(Fault::failed(format!(
                    "{path}: no answer within {}s (is the datastore reachable?)",
                    shared.timeout.as_secs()
                ))),
            }
        }
    };

    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (status, value) = match outcome {
        Ok(value) => {
            tracing::info!(driver, method = %path, elapsed_ms, "docker plugin request served");
            tracing::debug!(driver, method = %path, response = %value, "docker plugin response");
            (StatusCode::OK, value)
        }
        Err(fault) => {
            // Prefix the driver so `docker` output says who refused.
            let message = format!("{driver}: {}", fault.message);
            tracing::warn!(driver, method = %path, status = fault.status.as_u16(), elapsed_ms, error = %message, "docker plugin request failed");
            // libnetwork's network driver API reads `Err`; its IPAM API reads `Error`
            // (an `Err` alone there is ignored, and Docker reports "No address
            // returned" instead of the reason). Both are sent: each ignores the other.
            (fault.status, json!({ "Err": message, "Error": message }))
        }
    };
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(PLUGIN_CONTENT_TYPE),
    );
    response
}

async fn handle<B: Backend>(shared: &Shared<B>, method: &str, body: &Bytes) -> Outcome {
    let b = &*shared.backend;
    match (shared.driver, method) {
        (Driver::Network, "Plugin.Activate") => Ok(json!({ "Implements": ["NetworkDriver"] })),
        (Driver::Ipam, "Plugin.Activate") => Ok(json!({ "Implements": ["IpamDriver"] })),

        (Driver::Network, "NetworkDriver.GetCapabilities") => to_value(CapabilitiesResponse {
            scope: "local".into(),
            connectivity_scope: "local".into(),
        }),
        (Driver::Network, "NetworkDriver.CreateNetwork") => {
            let req: CreateNetworkRequest = decode(method, body)?;
            let create = network_create(req)?;
            backend_call(method, b.create_network(create)).await?;
            Ok(json!({}))
        }
        (Driver::Network, "NetworkDriver.DeleteNetwork") => {
            let req: NetworkIdRequest = decode(method, body)?;
            require(method, "NetworkID", &req.network_id)?;
            backend_call(method, b.delete_network(req.network_id)).await?;
            Ok(json!({}))
        }
        (Driver::Network, "NetworkDriver.CreateEndpoint") => {
            let req: CreateEndpointRequest = decode(method, body)?;
            let create = endpoint_create(method, req)?;
            let given_mac = create.mac.is_some();
            let iface = backend_call(method, b.create_endpoint(create)).await?;
            let mut wire = EndpointInterfaceWire::default();
            if !given_mac {
                wire.mac_address = iface.mac.unwrap_or_default();
            }
            to_value(CreateEndpointResponse {
                interface: (!wire.is_empty()).then_some(wire),
            })
        }
        (Driver::Network, "NetworkDriver.DeleteEndpoint") => {
            let (nid, eid) = endpoint_ids(method, body)?;
            backend_call(method, b.delete_endpoint(nid, eid)).await?;
            Ok(json!({}))
        }
        (Driver::Network, "NetworkDriver.EndpointOperInfo") => {
            let (nid, eid) = endpoint_ids(method, body)?;
            let value = backend_call(method, b.endpoint_oper_info(nid, eid)).await?;
            to_value(EndpointOperInfoResponse { value })
        }
        (Driver::Network, "NetworkDriver.Join") => {
            let req: JoinRequestWire = decode(method, body)?;
            require(method, "NetworkID", &req.network_id)?;
            require(method, "EndpointID", &req.endpoint_id)?;
            require(method, "SandboxKey", &req.sandbox_key)?;
            let join = JoinRequest {
                network_id: req.network_id,
                endpoint_id: req.endpoint_id,
                sandbox_key: req.sandbox_key,
                options: req.options,
            };
            let info = backend_call(method, b.join(join)).await?;
            to_value(join_response(method, info)?)
        }
        (Driver::Network, "NetworkDriver.Leave") => {
            let (nid, eid) = endpoint_ids(method, body)?;
            backend_call(method, b.leave(nid, eid)).await?;
            Ok(json!({}))
        }
        (Driver::Network, "NetworkDriver.ProgramExternalConnectivity") => {
            let req: ExternalConnectivityRequest = decode(method, body)?;
            require(method, "NetworkID", &req.network_id)?;
            require(method, "EndpointID", &req.endpoint_id)?;
            backend_call(method, b.program_external_connectivity(req.network_id, req.endpoint_id)).await?;
            Ok(json!({}))
        }
        (Driver::Network, "NetworkDriver.RevokeExternalConnectivity") => {
            let (nid, eid) = endpoint_ids(method, body)?;
            backend_call(method, b.revoke_external_connectivity(nid, eid)).await?;
            Ok(json!({}))
        }
        (Driver::Network, "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete")
        | (Driver::Ipam, "IpamDriver.DiscoverNew" | "IpamDriver.DiscoverDelete") => {
            // Node discovery is for overlay-style drivers; Calico learns its peers from
            // etcd. Decode only to log what Docker said.
            let note: DiscoveryNotification = decode(method, body)?;
            tracing::debug!(
                method,
                discovery_type = note.discovery_type,
                "docker discovery notification ignored"
            );
            Ok(json!({}))
        }
        (Driver::Network, "NetworkDriver.AllocateNetwork") => Err(Fault::failed(
            "swarm-scoped networks are not supported; create the network on each Docker host instead",
        )),
        (Driver::Network, "NetworkDriver.FreeNetwork") => Ok(json!({})),

        (Driver::Ipam, "IpamDriver.GetCapabilities") => to_value(IpamCapabilitiesResponse {
            requires_mac_address: false,
            requires_request_replay: false,
        }),
        (Driver::Ipam, "IpamDriver.GetDefaultAddressSpaces") => to_value(AddressSpacesResponse {
            local_default_address_space: LOCAL_ADDRESS_SPACE.into(),
            global_default_address_space: GLOBAL_ADDRESS_SPACE.into(),
        }),
        (Driver::Ipam, "IpamDriver.RequestPool") => {
            let req: RequestPoolRequest = decode(method, body)?;
            let pool_req = pool_request(method, req)?;
            let v6 = pool_req.pool.map_or(pool_req.v6, |p| matches!(p, IpNet::V6(_)));
            let info = backend_call(method, b.request_pool(pool_req)).await?;
            if info.pool_id.is_empty() {
                return Err(Fault::failed(format!(
                    "{method}: internal error: the backend named no pool"
                )));
            }
            // The gateway entry stops Docker from asking IPAM for a gateway address of
            // the pool: Calico containers use the link-local 169.254.1.1 instead. The
            // any-address value is also how CreateNetwork recognises calico-ipam pools.
            let gateway = if v6 { "::/0" } else { "0.0.0.0/0" };
            to_value(RequestPoolResponse {
                pool_id: info.pool_id,
                pool: info.pool.to_string(),
                data: BTreeMap::from([(GATEWAY_LABEL.to_string(), gateway.to_string())]),
            })
        }
        (Driver::Ipam, "IpamDriver.ReleasePool") => {
            let req: ReleasePoolRequest = decode(method, body)?;
            require(method, "PoolID", &req.pool_id)?;
            backend_call(method, b.release_pool(req.pool_id)).await?;
            Ok(json!({}))
        }
        (Driver::Ipam, "IpamDriver.RequestAddress") => {
            let req: RequestAddressRequest = decode(method, body)?;
            require(method, "PoolID", &req.pool_id)?;
            if req.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_LABEL) {
                return Err(Fault::failed(
                    "calico-ipam does not reserve gateway addresses: Calico containers route through \
                     169.254.1.1 on their host; leave out --gateway",
                ));
            }
            let address = if req.address.is_empty() {
                None
            } else {
                Some(parse_ip(method, "Address", &req.address)?)
            };
            let request = AddressRequest {
                pool_id: req.pool_id,
                address,
                options: req.options,
            };
            let ip = backend_call(method, b.request_address(request)).await?;
            if let Some(wanted) = address {
                if wanted != ip {
                    return Err(Fault::failed(format!(
                        "{method}: internal error: asked for {wanted}, the backend assigned {ip}"
                    )));
                }
            }
            // A host route: Calico containers have no subnet, every packet goes via the host.
            to_value(RequestAddressResponse {
                address: IpNet::from(ip).to_string(),
                data: BTreeMap::new(),
            })
        }
        (Driver::Ipam, "IpamDriver.ReleaseAddress") => {
            let req: ReleaseAddressRequest = decode(method, body)?;
            require(method, "PoolID", &req.pool_id)?;
            require(method, "Address", &req.address)?;
            let ip = parse_ip(method, "Address", &req.address)?;
            // Docker "releases" the gateway it took from RequestPool's Data
            // (0.0.0.0/0, ::/0) when a network is removed or its creation rolled back;
            // it was never allocated.
            if ip.is_unspecified() {
                return Ok(json!({}));
            }
            backend_call(method, b.release_address(req.pool_id, ip)).await?;
            Ok(json!({}))
        }

        (_, other) => Err(Fault {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "unknown method {other:?} (this socket serves the {} driver)",
                shared.driver.name()
            ),
        }),
    }
}

/// Decode a JSON body, with a message that says which call and what was wrong.
fn decode<T: DeserializeOwned>(method: &str, body: &Bytes) -> Result<T, Fault> {
    let text =
        std::str::from_utf8(body).map_err(|e| Fault::bad_request(format!("{method}: body is not UTF-8: {e}")))?;
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Err(Fault::bad_request(format!(
            "{method}: empty request body; expected a JSON object"
        )));
    }
    serde_json::from_str(trimmed).map_err(|e| Fault::bad_request(format!("{method}: malformed JSON body: {e}")))
}

fn require(method: &str, field: &str, value: &str) -> Result<(), Fault> {
    if value.trim().is_empty() {
        return Err(Fault::bad_request(format!("{method}: missing {field}")));
    }
    Ok(())
}

fn endpoint_ids(method: &str, body: &Bytes) -> Result<(String, String), Fault> {
    let req: EndpointRequest = decode(method, body)?;
    require(method, "NetworkID", &req.network_id)?;
    require(method, "EndpointID", &req.endpoint_id)?;
    Ok((req.network_id, req.endpoint_id))
}

fn to_value<T: Serialize>(value: T) -> Outcome {
    serde_json::to_value(value).map_err(|e| Fault::failed(format!("internal error encoding the response: {e}")))
}

/// Run a backend call; its error chain (`{:#}`) becomes the message Docker shows.
async fn backend_call<T>(method: &str, fut: impl Future<Output = anyhow::Result<T>>) -> Result<T, Fault> {
    fut.await.map_err(|e| Fault::failed(format!("{method}: {e:#}")))
}

fn parse_ip(method: &str, field: &str, s: &str) -> Result<IpAddr, Fault> {
    let s = s.trim();
    // Docker sends plain addresses; accept CIDR too, as some clients do.
    let parsed = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()));
    parsed.ok_or_else(|| Fault::bad_request(format!("{method}: {field} {s:?} is not an IP address")))
}

fn parse_cidr(method: &str, field: &str, s: &str) -> Result<IpNet, Fault> {
    s.trim()
        .parse::<IpNet>()
        .map_err(|_| Fault::bad_request(format!("{method}: {field} {s:?} is not a CIDR (address/prefix length)")))
}

/// A CIDR that must be a network address (`--subnet 10.65.0.0/16`, not `10.65.0.1/16`).
fn parse_network(method: &str, field: &str, s: &str) -> Result<IpNet, Fault> {
    let net = parse_cidr(method, field, s)?;
    if net.trunc() != net {
        return Err(Fault::failed(format!(
            "{field} {net} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

fn network_create(req: CreateNetworkRequest) -> Result<NetworkCreate, Fault> {
    const M: &str = "NetworkDriver.CreateNetwork";
    require(M, "NetworkID", &req.network_id)?;
    let mut options = BTreeMap::new();
    for (key, value) in &req.options {
        if key == GENERIC_OPTIONS {
            // `-o k=v` arrive as a map of strings (null when there are none).
            let generic = match value {
                Value::Null => continue,
                Value::Object(m) => m,
                other => {
                    return Err(Fault::bad_request(format!(
                        "{M}: {GENERIC_OPTIONS} is not a map: {other}"
                    )))
                }
            };
            for (k, v) in generic {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                options.insert(k.clone(), v);
            }
        } else if !is_harmless_network_option(key, value) {
            return Err(Fault::failed(format!(
                "the calico driver does not support the network option {key}={value} ({})",
                option_hint(key)
            )));
        }
    }
    for key in options.keys() {
        if key != GROUP_OPTION {
            return Err(Fault::failed(format!(
                "unknown option -o {key}; the calico driver supports -o {GROUP_OPTION}=NAME"
            )));
        }
    }
    let group = match options.get(GROUP_OPTION) {
        None => None,
        Some(g) if calico_schema::validate::is_valid_name(g) => Some(g.clone()),
        Some(g) => {
            return Err(Fault::failed(format!(
                "-o {GROUP_OPTION}={g:?} is not a valid group name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)"
            )))
        }
    };
    let ipv4 = pool_data(M, "IPv4Data", &req.ipv4_data)?;
    let ipv6 = pool_data(M, "IPv6Data", &req.ipv6_data)?;
    Ok(NetworkCreate {
        network_id: req.network_id,
        group,
        options,
        ipv4,
        ipv6,
    })
}

/// Options Docker always sends whose default value needs nothing from the driver.
fn is_harmless_network_option(key: &str, value: &Value) -> bool {
    match key {
        // --ipv6: the v6 pool comes through IPv6Data, handled like v4.
        "com.docker.network.enable_ipv6" => true,
        // Booleans Docker sends as false unless a flag asked for a behaviour Calico
        // does not implement (--internal ...).
        _ => matches!(value, Value::Bool(false) | Value::Null),
    }
}

fn option_hint(key: &str) -> &'static str {
    match key {
        "com.docker.network.internal" => "--internal: use a Calico policy that denies egress instead",
        _ => "leave it out",
    }
}

/// Check that CreateNetwork's pools come from calico-ipam: the network driver relies
/// on /32 addresses and on no gateway being reserved in the pool.
fn pool_data(method: &str, field: &str, data: &[IpamData]) -> Result<Vec<PoolData>, Fault> {
    data.iter()
        .map(|d| {
            let pool = parse_cidr(method, &format!("{field}.Pool"), &d.pool)?;
            let ours = d.address_space == LOCAL_ADDRESS_SPACE || d.address_space == GLOBAL_ADDRESS_SPACE;
            let any_gateway = matches!(d.gateway.as_str(), "0.0.0.0/0" | "::/0");
            if !ours && !any_gateway {
                return Err(Fault::failed(format!(
                    "the calico network driver needs the calico-ipam IPAM driver (got address space {:?}); \
                     add --ipam-driver {IPAM_DRIVER_NAME}",
                    d.address_space
                )));
            }
            if !d.aux_addresses.is_empty() {
                return Err(Fault::failed(
                    "--aux-address is not supported: Calico networks reserve no addresses",
                ));
            }
            Ok(PoolData {
                address_space: d.address_space.clone(),
                pool,
            })
        })
        .collect()
}

fn endpoint_create(method: &str, req: CreateEndpointRequest) -> Result<EndpointCreate, Fault> {
    require(method, "NetworkID", &req.network_id)?;
    require(method, "EndpointID", &req.endpoint_id)?;
    let iface = req.interface;
    let ipv4 = match iface.address.trim() {
        "" => None,
        s => Some(parse_cidr(method, "Interface.Address", s)?),
    };
    let ipv6 = match iface.address_ipv6.trim() {
        "" => None,
        s => Some(parse_cidr(method, "Interface.AddressIPv6", s)?),
    };
    if ipv4.is_none() && ipv6.is_none() {
        return Err(Fault::failed(
            "the endpoint has no address; create the network with --ipam-driver calico-ipam so IPAM assigns one",
        ));
    }
    let mac = match iface.mac_address.trim() {
        "" => None,
        s => Some(s.to_string()),
    };
    Ok(EndpointCreate {
        network_id: req.network_id,
        endpoint_id: req.endpoint_id,
        ipv4,
        ipv6,
        mac,
        options: req.options,
    })
}

fn join_response(method: &str, info: JoinInfo) -> Result<JoinResponse, Fault> {
    // Docker would fail with an obscure netlink error on a bad name: check it here.
    if info.src_name.is_empty() || info.src_name.len() > 15 || info.dst_prefix.is_empty() {
        return Err(Fault::failed(format!(
            "{method}: internal error: bad interface names {:?} / {:?}",
            info.src_name, info.dst_prefix
        )));
    }
    Ok(JoinResponse {
        interface_name: InterfaceName {
            src_name: info.src_name,
            dst_prefix: info.dst_prefix,
        },
        gateway: info.gateway.map(|g| g.to_string()).unwrap_or_default(),
        gateway_ipv6: info.gateway_v6.map(|g| g.to_string()).unwrap_or_default(),
        static_routes: info
            .static_routes
            .into_iter()
            .map(|r| StaticRouteWire {
                destination: r.destination.to_string(),
                route_type: if r.next_hop.is_some() {
                    ROUTE_TYPE_NEXTHOP
                } else {
                    ROUTE_TYPE_CONNECTED
                },
                next_hop: r.next_hop.map(|h| h.to_string()).unwrap_or_default(),
            })
            .collect(),
        disable_gateway_service: false,
    })
}

fn pool_request(method: &str, req: RequestPoolRequest) -> Result<PoolRequest, Fault> {
    if !req.sub_pool.trim().is_empty() {
        return Err(Fault::failed(
            "--ip-range is not supported: addresses come from the Calico IPPool's per-host blocks; \
             use --subnet with an IPPool's CIDR",
        ));
    }
    let pool = match req.pool.trim() {
        "" => None,
        s => Some(parse_network(method, "--subnet", s)?),
    };
    Ok(PoolRequest {
        address_space: req.address_space,
        pool,
        options: req.options,
        v6: req.v6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_nulls_decode_as_empty() {
        let body = Bytes::from_static(
            br#"{"NetworkID":"n1","Options":null,"IPv4Data":[{"AddressSpace":"CalicoLocal","Pool":"0.0.0.0/0","Gateway":"0.0.0.0/0","AuxAddresses":null}],"IPv6Data":null}"#,
        );
        let req: CreateNetworkRequest = decode("x", &body).unwrap();
        let create = network_create(req).unwrap();
        assert_eq!(create.ipv4.len(), 1);
        assert!(create.ipv6.is_empty());
        assert_eq!(create.group, None);
    }

    #[test]
    fn group_option_is_parsed_and_validated() {
        let mk = |generic: Value| CreateNetworkRequest {
            network_id: "n".into(),
            options: Map::from_iter([
                (GENERIC_OPTIONS.to_string(), generic),
                ("com.docker.network.enable_ipv6".to_string(), Value::Bool(false)),
            ]),
            ..Default::default()
        };
        assert_eq!(
            network_create(mk(json!({"group": "web"}))).unwrap().group.as_deref(),
            Some("web")
        );
        let bad = network_create(mk(json!({"group": "-x"}))).unwrap_err();
        assert!(bad.message.contains("not a valid group name"), "{}", bad.message);
        let unknown = network_create(mk(json!({"colour": "red"}))).unwrap_err();
        assert!(
            unknown.message.contains("unknown option -o colour"),
            "{}",
            unknown.message
        );
    }

    #[test]
    fn foreign_ipam_is_refused() {
        let req = CreateNetworkRequest {
            network_id: "n".into(),
            ipv4_data: vec![IpamData {
                address_space: "LocalDefault".into(),
                pool: "172.18.0.0/16".into(),
                gateway: "172.18.0.1/16".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = network_create(req).unwrap_err();
        assert!(err.message.contains("--ipam-driver calico-ipam"), "{}", err.message);
    }

    #[test]
    fn join_response_shape() {
        let resp = join_response("m", JoinInfo::calico("tmpabc", false)).unwrap();
        let v = serde_json::to_value(resp).unwrap();
        assert_eq!(
            v,
            json!({
                "InterfaceName": {"SrcName": "tmpabc", "DstPrefix": "eth"},
                "Gateway": "169.254.1.1",
                "StaticRoutes": [{"Destination": "169.254.1.1/32", "RouteType": 1}],
                "DisableGatewayService": false
            })
        );
        let v6 = serde_json::to_value(join_response("m", JoinInfo::calico("tmpabc", true)).unwrap()).unwrap();
        assert_eq!(v6["GatewayIPv6"], "fe80::ecee:eeff:feee:eeee");
        assert_eq!(v6["StaticRoutes"][1]["Destination"], "fe80::ecee:eeff:feee:eeee/128");
    }

    #[test]
    fn subnet_with_host_bits_is_refused() {
        let req = RequestPoolRequest {
            pool: "10.65.0.1/16".into(),
            ..Default::default()
        };
        let err = pool_request("m", req).unwrap_err();
        assert!(err.message.contains("did you mean 10.65.0.0/16"), "{}", err.message);
    }

    #[tokio::test]
    async fn sockets_are_root_only_whatever_the_umask() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calico.sock");
        // SAFETY: umask is process-wide; this test restores it at once and nothing else
        // in this test binary creates files meanwhile that depends on it.
        let old = unsafe { libc::umask(0) };
        let bound = bind_fresh(&path);
        unsafe { libc::umask(old) };
        let _listener = bound.expect("bind");
        let meta = std::fs::metadata(&path).expect("socket exists");
        assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
        assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    }
}
