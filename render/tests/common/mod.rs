//! What the render tests that run nft share: the random scenario generator (groups,
//! policies and six containers on one node) and network namespaces that clean up.
#![allow(dead_code)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use calico_schema::{
    object, Action, Cidr, ContainerSpec, EntityRule, GroupSpec, IcmpMatch, IpVersion, Kind, PolicySpec, PolicyType,
    Port, Protocol, Resource, Rule,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const NODE: &str = "host";
pub const PORTS: [u16; 7] = [22, 80, 443, 5432, 8080, 8443, 9000];
pub const GROUPS: [&str; 4] = ["G0", "G1", "G2", "G3"];
pub const N_WORKLOADS: usize = 6;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace removed on drop, panics included.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "cdt{}{tag}{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        Netns(name)
    }
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        run(&v);
    }
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        run(&v);
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

// std already links the C library; declaring the two calls we need saves a dependency.
extern "C" {
    pub fn setns(fd: i32, nstype: i32) -> i32;
    pub fn geteuid() -> u32;
}
pub const CLONE_NEWNET: i32 = 0x4000_0000;

pub fn wl_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 65, 0, (i + 1) as u8)
}

pub fn load_table(host: &Netns, json: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.0, "nft", "-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(json.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -j -f -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub const SELECTORS: [&str; 10] = [
    "all()",
    "app == \"a\"",
    "app != \"b\"",
    "has(tier)",
    "!has(tier)",
    "tier in {\"x\"}",
    "group == \"G1\"",
    "app == \"a\" || tier == \"y\"",
    "node == \"host\"",
    "group in {\"G0\", \"G2\"} && app != \"c\"",
];

pub fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

pub fn gen_ports(rng: &mut StdRng) -> Vec<Port> {
    let n = rng.random_range(1..=3);
    (0..n)
        .map(|_| {
            if rng.random_bool(0.25) {
                let a = *pick(rng, &[20u16, 400, 5000, 8000]);
                Port::Range(a, a + rng.random_range(10..=1500))
            } else {
                Port::Single(*pick(rng, &PORTS))
            }
        })
        .collect()
}

pub fn gen_entity(rng: &mut StdRng, with_ports: bool, is_source: bool) -> EntityRule {
    let mut e = EntityRule::default();
    if rng.random_bool(0.15) {
        let mut gs = vec![pick(rng, &GROUPS).to_string()];
        if rng.random_bool(0.3) {
            gs.push(pick(rng, &["G0", "G3", "ghost"]).to_string());
        }
        gs.dedup();
        e.groups = gs;
    }
    if rng.random_bool(0.15) {
        e.selector = Some(pick(rng, &SELECTORS).to_string());
    }
    if rng.random_bool(0.1) {
        e.not_selector = Some(pick(rng, &SELECTORS[1..]).to_string());
    }
    let nets = |rng: &mut StdRng| -> Vec<Cidr> {
        let s = match rng.random_range(0..4) {
            0 => format!("{}/32", wl_ip(rng.random_range(0..N_WORKLOADS))),
            1 => "10.65.0.0/30".to_string(),
            2 => "10.65.0.0/24".to_string(),
            _ => "192.168.0.0/16".to_string(),
        };
        vec![s.parse().expect("cidr")]
    };
    if rng.random_bool(0.12) {
        e.nets = nets(rng);
    }
    if rng.random_bool(0.1) {
        e.not_nets = nets(rng);
    }
    if with_ports {
        if is_source {
            // Source ports come from the ephemeral range: only ranges wholly inside or
            // wholly outside it give a verdict the test can predict.
            if rng.random_bool(0.1) {
                e.ports = vec![*pick(rng, &[Port::Range(1024, 65535), Port::Range(1, 1023)])];
            }
        } else {
            if rng.random_bool(0.45) {
                e.ports = gen_ports(rng);
            }
            if rng.random_bool(0.15) {
                e.not_ports = gen_ports(rng);
            }
        }
    }
    e
}

