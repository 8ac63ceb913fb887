//! The Docker integration as the agent runs it: the plugin server with the Calico
//! [`super::calico::CalicoBackend`], the event consumer of the seed's `CALICO_IP` path
//! ([`super::seed`]), the [`WorkloadResolver`] that finds Docker containers'
//! namespaces, and the IPAM wrapper that keeps the reconcile's garbage collection off
//! addresses the plugin assigned but has not attached to a Container resource yet.
//!
//! docs/docker.md describes the mapping from Docker to Calico resources.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use calico_schema::{
    object, ClusterConfigSpec, Container, EndpointState, GroupSpec, IpPool, Kind, Resource, OWNER_ANNOTATION,
    OWNER_DOCKER,
};
use calico_store::ipam::Ipam;
use calico_store::{Store, StoreError, WriteMode};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::events::{ContainerInfo, DockerClient, EventFollower, EventsConfig, DEFAULT_DOCKER_HOST};
use super::plugin::{serve, PluginServer, DEFAULT_PLUGIN_DIR};
use crate::dataplane::workload::Plumber;
use crate::reconcile::{AddressManager, StepError, WorkloadResolver};

/// The Docker network of a plugin Container.
pub const ANN_NETWORK: &str = "calico/docker-network";
/// The Docker endpoint of a plugin Container; its presence means "Docker plumbs it".
pub const ANN_ENDPOINT: &str = "calico/docker-endpoint";
/// The Docker container ID (both paths; on the plugin path once Docker reports it).
pub const ANN_CONTAINER: &str = "calico/docker-container";
/// The Docker container name when the resource was made or last seen.
pub const ANN_NAME: &str = "calico/docker-name";

/// How the agent reaches Docker.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// dockerd's API socket (`unix:///var/run/docker.sock`); `None`: no Docker integration.
    pub docker_host: Option<String>,
    /// Where to serve `calico.sock` and `calico-ipam.sock`; `None`: no plugin server.
    pub plugin_dir: Option<PathBuf>,
    /// How long the agent waits at start for the first listing of dockerd's containers
    /// before it reconciles (so it does not remove the plumbing of containers it has
    /// not heard of yet).
    pub first_sync_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            docker_host: None,
            plugin_dir: None,
            first_sync_timeout: Duration::from_secs(5),
        }
    }
}

impl DockerConfig {
    /// From calico-node's flags: `--docker-host` (`none` turns the integration off;
    /// absent means the default socket when it exists and the agent programs its own
    /// namespace) and `--plugin-dir`.
    pub fn from_flags(docker_host: Option<String>, plugin_dir: PathBuf, own_netns: bool) -> DockerConfig {
        let docker_host = match docker_host.as_deref() {
            Some("none") | Some("") => None,
            Some(h) => Some(h.to_string()),
            None if own_netns && Path::new(DEFAULT_DOCKER_HOST.trim_start_matches("unix://")).exists() => {
                Some(DEFAULT_DOCKER_HOST.to_string())
            }
            None => None,
        };
        DockerConfig {
            plugin_dir: docker_host.as_ref().map(|_| plugin_dir),
            docker_host,
            ..Default::default()
        }
    }

    pub fn default_plugin_dir() -> PathBuf {
        PathBuf::from(DEFAULT_PLUGIN_DIR)
    }
}

/// What the agent knows of one Docker container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    pub running: bool,
    pub pid: Option<u32>,
}

/// A plugin endpoint (CreateEndpoint .. DeleteEndpoint).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The Container resource (and IPAM handle `container/<name>`).
    pub name: String,
    pub network_id: String,
    pub ips: Vec<IpAddr>,
    pub group: Option<String>,
    pub sandbox: Option<String>,
    /// When this process served its Join (endpoints restored at start have none).
    pub joined: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct State {
    /// Whether dockerd's containers have been listed at least once.
    pub synced: bool,
    /// Docker container ID -> what we know of it.
    pub containers: HashMap<String, Seen>,
    /// Container names whose addresses calico-ipam is assigning right now.
    pub reserving: HashSet<String>,
    /// Addresses calico-ipam handed out -> the Container name (and handle) they are for.
    pub addresses: HashMap<IpAddr, String>,
    /// Endpoint ID -> endpoint.
    pub endpoints: HashMap<String, Endpoint>,
    /// Network ID -> its group.
    pub networks: HashMap<String, String>,
}

pub enum Found<'a> {
    One(&'a str, &'a Seen),
    Ambiguous(Vec<String>),
    None,
}

