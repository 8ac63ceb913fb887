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

    // `anyOf` failures (a port that is neither number nor range...) explain themselves
    // poorly; strict decoding below says precisely what is wrong with such values.
    let mut any_of = Vec::new();
    if let Some(v) = validator(kind) {
        let mut errs = Vec::new();
        for e in v.iter_errors(&doc.value) {
            let d = schema_issue(file, &doc.spans, &e);
            if matches!(e.kind(), jsonschema::error::ValidationErrorKind::AnyOf { .. }) {
                any_of.push(d);
            } else {
                errs.push(d);
            }
        }
        if !errs.is_empty() {
            return Err(dedup(errs));
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
    if !any_of.is_empty() {
        return Err(dedup(any_of));
    }

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
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Follows symlinks, so a git-sync style `current -> rev-xyz` link works.
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(path);
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
            format!(
                "{} YAML files; at most {MAX_DIR_FILES} are read from one directory",
                files.len()
            ),
        ));
    }
    let mut out = Vec::new();
    let mut diags = Vec::new();
    let mut total: u64 = 0;
    for f in files {
        // Sized before reading, so a huge file is never read into memory.
        let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
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
        total += size;
        if total > MAX_DIR_BYTES {
            return Err(refuse(
                path,
                format!("the YAML files add up to more than {MAX_DIR_BYTES} bytes; refused"),
            ));
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
