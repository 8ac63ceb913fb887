//! docs/resources.md's field reference is what the schema says: every field of every
//! kind, with its type, default and constraints.

use calico_schema::reference::{field_reference, BEGIN, END};

#[test]
fn resources_md_field_reference_matches_the_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/resources.md");
    let page = std::fs::read_to_string(path).expect("docs/resources.md");
    let (Some(b), Some(e)) = (page.find(BEGIN), page.find(END)) else {
        panic!("docs/resources.md lacks the generated field reference markers");
    };
    let current = &page[b + BEGIN.len()..e];
    let want = format!("\n{}\n", field_reference());
    if current != want {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let new = format!("{}{BEGIN}{want}{}", &page[..b], &page[e..]);
            std::fs::write(path, new).unwrap();
            return;
        }
        panic!("docs/resources.md's field reference is stale: run `UPDATE_DOCS=1 cargo test -p calico-schema --test docs` and commit it");
    }
}

/// Every property of every definition appears in the reference (nothing is left out
/// because the generator does not know its shape).
#[test]
fn every_spec_field_is_listed() {
    let r = field_reference();
    let s = calico_schema::schema_value();
    let defs = s["$defs"].as_object().unwrap();
    for (name, def) in defs {
        if !(name.ends_with("Spec") || ["Metadata", "Rule", "EntityRule", "IcmpMatch"].contains(&name.as_str())) {
            continue;
        }
        for field in def["properties"].as_object().unwrap().keys() {
            assert!(
                r.contains(&format!("| `{field}` |")),
                "{name}.{field} is not in the reference"
            );
        }
    }
}
