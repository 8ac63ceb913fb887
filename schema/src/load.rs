//! From YAML text to validated resources, with every error located.
//!
//! The stages, each reporting `file:line:col: field: message`:
//! 1. YAML syntax and duplicate keys ([`crate::yaml`]);
//! 2. the JSON Schema of the document's kind (types, unknown fields, ranges);
//! 3. strict decoding into the Rust types (CIDR host bits, port ranges...);
//! 4. per-resource semantic checks ([`crate::validate::check_resource`]).
//!
//! Cross-resource checks need the stored state and run in [`check_loaded_set`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Diagnostic, Diagnostics};
use crate::limits::{MAX_DIR_BYTES, MAX_DIR_FILES, MAX_FILE_BYTES};
use crate::resource::{Kind, Resource};
use crate::schema_doc::validator;
use crate::validate::{self, At, Existing, Issue};
use crate::yaml::{self, Pos, SpanMap};

/// One document, decoded and checked on its own.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: String,
    /// 0-based index of the document in its file.
    pub index: usize,
    pub start: Pos,
    pub spans: SpanMap,
    pub resource: Resource,
}

impl Loaded {
    pub fn diagnostic(&self, issue: &Issue) -> Diagnostic {
        locate(&self.file, &self.spans, issue)
    }
}

fn locate(file: &str, spans: &SpanMap, issue: &Issue) -> Diagnostic {
    let pos = match issue.at {
        At::Value => spans.value_pos(&issue.path),
        At::Key => spans.key_pos(&issue.path),
        At::Content(off) => spans.content_pos(&issue.path, off),
    };
    Diagnostic {
        file: file.to_string(),
        line: pos.line,
        col: pos.col,
        path: issue.path.clone(),
        message: issue.message.clone(),
    }
}

/// Loads every document of one YAML text. All problems of all documents are reported.
pub fn load_str(file: &str, text: &str) -> Result<Vec<Loaded>, Diagnostics> {
    let docs = yaml::parse_documents(file, text).map_err(|d| Diagnostics(vec![d]))?;
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for doc in docs {
        match load_doc(file, doc) {
            Ok(l) => out.push(l),
            Err(mut d) => diags.append(&mut d),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(Diagnostics(diags))
    }
}

fn load_doc(file: &str, mut doc: yaml::YamlDoc) -> Result<Loaded, Vec<Diagnostic>> {
    let issue = |path: &str, at: At, message: String| {
        locate(
            file,
            &doc.spans,
            &Issue {
                path: path.to_string(),
                at,
                message,
            },
        )
    };
    let Value::Object(obj) = &doc.value else {
        return Err(vec![issue(
            "",
            At::Value,
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        )]);
    };
    let kind_text = match obj.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(vec![issue("kind", At::Value, "kind must be a string".into())]),
        None => return Err(vec![issue("", At::Value, "missing field 'kind'".into())]),
    };
    let Some(kind) = Kind::ALL.iter().copied().find(|k| k.as_str() == kind_text) else {
        let names: Vec<&str> = Kind::ALL.iter().map(super::resource::Kind::as_str).collect();
        return Err(vec![issue(
            "kind",
            At::Value,
            format!("unknown kind '{kind_text}' (expected one of {})", names.join(", ")),
        )]);
    };

    // `status` is output only (what `get -o yaml` shows an agent observed): ignored, so
    // what get prints applies unchanged.
    if let Value::Object(obj) = &mut doc.value {
        obj.remove("status");
    }

    // A kind whose spec fields are all optional may leave spec out or empty.
    if kind.spec_optional() {
        if let Value::Object(obj) = &mut doc.value {
            if matches!(obj.get("spec"), None | Some(Value::Null)) {
                obj.insert("spec".into(), Value::Object(serde_json::Map::new()));
            }
        }
    }

    // Every schema error of the document, each explained in its own words (an optional
    // field's `anyOf` with null is unwrapped to what is wrong inside it).
    if let Some(v) = validator(kind) {
        let mut errs = Vec::new();
        for e in v.iter_errors(&doc.value) {
            schema_issues(file, &doc.spans, &e, &mut errs);
        }
        if !errs.is_empty() {
            return Err(sorted(dedup(errs)));
        }
    }

    let resource = match Resource::from_json_kind(kind, doc.value.clone()) {
        Ok(r) => r,
        Err((path, msg)) => {
            let path = clean_path(&path);
            let msg = plain_decode_message(&path, value_at(&doc.value, &path), msg);
            return Err(vec![issue(&path, At::Value, msg)]);
        }
    };

    let loaded = Loaded {
        file: file.to_string(),
        index: doc.index,
        start: doc.start,
        spans: doc.spans,
        resource,
    };
    let issues = validate::check_resource(&loaded.resource);
    if !issues.is_empty() {
        return Err(issues.iter().map(|i| loaded.diagnostic(i)).collect());
    }
    Ok(loaded)
}

