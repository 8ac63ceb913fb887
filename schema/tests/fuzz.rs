//! Property tests ("fuzzing" on stable Rust, with proptest) of every parser that takes
//! text from outside: the YAML loader, selectors, CIDRs, interface addresses, ports,
//! protocols and the birdc output parser. Properties: no panic on any input, bounded
//! time, and where a printer exists, parse(print(x)) == x.
//!
//! The default run is short (part of `cargo test`); `scripts/fuzz.sh` runs the same
//! properties with many more cases (PROPTEST_CASES). Inputs that once failed are kept
//! by proptest in `tests/fuzz.proptest-regressions` and tried first on every run.

use calico_schema::{Cidr, IfaceAddr, LabelSet, Port, Protocol, Selector};
use proptest::prelude::*;

mod fuzz_support;
use fuzz_support::{cases, timed};

/// The example files: mutations of real documents reach deeper than random text.
fn examples() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/")
        .filter_map(std::result::Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    out.sort();
    out
}

/// Text that looks like YAML: keys, indentation, flow collections, anchors, aliases,
/// tags, quotes, document markers.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_string()),
        Just("  ".to_string()),
        Just("- ".to_string()),
        Just(": ".to_string()),
        Just("---\n".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(", ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!str ".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("kind: Group\n".to_string()),
        Just("apiVersion: calico/v1\n".to_string()),
        Just("metadata: {name: x}\n".to_string()),
        Just("spec:\n".to_string()),
        "[a-z]{1,8}",
        "[0-9./:]{1,12}",
    ];
    prop::collection::vec(token, 0..60).prop_map(|v| v.concat())
}

/// A mutated example: bytes replaced, lines removed or repeated.
fn mutated_example() -> impl Strategy<Value = String> {
    let ex = examples();
    (
        0..ex.len(),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..8),
    )
        .prop_map(move |(i, edits)| {
            let mut lines: Vec<String> = ex[i].lines().map(str::to_string).collect();
            for (at, op, c) in edits {
                if lines.is_empty() {
                    break;
                }
                let n = at.index(lines.len());
                match op {
                    0 => {
                        lines.remove(n);
                    }
                    1 => {
                        let l = lines[n].clone();
                        lines.insert(n, l);
                    }
                    2 => {
                        let l = &mut lines[n];
                        let mut chars: Vec<char> = l.chars().collect();
                        if !chars.is_empty() {
                            let k = at.index(chars.len());
                            chars[k] = c;
                        }
                        *l = chars.into_iter().collect();
                    }
                    _ => lines[n].insert(0, ' '),
                }
            }
            lines.join("\n")
        })
}

/// A selector generated from the grammar (API.md section "Selectors").
fn selector_text() -> impl Strategy<Value = String> {
    let key = "[a-z][a-z0-9./_-]{0,6}";
    let val = "[a-zA-Z0-9 ._-]{0,6}";
    let leaf = prop_oneof![
        Just("all()".to_string()),
        key.prop_map(|k| format!("has({k})")),
        key.prop_map(|k| format!("!has({k})")),
        (key, val).prop_map(|(k, v)| format!("{k} == \"{v}\"")),
        (key, val).prop_map(|(k, v)| format!("{k} != '{v}'")),
        (key, prop::collection::vec(val, 1..4)).prop_map(|(k, vs)| format!(
            "{k} in {{{}}}",
            vs.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(",")
        )),
        (key, prop::collection::vec(val, 1..4)).prop_map(|(k, vs)| format!(
            "{k} not in {{{}}}",
            vs.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ")
        )),
        (key, val).prop_map(|(k, v)| format!("{k} contains \"{v}\"")),
        (key, val).prop_map(|(k, v)| format!("{k} starts with \"{v}\"")),
        (key, val).prop_map(|(k, v)| format!("{k} ends with \"{v}\"")),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}||{b}")),
            inner.clone().prop_map(|a| format!("!({a})")),
            inner.prop_map(|a| format!("( {a} )")),
        ]
    })
}

