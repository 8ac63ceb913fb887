//! Following dockerd: container start/die/destroy and network events, container and
//! network inspection, and the seed's `CALICO_IP` / `CALICO_GROUP` environment.
//!
//! [`EventFollower`] keeps a connection to dockerd's event stream and, every time it
//! (re)connects, first sends a [`DockerEvent::Resync`] listing every container, so a
//! consumer that treats Resync as the whole truth misses nothing across dockerd or
//! agent restarts. Events may repeat around a reconnect (the stream is replayed from
//! just before the listing): consumers must be idempotent.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum, NetworkInspect};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// dockerd's default API socket.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The seed's environment: `CALICO_IP=<ip[,ip]|auto>`.
pub const ENV_IP: &str = "CALICO_IP";
/// `CALICO_GROUP=<g[,g]>`: the groups the container joins.
pub const ENV_GROUP: &str = "CALICO_GROUP";
/// The seed's older name for a group (calico-docker called security groups profiles).
pub const ENV_PROFILE: &str = "CALICO_PROFILE";

/// Seconds a single Docker API request may take (the event stream itself is unbounded:
/// bollard applies the timeout to the response headers only).
const REQUEST_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker host {0:?}: only unix sockets are supported (unix:///path or /path)")]
    UnsupportedHost(String),
    #[error("connecting to dockerd at {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the dockerd event stream ended")]
    StreamEnded,
}

/// The seed's request, from a container's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalicoRequest {
    pub ip: CalicoIp,
    /// CALICO_GROUP then CALICO_PROFILE entries, in order, without duplicates.
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalicoIp {
    /// `CALICO_IP=auto`: IPAM assigns.
    Auto,
    /// Explicit addresses (one, or a comma-separated v4 and v6).
    Addresses(Vec<IpAddr>),
}

/// A container's CALICO_* environment that cannot be honoured; the message says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// Parse the seed's variables out of `KEY=VALUE` entries (Docker's `Config.Env`).
/// `Ok(None)`: the container did not ask for Calico networking.
pub fn parse_calico_env<S: AsRef<str>>(env: &[S]) -> Result<Option<CalicoRequest>, EnvError> {
    // Later entries win, as in a process environment.
    let mut vars: HashMap<&str, &str> = HashMap::new();
    for entry in env {
        let entry = entry.as_ref();
        if let Some((k, v)) = entry.split_once('=') {
            vars.insert(k, v);
        }
    }
    let mut groups: Vec<String> = Vec::new();
    for key in [ENV_GROUP, ENV_PROFILE] {
        let Some(value) = vars.get(key) else { continue };
        for g in value.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !calico_schema::validate::is_valid_name(g) {
                return Err(EnvError(format!(
                    "{key}: {g:?} is not a valid group name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)"
                )));
            }
            if !groups.iter().any(|have| have == g) {
                groups.push(g.to_string());
            }
        }
    }
    let Some(raw_ip) = vars.get(ENV_IP) else {
        if !groups.is_empty() {
            return Err(EnvError(format!(
                "{ENV_GROUP}/{ENV_PROFILE} is set but {ENV_IP} is not; add -e {ENV_IP}=auto"
            )));
        }
        return Ok(None);
    };
    let raw_ip = raw_ip.trim();
    if raw_ip.is_empty() {
        return Err(EnvError(format!("{ENV_IP} is empty; use {ENV_IP}=auto or an address")));
    }
    let ip = if raw_ip.eq_ignore_ascii_case("auto") {
        CalicoIp::Auto
    } else {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for part in raw_ip.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let addr: IpAddr = part
                .parse()
                .map_err(|_| EnvError(format!("{ENV_IP}: {part:?} is not an IP address (nor \"auto\")")))?;
            if addrs.iter().any(|a| a.is_ipv4() == addr.is_ipv4()) {
                return Err(EnvError(format!(
                    "{ENV_IP}: at most one IPv4 and one IPv6 address, got {raw_ip:?}"
                )));
            }
            addrs.push(addr);
        }
        CalicoIp::Addresses(addrs)
    };
    Ok(Some(CalicoRequest { ip, groups }))
}

/// One network attachment of a container, as `docker inspect` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerNetwork {
    pub network_id: String,
    pub endpoint_id: String,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
}

