//! Calico label selectors: grammar, parser, evaluator and canonical form.
//!
//! Grammar (precedence from loosest to tightest):
//!
//! ```text
//! selector   := <empty> | or
//! or         := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | primary
//! primary    := "(" or ")" | "all" "(" ")" | "has" "(" key ")" | key op
//! op         := "==" string | "!=" string
//!             | "in" set | "not" "in" set
//!             | "contains" string | "starts" "with" string | "ends" "with" string
//! set        := "{" [ string ( "," string )* ] "}"
//! string     := '"' [^"]* '"' | "'" [^']* "'"
//! key        := [A-Za-z0-9_./-]+
//! ```
//!
//! Strings have no escape sequences, matching Calico. A literal therefore
//! can never contain its own delimiter, so a value holding both `"` and `'`
//! cannot be written at all; every value a parsed selector holds can be
//! re-quoted with at least one of the two quote kinds.
//!
//! Labels are multi-valued (a container has one `group` value per group it
//! belongs to). Positive operators hold when *some* value satisfies them;
//! `!=` and `not in` are their exact negations, so they hold when *no* value
//! matches, including when the key is absent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A set of labels; each key may carry several values.
pub type LabelSet = BTreeMap<String, Vec<String>>;

/// Hostile or generated input such as `((((...` must not overflow the stack
/// of the recursive-descent parser (or of the evaluator / destructor).
const MAX_NESTING: usize = crate::limits::MAX_SELECTOR_DEPTH;

const OPERATORS: &str = "==, !=, in, not in, contains, starts with, ends with";

/// A parsed label selector.
///
/// Equality is structural on the normalised AST: whitespace, quoting,
/// redundant parentheses, associativity of `&&`/`||`, and the order or
/// duplication of set members do not affect it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Expr {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    // Sets are sorted and deduplicated so that `{"b","a","a"}` and
    // `{"a","b"}` compare equal and print identically.
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Expr>),
    // Always at least two children, never directly nesting their own kind:
    // the parser flattens `a && (b && c)` so that equal meaning gives equal
    // ASTs and the canonical text never needs those parentheses.
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// A parse failure, located at the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct SelectorError {
    /// 1-based, counted in chars (not bytes) so it lines up with what an
    /// editor shows for non-ASCII input.
    pub column: usize,
    pub message: String,
}

impl SelectorError {
    fn new(column: usize, message: impl Into<String>) -> Self {
        SelectorError {
            column,
            message: message.into(),
        }
    }
}

impl Selector {
    /// Parses selector text; empty or all-whitespace text means `all()`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > crate::limits::MAX_SELECTOR_BYTES {
            return Err(SelectorError {
                column: 1,
                message: format!(
                    "selector is {} bytes long; at most {} are allowed",
                    text.len(),
                    crate::limits::MAX_SELECTOR_BYTES
                ),
            });
        }
        let mut parser = Parser::new(text);
        if parser.peek()?.tok == Tok::End {
            return Ok(Selector::all());
        }
        let expr = parser.parse_or()?;
        let next = parser.bump()?;
        if next.tok != Tok::End {
            return Err(after_term_error(&next, None));
        }
        Ok(Selector { expr })
    }

    /// The selector matching every label set.
    pub fn all() -> Selector {
        Selector { expr: Expr::All }
    }

    /// True only for the literal `all()` (or empty) selector; no attempt is
    /// made to prove that e.g. `!has(a) || has(a)` is a tautology.
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.expr.eval(labels)
    }

    /// Canonical, stable text: re-parses to an equal Selector; same meaning written differently
    /// with different whitespace/quotes gives the same string (e.g. `a=="x"&&b=='y'` -> `a == "x" && b == "y"`).
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        self.expr.write(&mut out);
        out
    }

    /// Label keys this selector reads (sorted, deduped), for dependency tracking.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = BTreeSet::new();
        self.expr.collect_keys(&mut keys);
        keys.into_iter().map(str::to_owned).collect()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl Expr {
    fn eval(&self, labels: &LabelSet) -> bool {
        match self {
            Expr::All => true,
            Expr::Has(k) => labels.get(k).is_some_and(|vs| !vs.is_empty()),
            Expr::Eq(k, v) => any_value(labels, k, |x| x == v),
            Expr::Ne(k, v) => !any_value(labels, k, |x| x == v),
            Expr::In(k, set) => any_value(labels, k, |x| set.contains(x)),
            Expr::NotIn(k, set) => !any_value(labels, k, |x| set.contains(x)),
            Expr::Contains(k, s) => any_value(labels, k, |x| x.contains(s.as_str())),
            Expr::StartsWith(k, s) => any_value(labels, k, |x| x.starts_with(s.as_str())),
            Expr::EndsWith(k, s) => any_value(labels, k, |x| x.ends_with(s.as_str())),
            Expr::Not(e) => !e.eval(labels),
            Expr::And(es) => es.iter().all(|e| e.eval(labels)),
            Expr::Or(es) => es.iter().any(|e| e.eval(labels)),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Expr::All => out.push_str("all()"),
            Expr::Has(k) => {
                out.push_str("has(");
                out.push_str(k);
                out.push(')');
            }
            Expr::Eq(k, v) => write_cmp(out, k, "==", v),
            Expr::Ne(k, v) => write_cmp(out, k, "!=", v),
            Expr::In(k, set) => write_set(out, k, "in", set),
            Expr::NotIn(k, set) => write_set(out, k, "not in", set),
            Expr::Contains(k, v) => write_cmp(out, k, "contains", v),
            Expr::StartsWith(k, v) => write_cmp(out, k, "starts with", v),
            Expr::EndsWith(k, v) => write_cmp(out, k, "ends with", v),
            Expr::Not(e) => {
                out.push('!');
                // `!tier == "web"` parses the same but reads like
                // `(!tier) == "web"`, so only self-delimiting operands go bare.
                match **e {
                    Expr::All | Expr::Has(_) | Expr::Not(_) => e.write(out),
                    _ => write_parenthesised(out, e),
                }
            }
            Expr::And(es) => {
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" && ");
                    }
                    if matches!(e, Expr::Or(_)) {
                        write_parenthesised(out, e);
                    } else {
                        e.write(out);
                    }
                }
            }
            Expr::Or(es) => {
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" || ");
                    }
                    e.write(out);
                }
            }
        }
    }

    fn collect_keys<'a>(&'a self, keys: &mut BTreeSet<&'a str>) {
        match self {
            Expr::All => {}
            Expr::Has(k)
            | Expr::Eq(k, _)
            | Expr::Ne(k, _)
            | Expr::In(k, _)
            | Expr::NotIn(k, _)
            | Expr::Contains(k, _)
            | Expr::StartsWith(k, _)
            | Expr::EndsWith(k, _) => {
                keys.insert(k);
            }
            Expr::Not(e) => e.collect_keys(keys),
            Expr::And(es) | Expr::Or(es) => es.iter().for_each(|e| e.collect_keys(keys)),
        }
    }
}