/// The value at a decode error's path (`spec.ips[0]`), to name it in the message.
fn value_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for idx in rest.split('[') {
            if let Some(i) = idx.strip_suffix(']') {
                v = v.get(i.parse::<usize>().ok()?)?;
            }
        }
    }
    Some(v)
}

/// The decoder's wording names neither the value nor what would do ("invalid IP
/// address syntax", "invalid value: integer `4294967296`, expected u32"); say both.
fn plain_decode_message(path: &str, value: Option<&Value>, msg: String) -> String {
    let shown = match value {
        Some(Value::String(s)) => format!("'{s}'"),
        Some(v) => v.to_string(),
        None => return msg,
    };
    if msg == "invalid IP address syntax" {
        format!("{shown} is not an IP address (expected e.g. 10.65.0.1 or fd00::1)")
    } else if msg.ends_with("expected u32") && path.ends_with("asNumber") {
        format!("{shown} is not an AS number (1 to 4294967295)")
    } else if msg.ends_with("expected u32") {
        format!("{shown} is out of range (0 to 4294967295)")
    } else {
        msg
    }
}

/// serde_path_to_error writes `.` for the root and may append `?` for untagged paths.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.replace('?', "")
    }
}

/// The diagnostics of one schema error. An `anyOf` whose only alternative to the value
/// is null (an optional field) reports what is wrong under the alternative instead; one
/// of several real forms (a port, a protocol) is explained by decoding the value.
fn schema_issues(file: &str, spans: &SpanMap, e: &jsonschema::ValidationError<'_>, out: &mut Vec<Diagnostic>) {
    use jsonschema::error::ValidationErrorKind as K;
    let K::AnyOf { context } = e.kind() else {
        out.push(schema_issue(file, spans, e));
        return;
    };
    let is_null_branch = |branch: &Vec<jsonschema::ValidationError<'static>>| {
        matches!(branch.as_slice(), [only] if matches!(only.kind(), K::Type { kind }
            if format!("{kind:?}").contains("Null")))
    };
    let real: Vec<_> = context.iter().filter(|b| !is_null_branch(b)).collect();
    if let [only] = real.as_slice() {
        if !only.is_empty() {
            for inner in only.iter() {
                schema_issues(file, spans, inner, out);
            }
            return;
        }
    }
    let path = yaml::pointer_to_path(e.instance_path().as_str());
    let message = crate::net::explain_any_of(&path, e.instance())
        .unwrap_or_else(|| format!("{} is not in any accepted form", e.instance()));
    out.push(locate(
        file,
        spans,
        &Issue {
            path,
            at: At::Value,
            message,
        },
    ));
}

/// Diagnostics in the order of the text.
fn sorted(mut v: Vec<Diagnostic>) -> Vec<Diagnostic> {
    v.sort_by_key(|d| (d.line, d.col));
    v
}
/// The published schema's pattern for a Cidr (schema/calico-v1.schema.json).
const CIDR_PATTERN: &str = "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$";

