//! The state the Docker side of the agent shares: [`Ctx`] (the node, the store, IPAM,
//! the dockerd client, the host's netlink) and [`State`] (what is known of Docker's
//! containers, networks and plugin endpoints), with the annotations and names that
//! mark Docker-owned Container resources.
//!
//! It is its own module so that the arrows go one way: [`super::calico`] (the plugin
//! backend), [`super::seed`] (the event consumer) and [`super::integration`] (the
//! resolver, the IPAM guard, start and stop) all use it, and it uses none of them.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use calico_schema::{
    object, ClusterConfigSpec, Container, ContainerStatus, EndpointState, GroupSpec, IpPool, Kind, Resource,
    OWNER_ANNOTATION, OWNER_DOCKER,
};
use calico_store::ipam::Ipam;
use calico_store::{Store, StoreError, WriteMode};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::info;

use super::client::{ContainerInfo, DockerClient};
use super::status::{StatusBoard, StatusWait};
use crate::dataplane::workload::Plumber;

/// The Docker network of a plugin Container.
pub const ANN_NETWORK: &str = "calico/docker-network";
/// The Docker endpoint of a plugin Container; its presence means "Docker plumbs it".
pub const ANN_ENDPOINT: &str = "calico/docker-endpoint";
/// The Docker container ID (both paths; on the plugin path once Docker reports it).
pub const ANN_CONTAINER: &str = "calico/docker-container";
/// The Docker container name when the resource was made or last seen.
pub const ANN_NAME: &str = "calico/docker-name";

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
    pub fn owns(&self, name: &str) -> bool {
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
    /// The Container statuses the reconcile writes, for Join to wait on.
    pub statuses: StatusBoard,
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
            statuses: StatusBoard::default(),
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
        let path = calico_schema::docker_socket(&self.docker_host).ok()?;
        super::host::socket_peer_pid(path)
    }

    pub async fn pools(&self) -> anyhow::Result<Vec<IpPool>> {
        self.list(Kind::IPPool, "reading the IPPools", |r| match r {
            Resource::IpPool(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// Every resource of `kind` that `pick` takes.
    async fn list<T>(
        &self,
        kind: Kind,
        what: &'static str,
        pick: impl FnMut(Resource) -> Option<T>,
    ) -> anyhow::Result<Vec<T>> {
        let listing = self.store.list(Some(kind)).await.context(what)?;
        Ok(listing.resources.into_iter().filter_map(pick).collect())
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
        let all = self
            .list(Kind::Container, "listing Containers", |r| match r {
                Resource::Container(c) => Some(c),
                _ => None,
            })
            .await?;
        Ok(all
            .into_iter()
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
    pub async fn restore(&self) -> anyhow::Result<()> {
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

    /// Waits (bounded) until the reconcile has written a status for the Container
    /// `wait` listens for (taken with `statuses.expect` before the Container was
    /// written): from then on every reconcile knows it. A status already in etcd (a
    /// Join retried for a Container the reconcile has seen) counts too.
    pub async fn wait_for_status(&self, wait: StatusWait<'_>, timeout: Duration) -> Option<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        let key = format!("status/containers/{}", wait.name());
        if let Ok(Ok(Some(st))) = tokio::time::timeout(timeout, self.store.get_json::<ContainerStatus>(&key)).await {
            return Some(st);
        }
        wait.wait(deadline.saturating_duration_since(Instant::now())).await
    }
}

pub fn is_docker_owned(c: &Container) -> bool {
    c.metadata.annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(OWNER_DOCKER)
}

/// The seed path's Container name for a Docker container ID.
pub fn seed_name(id: &str) -> String {
    format!("docker-{}", short(id))
}

/// A status worth failing a plugin call for.
pub fn ipam_failure(st: &ContainerStatus) -> Option<&str> {
    (st.state == EndpointState::Error && st.message.starts_with("IPAM")).then_some(st.message.as_str())
}