fn any_value(labels: &LabelSet, key: &str, pred: impl Fn(&str) -> bool) -> bool {
    labels.get(key).is_some_and(|vs| vs.iter().any(|v| pred(v)))
}

fn write_parenthesised(out: &mut String, e: &Expr) {
    out.push('(');
    e.write(out);
    out.push(')');
}

fn write_cmp(out: &mut String, key: &str, op: &str, value: &str) {
    out.push_str(key);
    out.push(' ');
    out.push_str(op);
    out.push(' ');
    write_quoted(out, value);
}

fn write_set(out: &mut String, key: &str, op: &str, set: &BTreeSet<String>) {
    out.push_str(key);
    out.push(' ');
    out.push_str(op);
    out.push_str(" {");
    for (i, v) in set.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_quoted(out, v);
    }
    out.push('}');
}

/// Double quotes unless the value contains one. The grammar has no escapes,
/// so a value holding both quote kinds is unrepresentable; the parser can
/// never produce one (see the module docs), so this choice always re-parses.
fn write_quoted(out: &mut String, value: &str) {
    let quote = if value.contains('"') { '\'' } else { '"' };
    out.push(quote);
    out.push_str(value);
    out.push(quote);
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String, char),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Bang,
    EqEq,
    NotEq,
    AndAnd,
    OrOr,
    // Kept as a token rather than failing in the lexer so the parser can say
    // what it expected in that position (e.g. "unknown operator '>'").
    Stray(char),
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Str(s, q) => format!("string {q}{s}{q}"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::Comma => "','".into(),
            Tok::Bang => "'!'".into(),
            Tok::EqEq => "'=='".into(),
            Tok::NotEq => "'!='".into(),
            Tok::AndAnd => "'&&'".into(),
            Tok::OrOr => "'||'".into(),
            Tok::Stray(c) => format!("'{c}'"),
            Tok::End => "end of selector".into(),
        }
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self, Tok::Word(w) if w == word)
    }
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    column: usize,
}

/// "expected X, found Y", phrased specially at end of input where there is
/// nothing to quote.
fn expected(what: &str, found: &Spanned) -> SelectorError {
    let message = match found.tok {
        Tok::End => format!("unexpected end of selector, expected {what}"),
        _ => format!("expected {what}, found {}", found.tok.describe()),
    };
    SelectorError::new(found.column, message)
}

