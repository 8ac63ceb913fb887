//! Real first packets from workloads' network namespaces, for `calicoctl reach --probe`:
//! what the dataplane does, to set beside what the policy says.
//!
//! Each source is entered on a thread of its own (setns changes only the calling thread,
//! and a child process started from it, like ping, inherits it). TCP is probed with a
//! connect: an answer (accepted or refused) means the SYN was delivered; no answer
//! within the timeout means it was dropped. ICMP is probed with one `ping`. Other
//! protocols are not probed: without a listener no answer tells delivery from drop.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use calico_render::reach::Probe;
use calico_schema::Protocol;
use nix::sched::{setns, CloneFlags};

/// How long a probe waits for an answer before calling the packet dropped. Allowed
/// packets between namespaces on one machine answer in well under a millisecond.
const TIMEOUT: Duration = Duration::from_millis(800);

/// One pair to probe: from `netns`, to `ip`.
pub struct Pair {
    pub src: usize,
    pub dst: usize,
    pub netns: PathBuf,
    pub ip: IpAddr,
}

/// What the packet met: Some(true) delivered, Some(false) dropped, None not probed
/// (with why).
pub type Fate = Result<Option<bool>, String>;

/// Probes every pair with every probe, a thread per pair; `fates[pair][probe]`.
pub fn run(pairs: &[Pair], probes: &[Probe]) -> Vec<Vec<Fate>> {
    let handles: Vec<_> = pairs
        .iter()
        .map(|p| {
            let (netns, ip, probes) = (p.netns.clone(), p.ip, probes.to_vec());
            std::thread::spawn(move || probe_from(&netns, ip, &probes))
        })
        .collect();
    handles
        .into_iter()
        .zip(pairs)
        .map(|(h, p)| {
            h.join().unwrap_or_else(|_| {
                vec![Err(format!("the probe thread from {} panicked", p.netns.display())); probes.len()]
            })
        })
        .collect()
}

fn probe_from(netns: &std::path::Path, ip: IpAddr, probes: &[Probe]) -> Vec<Fate> {
    let entered = File::open(netns)
        .map_err(|e| format!("open {}: {e}", netns.display()))
        .and_then(|f| setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter {}: {e}", netns.display())));
    if let Err(e) = entered {
        return vec![Err(e); probes.len()];
    }
    probes.iter().map(|p| probe_one(ip, p)).collect()
}

fn probe_one(ip: IpAddr, p: &Probe) -> Fate {
    match (p.protocol, p.port) {
        (Protocol::Tcp, Some(port)) => match TcpStream::connect_timeout(&SocketAddr::new(ip, port), TIMEOUT) {
            Ok(_) => Ok(Some(true)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Some(true)),
            Err(_) => Ok(Some(false)),
        },
        (Protocol::Icmp | Protocol::IcmpV6, None) => {
            let status = Command::new("ping")
                .args(["-n", "-q", "-c", "1", "-W", "1"])
                .arg(ip.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("run ping: {e}"))?;
            Ok(Some(status.success()))
        }
        _ => Ok(None),
    }
}
