//! The seed's five-container scenario (its GettingStarted and its `test_multi_host`) on
//! two Docker hosts: workload-A, B and C on host1, D and E on host2; A and D through the
//! calico network driver, B, C and E the seed's way (`--net=none -e CALICO_IP=...`,
//! then `calicoctl addtogroup`); groups A_C_E, B and D. The demo (calico-demo) and the
//! multi-host tests share it.
//!
//! How each host's agent is started is a [`NodeMode`], so the same scenario runs with
//! agents as host processes (`calicoctl node`) and, once added, as containers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::Cluster;
use crate::docker::{bird_sessions, birdc_at, calico_net, seed_ip, wait_for, ContainerNode, CtlNode, DockerHost};

/// How a container gets its network.
#[derive(Clone, Copy, Debug)]
pub enum Net {
    /// `--net NETWORK`: the calico driver, the group from the network's `-o group=`.
    Driver(&'static str),
    /// `--net=none -e CALICO_IP=IP`, then `calicoctl addtogroup NAME GROUP`.
    Seed(&'static str, &'static str),
}

/// One of the seed's containers.
#[derive(Clone, Copy, Debug)]
pub struct Wl {
    pub name: &'static str,
    /// 0: host1, 1: host2.
    pub host: usize,
    pub net: Net,
}

/// The seed's five containers: A, B, C on host1, D, E on host2; A, C, E in A_C_E.
pub const WORKLOADS: [Wl; 5] = [
    Wl {
        name: "workload-A",
        host: 0,
        net: Net::Driver("net-ace"),
    },
    Wl {
        name: "workload-B",
        host: 0,
        net: Net::Seed("10.65.0.2", "B"),
    },
    Wl {
        name: "workload-C",
        host: 0,
        net: Net::Seed("auto", "A_C_E"),
    },
    Wl {
        name: "workload-D",
        host: 1,
        net: Net::Driver("net-d"),
    },
    Wl {
        name: "workload-E",
        host: 1,
        net: Net::Seed("10.65.0.5", "A_C_E"),
    },
];

/// The calico networks: host, name, group.
pub const NETWORKS: [(usize, &str, &str); 2] = [(0, "net-ace", "A_C_E"), (1, "net-d", "D")];

/// The seed's groups.
pub const GROUPS: [&str; 3] = ["A_C_E", "B", "D"];

/// Each container's groups once the scenario is set up.
pub fn groups() -> Vec<Vec<String>> {
    WORKLOADS
        .iter()
        .map(|w| {
            let g = match w.net {
                Net::Driver(net) => NETWORKS.iter().find(|n| n.1 == net).map_or("", |n| n.2),
                Net::Seed(_, g) => g,
            };
            vec![g.to_string()]
        })
        .collect()
}

/// What `allowed` says, with the pairs across hosts cut: what a cluster whose hosts
/// exchange no routes can do.
pub fn same_host_only(m: &[Vec<bool>]) -> Vec<Vec<bool>> {
    m.iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(|(j, ok)| *ok && WORKLOADS[i].host == WORKLOADS[j].host)
                .collect()
        })
        .collect()
}

/// The reachable pairs of a matrix, e.g. `[A->C C->A]`.
pub fn show(m: &[Vec<bool>]) -> String {
    let short = |i: usize| WORKLOADS[i].name.trim_start_matches("workload-");
    let mut out = Vec::new();
    for (i, row) in m.iter().enumerate() {
        for (j, ok) in row.iter().enumerate() {
            if *ok {
                out.push(format!("{}->{}", short(i), short(j)));
            }
        }
    }
    format!("[{}]", out.join(" "))
}

/// A running container's Calico address: the driver's from `docker inspect`, the
/// seed's from inside the container once the agent has given it one.
pub fn address(d: &DockerHost, w: &Wl) -> Option<String> {
    match w.net {
        Net::Driver(net) => Some(d.ip_on(w.name, net)).filter(|a| !a.is_empty()),
        Net::Seed(..) => seed_ip(d, w.name),
    }
}

