//! The agent's and BIRD's processes as `calicoctl` sees them: finding the agent binary,
//! judging a pid file, and stopping a process (SIGTERM, a wait, then SIGKILL).
//!
//! Kept apart from the run directory's file layout (`run_dir`) so that `node`, `status`,
//! `diags` and `reset` share one notion of "is it running", and from `node`'s commands so
//! that none of them imports another.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const AGENT_BINARY: &str = "calico-node";
/// Overrides where `calicoctl node` finds the agent binary.
pub const AGENT_BINARY_ENV: &str = "CALICO_NODE_BINARY";
/// Where a daemonised agent's log goes unless `--log-dir` says.
pub const DEFAULT_LOG_DIR: &str = "/var/log/calico";

/// The agent's log file in a log directory.
pub fn agent_log(log_dir: &Path) -> PathBuf {
    log_dir.join("calico-node.log")
}

/// What a pid file says about its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcState {
    NoPidFile,
    /// The file does not hold a pid.
    BadPidFile(String),
    /// The pid is not running, or is now another program.
    Stale(i32),
    Running(i32),
}

impl ProcState {
    pub fn running(&self) -> Option<i32> {
        match self {
            ProcState::Running(p) => Some(*p),
            _ => None,
        }
    }
}

/// Reads `pid_file`; running only when the pid is alive and its program is `comm`
/// (a pid left by a crash may since belong to something else).
pub fn proc_state(pid_file: &Path, comm: &str) -> ProcState {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return ProcState::NoPidFile;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return ProcState::BadPidFile(text.trim().chars().take(40).collect());
    };
    if pid > 0 && pid_alive(pid) && proc_comm(pid).is_some_and(|c| c == comm) {
        ProcState::Running(pid)
    } else {
        ProcState::Stale(pid)
    }
}

/// The kernel's short name of a process (`/proc/PID/comm`).
fn proc_comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `pid` is a running process. A zombie counts as gone: whoever reaps it (init,
/// which may be slow or absent in containers) does not matter to us.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).with_context(|| format!("send {sig} to pid {pid}"))
}

/// Waits until `pid` is gone; false on timeout.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    !pid_alive(pid)
}

/// SIGTERM, wait, SIGKILL. Returns a line describing what happened.
pub fn terminate(pid: i32, what: &str, wait: Duration) -> Result<String> {
    use nix::sys::signal::Signal;
    signal(pid, Signal::SIGTERM)?;
    if wait_gone(pid, wait) {
        return Ok(format!("Stopped {what} (pid {pid})"));
    }
    signal(pid, Signal::SIGKILL)?;
    if wait_gone(pid, Duration::from_secs(2)) {
        Ok(format!(
            "Killed {what} (pid {pid}): it ignored SIGTERM for {}s",
            wait.as_secs()
        ))
    } else {
        bail!("{what} (pid {pid}) survived SIGKILL")
    }
}

/// Where the agent binary is: $CALICO_NODE_BINARY, else next to this calicoctl, else
/// on PATH.
pub fn find_agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_BINARY_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{AGENT_BINARY_ENV}={} is not a file", p.display());
        }
        return Ok(p);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(AGENT_BINARY);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(AGENT_BINARY);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("cannot find the {AGENT_BINARY} binary next to calicoctl or on PATH (or set {AGENT_BINARY_ENV})")
}

/// The last `n` lines of a file (for error messages about the agent).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
    }
}
