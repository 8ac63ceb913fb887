//! calicoctl against a real etcd: the examples, round trips, create/replace/delete
//! semantics, diff, get formats, the seed's group commands, schema, validate, version.

mod common;

use common::*;

fn applied_examples() -> (TestEtcd, String) {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let ex = examples_dir().display().to_string();
    let r = ctl(&ep, &["apply", "-f", &ex]);
    r.assert_ok();
    (etcd, ep)
}

#[test]
fn examples_apply_and_yaml_output_reapplies_unchanged() {
    let (_etcd, ep) = applied_examples();
    let before_versions = versions(&ep);
    assert!(before_versions.len() >= 10, "{before_versions:?}");
    let before = dump(&ep);

    // Re-applying the examples themselves changes nothing.
    let ex = examples_dir().display().to_string();
    let r = ctl(&ep, &["apply", "-f", &ex]);
    r.assert_ok();
    assert!(r.stdout.lines().all(|l| l.ends_with(" unchanged")), "{}", r.stdout);

    // get all -o yaml | apply -f -: everything unchanged, not one revision bumped.
    let yaml = ctl(&ep, &["get", "all", "-o", "yaml"]);
    yaml.assert_ok();
    assert!(yaml.stdout.contains("resourceVersion:"), "{}", yaml.stdout);
    let r = ctl_stdin(&ep, &["apply", "-f", "-"], &yaml.stdout);
    r.assert_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), before_versions.len(), "{}", r.stdout);
    assert!(lines.iter().all(|l| l.ends_with(" unchanged")), "{}", r.stdout);
    assert_eq!(dump(&ep), before, "etcd changed on an unchanged re-apply");
    assert_eq!(versions(&ep), before_versions);

    // Per-kind YAML output re-applies unchanged too.
    for kind in ["group", "containers", "policy", "ippool", "node", "clusterconfig"] {
        let y = ctl(&ep, &["get", kind, "-o", "yaml"]);
        y.assert_ok();
        let r = ctl_stdin(&ep, &["apply", "-f", "-"], &y.stdout);
        r.assert_ok();
        assert!(
            r.stdout.lines().all(|l| l.ends_with(" unchanged")),
            "{kind}: {}",
            r.stdout
        );
    }
    assert_eq!(dump(&ep), before);
}

#[test]
fn apply_reports_created_configured_unchanged_and_dry_run_writes_nothing() {
    let etcd = TestEtcd::start();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let g = "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: web\nspec: {}\n";
    let f = write_file(dir.path(), "g.yaml", g);

    let before = dump(&ep);
    let r = ctl(&ep, &["apply", "--dry-run", "-f", &f]);
    r.assert_ok();
    assert_eq!(r.stdout, "Group/web created (dry run)\n");
    assert_eq!(dump(&ep), before);

    assert_eq!(ctl(&ep, &["apply", "-f", &f]).assert_ok().stdout, "Group/web created\n");
    assert_eq!(
        ctl(&ep, &["apply", "-f", &f]).assert_ok().stdout,
        "Group/web unchanged\n"
    );
    let f2 = write_file(
        dir.path(),
        "g2.yaml",
        &g.replace("  name: web\n", "  name: web\n  labels: {tier: web}\n"),
    );
    assert_eq!(
        ctl(&ep, &["apply", "-f", &f2]).assert_ok().stdout,
        "Group/web configured\n"
    );
}

