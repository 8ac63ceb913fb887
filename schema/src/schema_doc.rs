//! The JSON Schema of calico/v1 documents, generated from the Rust types.
//!
//! The committed file `schema/calico-v1.schema.json` is these bytes (a test fails when
//! it is stale); editors use it through the yaml-language-server modeline in
//! examples/, and `calicoctl schema` prints it.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::resource::*;

/// Where the committed schema lives, relative to the workspace root.
pub const SCHEMA_FILE: &str = "schema/calico-v1.schema.json";

fn kind_def<S: JsonSchema>(gen: &mut SchemaGenerator, kind: Kind, defs: &mut Map<String, Value>) {
    let r = gen.subschema_for::<Object<S>>();
    let def_name = r
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|s| s.rsplit('/').next())
        .unwrap_or_default()
        .to_string();
    defs.insert(kind.as_str().to_string(), Value::String(def_name));
}

/// The schema document as a JSON value: what editors and `calicoctl schema` get.
pub fn schema_value() -> Value {
    schema_value_with(true)
}

/// `one_resource_rules`: add the rules that `calicoctl validate` checks in its own words
/// after decoding (address syntax, exclusive fields, blockSize per IP version), so that
/// an editor refuses what validate refuses. The loader's validators leave them out: the
/// decoders explain the same problems better than a schema keyword can.
fn schema_value_with(one_resource_rules: bool) -> Value {
    let mut gen = SchemaSettings::draft2020_12().into_generator();
    // Maps each kind to the generated definition of its Object<Spec>.
    let mut generated = Map::new();
    kind_def::<GroupSpec>(&mut gen, Kind::Group, &mut generated);
    kind_def::<ContainerSpec>(&mut gen, Kind::Container, &mut generated);
    kind_def::<PolicySpec>(&mut gen, Kind::Policy, &mut generated);
    kind_def::<IpPoolSpec>(&mut gen, Kind::IPPool, &mut generated);
    kind_def::<NodeSpec>(&mut gen, Kind::Node, &mut generated);
    kind_def::<BgpPeerSpec>(&mut gen, Kind::BGPPeer, &mut generated);
    kind_def::<ClusterConfigSpec>(&mut gen, Kind::ClusterConfig, &mut generated);
    let mut defs = gen.take_definitions(true);
    if one_resource_rules {
        add_one_resource_rules(&mut defs);
    }

    // Give each kind's object a definition under the kind's own name, pinned to it.
    let mut branches = Vec::new();
    for kind in Kind::ALL {
        let Some(gen_name) = generated.get(kind.as_str()).and_then(Value::as_str) else {
            continue;
        };
        let Some(mut def) = defs.remove(gen_name) else { continue };
        if let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("kind".into(), json!({"const": kind.as_str()}));
            props.insert("apiVersion".into(), json!({"const": API_VERSION}));
            props.insert(
                "status".into(),
                json!({
                    "description": "Output only: what the agents observed (calicoctl get -o yaml|json). Ignored on input.",
                    "type": "object"
                }),
            );
        }
        if kind.spec_optional() {
            // `kind: Group` with no spec (or `spec:` left empty) is the YAML form of
            // `addgroup G`: every field has its default.
            if let Some(spec) = def.pointer_mut("/properties/spec") {
                let given = spec.take();
                *spec = json!({"anyOf": [given, {"type": "null"}]});
            }
            if let Some(Value::Array(req)) = def.get_mut("required") {
                req.retain(|r| r != "spec");
            }
        }
        if let Some(obj) = def.as_object_mut() {
            obj.insert("title".into(), json!(kind.as_str()));
        }
        defs.insert(kind.as_str().to_string(), def);
        branches.push(json!({
            "if": {"properties": {"kind": {"const": kind.as_str()}}, "required": ["kind"]},
            "then": {"$ref": format!("#/$defs/{}", kind.as_str())}
        }));
    }
    let kinds: Vec<&str> = Kind::ALL.iter().map(super::resource::Kind::as_str).collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://calico-docker.invalid/schema/calico-v1.schema.json",
        "title": "calico-docker resource (calico/v1)",
        "description": "One document: apiVersion, kind, metadata, spec. See docs/resources.md.",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"enum": kinds}
        },
        "allOf": branches,
        "$defs": defs,
    })
}

// Address patterns for editors (ECMA-262 and Rust regex alike). IPv6 is matched by
// shape (2-8 groups of up to 4 hex digits, `::`, an IPv4 tail); validate checks it exactly.
const OCTET: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

fn v4() -> String {
    format!(r"(?:{OCTET}\.){{3}}{OCTET}")
}

fn v6() -> String {
    format!("(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:[0-9A-Fa-f]{{0,4}}|{})", v4())
}

const PREFIX4: &str = "(?:3[0-2]|[12]?[0-9])";
const PREFIX6: &str = "(?:12[0-8]|1[01][0-9]|[1-9]?[0-9])";

fn ip_pattern() -> String {
    format!("^(?:{}|{})$", v4(), v6())
}

fn net_pattern() -> String {
    format!("^(?:{}(?:/{PREFIX4})?|{}(?:/{PREFIX6})?)$", v4(), v6())
}

