//! The whole `table inet calico`: base chains, dispatch maps, NAT, and the batch as JSON.

use std::collections::HashMap;

use calico_schema::EndpointToHostAction;
use ipnet::IpNet;
use nftables::expr::MetaKey;
use nftables::schema::SetType;
use nftables::stmt::{Operator, Statement, VerdictMap};
use nftables::types::{NfChainType, NfHook};

use crate::view::NodeView;

use super::*;

/// Renders `view` into the whole `table inet calico` ([`NftTable::to_batch`] loads it
/// whole, [`NftTable::delta`] gives the change from an older one).
pub fn render_nft(view: &NodeView) -> NftTable {
    let mut r = Renderer {
        view,
        b: NftTable::default(),
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

    // The dispatch is by named set and maps, not anonymous ones inside the rules: a
    // workload coming or going is then an element added or removed, whatever the
    // number of endpoints, instead of rules with every interface rewritten.
    let wildcard = st(format!("{}*", view.config.interface_prefix()));
    r.b.iface_set(IFACES, dispatch.iter().map(|(i, _, _)| i.to_string()));
    r.b.jump_map(
        FROM_MAP,
        SetType::Ifname,
        dispatch.iter().map(|(i, f, _)| (i.to_string(), f.clone())),
    );
    r.b.jump_map(
        TO_MAP,
        SetType::Ifname,
        dispatch.iter().map(|(i, _, t)| (i.to_string(), t.clone())),
    );
    let ifaces = || st(format!("@{IFACES}"));
    let vmap = |key: MetaKey, map: &str| {
        Statement::VerdictMap(VerdictMap {
            key: meta(key),
            data: st(format!("@{map}")),
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
        vec![
            m(meta(key), Operator::EQ, wildcard.clone()),
            m(meta(key), Operator::NEQ, ifaces()),
            counter(),
            drop_(),
        ]
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
    r.b.rule(
        fwd,
        vec![vmap(MetaKey::Iifname, FROM_MAP)],
        Some("from workloads".into()),
    );
    r.b.rule(fwd, vec![vmap(MetaKey::Oifname, TO_MAP)], Some("to workloads".into()));

    let inp = "input";
    r.b.rule(inp, established(), None);
    r.b.rule(
        inp,
        unknown(MetaKey::Iifname),
        Some("unknown workload interface".into()),
    );
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
                vec![vmap(MetaKey::Iifname, FROM_MAP)],
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
                vec![vmap(MetaKey::Iifname, FROM_MAP)],
                Some("from workloads; endpointToHostAction Return".into()),
            );
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

    r.b
}

/// The artefact as text: pretty JSON, ready for `nft -j -f -`.
pub fn render_nft_json(view: &NodeView) -> String {
    render_nft(view).to_batch().to_json_pretty()
}