#[test]
fn create_replace_and_delete_semantics() {
    let (_etcd, ep) = applied_examples();
    let dir = tempfile::tempdir().unwrap();
    let existing = write_file(
        dir.path(),
        "b.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: B\n  labels: {x: y}\nspec: {}\n",
    );
    let fresh = write_file(
        dir.path(),
        "new.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: fresh\nspec: {}\n",
    );

    // create of an existing resource fails, located, and writes nothing.
    let before = dump(&ep);
    let r = ctl(&ep, &["create", "-f", &existing]);
    r.assert_fails();
    assert!(
        r.stderr
            .contains(&format!("{existing}:4:9: metadata.name: Group/B already exists")),
        "{}",
        r.stderr
    );
    assert_eq!(dump(&ep), before);

    // replace of a missing one fails.
    let r = ctl(&ep, &["replace", "-f", &fresh]);
    r.assert_fails();
    assert!(r.stderr.contains("Group/fresh does not exist"), "{}", r.stderr);
    assert_eq!(dump(&ep), before);

    // ...and the other way round both work.
    assert_eq!(
        ctl(&ep, &["create", "-f", &fresh]).assert_ok().stdout,
        "Group/fresh created\n"
    );
    assert_eq!(
        ctl(&ep, &["replace", "-f", &existing]).assert_ok().stdout,
        "Group/B replaced\n"
    );

    // delete: a missing name is an error unless --ignore-not-found; nothing is deleted
    // when any item fails.
    let r = ctl(&ep, &["delete", "group", "fresh", "nope"]);
    r.assert_fails();
    assert!(r.stderr.contains("error: Group/nope not found"), "{}", r.stderr);
    assert!(ctl(&ep, &["get", "group", "fresh"]).ok());
    let r = ctl(&ep, &["delete", "groups", "fresh", "nope", "--ignore-not-found"]);
    assert_eq!(r.assert_ok().stdout, "Group/fresh deleted\n");
    assert!(!ctl(&ep, &["get", "group", "fresh"]).ok());

    // A Group or Node still used by Containers is refused, naming them.
    let r = ctl(&ep, &["delete", "group", "A_C_E"]);
    r.assert_fails();
    for c in ["Container/workload-a", "Container/workload-c", "Container/workload-e"] {
        assert!(r.stderr.contains(c), "{}", r.stderr);
    }
    let r = ctl(&ep, &["delete", "node", "host2"]);
    r.assert_fails();
    assert!(r.stderr.contains("Container/workload-d"), "{}", r.stderr);
    // Deleting the users along with it is fine.
    let r = ctl(&ep, &["delete", "--dry-run", "container", "workload-b"]);
    assert_eq!(r.assert_ok().stdout, "Container/workload-b deleted (dry run)\n");
    assert!(ctl(&ep, &["get", "container", "workload-b"]).ok());
    let r = ctl(&ep, &["delete", "group", "D", "--force"]);
    assert_eq!(r.assert_ok().stdout, "Group/D deleted\n");

    // delete -f deletes what the file defines.
    let r = ctl(&ep, &["delete", "-f", &existing]);
    r.assert_fails(); // B still has workload-b
    assert!(r.stderr.contains("Container/workload-b"), "{}", r.stderr);
    let pol = workspace_file("examples/40-policy.yaml").display().to_string();
    assert_eq!(
        ctl(&ep, &["delete", "-f", &pol]).assert_ok().stdout,
        "Policy/db-no-http deleted\n"
    );
    let r = ctl(&ep, &["delete", "-f", &pol]);
    r.assert_fails();
    assert!(r.stderr.contains("Policy/db-no-http not found"), "{}", r.stderr);

    // Unknown kinds are named.
    let r = ctl(&ep, &["delete", "gruop", "x"]);
    r.assert_fails();
    assert!(r.stderr.contains("unknown kind 'gruop'"), "{}", r.stderr);
    assert_eq!(r.code, Some(2), "an unknown kind is a usage error: {}", r.stderr);
}

#[test]
fn resource_version_on_input_is_a_precondition() {
    let (_etcd, ep) = applied_examples();
    let y = ctl(&ep, &["get", "group", "B", "-o", "yaml"]);
    y.assert_ok();
    let changed = y.stdout.replace("  name: B\n", "  name: B\n  labels:\n    v: one\n");
    assert_ne!(changed, y.stdout);
    assert_eq!(
        ctl_stdin(&ep, &["apply", "-f", "-"], &changed).assert_ok().stdout,
        "Group/B configured\n"
    );
    // The same stale resourceVersion again: a conflict.
    let again = changed.replace("v: one", "v: two");
    let r = ctl_stdin(&ep, &["apply", "-f", "-"], &again);
    r.assert_fails();
    assert!(r.stderr.to_lowercase().contains("conflict"), "{}", r.stderr);
}

#[test]
fn diff_exit_codes_and_output() {
    let (_etcd, ep) = applied_examples();
    let ex = examples_dir().display().to_string();
    let r = ctl(&ep, &["diff", "-f", &ex]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "");

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_file("examples/40-policy.yaml")).unwrap();
    let f = write_file(dir.path(), "p.yaml", &text.replace("order: 100", "order: 50"));
    let g = write_file(
        dir.path(),
        "g.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: newgroup\nspec: {}\n",
    );
    let before = dump(&ep);
    let r = ctl(&ep, &["diff", "-f", &f, "-f", &g]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains("--- Policy/db-no-http (stored, resourceVersion "),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("-  order: 100\n+  order: 50\n"), "{}", r.stdout);
    assert!(r.stdout.contains("--- Group/newgroup (not stored)"), "{}", r.stdout);
    assert!(r.stdout.contains("+kind: Group\n"), "{}", r.stdout);
    assert_eq!(dump(&ep), before, "diff wrote something");

    // Errors: exit 2, with the location.
    let bad = write_file(
        dir.path(),
        "bad.yaml",
        // (A Group may leave spec out; an IPPool may not.)
        "apiVersion: calico/v1\nkind: IPPool\nmetadata:\n  name: x\n",
    );
    let r = ctl(&ep, &["diff", "-f", &bad]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains(&format!("{bad}:1:1: missing required field 'spec'")),
        "{}",
        r.stderr
    );
}