/// Error for a token that follows a complete term but cannot continue it.
/// `open_paren` is the column of the `(` being closed, if any.
fn after_term_error(found: &Spanned, open_paren: Option<usize>) -> SelectorError {
    let (what, hint) = match (&found.tok, open_paren) {
        (Tok::End, Some(col)) => (format!("')' to close '(' at column {col}"), ""),
        (Tok::RParen, None) => {
            return SelectorError::new(found.column, "unexpected ')' with no matching '('");
        }
        (Tok::Word(w), _) if w.eq_ignore_ascii_case("and") => {
            ("'&&', '||' or end of selector".into(), "; did you mean '&&'?")
        }
        (Tok::Word(w), _) if w.eq_ignore_ascii_case("or") => {
            ("'&&', '||' or end of selector".into(), "; did you mean '||'?")
        }
        (_, Some(_)) => ("'&&', '||' or ')'".into(), ""),
        (_, None) => ("'&&', '||' or end of selector".into(), ""),
    };
    let mut err = expected(&what, found);
    err.message.push_str(hint);
    err
}

/// Produces tokens on demand so that errors are reported in source order:
/// a syntax error early in the text wins over a lexical one later on.
struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    fn next_token(&mut self) -> Result<Spanned, SelectorError> {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
        let start = self.pos;
        let column = start + 1;
        let Some(&c) = self.chars.get(start) else {
            return Ok(Spanned { tok: Tok::End, column });
        };
        let next = self.chars.get(start + 1).copied();
        self.pos += 1;
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            ',' => Tok::Comma,
            '!' if next == Some('=') => {
                self.pos += 1;
                Tok::NotEq
            }
            '!' => Tok::Bang,
            '=' | '&' | '|' if next == Some(c) => {
                self.pos += 1;
                match c {
                    '=' => Tok::EqEq,
                    '&' => Tok::AndAnd,
                    _ => Tok::OrOr,
                }
            }
            '=' | '&' | '|' => {
                return Err(SelectorError::new(
                    column,
                    format!("unknown operator '{c}'; did you mean '{c}{c}'?"),
                ));
            }
            '"' | '\'' => {
                let Some(len) = self.chars[self.pos..].iter().position(|&x| x == c) else {
                    return Err(SelectorError::new(column, "unterminated string"));
                };
                let value: String = self.chars[self.pos..self.pos + len].iter().collect();
                self.pos += len + 1;
                Tok::Str(value, c)
            }
            c if is_key_char(c) => {
                while self.chars.get(self.pos).copied().is_some_and(is_key_char) {
                    self.pos += 1;
                }
                Tok::Word(self.chars[start..self.pos].iter().collect())
            }
            other => Tok::Stray(other),
        };
        Ok(Spanned { tok, column })
    }
}

struct Parser {
    lexer: Lexer,
    peeked: Option<Spanned>,
    depth: usize,
}

impl Parser {
    fn new(text: &str) -> Self {
        Parser {
            lexer: Lexer {
                chars: text.chars().collect(),
                pos: 0,
            },
            peeked: None,
            depth: 0,
        }
    }

