//! Small netlink helpers shared by everything in `dataplane/` (and the Docker
//! integration's host side) that looks at links and addresses: find a link by name,
//! read a link's or an address message's attributes, a namespace's id, the errno of a
//! netlink error. They return rtnetlink's own error; callers add what they were doing.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

/// The positive errno carried by a netlink error, if it is one.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// The link called `name`, `None` when there is none.
pub(crate) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.next().await {
        None => Ok(None),
        Some(Ok(link)) => Ok(Some(link)),
        Some(Err(e)) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Some(Err(e)) => Err(e),
    }
}

/// The id under which the host's namespace knows `ns` (what a veth's
/// IFLA_LINK_NETNSID refers to); `None` if none is assigned yet.
pub(crate) async fn nsid_of(handle: &Handle, ns: &File) -> Result<Option<i32>, rtnetlink::Error> {
    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Fd(ns.as_raw_fd() as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut responses = handle.clone().request(req)?;
    let mut found = None;
    while let Some(resp) = responses.next().await {
        match resp.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(rtnetlink::Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                found = m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Ok(found)
}

pub(crate) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn link_is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

pub(crate) fn link_peer_nsid(link: &LinkMessage) -> Option<i32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    })
}

pub(crate) fn link_peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

pub(crate) fn link_mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => Some(bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
        _ => None,
    })
}

pub(crate) fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    // For IPv4 IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
    // peer's on point-to-point links); IPv6 only has IFA_ADDRESS.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}
