//! Render benchmark: 1k and 10k endpoints with 1k policies and 100 groups.
//!
//! `cargo bench -p calico-render --bench render` prints, per size: the time to build the
//! view and render each artefact, the peak heap the render needs (counted by a global
//! allocator, so the figure is exact and independent of the RSS the process already
//! had), the JSON size, and, when run as root, the time `nft -j -f` takes to load the
//! table into a scratch network namespace, next to `nft -f` of the same ruleset as text
//! (the floor) in another scratch namespace.
//!
//! Shape of the input: every endpoint is local (the worst case for one node); endpoint i
//! has label app=a(i mod 50) and is in group g(i mod 100); policy p selects app=a(p mod 50)
//! with two ingress rules (selector + ports, nets) and one egress rule (group + port).
//! So each endpoint is selected by 20 policies, and endpoints share 100 evaluation chains
//! per direction, as endpoints of one application do in a real cluster.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use calico_render::{render_bird, render_nft, render_routes, Delta, NodeView};
use calico_schema::{
    object, Action, ContainerSpec, EntityRule, GroupSpec, IpPoolSpec, Kind, NodeSpec, PolicySpec, Port, Protocol,
    Resource, Rule,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Ordering::Relaxed) + (new - l.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 65, (i / 250) as u8, (i % 250 + 1) as u8))
}

