//! The table in nft's own syntax: exactly what `nft list table inet calico` prints for
//! it, so that what the agent loads (`nft -f -`), what `calicoctl render --what nft`
//! shows and what the kernel lists back are one text.
//!
//! nft rewrites a rule when it lists it, and the printer writes the rewritten form
//! directly (loading it gives the same kernel rule, which is why nft drops the parts):
//!
//! - dependencies nft adds itself are left out: `meta nfproto ipv4` before an `ip`
//!   or `ip6` match, `meta l4proto 6` before a `tcp` match (and so for udp, sctp,
//!   udplite, icmp, icmpv6), and `meta nfproto` before `meta l4proto icmp`/`ipv6-icmp`
//!   of its family;
//! - numbers are names where nft has one: protocols (as Debian's /etc/protocols spells
//!   them, which nft reads), ICMP types and codes, `priority filter`/`srcnat`;
//! - anonymous sets are sorted, and when they hold ranges or prefixes, overlapping and
//!   adjacent intervals are merged (a merged range that is a prefix prints as one);
//! - counters print `packets 0 bytes 0` (a fresh counter; [`normalize_listing`] zeroes
//!   the kernel's before comparing);
//! - named sets wrap their elements as nft does (two IPv4 addresses a line, one of
//!   anything else).
//!
//! What the printer cannot know, [`normalize_listing`] takes out of both sides of a
//! comparison: counter values, the order of elements in hash sets (nft prints the
//! kernel's hash order for interface names) and the order of sets and chains (creation
//! order, which deltas change).
//!
//! Pure: no I/O. A statement the renderer does not make has no printer and is an error,
//! never a guess.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nftables::expr::{BinaryOperation, Expression, MetaKey, NamedExpression, Payload, SetItem};
use nftables::schema::SetType;
use nftables::stmt::{Counter, Log, Operator, Statement};
use nftables::types::{NfChainType, NfHook};

use super::builder::{BaseChain, Elems, NftTable};
use super::{num, one_or_set, st, NftRule, E, TABLE_NAME};

/// A statement or value the printer has no nft syntax for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nft text of chain {chain}: no syntax for {what}")]
pub struct TextError {
    pub chain: String,
    pub what: String,
}

/// The line that makes a whole load work whether or not the table exists: `add` then
/// `delete` in the same transaction as the new table.
pub(super) const REPLACE_PREFIX: &str = "add table inet calico\ndelete table inet calico\n";

impl NftTable {
    /// The table as `nft list table inet calico` prints it after a whole load.
    pub fn to_text(&self) -> Result<String, TextError> {
        let mut out = String::with_capacity(self.text_size_hint());
        let _ = writeln!(out, "table inet {TABLE_NAME} {{");
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !std::mem::take(&mut first) {
                out.push('\n');
            }
        };
        for (name, (ty, elems)) in &self.sets {
            sep(&mut out);
            set_block(&mut out, name, *ty, elems);
        }
        for (name, (key, elems)) in &self.vmaps {
            sep(&mut out);
            map_block(&mut out, name, *key, elems.iter());
        }
        for b in &self.base {
            sep(&mut out);
            let rules = self.base_rules.get(b.name).map(Vec::as_slice).unwrap_or_default();
            chain_block(&mut out, b.name, Some(b), rules)?;
        }
        for (name, rules) in &self.chains {
            sep(&mut out);
            chain_block(&mut out, name, None, rules)?;
        }
        out.push_str("}\n");
        Ok(out)
    }

    /// What `nft -f -` gets for a whole load: the table dropped and made again in one
    /// transaction, then [`NftTable::to_text`].
    pub fn to_load_text(&self) -> Result<String, TextError> {
        Ok(format!("{REPLACE_PREFIX}{}", self.to_text()?))
    }

    /// About 100 bytes a rule and 30 an element: one allocation at any size.
    fn text_size_hint(&self) -> usize {
        let rules: usize =
            self.chains.values().map(Vec::len).sum::<usize>() + self.base_rules.values().map(Vec::len).sum::<usize>();
        let elems: usize = self.sets.values().map(|(_, e)| e.len()).sum::<usize>()
            + self.vmaps.values().map(|(_, e)| e.len()).sum::<usize>();
        4096 + rules * 100 + elems * 40 + self.chains.len() * 30
    }
}

