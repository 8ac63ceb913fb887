//! `calicoctl explain`: the verdict and the rule that decides, offline from files and
//! from etcd (where a Container's address may be IPAM-assigned).

mod common;

use common::*;

fn examples() -> String {
    examples_dir().display().to_string()
}

fn explain(args: &[&str]) -> Run {
    let mut a = vec!["explain", "-f"];
    let ex = examples();
    a.push(&ex);
    a.extend_from_slice(args);
    ctl("127.0.0.1:1", &a)
}

#[test]
fn explain_names_the_deciding_rule_and_exits_by_verdict() {
    let r = explain(&["workload-a", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .starts_with("workload-a (10.65.0.1) -> workload-c (10.65.0.3) TCP port 5432: allowed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("by Policy/db-no-http spec.ingress[1]:"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("by Group/A_C_E's default egress rule"),
        "{}",
        r.stdout
    );

    // Port 80 on the db: the policy's Deny rule.
    let r = explain(&["workload-a", "workload-c", "--port", "80"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains("ingress at workload-c (node host1): dropped"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("by Policy/db-no-http spec.ingress[0]:"),
        "{}",
        r.stdout
    );

    // From B: the policy passes, and c's group takes only its members.
    let r = explain(&["workload-b", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains("by no rule: nothing allowed or denied it"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("on the way: Policy/db-no-http spec.ingress[2] (Pass)"),
        "{}",
        r.stdout
    );

    // An address stands for the Container holding it; an outside one has no rules.
    let r = explain(&["10.65.0.1", "192.0.2.1", "--port", "443"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.starts_with("workload-a (10.65.0.1) -> 192.0.2.1"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("ingress: 192.0.2.1 is no Container's address"),
        "{}",
        r.stdout
    );

    // JSON carries the same decision.
    let r = explain(&["workload-a", "workload-c", "--port", "80", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["verdict"], "Deny");
    assert_eq!(v["ingress"]["decided_by"]["kind"], "policy");
    assert_eq!(v["ingress"]["decided_by"]["name"], "db-no-http");
    assert_eq!(v["ingress"]["decided_by"]["index"], 0);
}

#[test]
fn explain_refuses_what_it_cannot_explain() {
    for (args, want) in [
        (
            &["workload-a", "nosuch", "--port", "1"][..],
            "no Container named 'nosuch'",
        ),
        (&["workload-a", "workload-c"][..], "--proto TCP needs --port"),
        (
            &["workload-a", "workload-c", "--proto", "ICMP", "--port", "1"][..],
            "--proto ICMP has no ports",
        ),
        (
            &["192.0.2.1", "192.0.2.2", "--port", "1"][..],
            "neither end is a Container",
        ),
        (
            &["workload-a", "workload-c", "--ipv6", "--port", "1"][..],
            "has no IPv6 address",
        ),
        (
            &["workload-a", "workload-c", "--proto", "tcpx"][..],
            "unknown protocol 'tcpx'",
        ),
    ] {
        let r = explain(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
}

/// From etcd, a Container without explicit ips has the address IPAM gave it.
#[test]
fn explain_from_etcd_uses_ipam_addresses() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    ctl(&ep, &["apply", "-f", &examples()]).assert_ok();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "c.yaml",
        "apiVersion: calico/v1\nkind: Container\nmetadata: {name: auto, labels: {tier: web}}\nspec: {node: host1, netns: /x, groups: [A_C_E]}\n",
    );
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    // Until an agent assigns it an address, it has none: a clear error, not a guess.
    let r = ctl(&ep, &["explain", "auto", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("Container 'auto' has no IPv4 address"),
        "{}",
        r.stderr
    );
    // Assign as the agent does: through IPAM, under the Container's handle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ip = rt.block_on(async {
        let s = calico_store::Store::connect(&calico_store::StoreConfig::from_list(&ep))
            .await
            .unwrap();
        let pools: Vec<calico_schema::IpPool> = s
            .list(Some(calico_schema::Kind::IPPool))
            .await
            .unwrap()
            .resources
            .into_iter()
            .filter_map(|r| match r {
                calico_schema::Resource::IpPool(p) => Some(p),
                _ => None,
            })
            .collect();
        let ipam = calico_store::ipam::Ipam::new(s.client(), std::time::Duration::from_secs(5));
        ipam.auto_assign(&calico_store::ipam::container_handle("auto"), "host1", &pools, false)
            .await
            .unwrap()[0]
    });
    let r = ctl(&ep, &["explain", "auto", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("auto ({ip}) -> workload-c")),
        "{}",
        r.stdout
    );
    // And by that address.
    let r = ctl(&ep, &["explain", &ip.to_string(), "workload-c", "--port", "5432"]);
    assert!(r.stdout.starts_with(&format!("auto ({ip})")), "{r:?}");
    let r = ctl(&ep, &["explain", "workload-a", "workload-c", "--port", "5432"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains("by Policy/db-no-http spec.ingress[1]:"),
        "{}",
        r.stdout
    );
}