/// What the agent needs to know about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading '/'.
    pub name: String,
    pub running: bool,
    /// The init process, whose network namespace is the container's; only when running.
    pub pid: Option<u32>,
    /// `HostConfig.NetworkMode`: "none", "default", "bridge", "host", "container:<id>"
    /// or a network name.
    pub network_mode: String,
    /// The parsed CALICO_* environment.
    pub calico: Result<Option<CalicoRequest>, EnvError>,
    /// Network name -> attachment.
    pub networks: BTreeMap<String, ContainerNetwork>,
    pub labels: BTreeMap<String, String>,
    /// `NetworkSettings.SandboxKey`: the path of the namespace Docker made for the
    /// container (in dockerd's mount namespace), what plugin Join calls carry.
    pub sandbox_key: Option<String>,
}

impl ContainerInfo {
    /// The seed path's request, refused unless the container has no network of its
    /// own: the agent adds the only interface, and Docker must not configure another.
    pub fn seed_request(&self) -> Result<Option<CalicoRequest>, EnvError> {
        let req = self.calico.clone()?;
        if req.is_some() && self.network_mode != "none" {
            return Err(EnvError(format!(
                "{ENV_IP} needs the container to be started with --net=none (it has network mode {:?})",
                self.network_mode
            )));
        }
        Ok(req)
    }

    /// The container's network namespace, while it runs.
    pub fn netns_path(&self) -> Option<String> {
        self.pid.map(|pid| format!("/proc/{pid}/ns/net"))
    }

    fn from_inspect(c: ContainerInspectResponse) -> ContainerInfo {
        let state = c.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let pid = state
            .pid
            .filter(|p| running && *p > 0)
            .and_then(|p| u32::try_from(p).ok());
        let config = c.config.unwrap_or_default();
        let env = config.env.unwrap_or_default();
        let settings = c.network_settings.unwrap_or_default();
        let sandbox_key = settings.sandbox_key.filter(|k| !k.is_empty());
        let networks = settings
            .networks
            .unwrap_or_default()
            .into_iter()
            .map(|(name, ep)| {
                let parse = |s: Option<String>| s.filter(|s| !s.is_empty()).and_then(|s| s.parse::<IpAddr>().ok());
                let net = ContainerNetwork {
                    network_id: ep.network_id.unwrap_or_default(),
                    endpoint_id: ep.endpoint_id.unwrap_or_default(),
                    ipv4: parse(ep.ip_address),
                    ipv6: parse(ep.global_ipv6_address),
                };
                (name, net)
            })
            .collect();
        ContainerInfo {
            id: c.id.unwrap_or_default(),
            name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
            running,
            pid,
            network_mode: c.host_config.and_then(|h| h.network_mode).unwrap_or_default(),
            calico: parse_calico_env(&env),
            networks,
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            sandbox_key,
        }
    }
}

/// A Docker network, as `docker network inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub ipam_driver: String,
    /// The `-o` options.
    pub options: BTreeMap<String, String>,
    /// The `--subnet`s.
    pub subnets: Vec<String>,
    /// Container ID -> endpoint ID of every container attached to the network.
    pub endpoints: BTreeMap<String, String>,
}

impl NetworkInfo {
    fn from_inspect(n: NetworkInspect) -> NetworkInfo {
        let ipam = n.ipam.unwrap_or_default();
        NetworkInfo {
            id: n.id.unwrap_or_default(),
            name: n.name.unwrap_or_default(),
            driver: n.driver.unwrap_or_default(),
            ipam_driver: ipam.driver.unwrap_or_default(),
            options: n.options.unwrap_or_default().into_iter().collect(),
            subnets: ipam
                .config
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .collect(),
            endpoints: n
                .containers
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(id, ep)| ep.endpoint_id.map(|e| (id, e)))
                .collect(),
        }
    }

    /// The Calico group of a `calico` network: `-o group=G`, else the network's name.
    pub fn group(&self) -> &str {
        self.options
            .get(super::backend::GROUP_OPTION)
            .map_or(self.name.as_str(), String::as_str)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkAction {
    Create,
    Destroy,
    Connect,
    Disconnect,
}

/// What the follower reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerEvent {
    /// Sent on every (re)connect before any event: every container dockerd has,
    /// running or stopped. Authoritative: a container not listed no longer exists.
    Resync(Vec<ContainerInfo>),
    /// A container started (inspected just after the event).
    Start(ContainerInfo),
    /// A container's process exited (stop, kill, crash); it may start again.
    Die { id: String, name: String },
    /// A container was removed (`docker rm`).
    Destroy { id: String, name: String },
    /// A network changed; `container` is set for connect/disconnect.
    Network {
        action: NetworkAction,
        network_id: String,
        name: String,
        driver: String,
        container: Option<String>,
    },
}

