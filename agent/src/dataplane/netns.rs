//! Running code inside a network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, and
//! whatever runs on that thread afterwards (sockets it opens, `/proc/sys/net`
//! files it opens, processes it spawns) belongs to that namespace. A tokio
//! worker must never be switched, or unrelated tasks scheduled on it later
//! would silently talk to the wrong namespace; so every switch happens on a
//! short-lived OS thread of its own that exits afterwards.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

/// How a namespace is named in errors: the path, or the agent's own.
pub(crate) fn ns_label(netns: Option<&Path>) -> String {
    match netns {
        Some(p) => p.display().to_string(),
        None => "<agent netns>".to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("start a thread for network namespace {netns}: {source}")]
    Thread { netns: String, source: io::Error },
    #[error("the thread working in network namespace {netns} panicked")]
    Panicked { netns: String },
    #[error("open a netlink socket in network namespace {netns}: {source}")]
    Netlink { netns: String, source: io::Error },
}

/// Opens a namespace file (`/var/run/netns/X`, `/proc/PID/ns/net`).
pub fn open_netns(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn enter(path: &Path, file: &File) -> Result<(), NetnsError> {
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.to_path_buf(),
        source,
    })
}

fn thread_name(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Linux truncates thread names to 15 bytes; keep the namespace's tail.
    let tail: String = base.chars().skip(base.chars().count().saturating_sub(12)).collect();
    format!("ns-{tail}")
}

/// Runs `f` inside the network namespace at `netns` on a dedicated thread and
/// returns its result, blocking the caller until it is done. `None` runs `f`
/// right here, in the caller's namespace.
///
/// Blocking: from async code prefer [`run_in_netns_async`].
pub fn run_in_netns<F, T>(netns: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let Some(path) = netns else {
        return Ok(f());
    };
    let file = open_netns(path)?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(thread_name(path))
            .spawn_scoped(scope, || {
                enter(path, &file)?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Thread {
                netns: ns_label(netns),
                source,
            })?;
        handle
            .join()
            .map_err(|_| NetnsError::Panicked { netns: ns_label(netns) })?
    })
}

/// Like [`run_in_netns`], for async callers: the dedicated thread reports
/// back through a channel, so no tokio worker waits on it. `None` runs `f` on
/// tokio's blocking pool (it may block, e.g. on a child process).
pub async fn run_in_netns_async<F, T>(netns: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let label = ns_label(netns);
    let Some(path) = netns else {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| NetnsError::Panicked { netns: label });
    };
    let file = open_netns(path)?;
    let owned = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(thread_name(path))
        .spawn(move || {
            let result = enter(&owned, &file).map(|()| f());
            // The receiver may have been dropped (caller cancelled): nothing to do.
            let _ = tx.send(result);
        })
        .map_err(|source| NetnsError::Thread {
            netns: label.clone(),
            source,
        })?;
    rx.await.map_err(|_| NetnsError::Panicked { netns: label })?
}

/// Opens an rtnetlink connection bound to `netns` (`None`: the agent's own)
/// and spawns its driver on the current tokio runtime.
///
/// A netlink socket belongs to the namespace it was created in for its whole
/// life, whichever thread later uses it, so only its creation needs the
/// dedicated thread; the returned handle is then used from any task. The
/// connection ends when the last clone of the handle is dropped.
pub async fn netlink_in_netns(netns: Option<&Path>) -> Result<rtnetlink::Handle, NetnsError> {
    let label = ns_label(netns);
    let (conn, handle) = match netns {
        None => {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetnsError::Netlink {
                netns: label.clone(),
                source,
            })?;
            (conn, handle)
        }
        Some(_) => {
            // The socket registers with tokio's reactor when created, so the
            // dedicated thread enters this runtime first.
            let rt = tokio::runtime::Handle::current();
            let made = run_in_netns_async(netns, move || {
                let _guard = rt.enter();
                rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
            })
            .await?;
            made.map_err(|source| NetnsError::Netlink {
                netns: label.clone(),
                source,
            })?
        }
    };
    tokio::spawn(conn);
    Ok(handle)
}

/// Writes one sysctl under `/proc/sys` (`key` like `net/ipv4/conf/cali1/proxy_arp`).
///
/// `/proc/sys/net` is resolved against the namespace of the *thread* opening
/// the file, so call this from inside [`run_in_netns`] for another namespace.
pub fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// Reads one sysctl, trimmed; same namespace rule as [`write_sysctl`].
pub fn read_sysctl(key: &str) -> io::Result<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key)).map(|s| s.trim().to_string())
}
