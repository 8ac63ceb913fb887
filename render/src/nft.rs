//! The nftables artefact: one `table inet calico`, replaced whole in one transaction.
//!
//! Shape (docs/render.md has the long form):
//!
//! ```text
//! forward (hook forward)  ct established/related accept
//!                         unknown <prefix>* interface: counted drop
//!                         iifname vmap { caliX: jump from-caliX, ... }
//!                         oifname vmap { caliX: jump to-caliX, ... }
//! input   (hook input)    the same dispatch, then endpointToHostAction
//! nat-postrouting         masquerade pool -> outside every pool (natOutgoing pools only)
//!
//! from-caliX   ct invalid drop; anti-spoofing; goto eval-eg-<hash>
//! to-caliX     ct invalid drop; goto eval-in-<hash>
//! eval-eg-<h>  clear marks; jump pol-eg-P1; accepted? return; ...; jump grp-eg-G1; ...; counted drop
//! pol-in-P / pol-eg-P / grp-in-G / grp-eg-G   the rules, rendered once, shared
//! ```
//!
//! Policy and group chains are shared, so they cannot end evaluation with `accept` (that
//! would skip the receiver's chain for same-node traffic) nor with `return` alone (that
//! only leaves the shared chain). They report through two packet-mark bits instead:
//! Allow sets [`MARK_ACCEPT`] and returns, Pass sets [`MARK_PASS`] and returns; the
//! `eval-*` chain, which is shared by every endpoint with the same ordered policy and
//! group list, reads the bits. Deny drops on the spot.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use calico_schema::{Action, EndpointToHostAction, EntityRule, Rule};
use ipnet::IpNet;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem,
    Verdict, CT,
};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule as NfRule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{AnonymousCounter, Counter, JumpTarget, Log, Mangle, Match, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::names::{hashed_name, short_name};
use crate::view::{Endpoint, NodeView};

pub const TABLE_NAME: &str = "calico";
/// Mark bit a policy or group chain sets when an Allow rule matched.
pub const MARK_ACCEPT: u32 = 0x1_0000;
/// Mark bit a policy chain sets when a Pass rule matched: skip the remaining policies.
pub const MARK_PASS: u32 = 0x2_0000;
/// Both bits; the rest of the mark belongs to others (Docker, kube-proxy, users).
pub const MARK_MASK: u32 = MARK_ACCEPT | MARK_PASS;

const FAMILY: NfFamily = NfFamily::INet;
/// ICMPv6 the host must accept from workloads whatever endpointToHostAction says:
/// MLD (130-132), router solicitation (133), neighbour solicitation/advertisement
/// (135-136). Without them a v6 workload cannot resolve its gateway.
const ICMPV6_HOST: [u32; 6] = [130, 131, 132, 133, 135, 136];

type E = Expression<'static>;
type S = Statement<'static>;
/// A rule's statements and its comment. Statement lists that are the same in every
/// endpoint's chains are borrowed from statics instead of being built once per endpoint:
/// they serialize the same and cost nothing per endpoint.
type NftRule = (Cow<'static, [S]>, Option<Cow<'static, str>>);

/// A string expression: borrowed when static, owned otherwise.
fn st(s: impl Into<Cow<'static, str>>) -> E {
    Expression::String(s.into())
}

fn num(n: u32) -> E {
    Expression::Number(n)
}

fn meta(key: MetaKey) -> E {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> E {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed(protocol),
        field: Cow::Borrowed(field),
    })))
}

fn ct(key: &'static str) -> E {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

fn anon_set(items: Vec<E>) -> E {
    Expression::Named(NamedExpression::Set(items.into_iter().map(SetItem::Element).collect()))
}

/// One value as itself, several as an anonymous set.
fn one_or_set(mut items: Vec<E>) -> E {
    if items.len() == 1 {
        items.remove(0)
    } else {
        anon_set(items)
    }
}

fn m(left: E, op: Operator, right: E) -> S {
    Statement::Match(Match { left, right, op })
}

fn counter() -> S {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())))
}

fn drop_() -> S {
    Statement::Drop(None)
}

fn accept() -> S {
    Statement::Accept(None)
}

fn ret() -> S {
    Statement::Return(None)
}

fn jump(target: String) -> S {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(target),
    })
}

fn goto(target: String) -> S {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(target),
    })
}

fn mark_expr() -> E {
    meta(MetaKey::Mark)
}

