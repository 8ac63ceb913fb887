//! The table model the renderer fills (sets, maps, chains, rules) and the whole-table
//! batch it gives, in a stable order.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Rule as NfRule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Elems {
    Addrs(BTreeSet<IpAddr>),
    Nets(BTreeSet<IpNet>),
    /// Interface names.
    Names(BTreeSet<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BaseChain {
    pub(super) name: &'static str,
    pub(super) chain_type: NfChainType,
    pub(super) hook: NfHook,
    pub(super) prio: i32,
}

/// The whole `table inet calico` as the renderer built it: what the kernel should hold.
///
/// [`NftTable::to_batch`] turns it into the batch that loads it whole;
/// [`NftTable::delta`] into the smallest batch that turns an older table into it. The
/// agent keeps the last committed one to compute the next delta.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NftTable {
    pub(super) sets: BTreeMap<String, (SetType, Elems)>,
    /// Verdict maps: name to key type and elements (key to the chain it jumps to).
    pub(super) vmaps: BTreeMap<String, (SetType, BTreeMap<String, String>)>,
    /// Base chains in declaration order.
    pub(super) base: Vec<BaseChain>,
    /// Regular chains and their rules (with optional comment); BTreeMap for stable order.
    pub(super) chains: BTreeMap<String, Vec<NftRule>>,
    pub(super) base_rules: BTreeMap<&'static str, Vec<NftRule>>,
}

impl NftTable {
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

    pub(super) fn iface_set(&mut self, name: &str, ifaces: impl Iterator<Item = String>) {
        self.sets
            .insert(name.to_string(), (SetType::Ifname, Elems::Names(ifaces.collect())));
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

    /// A verdict map `name` (`ifname : verdict`) whose every element jumps: interface
    /// to chain.
    pub(super) fn jump_map(&mut self, name: &str, key: SetType, elems: impl Iterator<Item = (String, String)>) {
        self.vmaps.insert(name.to_string(), (key, elems.collect()));
    }

    /// The batch that replaces the table whole: `add table; delete table; add table`
    /// (so it works whether or not the table exists, and the kernel applies it in one
    /// transaction), then sets, chains, maps (whose elements jump to the chains) and
    /// rules (which refer to all of them). Borrows: nothing is copied at any size.
    pub fn to_batch(&self) -> Batch<'_> {
        let table = || Table {
            family: FAMILY,
            name: Cow::Borrowed(TABLE_NAME),
            handle: None,
        };
        let rule_count =
            self.base_rules.values().map(Vec::len).sum::<usize>() + self.chains.values().map(Vec::len).sum::<usize>();
        let mut out = Vec::with_capacity(
            3 + self.sets.len() + self.base.len() + self.chains.len() + self.vmaps.len() + rule_count,
        );
        out.push(Item::add(NfListObject::Table(table())));
        out.push(Item::Nf(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
            table(),
        )))));
        out.push(Item::add(NfListObject::Table(table())));
        for (name, (ty, elems)) in &self.sets {
            out.push(Item::add(set_object(name, *ty, elems, true)));
        }
        for b in &self.base {
            out.push(Item::add(NfListObject::Chain(base_chain_object(b))));
        }
        for name in self.chains.keys() {
            out.push(Item::add(NfListObject::Chain(chain_object(name))));
        }
        for (name, (key, elems)) in &self.vmaps {
            out.push(Item::add_jump_map(name, *key, elems.iter()));
        }
        for b in &self.base {
            for r in self.base_rules.get(b.name).map(Vec::as_slice).unwrap_or_default() {
                out.push(Item::add(rule_object(b.name, r)));
            }
        }
        for (name, rules) in &self.chains {
            for r in rules {
                out.push(Item::add(rule_object(name, r)));
            }
        }
        Batch { items: out }
    }

    /// Whether the table has no endpoints' worth of state: for tests and logs.
    pub fn counts(&self) -> TableCounts {
        TableCounts {
            sets: self.sets.len(),
            maps: self.vmaps.len(),
            chains: self.base.len() + self.chains.len(),
            rules: self.base_rules.values().map(Vec::len).sum::<usize>()
                + self.chains.values().map(Vec::len).sum::<usize>(),
        }
    }
}

/// How many objects of each kind a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCounts {
    pub sets: usize,
    pub maps: usize,
    pub chains: usize,
    pub rules: usize,
}

pub(super) fn set_object<'a>(name: &'a str, ty: SetType, elems: &'a Elems, with_elems: bool) -> NfListObject<'a> {
    let items = with_elems.then(|| elems.exprs()).filter(|i| !i.is_empty());
    NfListObject::Set(Box::new(Set {
        family: FAMILY,
        table: Cow::Borrowed(TABLE_NAME),
        name: Cow::Borrowed(name),
        handle: None,
        set_type: SetTypeValue::Single(ty),
        policy: None,
        // One flag at most: the crate keeps flags in a HashSet, whose order would
        // otherwise make the output differ from run to run.
        flags: elems.is_interval().then(|| [SetFlag::Interval].into_iter().collect()),
        elem: items.map(Cow::Owned),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

pub(super) fn chain_object(name: &str) -> Chain<'_> {
    Chain {
        family: FAMILY,
        table: Cow::Borrowed(TABLE_NAME),
        name: Cow::Borrowed(name),
        ..Default::default()
    }
}

pub(super) fn base_chain_object(b: &BaseChain) -> Chain<'static> {
    Chain {
        _type: Some(b.chain_type),
        hook: Some(b.hook),
        prio: Some(b.prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain_object(b.name)
    }
}

pub(super) fn rule_object<'a>(chain: &'a str, (expr, comment): &'a NftRule) -> NfListObject<'a> {
    NfListObject::Rule(NfRule {
        family: FAMILY,
        table: Cow::Borrowed(TABLE_NAME),
        chain: Cow::Borrowed(chain),
        expr: Cow::Borrowed(&**expr),
        handle: None,
        index: None,
        comment: comment.as_deref().map(Cow::Borrowed),
    })
}

impl Elems {
    fn is_interval(&self) -> bool {
        matches!(self, Elems::Nets(_))
    }

    pub(super) fn exprs(&self) -> Vec<E> {
        match self {
            Elems::Addrs(a) => a.iter().map(addr_expr).collect(),
            Elems::Nets(n) => n.iter().map(net_expr).collect(),
            Elems::Names(n) => n.iter().map(|i| st(i.clone())).collect(),
        }
    }
}
