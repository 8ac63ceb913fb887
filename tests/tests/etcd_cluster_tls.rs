//! The agents and calicoctl on a three-member etcd cluster with TLS and client
//! certificates (made by the test with openssl), all three endpoints given to every
//! client. Members die (the first-listed one, which every client starts on, then the
//! leader, then two at once) while the agents run and traffic flows:
//! - applies keep succeeding, after at most one retried call;
//! - a new Container is reachable within 3 s of its apply;
//! - no agent restarts and no ping between existing workloads is lost;
//! - with two of three members down, calicoctl fails within its timeout naming the
//!   endpoints, and everything recovers when a member returns.
//!
//! The figures (apply latency, time to reachable per phase) are printed; see
//! docs/agent.md.

use std::io::Read;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_e2e::cluster::Cluster;
use calico_e2e::scenario::{await_ping, await_programmed, ip, BASE};
use calico_e2e::serial;
use calico_store::testing::TlsEtcdCluster;

fn available() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let have = |b: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = root && ["etcd", "etcdctl", "openssl", "bird", "nft"].iter().all(|b| have(b));
    if !ok {
        let why = "needs root, etcd, etcdctl, openssl, bird and nft (scripts/test.sh installs them)";
        if std::env::var_os("CALICO_ALLOW_SKIP").is_some() {
            eprintln!("SKIP: {why}");
        } else {
            panic!("{why}; set CALICO_ALLOW_SKIP=1 to skip");
        }
    }
    ok
}

/// One fast ping: a lost reply is known within 300 ms.
fn pings(c: &Cluster, from: &str, to: IpAddr) -> bool {
    c.wl(from)
        .exec(&["ping", "-c", "1", "-W", "0.3", &to.to_string()])
        .is_ok()
}

/// `ping -i 0.1` from a workload until stopped; then how many were sent and answered.
struct Pinger(Child);