/// `meta mark & bit != 0` (or `== 0` when `set` is false).
fn mark_test(bit: u32, set: bool) -> S {
    m(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(mark_expr(), num(bit)))),
        if set { Operator::NEQ } else { Operator::EQ },
        num(0),
    )
}

fn mark_or(bit: u32) -> S {
    Statement::Mangle(Mangle {
        key: mark_expr(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![mark_expr(), num(bit)]))),
    })
}

fn mark_clear() -> S {
    Statement::Mangle(Mangle {
        key: mark_expr(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::AND(mark_expr(), num(!MARK_MASK)))),
    })
}

fn ct_state(states: &[&'static str]) -> E {
    if states.len() == 1 {
        st(states[0])
    } else {
        Expression::List(states.iter().map(|s| st(*s)).collect())
    }
}

/// `ct state invalid counter drop`: first in every endpoint chain.
static CT_INVALID_DROP: LazyLock<[S; 3]> =
    LazyLock::new(|| [m(ct("state"), Operator::IN, ct_state(&["invalid"])), counter(), drop_()]);
/// `meta nfproto ipv4 counter drop`: anti-spoofing for an endpoint with no IPv4 address.
static NO_V4_DROP: LazyLock<[S; 3]> = LazyLock::new(|| {
    [
        m(meta(MetaKey::Nfproto), Operator::EQ, st(nfproto(4))),
        counter(),
        drop_(),
    ]
});
/// The same for IPv6.
static NO_V6_DROP: LazyLock<[S; 3]> = LazyLock::new(|| {
    [
        m(meta(MetaKey::Nfproto), Operator::EQ, st(nfproto(6))),
        counter(),
        drop_(),
    ]
});
/// `meta mark & 0x10000 != 0 return`: after each jump of an evaluation chain.
static ACCEPTED_RETURN: LazyLock<[S; 2]> = LazyLock::new(|| [mark_test(MARK_ACCEPT, true), ret()]);
/// The first rule of an evaluation chain.
static MARK_CLEAR: LazyLock<[S; 1]> = LazyLock::new(|| [mark_clear()]);
/// The last rule of an evaluation chain.
static COUNTED_DROP: LazyLock<[S; 2]> = LazyLock::new(|| [counter(), drop_()]);

fn shared(stmts: &'static [S]) -> Cow<'static, [S]> {
    Cow::Borrowed(stmts)
}

fn addr_expr(ip: &IpAddr) -> E {
    st(ip.to_string())
}

fn net_expr(n: &IpNet) -> E {
    if n.prefix_len() == n.max_prefix_len() {
        st(n.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(st(n.network().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

fn is_v4(ip: &IpAddr) -> bool {
    ip.is_ipv4()
}

fn l3(fam: u8) -> &'static str {
    if fam == 4 {
        "ip"
    } else {
        "ip6"
    }
}

fn nfproto(fam: u8) -> &'static str {
    if fam == 4 {
        "ipv4"
    } else {
        "ipv6"
    }
}

#[derive(Debug, Clone)]
enum Elems {
    Addrs(BTreeSet<IpAddr>),
    Nets(BTreeSet<IpNet>),
}

/// Where a rule is rendered: decides how Allow and Pass report back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Policy,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Dir {
    In,
    Eg,
}

impl Dir {
    fn tag(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Eg => "eg",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Dir::In => "ingress",
            Dir::Eg => "egress",
        }
    }
}

struct BaseChain {
    name: &'static str,
    chain_type: NfChainType,
    hook: NfHook,
    prio: i32,
}

#[derive(Default)]
struct Builder {
    sets: BTreeMap<String, (SetType, Elems)>,
    /// Base chains in declaration order.
    base: Vec<BaseChain>,
    /// Regular chains and their rules (with optional comment); BTreeMap for stable order.
    chains: BTreeMap<String, Vec<NftRule>>,
    base_rules: BTreeMap<&'static str, Vec<NftRule>>,
}

impl Builder {
    fn rule(&mut self, chain: &str, stmts: impl Into<Cow<'static, [S]>>, comment: Option<Cow<'static, str>>) {
        let r = (stmts.into(), comment);
        if let Some(rules) = self.base_rules.get_mut(chain) {
            rules.push(r);
        } else if let Some(rules) = self.chains.get_mut(chain) {
            rules.push(r);
        } else {
            self.chains.insert(chain.to_string(), vec![r]);
        }
    }

    /// A regular chain and its rules at once (appended, should it exist already).
    fn chain_with(&mut self, name: String, mut rules: Vec<NftRule>) {
        match self.chains.get_mut(&name) {
            Some(existing) => existing.append(&mut rules),
            None => {
                self.chains.insert(name, rules);
            }
        }
    }

    fn chain(&mut self, name: &str) {
        if !self.chains.contains_key(name) {
            self.chains.insert(name.to_string(), Vec::new());
        }
    }

    fn base_chain(&mut self, name: &'static str, chain_type: NfChainType, hook: NfHook, prio: i32) {
        self.base.push(BaseChain {
            name,
            chain_type,
            hook,
            prio,
        });
        self.base_rules.insert(name, Vec::new());
    }

    fn addr_set(&mut self, name: &str, fam: u8, members: impl Iterator<Item = IpAddr>) {
        let ty = if fam == 4 { SetType::Ipv4Addr } else { SetType::Ipv6Addr };
        let elems = members.filter(|ip| is_v4(ip) == (fam == 4)).collect();
        self.sets.insert(name.to_string(), (ty, Elems::Addrs(elems)));
    }

    fn net_set(&mut self, name: &str, fam: u8, nets: impl Iterator<Item = IpNet>) {
        let ty = if fam == 4 { SetType::Ipv4Addr } else { SetType::Ipv6Addr };
        let elems = nets.filter(|n| matches!(n, IpNet::V4(_)) == (fam == 4)).collect();
        self.sets.insert(name.to_string(), (ty, Elems::Nets(elems)));
    }

    fn finish(self) -> Nftables<'static> {
        let table = || Table {
            family: FAMILY,
            name: Cow::Borrowed(TABLE_NAME),
            handle: None,
        };
        let add = |o: NfListObject<'static>| NfObject::CmdObject(NfCmd::Add(o));
        let rule_count =
            self.base_rules.values().map(Vec::len).sum::<usize>() + self.chains.values().map(Vec::len).sum::<usize>();
        let mut out = Vec::with_capacity(3 + self.sets.len() + self.base.len() + self.chains.len() + rule_count);
        out.push(add(NfListObject::Table(table())));
        out.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))));
        out.push(add(NfListObject::Table(table())));
        for (name, (ty, elems)) in self.sets {
            let (items, interval): (Vec<E>, bool) = match elems {
                Elems::Addrs(a) => (a.iter().map(addr_expr).collect(), false),
                Elems::Nets(n) => (n.iter().map(net_expr).collect(), true),
            };
            out.push(add(NfListObject::Set(Box::new(Set {
                family: FAMILY,
                table: Cow::Borrowed(TABLE_NAME),
                name: Cow::Owned(name),
                handle: None,
                set_type: SetTypeValue::Single(ty),
                policy: None,
                // One flag at most: the crate keeps flags in a HashSet, whose order
                // would otherwise make the output differ from run to run.
                flags: interval.then(|| [SetFlag::Interval].into_iter().collect()),
                elem: if items.is_empty() {
                    None
                } else {
                    Some(Cow::Owned(items))
                },
                timeout: None,
                gc_interval: None,
                size: None,
                comment: None,
            }))));
        }
        let chain = |name: String| Chain {
            family: FAMILY,
            table: Cow::Borrowed(TABLE_NAME),
            name: Cow::Owned(name),
            ..Default::default()
        };
        for b in &self.base {
            out.push(add(NfListObject::Chain(Chain {
                _type: Some(b.chain_type),
                hook: Some(b.hook),
                prio: Some(b.prio),
                policy: Some(NfChainPolicy::Accept),
                ..chain(b.name.to_string())
            })));
        }
        for name in self.chains.keys() {
            out.push(add(NfListObject::Chain(chain(name.clone()))));
        }
        let rule = |chain: Cow<'static, str>, (expr, comment): NftRule| {
            add(NfListObject::Rule(NfRule {
                family: FAMILY,
                table: Cow::Borrowed(TABLE_NAME),
                chain,
                expr,
                handle: None,
                index: None,
                comment,
            }))
        };
        let mut base_rules = self.base_rules;
        for b in &self.base {
            for r in base_rules.remove(b.name).unwrap_or_default() {
                out.push(rule(Cow::Borrowed(b.name), r));
            }
        }
        for (name, rules) in self.chains {
            // The chain's name is cloned for all its rules but the last, which takes it.
            let mut name = Some(name);
            let last = rules.len().saturating_sub(1);
            for (i, r) in rules.into_iter().enumerate() {
                let chain = if i == last {
                    name.take().unwrap_or_default()
                } else {
                    name.clone().unwrap_or_default()
                };
                out.push(rule(Cow::Owned(chain), r));
            }
        }
        Nftables {
            objects: Cow::Owned(out),
        }
    }
}