#[test]
fn get_formats() {
    let (_etcd, ep) = applied_examples();

    let t = ctl(&ep, &["get", "containers"]);
    t.assert_ok();
    let header = t.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("NODE") && header.contains("GROUPS"),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout.contains("workload-a") && t.stdout.contains("10.65.0.1"),
        "{}",
        t.stdout
    );

    // Status written by an agent shows in -o wide.
    let status = serde_json::json!({
        "node": "host1", "hostInterface": "cali0123456789a", "ips": ["10.65.0.1"],
        "state": "Programmed", "updated": 1
    });
    put(&ep, "status/containers/workload-a", &status);
    let w = ctl(&ep, &["get", "container", "-o", "wide"]);
    w.assert_ok();
    let line = w
        .stdout
        .lines()
        .find(|l| l.starts_with("workload-a"))
        .unwrap_or_default();
    assert!(
        line.contains("cali0123456789a") && line.contains("Programmed") && line.contains("eth0"),
        "{}",
        w.stdout
    );
    let line_b = w
        .stdout
        .lines()
        .find(|l| l.starts_with("workload-b"))
        .unwrap_or_default();
    assert!(!line_b.contains("Programmed"), "{}", w.stdout);

    // YAML and JSON carry it as `status` (output only), and what they print applies
    // unchanged: apply ignores status.
    let y = ctl(&ep, &["get", "container", "workload-a", "-o", "yaml"]);
    let text = &y.assert_ok().stdout;
    assert!(
        text.contains("status:\n  node: host1\n  hostInterface: cali0123456789a\n  ips:\n  - \"10.65.0.1\"\n  state: Programmed\n"),
        "{text}"
    );
    let j = ctl(&ep, &["get", "container", "workload-a", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&j.assert_ok().stdout).unwrap();
    assert_eq!(v["status"]["hostInterface"], "cali0123456789a");
    assert_eq!(v["status"]["ips"][0], "10.65.0.1");
    let y = ctl(&ep, &["get", "container", "workload-b", "-o", "yaml"]);
    assert!(!y.assert_ok().stdout.contains("status:"), "{}", y.stdout);
    let all = ctl(&ep, &["get", "all", "-o", "yaml"]);
    let again = ctl_stdin(&ep, &["apply", "-f", "-"], &all.assert_ok().stdout);
    assert!(
        again.assert_ok().stdout.lines().all(|l| l.contains("unchanged")),
        "{}",
        again.stdout
    );
    let v = ctl_stdin(&ep, &["validate", "-f", "-"], &all.stdout);
    v.assert_ok();

    // JSON: the object for a named get, a List otherwise.
    let j = ctl(&ep, &["get", "group", "B", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&j.assert_ok().stdout).unwrap();
    assert_eq!(v["kind"], "Group");
    assert_eq!(v["metadata"]["name"], "B");
    assert!(v["metadata"]["resourceVersion"].as_str().is_some_and(|s| !s.is_empty()));
    let j = ctl(&ep, &["get", "groups", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&j.assert_ok().stdout).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["apiVersion"], "calico/v1");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(3));

    // get all: every kind.
    let a = ctl(&ep, &["get", "all"]);
    for k in ["ClusterConfig:", "IPPool:", "Node:", "Group:", "Policy:", "Container:"] {
        assert!(a.assert_ok().stdout.contains(k), "{}", a.stdout);
    }

    // A missing name is an error; unknown kinds are named.
    let r = ctl(&ep, &["get", "group", "nope"]);
    r.assert_fails();
    assert!(r.stderr.contains("Group/nope not found"), "{}", r.stderr);
    let r = ctl(&ep, &["get", "widgets"]);
    r.assert_fails();
    assert!(r.stderr.contains("unknown kind 'widgets'"), "{}", r.stderr);
    assert_eq!(r.code, Some(2), "an unknown kind is a usage error: {}", r.stderr);
}

