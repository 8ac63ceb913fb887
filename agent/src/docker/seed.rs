//! Consuming dockerd's events: the seed's `docker run --net=none -e CALICO_IP=<ip|auto>
//! [-e CALICO_GROUP=G]` containers become Docker-owned Container resources that the
//! reconcile plumbs into `/proc/<pid>/ns/net`; plugin endpoints learn their container;
//! a (re)connect's listing removes what Docker no longer has.
//!
//! - Start: the seed Container `docker-<id12>` is created if absent (an existing one is
//!   kept as it is: its groups may have been changed with `calicoctl addtogroup`, and
//!   its address must survive stop/start).
//! - Die: nothing but a reconcile (the interface went with the namespace).
//! - Destroy: the seed Container is deleted; the reconcile releases its address.
//! - Resync: all of the above for every container listed, and Docker-owned Containers
//!   of this node whose container or endpoint is gone are deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use calico_schema::validate::in_enabled_pool;
use calico_schema::{object, ContainerSpec, Kind, Resource, OWNER_ANNOTATION, OWNER_DOCKER};
use calico_store::ipam::container_handle;
use calico_store::{StoreError, WriteMode};
use tracing::{debug, info, warn};

use super::client::ContainerInfo;
use super::context::{is_docker_owned, seed_name, short, Ctx, ANN_CONTAINER, ANN_ENDPOINT, ANN_NAME};
use super::env::CalicoIp;
use super::events::{DockerEvent, EventFollower, NetworkAction};
use super::plugin::NETWORK_DRIVER_NAME;
use crate::dataplane::workload::add_gateway_neighbour;

/// A plugin endpoint joined this recently is never collected by a resync: the listing
/// may predate it.
const JOIN_GRACE: Duration = Duration::from_secs(60);
/// How often containers whose handling failed (etcd unreachable...) are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(3);

/// The event loop; runs until the follower stops.
pub async fn run(ctx: Arc<Ctx>, mut follower: EventFollower) {
    let mut retry: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(RETRY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = follower.next() => {
                let Some(ev) = ev else { return };
                handle(&ctx, ev, &mut retry).await;
                ctx.kick.notify_one();
            }
            _ = tick.tick(), if !retry.is_empty() => {
                let ids: Vec<String> = retry.drain().collect();
                let Ok(client) = ctx.client().await else {
                    retry.extend(ids);
                    continue;
                };
                for id in ids {
                    match client.inspect_container(&id).await {
                        Ok(Some(info)) => {
                            ctx.note_container(&info);
                            if let Err(e) = started(&ctx, &info).await {
                                warn!(container = %info.name, error = %format!("{e:#}"), "still cannot handle the container; will retry");
                                retry.insert(id);
                            }
                        }
                        Ok(None) => {}
                        Err(_) => {
                            ctx.client_failed().await;
                            retry.insert(id);
                        }
                    }
                }
                ctx.kick.notify_one();
            }
        }
    }
}