fn label_set() -> impl Strategy<Value = LabelSet> {
    prop::collection::btree_map(
        "[a-z][a-z0-9./_-]{0,3}",
        prop::collection::vec("[a-zA-Z0-9 ._-]{0,3}", 1..3),
        0..5,
    )
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn yaml_loader_never_panics_on_any_text(text in any::<String>()) {
        timed("load_str", &text, || { let _ = calico_schema::load_str("fuzz.yaml", &text); });
    }

    #[test]
    fn yaml_loader_never_panics_on_yamlish_text(text in yamlish()) {
        timed("load_str", &text, || { let _ = calico_schema::load_str("fuzz.yaml", &text); });
    }

    #[test]
    fn yaml_loader_never_panics_on_mutated_examples(text in mutated_example()) {
        timed("load_str", &text, || {
            if let Err(d) = calico_schema::load_str("fuzz.yaml", &text) {
                // Every error is located in the file it came from.
                for e in &d.0 {
                    assert_eq!(e.file, "fuzz.yaml");
                }
            }
        });
    }

    #[test]
    fn selector_parser_never_panics(text in any::<String>()) {
        timed("Selector::parse", &text, || { let _ = Selector::parse(&text); });
    }

    #[test]
    fn selectors_round_trip_through_their_canonical_form(text in selector_text(), labels in label_set()) {
        let s = Selector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e:?}")))?;
        let printed = s.canonical();
        let again = Selector::parse(&printed).map_err(|e| TestCaseError::fail(format!("{printed:?}: {e:?}")))?;
        prop_assert_eq!(&again, &s, "{:?} -> {:?}", text, printed);
        prop_assert_eq!(again.canonical(), printed);
        prop_assert_eq!(again.matches(&labels), s.matches(&labels));
    }

    #[test]
    fn value_parsers_never_panic_and_round_trip(text in "[0-9a-fA-F.:/ -]{0,24}|\\PC{0,24}") {
        if let Ok(c) = text.parse::<Cidr>() {
            prop_assert_eq!(c.to_string().parse::<Cidr>().ok(), Some(c));
        }
        if let Ok(a) = text.parse::<IfaceAddr>() {
            prop_assert_eq!(a.to_string().parse::<IfaceAddr>().ok(), Some(a));
        }
        if let Ok(p) = text.parse::<Port>() {
            prop_assert_eq!(p.to_string().parse::<Port>().ok(), Some(p));
        }
        if let Ok(p) = text.parse::<Protocol>() {
            prop_assert_eq!(p.to_string().parse::<Protocol>().ok(), Some(p));
        }
    }

    #[test]
    fn birdc_parser_never_panics(text in prop_oneof![any::<String>(), "([A-Za-z0-9_]{1,8}( +[A-Za-z0-9:.-]{0,10}){0,7}\n(  [A-Za-z ]{1,16}: *[0-9a-f.:%]{0,12}\n){0,3}){0,6}"]) {
        timed("parse_protocols", &text, || { let _ = calico_schema::birdc::parse_protocols(&text); });
    }
}

/// Every example resource survives YAML printing and reloading unchanged.
#[test]
fn example_resources_round_trip_through_yaml() {
    let mut n = 0;
    for text in examples() {
        for l in calico_schema::load_str("example.yaml", &text).expect("examples load") {
            let printed = match &l.resource {
                calico_schema::Resource::Group(o) => serde_saphyr::to_string(o),
                calico_schema::Resource::Container(o) => serde_saphyr::to_string(o),
                calico_schema::Resource::Policy(o) => serde_saphyr::to_string(o),
                calico_schema::Resource::IpPool(o) => serde_saphyr::to_string(o),
                calico_schema::Resource::Node(o) => serde_saphyr::to_string(o),
                calico_schema::Resource::BgpPeer(o) => serde_saphyr::to_string(o),
                calico_schema::Resource::ClusterConfig(o) => serde_saphyr::to_string(o),
            }
            .expect("print");
            let again =
                calico_schema::load_str("printed.yaml", &printed).unwrap_or_else(|e| panic!("{printed}\n{e:?}"));
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].resource, l.resource, "{printed}");
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} example resources");
}
