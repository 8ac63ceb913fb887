//! The nftables artefact: one `table inet calico`, loaded whole at start and changed by
//! deltas ([`NftTable::delta`]), each one transaction.
//!
//! Shape (docs/render.md has the long form):
//!
//! ```text
//! forward (hook forward)  ct established/related accept
//!                         unknown <prefix>* interface (not in @ifaces): counted drop
//!                         iifname vmap @from-ep    (caliX : jump from-caliX, ...)
//!                         oifname vmap @to-ep      (caliX : jump to-caliX, ...)
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

use nftables::expr::Expression;
use nftables::stmt::Statement;
use nftables::types::NfFamily;

mod batch;
mod builder;
mod counters;
mod delta;
mod expr;
mod policy;
mod table;
mod text;

pub use batch::{Batch, Item};
pub use builder::{NftTable, TableCounts};
pub use counters::{rule_counters, rule_direction, RuleCount, RuleCounters};
pub use delta::{Delta, Patch};
use expr::*;
use policy::*;
pub use table::{render_nft, render_nft_json};
pub use text::{normalize_listing, TextError};

pub const TABLE_NAME: &str = "calico";
/// The named set of every local workload interface.
pub const IFACES: &str = "ifaces";
/// Verdict map: workload interface to its `from-` chain (packets the workload sends).
pub const FROM_MAP: &str = "from-ep";
/// Verdict map: workload interface to its `to-` chain (packets sent to the workload).
pub const TO_MAP: &str = "to-ep";
/// Mark bit a policy or group chain sets when an Allow rule matched.
pub const MARK_ACCEPT: u32 = 0x1_0000;
/// Mark bit a policy chain sets when a Pass rule matched: skip the remaining policies.
pub const MARK_PASS: u32 = 0x2_0000;
/// Both bits; the rest of the mark belongs to others (Docker, kube-proxy, users).
pub const MARK_MASK: u32 = MARK_ACCEPT | MARK_PASS;

/// The comment, and so the counter's name, of the nft rule(s) rendered from rule
/// `index` of `kind` ("Policy" or "Group") `name`'s `direction` list, e.g.
/// `Policy/db-web ingress[2]`; clipped to the 128 bytes nft keeps, as the kernel
/// hands it back. A rule rendered for both families gives two nft rules with this
/// comment: their counters add up.
pub fn rule_comment(kind: &str, name: &str, direction: calico_schema::PolicyType, index: usize) -> String {
    let word = match direction {
        calico_schema::PolicyType::Ingress => "ingress",
        calico_schema::PolicyType::Egress => "egress",
    };
    policy::clip(format!("{kind}/{name} {word}[{index}]"), 128)
}

pub(super) const FAMILY: NfFamily = NfFamily::INet;
/// ICMPv6 the host must accept from workloads whatever endpointToHostAction says:
/// MLD (130-132), router solicitation (133), neighbour solicitation/advertisement
/// (135-136). Without them a v6 workload cannot resolve its gateway.
pub(super) const ICMPV6_HOST: [u32; 6] = [130, 131, 132, 133, 135, 136];

pub(super) type E = Expression<'static>;
pub(super) type S = Statement<'static>;
/// A rule's statements and its comment. Statement lists that are the same in every
/// endpoint's chains are borrowed from statics instead of being built once per endpoint:
/// they serialize the same and cost nothing per endpoint.
pub(super) type NftRule = (Cow<'static, [S]>, Option<Cow<'static, str>>);
