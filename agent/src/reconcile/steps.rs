//! The steps that make the plan so, one method each, in the order
//! [`Reconciler::reconcile`] runs them. Each step goes through the [`Dataplane`] or
//! [`AddressManager`] trait only, and collects its failures into the [`Report`] instead
//! of stopping: the steps after it still run (a failed route sync must not keep the
//! ruleset from being loaded), and the loop retries what failed.
//!
//! The nftables step is in [`super::nft`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use calico_render::RouteSpec;
use calico_schema::{Container, ContainerStatus, EndpointState};
use futures::StreamExt;
use tracing::info;

use super::plan::{self, status, AddressMemory, Addresses, Inputs};
use super::{
    container_handle, AddressManager, Dataplane, PlannedWorkload, Reconciler, Report, StepError, WorkloadResolver,
    PLUMB_CONCURRENCY,
};
use crate::cache::Cache;

impl<D: Dataplane, A: AddressManager, R: WorkloadResolver> Reconciler<D, A, R> {
    /// 0. Host-wide settings. A failure is reported and retried, but does not stop the
    ///    rest: workloads on hosts that need no iptables change still work.
    pub(super) async fn host_step(&mut self, prefix: &str, report: &mut Report) {
        if !self.host_checked {
            match self.dp.ensure_host(prefix).await {
                Ok(()) => self.host_checked = true,
                Err(e) => report.errors.push(format!("host settings: {e}")),
            }
        }
    }

    /// 1. Release the addresses of this node's Containers that are gone, first, so that
    ///    what they free is available to the assignments of the next step.
    pub(super) async fn release_step(&mut self, cache: &Cache, containers: &[&Container], report: &mut Report) {
        if !cache.synced {
            return;
        }
        let stale: Vec<String> = plan::stale_handles(cache, &self.node, containers)
            .into_iter()
            .filter(|h| !self.ipam.spare(h))
            .collect();
        for h in stale {
            match self.ipam.release(&h).await {
                Ok(()) => info!(handle = %h, "released the addresses of a deleted Container"),
                Err(e) => report.errors.push(format!("release {h}: {e}")),
            }
        }
        // Addresses a live Container's spec no longer lists.
        for c in containers {
            let gone = plan::surplus(cache, &self.node, c);
            if gone.is_empty() {
                continue;
            }
            let h = container_handle(&c.metadata.name);
            match self.ipam.release_ips(&h, &gone).await {
                Ok(()) => info!(handle = %h, ips = ?gone, "released addresses the Container no longer lists"),
                Err(e) => report.errors.push(format!("release {gone:?} of {h}: {e}")),
            }
        }
        let names: BTreeSet<&String> = containers.iter().map(|c| &c.metadata.name).collect();
        self.claimed.retain(|n, _| names.contains(n));
        self.assigned.retain(|n, _| names.contains(n));
    }

    /// 2. Addresses: explicit ones claimed, the others assigned; every Container's
    ///    addresses (cluster-wide) feed the group and selector sets. A local Container
    ///    IPAM failed for gets an error status (and so is not plumbed, and cut off).
    pub(super) async fn address_step(
        &mut self,
        cache: &Cache,
        input: &Inputs,
        containers: &[&Container],
        statuses: &mut BTreeMap<String, ContainerStatus>,
        report: &mut Report,
    ) -> BTreeMap<String, Vec<IpAddr>> {
        let ipam_started = Instant::now();
        let mut addrs: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for c in containers {
            let name = c.metadata.name.clone();
            let handle = container_handle(&name);
            let local = c.spec.node == self.node;
            let memory = AddressMemory {
                claimed: &self.claimed,
                assigned: &self.assigned,
            };
            let result = match plan::addresses(&self.node, c, cache, &memory) {
                Addresses::Known(ips) => Ok(ips),
                Addresses::Claimed(ips) => {
                    self.claimed.insert(name.clone(), ips.clone());
                    Ok(ips)
                }
                Addresses::Recorded(ips) => {
                    self.assigned.remove(&name);
                    Ok(ips)
                }
                Addresses::Claim(ips) => match self.ipam.assign_ips(&handle, &self.node, &ips, &input.pools).await {
                    Ok(()) => {
                        self.claimed.insert(name.clone(), ips.clone());
                        Ok(ips)
                    }
                    Err(e) => Err(e.0),
                },
                Addresses::Assign => {
                    let r = self.ipam.auto_assign(&handle, &self.node, &input.pools).await;
                    if let Ok(ips) = &r {
                        self.assigned.insert(name.clone(), ips.clone());
                    }
                    r.map_err(|e| e.0)
                }
            };
            match result {
                Ok(ips) => {
                    addrs.insert(name, ips);
                }
                Err(e) if local => {
                    // Not plumbed (below) and so cut off; retried with backoff.
                    report.errors.push(format!("IPAM for {name}: {e}"));
                    statuses.insert(
                        name,
                        status(&self.node, "", &[], EndpointState::Error, format!("IPAM: {e}")),
                    );
                }
                Err(_) => {}
            }
        }
        report.ipam_duration = ipam_started.elapsed();
        addrs
    }

