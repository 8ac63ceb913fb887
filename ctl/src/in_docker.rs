//! Calico's own components as Docker containers, as the seed ran them:
//! `calicoctl node --docker` (the agent, which runs BIRD) and `calicoctl master
//! --docker` (the controller).
//!
//! A component's container shares the host's network and pid namespaces (the agent
//! programs the host's interfaces, routes and nftables, and the pids it writes in the
//! run directory are the host's), has the capabilities it uses ([`CAPABILITIES`]) and a
//! writable /proc/sys rather than `--privileged`, restarts
//! unless stopped, and sees the host paths it needs at the same paths inside (run and
//! log directories, the plugin directory, dockerd's socket, etcd's TLS files), so what
//! it writes is where `status` and `diags` look. The images are built locally by
//! `scripts/build-images.sh`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;

use calico_schema::{docker_socket, DEFAULT_DOCKER_HOST};

/// The capabilities a component's container gets beyond Docker's defaults.
pub const CAPABILITIES: [&str; 4] = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"];

/// The label every component container carries: which component it is.
pub const COMPONENT_LABEL: &str = "org.calico-docker.component";

/// The default image of a component, as `scripts/build-images.sh` tags it: this
/// calicoctl's version, so a calicoctl starts the agent it was built with.
pub fn default_image(component: &str) -> String {
    format!("calico-docker/{component}:{}", env!("CARGO_PKG_VERSION"))
}

/// Host paths mounted at the same path inside: (path, read-only).
pub type Mounts = Vec<(String, bool)>;

/// What to run: one component's container.
#[derive(Debug, Clone)]
pub struct Component {
    /// `node` or `master` (the label's value).
    pub kind: &'static str,
    /// The container's name.
    pub name: String,
    pub image: String,
    /// The command line after the image's entrypoint.
    pub args: Vec<String>,
    pub mounts: Mounts,
}

/// A component container's state, from dockerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub image: String,
    /// dockerd's word: running, restarting, exited, created...
    pub status: String,
    pub running: bool,
    /// The main process's pid (the host's: the container shares its pid namespace); 0
    /// when not running.
    pub pid: i64,
    pub restarts: i64,
    pub exit_code: i64,
}

impl State {
    pub fn describe(&self, name: &str) -> String {
        let mut s = format!("{name} ({}, image {}", self.status, self.image);
        if self.running {
            s.push_str(&format!(", pid {}", self.pid));
        } else if self.status == "exited" {
            s.push_str(&format!(", exit code {}", self.exit_code));
        }
        if self.restarts > 0 {
            s.push_str(&format!(", restarted {} times", self.restarts));
        }
        s.push(')');
        s
    }
}

/// dockerd at `host` (`--docker-host`, DOCKER_HOST; default the local socket), its API
/// version negotiated (Debian's dockerd speaks 1.41).
pub async fn connect(host: Option<&str>) -> Result<(Docker, String)> {
    let host = host
        .filter(|h| !h.is_empty())
        .unwrap_or(DEFAULT_DOCKER_HOST)
        .to_string();
    let path = docker_socket(&host)
        .map_err(|_| anyhow!("--docker-host must be unix:///PATH, not '{host}'"))?
        .to_string_lossy()
        .into_owned();
    let docker = Docker::connect_with_unix(&path, 30, bollard::API_DEFAULT_VERSION)
        .map_err(|e| anyhow!("Docker at {host}: {e}"))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| anyhow!("Docker at {host}: {e} (is dockerd running?)"))?;
    Ok((docker, host))
}

fn not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

fn message(e: DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message,
        e => e.to_string(),
    }
}

/// The container `name`'s state; None when there is no such container.
pub async fn state(docker: &Docker, name: &str) -> Result<Option<State>> {
    let c = match docker.inspect_container(name, None::<InspectContainerOptions>).await {
        Ok(c) => c,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => bail!("inspect container {name}: {}", message(e)),
    };
    let st = c.state.unwrap_or_default();
    let status = st
        .status
        .filter(|s| *s != ContainerStateStatusEnum::EMPTY)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    Ok(Some(State {
        id: c.id.unwrap_or_default(),
        image: c.config.and_then(|c| c.image).unwrap_or_default(),
        running: st.running.unwrap_or(false),
        pid: st.pid.unwrap_or(0),
        exit_code: st.exit_code.unwrap_or(0),
        restarts: c.restart_count.unwrap_or(0),
        status,
    }))
}