/// A connected dockerd client.
#[derive(Clone, Debug)]
pub struct DockerClient {
    docker: Docker,
    host: String,
}

impl DockerClient {
    /// Connect to `host` (`unix:///var/run/docker.sock` or a bare path) and agree on an
    /// API version: bollard speaks a newer one than e.g. Debian's dockerd 20.10 (1.41).
    pub async fn connect(host: &str) -> Result<DockerClient, DockerError> {
        let path = socket_path(host)?;
        let docker = Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|source| DockerError::Connect {
                host: host.to_string(),
                source,
            })?
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Connect {
                host: host.to_string(),
                source,
            })?;
        Ok(DockerClient {
            docker,
            host: host.to_string(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The underlying bollard client, for calls this module does not wrap.
    pub fn raw(&self) -> &Docker {
        &self.docker
    }

    /// Inspect a container by ID or name; `None` if it does not exist.
    pub async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        match self.docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(c) => Ok(Some(ContainerInfo::from_inspect(c))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::Api {
                what: format!("inspecting container {id}"),
                source,
            }),
        }
    }

    /// Every container (running or not), inspected.
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, DockerError> {
        let opts = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|source| DockerError::Api {
                what: "listing containers".into(),
                source,
            })?;
        let mut out = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            // Removed between the listing and the inspection: simply not there any more.
            if let Some(info) = self.inspect_container(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Inspect a network by ID or name; `None` if it does not exist.
    pub async fn inspect_network(&self, id: &str) -> Result<Option<NetworkInfo>, DockerError> {
        match self.docker.inspect_network(id, None::<InspectNetworkOptions>).await {
            Ok(n) => Ok(Some(NetworkInfo::from_inspect(n))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::Api {
                what: format!("inspecting network {id}"),
                source,
            }),
        }
    }
}

fn socket_path(host: &str) -> Result<String, DockerError> {
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(path.to_string());
    }
    if host.starts_with('/') {
        return Ok(host.to_string());
    }
    Err(DockerError::UnsupportedHost(host.to_string()))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

/// How to follow dockerd.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// `unix:///var/run/docker.sock`, or a private dockerd's socket.
    pub docker_host: String,
    /// First retry delay after losing dockerd; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl EventsConfig {
    pub fn new(docker_host: impl Into<String>) -> EventsConfig {
        EventsConfig {
            docker_host: docker_host.into(),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig::new(DEFAULT_DOCKER_HOST)
    }
}

/// A background task following dockerd. Dropping it stops the task.
pub struct EventFollower {
    rx: mpsc::Receiver<DockerEvent>,
    task: JoinHandle<()>,
}

impl EventFollower {
    /// Start following; the first item is a Resync once dockerd answers. The task
    /// retries forever (with backoff) while dockerd is away.
    pub fn spawn(config: EventsConfig) -> EventFollower {
        // Small buffer: a slow consumer should slow the follower, not grow memory.
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(follow(config, tx));
        EventFollower { rx, task }
    }

    /// The next event; `None` only after [`EventFollower::stop`].
    pub async fn next(&mut self) -> Option<DockerEvent> {
        self.rx.recv().await
    }

    pub fn stop(&mut self) {
        self.task.abort();
        self.rx.close();
    }
}

impl Drop for EventFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a session with dockerd ended.
enum SessionEnd {
    /// The consumer is gone: stop for good.
    Closed,
    /// dockerd went away or misbehaved; `synced` says whether this session got as far
    /// as sending its Resync (then the next retry starts from the short delay again).
    Lost { error: DockerError, synced: bool },
}

async fn follow(config: EventsConfig, tx: mpsc::Sender<DockerEvent>) {
    let mut delay = config.min_backoff;
    loop {
        match session(&config, &tx).await {
            SessionEnd::Closed => return,
            SessionEnd::Lost { error, synced } => {
                if synced {
                    delay = config.min_backoff;
                }
                tracing::warn!(host = %config.docker_host, error = %error, retry_in_ms = delay.as_millis() as u64, "lost dockerd; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return,
                }
                delay = (delay * 2).min(config.max_backoff);
            }
        }
    }
}

async fn session(config: &EventsConfig, tx: &mpsc::Sender<DockerEvent>) -> SessionEnd {
    let lost = |error, synced| SessionEnd::Lost { error, synced };
    let client = match DockerClient::connect(&config.docker_host).await {
        Ok(c) => c,
        Err(e) => return lost(e, false),
    };
    // Replay events from a second before the listing: whatever happens while we list
    // is seen either in the listing or as an event (or both).
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(1))
        .unwrap_or(0);
    let containers = match client.list_containers().await {
        Ok(c) => c,
        Err(e) => return lost(e, false),
    };
    tracing::info!(host = %config.docker_host, containers = containers.len(), "connected to dockerd; resync");
    if tx.send(DockerEvent::Resync(containers)).await.is_err() {
        return SessionEnd::Closed;
    }

    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string(), "network".to_string()]),
        (
            "event".to_string(),
            ["start", "die", "destroy", "create", "connect", "disconnect"]
                .map(String::from)
                .to_vec(),
        ),
    ]);
    let opts = EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    };
    let mut stream = client.raw().events(Some(opts));
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = tx.closed() => return SessionEnd::Closed,
        };
        let msg = match msg {
            None => return lost(DockerError::StreamEnded, true),
            Some(Err(source)) => {
                return lost(
                    DockerError::Api {
                        what: "reading the event stream".into(),
                        source,
                    },
                    true,
                )
            }
            Some(Ok(msg)) => msg,
        };
        let event = match translate(&client, msg).await {
            Ok(Some(ev)) => ev,
            Ok(None) => continue,
            Err(e) => return lost(e, true),
        };
        tracing::debug!(?event, "docker event");
        if tx.send(event).await.is_err() {
            return SessionEnd::Closed;
        }
    }
}