pub fn gen_rule(rng: &mut StdRng) -> Rule {
    let action = match rng.random_range(0..100) {
        0..40 => Action::Allow,
        40..60 => Action::Deny,
        60..80 => Action::Pass,
        _ => Action::Log,
    };
    let protocol = match rng.random_range(0..100) {
        0..30 => None,
        30..70 => Some(Protocol::Tcp),
        70..90 => Some(Protocol::Icmp),
        _ => Some(Protocol::Udp),
    };
    let not_protocol = if protocol.is_none() && rng.random_bool(0.1) {
        Some(*pick(rng, &[Protocol::Tcp, Protocol::Icmp]))
    } else {
        None
    };
    let ip_version = match rng.random_range(0..100) {
        0..10 => Some(IpVersion::V4),
        10..14 if protocol != Some(Protocol::Icmp) => Some(IpVersion::V6),
        _ => None,
    };
    let icmp = if protocol == Some(Protocol::Icmp) && rng.random_bool(0.4) {
        Some(IcmpMatch {
            icmp_type: Some(*pick(rng, &[8u8, 0])),
            code: if rng.random_bool(0.3) {
                Some(*pick(rng, &[0u8, 1]))
            } else {
                None
            },
        })
    } else {
        None
    };
    let with_ports = protocol.is_some_and(|p| p.has_ports());
    Rule {
        action,
        protocol,
        not_protocol,
        ip_version,
        icmp,
        source: gen_entity(rng, with_ports, true),
        destination: gen_entity(rng, with_ports, false),
    }
}

pub fn gen_rules(rng: &mut StdRng, max: usize) -> Vec<Rule> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| gen_rule(rng)).collect()
}

pub fn gen_scenario(seed: u64) -> Vec<Resource> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rs = Vec::new();
    for g in GROUPS {
        let spec = if rng.random_bool(0.5) {
            GroupSpec::default()
        } else {
            GroupSpec {
                ingress: rng.random_bool(0.7).then(|| gen_rules(&mut rng, 3)),
                egress: rng.random_bool(0.5).then(|| gen_rules(&mut rng, 2)),
            }
        };
        rs.push(Resource::Group(object(Kind::Group, g, spec)));
    }
    for i in 0..N_WORKLOADS {
        let name = format!("w{i}");
        let mut groups: Vec<String> = Vec::new();
        for _ in 0..rng.random_range(1..=2) {
            let g = if rng.random_bool(0.1) {
                "ghost"
            } else {
                *pick(&mut rng, &GROUPS)
            };
            if !groups.iter().any(|x| x == g) {
                groups.push(g.to_string());
            }
        }
        let mut c = object(
            Kind::Container,
            name.clone(),
            ContainerSpec {
                node: NODE.into(),
                netns: Some(format!("/var/run/netns/{name}")),
                ips: Some(vec![IpAddr::V4(wl_ip(i))]),
                groups,
                ..Default::default()
            },
        );
        c.metadata
            .labels
            .insert("app".into(), pick(&mut rng, &["a", "b", "c"]).to_string());
        if rng.random_bool(0.5) {
            c.metadata
                .labels
                .insert("tier".into(), pick(&mut rng, &["x", "y"]).to_string());
        }
        rs.push(Resource::Container(c));
    }
    for p in 0..rng.random_range(3..=6) {
        let types = match rng.random_range(0..4) {
            0 => None,
            1 => Some(vec![PolicyType::Ingress]),
            2 => Some(vec![PolicyType::Egress]),
            _ => Some(vec![PolicyType::Ingress, PolicyType::Egress]),
        };
        let spec = PolicySpec {
            order: rng.random_bool(0.8).then(|| rng.random_range(0..5) * 10),
            selector: Some(pick(&mut rng, &SELECTORS).to_string()),
            types,
            ingress: gen_rules(&mut rng, 3),
            egress: gen_rules(&mut rng, 3),
        };
        rs.push(Resource::Policy(object(Kind::Policy, format!("p{p}"), spec)));
    }
    rs
}