impl Elems {
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Elems::Addrs(a) => a.len(),
            Elems::Nets(n) => n.len(),
            Elems::Names(n) => n.len(),
        }
    }

    /// The elements as nft writes them, in nft's order.
    pub(super) fn texts(&self) -> Vec<String> {
        match self {
            Elems::Addrs(a) => a.iter().map(ToString::to_string).collect(),
            Elems::Nets(n) => n
                .iter()
                .map(|n| {
                    if n.prefix_len() == n.max_prefix_len() {
                        n.addr().to_string()
                    } else {
                        format!("{}/{}", n.network(), n.prefix_len())
                    }
                })
                .collect(),
            Elems::Names(n) => n.iter().map(|i| quoted(i)).collect(),
        }
    }
}

pub(super) fn set_type_name(ty: SetType) -> &'static str {
    match ty {
        SetType::Ipv4Addr => "ipv4_addr",
        SetType::Ipv6Addr => "ipv6_addr",
        SetType::Ifname => "ifname",
        SetType::InetProto => "inet_proto",
        SetType::InetService => "inet_service",
        SetType::Mark => "mark",
        SetType::EtherAddr => "ether_addr",
    }
}

fn set_block(out: &mut String, name: &str, ty: SetType, elems: &Elems) {
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype {}", set_type_name(ty));
    if matches!(elems, Elems::Nets(_)) {
        out.push_str("\t\tflags interval\n");
    }
    // nft puts two IPv4 addresses on a line, one of anything else.
    let per_line = if ty == SetType::Ipv4Addr { 2 } else { 1 };
    elements_line(out, elems.texts().iter().map(String::as_str), per_line);
    out.push_str("\t}\n");
}

fn map_block<'a>(out: &mut String, name: &str, key: SetType, elems: impl Iterator<Item = (&'a String, &'a String)>) {
    let _ = writeln!(out, "\tmap {name} {{\n\t\ttype {} : verdict", set_type_name(key));
    let items: Vec<String> = elems.map(|(k, t)| format!("{} : jump {t}", quoted(k))).collect();
    elements_line(out, items.iter().map(String::as_str), 1);
    out.push_str("\t}\n");
}

fn elements_line<'a>(out: &mut String, items: impl Iterator<Item = &'a str>, per_line: usize) {
    let mut n = 0;
    for item in items {
        if n == 0 {
            out.push_str("\t\telements = { ");
        } else if n % per_line == 0 {
            out.push_str(",\n\t\t\t     ");
        } else {
            out.push_str(", ");
        }
        out.push_str(item);
        n += 1;
    }
    if n > 0 {
        out.push_str(" }\n");
    }
}

fn chain_block(out: &mut String, name: &str, base: Option<&BaseChain>, rules: &[NftRule]) -> Result<(), TextError> {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(b) = base {
        let _ = writeln!(out, "\t\t{}", base_line(b));
    }
    for r in rules {
        out.push_str("\t\t");
        rule_text(out, name, r)?;
        out.push('\n');
    }
    out.push_str("\t}\n");
    Ok(())
}

fn base_line(b: &BaseChain) -> String {
    let ty = match b.chain_type {
        NfChainType::Filter => "filter",
        NfChainType::NAT => "nat",
        NfChainType::Route => "route",
    };
    let hook = match b.hook {
        NfHook::Ingress => "ingress",
        NfHook::Prerouting => "prerouting",
        NfHook::Forward => "forward",
        NfHook::Input => "input",
        NfHook::Output => "output",
        NfHook::Postrouting => "postrouting",
        NfHook::Egress => "egress",
    };
    // nft names the standard priorities of the inet family.
    let prio = match (b.chain_type, b.hook, b.prio) {
        (NfChainType::Filter, _, 0) => "filter".to_string(),
        (NfChainType::NAT, NfHook::Postrouting, 100) => "srcnat".to_string(),
        (NfChainType::NAT, NfHook::Prerouting, -100) => "dstnat".to_string(),
        (_, _, p) => p.to_string(),
    };
    format!("type {ty} hook {hook} priority {prio}; policy accept;")
}

/// One rule, as nft lists it, without the leading tabs.
pub(super) fn rule_text(out: &mut String, chain: &str, (stmts, comment): &NftRule) -> Result<(), TextError> {
    let err = |what: String| TextError {
        chain: chain.to_string(),
        what,
    };
    let skip = implied(stmts);
    let mut first = true;
    for (s, skipped) in stmts.iter().zip(skip) {
        if skipped {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(' ');
        }
        stmt_text(out, s).map_err(err)?;
    }
    if let Some(c) = comment {
        if c.contains('"') || c.contains('\n') {
            return Err(err(format!("a comment with a quote or newline: {c:?}")));
        }
        let _ = write!(out, " comment \"{c}\"");
    }
    Ok(())
}

