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
use std::fmt::Write as _;

use nftables::expr::Expression;
use nftables::schema::{Element, FlushObject, NfCmd, NfListObject, SetType};

use super::batch::{jump_elem, Batch, Item};
use super::builder::{chain_object, rule_object, set_object, Elems, NftTable};
use super::text::{quoted, rule_text, set_type_name, TextError};
use super::{NftRule, FAMILY, TABLE_NAME};

/// What it takes to turn the committed table into the wanted one.
#[derive(Debug)]
pub enum Delta<'a> {
    /// The tables are equal: send nothing.
    Unchanged,
    /// These commands, committed as one transaction, make the kernel's table equal the
    /// wanted one.
    Patch(Patch<'a>),
    /// Only a whole replacement can do it; the reason is for the log.
    Whole(&'static str),
}

/// A delta's commands, in order; [`Patch::to_text`] for `nft -f -`, [`Patch::to_batch`]
/// for `nft -j -f -`.
#[derive(Debug)]
pub struct Patch<'a> {
    ops: Vec<Op<'a>>,
}

#[derive(Debug)]
enum Op<'a> {
    AddChain(&'a str),
    AddSet(&'a str, SetType, &'a Elems),
    AddMap(&'a str, SetType, &'a std::collections::BTreeMap<String, String>),
    AddMapElems(&'a str, Vec<(&'a str, &'a str)>),
    DelMapElems(&'a str, Vec<&'a str>),
    AddSetElems(&'a str, Elems),
    DelSetElems(&'a str, Elems),
    FlushChain(&'a str),
    AddRule(&'a str, &'a NftRule),
    DeleteChain(&'a str),
    DeleteSet(&'a str, SetType, &'a Elems),
}

impl NftTable {
    /// The delta from `old` (what the kernel holds, as last committed) to `self`.
    pub fn delta<'a>(&'a self, old: &'a NftTable) -> Delta<'a> {
        // No whole-table equality check first: the walk below compares every part
        // once, and an empty patch is `Unchanged` (a first `==` walked the whole table
        // a second time, a fifth of a one-change delta's cost at 10k endpoints).
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

        // Every part is walked once, both tables side by side in key order (a merge
        // join, not a lookup per key: at 10k endpoints the lookups were most of the
        // delta's time).
        let mut out: Vec<Op<'a>> = Vec::new();
        let mut chain_ops: Vec<Op<'a>> = Vec::new();
        let mut removed: Vec<&'a String> = Vec::new();
        // 1. New chains, sets and maps (and, on the same walk, the chains' rules for 3
        // and the removed chains for 5).
        for j in join(&self.chains, &old.chains) {
            match j {
                Joined::New(name, rules) => {
                    out.push(Op::AddChain(name));
                    chain_ops.extend(rules.iter().map(|r| Op::AddRule(name, r)));
                }
                Joined::Both(_, rules, was) if rules == was => {}
                Joined::Both(name, rules, _) => {
                    chain_ops.push(Op::FlushChain(name));
                    chain_ops.extend(rules.iter().map(|r| Op::AddRule(name, r)));
                }
                Joined::Old(name) => removed.push(name),
            }
        }
        for (name, (ty, elems)) in self.sets.iter().filter(|(n, _)| !old.sets.contains_key(*n)) {
            out.push(Op::AddSet(name, *ty, elems));
        }
        for (name, (key, elems)) in self.vmaps.iter().filter(|(n, _)| !old.vmaps.contains_key(*n)) {
            out.push(Op::AddMap(name, *key, elems));
        }

        // 2. Kept maps: a changed verdict is a delete then an add; then the new keys.
        let mut map_gone: Vec<(&'a str, Vec<&'a str>)> = Vec::new();
        for (name, (_, elems)) in &self.vmaps {
            let Some((_, old_elems)) = old.vmaps.get(name) else {
                continue;
            };
            let (mut changed, mut added, mut gone) = (Vec::new(), Vec::new(), Vec::new());
            for j in join(elems, old_elems) {
                match j {
                    Joined::Both(_, t, ot) if t == ot => {}
                    Joined::Both(k, t, _) => {
                        changed.push(k.as_str());
                        added.push((k.as_str(), t.as_str()));
                    }
                    Joined::New(k, t) => added.push((k.as_str(), t.as_str())),
                    Joined::Old(k) => gone.push(k.as_str()),
                }
            }
            if !changed.is_empty() {
                out.push(Op::DelMapElems(name, changed));
            }
            if !added.is_empty() {
                out.push(Op::AddMapElems(name, added));
            }
            if !gone.is_empty() {
                map_gone.push((name, gone));
            }
        }
        let mut set_gone: Vec<(&'a str, Elems)> = Vec::new();
        for (name, (_, elems)) in &self.sets {
            let Some((_, old_elems)) = old.sets.get(name) else {
                continue;
            };
            let (added, gone) = elems_diff(elems, old_elems);
            if !added.is_empty() {
                out.push(Op::AddSetElems(name, added));
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
                out.push(Op::FlushChain(b.name));
                out.extend(new.iter().map(|r| Op::AddRule(b.name, r)));
            }
        }
        out.append(&mut chain_ops);

        // 4. Elements no longer wanted.
        for (name, gone) in map_gone {
            out.push(Op::DelMapElems(name, gone));
        }
        for (name, gone) in set_gone {
            out.push(Op::DelSetElems(name, gone));
        }

        // 5. Removed chains (flushed first: one may jump to another), then removed sets.
        for name in &removed {
            out.push(Op::FlushChain(name));
        }
        for name in &removed {
            out.push(Op::DeleteChain(name));
        }
        for (name, (ty, elems)) in old.sets.iter().filter(|(n, _)| !self.sets.contains_key(*n)) {
            out.push(Op::DeleteSet(name, *ty, elems));
        }
        if out.is_empty() {
            // Every part compared equal (the checks above ask for a whole load only
            // when something differs).
            return Delta::Unchanged;
        }
        Delta::Patch(Patch { ops: out })
    }
}

impl<'a> Patch<'a> {
    /// How many commands the patch sends.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it sends nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// How many rules it adds.
    pub fn rules_added(&self) -> usize {
        self.ops.iter().filter(|o| matches!(o, Op::AddRule(..))).count()
    }

    /// The commands as nft's JSON batch.
    pub fn to_batch(&self) -> Batch<'a> {
        let items = self
            .ops
            .iter()
            .map(|op| match op {
                Op::AddChain(name) => Item::add(NfListObject::Chain(chain_object(name))),
                Op::AddSet(name, ty, elems) => Item::add(set_object(name, *ty, elems, true)),
                Op::AddMap(name, key, elems) => Item::add_jump_map(name, *key, elems.iter()),
                Op::AddMapElems(name, elems) => {
                    element(NfCmd::Add, name, elems.iter().map(|(k, t)| jump_elem(k, t)).collect())
                }
                Op::DelMapElems(name, keys) => element(NfCmd::Delete, name, keys.iter().map(|k| key_elem(k)).collect()),
                Op::AddSetElems(name, elems) => element(NfCmd::Add, name, elems.exprs()),
                Op::DelSetElems(name, elems) => element(NfCmd::Delete, name, elems.exprs()),
                Op::FlushChain(name) => Item::cmd(NfCmd::Flush(FlushObject::Chain(chain_object(name)))),
                Op::AddRule(chain, r) => Item::add(rule_object(chain, r)),
                Op::DeleteChain(name) => Item::cmd(NfCmd::Delete(NfListObject::Chain(chain_object(name)))),
                Op::DeleteSet(name, ty, elems) => Item::cmd(NfCmd::Delete(set_object(name, *ty, elems, false))),
            })
            .collect();
        Batch { items }
    }

    /// The commands in nft's own syntax, one a line, for `nft -f -` (one transaction).
    pub fn to_text(&self) -> Result<String, TextError> {
        let t = format!("inet {TABLE_NAME}");
        let mut out = String::new();
        for op in &self.ops {
            match op {
                Op::AddChain(name) => {
                    let _ = writeln!(out, "add chain {t} {name}");
                }
                Op::AddSet(name, ty, elems) => {
                    let _ = write!(out, "add set {t} {name} {{ type {};", set_type_name(*ty));
                    if matches!(elems, Elems::Nets(_)) {
                        out.push_str(" flags interval;");
                    }
                    let items = elems.texts();
                    if !items.is_empty() {
                        let _ = write!(out, " elements = {{ {} }};", items.join(", "));
                    }
                    out.push_str(" }\n");
                }
                Op::AddMap(name, key, elems) => {
                    let _ = write!(out, "add map {t} {name} {{ type {} : verdict;", set_type_name(*key));
                    if !elems.is_empty() {
                        let items: Vec<String> =
                            elems.iter().map(|(k, c)| format!("{} : jump {c}", quoted(k))).collect();
                        let _ = write!(out, " elements = {{ {} }};", items.join(", "));
                    }
                    out.push_str(" }\n");
                }
                Op::AddMapElems(name, elems) => {
                    let items: Vec<String> = elems.iter().map(|(k, c)| format!("{} : jump {c}", quoted(k))).collect();
                    let _ = writeln!(out, "add element {t} {name} {{ {} }}", items.join(", "));
                }
                Op::DelMapElems(name, keys) => {
                    let items: Vec<String> = keys.iter().map(|k| quoted(k)).collect();
                    let _ = writeln!(out, "delete element {t} {name} {{ {} }}", items.join(", "));
                }
                Op::AddSetElems(name, elems) => {
                    let _ = writeln!(out, "add element {t} {name} {{ {} }}", elems.texts().join(", "));
                }
                Op::DelSetElems(name, elems) => {
                    let _ = writeln!(out, "delete element {t} {name} {{ {} }}", elems.texts().join(", "));
                }
                Op::FlushChain(name) => {
                    let _ = writeln!(out, "flush chain {t} {name}");
                }
                Op::AddRule(chain, r) => {
                    let _ = write!(out, "add rule {t} {chain} ");
                    rule_text(&mut out, chain, r)?;
                    out.push('\n');
                }
                Op::DeleteChain(name) => {
                    let _ = writeln!(out, "delete chain {t} {name}");
                }
                Op::DeleteSet(name, _, _) => {
                    let _ = writeln!(out, "delete set {t} {name}");
                }
            }
        }
        Ok(out)
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
/// One key of a merge join of two sorted maps: only in the new one, in both, or only in
/// the old one.
enum Joined<'a, K, A, B> {
    New(&'a K, &'a A),
    Both(&'a K, &'a A, &'a B),
    Old(&'a K),
}

/// Both maps' entries side by side in key order, each map walked once.
fn join<'a, K: Ord, A, B>(
    new: &'a std::collections::BTreeMap<K, A>,
    old: &'a std::collections::BTreeMap<K, B>,
) -> impl Iterator<Item = Joined<'a, K, A, B>> {
    let mut n = new.iter().peekable();
    let mut o = old.iter().peekable();
    std::iter::from_fn(move || match (n.peek(), o.peek()) {
        (Some((nk, _)), Some((ok, _))) => match nk.cmp(ok) {
            std::cmp::Ordering::Less => n.next().map(|(k, a)| Joined::New(k, a)),
            std::cmp::Ordering::Greater => o.next().map(|(k, _)| Joined::Old(k)),
            std::cmp::Ordering::Equal => {
                let (k, a) = n.next()?;
                let (_, b) = o.next()?;
                Some(Joined::Both(k, a, b))
            }
        },
        (Some(_), None) => n.next().map(|(k, a)| Joined::New(k, a)),
        (None, Some(_)) => o.next().map(|(k, _)| Joined::Old(k)),
        (None, None) => None,
    })
}

fn elems_diff(new: &Elems, old: &Elems) -> (Elems, Elems) {
    fn diff<T: Ord + Clone>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> (BTreeSet<T>, BTreeSet<T>) {
        (a.difference(b).cloned().collect(), b.difference(a).cloned().collect())
    }
    match (new, old) {
        (Elems::Addrs(n), Elems::Addrs(o)) => {
            let (a, g) = diff(n, o);
            (Elems::Addrs(a), Elems::Addrs(g))
        }
        (Elems::Nets(n), Elems::Nets(o)) => {
            let (a, g) = diff(n, o);
            (Elems::Nets(a), Elems::Nets(g))
        }
        (Elems::Names(n), Elems::Names(o)) => {
            let (a, g) = diff(n, o);
            (Elems::Names(a), Elems::Names(g))
        }
        // Checked by the caller: a changed kind is a whole replacement.
        _ => (Elems::Names(BTreeSet::new()), Elems::Names(BTreeSet::new())),
    }
}
