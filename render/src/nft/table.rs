//! The whole `table inet calico`: base chains, dispatch maps, NAT, and the batch as JSON.

use std::borrow::Cow;
use std::collections::HashMap;

use calico_schema::EndpointToHostAction;
use ipnet::IpNet;
use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem, Verdict};
use nftables::schema::Nftables;
use nftables::stmt::{JumpTarget, Operator, Statement, VerdictMap};
use nftables::types::{NfChainType, NfHook};

use crate::view::NodeView;

use super::*;

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
        // A workload never speaks BGP to its host, whatever endpointToHostAction says:
        // BIRD only accepts configured neighbours, but a session it should never see
        // is better refused before it reaches BIRD at all.
        r.b.rule(
            inp,
            vec![
                m(meta(MetaKey::Iifname), Operator::EQ, ifaces()),
                m(meta(MetaKey::L4proto), Operator::EQ, num(6)),
                m(payload("tcp", "dport"), Operator::EQ, num(179)),
                counter(),
                drop_(),
            ],
            Some("no BGP from workloads to the host".into()),
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