/// Creates and starts the component's container. Refuses when one of that name runs;
/// a stopped one (left by a crash or a dockerd restart) is replaced.
pub async fn start(docker: &Docker, host: &str, c: &Component) -> Result<State> {
    match docker.inspect_image(&c.image).await {
        Ok(_) => {}
        Err(e) if not_found(&e) => bail!(
            "image {} is not in dockerd at {host}; build it with scripts/build-images.sh (there is no registry to pull it from), or give another image",
            c.image
        ),
        Err(e) => bail!("inspect image {}: {}", c.image, message(e)),
    }
    if let Some(old) = state(docker, &c.name).await? {
        if old.running || old.status == "restarting" {
            bail!(
                "container {} is already {} in dockerd at {host}; stop it first with `calicoctl {} stop`",
                c.name,
                old.status,
                c.kind
            );
        }
        remove(docker, &c.name, Duration::from_secs(1)).await?;
    }
    let binds = c
        .mounts
        .iter()
        .map(|(p, ro)| format!("{p}:{p}{}", if *ro { ":ro" } else { "" }))
        .collect();
    let body = ContainerCreateBody {
        image: Some(c.image.clone()),
        cmd: Some(c.args.clone()),
        labels: Some(HashMap::from([(COMPONENT_LABEL.to_string(), c.kind.to_string())])),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            pid_mode: Some("host".into()),
            // Not --privileged: the capabilities the agent and BIRD use (links,
            // routes, nftables; setns into containers found through the host's /proc),
            // and /proc/sys writable for its sysctls. (A privileged container also
            // fails to start where the host's own bounding set lacks a capability.)
            cap_add: Some(CAPABILITIES.iter().map(ToString::to_string).collect()),
            security_opt: Some(vec!["apparmor=unconfined".into()]),
            // What `--security-opt systempaths=unconfined` means in the API.
            masked_paths: Some(Vec::new()),
            readonly_paths: Some(Vec::new()),
            binds: Some(binds),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::new().name(&c.name).build();
    docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| anyhow!("create container {} from {}: {}", c.name, c.image, message(e)))?;
    if let Err(e) = docker.start_container(&c.name, None).await {
        let why = message(e);
        let _ = remove(docker, &c.name, Duration::from_secs(1)).await;
        bail!("start container {}: {why}", c.name);
    }
    state(docker, &c.name)
        .await?
        .ok_or_else(|| anyhow!("container {} vanished right after it started", c.name))
}

/// Stops (SIGTERM, then SIGKILL after `wait`) and removes the container; false when
/// there was none.
pub async fn remove(docker: &Docker, name: &str, wait: Duration) -> Result<bool> {
    let t = i32::try_from(wait.as_secs()).unwrap_or(i32::MAX);
    match docker
        .stop_container(name, Some(StopContainerOptionsBuilder::new().t(t).build()))
        .await
    {
        Ok(()) => {}
        Err(e) if not_found(&e) => return Ok(false),
        // 304: already stopped.
        Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => {}
        Err(e) => bail!("stop container {name}: {}", message(e)),
    }
    match docker
        .remove_container(name, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if not_found(&e) => Ok(true),
        Err(e) => bail!("remove container {name}: {}", message(e)),
    }
}

/// The last `n` lines of the container's output (stdout and stderr).
pub async fn logs(docker: &Docker, name: &str, n: usize) -> String {
    use bollard::query_parameters::LogsOptionsBuilder;
    use futures::StreamExt;
    let opts = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&n.to_string())
        .build();
    let mut out = String::new();
    let mut stream = docker.logs(name, Some(opts));
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&chunk.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_follow_the_version() {
        assert_eq!(
            default_image("node"),
            format!("calico-docker/node:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn state_is_described() {
        let s = State {
            id: "x".into(),
            image: "calico-docker/node:1".into(),
            status: "running".into(),
            running: true,
            pid: 42,
            restarts: 2,
            exit_code: 0,
        };
        assert_eq!(
            s.describe("calico-node-a"),
            "calico-node-a (running, image calico-docker/node:1, pid 42, restarted 2 times)"
        );
    }
}
