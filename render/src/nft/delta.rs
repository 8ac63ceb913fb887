//! The smallest transaction that turns one rendered table into another.
//!
//! The agent renders the whole table on every change (the artefact stays one whole
//! file) but sends the kernel only what differs from what it last committed: elements
//! added to and removed from sets and maps, chains flushed and rewritten, chains and
//! sets added, and deletes last. nft commits the batch as one transaction, so the
//! table goes from the old state to the new one with nothing in between.
//!
//! Order inside the batch, so that every reference resolves when it is made and
//! nothing is deleted while something still refers to it:
//!
//! 1. add new chains (empty), new sets and maps (with their elements);
//! 2. in kept maps, delete elements whose verdict changed; add new elements;
//! 3. flush and rewrite every kept chain whose rules changed; fill new chains;
//! 4. delete elements gone from kept sets and maps;
//! 5. flush every removed chain, then delete them; delete removed sets.
//!
//! What a delta cannot express safely (a base chain's hook or priority, a set's type,
//! a map removed) asks for a whole replacement instead.

use std::borrow::Cow;
use std::collections::BTreeSet;

use nftables::expr::Expression;
use nftables::schema::{Element, FlushObject, NfCmd, NfListObject};

use super::batch::{jump_elem, Batch, Item};
use super::builder::{chain_object, rule_object, set_object, Elems, NftTable};
use super::{FAMILY, TABLE_NAME};

/// What it takes to turn the committed table into the wanted one.
#[derive(Debug)]
pub enum Delta<'a> {
    /// The tables are equal: send nothing.
    Unchanged,
    /// This batch, committed, makes the kernel's table equal the wanted one.
    Patch(Batch<'a>),
    /// Only a whole replacement can do it; the reason is for the log.
    Whole(&'static str),
}

impl NftTable {
    /// The delta from `old` (what the kernel holds, as last committed) to `self`.
    pub fn delta<'a>(&'a self, old: &'a NftTable) -> Delta<'a> {
        if self == old {
            return Delta::Unchanged;
        }
        if self.base != old.base {
            return Delta::Whole("a base chain's hook, type or priority changed");
        }
        for (name, (ty, elems)) in &self.sets {
            if let Some((old_ty, old_elems)) = old.sets.get(name) {
                if ty != old_ty || std::mem::discriminant(elems) != std::mem::discriminant(old_elems) {
                    return Delta::Whole("a set changed its type");
                }
            }
        }
        for (name, (key, _)) in &self.vmaps {
            if old.vmaps.get(name).is_some_and(|(k, _)| k != key) {
                return Delta::Whole("a map changed its key type");
            }
        }
        if old.vmaps.keys().any(|name| !self.vmaps.contains_key(name)) {
            return Delta::Whole("a map was removed");
        }

        let mut out: Vec<Item<'a>> = Vec::new();
        // 1. New chains, sets and maps.
        for name in self.chains.keys().filter(|n| !old.chains.contains_key(*n)) {
            out.push(Item::add(NfListObject::Chain(chain_object(name))));
        }
        for (name, (ty, elems)) in self.sets.iter().filter(|(n, _)| !old.sets.contains_key(*n)) {
            out.push(Item::add(set_object(name, *ty, elems, true)));
        }
        for (name, (key, elems)) in self.vmaps.iter().filter(|(n, _)| !old.vmaps.contains_key(*n)) {
            out.push(Item::add_jump_map(name, *key, elems.iter()));
        }

        // 2. Kept maps: a changed verdict is a delete then an add; then the new keys.
        let mut map_gone: Vec<(&'a str, Vec<Expression<'a>>)> = Vec::new();
        for (name, (_, elems)) in &self.vmaps {
            let Some((_, old_elems)) = old.vmaps.get(name) else {
                continue;
            };
            let changed: Vec<Expression<'a>> = elems
                .iter()
                .filter(|(k, t)| old_elems.get(*k).is_some_and(|ot| ot != *t))
                .map(|(k, _)| key_elem(k))
                .collect();
            if !changed.is_empty() {
                out.push(element(NfCmd::Delete, name, changed));
            }
            let added: Vec<Expression<'a>> = elems
                .iter()
                .filter(|(k, t)| old_elems.get(*k) != Some(*t))
                .map(|(k, t)| jump_elem(k, t))
                .collect();
            if !added.is_empty() {
                out.push(element(NfCmd::Add, name, added));
            }
            let gone: Vec<Expression<'a>> = old_elems
                .keys()
                .filter(|k| !elems.contains_key(*k))
                .map(|k| key_elem(k))
                .collect();
            if !gone.is_empty() {
                map_gone.push((name, gone));
            }
        }
        let mut set_gone: Vec<(&'a str, Vec<Expression<'static>>)> = Vec::new();
        for (name, (_, elems)) in &self.sets {
            let Some((_, old_elems)) = old.sets.get(name) else {
                continue;
            };
            let (added, gone) = elems_diff(elems, old_elems);
            if !added.is_empty() {
                out.push(element(NfCmd::Add, name, added));
            }
            if !gone.is_empty() {
                set_gone.push((name, gone));
            }
        }

        // 3. Rules: rewrite changed chains whole (a chain is a short list; its rules'
        // order is its meaning), fill the new ones.
        for b in &self.base {
            let new = self.base_rules.get(b.name).map(Vec::as_slice).unwrap_or_default();
            let was = old.base_rules.get(b.name).map(Vec::as_slice).unwrap_or_default();
            if new != was {
                out.push(Item::cmd(NfCmd::Flush(FlushObject::Chain(chain_object(b.name)))));
                out.extend(new.iter().map(|r| Item::add(rule_object(b.name, r))));
            }
        }
        for (name, rules) in &self.chains {
            match old.chains.get(name) {
                Some(was) if was == rules => {}
                Some(_) => {
                    out.push(Item::cmd(NfCmd::Flush(FlushObject::Chain(chain_object(name)))));
                    out.extend(rules.iter().map(|r| Item::add(rule_object(name, r))));
                }
                None => out.extend(rules.iter().map(|r| Item::add(rule_object(name, r)))),
            }
        }

        // 4. Elements no longer wanted.
        for (name, gone) in map_gone {
            out.push(element(NfCmd::Delete, name, gone));
        }
        for (name, gone) in set_gone {
            out.push(element(NfCmd::Delete, name, gone));
        }

        // 5. Removed chains (flushed first: one may jump to another), then removed sets.
        let removed: Vec<&'a String> = old.chains.keys().filter(|n| !self.chains.contains_key(*n)).collect();
        for name in &removed {
            out.push(Item::cmd(NfCmd::Flush(FlushObject::Chain(chain_object(name)))));
        }
        for name in &removed {
            out.push(Item::cmd(NfCmd::Delete(NfListObject::Chain(chain_object(name)))));
        }
        for (name, (ty, elems)) in old.sets.iter().filter(|(n, _)| !self.sets.contains_key(*n)) {
            out.push(Item::cmd(NfCmd::Delete(set_object(name, *ty, elems, false))));
        }
        Delta::Patch(Batch { items: out })
    }
}

fn key_elem(key: &str) -> Expression<'_> {
    Expression::String(Cow::Borrowed(key))
}

