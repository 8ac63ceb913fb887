//! Running a host tool (`nft`, `ip`, `iptables-restore`) for a command, in the agent's
//! network namespace when it has one (`nsenter --net=`), with a deadline.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long a host tool may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs `argv` (in `netns` when given); its stdout, or an error with its stderr.
pub fn run_cmd(netns: Option<&str>, argv: &[&str]) -> Result<String> {
    run_cmd_input(netns, argv, None)
}

/// [`run_cmd`] feeding `stdin` to the tool. Output is read while the tool runs, so a
/// large listing cannot fill the pipe and stall it.
pub fn run_cmd_input(netns: Option<&str>, argv: &[&str], stdin: Option<&str>) -> Result<String> {
    let (program, rest) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg("--").args(argv);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.args(rest);
            c
        }
    };
    let shown = match netns {
        Some(ns) => format!("nsenter --net={ns} -- {}", argv.join(" ")),
        None => argv.join(" "),
    };
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run `{shown}`"))?;
    if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
        // Small inputs only (a few restore lines): written before reading.
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("write to `{shown}`"))?;
    }
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "`{shown}` failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// The machine's hostname (the default Node name).
pub fn hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").context("read the hostname")?;
    let h = h.trim().to_string();
    if h.is_empty() {
        bail!("the hostname is empty; give --name");
    }
    Ok(h)
}
