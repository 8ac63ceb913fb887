//! Support for calico-docker's end-to-end tests: network-namespace hosts joined by a
//! bridge, workloads, and real-packet probes.
//!
//! Everything made here is named uniquely (pid + counter) and removed by `Drop`, so a
//! failing test leaves nothing behind.

pub mod cluster;
pub mod docker;
pub mod forward;
pub mod netns;
pub mod nftwatch;
pub mod probe;
pub mod scenario;
pub mod seed5;

pub use netns::{Fabric, Netns};
pub use probe::{can_connect, can_ping, connect_from, echo_roundtrip, EchoServer, Listener};

/// A short, unique tag for names made by this process: namespaces, links, files.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs a command, failing with its stderr when it fails.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        anyhow::bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Serializes tests that change shared kernel state in one test binary.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