fn element<'a>(cmd: fn(NfListObject<'a>) -> NfCmd<'a>, set: &'a str, elem: Vec<Expression<'a>>) -> Item<'a> {
    Item::cmd(cmd(NfListObject::Element(Element {
        family: FAMILY,
        table: Cow::Borrowed(TABLE_NAME),
        name: Cow::Borrowed(set),
        elem: Cow::Owned(elem),
    })))
}

/// Elements in `new` and not in `old`, and the other way round.
fn elems_diff(new: &Elems, old: &Elems) -> (Vec<Expression<'static>>, Vec<Expression<'static>>) {
    fn diff<T: Ord, F: Fn(&T) -> Expression<'static>>(
        a: &BTreeSet<T>,
        b: &BTreeSet<T>,
        expr: F,
    ) -> (Vec<Expression<'static>>, Vec<Expression<'static>>) {
        (
            a.difference(b).map(&expr).collect(),
            b.difference(a).map(&expr).collect(),
        )
    }
    match (new, old) {
        (Elems::Addrs(n), Elems::Addrs(o)) => diff(n, o, super::addr_expr),
        (Elems::Nets(n), Elems::Nets(o)) => diff(n, o, super::net_expr),
        (Elems::Names(n), Elems::Names(o)) => diff(n, o, |i: &String| super::st(i.clone())),
        // Checked by the caller: a changed kind is a whole replacement.
        _ => (Vec::new(), Vec::new()),
    }
}