/// Turn a raw event into ours; `None` for events we do not report.
async fn translate(client: &DockerClient, msg: EventMessage) -> Result<Option<DockerEvent>, DockerError> {
    let action = msg.action.unwrap_or_default();
    let actor = msg.actor.unwrap_or_default();
    let id = actor.id.unwrap_or_default();
    let mut attrs = actor.attributes.unwrap_or_default();
    let mut take = |k: &str| attrs.remove(k).unwrap_or_default();
    match msg.typ {
        Some(EventMessageTypeEnum::CONTAINER) => match action.as_str() {
            "start" => match client.inspect_container(&id).await? {
                Some(info) => Ok(Some(DockerEvent::Start(info))),
                // Already removed again: its destroy event follows.
                None => Ok(None),
            },
            "die" => Ok(Some(DockerEvent::Die { id, name: take("name") })),
            "destroy" => Ok(Some(DockerEvent::Destroy { id, name: take("name") })),
            _ => Ok(None),
        },
        Some(EventMessageTypeEnum::NETWORK) => {
            let action = match action.as_str() {
                "create" => NetworkAction::Create,
                "destroy" => NetworkAction::Destroy,
                "connect" => NetworkAction::Connect,
                "disconnect" => NetworkAction::Disconnect,
                _ => return Ok(None),
            };
            let container = attrs.remove("container");
            Ok(Some(DockerEvent::Network {
                action,
                network_id: id,
                name: attrs.remove("name").unwrap_or_default(),
                driver: attrs.remove("type").unwrap_or_default(),
                container,
            }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[&str]) -> Result<Option<CalicoRequest>, EnvError> {
        parse_calico_env(v)
    }

    #[test]
    fn no_calico_env_means_not_requested() {
        assert_eq!(env(&["PATH=/bin", "HOME=/"]), Ok(None));
    }

    #[test]
    fn auto_and_explicit_addresses() {
        let r = env(&["CALICO_IP=auto"]).unwrap().unwrap();
        assert_eq!(r.ip, CalicoIp::Auto);
        assert!(r.groups.is_empty());
        let r = env(&["CALICO_IP=AUTO", "CALICO_GROUP=web"]).unwrap().unwrap();
        assert_eq!(r.ip, CalicoIp::Auto);
        assert_eq!(r.groups, vec!["web"]);
        let r = env(&["CALICO_IP= 10.65.0.5 , fd00::5"]).unwrap().unwrap();
        assert_eq!(
            r.ip,
            CalicoIp::Addresses(vec!["10.65.0.5".parse().unwrap(), "fd00::5".parse().unwrap()])
        );
    }

    #[test]
    fn groups_merge_profile_alias_in_order_without_duplicates() {
        let r = env(&["CALICO_IP=auto", "CALICO_PROFILE=db,web", "CALICO_GROUP=web, ops"])
            .unwrap()
            .unwrap();
        assert_eq!(r.groups, vec!["web", "ops", "db"]);
    }

    #[test]
    fn later_entries_win() {
        let r = env(&["CALICO_IP=10.0.0.1", "CALICO_IP=auto"]).unwrap().unwrap();
        assert_eq!(r.ip, CalicoIp::Auto);
    }

    #[test]
    fn bad_values_are_explained() {
        let e = env(&["CALICO_IP=10.0.0.300"]).unwrap_err();
        assert!(e.0.contains("not an IP address"), "{e}");
        let e = env(&["CALICO_IP="]).unwrap_err();
        assert!(e.0.contains("is empty"), "{e}");
        let e = env(&["CALICO_IP=10.0.0.1,10.0.0.2"]).unwrap_err();
        assert!(e.0.contains("at most one IPv4"), "{e}");
        let e = env(&["CALICO_GROUP=web"]).unwrap_err();
        assert!(e.0.contains("CALICO_IP=auto"), "{e}");
        let e = env(&["CALICO_IP=auto", "CALICO_GROUP=-bad"]).unwrap_err();
        assert!(e.0.contains("not a valid group name"), "{e}");
    }

    #[test]
    fn entries_without_equals_are_ignored() {
        assert_eq!(env(&["CALICO_IP"]), Ok(None));
    }

    #[test]
    fn seed_request_needs_net_none() {
        let mut info = ContainerInfo {
            id: "abc".into(),
            name: "w1".into(),
            running: true,
            pid: Some(42),
            network_mode: "default".into(),
            calico: env(&["CALICO_IP=auto"]),
            networks: BTreeMap::new(),
            labels: BTreeMap::new(),
            sandbox_key: None,
        };
        let e = info.seed_request().unwrap_err();
        assert!(e.0.contains("--net=none"), "{e}");
        info.network_mode = "none".into();
        assert!(info.seed_request().unwrap().is_some());
        assert_eq!(info.netns_path().as_deref(), Some("/proc/42/ns/net"));
    }

    #[test]
    fn inspect_translation() {
        let raw = serde_json::json!({
            "Id": "abc123",
            "Name": "/web-1",
            "State": {"Running": true, "Pid": 4242},
            "Config": {"Env": ["PATH=/bin", "CALICO_IP=auto", "CALICO_GROUP=web"], "Labels": {"a": "b"}},
            "HostConfig": {"NetworkMode": "none"},
            "NetworkSettings": {"Networks": {"none": {"NetworkID": "n0", "EndpointID": "e0", "IPAddress": ""}}}
        });
        let c: ContainerInspectResponse = serde_json::from_value(raw).unwrap();
        let info = ContainerInfo::from_inspect(c);
        assert_eq!(info.name, "web-1");
        assert_eq!(info.pid, Some(4242));
        assert_eq!(info.seed_request().unwrap().unwrap().groups, vec!["web"]);
        assert_eq!(info.networks["none"].ipv4, None);
        assert_eq!(info.labels["a"], "b");

        let stopped = serde_json::json!({"Id": "x", "Name": "/x", "State": {"Running": false, "Pid": 0}});
        let info = ContainerInfo::from_inspect(serde_json::from_value(stopped).unwrap());
        assert_eq!((info.running, info.pid), (false, None));
    }

    #[test]
    fn hosts() {
        assert_eq!(socket_path("unix:///run/d.sock").unwrap(), "/run/d.sock");
        assert_eq!(socket_path("/run/d.sock").unwrap(), "/run/d.sock");
        assert!(socket_path("tcp://1.2.3.4:2375").is_err());
    }
}