/// nft keeps at most 128 bytes of a rule comment (and 127 of a log prefix).
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The families a rule must be rendered for. `None`: one family-agnostic rule.
fn rule_families(rule: &Rule) -> Vec<Option<u8>> {
    let mut fams = vec![4u8, 6];
    if let Some(v) = rule.ip_version {
        let v = u8::from(v);
        fams.retain(|f| *f == v);
    }
    match rule.protocol.map(|p| p.number()) {
        Some(1) => fams.retain(|f| *f == 4),
        Some(58) => fams.retain(|f| *f == 6),
        _ => {}
    }
    let sides = [&rule.source, &rule.destination];
    for e in sides {
        // A nets list with no network of a family can never match that family.
        if !e.nets.is_empty() {
            fams.retain(|f| e.nets.iter().any(|n| n.version() == *f));
        }
    }
    let by_address = sides.iter().any(|e| {
        !e.groups.is_empty()
            || e.selector.is_some()
            || e.not_selector.is_some()
            || !e.nets.is_empty()
            || !e.not_nets.is_empty()
    });
    if !by_address && fams.len() == 2 {
        vec![None]
    } else {
        fams.into_iter().map(Some).collect()
    }
}

fn port_proto(rule: &Rule) -> &'static str {
    match rule.protocol.map(|p| p.number()) {
        Some(6) => "tcp",
        Some(17) => "udp",
        Some(132) => "sctp",
        Some(136) => "udplite",
        // Validation requires a port protocol; unvalidated input still gets a rule that
        // means "this port of whatever transport" rather than none.
        _ => "th",
    }
}

