//! Deltas: a table built by [`NftTable::delta`] after every change equals the table
//! rendered from scratch.
//!
//! - `deltas_replay_to_the_rendered_table` (no root): thousands of random change
//!   sequences; every delta is replayed on a model of nft's table that refuses what nft
//!   refuses (a reference to a chain or set that does not exist, deleting a chain that
//!   still has rules or is jumped to, adding an element twice), and after every step
//!   the model must equal the whole batch's.
//! - `deltas_equal_whole_loads_in_the_kernel` (root): the same sequences against the
//!   kernel: one namespace gets each delta, another each whole table, and their
//!   `nft -j list table` listings must be the same (handles, counters and element order
//!   aside).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use calico_render::{render_nft, Delta, NftTable, NodeView};
use calico_schema::{object, ClusterConfigSpec, ContainerSpec, EndpointToHostAction, IpPoolSpec, Kind, Resource};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

// ------------------------------------------------------------------ change sequences

/// The cluster as a test changes it: a scenario, containers taken out of it, and the
/// two settings that reshape the base chains.
struct World {
    rs: Vec<Resource>,
    aside: Vec<Resource>,
    action: Option<EndpointToHostAction>,
    nat: bool,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            rs: gen_scenario(seed),
            aside: Vec::new(),
            action: None,
            nat: false,
        }
    }

    /// One random change, of the kinds the agent sees: a container comes or goes,
    /// changes groups, everything changes, or a cluster setting does.
    fn step(&mut self, rng: &mut StdRng) -> &'static str {
        match rng.random_range(0..100) {
            0..30 => {
                let here: Vec<usize> = (0..self.rs.len())
                    .filter(|i| matches!(self.rs[*i], Resource::Container(_)))
                    .collect();
                if here.is_empty() {
                    return "nothing to remove";
                }
                let i = here[rng.random_range(0..here.len())];
                self.aside.push(self.rs.remove(i));
                "container removed"
            }
            30..50 => {
                if self.aside.is_empty() {
                    return "nothing to add";
                }
                let i = rng.random_range(0..self.aside.len());
                self.rs.push(self.aside.remove(i));
                "container added"
            }
            50..70 => {
                for r in &mut self.rs {
                    if let Resource::Container(c) = r {
                        if rng.random_bool(0.5) {
                            let g = GROUPS[rng.random_range(0..GROUPS.len())].to_string();
                            if let Some(at) = c.spec.groups.iter().position(|x| *x == g) {
                                c.spec.groups.remove(at);
                            } else {
                                c.spec.groups.push(g);
                            }
                            return "groups changed";
                        }
                    }
                }
                "no groups changed"
            }
            70..85 => {
                self.rs = gen_scenario(rng.next_u64());
                self.aside.clear();
                "everything changed"
            }
            85..93 => {
                self.action = [
                    None,
                    Some(EndpointToHostAction::Drop),
                    Some(EndpointToHostAction::Accept),
                    Some(EndpointToHostAction::Return),
                ][rng.random_range(0..4)];
                "endpointToHostAction changed"
            }
            _ => {
                self.nat = !self.nat;
                "natOutgoing toggled"
            }
        }
    }

    fn table(&self) -> NftTable {
        let mut rs = self.rs.clone();
        rs.push(Resource::ClusterConfig(object(
            Kind::ClusterConfig,
            "default",
            ClusterConfigSpec {
                endpoint_to_host_action: self.action,
                ..Default::default()
            },
        )));
        rs.push(Resource::IpPool(object(
            Kind::IPPool,
            "pool",
            IpPoolSpec {
                cidr: "10.65.0.0/24".parse().expect("cidr"),
                block_size: None,
                nat_outgoing: self.nat,
                disabled: false,
            },
        )));
        let view = NodeView::build(NODE, &rs, &BTreeMap::new(), &["10.65.0.0/26".parse().expect("net")]);
        render_nft(&view)
    }
}

// ------------------------------------------------------------------ a model of nft's table

/// What a table holds, keyed so that order does not matter where nft's does not
/// (elements) and does where it does (rules in a chain).
#[derive(Debug, Default, PartialEq)]
struct Model {
    exists: bool,
    /// Name to declaration and rules (each with the chains and sets it refers to).
    chains: BTreeMap<String, (String, Vec<Rule>)>,
    sets: BTreeMap<String, (String, BTreeSet<String>)>,
    maps: BTreeMap<String, (String, BTreeMap<String, String>)>,
}