fn schema_issue(file: &str, spans: &SpanMap, e: &jsonschema::ValidationError<'_>) -> Diagnostic {
    use jsonschema::error::ValidationErrorKind as K;
    let path = yaml::pointer_to_path(e.instance_path().as_str());
    let (path, at, message) = match e.kind() {
        K::AdditionalProperties { unexpected } => {
            let field = unexpected.first().cloned().unwrap_or_default();
            let msg = format!("unknown field '{field}'");
            (yaml::join_key(&path, &field), At::Key, msg)
        }
        K::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string());
            (path, At::Value, format!("missing required field '{name}'"))
        }
        K::Constant { expected_value } => (path, At::Value, format!("must be {expected_value}")),
        // Every choice, by name: the library's wording names two "or N other candidates".
        K::Enum { options } => {
            let choices: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (
                path,
                At::Value,
                format!("{} is not one of {}", e.instance(), choices.join(", ")),
            )
        }
        // A Node's ipv4/ipv6 is an interface address, with the same pattern as a CIDR.
        K::Pattern { pattern }
            if pattern.as_str() == CIDR_PATTERN && (path.ends_with(".ipv4") || path.ends_with(".ipv6")) =>
        {
            (
                path,
                At::Value,
                format!(
                    "'{}' is not an IP address (expected e.g. 10.0.0.1 or 10.0.0.1/24)",
                    e.instance().as_str().unwrap_or_default()
                ),
            )
        }
        K::Pattern { pattern } if pattern.as_str() == CIDR_PATTERN => (
            path,
            At::Value,
            format!(
                "{} is not a CIDR (expected e.g. 10.65.0.0/16 or fd00::/64)",
                e.instance()
            ),
        ),
        K::Pattern { .. } if path.ends_with("name") => (
            path,
            At::Value,
            format!(
                "{} is not a valid name (1-63 of A-Z a-z 0-9 _ . -, starting and ending alphanumeric)",
                e.instance()
            ),
        ),
        // The schema's bounds are u32's (0 to 4294967295) but AS number 0 is reserved:
        // name the range that would do, as the decoder's message does for one too big.
        K::Minimum { .. } | K::Maximum { .. } if path.ends_with("asNumber") => (
            path,
            At::Value,
            format!("{} is not an AS number (1 to 4294967295)", e.instance()),
        ),
        _ => (path, At::Value, e.to_string()),
    };
    locate(file, spans, &Issue { path, at, message })
}

/// One problem often trips several schema keywords at one place; keep the first.
fn dedup(mut v: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|d| seen.insert((d.line, d.col, d.path.clone())));
    v
}

/// Cross-resource checks of a loaded set against stored resources.
pub fn check_loaded_set(set: &[Loaded], existing: &Existing<'_>) -> Result<(), Diagnostics> {
    let refs: Vec<&Resource> = set.iter().map(|l| &l.resource).collect();
    let diags: Vec<Diagnostic> = validate::check_set(&refs, existing)
        .into_iter()
        .map(|(i, issue)| set[i].diagnostic(&issue))
        .collect();
    if diags.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(diags))
    }
}