fn ports_expr(ports: &[calico_schema::Port]) -> E {
    one_or_set(
        ports
            .iter()
            .map(|p| {
                if p.first() == p.last() {
                    num(u32::from(p.first()))
                } else {
                    Expression::Range(Box::new(Range {
                        range: [num(u32::from(p.first())), num(u32::from(p.last()))],
                    }))
                }
            })
            .collect(),
    )
}

/// Evaluation chains already rendered, by direction, the endpoint's shared policy list
/// (by address: endpoints with equal labels share one) and its groups.
type EvalCache<'v> = HashMap<(Dir, *const [String], &'v [String]), String>;

struct Renderer<'v> {
    view: &'v NodeView,
    b: Builder,
    evals: EvalCache<'v>,
}

impl<'v> Renderer<'v> {
    /// The named set holding the members of any of `groups`, for family `fam`, and
    /// whether it is empty.
    fn group_set(&self, groups: &[String], fam: u8) -> (String, bool) {
        let mut uniq: Vec<&String> = groups.iter().collect();
        uniq.sort();
        uniq.dedup();
        let name = if uniq.len() == 1 {
            short_name(&format!("grp{fam}-"), uniq[0])
        } else {
            let key = uniq.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
            hashed_name(&format!("grps{fam}-"), &key)
        };
        let members: BTreeSet<IpAddr> = uniq
            .iter()
            .filter_map(|g| self.view.group_members.get(*g))
            .flatten()
            .filter(|ip| is_v4(ip) == (fam == 4))
            .copied()
            .collect();
        (name, members.is_empty())
    }

    fn use_group_set(&mut self, groups: &[String], fam: u8) {
        let (name, _) = self.group_set(groups, fam);
        if !self.b.sets.contains_key(&name) {
            let members: Vec<IpAddr> = groups
                .iter()
                .filter_map(|g| self.view.group_members.get(g))
                .flatten()
                .copied()
                .collect();
            self.b.addr_set(&name, fam, members.into_iter());
        }
    }

    /// The named set of a selector's members and whether it is empty, or None when the
    /// selector did not parse.
    fn selector_set(&self, text: &str, fam: u8) -> Option<(String, bool)> {
        let sel = self.view.selectors.get(text)?;
        let name = hashed_name(&format!("sel{fam}-"), &sel.canonical);
        let empty = !sel.members.iter().any(|ip| is_v4(ip) == (fam == 4));
        Some((name, empty))
    }