#[derive(Debug, PartialEq)]
struct Rule {
    json: String,
    chains: Vec<String>,
    sets: Vec<String>,
}

fn s(v: &Value) -> String {
    v.to_string()
}

fn name_of(o: &Value) -> String {
    o["name"].as_str().unwrap_or_default().to_string()
}

/// The declaration of a chain, set or map without its name, handle and elements.
fn decl(o: &Value) -> String {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["name", "handle", "elem"] {
            m.remove(k);
        }
    }
    s(&o)
}

fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(v);
    match v {
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        Value::Object(m) => m.values().for_each(|x| walk(x, out)),
        _ => {}
    }
}

/// Chains jumped to and sets named (`@set`) anywhere inside `v`.
fn refs(v: &Value) -> (Vec<String>, Vec<String>) {
    let mut all = Vec::new();
    walk(v, &mut all);
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    for x in all {
        if let Some(t) = x.get("jump").or_else(|| x.get("goto")).and_then(|j| j.get("target")) {
            chains.push(t.as_str().unwrap_or_default().to_string());
        }
        if let Some(name) = x.as_str().and_then(|t| t.strip_prefix('@')) {
            sets.push(name.to_string());
        }
    }
    (chains, sets)
}

impl Model {
    fn referenced_chain(&self, chain: &str) -> bool {
        self.chains
            .values()
            .any(|(_, rules)| rules.iter().any(|r| r.chains.iter().any(|c| c == chain)))
            || self
                .maps
                .values()
                .any(|(_, e)| e.values().any(|v| v.contains(&format!("\"{chain}\""))))
    }

    fn referenced_set(&self, set: &str) -> bool {
        self.chains
            .values()
            .any(|(_, rules)| rules.iter().any(|r| r.sets.iter().any(|x| x == set)))
    }

    fn apply(&mut self, batch: &Value) -> Result<(), String> {
        for cmd in batch["nftables"].as_array().ok_or("no nftables array")? {
            let (verb, body) = cmd.as_object().and_then(|m| m.iter().next()).ok_or("empty command")?;
            let (kind, o) = body.as_object().and_then(|m| m.iter().next()).ok_or("empty object")?;
            let name = name_of(o);
            match (verb.as_str(), kind.as_str()) {
                ("add", "table") => self.exists = true,
                ("delete", "table") => *self = Model::default(),
                _ if !self.exists => return Err(format!("{verb} {kind} {name}: no table")),
                ("add", "chain") => {
                    if self.chains.insert(name.clone(), (decl(o), Vec::new())).is_some() {
                        return Err(format!("add chain {name}: exists"));
                    }
                }
                ("add", "set") | ("add", "map") => {
                    if self.sets.contains_key(&name) || self.maps.contains_key(&name) {
                        return Err(format!("add {kind} {name}: exists"));
                    }
                    let elems = o["elem"].as_array().cloned().unwrap_or_default();
                    if kind == "set" {
                        self.sets.insert(name, (decl(o), elems.iter().map(s).collect()));
                    } else {
                        let mut m = BTreeMap::new();
                        for e in &elems {
                            let (chains, _) = refs(&e[1]);
                            if let Some(c) = chains.iter().find(|c| !self.chains.contains_key(*c)) {
                                return Err(format!("add map {name}: jump to missing chain {c}"));
                            }
                            m.insert(s(&e[0]), s(&e[1]));
                        }
                        self.maps.insert(name, (decl(o), m));
                    }
                }
                ("add", "element") | ("delete", "element") => {
                    let elems = o["elem"].as_array().ok_or("element without elem")?;
                    if let Some((_, set)) = self.sets.get_mut(&name) {
                        for e in elems {
                            let fresh = if verb == "add" {
                                set.insert(s(e))
                            } else {
                                set.remove(&s(e))
                            };
                            if !fresh {
                                return Err(format!("{verb} element {e} in {name}: already so"));
                            }
                        }
                    } else if self.maps.contains_key(&name) {
                        for e in elems {
                            if verb == "add" {
                                let (chains, _) = refs(&e[1]);
                                if let Some(c) = chains.iter().find(|c| !self.chains.contains_key(*c)) {
                                    return Err(format!("add element in {name}: jump to missing chain {c}"));
                                }
                            }
                            let map = &mut self.maps.get_mut(&name).expect("checked").1;
                            let ok = if verb == "add" {
                                map.insert(s(&e[0]), s(&e[1])).is_none()
                            } else {
                                map.remove(&s(e)).is_some()
                            };
                            if !ok {
                                return Err(format!("{verb} element {e} in map {name}: already so"));
                            }
                        }
                    } else {
                        return Err(format!("{verb} element in missing set {name}"));
                    }
                }
                ("add", "rule") => {
                    let chain = o["chain"].as_str().unwrap_or_default().to_string();
                    let rule = serde_json::json!({"expr": o["expr"], "comment": o.get("comment")});
                    let (chains, sets) = refs(&rule);
                    if let Some(c) = chains.iter().find(|c| !self.chains.contains_key(*c)) {
                        return Err(format!("rule in {chain}: jump to missing chain {c}"));
                    }
                    if let Some(x) = sets
                        .iter()
                        .find(|x| !self.sets.contains_key(*x) && !self.maps.contains_key(*x))
                    {
                        return Err(format!("rule in {chain}: missing set @{x}"));
                    }
                    self.chains
                        .get_mut(&chain)
                        .ok_or(format!("rule in missing chain {chain}"))?
                        .1
                        .push(Rule {
                            json: s(&rule),
                            chains,
                            sets,
                        });
                }
                ("flush", "chain") => self
                    .chains
                    .get_mut(&name)
                    .ok_or(format!("flush missing chain {name}"))?
                    .1
                    .clear(),
                ("delete", "chain") => {
                    let (_, rules) = self.chains.get(&name).ok_or(format!("delete missing chain {name}"))?;
                    if !rules.is_empty() {
                        return Err(format!("delete chain {name}: it still has rules"));
                    }
                    if self.referenced_chain(&name) {
                        return Err(format!("delete chain {name}: still jumped to"));
                    }
                    self.chains.remove(&name);
                }
                ("delete", "set") => {
                    if self.referenced_set(&name) {
                        return Err(format!("delete set {name}: still used"));
                    }
                    self.sets.remove(&name).ok_or(format!("delete missing set {name}"))?;
                }
                (v, k) => return Err(format!("the model does not know `{v} {k}`")),
            }
        }
        Ok(())
    }
}