impl State {
    /// A container by ID, name or unique ID prefix.
    pub fn find(&self, query: &str) -> Found<'_> {
        if let Some((id, s)) = self.containers.get_key_value(query) {
            return Found::One(id, s);
        }
        let by_name: Vec<(&String, &Seen)> = self.containers.iter().filter(|(_, s)| s.name == query).collect();
        if let [(id, s)] = by_name.as_slice() {
            return Found::One(id, s);
        }
        let by_prefix: Vec<(&String, &Seen)> = self.containers.iter().filter(|(id, _)| id.starts_with(query)).collect();
        match by_prefix.as_slice() {
            [] => Found::None,
            [(id, s)] => Found::One(id, s),
            many => Found::Ambiguous(many.iter().map(|(id, _)| short(id).to_string()).collect()),
        }
    }

    /// Whether `name` is a Container the plugin assigned an address for and still
    /// answers for (until Docker releases the address).
    fn owns(&self, name: &str) -> bool {
        self.reserving.contains(name)
            || self.addresses.values().any(|n| n == name)
            || self.endpoints.values().any(|e| e.name == name)
    }
}

/// The first 12 hex digits of a Docker ID, as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// What `docker/networks/<id>` stores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRecord {
    pub group: String,
    #[serde(default)]
    pub name: String,
    pub node: String,
}

pub fn network_key(id: &str) -> String {
    format!("docker/networks/{id}")
}

/// Everything the plugin backend, the event consumer and the resolver share.
pub struct Ctx {
    pub node: String,
    pub store: Store,
    pub ipam: Arc<Ipam>,
    pub host_netns: Option<PathBuf>,
    pub docker_host: String,
    client: tokio::sync::Mutex<Option<DockerClient>>,
    state: Mutex<State>,
    /// Told whenever Docker's state changed in a way the reconcile must see.
    pub kick: Notify,
    plumber: tokio::sync::OnceCell<Plumber>,
}