async fn handle(ctx: &Arc<Ctx>, ev: DockerEvent, retry: &mut HashSet<String>) {
    match ev {
        DockerEvent::Resync(list) => {
            {
                let mut st = ctx.state();
                st.containers.clear();
                st.synced = true;
            }
            for info in &list {
                ctx.note_container(info);
            }
            for info in &list {
                if let Err(e) = started(ctx, info).await {
                    warn!(container = %info.name, error = %format!("{e:#}"), "could not handle the container; will retry");
                    retry.insert(info.id.clone());
                }
            }
            if let Err(e) = collect(ctx, &list).await {
                warn!(error = %format!("{e:#}"), "could not compare Docker-owned Containers with dockerd");
            }
        }
        DockerEvent::Start(info) => {
            ctx.note_container(&info);
            if let Err(e) = started(ctx, &info).await {
                warn!(container = %info.name, error = %format!("{e:#}"), "could not handle the container; will retry");
                retry.insert(info.id.clone());
            }
        }
        DockerEvent::Die { id, .. } => {
            if let Some(s) = ctx.state().containers.get_mut(&id) {
                s.running = false;
                s.pid = None;
            }
        }
        DockerEvent::Destroy { id, name } => {
            ctx.state().containers.remove(&id);
            retry.remove(&id);
            if let Err(e) = destroyed(ctx, &id, &name).await {
                warn!(container = %name, error = %format!("{e:#}"), "could not delete the container's Container resource");
            }
        }
        DockerEvent::Network {
            action: NetworkAction::Create,
            network_id,
            name,
            driver,
            ..
        } if driver == NETWORK_DRIVER_NAME => {
            if let Err(e) = network_created(ctx, &network_id, &name).await {
                warn!(network = %name, error = %format!("{e:#}"), "could not set up the network's group");
            }
        }
        DockerEvent::Network {
            action: NetworkAction::Connect,
            container: Some(cid),
            driver,
            ..
        } if driver == NETWORK_DRIVER_NAME => {
            // `docker network connect` to a running container: no start event follows.
            let info = match ctx.client().await {
                Ok(c) => c.inspect_container(&cid).await.ok().flatten(),
                Err(_) => None,
            };
            if let Some(info) = info {
                if let Err(e) = plugin_container(ctx, &info).await {
                    debug!(container = %info.name, error = %format!("{e:#}"), "could not annotate the endpoint");
                }
            }
        }
        _ => {}
    }
}

/// A container that exists (running or not): the seed path, and plugin endpoints.
async fn started(ctx: &Arc<Ctx>, info: &ContainerInfo) -> anyhow::Result<()> {
    seed_container(ctx, info).await?;
    plugin_container(ctx, info).await
}

async fn seed_container(ctx: &Arc<Ctx>, info: &ContainerInfo) -> anyhow::Result<()> {
    let req = match info.seed_request() {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) => {
            warn!(container = %info.name, id = short(&info.id), error = %e, "not networking the container: fix its CALICO_* environment");
            return Ok(());
        }
    };
    let name = seed_name(&info.id);
    if let Some(Resource::Container(c)) = ctx.store.get(Kind::Container, &name).await? {
        if c.spec.container.as_deref() == Some(info.id.as_str()) {
            return Ok(());
        }
        warn!(container = %info.name, resource = %name, "a Container of that name exists for another container; leaving both alone");
        return Ok(());
    }
    let ips = match &req.ip {
        CalicoIp::Auto => None,
        CalicoIp::Addresses(a) => Some(a.clone()),
    };
    if let Some(ips) = &ips {
        let pools = ctx.pools().await?;
        for ip in ips {
            if in_enabled_pool(&pools, *ip).is_none() {
                warn!(container = %info.name, %ip, resource = %name,
                    "CALICO_IP {ip} is in no enabled IPPool: refused, the container gets no Calico interface (see `calicoctl get container {name} -o wide`)");
            }
        }
    }
    for g in &req.groups {
        ctx.ensure_group(g).await?;
    }
    let mut c = object(
        Kind::Container,
        name.clone(),
        ContainerSpec {
            node: ctx.node.clone(),
            container: Some(info.id.clone()),
            ips,
            groups: req.groups.clone(),
            ..Default::default()
        },
    );
    let ann = &mut c.metadata.annotations;
    ann.insert(OWNER_ANNOTATION.into(), OWNER_DOCKER.into());
    ann.insert(ANN_CONTAINER.into(), info.id.clone());
    ann.insert(ANN_NAME.into(), info.name.clone());
    match ctx
        .store
        .write(&[Resource::Container(c)], WriteMode::Create, None, false)
        .await
    {
        Ok(_) => {
            info!(container = %info.name, resource = %name, ip = ?req.ip, groups = ?req.groups, "networking a CALICO_IP container");
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("writing Container {name}")),
    }
}