fn json(t: &NftTable) -> Value {
    serde_json::to_value(t.to_batch()).expect("batch json")
}

#[test]
fn deltas_replay_to_the_rendered_table() {
    let sequences: u64 = std::env::var("DELTA_SEQUENCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let (mut patches, mut wholes, mut unchanged) = (0, 0, 0);
    for seed in 0..sequences {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut world = World::new(seed);
        let mut committed = world.table();
        let mut kernel = Model::default();
        kernel.apply(&json(&committed)).expect("whole load");
        for step in 0..6 {
            let what = world.step(&mut rng);
            let wanted = world.table();
            let delta = wanted.delta(&committed);
            // Unchanged exactly when the tables are equal (the delta finds it by its
            // walk, with no whole-table compare first).
            assert_eq!(
                matches!(delta, Delta::Unchanged),
                wanted == committed,
                "seed {seed} step {step} ({what})"
            );
            if matches!(delta, Delta::Patch(_)) {
                assert_ne!(
                    wanted, committed,
                    "seed {seed} step {step} ({what}): a patch of equal tables"
                );
            }
            match delta {
                Delta::Patch(batch) => {
                    patches += 1;
                    let b = serde_json::to_value(batch.to_batch()).expect("delta json");
                    kernel
                        .apply(&b)
                        .unwrap_or_else(|e| panic!("seed {seed} step {step} ({what}): {e}\n{b:#}"));
                }
                Delta::Whole(_) => {
                    wholes += 1;
                    kernel.apply(&json(&wanted)).expect("whole load");
                }
                Delta::Unchanged => unchanged += 1,
            }
            let mut fresh = Model::default();
            fresh.apply(&json(&wanted)).expect("whole load");
            assert!(
                kernel == fresh,
                "seed {seed} step {step} ({what}): the delta-built table differs"
            );
            committed = wanted;
        }
    }
    eprintln!("{sequences} sequences: {patches} deltas, {wholes} whole loads, {unchanged} unchanged");
    assert!(patches > wholes, "most changes must be deltas");
}

/// One container more on a node of a hundred: the delta holds that container's chains
/// and elements, and no rule that lists every interface.
#[test]
fn one_container_more_is_a_small_delta() {
    let mut rs: Vec<Resource> = (0..100)
        .map(|i| {
            Resource::Container(object(
                Kind::Container,
                format!("c{i}"),
                ContainerSpec {
                    node: NODE.into(),
                    ips: Some(vec![std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 65, 1, i as u8))]),
                    groups: vec!["G0".into()],
                    ..Default::default()
                },
            ))
        })
        .collect();
    let view = |rs: &[Resource]| NodeView::build(NODE, rs, &BTreeMap::new(), &["10.65.0.0/16".parse().expect("net")]);
    let before = render_nft(&view(&rs));
    let Resource::Container(mut extra) = rs[0].clone() else {
        unreachable!()
    };
    extra.metadata.name = "new".into();
    extra.spec.ips = Some(vec!["10.65.2.1".parse().expect("ip")]);
    rs.push(Resource::Container(extra));
    let after = render_nft(&view(&rs));
    let Delta::Patch(batch) = after.delta(&before) else {
        panic!("not a delta")
    };
    let whole = after.to_batch().to_json_bytes().len();
    let delta = batch.to_batch().to_json_bytes();
    let text = String::from_utf8_lossy(&delta);
    assert!(delta.len() * 20 < whole, "delta {} bytes, whole {whole}", delta.len());
    // Nothing of the hundred others: no rule or set was rewritten with every interface.
    assert!(!text.contains(&calico_render::host_iface_name("cali", "c7")), "{text}");
    assert_eq!(
        batch.rules_added(),
        6,
        "from- (4 rules) and to- (2) chains of the new one: {text}"
    );
    assert!(matches!(after.delta(&after), Delta::Unchanged));
}