impl Ctx {
    pub fn new(node: String, store: Store, ipam: Arc<Ipam>, host_netns: Option<PathBuf>, docker_host: String) -> Ctx {
        Ctx {
            node,
            store,
            ipam,
            host_netns,
            docker_host,
            client: tokio::sync::Mutex::new(None),
            state: Mutex::new(State::default()),
            kick: Notify::new(),
            plumber: tokio::sync::OnceCell::new(),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client for dockerd, connected on first use and again after a failure.
    pub async fn client(&self) -> anyhow::Result<DockerClient> {
        let mut guard = self.client.lock().await;
        if let Some(c) = &*guard {
            return Ok(c.clone());
        }
        let c = DockerClient::connect(&self.docker_host).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    pub async fn client_failed(&self) {
        *self.client.lock().await = None;
    }

    /// rtnetlink in the host namespace.
    pub async fn plumber(&self) -> anyhow::Result<&Plumber> {
        self.plumber
            .get_or_try_init(|| Plumber::new(self.host_netns.clone()))
            .await
            .context("opening netlink in the host namespace")
    }

    /// dockerd's pid, from its API socket.
    pub fn dockerd_pid(&self) -> Option<u32> {
        let path = self.docker_host.strip_prefix("unix://").unwrap_or(&self.docker_host);
        super::host::socket_peer_pid(Path::new(path))
    }

    pub async fn pools(&self) -> anyhow::Result<Vec<IpPool>> {
        let listing = self
            .store
            .list(Some(Kind::IPPool))
            .await
            .context("reading the IPPools")?;
        Ok(listing
            .resources
            .into_iter()
            .filter_map(|r| if let Resource::IpPool(p) = r { Some(p) } else { None })
            .collect())
    }

    pub async fn cluster_config(&self) -> anyhow::Result<ClusterConfigSpec> {
        Ok(
            match self
                .store
                .get(Kind::ClusterConfig, "default")
                .await
                .context("reading ClusterConfig")?
            {
                Some(Resource::ClusterConfig(c)) => c.spec,
                _ => ClusterConfigSpec::default(),
            },
        )
    }

    /// Creates Group `g` with the seed's default rules unless it exists.
    pub async fn ensure_group(&self, g: &str) -> anyhow::Result<()> {
        if !calico_schema::validate::is_valid_name(g) {
            anyhow::bail!(
                "'{g}' is not a valid group name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)"
            );
        }
        if self.store.get(Kind::Group, g).await?.is_some() {
            return Ok(());
        }
        let mut group = object(Kind::Group, g, GroupSpec::default());
        group
            .metadata
            .annotations
            .insert(OWNER_ANNOTATION.into(), OWNER_DOCKER.into());
        match self
            .store
            .write(&[Resource::Group(group)], WriteMode::Create, None, false)
            .await
        {
            Ok(_) => {
                info!(group = g, "created group for Docker with the default rules");
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("creating group {g}")),
        }
    }

    /// Docker-owned Containers of this node.
    pub async fn docker_containers(&self) -> anyhow::Result<Vec<Container>> {
        let listing = self
            .store
            .list(Some(Kind::Container))
            .await
            .context("listing Containers")?;
        Ok(listing
            .resources
            .into_iter()
            .filter_map(|r| if let Resource::Container(c) = r { Some(c) } else { None })
            .filter(|c| c.spec.node == self.node && is_docker_owned(c))
            .collect())
    }

    pub async fn delete_container(&self, name: &str) -> anyhow::Result<bool> {
        match self
            .store
            .delete(&[(Kind::Container, name.to_string(), None)], None, false)
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting Container {name}")),
        }
    }

    /// Remembers a network's group, here and in etcd.
    pub async fn record_network(&self, id: &str, group: &str, name: &str) -> anyhow::Result<()> {
        self.state().networks.insert(id.to_string(), group.to_string());
        let rec = NetworkRecord {
            group: group.to_string(),
            name: name.to_string(),
            node: self.node.clone(),
        };
        self.store
            .put_json(&network_key(id), &rec)
            .await
            .with_context(|| format!("recording network {}", short(id)))?;
        Ok(())
    }

    pub fn note_container(&self, info: &ContainerInfo) {
        self.state().containers.insert(
            info.id.clone(),
            Seen {
                name: info.name.clone(),
                running: info.running,
                pid: info.pid,
            },
        );
    }

    /// Loads what survives an agent restart: networks' groups and plugin endpoints.
    async fn restore(&self) -> anyhow::Result<()> {
        let networks: Vec<(String, Result<NetworkRecord, String>)> = self.store.list_json("docker/networks/").await?;
        let containers = self.docker_containers().await?;
        let mut st = self.state();
        for (key, rec) in networks {
            if let (Some(id), Ok(rec)) = (key.strip_prefix("docker/networks/"), rec) {
                if rec.node == self.node {
                    st.networks.insert(id.to_string(), rec.group);
                }
            }
        }
        for c in containers {
            let Some(eid) = c.metadata.annotations.get(ANN_ENDPOINT) else {
                continue;
            };
            let ips = c.spec.ips.clone().unwrap_or_default();
            for ip in &ips {
                st.addresses.insert(*ip, c.metadata.name.clone());
            }
            st.endpoints.insert(
                eid.clone(),
                Endpoint {
                    name: c.metadata.name.clone(),
                    network_id: c.metadata.annotations.get(ANN_NETWORK).cloned().unwrap_or_default(),
                    ips,
                    group: c.spec.groups.first().cloned(),
                    sandbox: c.spec.netns.clone(),
                    joined: None,
                },
            );
        }
        Ok(())
    }

    /// Waits (bounded) until the reconcile has written a status for Container `name`:
    /// from then on every reconcile knows it.
    pub async fn wait_for_status(&self, name: &str, timeout: Duration) -> Option<calico_schema::ContainerStatus> {
        let key = format!("status/containers/{name}");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.store.get_json::<calico_schema::ContainerStatus>(&key).await {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
}

pub fn is_docker_owned(c: &Container) -> bool {
    c.metadata.annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(OWNER_DOCKER)
}

/// The seed path's Container name for a Docker container ID.
pub fn seed_name(id: &str) -> String {
    format!("docker-{}", short(id))
}

/// Finds the namespaces of Docker containers for the reconcile.
pub struct DockerResolver {
    ctx: Option<Arc<Ctx>>,
}

impl WorkloadResolver for DockerResolver {
    fn resolve(&self, c: &Container) -> Result<Option<PathBuf>, String> {
        if c.metadata.annotations.contains_key(ANN_ENDPOINT) {
            // libnetwork plumbs plugin endpoints; only the host side is ours.
            return Ok(None);
        }
        if let Some(ns) = &c.spec.netns {
            return Ok(Some(PathBuf::from(ns)));
        }
        let Some(query) = &c.spec.container else {
            return Err("neither netns nor container given".into());
        };
        let Some(ctx) = &self.ctx else {
            return Err(format!(
                "Docker container '{query}': this agent has no Docker connection (calico-node --docker-host)"
            ));
        };
        let st = ctx.state();
        if !st.synced {
            return Err(format!(
                "Docker container '{query}': waiting for dockerd at {}",
                ctx.docker_host
            ));
        }
        match st.find(query) {
            Found::One(_, seen) => match (seen.running, seen.pid) {
                (true, Some(pid)) => Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/net")))),
                _ => Err(format!("Docker container '{}' is not running", seen.name)),
            },
            Found::Ambiguous(ids) => Err(format!(
                "'{query}' matches several Docker containers ({}); use the full ID",
                ids.join(", ")
            )),
            Found::None => Err(format!("no Docker container '{query}' on this node")),
        }
    }
}

/// The reconcile's IPAM, except that handles the plugin still answers for are never
/// released by the reconcile's garbage collection: calico-ipam assigns an address
/// before Docker says which endpoint it is for, so for a moment the handle has no
/// Container resource.
pub struct DockerAwareIpam<A> {
    inner: A,
    ctx: Option<Arc<Ctx>>,
}

impl<A: AddressManager> AddressManager for DockerAwareIpam<A> {
    async fn auto_assign(&self, handle: &str, node: &str, pools: &[IpPool]) -> Result<Vec<IpAddr>, StepError> {
        self.inner.auto_assign(handle, node, pools).await
    }
    async fn assign_ips(&self, handle: &str, node: &str, ips: &[IpAddr], pools: &[IpPool]) -> Result<(), StepError> {
        self.inner.assign_ips(handle, node, ips, pools).await
    }
    async fn release(&self, handle: &str) -> Result<(), StepError> {
        self.inner.release(handle).await
    }
    fn spare(&self, handle: &str) -> bool {
        let Some(ctx) = &self.ctx else { return false };
        let Some(name) = handle.strip_prefix("container/") else {
            return false;
        };
        ctx.state().owns(name) || self.inner.spare(handle)
    }
}

/// The running Docker integration (or a disabled stand-in).
pub struct DockerIntegration {
    ctx: Option<Arc<Ctx>>,
    server: Option<PluginServer>,
    events: Option<JoinHandle<()>>,
}

impl DockerIntegration {
    pub fn disabled() -> DockerIntegration {
        DockerIntegration {
            ctx: None,
            server: None,
            events: None,
        }
    }

    /// Starts following dockerd and serving the plugin, then waits (bounded by
    /// `first_sync_timeout`) for the first listing of containers.
    pub async fn start(
        cfg: &DockerConfig,
        node: &str,
        host_netns: Option<PathBuf>,
        store: &Store,
        ipam: Arc<Ipam>,
    ) -> anyhow::Result<DockerIntegration> {
        let Some(host) = cfg.docker_host.clone() else {
            info!("Docker integration off (no --docker-host)");
            return Ok(DockerIntegration::disabled());
        };
        let ctx = Arc::new(Ctx::new(
            node.to_string(),
            store.clone(),
            ipam,
            host_netns,
            host.clone(),
        ));
        if let Err(e) = ctx.restore().await {
            warn!(error = %format!("{e:#}"), "could not restore the Docker plugin's state from etcd");
        }
        let server = match &cfg.plugin_dir {
            Some(dir) => Some(
                serve(dir, Arc::new(super::calico::CalicoBackend::new(ctx.clone())))
                    .await
                    .with_context(|| format!("serving the Docker plugin in {}", dir.display()))?,
            ),
            None => None,
        };
        let follower = EventFollower::spawn(EventsConfig::new(host.clone()));
        let events = tokio::spawn(super::seed::run(ctx.clone(), follower));
        let deadline = Instant::now() + cfg.first_sync_timeout;
        while !ctx.state().synced && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if ctx.state().synced {
            info!(docker_host = %host, "Docker integration on");
        } else {
            warn!(docker_host = %host, "dockerd has not answered yet; Docker containers are resolved once it does");
        }
        Ok(DockerIntegration {
            ctx: Some(ctx),
            server,
            events: Some(events),
        })
    }

    /// The reconcile's resolver: Docker containers by name/ID, plugin endpoints as
    /// Docker-plumbed, and bare namespaces.
    pub fn resolver(&self) -> Box<dyn WorkloadResolver> {
        Box::new(DockerResolver { ctx: self.ctx.clone() })
    }

    pub fn address_manager<A: AddressManager>(&self, inner: A) -> DockerAwareIpam<A> {
        DockerAwareIpam {
            inner,
            ctx: self.ctx.clone(),
        }
    }

    /// Resolves when Docker changed something the reconcile must look at again
    /// (a container started or stopped). Never resolves when the integration is off.
    pub async fn changed(&self) {
        match &self.ctx {
            Some(ctx) => ctx.kick.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Stops following dockerd and serving the plugin (removing its sockets).
    pub async fn shutdown(mut self) {
        if let Some(t) = self.events.take() {
            t.abort();
        }
        if let Some(s) = self.server.take() {
            if let Err(e) = s.shutdown().await {
                warn!(error = %e, "stopping the Docker plugin");
            }
        }
    }
}

impl Drop for DockerIntegration {
    fn drop(&mut self) {
        if let Some(t) = self.events.take() {
            t.abort();
        }
    }
}

/// A status worth failing a plugin call for.
pub fn ipam_failure(st: &calico_schema::ContainerStatus) -> Option<&str> {
    (st.state == EndpointState::Error && st.message.starts_with("IPAM")).then_some(st.message.as_str())
}
