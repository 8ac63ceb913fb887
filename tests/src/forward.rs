//! A TCP port of the test machine's loopback made reachable at the same address inside
//! a namespace host: how components in a host's network namespace (a containerised
//! agent, `calicoctl` run there) reach the test's etcd at `127.0.0.1:PORT`, as the
//! seed's hosts reached etcd through a local proxy on 127.0.0.1.
//!
//! The listening socket is made on a thread that entered the namespace (a socket keeps
//! the namespace it was made in); every connection to the target is made from the
//! test's own namespace. Bytes are copied both ways by two threads per connection.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};

/// Forwards `127.0.0.1:PORT` in a namespace to `127.0.0.1:PORT` here until dropped.
pub struct Forward {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    pub fn start(netns: &Path, port: u16) -> anyhow::Result<Forward> {
        let ns = netns.to_path_buf();
        let listener = std::thread::spawn(move || -> anyhow::Result<TcpListener> {
            let f = File::open(&ns).with_context(|| format!("open {}", ns.display()))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns {}", ns.display()))?;
            TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("listen on 127.0.0.1:{port} in {}", ns.display()))
        })
        .join()
        .map_err(|_| anyhow!("the listener thread panicked"))??;
        listener.set_nonblocking(true)?;
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        if let Ok(outside) = TcpStream::connect(target) {
                            if let (Ok(a), Ok(b)) = (inside.try_clone(), outside.try_clone()) {
                                open.push(a);
                                open.push(b);
                                pipe(inside.try_clone(), outside.try_clone());
                                pipe(outside.try_clone(), inside.try_clone());
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            // Ends the copying threads too: their reads return.
            for s in open {
                let _ = s.shutdown(Shutdown::Both);
            }
        });
        Ok(Forward {
            stop,
            thread: Some(thread),
        })
    }
}

fn pipe(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>) {
    if let (Ok(mut from), Ok(mut to)) = (from, to) {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
