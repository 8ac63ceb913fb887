//! Policy and group rules into nft rules: per-family expansion, ports, selector and
//! group sets, the shared policy/group chains, the evaluation chains and endpoint chains.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use calico_schema::{Action, EntityRule, Rule};
use ipnet::IpNet;
use nftables::expr::{Expression, MetaKey, Range};
use nftables::stmt::{Log, Operator, Statement};

use crate::names::{hashed_name, short_name};
use crate::view::{Endpoint, NodeView};

use super::*;

/// Where a rule is rendered: decides how Allow and Pass report back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Policy,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Dir {
    In,
    Eg,
}

impl Dir {
    pub(super) fn tag(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Eg => "eg",
        }
    }
}

/// nft keeps at most 128 bytes of a rule comment (and 127 of a log prefix).
pub(super) fn clip(mut s: String, max: usize) -> String {
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
pub(super) fn rule_families(rule: &Rule) -> Vec<Option<u8>> {
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

pub(super) fn port_proto(rule: &Rule) -> &'static str {
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

pub(super) fn ports_expr(ports: &[calico_schema::Port]) -> E {
    super::text::canonical_values(
        true,
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

/// nft up to 1.0.9 (Debian 12 has 1.0.6) merges `tcp sport != A` and `tcp dport != B`
/// in one rule into one 4-byte `cmp neq` of both ports, which matches when either
/// differs instead of when both do (fixed upstream in 2024: "Wrong payload merge of
/// rule filter"). A one-port range (`B-B`) compiles to a `range neq`, which nft does
/// not merge: the destination's negated port is written so whenever the source's is a
/// single port too. Same meaning, same packets, on every nft.
pub(super) fn keep_port_negations_apart(stmts: &mut [S]) {
    let single_neq = |s: &S, field: &str| -> Option<(String, u32)> {
        let Statement::Match(m) = s else { return None };
        let (
            Expression::Named(nftables::expr::NamedExpression::Payload(nftables::expr::Payload::PayloadField(pf))),
            Operator::NEQ,
            Expression::Number(n),
        ) = (&m.left, m.op, &m.right)
        else {
            return None;
        };
        (pf.field == field).then(|| (pf.protocol.to_string(), *n))
    };
    let Some((proto, _)) = stmts.iter().find_map(|s| single_neq(s, "sport")) else {
        return;
    };
    for s in stmts.iter_mut() {
        if let Some((p, n)) = single_neq(s, "dport") {
            if p == proto {
                if let Statement::Match(m) = s {
                    m.right = Expression::Range(Box::new(Range {
                        range: [num(n), num(n)],
                    }));
                }
            }
        }
    }
}

/// Evaluation chains already rendered, by direction, the endpoint's shared policy list
/// (by address: endpoints with equal labels share one) and its groups.
pub(super) type EvalCache<'v> = HashMap<(Dir, *const [String], &'v [String]), String>;

pub(super) struct Renderer<'v> {
    pub(super) view: &'v NodeView,
    pub(super) b: NftTable,
    pub(super) evals: EvalCache<'v>,
}

impl<'v> Renderer<'v> {
    /// The named set holding the members of any of `groups`, for family `fam`, and
    /// whether it is empty.
    pub(super) fn group_set(&self, groups: &[String], fam: u8) -> (String, bool) {
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

    pub(super) fn use_group_set(&mut self, groups: &[String], fam: u8) {
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
    pub(super) fn selector_set(&self, text: &str, fam: u8) -> Option<(String, bool)> {
        let sel = self.view.selectors.get(text)?;
        let name = hashed_name(&format!("sel{fam}-"), &sel.canonical);
        let empty = !sel.members.iter().any(|ip| is_v4(ip) == (fam == 4));
        Some((name, empty))
    }

    pub(super) fn use_selector_set(&mut self, text: &str, fam: u8) {
        let Some(sel) = self.view.selectors.get(text) else {
            return;
        };
        let name = hashed_name(&format!("sel{fam}-"), &sel.canonical);
        if !self.b.sets.contains_key(&name) {
            self.b.addr_set(&name, fam, sel.members.iter().copied());
        }
    }

    pub(super) fn side_matches(
        &mut self,
        rule: &Rule,
        e: &EntityRule,
        src: bool,
        fam: Option<u8>,
        out: &mut Vec<S>,
    ) -> bool {
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
                    .map(calico_schema::Cidr::net)
                    .filter(|n| (n.addr().is_ipv4()) == (f == 4))
                    .collect();
                v.sort();
                v.dedup();
                v.iter().map(net_expr).collect()
            };
            let nets = fam_nets(&e.nets);
            if !nets.is_empty() {
                out.push(m(addr(), Operator::EQ, super::text::canonical_values(false, nets)));
            }
            let not_nets = fam_nets(&e.not_nets);
            if !not_nets.is_empty() {
                out.push(m(addr(), Operator::NEQ, super::text::canonical_values(false, not_nets)));
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
    pub(super) fn api_rule(&mut self, chain: &str, owner: Owner, rule: &Rule, comment: &str) {
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
            keep_port_negations_apart(&mut s);
            // Every rule counts what it matched, named by its comment: the agent's
            // per-rule metrics and `explain --counters` read these back.
            s.push(counter());
            match (rule.action, owner) {
                (Action::Allow, _) => {
                    s.push(mark_or(MARK_ACCEPT));
                    s.push(ret());
                }
                (Action::Deny, _) => s.push(drop_()),
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
            self.b.rule(chain, s, Some(Cow::Owned(comment.to_string())));
        }
    }

    /// Renders the chain for one policy or group direction once; returns its name, or
    /// None when it has no rules (jumping to it would change nothing).
    pub(super) fn rules_chain(&mut self, owner: Owner, dir: Dir, name: &str, rules: &[Rule]) -> Option<String> {
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
        let direction = match dir {
            Dir::In => calico_schema::PolicyType::Ingress,
            Dir::Eg => calico_schema::PolicyType::Egress,
        };
        for (i, r) in rules.iter().enumerate() {
            self.api_rule(&chain, owner, r, &rule_comment(what, name, direction, i));
        }
        Some(chain)
    }

    /// The evaluation chain for an ordered policy list and group list, shared by every
    /// endpoint with the same lists.
    pub(super) fn eval_chain(&mut self, dir: Dir, policies: &[String], groups: &[String]) -> String {
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
    pub(super) fn endpoint_eval(&mut self, dir: Dir, policies: &'v Arc<[String]>, groups: &'v [String]) -> String {
        let key = (dir, Arc::as_ptr(policies), groups);
        if let Some(chain) = self.evals.get(&key) {
            return chain.clone();
        }
        let chain = self.eval_chain(dir, policies, groups);
        self.evals.insert(key, chain.clone());
        chain
    }

    pub(super) fn endpoint(&mut self, ep: &'v Endpoint) -> (String, String) {
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