/// The YAML files under `dir`, recursively, in a stable order, skipping dot-files and
/// dot-directories (git's metadata, git-sync's staging, editors' swap files).
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    // Each directory is listed once, by its resolved path: a `loop -> .` link would
    // otherwise list the tree again at every depth (2^40 paths with two such links).
    let mut seen = std::collections::HashSet::new();
    seen.insert(std::fs::canonicalize(dir)?);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut names = std::fs::read_dir(&d)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        for name in names {
            let path = d.join(&name);
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            // Follows symlinks, so a git-sync style `current -> rev-xyz` link works.
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                if seen.insert(std::fs::canonicalize(&path)?) {
                    stack.push(path);
                }
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(path);
            }
            // Past the limit the caller refuses the directory: listing on would only
            // cost time and memory.
            if seen.len() > MAX_DIR_FILES {
                return Err(std::io::Error::other(format!(
                    "more than {MAX_DIR_FILES} directories; at most {MAX_DIR_FILES} are read"
                )));
            }
            if out.len() > MAX_DIR_FILES {
                out.sort();
                return Ok(out);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads a file, or every YAML file under a directory. File names in diagnostics are
/// as given (relative stays relative).
pub fn load_path(path: &Path) -> Result<Vec<Loaded>, Diagnostics> {
    let read_err = |p: &Path, e: std::io::Error| {
        Diagnostics(vec![Diagnostic {
            file: p.display().to_string(),
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(path, e))?;
    let files = if meta.is_dir() {
        yaml_files(path).map_err(|e| read_err(path, e))?
    } else {
        vec![path.to_path_buf()]
    };
    let refuse = |p: &Path, message: String| {
        Diagnostics(vec![Diagnostic {
            file: p.display().to_string(),
            line: 0,
            col: 0,
            path: String::new(),
            message,
        }])
    };
    if files.len() > MAX_DIR_FILES {
        return Err(refuse(
            path,
            format!("more than {MAX_DIR_FILES} YAML files; at most {MAX_DIR_FILES} are read from one directory"),
        ));
    }
    let mut out = Vec::new();
    let mut diags = Vec::new();
    // Every file is sized before any is read, so neither a huge file nor a directory
    // too large in all is read into memory or parsed in part.
    let sized: Vec<(PathBuf, u64)> = files
        .into_iter()
        .map(|f| {
            let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            (f, size)
        })
        .collect();
    let total: u64 = sized.iter().map(|(_, n)| *n).filter(|n| *n <= MAX_FILE_BYTES).sum();
    if total > MAX_DIR_BYTES {
        return Err(refuse(
            path,
            format!("the YAML files add up to {total} bytes; at most {MAX_DIR_BYTES} are read from one directory"),
        ));
    }
    for (f, size) in sized {
        if size > MAX_FILE_BYTES {
            diags.extend(
                refuse(
                    &f,
                    format!("the file is {size} bytes; at most {MAX_FILE_BYTES} are read"),
                )
                .0,
            );
            continue;
        }
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                diags.extend(read_err(&f, e).0);
                continue;
            }
        };
        match load_str(&f.display().to_string(), &text) {
            Ok(mut l) => out.append(&mut l),
            Err(mut d) => diags.append(&mut d.0),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(Diagnostics(diags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Resource, String> {
        load_str("t.yaml", text)
            .map(|mut l| l.remove(0).resource)
            .map_err(|d| d.to_string())
    }

    /// Rules per direction, ports and nets per list are bounded (calico_schema::limits),
    /// in Groups and Policies alike, and the refusal names the list.
    #[test]
    fn rules_ports_and_nets_are_bounded() {
        use crate::limits::{MAX_NETS_PER_LIST, MAX_PORTS_PER_LIST, MAX_RULES_PER_DIRECTION};
        let rules = |n: usize| "\n".to_string() + &"    - action: Allow\n".repeat(n);
        for kind in ["Group", "Policy"] {
            for dir in ["ingress", "egress"] {
                let doc = |n: usize| {
                    format!(
                        "apiVersion: calico/v1\nkind: {kind}\nmetadata: {{name: p}}\nspec:\n  {dir}:{}",
                        rules(n)
                    )
                };
                assert!(
                    one(&doc(MAX_RULES_PER_DIRECTION)).is_ok(),
                    "{kind} {dir}: the limit itself is allowed"
                );
                let e = one(&doc(MAX_RULES_PER_DIRECTION + 1)).unwrap_err();
                assert!(
                    e.contains(&format!("spec.{dir}")) && e.contains("1000"),
                    "{kind} {dir}: {e}"
                );
            }
        }
        let list = |field: &str, item: &dyn Fn(usize) -> String, n: usize| {
            let items: Vec<String> = (0..n).map(item).collect();
            format!(
                "apiVersion: calico/v1\nkind: Policy\nmetadata: {{name: p}}\nspec:\n  ingress:\n    - action: Allow\n      protocol: TCP\n      source:\n        {field}: [{}]\n",
                items.join(", ")
            )
        };
        let port = |i: usize| (1000 + i).to_string();
        let net = |i: usize| format!("10.{}.{}.0/24", i / 256, i % 256);
        for (field, item, max) in [
            ("ports", &port as &dyn Fn(usize) -> String, MAX_PORTS_PER_LIST),
            ("notPorts", &port, MAX_PORTS_PER_LIST),
            ("nets", &net, MAX_NETS_PER_LIST),
            ("notNets", &net, MAX_NETS_PER_LIST),
        ] {
            assert!(
                one(&list(field, item, max)).is_ok(),
                "{field}: the limit itself is allowed"
            );
            let e = one(&list(field, item, max + 1)).unwrap_err();
            assert!(e.contains(&format!("spec.ingress[0].source.{field}")), "{field}: {e}");
        }
    }

    /// A directory is bounded in files and bytes, refused as a whole and before any
    /// file is read; a symlink loop is listed once.
    #[test]
    fn directories_are_bounded() {
        let group = |i: usize| format!("apiVersion: calico/v1\nkind: Group\nmetadata: {{name: g{i}}}\n");
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), group(1)).unwrap();
        std::os::unix::fs::symlink(".", d.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink(".", d.path().join("loop2")).unwrap();
        let loaded = load_path(d.path()).unwrap();
        assert_eq!(loaded.len(), 1, "the loop was listed more than once");

        // Bytes: five sparse files of 15 MiB, each under MAX_FILE_BYTES; 75 MiB in all.
        let big = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let f = std::fs::File::create(big.path().join(format!("f{i}.yaml"))).unwrap();
            f.set_len(15 * 1024 * 1024).unwrap();
        }
        let started = std::time::Instant::now();
        let e = load_path(big.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("at most {MAX_DIR_BYTES} are read")), "{e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "read before refusing: {:?}",
            started.elapsed()
        );

        // Files: one more than MAX_DIR_FILES.
        let many = tempfile::tempdir().unwrap();
        for i in 0..=MAX_DIR_FILES {
            std::fs::write(many.path().join(format!("g{i}.yaml")), "").unwrap();
        }
        let e = load_path(many.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("at most {MAX_DIR_FILES} are read")), "{e}");
    }

    /// Bad addresses, CIDRs and AS numbers are named with their value and what would do.
    #[test]
    fn bad_addresses_cidrs_and_as_numbers_say_what_and_what_would_do() {
        let doc = |kind: &str, name: &str, spec: &str| {
            format!("apiVersion: calico/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n")
        };
        for (text, want) in [
            (
                doc("BGPPeer", "p", "{peerIP: 10.0.0.300, asNumber: 64512}"),
                "spec.peerIP: '10.0.0.300' is not an IP address (expected e.g. 10.65.0.1 or fd00::1)",
            ),
            (
                doc("Container", "c", "{node: n, netns: /x, ips: [10.65.0.1, 10.65.0.300]}"),
                "spec.ips[1]: '10.65.0.300' is not an IP address",
            ),
            (
                doc("ClusterConfig", "default", "{asNumber: 4294967296}"),
                "spec.asNumber: 4294967296 is not an AS number (1 to 4294967295)",
            ),
            (
                doc("Node", "n", "{ipv4: 10.0.0.1/24, asNumber: -3}"),
                "spec.asNumber: -3 is not an AS number (1 to 4294967295)",
            ),
            (
                doc("IPPool", "p", "{cidr: ten}"),
                "spec.cidr: \"ten\" is not a CIDR (expected e.g. 10.65.0.0/16 or fd00::/64)",
            ),
            (
                doc("Node", "n", "{ipv4: ten}"),
                "spec.ipv4: 'ten' is not an IP address (expected e.g. 10.0.0.1 or 10.0.0.1/24)",
            ),
        ] {
            let e = one(&text).unwrap_err();
            assert!(e.contains(want), "{text}\n{e}");
        }
    }

    /// `kind: Group` with no spec, or an empty one, is `addgroup G`: every default.
    #[test]
    fn a_group_or_cluster_config_may_leave_spec_out() {
        for text in [
            "apiVersion: calico/v1\nkind: Group\nmetadata: {name: g}\n",
            "apiVersion: calico/v1\nkind: Group\nmetadata: {name: g}\nspec:\n",
            "apiVersion: calico/v1\nkind: Group\nmetadata: {name: g}\nspec: {}\n",
        ] {
            match one(text) {
                Ok(Resource::Group(g)) => assert_eq!(g.spec, crate::GroupSpec::default(), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            one("apiVersion: calico/v1\nkind: ClusterConfig\nmetadata: {name: default}\n"),
            Ok(Resource::ClusterConfig(_))
        ));
        // Kinds with required spec fields still need a spec, and a wrong one is named.
        let e = one("apiVersion: calico/v1\nkind: Container\nmetadata: {name: c}\n").unwrap_err();
        assert!(e.contains("missing required field 'spec'"), "{e}");
        let e = one("apiVersion: calico/v1\nkind: Group\nmetadata: {name: g}\nspec: 7\n").unwrap_err();
        assert!(e.contains("t.yaml:4:7: spec: 7 is not of type \"object\""), "{e}");
    }

    /// Editors use the published schema: it takes a Group without spec too.
    #[test]
    fn the_published_schema_takes_a_group_without_spec() {
        let root = crate::schema_doc::schema_value();
        let v = jsonschema::validator_for(&root).unwrap();
        assert!(v.is_valid(&serde_json::json!({"apiVersion": "calico/v1", "kind": "Group", "metadata": {"name": "g"}})));
        assert!(v.is_valid(
            &serde_json::json!({"apiVersion": "calico/v1", "kind": "Group", "metadata": {"name": "g"}, "spec": null})
        ));
        assert!(!v
            .is_valid(&serde_json::json!({"apiVersion": "calico/v1", "kind": "Container", "metadata": {"name": "c"}})));
    }

    /// A wrong choice names every allowed one, not two and "N other candidates".
    #[test]
    fn an_enum_error_lists_every_choice() {
        let e =
            one("apiVersion: calico/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  ingress:\n  - action: Accept\n")
                .unwrap_err();
        assert!(
            e.contains("t.yaml:6:13: spec.ingress[0].action: \"Accept\" is not one of Allow, Deny, Log, Pass"),
            "{e}"
        );
    }
}