/// Which statements nft leaves out of its listing because a later one implies them
/// (and re-adds when it loads the rule).
fn implied(stmts: &[nftables::stmt::Statement<'static>]) -> Vec<bool> {
    let mut skip = vec![false; stmts.len()];
    // The last `meta nfproto X` and `meta l4proto N` equality not yet used up.
    let mut net: Option<(usize, &str)> = None;
    let mut transport: Option<(usize, u32)> = None;
    for (i, s) in stmts.iter().enumerate() {
        let Statement::Match(m) = s else { continue };
        match (&m.left, m.op, &m.right) {
            (Expression::Named(NamedExpression::Meta(meta)), Operator::EQ, Expression::String(f))
                if meta.key == MetaKey::Nfproto =>
            {
                net = Some((i, f.as_ref()));
            }
            (Expression::Named(NamedExpression::Meta(meta)), Operator::EQ, Expression::Number(p))
                if meta.key == MetaKey::L4proto =>
            {
                // ICMP and ICMPv6 name their family: `meta l4proto icmp` implies ipv4.
                if let Some((j, f)) = net {
                    if (*p == 1 && f == "ipv4") || (*p == 58 && f == "ipv6") {
                        skip[j] = true;
                        net = None;
                    }
                }
                transport = Some((i, *p));
            }
            (Expression::Named(NamedExpression::Payload(Payload::PayloadField(pf))), _, _) => {
                match pf.protocol.as_ref() {
                    "ip" | "ip6" => {
                        if let Some((j, _)) = net.take() {
                            skip[j] = true;
                        }
                    }
                    proto => {
                        let number = match proto {
                            "tcp" => Some(6),
                            "udp" => Some(17),
                            "sctp" => Some(132),
                            "udplite" => Some(136),
                            "icmp" => Some(1),
                            "icmpv6" => Some(58),
                            _ => None,
                        };
                        if let Some(n) = number {
                            if let Some((j, p)) = transport.take() {
                                if p == n {
                                    skip[j] = true;
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    skip
}

/// What a match compares, which decides how its values print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ifname,
    Nfproto,
    L4proto,
    Mark,
    Addr,
    Port,
    IcmpType,
    IcmpCode,
    Icmp6Type,
    Icmp6Code,
    CtState,
}

fn stmt_text(out: &mut String, s: &Statement<'static>) -> Result<(), String> {
    match s {
        Statement::Match(m) => {
            let kind = left_text(out, &m.left)?;
            let binop = matches!(m.left, Expression::BinaryOperation(_));
            match m.op {
                Operator::EQ if binop => out.push_str(" == "),
                Operator::EQ | Operator::IN => out.push(' '),
                Operator::NEQ => out.push_str(" != "),
                op => return Err(format!("operator {op:?}")),
            }
            value_text(out, kind, &m.right)
        }
        Statement::Counter(Counter::Anonymous(_)) => {
            out.push_str("counter packets 0 bytes 0");
            Ok(())
        }
        Statement::Accept(None) => {
            out.push_str("accept");
            Ok(())
        }
        Statement::Drop(None) => {
            out.push_str("drop");
            Ok(())
        }
        Statement::Return(None) => {
            out.push_str("return");
            Ok(())
        }
        Statement::Jump(t) => {
            let _ = write!(out, "jump {}", t.target);
            Ok(())
        }
        Statement::Goto(t) => {
            let _ = write!(out, "goto {}", t.target);
            Ok(())
        }
        Statement::Masquerade(None) => {
            out.push_str("masquerade");
            Ok(())
        }
        Statement::Log(Some(Log {
            prefix: Some(p),
            group: None,
            snaplen: None,
            queue_threshold: None,
            level: None,
            flags: None,
        })) if !p.contains('"') && !p.contains('\n') => {
            let _ = write!(out, "log prefix \"{p}\"");
            Ok(())
        }
        Statement::VerdictMap(v) => {
            left_text(out, &v.key)?;
            match &v.data {
                Expression::String(m) if m.starts_with('@') => {
                    let _ = write!(out, " vmap {m}");
                    Ok(())
                }
                d => Err(format!("verdict map data {d:?}")),
            }
        }
        Statement::Mangle(mg) => {
            let Kind::Mark = left_text(out, &mg.key)? else {
                return Err(format!("mangle of {:?}", mg.key));
            };
            out.push_str(" set ");
            match &mg.value {
                Expression::BinaryOperation(b) => match &**b {
                    BinaryOperation::AND(l, Expression::Number(n)) => {
                        left_text(out, l)?;
                        let _ = write!(out, " & 0x{n:08x}");
                        Ok(())
                    }
                    BinaryOperation::OR(items) if items.len() == 2 => {
                        left_text(out, &items[0])?;
                        match &items[1] {
                            Expression::Number(n) => {
                                let _ = write!(out, " | 0x{n:08x}");
                                Ok(())
                            }
                            v => Err(format!("mark value {v:?}")),
                        }
                    }
                    v => Err(format!("mark value {v:?}")),
                },
                Expression::Number(n) => {
                    let _ = write!(out, "0x{n:08x}");
                    Ok(())
                }
                v => Err(format!("mark value {v:?}")),
            }
        }
        s => Err(format!("statement {s:?}")),
    }
}

fn left_text(out: &mut String, e: &Expression<'static>) -> Result<Kind, String> {
    match e {
        Expression::Named(NamedExpression::Meta(m)) => {
            let (text, kind) = match m.key {
                MetaKey::Iifname => ("iifname", Kind::Ifname),
                MetaKey::Oifname => ("oifname", Kind::Ifname),
                MetaKey::Nfproto => ("meta nfproto", Kind::Nfproto),
                MetaKey::L4proto => ("meta l4proto", Kind::L4proto),
                MetaKey::Mark => ("meta mark", Kind::Mark),
                k => return Err(format!("meta {k:?}")),
            };
            out.push_str(text);
            Ok(kind)
        }
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(pf))) => {
            let kind = match (pf.protocol.as_ref(), pf.field.as_ref()) {
                ("ip" | "ip6", "saddr" | "daddr") => Kind::Addr,
                ("tcp" | "udp" | "sctp" | "udplite" | "th", "sport" | "dport") => Kind::Port,
                ("icmp", "type") => Kind::IcmpType,
                ("icmp", "code") => Kind::IcmpCode,
                ("icmpv6", "type") => Kind::Icmp6Type,
                ("icmpv6", "code") => Kind::Icmp6Code,
                (p, f) => return Err(format!("payload {p} {f}")),
            };
            let _ = write!(out, "{} {}", pf.protocol, pf.field);
            Ok(kind)
        }
        Expression::Named(NamedExpression::CT(ct)) if ct.key == "state" && ct.family.is_none() && ct.dir.is_none() => {
            out.push_str("ct state");
            Ok(Kind::CtState)
        }
        Expression::BinaryOperation(b) => match &**b {
            BinaryOperation::AND(l, Expression::Number(n)) => {
                let kind = left_text(out, l)?;
                if kind != Kind::Mark {
                    return Err(format!("a mask on {l:?}"));
                }
                let _ = write!(out, " & 0x{n:08x}");
                Ok(Kind::Mark)
            }
            b => Err(format!("binary operation {b:?}")),
        },
        e => Err(format!("expression {e:?}")),
    }
}

fn value_text(out: &mut String, kind: Kind, v: &Expression<'static>) -> Result<(), String> {
    if let Expression::String(s) = v {
        if s.starts_with('@') {
            out.push_str(s);
            return Ok(());
        }
    }
    match (kind, v) {
        (Kind::Ifname, Expression::String(s)) => out.push_str(&quoted(s)),
        (Kind::Nfproto, Expression::String(s)) if s == "ipv4" || s == "ipv6" => out.push_str(s),
        (Kind::Mark, Expression::Number(n)) => {
            let _ = write!(out, "0x{n:08x}");
        }
        (Kind::CtState, Expression::String(s)) => out.push_str(&ct_states(&[s.as_ref()])?),
        (Kind::CtState, Expression::List(items)) => {
            let names = items
                .iter()
                .map(|i| match i {
                    Expression::String(s) => Ok(s.as_ref()),
                    e => Err(format!("ct state {e:?}")),
                })
                .collect::<Result<Vec<&str>, String>>()?;
            out.push_str(&ct_states(&names)?);
        }
        (Kind::Addr | Kind::Port, Expression::Named(NamedExpression::Set(items))) => {
            let ivs = items
                .iter()
                .map(|i| match i {
                    SetItem::Element(e) => interval(kind, e),
                    i => Err(format!("set item {i:?}")),
                })
                .collect::<Result<Vec<Iv>, String>>()?;
            braced(out, &intervals_text(ivs));
        }
        // A range as written, also a one-port one (`keep_port_negations_apart`).
        (Kind::Port, Expression::Range(r)) => match &r.range {
            [Expression::Number(a), Expression::Number(b)] if a <= b => {
                let _ = write!(out, "{a}-{b}");
            }
            _ => return Err(format!("{v:?} as ports")),
        },
        (Kind::Addr | Kind::Port, e) => {
            let iv = interval(kind, e)?;
            out.push_str(&iv_text(&iv));
        }
        (_, Expression::Named(NamedExpression::Set(items))) => {
            let mut nums = items
                .iter()
                .map(|i| match i {
                    SetItem::Element(Expression::Number(n)) => Ok(*n),
                    i => Err(format!("set item {i:?}")),
                })
                .collect::<Result<Vec<u32>, String>>()?;
            nums.sort_unstable();
            nums.dedup();
            let names: Vec<String> = nums.iter().map(|n| symbol(kind, *n)).collect::<Result<_, _>>()?;
            braced(out, &names);
        }
        (_, Expression::Number(n)) => out.push_str(&symbol(kind, *n)?),
        (k, e) => return Err(format!("{e:?} as {k:?}")),
    }
    Ok(())
}

/// An anonymous set's elements; nft makes a one-element set (as `{ 20-300 }` is, or
/// `{ 20-300, 80 }` once merged) the plain value.
fn braced(out: &mut String, items: &[String]) {
    if let [one] = items {
        out.push_str(one);
    } else {
        out.push_str("{ ");
        out.push_str(&items.join(", "));
        out.push_str(" }");
    }
}

/// A number as nft names it for `kind`.
fn symbol(kind: Kind, n: u32) -> Result<String, String> {
    let table: &[(u32, &str)] = match kind {
        Kind::L4proto => PROTOCOLS,
        Kind::IcmpType => ICMP_TYPES,
        Kind::IcmpCode => ICMP_CODES,
        Kind::Icmp6Type => ICMP6_TYPES,
        Kind::Icmp6Code => ICMP6_CODES,
        Kind::Port => &[],
        k => return Err(format!("the number {n} as {k:?}")),
    };
    Ok(table
        .iter()
        .find(|(v, _)| *v == n)
        .map_or_else(|| n.to_string(), |(_, s)| (*s).to_string()))
}

/// conntrack states in nft's order (their bit order), comma-separated.
fn ct_states(names: &[&str]) -> Result<String, String> {
    const ORDER: [&str; 5] = ["invalid", "established", "related", "new", "untracked"];
    if let Some(bad) = names.iter().find(|n| !ORDER.contains(n)) {
        return Err(format!("ct state {bad}"));
    }
    Ok(ORDER
        .iter()
        .filter(|s| names.contains(s))
        .copied()
        .collect::<Vec<_>>()
        .join(","))
}

/// A closed interval of addresses (of one family) or ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Iv {
    /// 4, 6, or 0 for ports.
    fam: u8,
    lo: u128,
    hi: u128,
    /// Written as an interval (a prefix or range), which makes an anonymous set one
    /// that merges.
    ranged: bool,
}

fn interval(kind: Kind, e: &Expression<'static>) -> Result<Iv, String> {
    let bad = || format!("{e:?} as {kind:?}");
    match (kind, e) {
        (Kind::Port, Expression::Number(n)) => Ok(Iv {
            fam: 0,
            lo: u128::from(*n),
            hi: u128::from(*n),
            ranged: false,
        }),
        (Kind::Port, Expression::Range(r)) => match &r.range {
            [Expression::Number(a), Expression::Number(b)] if a <= b => Ok(Iv {
                fam: 0,
                lo: u128::from(*a),
                hi: u128::from(*b),
                ranged: true,
            }),
            _ => Err(bad()),
        },
        (Kind::Addr, Expression::Range(r)) => {
            let (a, b) = (interval(kind, &r.range[0])?, interval(kind, &r.range[1])?);
            if a.fam != b.fam || a.lo > b.hi {
                return Err(bad());
            }
            Ok(Iv {
                fam: a.fam,
                lo: a.lo,
                hi: b.hi,
                ranged: true,
            })
        }
        (Kind::Addr, Expression::String(s)) => {
            let ip: IpAddr = s.parse().map_err(|_| bad())?;
            let (fam, v) = addr_bits(ip);
            Ok(Iv {
                fam,
                lo: v,
                hi: v,
                ranged: false,
            })
        }
        (Kind::Addr, Expression::Named(NamedExpression::Prefix(p))) => {
            let Expression::String(s) = &*p.addr else {
                return Err(bad());
            };
            let ip: IpAddr = s.parse().map_err(|_| bad())?;
            let (fam, v) = addr_bits(ip);
            let width = if fam == 4 { 32 } else { 128 };
            if p.len > width {
                return Err(bad());
            }
            let host = if p.len == 0 {
                u128::MAX >> (128 - width)
            } else {
                (1u128 << (width - p.len)) - 1
            };
            Ok(Iv {
                fam,
                lo: v & !host,
                hi: (v & !host) | host,
                ranged: true,
            })
        }
        _ => Err(bad()),
    }
}

fn addr_bits(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(a) => (4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (6, u128::from(a)),
    }
}

/// Ports or addresses as one value, or an anonymous set, in the form nft stores them
/// (sorted; intervals merged): the renderer builds its sets so, so that a table loaded
/// as JSON and the same table loaded as text are the same kernel rules (nft would
/// merge `{ 20-300, 80 }` in a text load into `{ 20-300 }` and then list `20-300`).
pub(super) fn canonical_values(ports: bool, items: Vec<E>) -> E {
    let kind = if ports { Kind::Port } else { Kind::Addr };
    let Ok(ivs) = items
        .iter()
        .map(|e| interval(kind, e))
        .collect::<Result<Vec<Iv>, String>>()
    else {
        // Not values the printer knows: left as built (printing will say so).
        return one_or_set(items);
    };
    one_or_set(merge(ivs).iter().map(iv_expr).collect())
}

fn iv_expr(iv: &Iv) -> E {
    let one = |v: u128| match iv.fam {
        4 => st(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX)).to_string()),
        6 => st(Ipv6Addr::from(v).to_string()),
        _ => num(u32::try_from(v).unwrap_or(u32::MAX)),
    };
    if iv.lo == iv.hi {
        return one(iv.lo);
    }
    if let Some(len) = prefix_len(iv) {
        return Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
            addr: Box::new(one(iv.lo)),
            len,
        }));
    }
    Expression::Range(Box::new(nftables::expr::Range {
        range: [one(iv.lo), one(iv.hi)],
    }))
}

