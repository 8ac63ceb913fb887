//! The batch for `nft -j -f -`: nftables' typed objects, plus the declaration of verdict
//! maps, which the nftables crate's schema cannot express (its map value types have no
//! `verdict`). Everything else, the maps' elements included, is the crate's own types.

use std::borrow::Cow;

use nftables::expr::{Expression, Verdict};
use nftables::schema::{NfCmd, NfListObject, NfObject, SetType};
use nftables::stmt::JumpTarget;
use nftables::types::NfFamily;
use serde::Serialize;

use super::{FAMILY, TABLE_NAME};

/// One nft transaction: `{"nftables": [...]}`, committed whole or not at all.
#[derive(Debug, Clone, Serialize)]
pub struct Batch<'a> {
    #[serde(rename = "nftables")]
    pub items: Vec<Item<'a>>,
}

/// A command of a [`Batch`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Item<'a> {
    Nf(NfObject<'a>),
    AddJumpMap(AddMap<'a>),
}

/// `{"add": {"map": {...}}}` for a map of `key : verdict`.
#[derive(Debug, Clone, Serialize)]
pub struct AddMap<'a> {
    add: MapObject<'a>,
}

#[derive(Debug, Clone, Serialize)]
struct MapObject<'a> {
    map: MapDecl<'a>,
}

#[derive(Debug, Clone, Serialize)]
struct MapDecl<'a> {
    family: NfFamily,
    table: &'static str,
    name: &'a str,
    #[serde(rename = "type")]
    key: SetType,
    map: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    elem: Vec<(&'a str, Jump<'a>)>,
}

#[derive(Debug, Clone, Serialize)]
struct Jump<'a> {
    jump: Target<'a>,
}

#[derive(Debug, Clone, Serialize)]
struct Target<'a> {
    target: &'a str,
}

impl<'a> Item<'a> {
    pub(super) fn add(o: NfListObject<'a>) -> Item<'a> {
        Item::Nf(NfObject::CmdObject(NfCmd::Add(o)))
    }

    pub(super) fn cmd(c: NfCmd<'a>) -> Item<'a> {
        Item::Nf(NfObject::CmdObject(c))
    }

    /// Declares verdict map `name` with `elems` (key, chain to jump to).
    pub(super) fn add_jump_map(
        name: &'a str,
        key: SetType,
        elems: impl Iterator<Item = (&'a String, &'a String)>,
    ) -> Item<'a> {
        Item::AddJumpMap(AddMap {
            add: MapObject {
                map: MapDecl {
                    family: FAMILY,
                    table: TABLE_NAME,
                    name,
                    key,
                    map: "verdict",
                    elem: elems
                        .map(|(k, t)| {
                            (
                                k.as_str(),
                                Jump {
                                    jump: Target { target: t },
                                },
                            )
                        })
                        .collect(),
                },
            },
        })
    }

    /// Whether this command adds a rule (for counting what a batch loads).
    pub fn is_add_rule(&self) -> bool {
        matches!(
            self,
            Item::Nf(
                NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(_))) | NfObject::ListObject(NfListObject::Rule(_))
            )
        )
    }
}

/// A map element `key : jump target`, in the crate's types (for `add element`).
pub(super) fn jump_elem<'a>(key: &'a str, target: &'a str) -> Expression<'a> {
    Expression::List(vec![
        Expression::String(Cow::Borrowed(key)),
        Expression::Verdict(Verdict::Jump(JumpTarget {
            target: Cow::Borrowed(target),
        })),
    ])
}

impl Batch<'_> {
    /// No commands: nothing to send.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many rules the batch adds.
    pub fn rules_added(&self) -> usize {
        self.items.iter().filter(|i| i.is_add_rule()).count()
    }

    /// The batch as compact JSON for `nft -j -f -`, in a buffer of exactly its size.
    ///
    /// `serde_json::to_vec` grows its buffer by doubling, so a large ruleset can hold up
    /// to twice its JSON size (32 MiB for the 19 MiB of 10k endpoints). Counting the
    /// bytes in a first pass costs one more serialization, which is small next to nft's
    /// load time.
    pub fn to_json_bytes(&self) -> Vec<u8> {
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
        let _ = serde_json::to_writer(&mut n, self);
        let mut out = Vec::with_capacity(n.0);
        let _ = serde_json::to_writer(&mut out, self);
        out
    }

    /// Pretty JSON, for people and golden files.
    pub fn to_json_pretty(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