/// Counters live in the rules, so a rewritten chain starts its counters again: a change
/// to one policy's ingress rules rewrites that chain only, and a workload coming or
/// going rewrites no policy or group chain at all (their counters keep counting).
#[test]
fn rule_changes_rewrite_only_their_own_chain() {
    let yaml = |db_port: u16, extra: bool| {
        let mut y = format!(
            "apiVersion: calico/v1\nkind: Group\nmetadata: {{name: G0}}\nspec: {{}}\n---\n\
             apiVersion: calico/v1\nkind: Policy\nmetadata: {{name: db}}\nspec:\n  selector: all()\n  types: [Ingress, Egress]\n  \
             ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {{ports: [{db_port}]}}\n  \
             egress:\n  - action: Allow\n    protocol: TCP\n    destination: {{ports: [53]}}\n---\n\
             apiVersion: calico/v1\nkind: Policy\nmetadata: {{name: web}}\nspec:\n  selector: all()\n  \
             ingress:\n  - action: Deny\n    protocol: TCP\n    destination: {{ports: [80]}}\n"
        );
        for i in 0..(if extra { 4 } else { 3 }) {
            y.push_str(&format!(
                "---\napiVersion: calico/v1\nkind: Container\nmetadata: {{name: c{i}}}\nspec: {{node: {NODE}, netns: /run/netns/c{i}, ips: [10.65.0.{}], groups: [G0]}}\n",
                i + 1
            ));
        }
        let rs: Vec<Resource> = calico_schema::load_str("test.yaml", &y)
            .unwrap_or_else(|d| panic!("{d}"))
            .into_iter()
            .map(|l| l.resource)
            .collect();
        render_nft(&NodeView::build(
            NODE,
            &rs,
            &BTreeMap::new(),
            &["10.65.0.0/26".parse().expect("net")],
        ))
    };
    let flushed = |new: &NftTable, old: &NftTable| -> Vec<String> {
        let Delta::Patch(p) = new.delta(old) else {
            panic!("not a patch")
        };
        let text = p.to_text().expect("text");
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("flush chain inet calico "))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let base = yaml(5432, false);
    let chains = flushed(&yaml(5433, false), &base);
    assert_eq!(chains, vec![calico_render::short_name("pol-in-", "db")], "{chains:?}");
    let chains = flushed(&yaml(5432, true), &base);
    assert!(
        chains.iter().all(|c| !c.starts_with("pol-") && !c.starts_with("grp-")),
        "{chains:?}"
    );
}

// ------------------------------------------------------------------ against the kernel