    fn use_selector_set(&mut self, text: &str, fam: u8) {
        let Some(sel) = self.view.selectors.get(text) else {
            return;
        };
        let name = hashed_name(&format!("sel{fam}-"), &sel.canonical);
        if !self.b.sets.contains_key(&name) {
            self.b.addr_set(&name, fam, sel.members.iter().copied());
        }
    }

    fn side_matches(&mut self, rule: &Rule, e: &EntityRule, src: bool, fam: Option<u8>, out: &mut Vec<S>) -> bool {
        let (addr_field, port_field) = if src { ("saddr", "sport") } else { ("daddr", "dport") };
        if let Some(f) = fam {
            let addr = || payload(l3(f), addr_field);
            // A positive match on an empty set can never hold: the rule is left out
            // rather than rendered against an empty set.
            if !e.groups.is_empty() {
                let (set, empty) = self.group_set(&e.groups, f);
                if empty {
                    return false;
                }
                self.use_group_set(&e.groups, f);
                out.push(m(addr(), Operator::EQ, st(format!("@{set}"))));
            }
            if let Some(s) = &e.selector {
                let Some((set, empty)) = self.selector_set(s, f) else {
                    return false;
                };
                if empty {
                    return false;
                }
                self.use_selector_set(s, f);
                out.push(m(addr(), Operator::EQ, st(format!("@{set}"))));
            }
            if let Some(s) = &e.not_selector {
                let Some((set, empty)) = self.selector_set(s, f) else {
                    return false;
                };
                if !empty {
                    self.use_selector_set(s, f);
                    out.push(m(addr(), Operator::NEQ, st(format!("@{set}"))));
                }
            }
            let fam_nets = |nets: &[calico_schema::Cidr]| -> Vec<E> {
                let mut v: Vec<IpNet> = nets
                    .iter()
                    .map(|c| c.net())
                    .filter(|n| (n.addr().is_ipv4()) == (f == 4))
                    .collect();
                v.sort();
                v.dedup();
                v.iter().map(net_expr).collect()
            };
            let nets = fam_nets(&e.nets);
            if !nets.is_empty() {
                out.push(m(addr(), Operator::EQ, one_or_set(nets)));
            }
            let not_nets = fam_nets(&e.not_nets);
            if !not_nets.is_empty() {
                out.push(m(addr(), Operator::NEQ, one_or_set(not_nets)));
            }
        }
        let proto = port_proto(rule);
        if !e.ports.is_empty() {
            out.push(m(payload(proto, port_field), Operator::EQ, ports_expr(&e.ports)));
        }
        if !e.not_ports.is_empty() {
            out.push(m(payload(proto, port_field), Operator::NEQ, ports_expr(&e.not_ports)));
        }
        true
    }

    /// The nft rules for one API rule in chain `chain`.
    fn api_rule(&mut self, chain: &str, owner: Owner, rule: &Rule, comment: &str) {
        for fam in rule_families(rule) {
            let mut s = Vec::new();
            if let Some(f) = fam {
                s.push(m(meta(MetaKey::Nfproto), Operator::EQ, st(nfproto(f))));
            }
            if let Some(p) = rule.protocol {
                s.push(m(meta(MetaKey::L4proto), Operator::EQ, num(u32::from(p.number()))));
            }
            if let Some(p) = rule.not_protocol {
                s.push(m(meta(MetaKey::L4proto), Operator::NEQ, num(u32::from(p.number()))));
            }
            let has_ports = [&rule.source, &rule.destination]
                .iter()
                .any(|e| !e.ports.is_empty() || !e.not_ports.is_empty());
            if has_ports && rule.protocol.is_none_or(|p| !p.has_ports()) {
                let any_port_proto = anon_set([6, 17, 132, 136].into_iter().map(num).collect());
                s.push(m(meta(MetaKey::L4proto), Operator::EQ, any_port_proto));
            }
            if let (Some(icmp), Some(p)) = (rule.icmp, rule.protocol) {
                let hdr = if p.number() == 58 { "icmpv6" } else { "icmp" };
                if let Some(t) = icmp.icmp_type {
                    s.push(m(payload(hdr, "type"), Operator::EQ, num(u32::from(t))));
                }
                if let Some(c) = icmp.code {
                    s.push(m(payload(hdr, "code"), Operator::EQ, num(u32::from(c))));
                }
            }
            if !self.side_matches(rule, &rule.source, true, fam, &mut s)
                || !self.side_matches(rule, &rule.destination, false, fam, &mut s)
            {
                // Never matches in this family (a selector that does not parse, or an
                // empty member set).
                continue;
            }
            match (rule.action, owner) {
                (Action::Allow, _) => {
                    s.push(mark_or(MARK_ACCEPT));
                    s.push(ret());
                }
                (Action::Deny, _) => {
                    s.push(counter());
                    s.push(drop_());
                }
                (Action::Pass, Owner::Policy) => {
                    s.push(mark_or(MARK_PASS));
                    s.push(ret());
                }
                // In a group, Pass ends this group only: the next group decides.
                (Action::Pass, Owner::Group) => s.push(ret()),
                (Action::Log, _) => {
                    s.push(Statement::Log(Some(Log {
                        prefix: Some(Cow::Owned(clip(format!("calico {comment}: "), 127))),
                        ..Log::new(None)
                    })));
                }
            }
            self.b.rule(chain, s, Some(Cow::Owned(clip(comment.to_string(), 128))));
        }
    }

