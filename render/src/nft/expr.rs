//! Small constructors for nftables expressions and statements, and the statement
//! lists every endpoint chain shares.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::LazyLock;

use ipnet::IpNet;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem, CT,
};
use nftables::stmt::{AnonymousCounter, Counter, JumpTarget, Mangle, Match, Operator, Statement};

use super::*;

/// A string expression: borrowed when static, owned otherwise.
pub(super) fn st(s: impl Into<Cow<'static, str>>) -> E {
    Expression::String(s.into())
}

pub(super) fn num(n: u32) -> E {
    Expression::Number(n)
}

pub(super) fn meta(key: MetaKey) -> E {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn payload(protocol: &'static str, field: &'static str) -> E {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed(protocol),
        field: Cow::Borrowed(field),
    })))
}

pub(super) fn ct(key: &'static str) -> E {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

pub(super) fn anon_set(items: Vec<E>) -> E {
    Expression::Named(NamedExpression::Set(items.into_iter().map(SetItem::Element).collect()))
}

/// One value as itself, several as an anonymous set.
pub(super) fn one_or_set(mut items: Vec<E>) -> E {
    if items.len() == 1 {
        items.remove(0)
    } else {
        anon_set(items)
    }
}

pub(super) fn m(left: E, op: Operator, right: E) -> S {
    Statement::Match(Match { left, right, op })
}

pub(super) fn counter() -> S {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())))
}

pub(super) fn drop_() -> S {
    Statement::Drop(None)
}

pub(super) fn accept() -> S {
    Statement::Accept(None)
}

pub(super) fn ret() -> S {
    Statement::Return(None)
}

pub(super) fn jump(target: String) -> S {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(target),
    })
}

pub(super) fn goto(target: String) -> S {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(target),
    })
}

pub(super) fn mark_expr() -> E {
    meta(MetaKey::Mark)
}

/// `meta mark & bit != 0` (or `== 0` when `set` is false).
pub(super) fn mark_test(bit: u32, set: bool) -> S {
    m(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(mark_expr(), num(bit)))),
        if set { Operator::NEQ } else { Operator::EQ },
        num(0),
    )
}

pub(super) fn mark_or(bit: u32) -> S {
    Statement::Mangle(Mangle {
        key: mark_expr(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![mark_expr(), num(bit)]))),
    })
}

pub(super) fn mark_clear() -> S {
    Statement::Mangle(Mangle {
        key: mark_expr(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::AND(mark_expr(), num(!MARK_MASK)))),
    })
}

pub(super) fn ct_state(states: &[&'static str]) -> E {
    if states.len() == 1 {
        st(states[0])
    } else {
        Expression::List(states.iter().map(|s| st(*s)).collect())
    }
}

/// `ct state invalid counter drop`: first in every endpoint chain.
pub(super) static CT_INVALID_DROP: LazyLock<[S; 3]> =
    LazyLock::new(|| [m(ct("state"), Operator::IN, ct_state(&["invalid"])), counter(), drop_()]);
/// `meta nfproto ipv4 counter drop`: anti-spoofing for an endpoint with no IPv4 address.
pub(super) static NO_V4_DROP: LazyLock<[S; 3]> = LazyLock::new(|| {
    [
        m(meta(MetaKey::Nfproto), Operator::EQ, st(nfproto(4))),
        counter(),
        drop_(),
    ]
});
/// The same for IPv6.
pub(super) static NO_V6_DROP: LazyLock<[S; 3]> = LazyLock::new(|| {
    [
        m(meta(MetaKey::Nfproto), Operator::EQ, st(nfproto(6))),
        counter(),
        drop_(),
    ]
});
/// `meta mark & 0x10000 != 0 return`: after each jump of an evaluation chain.
pub(super) static ACCEPTED_RETURN: LazyLock<[S; 2]> = LazyLock::new(|| [mark_test(MARK_ACCEPT, true), ret()]);
/// The first rule of an evaluation chain.
pub(super) static MARK_CLEAR: LazyLock<[S; 1]> = LazyLock::new(|| [mark_clear()]);
/// The last rule of an evaluation chain.
pub(super) static COUNTED_DROP: LazyLock<[S; 2]> = LazyLock::new(|| [counter(), drop_()]);

pub(super) fn shared(stmts: &'static [S]) -> Cow<'static, [S]> {
    Cow::Borrowed(stmts)
}

pub(super) fn addr_expr(ip: &IpAddr) -> E {
    st(ip.to_string())
}

pub(super) fn net_expr(n: &IpNet) -> E {
    if n.prefix_len() == n.max_prefix_len() {
        st(n.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(st(n.network().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

pub(super) fn is_v4(ip: &IpAddr) -> bool {
    ip.is_ipv4()
}

pub(super) fn l3(fam: u8) -> &'static str {
    if fam == 4 {
        "ip"
    } else {
        "ip6"
    }
}

pub(super) fn nfproto(fam: u8) -> &'static str {
    if fam == 4 {
        "ipv4"
    } else {
        "ipv6"
    }
}
