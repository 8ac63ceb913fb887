//! The plugin's HTTP server: two unix sockets (one per driver), one axum route per
//! plugin method, and what every call gets alike: POST only, a bounded body, a time
//! limit, a panic caught, the log lines, and the `{"Err": ..., "Error": ...}` body of a
//! failure. What each method does is in [`super::network`] and [`super::ipam`].
//!
//! An unknown URL gets 404, which is how Docker learns an optional method is absent;
//! each socket knows only its own driver's methods.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use futures::FutureExt;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::call::{discover, Fault, Outcome};
use super::{ipam, network};
use super::{DEFAULT_PLUGIN_DIR, DEFAULT_REQUEST_TIMEOUT, IPAM_DRIVER_NAME, NETWORK_DRIVER_NAME, PLUGIN_CONTENT_TYPE};
use crate::docker::backend::Backend;

/// Largest request body read (Docker's are a few hundred bytes).
const BODY_LIMIT: usize = 1 << 20;

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
        let app = router(shared);
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

/// The routes of one socket: each method of its driver, and 404 for anything else.
fn router<B: Backend>(shared: Arc<Shared<B>>) -> Router {
    let routes = Routes::<B>::new();
    let routes = match shared.driver {
        Driver::Network => routes
            .add("Plugin.Activate", network::activate::<B>)
            .add("NetworkDriver.GetCapabilities", network::get_capabilities::<B>)
            .add("NetworkDriver.CreateNetwork", network::create_network::<B>)
            .add("NetworkDriver.DeleteNetwork", network::delete_network::<B>)
            .add("NetworkDriver.CreateEndpoint", network::create_endpoint::<B>)
            .add("NetworkDriver.DeleteEndpoint", network::delete_endpoint::<B>)
            .add("NetworkDriver.EndpointOperInfo", network::endpoint_oper_info::<B>)
            .add("NetworkDriver.Join", network::join::<B>)
            .add("NetworkDriver.Leave", network::leave::<B>)
            .add(
                "NetworkDriver.ProgramExternalConnectivity",
                network::program_external_connectivity::<B>,
            )
            .add(
                "NetworkDriver.RevokeExternalConnectivity",
                network::revoke_external_connectivity::<B>,
            )
            .add("NetworkDriver.DiscoverNew", discover::<B>)
            .add("NetworkDriver.DiscoverDelete", discover::<B>)
            .add("NetworkDriver.AllocateNetwork", network::allocate_network::<B>)
            .add("NetworkDriver.FreeNetwork", network::free_network::<B>),
        Driver::Ipam => routes
            .add("Plugin.Activate", ipam::activate::<B>)
            .add("IpamDriver.GetCapabilities", ipam::get_capabilities::<B>)
            .add(
                "IpamDriver.GetDefaultAddressSpaces",
                ipam::get_default_address_spaces::<B>,
            )
            .add("IpamDriver.RequestPool", ipam::request_pool::<B>)
            .add("IpamDriver.ReleasePool", ipam::release_pool::<B>)
            .add("IpamDriver.RequestAddress", ipam::request_address::<B>)
            .add("IpamDriver.ReleaseAddress", ipam::release_address::<B>)
            .add("IpamDriver.DiscoverNew", discover::<B>)
            .add("IpamDriver.DiscoverDelete", discover::<B>),
    };
    routes.router.fallback(unknown::<B>).with_state(shared)
}

/// A router being filled with one route per plugin method.
struct Routes<B> {
    router: Router<Arc<Shared<B>>>,
}

impl<B: Backend> Routes<B> {
    fn new() -> Self {
        Routes { router: Router::new() }
    }

    /// `POST /<method>` runs `handler`. Other HTTP methods reach the route too, so that
    /// [`answer`] refuses them with the same body as every other failure.
    fn add<F, Fut>(self, method: &'static str, handler: F) -> Self
    where
        F: Fn(Arc<B>, &'static str, Bytes) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let route = any(move |State(shared): State<Arc<Shared<B>>>, req: Request| {
            let handler = handler.clone();
            async move {
                let backend = shared.backend.clone();
                answer(&shared, req, move |body| handler(backend, method, body)).await
            }
        });
        Routes {
            router: self.router.route(&format!("/{method}"), route),
        }
    }
}

/// Anything that is not one of this driver's methods.
async fn unknown<B: Backend>(State(shared): State<Arc<Shared<B>>>, req: Request) -> Response {
    let method = method_name(&req);
    let driver = shared.driver.name();
    answer(&shared, req, move |_body| async move {
        Err(Fault {
            status: StatusCode::NOT_FOUND,
            message: format!("unknown method {method:?} (this socket serves the {driver} driver)"),
        })
    })
    .await
}

/// The plugin method a request names: its path without the leading '/'.
fn method_name(req: &Request) -> String {
    req.uri().path().trim_start_matches('/').to_string()
}

/// Serve one call: read the body, refuse anything but POST, run `call` within the
/// time limit, and turn its outcome into Docker's response.
async fn answer<B, F, Fut>(shared: &Shared<B>, req: Request, call: F) -> Response
where
    F: FnOnce(Bytes) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let started = Instant::now();
    let driver = shared.driver.name();
    let path = method_name(&req);
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
            match tokio::time::timeout(shared.timeout, AssertUnwindSafe(call(body)).catch_unwind()).await {
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

#[cfg(test)]
mod tests {
    use super::*;

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
