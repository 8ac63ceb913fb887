//! Talking to dockerd: the connection (unix sockets only, API version agreed), and
//! containers and networks inspected into what the agent needs of them
//! ([`ContainerInfo`], [`NetworkInfo`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, NetworkInspect};
use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions, ListContainersOptions};
use bollard::Docker;

use super::env::{parse_calico_env, CalicoRequest, EnvError, ENV_IP};

/// Seconds a single Docker API request may take (the event stream itself is unbounded:
/// bollard applies the timeout to the response headers only).
const REQUEST_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    UnsupportedHost(#[from] calico_schema::UnsupportedDockerHost),
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
        let path = calico_schema::docker_socket(host)?.to_string_lossy();
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

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_request_needs_net_none() {
        let mut info = ContainerInfo {
            id: "abc".into(),
            name: "w1".into(),
            running: true,
            pid: Some(42),
            network_mode: "default".into(),
            calico: parse_calico_env(&["CALICO_IP=auto"]),
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
}
