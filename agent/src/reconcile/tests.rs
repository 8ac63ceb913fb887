//! The reconcile against fakes: what is marked programmed, what is reported, what
//! is retried. No root, no etcd.

use std::collections::BTreeSet;
use std::sync::Mutex;

use calico_schema::EndpointState;
use calico_store::WatchEvent;

use super::*;

#[derive(Default)]
pub(super) struct FakeDp {
    /// Host interfaces that exist.
    ifaces: Mutex<BTreeSet<String>>,
    /// Container names whose setup fails.
    fail: Mutex<BTreeSet<String>>,
    setups: Mutex<Vec<String>>,
    routes: Mutex<Vec<RouteSpec>>,
    nft: Mutex<String>,
    nft_loads: Mutex<usize>,
    /// Interface prefixes `ensure_host` was called with.
    host_checks: Mutex<Vec<String>>,
    host_fails: Mutex<bool>,
    /// Whether `nft_listing` reads back at all (a real dataplane does).
    reads_back: Mutex<bool>,
    /// The table as the fake kernel lists it: a whole load's table text; tests stand in
    /// for the kernel applying a delta, or tamper with it.
    kernel: Mutex<Option<String>>,
    /// How many times the workload interfaces were listed.
    listings: Mutex<usize>,
    /// How many times the routes were synced.
    route_syncs: Mutex<usize>,
}

impl Dataplane for FakeDp {
    async fn setup_workload(&self, w: &PlannedWorkload) -> Result<(), StepError> {
        self.setups.lock().unwrap().push(w.name.clone());
        if self.fail.lock().unwrap().contains(&w.name) {
            // A half-made pair is left behind, as a real failure might.
            self.ifaces.lock().unwrap().insert(w.host_ifname.clone());
            return Err(StepError(format!(
                "plumb {}: open network namespace: No such file",
                w.name
            )));
        }
        self.ifaces.lock().unwrap().insert(w.host_ifname.clone());
        Ok(())
    }
    async fn teardown_workload(&self, host_ifname: &str) -> Result<(), StepError> {
        self.ifaces.lock().unwrap().remove(host_ifname);
        Ok(())
    }
    async fn list_workloads(&self, prefix: &str) -> Result<Vec<String>, StepError> {
        *self.listings.lock().unwrap() += 1;
        Ok(self
            .ifaces
            .lock()
            .unwrap()
            .iter()
            .filter(|i| i.starts_with(prefix))
            .cloned()
            .collect())
    }
    async fn apply_nft(&self, text: &[u8]) -> Result<(), StepError> {
        let text = String::from_utf8(text.to_vec()).unwrap();
        if let Some(table) = text.strip_prefix("add table inet calico\ndelete table inet calico\n") {
            *self.kernel.lock().unwrap() = Some(table.to_string());
        }
        *self.nft.lock().unwrap() = text;
        *self.nft_loads.lock().unwrap() += 1;
        Ok(())
    }
    async fn apply_routes(&self, routes: &[RouteSpec]) -> Result<(), StepError> {
        *self.route_syncs.lock().unwrap() += 1;
        *self.routes.lock().unwrap() = routes.to_vec();
        Ok(())
    }
    async fn apply_bird(&self, _conf: &str) -> Result<(), StepError> {
        Ok(())
    }
    async fn nft_listing(&self) -> Result<Option<String>, StepError> {
        if !*self.reads_back.lock().unwrap() {
            return Ok(None);
        }
        Ok(self.kernel.lock().unwrap().clone())
    }
    async fn ensure_host(&self, prefix: &str) -> Result<(), StepError> {
        self.host_checks.lock().unwrap().push(prefix.to_string());
        if *self.host_fails.lock().unwrap() {
            return Err(StepError("iptables-restore: permission denied".into()));
        }
        Ok(())
    }
}

#[derive(Default)]
pub(super) struct FakeIpam {
    fail: Mutex<Option<String>>,
    next: Mutex<u8>,
    claims: Mutex<usize>,
    released_ips: Mutex<Vec<(String, Vec<IpAddr>)>>,
}

impl AddressManager for FakeIpam {
    async fn auto_assign(&self, _h: &str, _n: &str, _p: &[IpPool]) -> Result<Vec<IpAddr>, StepError> {
        if let Some(e) = self.fail.lock().unwrap().clone() {
            return Err(StepError(e));
        }
        let mut n = self.next.lock().unwrap();
        *n += 1;
        Ok(vec![IpAddr::from([10, 65, 0, *n])])
    }
    async fn assign_ips(&self, _h: &str, _n: &str, _ips: &[IpAddr], _p: &[IpPool]) -> Result<(), StepError> {
        *self.claims.lock().unwrap() += 1;
        Ok(())
    }
    async fn release(&self, _h: &str) -> Result<(), StepError> {
        Ok(())
    }
    async fn release_ips(&self, h: &str, ips: &[IpAddr]) -> Result<(), StepError> {
        self.released_ips.lock().unwrap().push((h.to_string(), ips.to_vec()));
        Ok(())
    }
}