/// The prefix length when an address interval is exactly one prefix.
fn prefix_len(iv: &Iv) -> Option<u32> {
    if iv.fam == 0 {
        return None;
    }
    let size = iv.hi - iv.lo;
    let width: u32 = if iv.fam == 4 { 32 } else { 128 };
    if !size.checked_add(1).is_none_or(u128::is_power_of_two) {
        return None;
    }
    let bits = if size == u128::MAX {
        128
    } else {
        (size + 1).trailing_zeros()
    };
    (iv.lo & size == 0 && bits <= width).then(|| width - bits)
}

/// Sorted, and merged when any is an interval (nft makes such a set an interval set,
/// which merges what overlaps or touches).
fn merge(mut ivs: Vec<Iv>) -> Vec<Iv> {
    ivs.sort();
    ivs.dedup();
    if ivs.iter().any(|i| i.ranged) {
        let mut merged: Vec<Iv> = Vec::with_capacity(ivs.len());
        for iv in ivs {
            match merged.last_mut() {
                Some(last) if last.fam == iv.fam && iv.lo <= last.hi.saturating_add(1) => {
                    last.hi = last.hi.max(iv.hi);
                    last.ranged = true;
                }
                _ => merged.push(iv),
            }
        }
        ivs = merged;
    }
    ivs
}

