//! What the agent and calicoctl of one host agree on without etcd: the names of the
//! files in the agent's run directory, and how dockerd's API socket is written.
//!
//! The agent writes these files and calicoctl (`node`, `status`, `diags`, `reset`)
//! reads them, so the names live here, once, for both.

use std::path::{Path, PathBuf};

/// The agent's run directory when none is given.
pub const DEFAULT_RUN_DIR: &str = "/var/run/calico";

/// The paths of one run directory. One directory per agent, so several agents on one
/// machine (test hosts) stay apart.
///
/// - `calico-node.pid`: the agent's pid, written by `calicoctl node` and by the agent
///   when it starts;
/// - `calico-node.args`: written by `calicoctl node` (how the agent was started);
/// - `bird.conf`, `bird.ctl`, `bird.pid`, `bird.log`: written by the agent and BIRD;
/// - `nft.json`: the whole nftables ruleset the agent last committed;
/// - `last-good.json`: the last good values of keys whose stored value is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn agent_pid(&self) -> PathBuf {
        self.0.join("calico-node.pid")
    }
    /// How the agent was started (calicoctl's `AgentRecord`, as JSON).
    pub fn record(&self) -> PathBuf {
        self.0.join("calico-node.args")
    }
    pub fn bird_pid(&self) -> PathBuf {
        self.0.join("bird.pid")
    }
    /// BIRD's control socket.
    pub fn bird_ctl(&self) -> PathBuf {
        self.0.join("bird.ctl")
    }
    pub fn bird_conf(&self) -> PathBuf {
        self.0.join("bird.conf")
    }
    pub fn bird_log(&self) -> PathBuf {
        self.0.join("bird.log")
    }
    /// The whole nftables ruleset the agent last committed.
    pub fn nft_file(&self) -> PathBuf {
        self.0.join("nft.json")
    }
    /// Invalid keys' last good values, kept across agent restarts.
    pub fn last_good(&self) -> PathBuf {
        self.0.join("last-good.json")
    }
}

/// dockerd's default API socket.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

const UNIX_SCHEME: &str = "unix://";

/// A Docker host that is not a unix socket (only those are supported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("docker host {0:?}: only unix sockets are supported (unix:///path or /path)")]
pub struct UnsupportedDockerHost(pub String);

/// The socket of a Docker host written `unix:///path` or as a bare `/path`.
pub fn docker_socket(host: &str) -> Result<&Path, UnsupportedDockerHost> {
    if let Some(path) = host.strip_prefix(UNIX_SCHEME) {
        return Ok(Path::new(path));
    }
    if host.starts_with('/') {
        return Ok(Path::new(host));
    }
    Err(UnsupportedDockerHost(host.to_string()))
}

/// The Docker host (`unix:///path`) of a socket path.
pub fn docker_host_of(socket: &Path) -> String {
    format!("{UNIX_SCHEME}{}", socket.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hosts() {
        assert_eq!(docker_socket("unix:///run/d.sock").unwrap(), Path::new("/run/d.sock"));
        assert_eq!(docker_socket("/run/d.sock").unwrap(), Path::new("/run/d.sock"));
        assert!(docker_socket("tcp://1.2.3.4:2375").is_err());
        assert!(docker_socket("run/d.sock").is_err());
        assert_eq!(
            docker_socket(DEFAULT_DOCKER_HOST).unwrap(),
            Path::new("/var/run/docker.sock")
        );
        assert_eq!(docker_host_of(Path::new("/run/d.sock")), "unix:///run/d.sock");
    }

    #[test]
    fn run_dir_names() {
        let run = RunDir(PathBuf::from(DEFAULT_RUN_DIR));
        assert_eq!(run.bird_ctl(), Path::new("/var/run/calico/bird.ctl"));
        assert_eq!(run.nft_file(), Path::new("/var/run/calico/nft.json"));
        assert_eq!(run.record(), Path::new("/var/run/calico/calico-node.args"));
    }
}