/// Also the plan's tests' cache.
pub(super) fn cache(docs: &[(&str, String)]) -> Cache {
    let mut items = vec![
        (
            "/calico/v1/resources/ippools/p".to_string(),
            br#"{"apiVersion":"calico/v1","kind":"IPPool","metadata":{"name":"p"},"spec":{"cidr":"10.65.0.0/16"}}"#
                .to_vec(),
            2,
        ),
        (
            "/calico/v1/resources/nodes/h1".to_string(),
            br#"{"apiVersion":"calico/v1","kind":"Node","metadata":{"name":"h1"},"spec":{"ipv4":"172.17.8.101/24"}}"#
                .to_vec(),
            2,
        ),
    ];
    for (k, v) in docs {
        items.push((k.to_string(), v.as_bytes().to_vec(), 3));
    }
    let mut c = Cache::default();
    c.apply(WatchEvent::Resync { items, revision: 10 });
    c
}

fn container(name: &str, ips: Option<&str>) -> (&'static str, String) {
    let key: &'static str = Box::leak(format!("/calico/v1/resources/containers/{name}").into_boxed_str());
    let ips = ips.map(|i| format!(r#","ips":["{i}"]"#)).unwrap_or_default();
    (
        key,
        format!(
            r#"{{"apiVersion":"calico/v1","kind":"Container","metadata":{{"name":"{name}"}},"spec":{{"node":"h1","netns":"/run/netns/{name}"{ips}}}}}"#
        ),
    )
}

pub(super) fn rec() -> Reconciler<FakeDp, FakeIpam, NetnsOnly> {
    Reconciler::new("h1", FakeDp::default(), FakeIpam::default(), NetnsOnly)
}

fn state_of(changed: &[(String, Option<ContainerStatus>)], name: &str) -> Option<ContainerStatus> {
    changed.iter().find(|(n, _)| n == name).and_then(|(_, s)| s.clone())
}

#[tokio::test]
async fn a_resync_that_finds_the_table_as_loaded_sends_nothing() {
    let mut r = rec();
    *r.dp.reads_back.lock().unwrap() = true;
    let c = cache(&[container("x", Some("10.65.0.9"))]);
    let before = std::time::Instant::now();
    let (report, _) = r.reconcile(&c).await;
    assert_eq!((report.nft_loads, *r.dp.nft_loads.lock().unwrap()), (1, 1));
    // The commit is stamped (what calico_event_to_commit_seconds ends at).
    assert!(report.nft_committed_at.is_some_and(|t| t >= before));
    assert!(
        r.dp.nft.lock().unwrap().contains("table inet calico {"),
        "loads are nft text"
    );
    // Resyncs with the kernel's table as it was after the load: nothing sent.
    for _ in 0..3 {
        r.forget_plumbing();
        let (report, _) = r.reconcile(&c).await;
        assert_eq!(report.nft_loads, 0);
        assert!(report.nft_committed_at.is_none(), "nothing sent, nothing committed");
    }
    assert_eq!(*r.dp.nft_loads.lock().unwrap(), 1);
    // Someone deleted a rule from our table: the next check loads it whole, once.
    {
        let mut k = r.dp.kernel.lock().unwrap();
        let text = k.clone().unwrap();
        let tampered: Vec<&str> = text.lines().filter(|l| !l.contains("ct state invalid")).collect();
        assert!(tampered.len() < text.lines().count());
        *k = Some(tampered.join("\n"));
    }
    r.reconcile(&c).await;
    assert_eq!(*r.dp.nft_loads.lock().unwrap(), 1, "only the periodic check reads back");
    r.forget_plumbing();
    r.reconcile(&c).await;
    assert_eq!(*r.dp.nft_loads.lock().unwrap(), 2);
    r.forget_plumbing();
    r.reconcile(&c).await;
    assert_eq!(*r.dp.nft_loads.lock().unwrap(), 2);
    // A changed ruleset is sent at once as a delta; once the kernel holds it, later
    // checks compare the listing with the printed table and send nothing: no reload
    // after deltas.
    let c2 = cache(&[container("x", Some("10.65.0.9")), container("y", Some("10.65.0.8"))]);
    let (report, _) = r.reconcile(&c2).await;
    assert_eq!((report.nft_loads, report.nft_whole_loads), (1, 0), "a delta");
    assert!(
        r.dp.nft.lock().unwrap().starts_with("add "),
        "{}",
        r.dp.nft.lock().unwrap()
    );
    // The fake kernel applies the delta: its listing becomes the new table, its
    // elements in another order, as a real hash set may list them.
    let printed = r.committed.as_ref().unwrap().to_text().unwrap();
    let mut lines: Vec<String> = printed.lines().map(str::to_string).collect();
    if let Some(at) = lines.iter().position(|l| l.starts_with("\t\telements = { \"cali")) {
        let (a, b) = (lines[at].clone(), lines[at + 1].clone());
        let first = a
            .trim_start_matches("\t\telements = { ")
            .trim_end_matches(',')
            .to_string();
        let second = b.trim_start().trim_end_matches(" }").to_string();
        lines[at] = format!("\t\telements = {{ {second},");
        lines[at + 1] = format!("\t\t\t     {first} }}");
    }
    *r.dp.kernel.lock().unwrap() = Some(lines.join("\n"));
    for _ in 0..2 {
        r.forget_plumbing();
        let (report, _) = r.reconcile(&c2).await;
        assert_eq!(report.nft_loads, 0, "an untouched table after deltas was sent again");
    }
    assert_eq!(*r.dp.nft_loads.lock().unwrap(), 3);
    // Without read-back (the table cannot be listed), every check loads.
    *r.dp.reads_back.lock().unwrap() = false;
    r.forget_plumbing();
    r.reconcile(&c2).await;
    assert_eq!(*r.dp.nft_loads.lock().unwrap(), 4);
}

#[tokio::test]
async fn host_settings_are_checked_once_then_on_resync_and_docker_events() {
    let mut r = rec();
    let c = cache(&[container("x", Some("10.65.0.9"))]);
    r.reconcile(&c).await;
    r.reconcile(&c).await;
    assert_eq!(*r.dp.host_checks.lock().unwrap(), vec!["cali".to_string()]);
    r.forget_plumbing();
    r.reconcile(&c).await;
    r.recheck_host();
    r.reconcile(&c).await;
    assert_eq!(r.dp.host_checks.lock().unwrap().len(), 3);
    // A failure is an error (so the loop retries) and does not stop the workloads.
    *r.dp.host_fails.lock().unwrap() = true;
    r.recheck_host();
    let (report, _) = r.reconcile(&c).await;
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("host settings") && e.contains("permission denied")),
        "{:?}",
        report.errors
    );
    assert_eq!(report.programmed, 1);
    *r.dp.host_fails.lock().unwrap() = false;
    let (report, _) = r.reconcile(&c).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(r.dp.host_checks.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn failed_setup_is_an_error_and_cut_off_then_retried() {
    let mut r = rec();
    r.dp.fail.lock().unwrap().insert("x".into());
    let c = cache(&[container("x", Some("10.65.0.9")), container("y", Some("10.65.0.8"))]);
    let (report, changed) = r.reconcile(&c).await;
    let x = state_of(&changed, "x").expect("status for x");
    assert_eq!(x.state, EndpointState::Error);
    assert!(x.message.contains("No such file"), "{}", x.message);
    assert_eq!(state_of(&changed, "y").unwrap().state, EndpointState::Programmed);
    assert_eq!((report.programmed, report.failed), (1, 1));
    assert!(!report.errors.is_empty(), "a failure must be retried");
    // Cut off: no route and no dispatch to x's interface, although a half-made
    // interface exists.
    let xif = calico_render::host_iface_name("cali", "x");
    let routes = r.dp.routes.lock().unwrap().clone();
    assert!(
        !routes.iter().any(|rt| rt.dst.to_string() == "10.65.0.9/32"),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|rt| rt.dst.to_string() == "10.65.0.8/32"),
        "{routes:?}"
    );
    assert!(!r.dp.nft.lock().unwrap().contains(&xif));
    assert!(
        r.dp.ifaces.lock().unwrap().contains(&xif),
        "the half-made pair is kept for the retry"
    );

    // The retry after the cause is gone programs it.
    r.dp.fail.lock().unwrap().clear();
    let (report, changed) = r.reconcile(&c).await;
    assert_eq!(state_of(&changed, "x").unwrap().state, EndpointState::Programmed);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(r.dp.nft.lock().unwrap().contains(&xif));
    assert!(r
        .dp
        .routes
        .lock()
        .unwrap()
        .iter()
        .any(|rt| rt.dst.to_string() == "10.65.0.9/32"));
}

#[tokio::test]
async fn vanished_plumbing_is_not_kept_as_good() {
    let mut r = rec();
    let c = cache(&[container("x", Some("10.65.0.9"))]);
    r.reconcile(&c).await;
    r.reconcile(&c).await;
    assert_eq!(
        r.dp.setups.lock().unwrap().len(),
        1,
        "unchanged workloads are not re-plumbed"
    );
    // The workload's namespace went away, and its veth with it. A reconcile between
    // checks trusts what it set up (no listing of every interface per change); the
    // next full check notices.
    r.dp.ifaces.lock().unwrap().clear();
    r.dp.fail.lock().unwrap().insert("x".into());
    r.reconcile(&c).await;
    assert_eq!(r.dp.setups.lock().unwrap().len(), 1, "no check was due");
    r.forget_plumbing();
    let (report, changed) = r.reconcile(&c).await;
    assert_eq!(
        r.dp.setups.lock().unwrap().len(),
        2,
        "vanished plumbing is set up again"
    );
    assert_eq!(state_of(&changed, "x").unwrap().state, EndpointState::Error);
    assert_eq!(report.programmed, 0);
    assert!(r.dp.routes.lock().unwrap().is_empty());
}

/// A change between resyncs does not list every workload interface (O(endpoints));
/// the first reconcile, a resync and a failed setup do, and a deleted Container's
/// interface is removed either way.
#[tokio::test]
async fn workload_interfaces_are_listed_only_when_a_check_is_due() {
    let mut r = rec();
    let listings = |r: &Reconciler<FakeDp, FakeIpam, NetnsOnly>| *r.dp.listings.lock().unwrap();
    let mut c = cache(&[container("x", Some("10.65.0.9"))]);
    // A leftover of an earlier run: removed by the first (listing) reconcile.
    r.dp.ifaces.lock().unwrap().insert("caliold".into());
    r.reconcile(&c).await;
    assert_eq!(listings(&r), 1);
    assert!(!r.dp.ifaces.lock().unwrap().contains("caliold"));
    let (k, v) = container("y", Some("10.65.0.10"));
    c.apply(WatchEvent::Put {
        key: k.to_string(),
        value: v.into_bytes(),
        mod_revision: 10,
    });
    let (report, _) = r.reconcile(&c).await;
    assert_eq!(report.programmed, 2);
    assert_eq!(listings(&r), 1, "a change lists nothing");
    let yif = r.plumbed.keys().find(|i| r.plumbed[*i].name == "y").cloned().unwrap();
    c.apply(WatchEvent::Delete {
        key: k.to_string(),
        revision: 11,
    });
    let (report, _) = r.reconcile(&c).await;
    assert_eq!(report.programmed, 1);
    assert_eq!(listings(&r), 1);
    assert!(
        !r.dp.ifaces.lock().unwrap().contains(&yif),
        "the deleted Container's veth is removed"
    );
    r.forget_plumbing();
    r.reconcile(&c).await;
    assert_eq!(listings(&r), 2, "a resync lists");
    // A failed setup asks for a check on the next reconcile.
    r.dp.fail.lock().unwrap().insert("z".into());
    let (k, v) = container("z", Some("10.65.0.11"));
    c.apply(WatchEvent::Put {
        key: k.to_string(),
        value: v.into_bytes(),
        mod_revision: 12,
    });
    r.reconcile(&c).await;
    assert_eq!(listings(&r), 2);
    r.reconcile(&c).await;
    assert_eq!(listings(&r), 3, "a failure makes the next reconcile list");
}

#[tokio::test]
async fn ipam_errors_show_in_status_and_are_retried() {
    let mut r = rec();
    *r.ipam.fail.lock().unwrap() = Some("pool 10.65.0.0/16 is full".into());
    let c = cache(&[container("x", None)]);
    let (report, changed) = r.reconcile(&c).await;
    let x = state_of(&changed, "x").unwrap();
    assert_eq!(x.state, EndpointState::Error);
    assert!(
        x.message.starts_with("IPAM: ") && x.message.contains("is full"),
        "{}",
        x.message
    );
    assert!(report.errors.iter().any(|e| e.contains("IPAM")), "{:?}", report.errors);
    assert!(
        r.dp.setups.lock().unwrap().is_empty(),
        "nothing plumbed without an address"
    );
    *r.ipam.fail.lock().unwrap() = None;
    let (_, changed) = r.reconcile(&c).await;
    let x = state_of(&changed, "x").unwrap();
    assert_eq!(x.state, EndpointState::Programmed);
    assert_eq!(x.ips, vec![IpAddr::from([10, 65, 0, 1])]);
}

#[tokio::test]
async fn a_thousand_endpoints_with_known_handles_need_no_ipam_calls() {
    let mut r = rec();
    let mut docs = Vec::new();
    for i in 0..1000 {
        let n = format!("m{i:04}");
        docs.push(container(&n, None));
        let k: &'static str = Box::leak(format!("/calico/v1/ipam/handles/container%2F{n}").into_boxed_str());
        docs.push((
            k,
            format!(r#"{{"ips":["10.65.{}.{}"],"node":"h1"}}"#, i / 200, i % 200 + 1),
        ));
    }
    let c = cache(&docs);
    let (report, _) = r.reconcile(&c).await;
    assert_eq!((report.programmed, report.plumbed), (1000, 1000));
    let (report, _) = r.reconcile(&c).await;
    assert_eq!(
        (report.programmed, report.plumbed),
        (1000, 0),
        "unchanged workloads are not re-plumbed"
    );
    assert_eq!(
        *r.ipam.next.lock().unwrap(),
        0,
        "IPAM was asked for addresses it had recorded"
    );
}

#[tokio::test]
async fn explicit_ips_already_recorded_are_not_claimed_again() {
    let mut r = rec();
    let handle = (
        "/calico/v1/ipam/handles/container%2Fx",
        r#"{"ips":["10.65.0.9"],"node":"h1"}"#.to_string(),
    );
    let c = cache(&[container("x", Some("10.65.0.9")), handle]);
    let (report, _) = r.reconcile(&c).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        *r.ipam.claims.lock().unwrap(),
        0,
        "a restarted agent trusts IPAM's record"
    );
    let c = cache(&[container("y", Some("10.65.0.7"))]);
    r.reconcile(&c).await;
    assert_eq!(*r.ipam.claims.lock().unwrap(), 1);
}

#[tokio::test]
async fn an_address_taken_out_of_the_spec_is_released_and_only_that_one() {
    let mut r = rec();
    let handle = |ips: &str| {
        (
            "/calico/v1/ipam/handles/container%2Fx",
            format!(r#"{{"ips":[{ips}],"node":"h1"}}"#),
        )
    };
    // The spec lists 10.65.0.9 only; IPAM still records fd00::9 for it too.
    let c = cache(&[container("x", Some("10.65.0.9")), handle(r#""10.65.0.9","fd00::9""#)]);
    let (report, _) = r.reconcile(&c).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        *r.ipam.released_ips.lock().unwrap(),
        vec![("container/x".to_string(), vec!["fd00::9".parse::<IpAddr>().unwrap()])]
    );
    // Spec and record agree: nothing more is released.
    let c = cache(&[container("x", Some("10.65.0.9")), handle(r#""10.65.0.9""#)]);
    r.reconcile(&c).await;
    assert_eq!(r.ipam.released_ips.lock().unwrap().len(), 1);
    // A Container whose addresses IPAM assigns (no ips in its spec) keeps them all.
    let c = cache(&[container("x", None), handle(r#""10.65.0.9","fd00::9""#)]);
    r.reconcile(&c).await;
    assert_eq!(r.ipam.released_ips.lock().unwrap().len(), 1);
}

/// Routes are synced when they change and at a resync, not on every reconcile (a sync
/// lists every link and route of the host).
#[tokio::test]
async fn routes_are_synced_only_when_they_change() {
    let mut r = rec();
    let syncs = |r: &Reconciler<FakeDp, FakeIpam, NetnsOnly>| *r.dp.route_syncs.lock().unwrap();
    let mut c = cache(&[container("x", Some("10.65.0.9"))]);
    r.reconcile(&c).await;
    assert_eq!(syncs(&r), 1);
    r.reconcile(&c).await;
    assert_eq!(syncs(&r), 1, "unchanged routes are not synced again");
    let (k, v) = container("y", Some("10.65.0.10"));
    c.apply(WatchEvent::Put {
        key: k.to_string(),
        value: v.into_bytes(),
        mod_revision: 10,
    });
    r.reconcile(&c).await;
    assert_eq!(syncs(&r), 2);
    assert!(r
        .dp
        .routes
        .lock()
        .unwrap()
        .iter()
        .any(|rt| rt.dst.to_string() == "10.65.0.10/32"));
    r.forget_plumbing();
    r.reconcile(&c).await;
    assert_eq!(syncs(&r), 3, "a resync syncs them again");
}
