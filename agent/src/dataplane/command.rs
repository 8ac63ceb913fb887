//! Running a helper program (`nft`, `iptables-restore`) in a network namespace with
//! its output captured: the helper's stderr is the error an operator needs.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

use super::netns::{ns_label, run_in_netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("run `{command}` (netns {netns}): {source}")]
    Spawn {
        command: String,
        netns: String,
        source: io::Error,
    },
    #[error("`{command}` (netns {netns}) failed ({status}): {stderr}")]
    Failed {
        command: String,
        netns: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl CommandError {
    /// The program is not installed.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CommandError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn command_line(program: &Path, args: &[&str]) -> String {
    let mut line = program.display().to_string();
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    line
}

/// Runs `program args` inside `netns` (`None`: the agent's own; the child inherits
/// the namespace of the thread that spawns it), feeding it `stdin`. Blocking. A
/// non-zero exit is an error carrying the program's stderr.
pub fn run_piped(
    netns: Option<&Path>,
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Output, CommandError> {
    let command = command_line(program, args);
    let label = ns_label(netns);
    let spawn_err = |source| CommandError::Spawn {
        command: command.clone(),
        netns: label.clone(),
        source,
    };
    let output = run_in_netns(netns, || -> io::Result<Output> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pipe = child.stdin.take();
        // Feed stdin from its own thread: a large input and a large error report could
        // otherwise fill both pipes and deadlock.
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> io::Result<()> {
                if let (Some(mut pipe), Some(data)) = (pipe, stdin) {
                    pipe.write_all(data)?;
                }
                Ok(())
            });
            let out = child.wait_with_output();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("stdin writer panicked")));
            let out = out?;
            // A write error (EPIPE) only matters if the program itself succeeded.
            if out.status.success() {
                written?;
            }
            Ok(out)
        })
    })?
    .map_err(spawn_err)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CommandError::Failed {
            command,
            netns: label,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
