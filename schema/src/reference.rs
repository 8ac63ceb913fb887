//! The field reference of docs/resources.md, generated from the published schema, so the
//! docs list every field of every kind with the type, default and constraints the schema
//! enforces (a test keeps the committed page equal to this).

use serde_json::{Map, Value};

use crate::resource::Kind;
use crate::schema_doc::schema_value;

/// Marks the generated part of docs/resources.md.
pub const BEGIN: &str = "<!-- BEGIN field reference: generated from the schema by calico_schema::reference; refresh with UPDATE_DOCS=1 cargo test -p calico-schema --test docs -->";
pub const END: &str = "<!-- END field reference -->";

/// The spec definition of each kind, and the shared objects after them.
const OBJECTS: [(&str, &str); 4] = [
    ("Metadata", "metadata (every kind)"),
    ("Rule", "Rule"),
    ("EntityRule", "EntityRule (a rule's source and destination)"),
    ("IcmpMatch", "IcmpMatch (a rule's icmp)"),
];

/// The Markdown between [`BEGIN`] and [`END`].
pub fn field_reference() -> String {
    let schema = schema_value();
    let empty = Map::new();
    let defs = schema.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
    let mut out = String::new();
    out.push_str(
        "Every document has `apiVersion: calico/v1`, `kind`, `metadata` and, but for Group and\n\
         ClusterConfig, a `spec`; `status` is output only. Below, each kind's `spec` fields.\n\
         Rules that involve other fields or other resources are listed under \"How input is\n\
         checked\" above.\n",
    );
    for kind in Kind::ALL {
        let Some(spec) = defs
            .get(kind.as_str())
            .and_then(|d| d.pointer("/properties/spec"))
            .map(non_null)
            .and_then(|s| deref(s, defs))
        else {
            continue;
        };
        let optional = if kind.spec_optional() {
            " (`spec` may be left out or empty)"
        } else {
            ""
        };
        out.push_str(&format!("\n### {kind}{optional}\n\n"));
        out.push_str(&table(spec, defs));
    }
    for (name, title) in OBJECTS {
        if let Some(def) = defs.get(name) {
            out.push_str(&format!("\n### {title}\n\n"));
            out.push_str(&table(def, defs));
        }
    }
    out
}

fn table(obj: &Value, defs: &Map<String, Value>) -> String {
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut t =
        String::from("| Field | Type | Required | Default | Constraints | Description |\n|---|---|---|---|---|---|\n");
    let empty = Map::new();
    let props = obj.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    for (field, schema) in props {
        let inner = non_null(schema);
        let row = [
            format!("`{field}`"),
            type_of(inner, defs),
            if required.contains(&field.as_str()) { "yes" } else { "" }.to_string(),
            schema
                .get("default")
                .or_else(|| inner.get("default"))
                .map(|d| format!("`{d}`"))
                .unwrap_or_default(),
            constraints(inner, defs),
            description(schema, inner, defs),
        ];
        t.push_str(&format!("| {} |\n", row.map(|c| c.replace('|', "\\|")).join(" | ")));
    }
    t
}

/// The branch of an optional value's `anyOf [X, null]` that is not null.
fn non_null(v: &Value) -> &Value {
    match v.get("anyOf").and_then(Value::as_array) {
        Some(branches) => branches
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .unwrap_or(v),
        None => v,
    }
}

fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")?.as_str()?.rsplit('/').next()
}

fn deref<'a>(v: &'a Value, defs: &'a Map<String, Value>) -> Option<&'a Value> {
    match ref_name(v) {
        Some(name) => defs.get(name),
        None => Some(v),
    }
}

fn type_of(v: &Value, defs: &Map<String, Value>) -> String {
    if let Some(name) = ref_name(v) {
        return match name {
            "Cidr" => "network (CIDR) or address".into(),
            "IfaceAddr" => "address/prefix".into(),
            "Port" => "port or \"first:last\"".into(),
            "Protocol" => "protocol name or 0-255".into(),
            "IpVersion" => "4 or 6".into(),
            "Rule" | "EntityRule" | "IcmpMatch" => format!("[{name}](#{})", anchor(name)),
            _ => defs.get(name).map(|d| type_of(d, defs)).unwrap_or_else(|| name.into()),
        };
    }
    if let Some(choices) = v.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = choices
            .iter()
            .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string))
            .collect();
        return format!("one of {}", names.join(", "));
    }
    let types: Vec<&str> = match v.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => vec![],
    };
    match types.first().copied() {
        Some("array") => {
            let item = v.get("items").map(|i| type_of(i, defs)).unwrap_or_default();
            format!("list of {item}")
        }
        Some("object") if v.get("additionalProperties").is_some() => "map of string to string".into(),
        Some("string")
            if v.get("pattern")
                .is_some_and(|p| p.as_str().is_some_and(|p| p.contains("25[0-5]"))) =>
        {
            "address".into()
        }
        Some(t) => t.into(),
        None => "any".into(),
    }
}

/// The heading anchor GitHub makes of an object's section title.
fn anchor(name: &str) -> String {
    let title = OBJECTS.iter().find(|(n, _)| *n == name).map_or(name, |(_, t)| *t);
    title
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn constraints(v: &Value, defs: &Map<String, Value>) -> String {
    if ref_name(v) == Some("IpVersion") {
        return String::new(); // its type says it all; 5 is no version
    }
    let v = deref(v, defs).unwrap_or(v);
    let mut c = Vec::new();
    let num = |k: &str| v.get(k).and_then(Value::as_i64);
    match (num("minimum"), num("maximum")) {
        (Some(lo), Some(hi)) => c.push(format!("{lo}-{hi}")),
        (Some(lo), None) if lo > 0 => c.push(format!("at least {lo}")),
        (None, Some(hi)) => c.push(format!("at most {hi}")),
        _ => {}
    }
    if let Some(n) = num("maxItems") {
        c.push(format!("at most {n} items"));
    }
    if let (Some(lo), Some(hi)) = (num("minLength"), num("maxLength")) {
        c.push(format!("{lo}-{hi} characters"));
    }
    if let Some(p) = v.get("pattern").and_then(Value::as_str) {
        if let Some(m) = v.get("patternErrorMessage").and_then(Value::as_str) {
            c.push(m.strip_prefix("not ").unwrap_or(m).to_string());
        } else if p.len() <= 60 {
            c.push(format!("`{p}`"));
        }
    }
    if let Some(items) = v.get("items") {
        let inner = constraints(items, defs);
        if !inner.is_empty() {
            c.push(format!("each: {inner}"));
        }
    }
    c.join("; ")
}

fn description(outer: &Value, inner: &Value, defs: &Map<String, Value>) -> String {
    let text = outer
        .get("description")
        .or_else(|| inner.get("description"))
        .or_else(|| deref(inner, defs).and_then(|d| d.get("description")))
        .and_then(Value::as_str)
        .unwrap_or_default();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
