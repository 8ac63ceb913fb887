//! YAML loading that keeps the position of every node.
//!
//! Documents are parsed from the event stream of `saphyr-parser` into JSON values plus
//! a map from field path to source position, so parse errors, schema errors and
//! semantic errors can all name `file:line:col` and the field. Duplicate keys are
//! rejected here, since a JSON value cannot even represent them.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

use crate::error::Diagnostic;
use crate::limits::{MAX_DEPTH, MAX_DOCUMENTS_PER_FILE, MAX_FILE_BYTES, MAX_NODES_PER_DOCUMENT, MAX_NODES_PER_FILE};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// Where each field of one document is. Paths are written as users read them:
/// `spec.ingress[0].destination.ports[1]`; the root is the empty path.
#[derive(Debug, Clone, Default)]
pub struct SpanMap {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
    /// Quoted scalars, whose text starts one column after their position.
    quoted: std::collections::HashSet<String>,
}

impl SpanMap {
    /// The position of the value at `path`, or of its nearest ancestor that has one.
    pub fn value_pos(&self, path: &str) -> Pos {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.values.get(&p) {
                return *pos;
            }
            match parent(&p) {
                Some(up) => p = up,
                None => return self.values.get("").copied().unwrap_or(Pos { line: 1, col: 1 }),
            }
        }
    }

    /// The position of character `offset` (0-based) of a one-line scalar's text, for
    /// errors inside a value, like a selector's column.
    pub fn content_pos(&self, path: &str, offset: usize) -> Pos {
        let p = self.value_pos(path);
        let quote = usize::from(self.quoted.contains(path));
        Pos {
            line: p.line,
            col: p.col + quote + offset,
        }
    }

    /// The position of the key of the field at `path` (falls back to the value).
    pub fn key_pos(&self, path: &str) -> Pos {
        self.keys.get(path).copied().unwrap_or_else(|| self.value_pos(path))
    }
}

/// `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a` -> ``.
fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn join_index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Converts a JSON pointer (`/spec/ingress/0`) to a field path (`spec.ingress[0]`).
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out = join_index(&out, seg.parse().unwrap_or(0));
        } else {
            out = join_key(&out, &seg);
        }
    }
    out
}

/// One YAML document of a file, as JSON with positions.
#[derive(Debug, Clone)]
pub struct YamlDoc {
    /// 0-based index of the document in its file.
    pub index: usize,
    pub start: Pos,
    pub value: Value,
    pub spans: SpanMap,
}

/// Parses every document of `text`. A syntax error stops the whole file: a YAML
/// stream cannot be trusted past it, and the file is applied all-or-nothing anyway.
///
/// Bounded (see [`crate::limits`]): the text's size, the number of documents, the
/// nesting depth and the nodes of each document and of the file, counting every alias
/// as the nodes it expands to, so a "billion laughs" is refused at the alias that would
/// cross the bound, before its expansion is built.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<YamlDoc>, Diagnostic> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Diagnostic {
            file: file.to_string(),
            line: 0,
            col: 0,
            path: String::new(),
            message: format!(
                "the file is {} bytes; at most {MAX_FILE_BYTES} are read (split it into several files)",
                text.len()
            ),
        });
    }
    let mut b = Builder {
        file,
        docs: Vec::new(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        doc_start: None,
        doc_nodes: 0,
        file_nodes: 0,
    };
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| Diagnostic {
            file: file.to_string(),
            line: e.marker().line(),
            col: e.marker().col() + 1,
            path: String::new(),
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        b.event(ev, span)?;
    }
    Ok(b.docs)
}

struct Frame {
    path: String,
    pos: Pos,
    anchor: usize,
    /// Nodes in this collection so far, itself included, aliases expanded.
    nodes: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Value>),
    /// Entries so far, and the key waiting for its value.
    Map(Map<String, Value>, Option<(String, Pos)>, HashMap<String, Pos>),
}

struct Builder<'f> {
    file: &'f str,
    docs: Vec<YamlDoc>,
    stack: Vec<Frame>,
    /// Anchored nodes, each with the number of nodes it holds, for aliases.
    anchors: HashMap<usize, (Value, usize)>,
    doc_start: Option<(Pos, SpanMap)>,
    /// Nodes of the open document and of the whole file so far, aliases expanded.
    doc_nodes: usize,
    file_nodes: usize,
}