impl Pinger {
    fn start(c: &Cluster, from: &str, to: IpAddr) -> Pinger {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", c.wl(from).path().display()))
            .args(["ping", "-q", "-i", "0.1", "-W", "1", &to.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        Pinger(child)
    }

    /// SIGINT (ping prints its summary), then (transmitted, received).
    fn finish(mut self) -> (u64, u64) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
        let mut out = String::new();
        if let Some(mut s) = self.0.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        // "N packets transmitted, M received, ..."
        let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .take(2)
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "no ping summary in {out:?}");
        (nums[0], nums[1])
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Applies `yaml`, allowing one retried call: how long the successful call took, how
/// many calls it needed, how long a failed first call took, and when the successful
/// call started.
fn apply_allowing_one_retry(c: &Cluster, yaml: &str) -> (Duration, u32, Option<Duration>, Instant) {
    let t = Instant::now();
    match c.apply(yaml) {
        Ok(_) => (t.elapsed(), 1, None, t),
        Err(first) => {
            let failed = t.elapsed();
            eprintln!("apply failed once after {failed:?} (allowed): {first}");
            let t = Instant::now();
            c.apply(yaml)
                .unwrap_or_else(|e| panic!("apply failed twice: {first}\nthen: {e}"));
            (t.elapsed(), 2, Some(failed), t)
        }
    }
}

/// Declares workload `name` on `node` at `addr`, then measures from the (successful)
/// apply until `from` reaches it.
fn new_container(c: &mut Cluster, name: &str, node: &str, addr: &str, from: &str) -> (Duration, u32, Duration) {
    c.workload_ns(name).expect("workload ns");
    let yaml = c.container_yaml(name, node, Some(addr), &["g"]);
    let (apply, calls, _failed, applied_at) = apply_allowing_one_retry(c, &yaml);
    let ok = Cluster::wait_for(Duration::from_secs(10), || pings(c, from, ip(addr)));
    let reach = applied_at.elapsed();
    assert!(
        ok,
        "{name} ({addr}) never became reachable from {from}\n{}",
        c.dump_logs()
    );
    (apply, calls, reach)
}

#[test]
fn agents_and_calicoctl_ride_out_member_and_leader_loss() {
    if !available() {
        return;
    }
    let _g = serial();
    let mut etcd = TlsEtcdCluster::start(3);
    let mut c = Cluster::new(2).expect("cluster");
    c.use_etcd(etcd.endpoints(), Some(etcd.tls_files()));
    c.apply(&format!(
        "{BASE}---\napiVersion: calico/v1\nkind: Group\nmetadata: {{name: g}}\nspec: {{}}\n"
    ))
    .expect("apply over TLS");
    c.start_agent(0).expect("agent 1");
    c.start_agent(1).expect("agent 2");
    c.workload_ns("a").unwrap();
    c.workload_ns("b").unwrap();
    let yaml = c.container_yaml("a", "host1", Some("10.65.0.10"), &["g"])
        + &c.container_yaml("b", "host2", Some("10.65.1.10"), &["g"]);
    c.apply(&yaml).expect("apply workloads");
    await_programmed(&c, "a", Duration::from_secs(20));
    await_programmed(&c, "b", Duration::from_secs(20));
    await_ping(&c, "a", ip("10.65.1.10"), Duration::from_secs(30));
    let pids: Vec<Option<u32>> = c.agents.values().map(calico_e2e::cluster::Agent::pid).collect();
    let pinger = Pinger::start(&c, "a", ip("10.65.1.10"));
    let mut figures = Vec::new();

    // 1. The first-listed member dies: every client started its connections there.
    etcd.kill(0);
    let (apply, calls, reach) = new_container(&mut c, "n1", "host1", "10.65.0.11", "b");
    figures.push(("first-listed member killed", apply, calls, reach));
    etcd.start_member(0);

    // 2. The leader dies.
    let leader = etcd.leader().expect("a leader");
    etcd.kill(leader);
    let (apply, calls, reach) = new_container(&mut c, "n2", "host2", "10.65.1.11", "a");
    figures.push(("leader killed", apply, calls, reach));
    etcd.start_member(leader);

    // 3. Two of three down: no quorum. calicoctl fails within its timeout and names
    //    the endpoints; the agents keep their dataplane (traffic still flows).
    etcd.kill(1);
    etcd.kill(2);
    let t = Instant::now();
    let err = c
        .ctl(&["--timeout", "3", "get", "containers"])
        .expect_err("no quorum, yet calicoctl get succeeded");
    let took = t.elapsed();
    let text = err.to_string();
    assert!(took < Duration::from_secs(8), "calicoctl took {took:?} to fail: {text}");
    assert!(
        text.contains(&etcd.endpoint(0)) && text.contains(&etcd.endpoint(1)) && text.contains(&etcd.endpoint(2)),
        "the error does not name the endpoints: {text}"
    );
    eprintln!("no quorum: calicoctl failed in {took:?}: {text}");
    assert!(pings(&c, "a", ip("10.65.1.10")), "traffic stopped without quorum");

    // 4. A member returns: quorum again, and everything works.
    let t = Instant::now();
    etcd.start_member(1);
    let back = Cluster::wait_for(Duration::from_secs(20), || c.ctl(&["get", "containers"]).is_ok());
    assert!(back, "calicoctl never worked again after a member returned");
    let recovered = t.elapsed();
    let (apply, calls, reach) = new_container(&mut c, "n3", "host1", "10.65.0.12", "b");
    figures.push(("after quorum came back", apply, calls, reach));

    let (sent, got) = pinger.finish();
    let now: Vec<Option<u32>> = c.agents.values().map(calico_e2e::cluster::Agent::pid).collect();
    assert_eq!(pids, now, "an agent restarted");
    for a in c.agents.values_mut() {
        assert!(a.alive(), "agent {} exited", a.name);
    }
    eprintln!("figures (apply call, calls, apply-to-reachable):");
    for (what, apply, calls, reach) in &figures {
        eprintln!("  {what}: apply {apply:?} in {calls} call(s), reachable {reach:?} after the apply");
    }
    eprintln!("  quorum back: calicoctl worked {recovered:?} after the member started");
    eprintln!("  pings between existing workloads: {got}/{sent} answered");
    assert!(sent > 50, "the pinger hardly ran: {sent}");
    assert_eq!(sent, got, "pings between existing workloads were lost");
    for (what, _, _, reach) in &figures {
        assert!(
            *reach < Duration::from_secs(3),
            "{what}: reachable only after {reach:?}"
        );
    }
}