/// Who reaches whom among [`WORKLOADS`] (addresses `ips`): `ping(docker, from, to)`
/// for every ordered pair, all at once.
pub fn measure_with(
    docker: &[DockerHost],
    ips: &[String],
    ping: impl Fn(&DockerHost, &str, &str) -> bool + Sync,
) -> Vec<Vec<bool>> {
    let ping = &ping;
    std::thread::scope(|s| {
        let rows: Vec<Vec<_>> = WORKLOADS
            .iter()
            .enumerate()
            .map(|(i, w)| {
                (0..WORKLOADS.len())
                    .map(|j| {
                        let (d, ip) = (&docker[w.host], &ips[j]);
                        s.spawn(move || i != j && ping(d, w.name, ip))
                    })
                    .collect()
            })
            .collect();
        rows.into_iter()
            .map(|r| r.into_iter().map(|h| h.join().unwrap_or(false)).collect())
            .collect()
    })
}

/// One host's running agent (and BIRD), however it was started; stopped on drop.
pub trait SeedNode {
    fn name(&self) -> &str;
    /// Where BIRD's control socket and config are.
    fn run_dir(&self) -> &Path;
    /// The agent's and BIRD's logs.
    fn logs(&self) -> String;
    /// `calicoctl status` for this node: whether it exited 0, and its output.
    fn status(&self) -> (bool, String);
}

impl SeedNode for ContainerNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn run_dir(&self) -> &Path {
        &self.run_dir
    }
    fn logs(&self) -> String {
        ContainerNode::logs(self)
    }
    fn status(&self) -> (bool, String) {
        ContainerNode::status(self)
    }
}

impl SeedNode for CtlNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn run_dir(&self) -> &Path {
        &self.run_dir
    }
    fn logs(&self) -> String {
        CtlNode::logs(self)
    }
    fn status(&self) -> (bool, String) {
        CtlNode::status(self)
    }
}

/// How each host's agent is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeMode {
    /// `calicoctl node --ip ...`: the agent and BIRD as host processes.
    HostProcess,
    /// `calicoctl node --docker --ip ...`: the agent and BIRD in a container of the
    /// host's dockerd.
    Container,
}

impl NodeMode {
    /// Starts fabric host `i`'s agent for dockerd `d`, with `extra` flags of
    /// `calicoctl node` (e.g. `--as 64512`).
    pub fn start(self, c: &Cluster, i: usize, d: &DockerHost, extra: &[&str]) -> anyhow::Result<Box<dyn SeedNode>> {
        match self {
            NodeMode::HostProcess => Ok(Box::new(CtlNode::start(c, i, d, extra)?.0)),
            NodeMode::Container => Ok(Box::new(ContainerNode::start(c, i, d, extra)?.0)),
        }
    }
}

/// The scenario, set up. Fields drop in order: containers first (while their agents
/// still answer the plugin), then the agents, then the hosts and etcd.
pub struct Seed5 {
    pub docker: [DockerHost; 2],
    pub nodes: Vec<Box<dyn SeedNode>>,
    /// The containers' addresses, in [`WORKLOADS`] order.
    pub ips: Vec<String>,
    pub mode: NodeMode,
    pub c: Cluster,
}

impl Seed5 {
    /// etcd, two hosts, `base` applied (an IPPool at least), a dockerd and an agent
    /// (started with `node_args[i]`) on each, the groups, networks and five containers,
    /// each with its address. Does not wait for BGP.
    pub fn start(mode: NodeMode, base: &str, node_args: [&[&str]; 2]) -> anyhow::Result<Seed5> {
        let c = Cluster::new(2)?;
        c.apply(base)?;
        let (n1, n2) = (c.host_ns(0).path(), c.host_ns(1).path());
        let t1 = std::thread::spawn(move || DockerHost::start(&n1));
        let t2 = std::thread::spawn(move || DockerHost::start(&n2));
        let d1 = t1.join().map_err(|_| anyhow::anyhow!("dockerd 1 panicked"))??;
        let d2 = t2.join().map_err(|_| anyhow::anyhow!("dockerd 2 panicked"))??;
        let mut s = Seed5 {
            docker: [d1, d2],
            nodes: Vec::new(),
            ips: Vec::new(),
            mode,
            c,
        };
        for (i, extra) in node_args.iter().enumerate() {
            let node = mode.start(&s.c, i, &s.docker[i], extra)?;
            s.nodes.push(node);
        }
        for d in &s.docker {
            d.wait_for_plugin()?;
        }
        for g in GROUPS {
            s.c.ctl(&["addgroup", g])?;
        }
        for (h, net, group) in NETWORKS {
            calico_net(&s.docker[h], &["-o", &format!("group={group}")], net);
        }
        for w in &WORKLOADS {
            let net: Vec<String> = match w.net {
                Net::Driver(net) => vec!["--net".into(), net.into()],
                Net::Seed(ip, _) => vec!["--net=none".into(), "-e".into(), format!("CALICO_IP={ip}")],
            };
            let net: Vec<&str> = net.iter().map(String::as_str).collect();
            s.docker[w.host].run(w.name, &net);
        }
        for w in &WORKLOADS {
            if let Net::Seed(_, group) = w.net {
                let host = s.docker[w.host].host();
                if let Err(e) = s.c.ctl(&["--docker-host", &host, "addtogroup", w.name, group]) {
                    bail!("{e:#}\n{}", s.logs());
                }
            }
        }
        for w in &WORKLOADS {
            let d = &s.docker[w.host];
            let mut got = None;
            if !wait_for(Duration::from_secs(20), || {
                got = address(d, w);
                got.is_some()
            }) {
                bail!("{} never got an address\n{}", w.name, s.logs());
            }
            s.ips.push(got.unwrap_or_default());
        }
        Ok(s)
    }