#[test]
fn seed_group_commands() {
    let (_etcd, ep) = applied_examples();
    assert_eq!(ctl(&ep, &["addgroup", "web"]).assert_ok().stdout, "Created group web\n");
    // Identical: fine. Different: refused.
    assert!(ctl(&ep, &["addgroup", "web"])
        .assert_ok()
        .stdout
        .contains("already exists"));
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "g.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: custom\nspec:\n  egress: []\n",
    );
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    let r = ctl(&ep, &["addgroup", "custom"]);
    r.assert_fails();
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    let r = ctl(&ep, &["addgroup", "-bad-"]);
    r.assert_fails();

    assert_eq!(
        ctl(&ep, &["addtogroup", "workload-a", "web"]).assert_ok().stdout,
        "Added workload-a to group web\n"
    );
    assert!(ctl(&ep, &["addtogroup", "workload-a", "web"])
        .assert_ok()
        .stdout
        .contains("already in group web"));
    let r = ctl(&ep, &["addtogroup", "workload-a", "nosuch"]);
    r.assert_fails();
    assert!(r.stderr.contains("Group 'nosuch' does not exist"), "{}", r.stderr);
    let r = ctl(&ep, &["addtogroup", "nosuch", "web"]);
    r.assert_fails();
    assert!(r.stderr.contains("no Container named 'nosuch'"), "{}", r.stderr);

    let s = ctl(&ep, &["showgroups"]);
    assert!(
        s.assert_ok()
            .stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["web", "1"]),
        "{}",
        s.stdout
    );
    // An agent's report for one member: its row shows the reported state.
    let status = serde_json::json!({
        "node": "host1", "hostInterface": "cali0123456789a", "ips": ["10.65.0.1"],
        "state": "Programmed", "updated": 1
    });
    put(&ep, "status/containers/workload-a", &status);
    let d = ctl(&ep, &["showgroups", "--detailed"]);
    assert!(
        d.assert_ok()
            .stdout
            .contains("Group web\n  members: workload-a\n  ingress (default):\n    - Allow from groups web\n"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("Group custom\n  members: (none)\n"), "{}", d.stdout);
    // ... and each member's addresses, node and state, from what its agent reported
    // (the others have no report yet).
    let row = d
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Group web"))
        .find(|l| l.trim_start().starts_with("workload-a"))
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["workload-a", "10.65.0.1", "host1", "Programmed"],
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains("workload-b   10.65.0.2   host1   not yet programmed"),
        "{}",
        d.stdout
    );

    // removegroup refuses while members remain; --force takes it out of them first.
    let r = ctl(&ep, &["removegroup", "web"]);
    r.assert_fails();
    assert!(r.stderr.contains("Container/workload-a"), "{}", r.stderr);
    let r = ctl(&ep, &["removegroup", "web", "--force"]);
    assert_eq!(
        r.assert_ok().stdout,
        "Removed workload-a from group web\nRemoved group web\n"
    );
    let j = ctl(&ep, &["get", "container", "workload-a", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&j.assert_ok().stdout).unwrap();
    assert_eq!(v["spec"]["groups"], serde_json::json!(["A_C_E"]));
    assert!(ctl(&ep, &["removegroup", "web"])
        .assert_fails()
        .stderr
        .contains("does not exist"));

    assert_eq!(
        ctl(&ep, &["removefromgroup", "workload-b", "B"]).assert_ok().stdout,
        "Removed workload-b from group B\n"
    );
    let r = ctl(&ep, &["removefromgroup", "workload-b", "B"]);
    r.assert_fails();
    assert!(r.stderr.contains("workload-b is not in group B"), "{}", r.stderr);
    assert_eq!(ctl(&ep, &["removegroup", "B"]).assert_ok().stdout, "Removed group B\n");
}

#[test]
fn containers_resolve_by_the_docker_name_in_their_spec() {
    let (_etcd, ep) = applied_examples();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "c.yaml",
        "apiVersion: calico/v1\nkind: Container\nmetadata:\n  name: web-resource\nspec:\n  node: host1\n  container: web-1\n",
    );
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    assert_eq!(
        ctl(&ep, &["addtogroup", "web-1", "B"]).assert_ok().stdout,
        "Added web-resource to group B\n"
    );
}

#[test]
fn schema_prints_the_committed_file_byte_for_byte() {
    let committed = std::fs::read(workspace_file("schema/calico-v1.schema.json")).unwrap();
    // No etcd needed, and none reachable here.
    let r = command("127.0.0.1:1", &["schema"]).output().unwrap();
    assert!(r.status.success());
    assert_eq!(r.stdout, committed);
}