fn cluster(endpoints: usize, policies: usize, groups: usize) -> Vec<Resource> {
    let mut rs = Vec::new();
    rs.push(Resource::IpPool(object(
        Kind::IPPool,
        "v4",
        IpPoolSpec {
            cidr: "10.65.0.0/16".parse().expect("cidr"),
            block_size: None,
            nat_outgoing: true,
            disabled: false,
        },
    )));
    rs.push(Resource::Node(object(
        Kind::Node,
        "host1",
        NodeSpec {
            ipv4: Some("172.17.8.101/24".parse().expect("addr")),
            ..Default::default()
        },
    )));
    for g in 0..groups {
        rs.push(Resource::Group(object(
            Kind::Group,
            format!("g{g}"),
            GroupSpec::default(),
        )));
    }
    for p in 0..policies {
        let rule = |action, protocol, source: EntityRule, destination: EntityRule| Rule {
            action,
            protocol,
            source,
            destination,
            ..Rule::allow()
        };
        let spec = PolicySpec {
            order: Some((p % 100) as i64),
            selector: Some(format!("app == \"a{}\"", p % 50)),
            types: None,
            ingress: vec![
                rule(
                    Action::Allow,
                    Some(Protocol::Tcp),
                    EntityRule {
                        selector: Some(format!("app == \"a{}\"", (p + 1) % 50)),
                        ..Default::default()
                    },
                    EntityRule {
                        ports: vec![Port::Single(8000 + (p % 100) as u16), Port::Range(9000, 9100)],
                        ..Default::default()
                    },
                ),
                rule(
                    if p % 3 == 0 { Action::Deny } else { Action::Pass },
                    None,
                    EntityRule {
                        nets: vec![format!("10.{}.0.0/16", 100 + p % 100).parse().expect("net")],
                        ..Default::default()
                    },
                    EntityRule::default(),
                ),
            ],
            egress: vec![rule(
                Action::Allow,
                Some(Protocol::Udp),
                EntityRule::default(),
                EntityRule {
                    groups: vec![format!("g{}", p % groups)],
                    ports: vec![Port::Single(53)],
                    ..Default::default()
                },
            )],
        };
        rs.push(Resource::Policy(object(Kind::Policy, format!("pol-{p:04}"), spec)));
    }
    for i in 0..endpoints {
        let mut c = object(
            Kind::Container,
            format!("w{i:05}"),
            ContainerSpec {
                node: "host1".into(),
                netns: Some(format!("/var/run/netns/w{i}")),
                ips: Some(vec![ip(i)]),
                groups: vec![format!("g{}", i % groups)],
                ..Default::default()
            },
        );
        c.metadata.labels.insert("app".into(), format!("a{}", i % 50));
        rs.push(Resource::Container(c));
    }
    rs
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// A scratch network namespace, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("cdbench{}{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        ok.then_some(Netns(name))
    }
    fn nft(&self, args: &[&str]) -> Result<Duration, String> {
        let t = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let d = t.elapsed();
        if out.status.success() {
            Ok(d)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One render: times and heap per stage, and the JSON. `sized`: serialize with
/// [`nft_json_bytes`] (exact-size buffer) instead of `serde_json::to_vec` as the agent
/// does today.
struct Measured {
    t: [(&'static str, Duration); 5],
    stages: Vec<(&'static str, usize, usize)>,
    peak: usize,
    json: Vec<u8>,
    objects: usize,
    routes: usize,
    bird: usize,
}

fn measure(rs: &[Resource], sized: bool) -> Measured {
    let blocks = vec!["10.65.0.0/16".parse().expect("net")];
    let addrs = BTreeMap::new();
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    // Per stage: the peak while it ran and what it left allocated, both above `base`.
    let mut stages: Vec<(&str, usize, usize)> = Vec::new();
    let mut stage = |name: &'static str| {
        let now = CURRENT.load(Ordering::Relaxed);
        stages.push((name, PEAK.load(Ordering::Relaxed) - base, now - base));
        // Reset the stage peak to the current level; the overall peak is the max.
        PEAK.store(now, Ordering::Relaxed);
    };
    let (view, t_view) = timed(|| NodeView::build("host1", rs, &addrs, &blocks));
    stage("view build");
    let (nft, t_nft) = timed(|| render_nft(&view));
    stage("nft render");
    let batch = nft.to_batch();
    let (json, t_json) = timed(|| {
        if sized {
            batch.to_json_bytes()
        } else {
            serde_json::to_vec(&batch).expect("json")
        }
    });
    let objects = batch.items.len();
    drop(batch);
    stage("nft to JSON");
    let (routes, t_routes) = timed(|| render_routes(&view));
    stage("routes");
    let (bird, t_bird) = timed(|| render_bird(&view).expect("bird"));
    stage("bird.conf");
    let peak = stages.iter().map(|s| s.1).max().unwrap_or(0);
    Measured {
        t: [
            ("view build", t_view),
            ("nft render", t_nft),
            ("nft to JSON", t_json),
            ("routes", t_routes),
            ("bird.conf", t_bird),
        ],
        stages,
        peak,
        json,
        objects,
        routes: routes.len(),
        bird: bird.len(),
    }
}

fn run(endpoints: usize, policies: usize, groups: usize) {
    let rs = cluster(endpoints, policies, groups);
    let m = measure(&rs, false);
    let [(_, t_view), (_, t_nft), (_, t_json), (_, t_routes), (_, t_bird)] = m.t;
    let (peak, objects, json) = (m.peak, m.objects, m.json);

    println!("== {endpoints} endpoints, {policies} policies, {groups} groups ==");
    println!("  view build        {t_view:>10.2?}");
    println!("  nft render        {t_nft:>10.2?}  ({objects} objects)");
    println!(
        "  nft to JSON       {t_json:>10.2?}  ({:.1} MiB, sha256 {}; serde_json::to_vec as the agent)",
        mib(json.len()),
        &calico_render::names::sha256_hex(&String::from_utf8_lossy(&json))[..16]
    );
    println!("  routes            {t_routes:>10.2?}  ({} routes)", m.routes);
    println!("  bird.conf         {t_bird:>10.2?}  ({} bytes)", m.bird);
    println!(
        "  total render      {:>10.2?}",
        t_view + t_nft + t_json + t_routes + t_bird
    );
    println!("  peak heap         {:>10.1} MiB above the input", mib(peak));
    for (name, p, held) in &m.stages {
        println!(
            "    {name:<15} peak {:>6.1} MiB, holds {:>6.1} MiB after",
            mib(*p),
            mib(*held)
        );
    }
    // The same render with the JSON in an exactly sized buffer (Batch::to_json_bytes).
    drop(m.stages);
    let s = measure(&rs, true);
    assert_eq!(s.json, json, "Batch::to_json_bytes differs from serde_json::to_vec");
    let total: Duration = s.t.iter().map(|x| x.1).sum();
    println!(
        "  with to_json_bytes: JSON {:.2?}, total render {total:.2?}, peak heap {:.1} MiB",
        s.t[2].1,
        mib(s.peak)
    );
    drop(s);

    if !is_root() {
        println!("  nft load          skipped (needs root)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("calico-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let jf = dir.join("table.json");
    let tf = dir.join("table.nft");
    if std::fs::write(&jf, &json).is_err() {
        println!("  nft load          skipped (cannot write {})", jf.display());
        return;
    }
    let Some(ns) = Netns::new("j") else {
        println!("  nft load          skipped (ip netns add failed)");
        return;
    };
    match ns.nft(&["-j", "-f", &jf.display().to_string()]) {
        Ok(d) => println!("  nft -j -f load    {d:>10.2?}"),
        Err(e) => println!("  nft -j -f load    FAILED: {}", e.lines().next().unwrap_or("")),
    }
    deltas(&ns, &dir, &rs, endpoints, policies, groups);
    // The same table as nft text, loaded into a fresh namespace: the floor JSON is
    // measured against.
    let text = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "list", "table", "inet", "calico"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    drop(ns);
    if std::fs::write(&tf, &text).is_ok() {
        if let Some(ns2) = Netns::new("t") {
            match ns2.nft(&["-f", &tf.display().to_string()]) {
                Ok(d) => println!("  nft -f text load  {d:>10.2?}  (same ruleset as text)"),
                Err(e) => println!("  nft -f text load  FAILED: {}", e.lines().next().unwrap_or("")),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One endpoint more, then one fewer, sent as deltas to the table loaded in `ns`, next
/// to a whole load of the same table in the same run (the baseline, as a ratio); then
/// what the agent computes per change (render, delta, the whole nft.json file) and what
/// listing the table back costs (the periodic check).
fn deltas(ns: &Netns, dir: &std::path::Path, rs: &[Resource], endpoints: usize, policies: usize, groups: usize) {
    let blocks = vec!["10.65.0.0/16".parse().expect("net")];
    let addrs = BTreeMap::new();
    let before = render_nft(&NodeView::build("host1", rs, &addrs, &blocks));
    let plus = cluster(endpoints + 1, policies, groups);
    let (after, t_render) = timed(|| render_nft(&NodeView::build("host1", &plus, &addrs, &blocks)));
    let patch = |new: &calico_render::NftTable, old: &calico_render::NftTable| match new.delta(old) {
        Delta::Patch(b) => b.to_batch().to_json_bytes(),
        other => panic!("not a delta: {other:?}"),
    };
    let (add, t_delta) = timed(|| patch(&after, &before));
    let remove = patch(&before, &after);
    let (whole, t_file) = timed(|| after.to_batch().to_json_bytes());
    let files = [("add.json", &add), ("remove.json", &remove), ("whole.json", &whole)];
    for (name, bytes) in files {
        if std::fs::write(dir.join(name), bytes).is_err() {
            println!("  deltas            skipped (cannot write {name})");
            return;
        }
    }
    let load = |name: &str| ns.nft(&["-j", "-f", &dir.join(name).display().to_string()]);
    let (Ok(t_add), Ok(t_remove), Ok(t_whole)) = (load("add.json"), load("remove.json"), load("whole.json")) else {
        println!("  deltas            FAILED (nft refused a batch)");
        return;
    };
    // The same two deltas as text, as the agent sends them (the table is `after` now).
    let text = |new: &calico_render::NftTable, old: &calico_render::NftTable| match new.delta(old) {
        Delta::Patch(b) => b.to_text().expect("printable"),
        other => panic!("not a delta: {other:?}"),
    };
    let (remove_t, add_t) = (text(&before, &after), text(&after, &before));
    let (Ok(()), Ok(())) = (
        std::fs::write(dir.join("remove.nft"), &remove_t),
        std::fs::write(dir.join("add.nft"), &add_t),
    ) else {
        println!("  text deltas       skipped (cannot write)");
        return;
    };
    let load_t = |name: &str| ns.nft(&["-f", &dir.join(name).display().to_string()]);
    let (Ok(t_remove_t), Ok(t_add_t)) = (load_t("remove.nft"), load_t("add.nft")) else {
        println!("  text deltas       FAILED (nft refused a delta)");
        return;
    };
    println!(
        "  text deltas       +1 {t_add_t:.2?} ({} bytes), -1 {t_remove_t:.2?} ({} bytes): what the agent sends",
        add_t.len(),
        remove_t.len()
    );
    let t_list_text = ns.nft(&["list", "table", "inet", "calico"]).unwrap_or_default();
    let (_, t_print) = timed(|| after.to_text().expect("printable"));
    println!(
        "  nft list table    {t_list_text:>10.2?}  + to_text {t_print:.2?} (the periodic check, text, as the agent compares)"
    );
    let t_list = ns.nft(&["-j", "list", "table", "inet", "calico"]).unwrap_or_default();
    let ratio = |d: Duration| t_whole.as_secs_f64() / d.as_secs_f64().max(1e-9);
    println!(
        "  delta +1 endpoint {t_add:>10.2?}  ({} bytes; {:.0}x faster than the whole load of the same table, {t_whole:.2?})",
        add.len(),
        ratio(t_add)
    );
    println!(
        "  delta -1 endpoint {t_remove:>10.2?}  ({} bytes; {:.0}x)",
        remove.len(),
        ratio(t_remove)
    );
    println!("  per change, agent render {t_render:.2?} + delta {t_delta:.2?} + nft.json {t_file:.2?}");
    println!("  nft -j list table {t_list:>10.2?}  (JSON listing, the old read-back)");
}

/// An iptables-restore ruleset in the shape the old per-endpoint-chain dataplanes use
/// for the same cluster: FORWARD dispatches each workload interface to its own from-
/// and to- chains by a linear list of `-i`/`-o` rules (no verdict maps in iptables),
/// those go to one evaluation chain per distinct policy list (100 per direction, as in
/// the nft table), which jumps to each of its 20 policies' chains and returns once one
/// accepted. Selector and group matches would need ipsets, which iptables-restore does
/// not load: the policy rules keep their ports and nets and match without the set.
fn iptables_ruleset(endpoints: usize, policies: usize, groups: usize) -> String {
    let mut out = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let iface = |i: usize| calico_render::host_iface_name("cali", &format!("w{i:05}"));
    let mut chains = Vec::new();
    for i in 0..endpoints {
        chains.push(format!("cali-fw-{}", iface(i)));
        chains.push(format!("cali-tw-{}", iface(i)));
    }
    for k in 0..groups {
        chains.push(format!("cali-ev-eg-{k}"));
        chains.push(format!("cali-ev-in-{k}"));
    }
    for p in 0..policies {
        chains.push(format!("cali-pi-{p}"));
        chains.push(format!("cali-po-{p}"));
    }
    for c in &chains {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    out.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    for i in 0..endpoints {
        out.push_str(&format!(
            "-A FORWARD -i {0} -j cali-fw-{0}\n-A FORWARD -o {0} -j cali-tw-{0}\n",
            iface(i)
        ));
    }
    out.push_str("-A FORWARD -i cali+ -j DROP\n-A FORWARD -o cali+ -j DROP\n");
    for i in 0..endpoints {
        let (f, k) = (iface(i), i % groups);
        out.push_str(&format!(
            "-A cali-fw-{f} -m conntrack --ctstate INVALID -j DROP\n-A cali-fw-{f} ! -s {} -j DROP\n-A cali-fw-{f} -g cali-ev-eg-{k}\n",
            ip(i)
        ));
        out.push_str(&format!(
            "-A cali-tw-{f} -m conntrack --ctstate INVALID -j DROP\n-A cali-tw-{f} -g cali-ev-in-{k}\n"
        ));
    }
    for k in 0..groups {
        for (dir, pc) in [("eg", "po"), ("in", "pi")] {
            out.push_str(&format!("-A cali-ev-{dir}-{k} -j MARK --set-xmark 0x0/0x30000\n"));
            // The policies selecting app a(k mod 50).
            for p in (0..policies).filter(|p| p % 50 == k % 50) {
                out.push_str(&format!(
                    "-A cali-ev-{dir}-{k} -j cali-{pc}-{p}\n-A cali-ev-{dir}-{k} -m mark --mark 0x10000/0x10000 -j RETURN\n"
                ));
            }
            out.push_str(&format!("-A cali-ev-{dir}-{k} -j DROP\n"));
        }
    }
    for p in 0..policies {
        out.push_str(&format!(
            "-A cali-pi-{p} -p tcp -m multiport --dports {},9000:9100 -j MARK --set-xmark 0x10000/0x10000\n-A cali-pi-{p} -m mark --mark 0x10000/0x10000 -j RETURN\n",
            8000 + p % 100
        ));
        let verdict = if p % 3 == 0 { "DROP" } else { "RETURN" };
        out.push_str(&format!("-A cali-pi-{p} -s 10.{}.0.0/16 -j {verdict}\n", 100 + p % 100));
        out.push_str(&format!(
            "-A cali-po-{p} -p udp --dport 53 -j MARK --set-xmark 0x10000/0x10000\n-A cali-po-{p} -m mark --mark 0x10000/0x10000 -j RETURN\n"
        ));
    }
    out.push_str("COMMIT\n");
    out
}

/// Whole-table load at each size, each into a fresh namespace: ours (the table as nft
/// text, `nft -f`, what the agent sends; it is the floor too, being nft's own syntax),
/// the same table as JSON (`nft -j -f`, the agent's old way), and iptables-restore of
/// the per-endpoint-chain equivalent (the old dataplanes' way). Best of `BENCH_RUNS`
/// (default 3) runs each.
fn load_comparison(endpoints: usize, policies: usize, groups: usize) {
    let rs = cluster(endpoints, policies, groups);
    let blocks = vec!["10.65.0.0/16".parse().expect("net")];
    let table = render_nft(&NodeView::build("host1", &rs, &BTreeMap::new(), &blocks));
    let (text, t_print) = timed(|| table.to_load_text().expect("printable"));
    let (json, t_json) = timed(|| table.to_batch().to_json_bytes());
    let ipt = iptables_ruleset(endpoints, policies, groups);
    let dir = std::env::temp_dir().join(format!("calico-bench-load-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let files = [
        ("t.nft", text.as_bytes()),
        ("t.json", &json[..]),
        ("t.ipt", ipt.as_bytes()),
    ];
    for (name, bytes) in files {
        if std::fs::write(dir.join(name), bytes).is_err() {
            println!("  load comparison skipped (cannot write {name})");
            return;
        }
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let best = |args: &[&str], tag: &str| -> Option<Duration> {
        let mut best: Option<Duration> = None;
        for r in 0..runs {
            let ns = Netns::new(&format!("{tag}{r}"))?;
            let t = Instant::now();
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.0])
                .args(args)
                .output()
                .ok()?;
            let d = t.elapsed();
            if !out.status.success() {
                println!(
                    "  {tag}: FAILED: {}",
                    String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("")
                );
                return None;
            }
            best = Some(best.map_or(d, |b| b.min(d)));
        }
        best
    };
    let path = |n: &str| dir.join(n).display().to_string();
    let ours = best(&["nft", "-f", &path("t.nft")], "t");
    let old = best(&["nft", "-j", "-f", &path("t.json")], "j");
    let ipt_t = best(&["sh", "-c", &format!("iptables-restore < {}", path("t.ipt"))], "i");
    if std::env::var_os("BENCH_KEEP_FILES").is_some() {
        println!("  (the three rulesets are kept in {})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let ipt_version = Command::new("iptables-restore")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "== whole-table load, {endpoints} endpoints ({} rules; text {:.1} MiB printed in {t_print:.0?}, JSON {:.1} MiB in {t_json:.0?}; iptables {} rules) ==",
        table.counts().rules,
        mib(text.len()),
        mib(json.len()),
        ipt.lines().filter(|l| l.starts_with("-A")).count()
    );
    let (Some(ours), Some(old), Some(ipt_t)) = (ours, old, ipt_t) else {
        return;
    };
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!("  ours, nft -f text        {ours:>9.2?}  (= the floor: the same bytes are nft's own syntax)");
    println!(
        "  JSON, nft -j -f          {old:>9.2?}  ours / JSON = {:.2}",
        r(ours, old)
    );
    println!(
        "  iptables-restore         {ipt_t:>9.2?}  ours / iptables = {:.2}  ({ipt_version})",
        r(ours, ipt_t)
    );
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it makes live
/// there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: setns on a namespace file we hold open; it only changes this thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "namespace thread panicked".to_string())?
}

fn sh_ok(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The two endpoints first-packet latency is measured between, on the router's
/// forward path: a client and a server Container, allowed TCP by one policy of their
/// own, ordered first (the other endpoints, policies and groups are the cluster's).
const FP_CLIENT: (&str, &str) = ("wfpclient", "10.66.0.1");
const FP_SERVER: (&str, &str) = ("wfpserver", "10.66.0.2");

fn first_packet_resources(endpoints: usize) -> Vec<Resource> {
    let mut rs = cluster(endpoints, 1_000, 100);
    for (name, addr) in [FP_CLIENT, FP_SERVER] {
        let mut c = object(
            Kind::Container,
            name,
            ContainerSpec {
                node: "host1".into(),
                netns: Some(format!("/var/run/netns/{name}")),
                ips: Some(vec![addr.parse().expect("addr")]),
                ..Default::default()
            },
        );
        c.metadata.labels.insert("app".into(), "fp".into());
        rs.push(Resource::Container(c));
    }
    let tcp = Rule {
        protocol: Some(Protocol::Tcp),
        ..Rule::allow()
    };
    rs.push(Resource::Policy(object(
        Kind::Policy,
        "fp",
        PolicySpec {
            order: Some(0),
            selector: Some("app == \"fp\"".into()),
            types: None,
            ingress: vec![tcp.clone()],
            egress: vec![tcp],
        },
    )));
    rs
}

/// The iptables equivalent with the two measured endpoints: their dispatch rules last
/// in FORWARD's linear list (where a new endpoint lands), their chains accepting TCP.
fn first_packet_iptables(endpoints: usize) -> String {
    let base = iptables_ruleset(endpoints, 1_000, 100);
    let (mut decl, mut disp, mut rules) = (String::new(), String::new(), String::new());
    for (name, addr) in [FP_CLIENT, FP_SERVER] {
        let f = calico_render::host_iface_name("cali", name);
        decl.push_str(&format!(":cali-fw-{f} - [0:0]\n:cali-tw-{f} - [0:0]\n"));
        disp.push_str(&format!(
            "-A FORWARD -i {f} -j cali-fw-{f}\n-A FORWARD -o {f} -j cali-tw-{f}\n"
        ));
        rules.push_str(&format!(
            "-A cali-fw-{f} -m conntrack --ctstate INVALID -j DROP\n-A cali-fw-{f} ! -s {addr} -j DROP\n-A cali-fw-{f} -p tcp -j ACCEPT\n-A cali-fw-{f} -j DROP\n-A cali-tw-{f} -m conntrack --ctstate INVALID -j DROP\n-A cali-tw-{f} -p tcp -j ACCEPT\n-A cali-tw-{f} -j DROP\n"
        ));
    }
    base.replacen("-A FORWARD -m conntrack", &format!("{decl}-A FORWARD -m conntrack"), 1)
        .replacen(
            "-A FORWARD -i cali+ -j DROP\n",
            &format!("{disp}-A FORWARD -i cali+ -j DROP\n"),
            1,
        )
        .replacen("COMMIT\n", &format!("{rules}COMMIT\n"), 1)
}

/// A router namespace with a client and a server namespace behind veths named as the
/// agent names them (`cali<hash>`), wired as the agent wires a workload (proxy ARP,
/// host routes, default via 169.254.1.1). Removed on drop (the Netns values).
struct Path3 {
    router: Netns,
    client: Netns,
    server: Netns,
}

fn path3() -> Result<Path3, String> {
    let (router, client, server) = (
        Netns::new("fpr").ok_or("ip netns add")?,
        Netns::new("fpc").ok_or("ip netns add")?,
        Netns::new("fps").ok_or("ip netns add")?,
    );
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        &router.0,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])?;
    for (i, ((name, addr), wl)) in [(FP_CLIENT, &client), (FP_SERVER, &server)].into_iter().enumerate() {
        let cali = calico_render::host_iface_name("cali", name);
        // Static neighbours both ways: the router has no address to ARP from.
        let mac = format!("02:00:00:00:00:0{}", i + 1);
        let script = format!(
            "set -e
ip -n {r} link add {cali} address ee:ee:ee:ee:ee:ee type veth peer name eth0 address {mac} netns {w}
ip netns exec {r} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/{cali}/proxy_arp; echo 0 > /proc/sys/net/ipv4/neigh/{cali}/proxy_delay; echo 1 > /proc/sys/net/ipv4/conf/{cali}/forwarding'
ip -n {r} link set {cali} up
ip -n {r} route add {addr}/32 dev {cali}
ip -n {r} neigh replace {addr} lladdr {mac} dev {cali} nud permanent
ip -n {w} link set lo up
ip -n {w} addr add {addr}/32 dev eth0
ip -n {w} link set eth0 up
ip -n {w} route add 169.254.1.1 dev eth0 scope link
ip -n {w} route add default via 169.254.1.1 dev eth0
ip -n {w} neigh replace 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent
",
            r = router.0,
            w = wl.0
        );
        sh_ok(&["sh", "-c", &script])?;
    }
    Ok(Path3 { router, client, server })
}

/// New TCP connections from the client to the server through the router, `count` of
/// them one after another: each connect's time (the SYN crossing the router's forward
/// path as a new flow, the SYN-ACK back), sorted, in microseconds.
fn connects(p: &Path3, count: usize) -> Result<Vec<f64>, String> {
    let server: std::net::SocketAddr = format!("{}:8080", FP_SERVER.1).parse().map_err(|e| format!("{e}"))?;
    let listener = in_ns(&p.server.0, move || std::net::TcpListener::bind(server))?.map_err(|e| e.to_string())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let acceptor = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let times = in_ns(&p.client.0, move || {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            match std::net::TcpStream::connect_timeout(&server, Duration::from_secs(2)) {
                Ok(_) => v.push(t.elapsed().as_secs_f64() * 1e6),
                Err(e) => return Err(format!("connect {server}: {e}")),
            }
        }
        Ok(v)
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    let mut v = times?;
    v.sort_by(f64::total_cmp);
    Ok(v)
}

fn pct(v: &[f64], p: f64) -> f64 {
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// First-packet latency (new TCP connections, p50 and p99) through the router's forward
/// path with no table, with our table and with the iptables equivalent, at each size;
/// `BENCH_FP_CONNECTS` (default 2000) connections per measurement.
fn first_packet(sizes: &[usize]) {
    let count: usize = std::env::var("BENCH_FP_CONNECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let p = match path3() {
        Ok(p) => p,
        Err(e) => {
            println!("first-packet latency skipped: {e}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("calico-bench-fp-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let r = p.router.0.clone();
    let measure = |label: &str| -> Option<(f64, f64)> {
        // A warm-up connection (ARP, routes), then the measured ones.
        match connects(&p, 50).and_then(|_| connects(&p, count)) {
            Ok(v) => {
                let (p50, p99) = (pct(&v, 0.5), pct(&v, 0.99));
                println!("  {label:<28} p50 {p50:>8.1} us  p99 {p99:>8.1} us");
                Some((p50, p99))
            }
            Err(e) => {
                println!("  {label:<28} FAILED: {e}");
                None
            }
        }
    };
    let clear = || {
        let _ = sh_ok(&["ip", "netns", "exec", &r, "nft", "flush", "ruleset"]);
    };
    println!("== first-packet latency: {count} new TCP connections each, client -> router forward path -> server ==");
    clear();
    let none = measure("no table");
    for &n in sizes {
        let rs = first_packet_resources(n);
        let blocks = vec!["10.65.0.0/16".parse().expect("net")];
        let table = render_nft(&NodeView::build("host1", &rs, &BTreeMap::new(), &blocks));
        let (tf, itf) = (dir.join("fp.nft"), dir.join("fp.ipt"));
        let written = table
            .to_load_text()
            .map_err(|e| e.to_string())
            .and_then(|t| std::fs::write(&tf, t).map_err(|e| e.to_string()))
            .and_then(|_| std::fs::write(&itf, first_packet_iptables(n)).map_err(|e| e.to_string()));
        if let Err(e) = written {
            println!("  {n} endpoints: skipped ({e})");
            continue;
        }
        clear();
        let ours = match sh_ok(&["ip", "netns", "exec", &r, "nft", "-f", &tf.display().to_string()]) {
            Ok(()) => measure(&format!("ours, {n} endpoints")),
            Err(e) => {
                println!("  ours, {n} endpoints: load FAILED: {e}");
                None
            }
        };
        clear();
        let ipt = match sh_ok(&[
            "sh",
            "-c",
            &format!("ip netns exec {r} iptables-restore < {}", itf.display()),
        ]) {
            Ok(()) => measure(&format!("iptables, {n} endpoints")),
            Err(e) => {
                println!("  iptables, {n} endpoints: load FAILED: {e}");
                None
            }
        };
        clear();
        if let (Some(none), Some(ours), Some(ipt)) = (none, ours, ipt) {
            println!(
                "  {n} endpoints: ours / no table p50 {:.2} p99 {:.2}; ours / iptables p50 {:.2} p99 {:.2}",
                ours.0 / none.0,
                ours.1 / none.1,
                ours.0 / ipt.0,
                ours.1 / ipt.1
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Which parts run: `BENCH_PARTS` (comma separated: render, load, first-packet; all by
/// default).
fn part(name: &str) -> bool {
    std::env::var("BENCH_PARTS").map_or(true, |s| s.split(',').any(|p| p.trim() == name))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful to us
    // either: both run the benchmark once.
    let sizes: Vec<usize> = std::env::var("BENCH_ENDPOINTS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    if part("render") {
        for n in sizes {
            run(n, 1_000, 100);
        }
    }
    if !is_root() {
        println!("whole-table load comparison and first-packet latency skipped (need root)");
        return;
    }
    let loads: Vec<usize> = std::env::var("BENCH_LOAD_ENDPOINTS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 5_000, 10_000]);
    if part("load") {
        for n in loads {
            load_comparison(n, 1_000, 100);
        }
    }
    if part("first-packet") {
        let fp: Vec<usize> = std::env::var("BENCH_FP_ENDPOINTS")
            .ok()
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![0, 1_000, 10_000]);
        first_packet(&fp);
    }
}