    /// 3. Workloads of this node: set up what is new or changed (several at once), keep
    ///    what is unchanged, remove interfaces with our prefix that nothing wants.
    pub(super) async fn workload_step(
        &mut self,
        cache: &Cache,
        prefix: &str,
        desired: &BTreeMap<String, PlannedWorkload>,
        statuses: &mut BTreeMap<String, ContainerStatus>,
        report: &mut Report,
    ) {
        // What exists now, listed only when a check is due (the first reconcile, every
        // full resync, after a failure): listing every interface costs O(endpoints)
        // (about 30 ms at 1k), which a one-endpoint change must not pay. Between
        // checks, what was set up is trusted; a workload whose namespace was deleted
        // behind our back is noticed at the next resync, which sets every workload up
        // again. The listing also shows which remembered plumbing vanished (a workload
        // namespace deleted takes its veth with it), which must not stay marked as good.
        let list = !self.workloads_listed && (cache.synced || !self.plumbed.is_empty());
        let existing = if list {
            match self.dp.list_workloads(prefix).await {
                Ok(l) => {
                    // Only a listing with the whole cache lets leftovers be removed below.
                    self.workloads_listed = cache.synced;
                    Some(l.into_iter().collect::<BTreeSet<String>>())
                }
                Err(e) => {
                    report.errors.push(format!("list workloads: {e}"));
                    None
                }
            }
        } else {
            None
        };
        if let Some(existing) = &existing {
            self.plumbed.retain(|ifname, w| {
                let present = existing.contains(ifname) || w.netns.is_none();
                if !present {
                    info!(%ifname, workload = %w.name, "workload interface vanished; plumbing it again");
                }
                present
            });
        }
        let mut to_plumb = Vec::new();
        for (ifname, w) in desired {
            if self.plumbed.get(ifname) == Some(w) {
                statuses.insert(
                    w.name.clone(),
                    status(&self.node, ifname, &w.ips, EndpointState::Programmed, String::new()),
                );
            } else {
                to_plumb.push(w);
            }
        }
        // Several at once: each setup mostly waits on the kernel (netlink round trips,
        // namespace threads), so a full resync of many workloads is not a long queue.
        let t = Instant::now();
        let dp = &self.dp;
        let results: Vec<(&PlannedWorkload, Result<(), StepError>)> = futures::stream::iter(to_plumb)
            .map(|w| async move { (w, dp.setup_workload(w).await) })
            .buffer_unordered(PLUMB_CONCURRENCY)
            .collect()
            .await;
        report.plumb_duration = t.elapsed();
        report.plumbed = results.len();
        for (w, result) in results {
            let ifname = &w.host_ifname;
            match result {
                Ok(()) => {
                    self.plumbed.insert(ifname.clone(), w.clone());
                    statuses.insert(
                        w.name.clone(),
                        status(&self.node, ifname, &w.ips, EndpointState::Programmed, String::new()),
                    );
                }
                Err(e) => {
                    self.plumbed.remove(ifname);
                    self.workloads_listed = false;
                    statuses.insert(
                        w.name.clone(),
                        status(&self.node, ifname, &w.ips, EndpointState::Error, e.0.clone()),
                    );
                    report.errors.push(format!("workload {}: {e}", w.name));
                }
            }
        }
        // Interfaces with our prefix that nothing wants any more: with a listing, every
        // one of them (leftovers of an earlier run too); without, those this agent set
        // up. Only with the whole cache: a partial view must never remove live
        // workloads.
        if cache.synced {
            let unwanted: Vec<String> = match &existing {
                Some(existing) => existing.iter().filter(|i| !desired.contains_key(*i)).cloned().collect(),
                None if list => Vec::new(), // the listing failed: remove nothing now
                None => self
                    .plumbed
                    .keys()
                    .filter(|i| !desired.contains_key(*i))
                    .cloned()
                    .collect(),
            };
            for ifname in unwanted {
                match self.dp.teardown_workload(&ifname).await {
                    Ok(()) => {
                        info!(%ifname, "removed a workload interface nothing wants");
                        self.plumbed.remove(&ifname);
                    }
                    Err(e) => {
                        self.workloads_listed = false;
                        report.errors.push(format!("teardown {ifname}: {e}"));
                    }
                }
            }
        }
        self.plumbed.retain(|i, _| desired.contains_key(i));
    }

    /// 4b. The routes carrying our protocol number, synced only when they changed (a
    ///    full resync and a failure sync them again): a sync lists every link and route
    ///    of the host, about 2 s at 10k endpoints.
    pub(super) async fn routes_step(&mut self, routes: Vec<RouteSpec>, report: &mut Report) {
        if self.last_routes.as_ref() == Some(&routes) {
            return;
        }
        match self.dp.apply_routes(&routes).await {
            Ok(()) => self.last_routes = Some(routes),
            Err(e) => {
                self.last_routes = None;
                report.errors.push(format!("routes: {e}"));
            }
        }
    }

    /// 4c. bird.conf, installed only when it changed (a full resync installs it again).
    pub(super) async fn bird_step(&mut self, bird: Result<String, impl std::fmt::Display>, report: &mut Report) {
        match bird {
            Ok(bird) if self.last_bird.as_deref() != Some(bird.as_str()) => match self.dp.apply_bird(&bird).await {
                Ok(()) => self.last_bird = Some(bird),
                Err(e) => report.errors.push(format!("bird: {e}")),
            },
            Ok(_) => {}
            Err(e) => report.errors.push(format!("bird.conf: {e}")),
        }
    }

    /// 5. Statuses: remembers this reconcile's, counts them into the report, and returns
    ///    those that changed (for the caller to write to etcd).
    pub(super) fn status_step(
        &mut self,
        statuses: BTreeMap<String, ContainerStatus>,
        report: &mut Report,
    ) -> Vec<(String, Option<ContainerStatus>)> {
        let changed = plan::changed_statuses(&self.last_statuses, &statuses);
        self.last_statuses = statuses;
        report.programmed = self
            .last_statuses
            .values()
            .filter(|s| s.state == EndpointState::Programmed)
            .count();
        report.failed = self
            .last_statuses
            .values()
            .filter(|s| s.state == EndpointState::Error)
            .count();
        changed
    }
}
