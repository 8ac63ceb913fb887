//! What every fuzz test file shares (included with `#[path]` by schema/tests/fuzz.rs,
//! agent/tests/fuzz_plugin.rs and store/tests/fuzz_values.rs): the case count, which
//! `scripts/fuzz.sh` raises through PROPTEST_CASES, the time bound per input, and
//! mutations of valid JSON documents, which reach deeper than random bytes.
// Each including file uses only part of this module.
#![allow(dead_code)]

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

/// Every property must finish an input in this time, however hostile.
pub const PER_INPUT: Duration = Duration::from_secs(2);

/// `default` cases, or PROPTEST_CASES when set (the long run of scripts/fuzz.sh).
pub fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases: n,
        // Shrinking a slow failure can take longer than finding it.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// Run `f`, failing when it takes longer than [`PER_INPUT`].
pub fn timed<T>(what: &str, input: &(impl Debug + ?Sized), f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    assert!(t.elapsed() < PER_INPUT, "{what} took {:?} on {input:?}", t.elapsed());
    out
}

/// A JSON value of any shape, with the values parsers trip on: huge and negative
/// numbers, floats, empty and odd strings, deep nesting.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from("")),
        "[0-9a-f.:/_-]{0,20}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[A-Za-z0-9._]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The number of nodes of `v` (itself, and everything under it).
fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Object(m) => m.values().map(nodes).sum(),
        _ => 0,
    }
}

/// The `n`th node of `v` in preorder.
fn nth_mut(v: &mut Value, n: usize) -> Option<&mut Value> {
    if n == 0 {
        return Some(v);
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match v {
        Value::Array(a) => a.iter_mut().collect(),
        Value::Object(m) => m.values_mut().collect(),
        _ => return None,
    };
    for c in children {
        let size = nodes(c);
        if n < size {
            return nth_mut(c, n);
        }
        n -= size;
    }
    None
}

/// One change to a document.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace a node with another value.
    Replace(prop::sample::Index, Value),
    /// Remove a member of an object or array node.
    Remove(prop::sample::Index, prop::sample::Index),
    /// Add a member to an object node (a key it may already have).
    Insert(prop::sample::Index, String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any_json()).prop_map(|(i, v)| Edit::Replace(i, v)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(i, j)| Edit::Remove(i, j)),
        (any::<prop::sample::Index>(), "[A-Za-z]{0,10}", any_json()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
    ]
}

fn apply(doc: &mut Value, e: Edit) {
    let n = nodes(doc);
    match e {
        Edit::Replace(i, v) => {
            if let Some(node) = nth_mut(doc, i.index(n)) {
                *node = v;
            }
        }
        Edit::Remove(i, j) => match nth_mut(doc, i.index(n)) {
            Some(Value::Array(a)) if !a.is_empty() => {
                a.remove(j.index(a.len()));
            }
            Some(Value::Object(m)) if !m.is_empty() => {
                let key = m.keys().nth(j.index(m.len())).cloned().unwrap_or_default();
                m.remove(&key);
            }
            _ => {}
        },
        Edit::Insert(i, k, v) => {
            if let Some(Value::Object(m)) = nth_mut(doc, i.index(n)) {
                m.insert(k, v);
            }
        }
    }
}

/// One change to the bytes of a serialized document.
#[derive(Clone, Debug)]
enum ByteEdit {
    Set(prop::sample::Index, u8),
    Delete(prop::sample::Index, usize),
    Repeat(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        (any::<prop::sample::Index>(), 1usize..8).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| ByteEdit::Repeat(i, n)),
        any::<prop::sample::Index>().prop_map(ByteEdit::Truncate),
    ]
}

fn apply_bytes(bytes: &mut Vec<u8>, e: ByteEdit) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match e {
        ByteEdit::Set(i, b) => bytes[i.index(len)] = b,
        ByteEdit::Delete(i, n) => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        ByteEdit::Repeat(i, n) => {
            let at = i.index(len);
            let piece: Vec<u8> = bytes[at..(at + n).min(len)].to_vec();
            bytes.splice(at..at, piece);
        }
        ByteEdit::Truncate(i) => bytes.truncate(i.index(len)),
    }
}

/// A seed document with a few structural edits, serialized, then (half the time) a
/// few byte edits: bodies that are almost right.
pub fn mutated_json(seeds: Vec<Value>) -> impl Strategy<Value = (usize, Vec<u8>)> {
    let n = seeds.len();
    (
        0..n,
        prop::collection::vec(edit(), 0..4),
        prop::collection::vec(byte_edit(), 0..3),
        any::<bool>(),
    )
        .prop_map(move |(i, edits, byte_edits, bytes_too)| {
            let mut doc = seeds[i].clone();
            for e in edits {
                apply(&mut doc, e);
            }
            let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
            if bytes_too {
                for e in byte_edits {
                    apply_bytes(&mut bytes, e);
                }
            }
            (i, bytes)
        })
}
