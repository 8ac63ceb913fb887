//! The Docker integration as the agent runs it: the plugin server with the Calico
//! [`super::calico::CalicoBackend`], the event consumer of the seed's `CALICO_IP` path
//! ([`super::seed`]), the [`WorkloadResolver`] that finds Docker containers'
//! namespaces, and the IPAM wrapper that keeps the reconcile's garbage collection off
//! addresses the plugin assigned but has not attached to a Container resource yet.
//!
//! The state all of them share is [`super::context::Ctx`]; this module only starts
//! what uses it and hands the reconcile its two views of Docker.
//!
//! docs/docker.md describes the mapping from Docker to Calico resources.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use calico_schema::{docker_socket, Container, ContainerStatus, IpPool, DEFAULT_DOCKER_HOST};
use calico_store::ipam::Ipam;
use calico_store::Store;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::context::{Ctx, Found, ANN_ENDPOINT};
use super::events::{EventFollower, EventsConfig};
use super::plugin::{serve, PluginServer, DEFAULT_PLUGIN_DIR};
use crate::reconcile::{AddressManager, StepError, WorkloadResolver};

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
            None if own_netns && docker_socket(DEFAULT_DOCKER_HOST).is_ok_and(Path::exists) => {
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
    async fn release_ips(&self, handle: &str, ips: &[IpAddr]) -> Result<(), StepError> {
        self.inner.release_ips(handle, ips).await
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

    /// The reconcile wrote (`Some`) or deleted (`None`) the status of Container `name`
    /// in etcd: a Join waiting for it goes on.
    pub fn status_written(&self, name: &str, status: Option<&ContainerStatus>) {
        if let (Some(ctx), Some(status)) = (&self.ctx, status) {
            ctx.statuses.written(name, status);
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