    fn peek(&mut self) -> Result<&Spanned, SelectorError> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.lexer.next_token()?,
        };
        Ok(self.peeked.insert(t))
    }

    fn bump(&mut self) -> Result<Spanned, SelectorError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lexer.next_token(),
        }
    }

    fn enter(&mut self, column: usize) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(SelectorError::new(
                column,
                format!("selector nested too deeply (more than {MAX_NESTING} levels of '(' or '!')"),
            ));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Expr, SelectorError> {
        let mut terms = vec![self.parse_and()?];
        while self.peek()?.tok == Tok::OrOr {
            self.bump()?;
            terms.push(self.parse_and()?);
        }
        Ok(join(terms, Expr::Or, |e| match e {
            Expr::Or(children) => Ok(children),
            other => Err(other),
        }))
    }

    fn parse_and(&mut self) -> Result<Expr, SelectorError> {
        let mut terms = vec![self.parse_unary()?];
        while self.peek()?.tok == Tok::AndAnd {
            self.bump()?;
            terms.push(self.parse_unary()?);
        }
        Ok(join(terms, Expr::And, |e| match e {
            Expr::And(children) => Ok(children),
            other => Err(other),
        }))
    }

    fn parse_unary(&mut self) -> Result<Expr, SelectorError> {
        let column = self.peek()?.column;
        if self.peek()?.tok != Tok::Bang {
            return self.parse_primary();
        }
        self.bump()?;
        self.enter(column)?;
        let inner = self.parse_unary()?;
        self.depth -= 1;
        Ok(Expr::Not(Box::new(inner)))
    }

    fn parse_primary(&mut self) -> Result<Expr, SelectorError> {
        let first = self.bump()?;
        match first.tok {
            Tok::LParen => {
                self.enter(first.column)?;
                let inner = self.parse_or()?;
                let close = self.bump()?;
                if close.tok != Tok::RParen {
                    return Err(after_term_error(&close, Some(first.column)));
                }
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Word(ref w) if (w == "has" || w == "all") && self.peek()?.tok == Tok::LParen => {
                self.bump()?;
                if w == "all" {
                    let close = self.bump()?;
                    if close.tok != Tok::RParen {
                        return Err(expected("')' after 'all('", &close));
                    }
                    return Ok(Expr::All);
                }
                let key = self.bump()?;
                let Tok::Word(key) = key.tok else {
                    return Err(expected("a label key inside has()", &key));
                };
                let close = self.bump()?;
                if close.tok != Tok::RParen {
                    return Err(expected(&format!("')' after 'has({key}'"), &close));
                }
                Ok(Expr::Has(key))
            }
            Tok::Word(key) => self.parse_comparison(key),
            _ => Err(expected("a label key", &first)),
        }
    }

    fn parse_comparison(&mut self, key: String) -> Result<Expr, SelectorError> {
        let op = self.bump()?;
        let expr = match &op.tok {
            Tok::EqEq => Expr::Eq(key, self.string_after("'=='")?),
            Tok::NotEq => Expr::Ne(key, self.string_after("'!='")?),
            Tok::Word(w) if w == "in" => Expr::In(key, self.set_after("'in'")?),
            Tok::Word(w) if w == "not" => {
                self.expect_word("in", "not")?;
                Expr::NotIn(key, self.set_after("'not in'")?)
            }
            Tok::Word(w) if w == "contains" => Expr::Contains(key, self.string_after("'contains'")?),
            Tok::Word(w) if w == "starts" => {
                self.expect_word("with", "starts")?;
                Expr::StartsWith(key, self.string_after("'starts with'")?)
            }
            Tok::Word(w) if w == "ends" => {
                self.expect_word("with", "ends")?;
                Expr::EndsWith(key, self.string_after("'ends with'")?)
            }
            Tok::Bang => {
                return Err(SelectorError::new(
                    op.column,
                    "unknown operator '!'; did you mean '!='?",
                ));
            }
            Tok::Word(_) | Tok::Stray(_) => {
                let hint = match key.as_str() {
                    "not" => "; use '!' to negate a term",
                    "has" | "all" => "; functions need parentheses, e.g. has(key) or all()",
                    _ => "",
                };
                return Err(SelectorError::new(
                    op.column,
                    format!(
                        "unknown operator {} after label key '{key}'; expected one of {OPERATORS}{hint}",
                        op.tok.describe()
                    ),
                ));
            }
            _ => {
                return Err(expected(
                    &format!("an operator ({OPERATORS}) after label key '{key}'"),
                    &op,
                ));
            }
        };
        Ok(expr)
    }

    fn expect_word(&mut self, word: &str, after: &str) -> Result<(), SelectorError> {
        let t = self.bump()?;
        if t.tok.is_word(word) {
            Ok(())
        } else {
            Err(expected(&format!("'{word}' after '{after}'"), &t))
        }
    }

    fn string_after(&mut self, op: &str) -> Result<String, SelectorError> {
        let t = self.bump()?;
        match t.tok {
            Tok::Str(s, _) => Ok(s),
            _ => Err(expected(&format!("a quoted string after {op}"), &t)),
        }
    }

    fn set_after(&mut self, op: &str) -> Result<BTreeSet<String>, SelectorError> {
        let open = self.bump()?;
        if open.tok != Tok::LBrace {
            return Err(expected(&format!("'{{' after {op}"), &open));
        }
        let mut set = BTreeSet::new();
        if self.peek()?.tok == Tok::RBrace {
            self.bump()?;
            return Ok(set);
        }
        let mut what = "a quoted string or '}'";
        loop {
            let item = self.bump()?;
            let Tok::Str(value, _) = item.tok else {
                return Err(expected(what, &item));
            };
            set.insert(value);
            let sep = self.bump()?;
            match sep.tok {
                Tok::Comma => what = "a quoted string after ','",
                Tok::RBrace => return Ok(set),
                _ => return Err(expected("',' or '}' in set", &sep)),
            }
        }
    }
}