/// Plugin endpoints of `info`: record which container they belong to, and make sure
/// the gateway's neighbour entry is in the running container.
async fn plugin_container(ctx: &Arc<Ctx>, info: &ContainerInfo) -> anyhow::Result<()> {
    let mine: Vec<(String, Vec<std::net::IpAddr>)> = {
        let st = ctx.state();
        info.networks
            .values()
            .filter_map(|n| {
                st.endpoints
                    .get(&n.endpoint_id)
                    .map(|e| (e.name.clone(), e.ips.clone()))
            })
            .collect()
    };
    for (name, ips) in mine {
        let (id, cname) = (info.id.clone(), info.name.clone());
        let res = ctx
            .store
            .update(Kind::Container, &name, move |r| {
                let Resource::Container(c) = r else {
                    return Err("not a Container".into());
                };
                let a = &mut c.metadata.annotations;
                let changed = a.get(ANN_CONTAINER) != Some(&id) || a.get(ANN_NAME) != Some(&cname);
                a.insert(ANN_CONTAINER.into(), id.clone());
                a.insert(ANN_NAME.into(), cname.clone());
                Ok(changed)
            })
            .await;
        match res {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("annotating Container {name}")),
        }
        if let Some(ns) = info.netns_path() {
            for ip in ips {
                if let Err(e) = add_gateway_neighbour(std::path::Path::new(&ns), ip).await {
                    debug!(container = %info.name, error = %format!("{e:#}"), "gateway neighbour");
                }
            }
        }
    }
    Ok(())
}

async fn destroyed(ctx: &Arc<Ctx>, id: &str, name: &str) -> anyhow::Result<()> {
    let res = seed_name(id);
    if let Some(Resource::Container(c)) = ctx.store.get(Kind::Container, &res).await? {
        if is_docker_owned(&c) && c.spec.container.as_deref() == Some(id) && ctx.delete_container(&res).await? {
            info!(container = %name, resource = %res, "container removed; deleted its Container (its address is released)");
        }
    }
    Ok(())
}

async fn network_created(ctx: &Arc<Ctx>, id: &str, name: &str) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let Some(net) = client.inspect_network(id).await? else {
        return Ok(());
    };
    let group = net.group().to_string();
    if !calico_schema::validate::is_valid_name(&group) {
        warn!(network = %name, "the network's name is not a valid group name; containers cannot join it (recreate it with -o group=NAME)");
        return Ok(());
    }
    ctx.ensure_group(&group).await?;
    ctx.record_network(id, &group, name).await
}

/// After a listing: Docker-owned Containers of this node whose container (seed path)
/// or endpoint (plugin path) Docker no longer has are deleted, and plugin addresses
/// released (Docker removed them while the agent was away).
async fn collect(ctx: &Arc<Ctx>, list: &[ContainerInfo]) -> anyhow::Result<()> {
    let ids: HashSet<&str> = list.iter().map(|c| c.id.as_str()).collect();
    let endpoints: HashSet<&str> = list
        .iter()
        .flat_map(|c| c.networks.values().map(|n| n.endpoint_id.as_str()))
        .collect();
    let recent: HashMap<String, bool> = ctx
        .state()
        .endpoints
        .iter()
        .map(|(e, ep)| {
            (
                e.clone(),
                ep.joined.is_some_and(|t| t.elapsed() < JOIN_GRACE) || ep.sandbox.is_none(),
            )
        })
        .collect();
    for c in ctx.docker_containers().await? {
        let name = c.metadata.name.clone();
        if let Some(eid) = c.metadata.annotations.get(ANN_ENDPOINT) {
            if endpoints.contains(eid.as_str()) || recent.get(eid).copied().unwrap_or(false) {
                continue;
            }
            info!(resource = %name, endpoint = short(eid), "Docker no longer has the endpoint; deleting its Container and releasing its address");
            ctx.delete_container(&name).await?;
            ctx.ipam.release_handle(&container_handle(&name)).await?;
            {
                let mut st = ctx.state();
                st.endpoints.remove(eid);
                st.addresses.retain(|_, n| *n != name);
            }
            let cfg = ctx.cluster_config().await?;
            let host_if = calico_render::host_iface_name(cfg.interface_prefix(), &name);
            ctx.plumber().await?.teardown(&host_if).await?;
        } else if let Some(id) = c.spec.container.as_deref() {
            if c.metadata.annotations.contains_key(ANN_CONTAINER) && !ids.contains(id) {
                info!(resource = %name, container = short(id), "Docker no longer has the container; deleting its Container");
                ctx.delete_container(&name).await?;
            }
        }
    }
    Ok(())
}
