//! Collects sets, chains and rules, then emits the whole-table batch in a stable order.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule as NfRule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::*;

#[derive(Debug, Clone)]
pub(super) enum Elems {
    Addrs(BTreeSet<IpAddr>),
    Nets(BTreeSet<IpNet>),
}

pub(super) struct BaseChain {
    pub(super) name: &'static str,
    pub(super) chain_type: NfChainType,
    pub(super) hook: NfHook,
    pub(super) prio: i32,
}

#[derive(Default)]
pub(super) struct Builder {
    pub(super) sets: BTreeMap<String, (SetType, Elems)>,
    /// Base chains in declaration order.
    pub(super) base: Vec<BaseChain>,
    /// Regular chains and their rules (with optional comment); BTreeMap for stable order.
    pub(super) chains: BTreeMap<String, Vec<NftRule>>,
    pub(super) base_rules: BTreeMap<&'static str, Vec<NftRule>>,
}

impl Builder {
    pub(super) fn rule(
        &mut self,
        chain: &str,
        stmts: impl Into<Cow<'static, [S]>>,
        comment: Option<Cow<'static, str>>,
    ) {
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
    pub(super) fn chain_with(&mut self, name: String, mut rules: Vec<NftRule>) {
        match self.chains.get_mut(&name) {
            Some(existing) => existing.append(&mut rules),
            None => {
                self.chains.insert(name, rules);
            }
        }
    }

    pub(super) fn chain(&mut self, name: &str) {
        if !self.chains.contains_key(name) {
            self.chains.insert(name.to_string(), Vec::new());
        }
    }

    pub(super) fn base_chain(&mut self, name: &'static str, chain_type: NfChainType, hook: NfHook, prio: i32) {
        self.base.push(BaseChain {
            name,
            chain_type,
            hook,
            prio,
        });
        self.base_rules.insert(name, Vec::new());
    }

    pub(super) fn addr_set(&mut self, name: &str, fam: u8, members: impl Iterator<Item = IpAddr>) {
        let ty = if fam == 4 { SetType::Ipv4Addr } else { SetType::Ipv6Addr };
        let elems = members.filter(|ip| is_v4(ip) == (fam == 4)).collect();
        self.sets.insert(name.to_string(), (ty, Elems::Addrs(elems)));
    }

    pub(super) fn net_set(&mut self, name: &str, fam: u8, nets: impl Iterator<Item = IpNet>) {
        let ty = if fam == 4 { SetType::Ipv4Addr } else { SetType::Ipv6Addr };
        let elems = nets.filter(|n| matches!(n, IpNet::V4(_)) == (fam == 4)).collect();
        self.sets.insert(name.to_string(), (ty, Elems::Nets(elems)));
    }

    pub(super) fn finish(self) -> Nftables<'static> {
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