    /// Renders the chain for one policy or group direction once; returns its name, or
    /// None when it has no rules (jumping to it would change nothing).
    fn rules_chain(&mut self, owner: Owner, dir: Dir, name: &str, rules: &[Rule]) -> Option<String> {
        if rules.is_empty() {
            return None;
        }
        let kind = match owner {
            Owner::Policy => "pol",
            Owner::Group => "grp",
        };
        let chain = short_name(&format!("{kind}-{}-", dir.tag()), name);
        if self.b.chains.contains_key(&chain) {
            return Some(chain);
        }
        self.b.chain(&chain);
        let what = match owner {
            Owner::Policy => "Policy",
            Owner::Group => "Group",
        };
        for (i, r) in rules.iter().enumerate() {
            self.api_rule(&chain, owner, r, &format!("{what}/{name} {}[{i}]", dir.word()));
        }
        Some(chain)
    }

    /// The evaluation chain for an ordered policy list and group list, shared by every
    /// endpoint with the same lists.
    fn eval_chain(&mut self, dir: Dir, policies: &[String], groups: &[String]) -> String {
        let key = format!("{}|{}|{}", dir.tag(), policies.join(","), groups.join(","));
        let chain = hashed_name(&format!("eval-{}-", dir.tag()), &key);
        if self.b.chains.contains_key(&chain) {
            return chain;
        }
        let mut rules: Vec<NftRule> = vec![(shared(&*MARK_CLEAR), None)];
        let mut first = true;
        for p in policies {
            let Some(pol) = self.view.policies.get(p) else { continue };
            let prules = match dir {
                Dir::In => &pol.spec.ingress,
                Dir::Eg => &pol.spec.egress,
            };
            let Some(pc) = self.rules_chain(Owner::Policy, dir, p, prules) else {
                continue;
            };
            let mut j = Vec::new();
            if !first {
                j.push(mark_test(MARK_PASS, false));
            }
            j.push(jump(pc));
            rules.push((j.into(), Some(format!("Policy/{p}").into())));
            rules.push((shared(&*ACCEPTED_RETURN), None));
            first = false;
        }
        for g in groups {
            let Some(grp) = self.view.groups.get(g) else { continue };
            let grules = match dir {
                Dir::In => grp.ingress_rules(),
                Dir::Eg => grp.egress_rules(),
            };
            let Some(gc) = self.rules_chain(Owner::Group, dir, g, &grules) else {
                continue;
            };
            rules.push((vec![jump(gc)].into(), Some(format!("Group/{g}").into())));
            rules.push((shared(&*ACCEPTED_RETURN), None));
        }
        rules.push((shared(&*COUNTED_DROP), Some("no policy or group allowed it".into())));
        self.b.chain_with(chain.clone(), rules);
        chain
    }

    /// [`Self::eval_chain`] for an endpoint's lists, computed once per distinct pair.
    fn endpoint_eval(&mut self, dir: Dir, policies: &'v Arc<[String]>, groups: &'v [String]) -> String {
        let key = (dir, Arc::as_ptr(policies), groups);
        if let Some(chain) = self.evals.get(&key) {
            return chain.clone();
        }
        let chain = self.eval_chain(dir, policies, groups);
        self.evals.insert(key, chain.clone());
        chain
    }