/// An anonymous set's elements as nft lists them.
fn intervals_text(ivs: Vec<Iv>) -> Vec<String> {
    merge(ivs).iter().map(iv_text).collect()
}

fn iv_text(iv: &Iv) -> String {
    let one = |v: u128| match iv.fam {
        4 => Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX)).to_string(),
        6 => Ipv6Addr::from(v).to_string(),
        _ => v.to_string(),
    };
    if iv.lo == iv.hi {
        return one(iv.lo);
    }
    // A range that is exactly a prefix prints as the prefix.
    if let Some(len) = prefix_len(iv) {
        return format!("{}/{len}", one(iv.lo));
    }
    format!("{}-{}", one(iv.lo), one(iv.hi))
}

pub(super) fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// A listing of our table (ours or the kernel's) with what two equal tables may
/// differ in taken out: counter values, the order of a set's elements (nft prints hash
/// sets in the kernel's hash order) and the order of sets, maps and chains (the order
/// they were made in, which deltas change). Rules keep their order inside a chain.
pub fn normalize_listing(text: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut head = String::new();
    let mut cur: Option<String> = None;
    let mut elems: Option<Vec<String>> = None;
    for line in text.lines() {
        if let Some(es) = elems.as_mut() {
            let body = line.trim_start();
            let done = body.ends_with(" }");
            let body = body.strip_suffix(" }").unwrap_or(body);
            es.extend(body.split(", ").map(|e| e.trim_end_matches(',').to_string()));
            if done {
                let mut es = elems.take().unwrap_or_default();
                es.sort();
                if let Some(c) = cur.as_mut() {
                    let _ = writeln!(c, "\t\telements = {{ {} }}", es.join(", "));
                }
            }
            continue;
        }
        if let Some(c) = cur.as_mut() {
            if line == "\t}" {
                c.push_str(line);
                blocks.push(std::mem::take(c));
                cur = None;
            } else if let Some(rest) = line.strip_prefix("\t\telements = { ") {
                elems = Some(Vec::new());
                let done = rest.ends_with(" }");
                let body = rest.strip_suffix(" }").unwrap_or(rest);
                if let Some(es) = elems.as_mut() {
                    es.extend(body.split(", ").map(|e| e.trim_end_matches(',').to_string()));
                }
                if done {
                    let mut es = elems.take().unwrap_or_default();
                    es.sort();
                    let _ = writeln!(c, "\t\telements = {{ {} }}", es.join(", "));
                }
            } else {
                c.push_str(&zero_counters(line));
                c.push('\n');
            }
        } else if line.starts_with("\tset ") || line.starts_with("\tmap ") || line.starts_with("\tchain ") {
            cur = Some(format!("{line}\n"));
        } else if !line.is_empty() && line != "}" {
            head.push_str(line);
            head.push('\n');
        }
    }
    if let Some(c) = cur {
        // Unterminated: keep it, so it cannot compare equal to a whole table.
        blocks.push(c);
    }
    blocks.sort();
    let mut out = head;
    for b in blocks {
        out.push_str(&b);
        out.push('\n');
    }
    out
}