/// Replaces the generated `format: ip` (not a JSON Schema format, so ignored by every
/// validator) by a pattern, everywhere in `v`.
fn ip_formats_to_patterns(v: &mut Value) {
    match v {
        Value::Object(o) => {
            match o.get("format").and_then(Value::as_str) {
                Some("ip") => {
                    o.remove("format");
                    o.insert("pattern".into(), json!(ip_pattern()));
                    o.insert("patternErrorMessage".into(), json!("not an IPv4 or IPv6 address"));
                }
                Some("ipv4") => {
                    o.insert("pattern".into(), json!(format!("^{}$", v4())));
                    o.insert("patternErrorMessage".into(), json!("not an IPv4 address"));
                }
                _ => {}
            }
            o.values_mut().for_each(ip_formats_to_patterns);
        }
        Value::Array(a) => a.iter_mut().for_each(ip_formats_to_patterns),
        _ => {}
    }
}

/// `patternErrorMessage` is yaml-language-server's (and VS Code's) keyword for a readable
/// pattern message; other validators ignore unknown keywords.
fn add_one_resource_rules(defs: &mut Map<String, Value>) {
    defs.values_mut().for_each(ip_formats_to_patterns);
    for name in ["Cidr", "IfaceAddr"] {
        if let Some(Value::Object(d)) = defs.get_mut(name) {
            d.insert("pattern".into(), json!(net_pattern()));
            d.insert(
                "patternErrorMessage".into(),
                json!("not an address or a network (ADDRESS/PREFIX, prefix at most 32 for IPv4, 128 for IPv6)"),
            );
        }
    }
    // The type is a u8 in 4..=6 to the generator; 5 is no IP version.
    if let Some(Value::Object(d)) = defs.get_mut("IpVersion") {
        for k in ["format", "minimum", "maximum", "type"] {
            d.remove(k);
        }
        d.insert("enum".into(), json!([4, 6]));
    }
    let mut extend = |def: &str, rules: Value| {
        if let (Some(Value::Object(d)), Value::Object(r)) = (defs.get_mut(def), rules) {
            d.extend(r);
        }
    };
    extend(
        "ContainerSpec",
        json!({"oneOf": [
            {"required": ["container"], "not": {"required": ["netns"]}},
            {"required": ["netns"], "not": {"required": ["container"]}}
        ]}),
    );
    extend("BgpPeerSpec", json!({"not": {"required": ["node", "nodeSelector"]}}));
    extend(
        "IpPoolSpec",
        json!({
            "if": {"properties": {"cidr": {"pattern": ":"}}, "required": ["cidr"]},
            "then": {"properties": {"blockSize": {"minimum": 116, "maximum": 128}}},
            "else": {"properties": {"blockSize": {"minimum": 20, "maximum": 32}}}
        }),
    );
    if let Some(props) = defs
        .get_mut("NodeSpec")
        .and_then(|d| d.get_mut("properties"))
        .and_then(Value::as_object_mut)
    {
        props.insert(
            "ipv4".into(),
            json!({"type": ["string", "null"], "pattern": format!("^{}(?:/{PREFIX4})?$", v4()),
                   "patternErrorMessage": "not an IPv4 address with its prefix length (10.0.0.1/24)",
                   "description": "This node's IPv4 address with its prefix length, e.g. 10.0.0.1/24."}),
        );
        props.insert(
            "ipv6".into(),
            json!({"type": ["string", "null"], "pattern": format!("^{}(?:/{PREFIX6})?$", v6()),
                   "patternErrorMessage": "not an IPv6 address with its prefix length (fd00::1/64)",
                   "description": "This node's IPv6 address with its prefix length, e.g. fd00::1/64."}),
        );
    }
}

/// The schema as committed: pretty JSON with a trailing newline.
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema_value()).unwrap_or_default();
    s.push('\n');
    s
}

/// A compiled validator for one kind's definition (better errors than the `allOf` root).
pub(crate) fn validator(kind: Kind) -> Option<&'static jsonschema::Validator> {
    static VALIDATORS: OnceLock<Vec<(Kind, jsonschema::Validator)>> = OnceLock::new();
    VALIDATORS
        .get_or_init(|| {
            let root = schema_value_with(false);
            Kind::ALL
                .iter()
                .filter_map(|k| {
                    let mut s = root.clone();
                    if let Some(o) = s.as_object_mut() {
                        o.remove("allOf");
                        o.remove("properties");
                        o.remove("required");
                        o.remove("type");
                        o.insert("$ref".into(), json!(format!("#/$defs/{}", k.as_str())));
                    }
                    // The loader has made a left-out or empty spec `{}` already; without
                    // the null branch a wrong spec gets the schema's plain wording.
                    if k.spec_optional() {
                        let spec = s.pointer_mut(&format!("/$defs/{}/properties/spec", k.as_str()));
                        if let Some(spec) = spec {
                            if let Some(given) = spec.pointer("/anyOf/0").cloned() {
                                *spec = given;
                            }
                        }
                    }
                    jsonschema::validator_for(&s).ok().map(|v| (*k, v))
                })
                .collect()
        })
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed file must be exactly what the types generate.
    #[test]
    fn committed_schema_is_fresh() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/calico-v1.schema.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if committed != schema_text() {
            if std::env::var_os("UPDATE_SCHEMA").is_some() {
                std::fs::write(path, schema_text()).unwrap();
                return;
            }
            panic!("{SCHEMA_FILE} is stale: run `UPDATE_SCHEMA=1 cargo test -p calico-schema committed_schema` and commit it");
        }
    }

    #[test]
    fn validators_compile_for_every_kind() {
        for k in Kind::ALL {
            assert!(validator(k).is_some(), "{k}");
        }
    }
}
