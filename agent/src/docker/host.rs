//! The Docker side of the host's work for a container: where a sandbox Docker names
//! can be opened from here, when its gateway neighbour can be added, and dockerd's pid.
//! The kernel work itself (the veth Join hands to Docker, the neighbour entry) is
//! `dataplane::workload::handoff`'s.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::dataplane::workload::add_gateway_neighbour;

/// The pid of the process serving the unix socket at `path` (SO_PEERCRED): dockerd's,
/// for its API socket.
pub fn socket_peer_pid(path: &Path) -> Option<u32> {
    let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd and a buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Where this process can open a sandbox path Docker gave (`/var/run/docker/netns/X`):
/// through dockerd's root (`/proc/<pid>/root/run/...`), which works whether or not
/// dockerd runs in our mount namespace (in another one, the path here is at best the
/// empty file the namespace is bind-mounted on); without dockerd's pid, as is.
/// `/var/run` is spelled `/run` because an absolute symlink inside `/proc/<pid>/root`
/// would resolve against our own root.
pub fn sandbox_path(key: &str, dockerd_pid: Option<u32>) -> PathBuf {
    match dockerd_pid {
        Some(pid) => {
            let inner = key
                .strip_prefix("/var/run/")
                .map_or_else(|| key.to_string(), |rest| format!("/run/{rest}"));
            PathBuf::from(format!("/proc/{pid}/root{inner}"))
        }
        None => PathBuf::from(key),
    }
}

/// Adds the gateway neighbour in the sandbox `key` as soon as Docker has set it up:
/// with an external key (Docker 20.10), the namespace is bind-mounted and the
/// interface moved in only in the container's prestart hook, after the plugin calls.
/// Tries for up to `within`; `Ok(true)` once added.
pub async fn gateway_neighbour_when_ready(
    key: &str,
    dockerd_pid: Option<u32>,
    ips: &[IpAddr],
    within: std::time::Duration,
) -> anyhow::Result<bool> {
    let path = sandbox_path(key, dockerd_pid);
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut done = true;
        let mut last_err = None;
        for ip in ips {
            match add_gateway_neighbour(&path, *ip).await {
                Ok(d) => done &= d,
                Err(e) => {
                    done = false;
                    last_err = Some(anyhow::Error::from(e));
                }
            }
        }
        if done {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return match last_err {
                Some(e) => Err(e),
                None => Ok(false),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_go_through_dockerds_root() {
        assert_eq!(
            sandbox_path("/var/run/docker/netns/x", None),
            PathBuf::from("/var/run/docker/netns/x")
        );
        assert_eq!(
            sandbox_path("/var/run/docker/netns/x", Some(42)),
            PathBuf::from("/proc/42/root/run/docker/netns/x")
        );
        assert_eq!(
            sandbox_path("/tmp/d/exec/netns/x", Some(42)),
            PathBuf::from("/proc/42/root/tmp/d/exec/netns/x")
        );
    }
}
