//! Real-packet probes: ICMP echo with `ping`, TCP connects from sockets created inside
//! a namespace.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use crate::netns::Netns;

/// Runs `f` on a fresh thread that has entered `ns`. Sockets made there stay in that
/// namespace for their whole life, whichever thread uses them later.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let file = std::fs::File::open(ns)?;
    let h = std::thread::spawn(move || -> anyhow::Result<T> {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    });
    h.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

/// One ICMP echo from `from` to `to`, waiting at most `timeout_s` seconds.
pub fn can_ping(from: &Netns, to: IpAddr, timeout_s: u32) -> bool {
    let flag = if to.is_ipv6() { "-6" } else { "-4" };
    from.exec(&["ping", flag, "-c", "1", "-W", &timeout_s.to_string(), &to.to_string()])
        .is_ok()
}

/// A TCP connect from inside `from` to `to:port`.
pub fn can_connect(from: &Netns, to: IpAddr, port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::new(to, port);
    in_netns(&from.path(), move || TcpStream::connect_timeout(&addr, timeout).is_ok()).unwrap_or(false)
}

/// A TCP listener inside a namespace that accepts (and closes) connections until dropped.
pub struct Listener {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<Listener> {
        let l = in_netns(&ns.path(), move || {
            TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        })??;
        l.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Listener { port, stop })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