    fn endpoint(&mut self, ep: &'v Endpoint) -> (String, String) {
        let eg = self.endpoint_eval(Dir::Eg, &ep.egress_policies, &ep.groups);
        let ing = self.endpoint_eval(Dir::In, &ep.ingress_policies, &ep.groups);
        let from = format!("from-{}", ep.iface);
        let to = format!("to-{}", ep.iface);
        let container: Cow<'static, str> = format!("Container/{}", ep.name).into();
        let mut from_rules: Vec<NftRule> = Vec::with_capacity(4);
        from_rules.push((shared(&*CT_INVALID_DROP), None));
        for fam in [4u8, 6] {
            let own: Vec<E> = ep
                .ips
                .iter()
                .filter(|ip| is_v4(ip) == (fam == 4))
                .map(addr_expr)
                .collect();
            let stmts = if own.is_empty() {
                shared(if fam == 4 { &*NO_V4_DROP } else { &*NO_V6_DROP })
            } else {
                vec![
                    m(payload(l3(fam), "saddr"), Operator::NEQ, one_or_set(own)),
                    counter(),
                    drop_(),
                ]
                .into()
            };
            let comment = if fam == 4 {
                "anti-spoofing ipv4"
            } else {
                "anti-spoofing ipv6"
            };
            from_rules.push((stmts, Some(comment.into())));
        }
        from_rules.push((vec![goto(eg)].into(), Some(container.clone())));
        let to_rules: Vec<NftRule> = vec![
            (shared(&*CT_INVALID_DROP), None),
            (vec![goto(ing)].into(), Some(container)),
        ];
        self.b.chain_with(from.clone(), from_rules);
        self.b.chain_with(to.clone(), to_rules);
        (from, to)
    }
}

