//! `validate::dependencies` names everything `check_set` reads: checking a set against
//! only those stored resources gives the same issues as against all of them.

use std::path::Path;

use calico_schema::validate::{check_set, dependencies, Existing};
use calico_schema::Resource;

fn examples() -> Vec<Resource> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    calico_schema::load_path(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| l.resource)
        .collect()
}

/// Documents that trip each cross-resource check against the examples.
fn trouble() -> Vec<Resource> {
    let docs = r#"
apiVersion: calico/v1
kind: Container
metadata: {name: ip-taken}
spec: {node: host1, netns: /x, ips: [10.65.0.1], groups: [B]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: no-pool}
spec: {node: host1, netns: /x, ips: [192.0.2.9]}
---
apiVersion: calico/v1
kind: Container
metadata: {name: no-node-no-group}
spec: {node: nowhere, netns: /x, groups: [missing]}
---
apiVersion: calico/v1
kind: Group
metadata: {name: refs-missing}
spec:
  ingress: [{action: Allow, source: {groups: [missing]}}]
---
apiVersion: calico/v1
kind: Policy
metadata: {name: refs-missing}
spec:
  selector: all()
  ingress: [{action: Allow, source: {groups: [missing]}, destination: {groups: [B]}}]
---
apiVersion: calico/v1
kind: IPPool
metadata: {name: overlapping}
spec: {cidr: 10.65.0.0/24}
---
apiVersion: calico/v1
kind: BGPPeer
metadata: {name: peer-nowhere}
spec: {node: nowhere, peerIP: 192.0.2.1, asNumber: 64512}
"#;
    calico_schema::load_str("trouble.yaml", docs)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| l.resource)
        .collect()
}

#[test]
fn checks_against_the_dependencies_equal_checks_against_everything() {
    let stored = examples();
    let mut candidates = stored.clone();
    candidates.extend(trouble());
    let mut with_issues = 0;
    for set in candidates
        .iter()
        .map(std::slice::from_ref)
        .chain([&candidates[..3], &trouble()[..]])
    {
        let refs: Vec<&Resource> = set.iter().collect();
        let all = check_set(
            &refs,
            &Existing {
                resources: &stored,
                complete: true,
            },
        );
        let deps = dependencies(set);
        let scoped: Vec<Resource> = stored
            .iter()
            .filter(|r| deps.kinds.contains(&r.kind()) || deps.keys.contains(&(r.kind(), r.name().to_string())))
            .cloned()
            .collect();
        let part = check_set(
            &refs,
            &Existing {
                resources: &scoped,
                complete: true,
            },
        );
        assert_eq!(
            format!("{all:?}"),
            format!("{part:?}"),
            "set {:?} reads more than its dependencies",
            set.iter().map(Resource::id).collect::<Vec<_>>()
        );
        with_issues += usize::from(!all.is_empty());
        // Scoped reads are smaller: the point of them.
        assert!(scoped.len() <= stored.len());
    }
    assert!(
        with_issues >= 7,
        "the trouble documents found only {with_issues} sets with issues"
    );
}