/// Combines a run of same-precedence terms, splicing in children of the
/// same kind (from parenthesised groups) so associativity is normalised.
fn join(mut terms: Vec<Expr>, make: fn(Vec<Expr>) -> Expr, split: fn(Expr) -> Result<Vec<Expr>, Expr>) -> Expr {
    if terms.len() == 1 {
        if let Some(only) = terms.pop() {
            return only;
        }
    }
    let mut flat = Vec::with_capacity(terms.len());
    for term in terms {
        match split(term) {
            Ok(children) => flat.extend(children),
            Err(other) => flat.push(other),
        }
    }
    make(flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &[&str])]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(std::string::ToString::to_string).collect()))
            .collect()
    }

    fn sel(text: &str) -> Selector {
        Selector::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn m(text: &str, ls: &LabelSet) -> bool {
        sel(text).matches(ls)
    }

    fn err(text: &str) -> SelectorError {
        match Selector::parse(text) {
            Ok(s) => panic!("{text:?} should fail, parsed as {s}"),
            Err(e) => e,
        }
    }

    fn assert_err(text: &str, column: usize, message: &str) {
        let e = err(text);
        assert_eq!((e.column, e.message.as_str()), (column, message), "for {text:?}");
    }

    fn web() -> LabelSet {
        labels(&[
            ("tier", &["web"]),
            ("group", &["a", "b"]),
            ("projectcalico.org/name", &["frontend-1"]),
            ("empty", &[]),
        ])
    }

    // ---- operators -------------------------------------------------------

    #[test]
    fn all_and_empty() {
        let ls = web();
        assert!(m("all()", &ls));
        assert!(m("", &LabelSet::new()));
        assert!(sel("").is_all());
        assert!(sel("  \t\n ").is_all());
        assert!(sel(" all ( ) ").is_all());
        assert!(Selector::all().is_all());
        assert_eq!(sel(""), Selector::all());
        assert!(!sel("has(a)").is_all());
        assert!(!sel("!all()").is_all());
        assert!(!m("!all()", &ls));
    }

    #[test]
    fn has() {
        let ls = web();
        assert!(m("has(tier)", &ls));
        assert!(m("has( projectcalico.org/name )", &ls));
        assert!(!m("has(missing)", &ls));
        assert!(m("!has(missing)", &ls));
        // A key with no values is not "present".
        assert!(!m("has(empty)", &ls));
    }

    #[test]
    fn equality() {
        let ls = web();
        assert!(m(r#"tier == "web""#, &ls));
        assert!(m("tier=='web'", &ls));
        assert!(!m(r#"tier == "db""#, &ls));
        assert!(!m(r#"tier != "web""#, &ls));
        assert!(m(r#"tier != "db""#, &ls));
        assert!(m(r#"projectcalico.org/name == "frontend-1""#, &ls));
    }

    #[test]
    fn set_membership() {
        let ls = web();
        assert!(m(r#"tier in {"db", "web"}"#, &ls));
        assert!(!m(r#"tier in {"db"}"#, &ls));
        assert!(!m("tier in {}", &ls));
        assert!(m(r#"tier not in {"db"}"#, &ls));
        assert!(!m(r#"tier not in {"db","web"}"#, &ls));
        assert!(m("tier not   in {}", &ls));
    }

    #[test]
    fn string_operators() {
        let ls = web();
        assert!(m(r#"tier contains "e""#, &ls));
        assert!(!m(r#"tier contains "x""#, &ls));
        assert!(m(r#"projectcalico.org/name starts with "front""#, &ls));
        assert!(!m(r#"projectcalico.org/name starts with "end""#, &ls));
        assert!(m(r#"projectcalico.org/name ends with "-1""#, &ls));
        assert!(!m(r#"projectcalico.org/name ends with "front""#, &ls));
        assert!(m(r#"tier contains """#, &ls));
    }

    #[test]
    fn multi_valued_labels() {
        let ls = web();
        assert!(m(r#"group == "a""#, &ls));
        assert!(m(r#"group == "b""#, &ls));
        assert!(!m(r#"group == "c""#, &ls));
        // != means "no value equals", not "some value differs".
        assert!(!m(r#"group != "a""#, &ls));
        assert!(m(r#"group != "c""#, &ls));
        assert!(m(r#"group in {"b", "z"}"#, &ls));
        assert!(!m(r#"group not in {"b", "z"}"#, &ls));
        assert!(m(r#"group not in {"y", "z"}"#, &ls));
        assert!(m(r#"group == "a" && group == "b""#, &ls));
        assert!(m(r#"group starts with "b""#, &ls));
        assert!(m(r#"group ends with "a""#, &ls));
        assert!(m(r#"group contains "b""#, &ls));
    }

    #[test]
    fn negative_operators_are_exact_negations() {
        let ls = web();
        for (pos, neg) in [
            (r#"group == "a""#, r#"group != "a""#),
            (r#"group == "q""#, r#"group != "q""#),
            (r#"nope == "a""#, r#"nope != "a""#),
            (r#"group in {"a"}"#, r#"group not in {"a"}"#),
            (r#"nope in {"a"}"#, r#"nope not in {"a"}"#),
        ] {
            assert_eq!(m(pos, &ls), !m(neg, &ls), "{pos} vs {neg}");
            assert_eq!(m(neg, &ls), m(&format!("!({pos})"), &ls), "{neg}");
        }
    }

    #[test]
    fn absent_keys() {
        let ls = web();
        assert!(!m("has(x)", &ls));
        assert!(!m(r#"x == "a""#, &ls));
        assert!(m(r#"x != "a""#, &ls));
        assert!(!m(r#"x in {"a"}"#, &ls));
        assert!(m(r#"x not in {"a"}"#, &ls));
        assert!(!m(r#"x contains """#, &ls));
        assert!(!m(r#"x starts with """#, &ls));
        assert!(!m(r#"x ends with """#, &ls));
        // Present-but-empty behaves like absent.
        assert!(!m(r#"empty == """#, &ls));
        assert!(m(r#"empty != """#, &ls));
        assert!(m(r#"empty not in {""}"#, &ls));
    }

    // ---- boolean structure ----------------------------------------------

    #[test]
    fn and_binds_tighter_than_or() {
        let s = sel(r#"a == "1" || b == "2" && c == "3""#);
        assert!(s.matches(&labels(&[("a", &["1"])])));
        assert!(!s.matches(&labels(&[("b", &["2"])])));
        assert!(s.matches(&labels(&[("b", &["2"]), ("c", &["3"])])));
        assert_eq!(s, sel(r#"a == "1" || (b == "2" && c == "3")"#));
        assert_ne!(s, sel(r#"(a == "1" || b == "2") && c == "3""#));
        assert_eq!(s.canonical(), r#"a == "1" || b == "2" && c == "3""#);

        let t = sel(r#"a == "1" && b == "2" || c == "3""#);
        assert!(t.matches(&labels(&[("c", &["3"])])));
        assert!(!t.matches(&labels(&[("a", &["1"])])));
    }

    #[test]
    fn parentheses_override_precedence() {
        let s = sel(r#"(a == "1" || b == "2") && c == "3""#);
        assert!(!s.matches(&labels(&[("a", &["1"])])));
        assert!(s.matches(&labels(&[("a", &["1"]), ("c", &["3"])])));
        assert_eq!(s.canonical(), r#"(a == "1" || b == "2") && c == "3""#);
        assert_eq!(sel("((has(a)))"), sel("has(a)"));
    }

    #[test]
    fn nested_not() {
        let ls = web();
        assert!(m("!has(x)", &ls));
        assert!(!m("!!has(x)", &ls));
        assert!(m("!!!has(x)", &ls));
        assert!(m("! ! has(tier)", &ls));
        assert!(m(r#"!(tier == "db" || has(x))"#, &ls));
        assert!(!m(r#"!(tier == "web" && has(group))"#, &ls));
        // `!` applies to the whole comparison term, not the key.
        assert!(m(r#"!tier == "db""#, &ls));
        assert_eq!(sel(r#"!tier == "db""#), sel(r#"!(tier == "db")"#));
        // `!` binds tighter than `&&`.
        assert!(!m(r#"!has(x) && tier == "db""#, &ls));
    }

    #[test]
    fn associativity_is_normalised() {
        assert_eq!(sel("has(a) && (has(b) && has(c))"), sel("has(a) && has(b) && has(c)"));
        assert_eq!(sel("(has(a) || has(b)) || has(c)"), sel("has(a) || has(b) || has(c)"));
        assert_ne!(sel("has(a) && has(b)"), sel("has(b) && has(a)"));
    }

    // ---- canonical form --------------------------------------------------

    #[test]
    fn canonical_normalises_spacing_and_quotes() {
        assert_eq!(sel(r#"a=="x"&&b=='y'"#).canonical(), r#"a == "x" && b == "y""#);
        assert_eq!(sel("a!='x'||has( b )").canonical(), r#"a != "x" || has(b)"#);
        assert_eq!(
            sel(r#"k   not    in{'b',"a" ,'b'}"#).canonical(),
            r#"k not in {"a", "b"}"#
        );
        assert_eq!(sel("k in {}").canonical(), "k in {}");
        assert_eq!(sel("k starts   with'x'").canonical(), r#"k starts with "x""#);
        assert_eq!(sel("k ends with 'x'").canonical(), r#"k ends with "x""#);
        assert_eq!(sel("k contains 'x'").canonical(), r#"k contains "x""#);
        assert_eq!(sel("").canonical(), "all()");
        assert_eq!(sel("!(k=='v')").canonical(), r#"!(k == "v")"#);
        assert_eq!(sel("!!has(k)").canonical(), "!!has(k)");
        assert_eq!(sel("!(has(a)&&has(b))").canonical(), "!(has(a) && has(b))");
        assert_eq!(sel("((has(a)))").canonical(), "has(a)");
        assert_eq!(sel(r#"k in {"b", "a"}"#), sel(r#"k in {'a','b','a'}"#));
        assert_eq!(format!("{}", sel("a=='x'")), r#"a == "x""#);
    }

    #[test]
    fn canonical_quotes_values_containing_double_quotes() {
        let s = sel(r#"msg == 'say "hi"'"#);
        assert_eq!(s.canonical(), r#"msg == 'say "hi"'"#);
        assert!(s.matches(&labels(&[("msg", &["say \"hi\""])])));
        assert_eq!(sel(r#"msg == "it's""#).canonical(), r#"msg == "it's""#);
        assert_eq!(sel(r#"k in {'a"b', "c'd"}"#).canonical(), r#"k in {'a"b', "c'd"}"#);
    }

    #[test]
    fn canonical_round_trips() {
        let cases = [
            "",
            "all()",
            "!all()",
            "has(projectcalico.org/name)",
            r#"a == "1" || b == "2" && c == "3""#,
            r#"(a == "1" || b == "2") && c == "3""#,
            r#"((a == "1" || b == "2") && (c == "3" || !has(d))) || e in {"x", 'y'}"#,
            r#"!(a == "1" || b == "2") && !!!has(c)"#,
            r#"x not in {'q"', "r"} && y starts with "s" && z ends with 'e' || w contains """#,
            r#"!tier == "web""#,
            r#"has == "x" && all != "y" && in in {"z"} && not not in {}"#,
            r#"msg == 'a "quoted" word' || msg == "it's""#,
        ];
        for text in cases {
            let s = sel(text);
            let canon = s.canonical();
            let reparsed = sel(&canon);
            assert_eq!(reparsed, s, "{text:?} -> {canon:?}");
            assert_eq!(reparsed.canonical(), canon, "idempotent for {text:?}");
            assert_eq!(canon.parse::<Selector>(), Ok(s.clone()));
            assert_eq!(s.to_string(), canon);
        }
    }

    #[test]
    fn keywords_can_be_keys() {
        let ls = labels(&[("has", &["x"]), ("in", &["z"]), ("all", &["q"])]);
        assert!(m(r#"has == "x""#, &ls));
        assert!(m(r#"in in {"z"}"#, &ls));
        assert!(m(r#"all != "y""#, &ls));
        assert!(m(r#"not not in {"a"}"#, &ls));
        assert!(m("has(has)", &ls));
    }

    #[test]
    fn keys_are_sorted_and_deduped() {
        let s = sel(r#"tier == "web" && (group in {"a"} || !has(tier)) && all() && b.c/d ends with "x""#);
        assert_eq!(s.keys(), vec!["b.c/d", "group", "tier"]);
        assert!(Selector::all().keys().is_empty());
    }

    #[test]
    fn whitespace_between_all_tokens() {
        let a = sel("\t!\n(\r\nhas ( a )\t&&\tb\n==\n'x'  )  ");
        assert_eq!(a, sel(r#"!(has(a) && b == "x")"#));
        assert_eq!(sel("k in{ 'a' , 'b' }"), sel(r#"k in {"a", "b"}"#));
    }

    // ---- errors ----------------------------------------------------------

    #[test]
    fn error_display_format() {
        let e = err("group == web");
        assert_eq!(
            e.to_string(),
            "column 10: expected a quoted string after '==', found 'web'"
        );
    }

    #[test]
    fn error_missing_quotes() {
        assert_err("group == web", 10, "expected a quoted string after '==', found 'web'");
        assert_err("a != (", 6, "expected a quoted string after '!=', found '('");
        assert_err(
            "a starts with x",
            15,
            "expected a quoted string after 'starts with', found 'x'",
        );
    }

    #[test]
    fn error_unexpected_end() {
        assert_err("a == \"x\" &&", 12, "unexpected end of selector, expected a label key");
        assert_err("!", 2, "unexpected end of selector, expected a label key");
        assert_err(
            "a ==",
            5,
            "unexpected end of selector, expected a quoted string after '=='",
        );
        assert_err(
            "tier",
            5,
            "unexpected end of selector, expected an operator (==, !=, in, not in, contains, \
             starts with, ends with) after label key 'tier'",
        );
        assert_err("has(a", 6, "unexpected end of selector, expected ')' after 'has(a'");
    }

    #[test]
    fn error_unterminated_string() {
        assert_err("a == \"x", 6, "unterminated string");
        assert_err("a=='x", 4, "unterminated string");
        assert_err("k in {'a', \"b}", 12, "unterminated string");
    }

    #[test]
    fn error_single_char_operators() {
        assert_err("a = \"x\"", 3, "unknown operator '='; did you mean '=='?");
        assert_err("has(a) & has(b)", 8, "unknown operator '&'; did you mean '&&'?");
        assert_err("has(a) | has(b)", 8, "unknown operator '|'; did you mean '||'?");
        assert_err("a ! \"x\"", 3, "unknown operator '!'; did you mean '!='?");
    }

    #[test]
    fn error_unknown_operators() {
        assert_err(
            "a > \"1\"",
            3,
            "unknown operator '>' after label key 'a'; expected one of ==, !=, in, not in, \
             contains, starts with, ends with",
        );
        assert_err(
            "a like \"1\"",
            3,
            "unknown operator 'like' after label key 'a'; expected one of ==, !=, in, not in, \
             contains, starts with, ends with",
        );
        assert_err(
            "not has(a)",
            5,
            "unknown operator 'has' after label key 'not'; expected one of ==, !=, in, not in, \
             contains, starts with, ends with; use '!' to negate a term",
        );
        assert_err(
            "a starts \"x\"",
            10,
            "expected 'with' after 'starts', found string \"x\"",
        );
        assert_err("a ends", 7, "unexpected end of selector, expected 'with' after 'ends'");
        assert_err("a not {\"x\"}", 7, "expected 'in' after 'not', found '{'");
    }

    #[test]
    fn error_parentheses() {
        assert_err(
            "(has(a)",
            8,
            "unexpected end of selector, expected ')' to close '(' at column 1",
        );
        assert_err("has(a))", 7, "unexpected ')' with no matching '('");
        assert_err("(has(a) has(b))", 9, "expected '&&', '||' or ')', found 'has'");
        assert_err("()", 2, "expected a label key, found ')'");
        assert_err("has()", 5, "expected a label key inside has(), found ')'");
        assert_err("has(\"a\")", 5, "expected a label key inside has(), found string \"a\"");
        assert_err("all(x)", 5, "expected ')' after 'all(', found 'x'");
    }

    #[test]
    fn error_sets() {
        assert_err("k in \"a\"", 6, "expected '{' after 'in', found string \"a\"");
        assert_err("k not in (", 10, "expected '{' after 'not in', found '('");
        assert_err(
            "k in {\"a\" \"b\"}",
            11,
            "expected ',' or '}' in set, found string \"b\"",
        );
        assert_err("k in {\"a\",}", 11, "expected a quoted string after ',', found '}'");
        assert_err("k in {a}", 7, "expected a quoted string or '}', found 'a'");
        assert_err(
            "k in {",
            7,
            "unexpected end of selector, expected a quoted string or '}'",
        );
    }

    #[test]
    fn error_junk_after_term() {
        assert_err(
            "a == \"x\" b == \"y\"",
            10,
            "expected '&&', '||' or end of selector, found 'b'",
        );
        assert_err(
            "a == \"x\" and b == \"y\"",
            10,
            "expected '&&', '||' or end of selector, found 'and'; did you mean '&&'?",
        );
        assert_err(
            "has(a) OR has(b)",
            8,
            "expected '&&', '||' or end of selector, found 'OR'; did you mean '||'?",
        );
        assert_err("a == \"x\" @", 10, "expected '&&', '||' or end of selector, found '@'");
        assert_err("\"a\" == \"b\"", 1, "expected a label key, found string \"a\"");
        assert_err("has(a) && && has(b)", 11, "expected a label key, found '&&'");
    }

    #[test]
    fn error_columns_count_chars_not_bytes() {
        assert_err("é == \"x\"", 1, "expected a label key, found 'é'");
        assert_err("a == \"é\" ?", 10, "expected '&&', '||' or end of selector, found '?'");
    }

    #[test]
    fn error_reported_in_source_order() {
        // The syntax error at column 3 comes before the unterminated string.
        assert_err("a b == \"x", 3, "unknown operator 'b' after label key 'a'; expected one of ==, !=, in, not in, contains, starts with, ends with");
    }

    #[test]
    fn both_quote_kinds_cannot_be_written() {
        // No escapes: the first matching quote closes the literal.
        assert_err(
            r#"a == "x\"y""#,
            10,
            "expected '&&', '||' or end of selector, found 'y'",
        );
        assert_err(
            r#"a == 'it's "q"'"#,
            10,
            "expected '&&', '||' or end of selector, found 's'",
        );
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let deep = format!("{}has(a){}", "(".repeat(500), ")".repeat(500));
        let e = err(&deep);
        assert_eq!(e.column, MAX_NESTING + 1);
        let bangs = format!("{}has(a)", "!".repeat(500));
        assert_eq!(err(&bangs).column, MAX_NESTING + 1);
        let ok = format!("{}has(a){}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(sel(&ok), sel("has(a)"));
    }

    #[test]
    fn length_is_bounded() {
        let long = format!("a == \"{}\"", "x".repeat(crate::limits::MAX_SELECTOR_BYTES));
        let e = Selector::parse(&long).unwrap_err();
        assert!(e.message.contains("at most"), "{e:?}");
        let fits = format!("a == \"{}\"", "x".repeat(crate::limits::MAX_SELECTOR_BYTES - 10));
        assert!(Selector::parse(&fits).is_ok());
    }
}
