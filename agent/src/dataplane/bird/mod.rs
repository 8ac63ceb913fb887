//! BIRD 2: writing its configuration safely (`config`), supervising the daemon
//! (`supervise`), and asking it about its protocols ([`birdc`]; the answer is parsed
//! by `calico_schema::birdc`, the one parser, shared with `calicoctl status`).
//!
//! Every runtime path (config, control socket, pid file, log) is
//! configurable because several agents, each with its own BIRD, share one
//! filesystem in the end-to-end tests.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use super::netns::{ns_label, NetnsError};

mod birdc;
mod config;
mod supervise;

pub use birdc::birdc;
pub use config::{write_config, write_config_with};
pub use supervise::BirdSupervisor;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("BIRD rejected the configuration (`{command}`): {output}")]
    Check { command: String, output: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("start `{command}` (netns {netns}): {source}")]
    Spawn {
        command: String,
        netns: String,
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Birdc {
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("`{command}` gave an unexpected answer: {output}")]
    Unexpected { command: String, output: String },
    #[error("a BIRD is already answering on {0}")]
    AlreadyRunning(PathBuf),
    #[error("BIRD did not answer on {socket} within {waited:?}")]
    NotReady { socket: PathBuf, waited: Duration },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BirdError + 'a {
    move |source| BirdError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs one of BIRD's tools (`bird -p`, `birdc`) in the agent's namespace with stdin
/// closed, and returns its output whatever its exit status; `command` is how the
/// error names it.
async fn run_tool(program: &Path, args: &[&std::ffi::OsStr], command: &str) -> Result<Output, BirdError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| BirdError::Spawn {
            command: command.to_string(),
            netns: ns_label(None),
            source,
        })
}

fn combined(stdout: &[u8], stderr: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(stderr).trim().to_string();
    let out = String::from_utf8_lossy(stdout);
    let out = out.trim();
    if !out.is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(out);
    }
    s
}

/// How to run and reach one BIRD.
#[derive(Clone, Debug)]
pub struct BirdOptions {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// Appended with BIRD's stdout/stderr; `None` forwards them to tracing.
    pub log: Option<PathBuf>,
    /// Network namespace to run BIRD in; `None`: the agent's.
    pub netns: Option<PathBuf>,
    pub bird: PathBuf,
    pub birdc: PathBuf,
    /// First restart delay, doubled per crash up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run this long resets the backoff: it was a crash, not a crash loop.
    pub stable_after: Duration,
}

impl BirdOptions {
    pub fn new(config: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        BirdOptions {
            config: config.into(),
            socket: socket.into(),
            pid_file: None,
            log: None,
            netns: None,
            bird: PathBuf::from("bird"),
            birdc: PathBuf::from("birdc"),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
        }
    }
}

pub use calico_schema::birdc::{parse_protocols, BgpDetails, BirdProtocol};

/// What the reconcile loop and `calicoctl status` need from BIRD.
pub trait BirdControl: Send + Sync {
    fn reconfigure(&self) -> impl std::future::Future<Output = Result<(), BirdError>> + Send;
    fn protocols(&self) -> impl std::future::Future<Output = Result<Vec<BirdProtocol>, BirdError>> + Send;
}
