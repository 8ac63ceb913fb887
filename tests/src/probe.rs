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

/// A TCP echo server inside a namespace: every connection gets back what it sends,
/// until the server is dropped.
pub struct EchoServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EchoServer {
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<EchoServer> {
        use std::io::{Read, Write};
        let l = in_netns(&ns.path(), move || TcpListener::bind(("0.0.0.0", port)))??;
        l.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let s3 = s2.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut buf = [0u8; 4096];
                            while !s3.load(std::sync::atomic::Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(EchoServer { port, stop })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TCP connection opened from inside `from` (the socket stays in that namespace).
pub fn connect_from(from: &Netns, to: IpAddr, port: u16, timeout: Duration) -> anyhow::Result<TcpStream> {
    let addr = SocketAddr::new(to, port);
    Ok(in_netns(&from.path(), move || {
        TcpStream::connect_timeout(&addr, timeout)
    })??)
}

/// Writes `msg` and reads the echo back within `timeout`: the connection carries data.
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(timeout))?;
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    anyhow::ensure!(got == msg, "echo mismatch");
    Ok(())
}