#[test]
fn validate_works_offline() {
    // Port 1 on loopback: nothing listens, so any attempt to reach etcd would fail.
    let ep = "127.0.0.1:1";
    let ex = examples_dir().display().to_string();
    let r = ctl(ep, &["validate", "-f", &ex]);
    assert!(
        r.assert_ok().stdout.contains("Container/workload-a valid"),
        "{}",
        r.stdout
    );

    let dir = tempfile::tempdir().unwrap();
    // References to things outside the files are not checked offline...
    let dangling = write_file(
        dir.path(),
        "c.yaml",
        "apiVersion: calico/v1\nkind: Container\nmetadata:\n  name: c\nspec:\n  node: elsewhere\n  netns: /x\n  groups: [g]\n",
    );
    ctl(ep, &["validate", "-f", &dangling]).assert_ok();
    // ...but everything else is.
    let bad = write_file(
        dir.path(),
        "p.yaml",
        "apiVersion: calico/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.1.0.1/16\n",
    );
    let r = ctl(ep, &["validate", "-f", &bad]);
    r.assert_fails();
    assert!(r.stderr.contains(&format!("{bad}:6:9: spec.cidr: ")), "{}", r.stderr);
    // Cross-document checks within the files still run.
    let two = write_file(
        dir.path(),
        "two.yaml",
        "apiVersion: calico/v1\nkind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.1.0.0/16\n---\napiVersion: calico/v1\nkind: IPPool\nmetadata:\n  name: b\nspec:\n  cidr: 10.1.2.0/24\n",
    );
    let r = ctl(ep, &["validate", "-f", &two]);
    r.assert_fails();
    assert!(
        r.stderr
            .contains(&format!("{two}:13:9: spec.cidr: 10.1.2.0/24 overlaps IPPool 'a'")),
        "{}",
        r.stderr
    );
}

#[test]
fn version_and_input_errors() {
    let r = ctl("127.0.0.1:1", &["version"]);
    assert!(r.assert_ok().stdout.contains(env!("CARGO_PKG_VERSION")));
    assert!(r.stdout.contains("calico/v1"));

    let r = ctl("127.0.0.1:1", &["apply", "-f", "/nonexistent/file.yaml"]);
    r.assert_fails();
    assert!(
        r.stderr.starts_with("/nonexistent/file.yaml: cannot read:"),
        "{}",
        r.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    let empty = write_file(dir.path(), "empty.yaml", "# nothing\n");
    let r = ctl("127.0.0.1:1", &["apply", "-f", &empty]);
    r.assert_fails();
    assert!(r.stderr.contains("no resources found"), "{}", r.stderr);
}

#[test]
fn etcd_authority_from_the_seed_is_accepted() {
    let etcd = TestEtcd::start();
    let r: Run = std::process::Command::new(BIN)
        .env_remove("ETCD_ENDPOINTS")
        .env("ETCD_AUTHORITY", etcd.endpoint())
        .args(["get", "groups"])
        .output()
        .unwrap()
        .into();
    r.assert_ok();
    let r: Run = std::process::Command::new(BIN)
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("ETCD_AUTHORITY", "127.0.0.1:1")
        .args(["get", "groups"])
        .output()
        .unwrap()
        .into();
    r.assert_ok();
}

#[test]
fn imperative_commands_refuse_sync_owned_resources_unless_forced() {
    let (_etcd, ep) = applied_examples();
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "owned.yaml",
        "apiVersion: calico/v1\nkind: Group\nmetadata:\n  name: owned\n  annotations:\n    calico/owner: sync:main\n    calico/source: policy/owned.yaml\nspec: {}\n---\n\
         apiVersion: calico/v1\nkind: Container\nmetadata:\n  name: oc\n  annotations:\n    calico/owner: sync:main\n    calico/source: workloads/oc.yaml\nspec:\n  node: host1\n  netns: /x\n",
    );
    ctl(&ep, &["apply", "-f", &f]).assert_ok();
    let r = ctl(&ep, &["delete", "group", "owned"]);
    r.assert_fails();
    assert!(r.stderr.contains("policy/owned.yaml"), "{}", r.stderr);
    let r = ctl(&ep, &["addtogroup", "oc", "B"]);
    r.assert_fails();
    assert!(r.stderr.contains("workloads/oc.yaml"), "{}", r.stderr);
    let r = ctl(&ep, &["removegroup", "owned"]);
    r.assert_fails();
    assert!(r.stderr.contains("policy/owned.yaml"), "{}", r.stderr);
    ctl(&ep, &["addtogroup", "oc", "B", "--force"]).assert_ok();
    ctl(&ep, &["delete", "group", "owned", "--force"]).assert_ok();
}