fn zero_counters(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("counter packets ") {
        out.push_str(&rest[..at]);
        out.push_str("counter packets 0 bytes 0");
        let after = &rest[at + "counter packets ".len()..];
        // Skip "<n> bytes <m>".
        let mut words = after.splitn(4, ' ');
        let (n, b, m) = (words.next(), words.next(), words.next());
        let ok = n.is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
            && b == Some("bytes")
            && m.is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            // Not a counter after all: keep the text as it was.
            out.truncate(out.len() - "counter packets 0 bytes 0".len());
            out.push_str("counter packets ");
            rest = after;
            continue;
        }
        let skip = n.map_or(0, str::len) + " bytes ".len() + m.map_or(0, str::len);
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// Protocol names nft prints (it asks getprotobynumber, so these are Debian's
/// /etc/protocols, netbase 6.4); a number not here prints as the number.
const PROTOCOLS: &[(u32, &str)] = &[
    (0, "ip"),
    (1, "icmp"),
    (2, "igmp"),
    (3, "ggp"),
    (4, "ipencap"),
    (5, "st"),
    (6, "tcp"),
    (8, "egp"),
    (9, "igp"),
    (12, "pup"),
    (17, "udp"),
    (20, "hmp"),
    (22, "xns-idp"),
    (27, "rdp"),
    (29, "iso-tp4"),
    (33, "dccp"),
    (36, "xtp"),
    (37, "ddp"),
    (38, "idpr-cmtp"),
    (41, "ipv6"),
    (43, "ipv6-route"),
    (44, "ipv6-frag"),
    (45, "idrp"),
    (46, "rsvp"),
    (47, "gre"),
    (50, "esp"),
    (51, "ah"),
    (57, "skip"),
    (58, "ipv6-icmp"),
    (59, "ipv6-nonxt"),
    (60, "ipv6-opts"),
    (73, "rspf"),
    (81, "vmtp"),
    (88, "eigrp"),
    (89, "ospf"),
    (93, "ax.25"),
    (94, "ipip"),
    (97, "etherip"),
    (98, "encap"),
    (103, "pim"),
    (108, "ipcomp"),
    (112, "vrrp"),
    (115, "l2tp"),
    (124, "isis"),
    (132, "sctp"),
    (133, "fc"),
    (135, "mobility-header"),
    (136, "udplite"),
    (137, "mpls-in-ip"),
    (138, "manet"),
    (139, "hip"),
    (140, "shim6"),
    (141, "wesp"),
    (142, "rohc"),
    (143, "ethernet"),
];

const ICMP_TYPES: &[(u32, &str)] = &[
    (0, "echo-reply"),
    (3, "destination-unreachable"),
    (4, "source-quench"),
    (5, "redirect"),
    (8, "echo-request"),
    (9, "router-advertisement"),
    (10, "router-solicitation"),
    (11, "time-exceeded"),
    (12, "parameter-problem"),
    (13, "timestamp-request"),
    (14, "timestamp-reply"),
    (15, "info-request"),
    (16, "info-reply"),
    (17, "address-mask-request"),
    (18, "address-mask-reply"),
];

const ICMP_CODES: &[(u32, &str)] = &[
    (0, "net-unreachable"),
    (1, "host-unreachable"),
    (2, "prot-unreachable"),
    (3, "port-unreachable"),
    (4, "frag-needed"),
    (9, "net-prohibited"),
    (10, "host-prohibited"),
    (13, "admin-prohibited"),
];

const ICMP6_TYPES: &[(u32, &str)] = &[
    (1, "destination-unreachable"),
    (2, "packet-too-big"),
    (3, "time-exceeded"),
    (4, "parameter-problem"),
    (128, "echo-request"),
    (129, "echo-reply"),
    (130, "mld-listener-query"),
    (131, "mld-listener-report"),
    (132, "mld-listener-done"),
    (133, "nd-router-solicit"),
    (134, "nd-router-advert"),
    (135, "nd-neighbor-solicit"),
    (136, "nd-neighbor-advert"),
    (137, "nd-redirect"),
    (138, "router-renumbering"),
    (141, "ind-neighbor-solicit"),
    (142, "ind-neighbor-advert"),
    (143, "mld2-listener-report"),
];

const ICMP6_CODES: &[(u32, &str)] = &[
    (0, "no-route"),
    (1, "admin-prohibited"),
    (3, "addr-unreachable"),
    (4, "port-unreachable"),
    (5, "policy-fail"),
    (6, "reject-route"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_intervals_print_as_nft_does() {
        let p = |lo, hi, ranged| Iv { fam: 0, lo, hi, ranged };
        assert_eq!(
            intervals_text(vec![
                p(100, 200, true),
                p(80, 80, false),
                p(82, 82, false),
                p(81, 81, false),
                p(150, 300, true)
            ]),
            ["80-82", "100-300"]
        );
        assert_eq!(
            intervals_text(vec![p(443, 443, false), p(80, 80, false)]),
            ["80", "443"]
        );
        let a = |s: &str, len| {
            interval(
                Kind::Addr,
                &Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
                    addr: Box::new(Expression::String(s.to_string().into())),
                    len,
                })),
            )
            .unwrap()
        };
        assert_eq!(
            intervals_text(vec![a("10.1.0.0", 16), a("10.0.0.0", 16)]),
            ["10.0.0.0/15"]
        );
        assert_eq!(
            intervals_text(vec![a("10.0.0.0", 16), a("10.1.0.0", 16), a("10.2.0.0", 16)]),
            ["10.0.0.0-10.2.255.255"]
        );
        assert_eq!(intervals_text(vec![a("::", 0)]), ["::/0"]);
        assert_eq!(intervals_text(vec![a("0.0.0.0", 0)]), ["0.0.0.0/0"]);
    }

    #[test]
    fn both_ports_negated_stay_two_comparisons() {
        use nftables::stmt::Operator;
        let mut stmts = vec![
            crate::nft::m(crate::nft::payload("tcp", "sport"), Operator::NEQ, num(2049)),
            crate::nft::m(crate::nft::payload("tcp", "dport"), Operator::NEQ, num(8081)),
        ];
        crate::nft::keep_port_negations_apart(&mut stmts);
        let mut out = String::new();
        rule_text(&mut out, "c", &(stmts.into(), None)).unwrap();
        assert_eq!(out, "tcp sport != 2049 tcp dport != 8081-8081");
        // One negation alone is left as it is.
        let mut one = vec![crate::nft::m(
            crate::nft::payload("tcp", "dport"),
            Operator::NEQ,
            num(8081),
        )];
        crate::nft::keep_port_negations_apart(&mut one);
        let mut out = String::new();
        rule_text(&mut out, "c", &(one.into(), None)).unwrap();
        assert_eq!(out, "tcp dport != 8081");
    }

    #[test]
    fn normalizing_sorts_elements_and_blocks_and_zeroes_counters() {
        let a = "table inet calico {\n\tset b {\n\t\ttype ifname\n\t\telements = { \"y\",\n\t\t\t     \"x\" }\n\t}\n\n\tchain a {\n\t\tcounter packets 3 bytes 180 drop comment \"counter packets x\"\n\t}\n}\n";
        let b = "table inet calico {\n\tchain a {\n\t\tcounter packets 0 bytes 0 drop comment \"counter packets x\"\n\t}\n\n\tset b {\n\t\ttype ifname\n\t\telements = { \"x\",\n\t\t\t     \"y\" }\n\t}\n}\n";
        assert_eq!(normalize_listing(a), normalize_listing(b));
        let c = b.replace("drop", "accept");
        assert_ne!(normalize_listing(a), normalize_listing(&c));
    }
}