/// Renders `view` into the batch that replaces `table inet calico` whole: `add table;
/// delete table; add table` (so it works whether or not the table exists, and the
/// kernel applies it in one transaction), then sets, chains and rules.
pub fn render_nft(view: &NodeView) -> Nftables<'static> {
    let mut r = Renderer {
        view,
        b: Builder::default(),
        evals: HashMap::new(),
    };
    r.b.base_chain("forward", NfChainType::Filter, NfHook::Forward, 0);
    r.b.base_chain("input", NfChainType::Filter, NfHook::Input, 0);
    let nat_pools: Vec<IpNet> = view
        .pools
        .iter()
        .filter(|p| p.spec.nat_outgoing)
        .map(|p| p.spec.cidr.net())
        .collect();
    if !nat_pools.is_empty() {
        // srcnat priority: after Docker's and the kernel's destination NAT decisions.
        r.b.base_chain("nat-postrouting", NfChainType::NAT, NfHook::Postrouting, 100);
    }

    let mut dispatch: Vec<(&str, String, String)> = Vec::with_capacity(view.endpoints.len());
    for ep in &view.endpoints {
        let (from, to) = r.endpoint(ep);
        dispatch.push((&ep.iface, from, to));
    }

    let wildcard = st(format!("{}*", view.config.interface_prefix()));
    let ifaces = || one_or_set(dispatch.iter().map(|(i, _, _)| st(i.to_string())).collect());
    let vmap = |key: MetaKey, pick: &dyn Fn(&(&str, String, String)) -> Verdict<'static>| {
        Statement::VerdictMap(VerdictMap {
            key: meta(key),
            data: Expression::Named(NamedExpression::Set(
                dispatch
                    .iter()
                    .map(|d| SetItem::Mapping(st(d.0.to_string()), Expression::Verdict(pick(d))))
                    .collect(),
            )),
        })
    };
    let jump_v = |t: &str| {
        Verdict::Jump(JumpTarget {
            target: Cow::Owned(t.to_string()),
        })
    };
    let established = || {
        vec![
            m(ct("state"), Operator::IN, ct_state(&["established", "related"])),
            accept(),
        ]
    };
    // Interfaces with our prefix that we do not know (a workload being torn down, or not
    // yet in the datastore) are ours to police: nothing passes until they are known.
    let unknown = |key: MetaKey| {
        let mut s = vec![m(meta(key), Operator::EQ, wildcard.clone())];
        if !dispatch.is_empty() {
            s.push(m(meta(key), Operator::NEQ, ifaces()));
        }
        s.push(counter());
        s.push(drop_());
        s
    };

    let fwd = "forward";
    r.b.rule(fwd, established(), None);
    r.b.rule(
        fwd,
        unknown(MetaKey::Iifname),
        Some("unknown workload interface".into()),
    );
    r.b.rule(
        fwd,
        unknown(MetaKey::Oifname),
        Some("unknown workload interface".into()),
    );
    if !dispatch.is_empty() {
        r.b.rule(
            fwd,
            vec![vmap(MetaKey::Iifname, &|d| jump_v(&d.1))],
            Some("from workloads".into()),
        );
        r.b.rule(
            fwd,
            vec![vmap(MetaKey::Oifname, &|d| jump_v(&d.2))],
            Some("to workloads".into()),
        );
    }

    let inp = "input";
    r.b.rule(inp, established(), None);
    r.b.rule(
        inp,
        unknown(MetaKey::Iifname),
        Some("unknown workload interface".into()),
    );
    if !dispatch.is_empty() {
        r.b.rule(
            inp,
            vec![
                m(meta(MetaKey::Iifname), Operator::EQ, ifaces()),
                m(meta(MetaKey::L4proto), Operator::EQ, num(58)),
                m(
                    payload("icmpv6", "type"),
                    Operator::EQ,
                    anon_set(ICMPV6_HOST.iter().map(|t| num(*t)).collect()),
                ),
                accept(),
            ],
            Some("IPv6 neighbour discovery and MLD".into()),
        );
        match view.config.endpoint_to_host_action() {
            EndpointToHostAction::Drop => {
                r.b.rule(
                    inp,
                    vec![m(meta(MetaKey::Iifname), Operator::EQ, ifaces()), counter(), drop_()],
                    Some("endpointToHostAction Drop".into()),
                );
            }
            EndpointToHostAction::Accept => {
                r.b.rule(
                    inp,
                    vec![vmap(MetaKey::Iifname, &|d| jump_v(&d.1))],
                    Some("from workloads".into()),
                );
                r.b.rule(
                    inp,
                    vec![m(meta(MetaKey::Iifname), Operator::EQ, ifaces()), accept()],
                    Some("endpointToHostAction Accept".into()),
                );
            }
            EndpointToHostAction::Return => {
                r.b.rule(
                    inp,
                    vec![vmap(MetaKey::Iifname, &|d| jump_v(&d.1))],
                    Some("from workloads; endpointToHostAction Return".into()),
                );
            }
        }
    }

    if !nat_pools.is_empty() {
        let all_pools: Vec<IpNet> = view.pools.iter().map(|p| p.spec.cidr.net()).collect();
        for fam in [4u8, 6] {
            let is_fam = |n: &&IpNet| matches!(n, IpNet::V4(_)) == (fam == 4);
            if !nat_pools.iter().any(|n| is_fam(&n)) {
                continue;
            }
            let nat = format!("pools{fam}-nat");
            let all = format!("pools{fam}-all");
            r.b.net_set(&nat, fam, nat_pools.iter().copied());
            r.b.net_set(&all, fam, all_pools.iter().copied());
            r.b.rule(
                "nat-postrouting",
                vec![
                    m(payload(l3(fam), "saddr"), Operator::EQ, st(format!("@{nat}"))),
                    m(payload(l3(fam), "daddr"), Operator::NEQ, st(format!("@{all}"))),
                    Statement::Masquerade(None),
                ],
                Some("natOutgoing".into()),
            );
        }
    }

    r.b.finish()
}

/// `batch` as compact JSON for `nft -j -f -`, in a buffer of exactly its size.
///
/// `serde_json::to_vec` grows its buffer by doubling, so a large ruleset can hold up to
/// twice its JSON size (32 MiB for the 19 MiB of 10k endpoints). Counting the bytes in a
/// first pass costs one more serialization, which is small next to nft's load time.
/// Writing straight into nft's stdin (`serde_json::to_writer` on a `BufWriter`) needs
/// no buffer at all.
pub fn nft_json_bytes(batch: &Nftables<'_>) -> Vec<u8> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Serializing plain data with string keys cannot fail.
    let _ = serde_json::to_writer(&mut n, batch);
    let mut out = Vec::with_capacity(n.0);
    let _ = serde_json::to_writer(&mut out, batch);
    out
}

/// The artefact as text: pretty JSON, ready for `nft -j -f -`.
pub fn render_nft_json(view: &NodeView) -> String {
    // Serializing plain data with string keys cannot fail.
    serde_json::to_string_pretty(&render_nft(view)).unwrap_or_default()
}
