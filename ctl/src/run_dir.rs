//! The agent's run directory (default /var/run/calico) as calicoctl uses it: `--run-dir`,
//! the pid files judged, and the record of how the agent was started. The files' names
//! are `calico_schema::RunDir`'s, the same the agent writes.
//!
//! - `calico-node.pid`: the agent's pid, written by `calicoctl node` and by the agent
//!   itself when it starts (Docker may restart a containerised one);
//! - `calico-node.args`: JSON [`AgentRecord`]: how the agent was started (node name,
//!   netns, HTTP address, log file). `status` and `diags` read it; it is how they know
//!   which namespace the dataplane lives in. `node stop` leaves it, so they still know
//!   after the agent is gone.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::agent_proc::{proc_state, ProcState, AGENT_BINARY};
use crate::hostcmd::hostname;

pub use calico_schema::{RunDir, DEFAULT_RUN_DIR};

/// `--run-dir`, for every command about this host's agent.
#[derive(Debug, Clone, Args)]
pub struct RunDirArg {
    /// The agent's runtime directory (pid files, BIRD's config and control socket)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

/// How the agent of a run directory was started: `<run-dir>/calico-node.args`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentRecord {
    pub name: String,
    pub pid: u32,
    pub binary: String,
    pub args: Vec<String>,
    pub netns: Option<String>,
    pub run_dir: String,
    pub log_file: Option<String>,
    pub http: Option<String>,
    pub etcd: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    /// `node --docker`: the agent's container and the dockerd that runs it.
    pub container: Option<ContainerRecord>,
}

/// Where a containerised agent runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// `unix:///PATH` of the dockerd.
    pub docker_host: String,
}

/// What calicoctl does with a run directory beyond naming its files (the names are
/// `calico_schema::RunDir`'s, shared with the agent).
pub trait AgentFiles {
    /// The record of the last `calicoctl node` for this directory, if readable.
    fn read_record(&self) -> Option<AgentRecord>;
    /// Writes the agent's pid file and its record.
    fn write_runtime(&self, record: &AgentRecord) -> Result<()>;
    /// The agent's pid and whether it is a live `calico-node`.
    fn agent(&self) -> ProcState;
    fn bird(&self) -> ProcState;
}

impl AgentFiles for RunDir {
    fn read_record(&self) -> Option<AgentRecord> {
        let text = std::fs::read_to_string(self.record()).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_runtime(&self, record: &AgentRecord) -> Result<()> {
        let pid_file = self.agent_pid();
        std::fs::write(&pid_file, format!("{}\n", record.pid))
            .with_context(|| format!("write {}", pid_file.display()))?;
        let rec = self.record();
        let text = serde_json::to_string_pretty(record)?;
        std::fs::write(&rec, text + "\n").with_context(|| format!("write {}", rec.display()))?;
        Ok(())
    }

    fn agent(&self) -> ProcState {
        proc_state(&self.agent_pid(), AGENT_BINARY)
    }

    fn bird(&self) -> ProcState {
        proc_state(&self.bird_pid(), "bird")
    }
}

/// The Node a command about this host's agent means: --name, else the name the agent of
/// the run directory was started with, else the hostname.
pub fn node_name(given: Option<&str>, run: &RunDir) -> Result<String> {
    if let Some(n) = given {
        return Ok(n.to_string());
    }
    if let Some(r) = run.read_record().filter(|r| !r.name.is_empty()) {
        return Ok(r.name);
    }
    hostname()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_are_judged() {
        let dir = std::env::temp_dir().join(format!("calicoctl-node-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = RunDir(dir.clone());
        assert_eq!(run.agent(), ProcState::NoPidFile);
        std::fs::write(run.agent_pid(), "x").unwrap();
        assert!(matches!(run.agent(), ProcState::BadPidFile(_)));
        // Our own pid is alive but not a calico-node.
        std::fs::write(run.agent_pid(), std::process::id().to_string()).unwrap();
        assert_eq!(run.agent(), ProcState::Stale(std::process::id() as i32));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
