//! The desired state as the policy evaluators need it: resources and every Container's
//! addresses (explicit, or what IPAM assigned under its handle).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, Result};
use calico_schema::Resource;
use calico_store::ipam::{container_handle, Ipam};

use crate::conn::Ctx;

/// IPAM's addresses of the Containers among `resources`, by Container name.
pub async fn ipam_addresses(ctx: &Ctx, resources: &[Resource]) -> Result<BTreeMap<String, Vec<IpAddr>>> {
    let ipam = Ipam::new(ctx.store.client(), ctx.cfg.timeout);
    let handles = ipam.handles().await.map_err(|e| anyhow!("IPAM: {e}"))?;
    let mut addrs = BTreeMap::new();
    for r in resources {
        if let Resource::Container(c) = r {
            if let Some(h) = handles.get(&container_handle(&c.metadata.name)) {
                addrs.insert(c.metadata.name.clone(), h.ips.clone());
            }
        }
    }
    Ok(addrs)
}

/// Every resource in etcd and the Containers' IPAM addresses.
pub async fn from_etcd(ctx: &Ctx) -> Result<(Vec<Resource>, BTreeMap<String, Vec<IpAddr>>)> {
    let listing = ctx.call("list resources", ctx.store.list(None)).await?;
    let addrs = ipam_addresses(ctx, &listing.resources).await?;
    Ok((listing.resources, addrs))
}