fn nft(ns: &Netns, args: &[&str], stdin: Option<&[u8]>) -> Result<String, String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .map_err(|e| e.to_string())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `nft -j list table inet calico`, with what two equal tables may differ in removed:
/// handles, counter values, metainfo, element order, and the order objects were made in
/// (rules keep their order inside their chain).
fn listing(ns: &Netns) -> Vec<String> {
    let text = nft(ns, &["-j", "list", "table", "inet", "calico"], None).expect("list table");
    let v: Value = serde_json::from_str(&text).expect("listing json");
    fn scrub(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                if let Some(Value::Object(c)) = m.get_mut("counter") {
                    c.remove("packets");
                    c.remove("bytes");
                }
                if let Some(Value::Array(e)) = m.get_mut("elem") {
                    e.sort_by_key(std::string::ToString::to_string);
                }
                m.values_mut().for_each(scrub);
            }
            Value::Array(a) => a.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    let mut objs: Vec<(String, String)> = v["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .map(|o| {
            let mut o = o.clone();
            scrub(&mut o);
            let (kind, body) = o.as_object().and_then(|m| m.iter().next()).expect("object");
            let key = match kind.as_str() {
                "rule" => format!("rule {}", body["chain"].as_str().unwrap_or_default()),
                k => format!("{k} {}", body["name"].as_str().unwrap_or_default()),
            };
            (key, o.to_string())
        })
        .collect();
    objs.sort_by(|a, b| a.0.cmp(&b.0));
    objs.into_iter().map(|(k, o)| format!("{k}: {o}")).collect()
}

#[test]
fn deltas_equal_whole_loads_in_the_kernel() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        if std::env::var_os("CALICO_ALLOW_SKIP").is_some() {
            eprintln!("skipped: needs root (network namespaces, nft)");
            return;
        }
        panic!("needs root (network namespaces, nft); CALICO_ALLOW_SKIP=1 to skip");
    }
    let by_delta = Netns::new("d");
    let by_whole = Netns::new("w");
    let (mut patches, mut steps) = (0, 0);
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let mut world = World::new(1000 + seed);
        // Odd seeds send everything to the delta namespace as text (as the agent does),
        // even ones as JSON; the other namespace always gets whole JSON loads.
        let as_text = seed % 2 == 1;
        let args: &[&str] = if as_text { &["-f", "-"] } else { &["-j", "-f", "-"] };
        let whole = |t: &NftTable| {
            if as_text {
                t.to_load_text().expect("printable").into_bytes()
            } else {
                t.to_batch().to_json_bytes()
            }
        };
        let mut committed = world.table();
        nft(&by_delta, args, Some(&whole(&committed))).expect("first load");
        for step in 0..8 {
            let what = world.step(&mut rng);
            let wanted = world.table();
            let sent = match wanted.delta(&committed) {
                Delta::Patch(batch) => {
                    patches += 1;
                    if as_text {
                        batch.to_text().expect("printable").into_bytes()
                    } else {
                        batch.to_batch().to_json_bytes()
                    }
                }
                Delta::Whole(_) => whole(&wanted),
                Delta::Unchanged => Vec::new(),
            };
            if !sent.is_empty() {
                nft(&by_delta, args, Some(&sent)).unwrap_or_else(|e| {
                    panic!(
                        "seed {seed} step {step} ({what}): nft refused the delta: {e}\n{}",
                        String::from_utf8_lossy(&sent)
                    )
                });
            }
            nft(&by_whole, &["-j", "-f", "-"], Some(&wanted.to_batch().to_json_bytes())).expect("whole load");
            let (d, w) = (listing(&by_delta), listing(&by_whole));
            if d != w {
                let only_d: Vec<&String> = d.iter().filter(|x| !w.contains(x)).collect();
                let only_w: Vec<&String> = w.iter().filter(|x| !d.contains(x)).collect();
                panic!("seed {seed} step {step} ({what}): tables differ\nonly by delta: {only_d:#?}\nonly whole: {only_w:#?}");
            }
            // The read-back after deltas: the kernel's text listing of a table built by
            // deltas is the printed whole table (normalised as the agent compares).
            let listed = calico_render::normalize_listing(&text_listing(&by_delta));
            let printed = calico_render::normalize_listing(&wanted.to_text().expect("printable"));
            assert!(
                listed == printed,
                "seed {seed} step {step} ({what}): the listing after deltas is not the printed table\n{}",
                first_difference(&printed, &listed)
            );
            steps += 1;
            committed = wanted;
        }
    }
    eprintln!("{steps} steps, {patches} of them deltas, all equal to whole loads in the kernel");
    assert!(patches * 2 > steps);
}

// ------------------------------------------------------------------ nft's own syntax

fn needs_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        if std::env::var_os("CALICO_ALLOW_SKIP").is_some() {
            eprintln!("skipped: needs root (network namespaces, nft)");
            return false;
        }
        panic!("needs root (network namespaces, nft); CALICO_ALLOW_SKIP=1 to skip");
    }
    true
}

/// `nft list table inet calico` (text), as the kernel has it.
fn text_listing(ns: &Netns) -> String {
    nft(ns, &["list", "table", "inet", "calico"], None).expect("list table")
}