impl Builder<'_> {
    fn err(&self, pos: Pos, path: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            path: path.to_string(),
            message,
        }
    }

    /// Counts `n` more nodes (a scalar, a collection, or an alias's expansion) at `pos`,
    /// refusing the document once it or the file would exceed its bound.
    fn count(&mut self, n: usize, pos: Pos, what: &str) -> Result<(), Diagnostic> {
        self.doc_nodes = self.doc_nodes.saturating_add(n);
        self.file_nodes = self.file_nodes.saturating_add(n);
        let over = if self.doc_nodes > MAX_NODES_PER_DOCUMENT {
            Some(format!("the document grows past {MAX_NODES_PER_DOCUMENT} nodes"))
        } else if self.file_nodes > MAX_NODES_PER_FILE {
            Some(format!("the file grows past {MAX_NODES_PER_FILE} nodes"))
        } else {
            None
        };
        match over {
            Some(o) => Err(self.err(pos, &self.next_path(), format!("{o} at this {what}; refused"))),
            None => Ok(()),
        }
    }

    /// The path the next value will have, given the innermost open collection.
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(f) => match &f.kind {
                FrameKind::Seq(items) => join_index(&f.path, items.len()),
                FrameKind::Map(_, Some((k, _)), _) => join_key(&f.path, k),
                FrameKind::Map(_, None, _) => f.path.clone(),
            },
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame {
                kind: FrameKind::Map(_, None, _),
                ..
            })
        )
    }

    fn spans(&mut self) -> &mut SpanMap {
        // A document is always open while events arrive; fall back to a throwaway map.
        &mut self
            .doc_start
            .get_or_insert_with(|| (Pos::default(), SpanMap::default()))
            .1
    }

    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), Diagnostic> {
        let pos = Pos::of(&span);
        match ev {
            Event::DocumentStart(_) => {
                if self.docs.len() >= MAX_DOCUMENTS_PER_FILE {
                    return Err(self.err(
                        pos,
                        "",
                        format!("more than {MAX_DOCUMENTS_PER_FILE} documents in one file; split it"),
                    ));
                }
                self.doc_start = Some((pos, SpanMap::default()));
                self.doc_nodes = 0;
            }
            Event::DocumentEnd => self.doc_start = None,
            Event::Scalar(text, style, anchor, tag) => {
                if self.expecting_key() {
                    let path = self.stack.last().map(|f| f.path.clone()).unwrap_or_default();
                    let key = text.to_string();
                    let key_path = join_key(&path, &key);
                    if let Some(Frame {
                        kind: FrameKind::Map(_, pending, seen),
                        ..
                    }) = self.stack.last_mut()
                    {
                        if let Some(first) = seen.get(&key) {
                            let first = *first;
                            return Err(self.err(
                                pos,
                                &key_path,
                                format!(
                                    "duplicate key '{key}' (first defined at line {}, column {})",
                                    first.line, first.col
                                ),
                            ));
                        }
                        seen.insert(key.clone(), pos);
                        *pending = Some((key, pos));
                    }
                    self.spans().keys.insert(key_path, pos);
                    return Ok(());
                }
                self.count(1, pos, "value")?;
                let explicit_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let v = if style == ScalarStyle::Plain && !explicit_str {
                    plain_scalar(&text)
                } else {
                    Value::String(text.to_string())
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (v.clone(), 1));
                }
                let path = self.next_path();
                if matches!(style, ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted) {
                    self.spans().quoted.insert(path.clone());
                }
                self.spans().values.insert(path, pos);
                self.push_value(v, 1, pos)?;
            }
            Event::SequenceStart(anchor, _) => self.open(pos, anchor, FrameKind::Seq(Vec::new()))?,
            Event::MappingStart(anchor, _) => {
                self.open(pos, anchor, FrameKind::Map(Map::new(), None, HashMap::new()))?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(f) = self.stack.pop() {
                    let v = match f.kind {
                        FrameKind::Seq(items) => Value::Array(items),
                        FrameKind::Map(m, _, _) => Value::Object(m),
                    };
                    if f.anchor > 0 {
                        self.anchors.insert(f.anchor, (v.clone(), f.nodes));
                    }
                    self.push_value(v, f.nodes, f.pos)?;
                }
            }
            Event::Alias(id) => {
                if self.expecting_key() {
                    return Err(self.err(
                        pos,
                        &self.next_path(),
                        "an alias cannot be used as a mapping key".into(),
                    ));
                }
                let nodes = self
                    .anchors
                    .get(&id)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| self.err(pos, &self.next_path(), "alias to an unknown anchor".into()))?;
                // Counted before the copy is made: the bound holds for memory too.
                self.count(nodes, pos, "alias")?;
                let v = self.anchors.get(&id).map(|(v, _)| v.clone()).unwrap_or(Value::Null);
                let path = self.next_path();
                self.spans().values.insert(path, pos);
                self.push_value(v, nodes, pos)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn open(&mut self, pos: Pos, anchor: usize, kind: FrameKind) -> Result<(), Diagnostic> {
        if self.expecting_key() {
            let path = self.stack.last().map(|f| f.path.clone()).unwrap_or_default();
            return Err(self.err(pos, &path, "mapping keys must be plain strings, not collections".into()));
        }
        let path = self.next_path();
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err(pos, &path, format!("nested more than {MAX_DEPTH} levels deep; refused")));
        }
        self.count(1, pos, "collection")?;
        self.spans().values.insert(path.clone(), pos);
        self.stack.push(Frame {
            path,
            pos,
            anchor,
            nodes: 1,
            kind,
        });
        Ok(())
    }

    /// Places a finished value into its parent, or finishes the document.
    fn push_value(&mut self, v: Value, nodes: usize, _pos: Pos) -> Result<(), Diagnostic> {
        if let Some(parent) = self.stack.last_mut() {
            parent.nodes = parent.nodes.saturating_add(nodes);
        }
        match self.stack.last_mut() {
            Some(Frame {
                kind: FrameKind::Seq(items),
                ..
            }) => items.push(v),
            Some(Frame {
                kind: FrameKind::Map(m, pending, _),
                ..
            }) => {
                if let Some((k, _)) = pending.take() {
                    m.insert(k, v);
                }
            }
            None => {
                let (start, spans) = self.doc_start.take().unwrap_or_default();
                // A document holding nothing (`---` alone, a trailing separator) is skipped.
                if !v.is_null() {
                    self.docs.push(YamlDoc {
                        index: self.docs.len(),
                        start,
                        value: v,
                        spans,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema.
fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let int = if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()
    } else if let Some(o) = digits.strip_prefix("0o") {
        i128::from_str_radix(o, 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i128>().ok()
    } else {
        None
    };
    if let Some(i) = int {
        let i = if neg { -i } else { i };
        if let Ok(u) = u64::try_from(i) {
            return Value::Number(u.into());
        }
        if let Ok(n) = i64::try_from(i) {
            return Value::Number(n.into());
        }
    }
    let looks_float = s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && s.bytes().filter(|b| *b == b'.').count() <= 1;
    if looks_float {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_types() {
        let text = "a: 1\nb:\n  - x\n  - '2'\n  - {c: true}\n---\nz: ~\n";
        let docs = parse_documents("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value, serde_json::json!({"a": 1, "b": ["x", "2", {"c": true}]}));
        assert_eq!(docs[0].spans.value_pos("b[1]"), Pos { line: 4, col: 5 });
        assert_eq!(docs[0].spans.value_pos("b[2].c"), Pos { line: 5, col: 9 });
        assert_eq!(docs[0].spans.key_pos("b"), Pos { line: 2, col: 1 });
        // Unknown paths fall back to their nearest ancestor.
        assert_eq!(docs[0].spans.value_pos("b[2].nope"), Pos { line: 5, col: 5 });
        assert_eq!(docs[1].value, serde_json::json!({"z": null}));
        assert_eq!(docs[1].start.line, 6);
    }

    #[test]
    fn duplicate_key() {
        let e = parse_documents("f.yaml", "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!((e.line, e.col), (3, 1));
        assert!(e.message.contains("duplicate key 'a'"), "{e}");
    }

    #[test]
    fn syntax_error_position() {
        let e = parse_documents("f.yaml", "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.contains("YAML syntax error"), "{e}");
        assert!(e.line >= 1);
    }

    #[test]
    fn scalars() {
        assert_eq!(plain_scalar("80"), serde_json::json!(80));
        assert_eq!(plain_scalar("-3"), serde_json::json!(-3));
        assert_eq!(plain_scalar("10.0.0.1"), serde_json::json!("10.0.0.1"));
        assert_eq!(plain_scalar("1.5"), serde_json::json!(1.5));
        assert_eq!(plain_scalar("8000:8080"), serde_json::json!("8000:8080"));
        assert_eq!(plain_scalar("yes"), serde_json::json!("yes"));
    }

    #[test]
    fn pointer_paths() {
        assert_eq!(pointer_to_path("/spec/ingress/0/ports/1"), "spec.ingress[0].ports[1]");
        assert_eq!(pointer_to_path(""), "");
    }

    #[test]
    fn anchors_and_aliases() {
        let docs = parse_documents("f", "a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(docs[0].value, serde_json::json!({"a": [1, 2], "b": [1, 2]}));
    }

    /// Nine levels of nine aliases each: 9^9 (387 million) nodes if expanded.
    fn billion_laughs() -> String {
        let mut t = String::from("a0: &a0 [\"lol\"]\n");
        for i in 1..=9 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            t.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        t
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let started = std::time::Instant::now();
        let e = parse_documents("laughs.yaml", &billion_laughs()).unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(e.message.contains("grows past") && e.message.contains("alias"), "{e:?}");
        // The alias that crosses the bound is named: a5 expands to about 66k nodes, so
        // the third alias of a6, on line 7, passes 200k.
        assert_eq!(e.line, 7, "{e:?}");
        assert!(e.col > 1, "{e:?}");
        // A few aliases of a small anchor are fine.
        let ok = "a: &x {k: v}\nb: [*x, *x, *x]\n";
        assert_eq!(parse_documents("ok.yaml", ok).unwrap().len(), 1);
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let deep = format!("{}1{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let e = parse_documents("deep.yaml", &deep).unwrap_err();
        assert!(e.message.contains("levels deep"), "{e:?}");
        assert_eq!((e.line, e.col), (1, MAX_DEPTH + 1), "{e:?}");
        let fine = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_documents("fine.yaml", &fine).is_ok());

        let many: String = "---\na: 1\n".repeat(MAX_DOCUMENTS_PER_FILE + 1);
        let e = parse_documents("many.yaml", &many).unwrap_err();
        assert!(e.message.contains("documents in one file"), "{e:?}");

        let big = "x".repeat(MAX_FILE_BYTES as usize + 1);
        let e = parse_documents("big.yaml", &big).unwrap_err();
        assert!(e.message.contains("at most"), "{e:?}");
    }
}