    /// Stops host `i`'s agent and BIRD (`node stop --force`: the containers keep their
    /// interfaces) and starts it again with `extra`, as a user re-runs `calicoctl node`
    /// with other flags.
    pub fn restart_node(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        // The old guard goes first: a run directory holds one agent.
        drop(self.nodes.remove(i));
        let node = self.mode.start(&self.c, i, &self.docker[i], extra)?;
        self.nodes.insert(i, node);
        Ok(())
    }

    /// Who reaches whom: one ping per ordered pair from inside the container's network
    /// namespace (a second for a lost first), all at once.
    pub fn measure(&self) -> Vec<Vec<bool>> {
        measure_with(&self.docker, &self.ips, |d, from, to| {
            d.ping(from, to) || d.ping(from, to)
        })
    }

    /// Measures until the matrix is `want` (within `timeout`); the last one measured
    /// as the error otherwise.
    pub fn await_matrix(&self, want: &[Vec<bool>], timeout: Duration) -> Result<(), String> {
        let mut got = Vec::new();
        if wait_for(timeout, || {
            got = self.measure();
            got == want
        }) {
            Ok(())
        } else {
            Err(format!("measured {} but want {}", show(&got), show(want)))
        }
    }

    /// `birdc -s <run-dir>/bird.ctl ARGS` on host `i`; empty when BIRD does not answer.
    pub fn birdc(&self, i: usize, args: &[&str]) -> String {
        birdc_at(self.nodes[i].run_dir(), args)
    }

    /// Host `i`'s BGP sessions as BIRD has them: (protocol name, established).
    pub fn sessions(&self, i: usize) -> Vec<(String, bool)> {
        bird_sessions(self.nodes[i].run_dir())
    }

    /// Whether host `i` has exactly one BGP session, its name starting with `prefix`
    /// (`Mesh_`, `Peer_`), and it is Established.
    pub fn one_session_up(&self, i: usize, prefix: &str) -> bool {
        matches!(&self.sessions(i)[..], [(name, true)] if name.starts_with(prefix))
    }

    pub fn bird_conf(&self, i: usize) -> String {
        std::fs::read_to_string(self.run_dir(i).join("bird.conf")).unwrap_or_default()
    }

    pub fn run_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].run_dir().to_path_buf()
    }

    /// Host `i`'s kernel routes that BIRD installed (learned over BGP).
    pub fn bgp_routes(&self, i: usize) -> anyhow::Result<String> {
        self.c
            .host_ns(i)
            .exec(&["ip", "route", "show", "proto", "bird"])
            .context("ip route show proto bird")
    }

    /// Every node's logs and `calicoctl status`, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("===== {} status:\n{}\n{}", n.name(), n.status().1, n.logs()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::allowed;

    #[test]
    fn the_seeds_groups_allow_a_c_e_among_themselves_only() {
        let m = allowed(&groups());
        assert_eq!(show(&m), "[A->C A->E C->A C->E E->A E->C]");
        // Cut across hosts, only A and C (both on host1) remain.
        assert_eq!(show(&same_host_only(&m)), "[A->C C->A]");
    }
}