/// The first line where two texts differ, with context, for a readable failure.
fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let at = la
        .iter()
        .zip(&lb)
        .position(|(x, y)| x != y)
        .unwrap_or(la.len().min(lb.len()));
    format!(
        "line {}:\n  printed: {:?}\n  listed:  {:?}",
        at + 1,
        la.get(at).unwrap_or(&"<end>"),
        lb.get(at).unwrap_or(&"<end>")
    )
}

/// Every random table of the change sequences, loaded whole as text: nft lists exactly
/// the printed text, but for the order of a hash set's elements (the kernel's; the
/// comparison sorts them, `normalize_listing`). The same table loaded as JSON into
/// another namespace is the same table (`nft -j list`, compared as the delta test does).
#[test]
fn text_is_what_nft_lists_and_loads_as_json_does() {
    if !needs_root() {
        return;
    }
    let by_text = Netns::new("t");
    let by_json = Netns::new("j");
    let mut tables = 0;
    // TEXT_SEEDS=200 for a longer run.
    let seeds: u64 = std::env::var("TEXT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(2000 + seed);
        let mut world = World::new(2000 + seed);
        for step in 0..6 {
            let what = if step == 0 { "first" } else { world.step(&mut rng) };
            let t = world.table();
            let text = t.to_text().expect("printable");
            nft(
                &by_text,
                &["-f", "-"],
                Some(t.to_load_text().expect("printable").as_bytes()),
            )
            .unwrap_or_else(|e| panic!("seed {seed} step {step} ({what}): nft refused the text: {e}\n{text}"));
            nft(&by_json, &["-j", "-f", "-"], Some(&t.to_batch().to_json_bytes())).expect("json load");
            let listed = text_listing(&by_text);
            let (want, got) = (
                calico_render::normalize_listing(&text),
                calico_render::normalize_listing(&listed),
            );
            assert!(
                want == got,
                "seed {seed} step {step} ({what}): nft lists another text\n{}\nprinted:\n{text}\nlisted:\n{listed}",
                first_difference(&want, &got)
            );
            // Sets, maps and chains are listed in the order the text made them.
            let heads = |t: &str| -> Vec<String> {
                t.lines()
                    .filter(|l| l.starts_with("\tset ") || l.starts_with("\tmap ") || l.starts_with("\tchain "))
                    .map(str::to_string)
                    .collect()
            };
            assert_eq!(
                heads(&text),
                heads(&listed),
                "seed {seed} step {step}: objects in another order"
            );
            let (a, b) = (listing(&by_text), listing(&by_json));
            assert!(a == b, "seed {seed} step {step} ({what}): text and JSON loads differ");
            tables += 1;
        }
    }
    eprintln!("{tables} tables: text listed as printed, and equal to the JSON load");
}

/// Every golden scenario's nft.txt (render/tests/golden) loaded as text lists as
/// written, and no rule compiles to one 4-byte `cmp neq` of both transport ports: the
/// nft 1.0.6 merge that would turn `sport != A dport != B` into "not both"
/// (`keep_port_negations_apart`); every_rule_field has such a rule.
#[test]
fn golden_text_lists_as_written_and_keeps_port_negations_apart() {
    if !needs_root() {
        return;
    }
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&golden)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("nft.txt").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "golden nft.txt files: {}", dirs.len());
    let mut negations = 0;
    for dir in &dirs {
        let text = std::fs::read_to_string(dir.join("nft.txt")).expect("nft.txt");
        negations += text.matches("sport != ").filter(|_| text.contains("dport != ")).count();
        let ns = Netns::new("g");
        nft(&ns, &["-f", "-"], Some(text.as_bytes())).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let listed = text_listing(&ns);
        let (want, got) = (
            calico_render::normalize_listing(&text),
            calico_render::normalize_listing(&listed),
        );
        assert!(want == got, "{}: {}", dir.display(), first_difference(&want, &got));
        let code = nft(&ns, &["--debug=netlink", "list", "table", "inet", "calico"], None).expect("bytecode");
        let lines: Vec<&str> = code.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("payload load 4b @ transport header + 0") {
                assert!(
                    !lines.get(i + 1).is_some_and(|n| n.contains("cmp neq")),
                    "{}: both ports compared as one:\n{}",
                    dir.display(),
                    lines[i.saturating_sub(6)..(i + 2).min(lines.len())].join("\n")
                );
            }
        }
    }
    assert!(negations > 0, "no golden rule negates both ports");
}
