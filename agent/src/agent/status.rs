//! The status writer: after each reconcile, the Container statuses that changed go to
//! etcd (`status/containers/NAME`), and the agent's own status is updated where the
//! HTTP endpoint serves it (/status, /readyz) and written to `status/nodes/NODE`.
//!
//! Fail static: when etcd does not answer, the dataplane keeps its state and the
//! statuses are remembered as not written, to be written by a later reconcile.

use std::sync::Arc;

use calico_schema::{now_secs, AgentStatus, ContainerStatus};
use calico_store::Store;
use tokio::sync::Mutex;
use tracing::warn;

use crate::reconcile::Report;

/// Container status writes in flight at once.
const STATUS_WRITE_BATCH: usize = 32;

/// The agent status shared with the HTTP endpoint.
pub(crate) type SharedStatus = Arc<Mutex<AgentStatus>>;

/// What the dataplane says about BIRD, for the agent status.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BirdState {
    pub restarts: u64,
    pub pid: Option<u32>,
    pub adopted: bool,
}

/// The outcome of writing the Container statuses.
#[derive(Debug, Default)]
pub(crate) struct ContainerWrites {
    /// Containers whose status was not written (to be written again).
    pub not_written: Vec<String>,
    /// A write failed (etcd down or refusing).
    pub failed: bool,
}

pub(crate) struct StatusWriter {
    store: Store,
    node: String,
    shared: SharedStatus,
}

impl StatusWriter {
    pub(crate) fn new(store: Store, node: String, shared: SharedStatus) -> StatusWriter {
        StatusWriter { store, node, shared }
    }

    /// Writes the changed Container statuses (`None`: delete), several at once. After a
    /// failed batch (etcd down) the rest are not tried, only returned as not written, so
    /// an outage costs one timeout per reconcile. `written` hears of each status etcd
    /// took (the Docker Join waits for its Container's).
    pub(crate) async fn containers(
        &self,
        changed: Vec<(String, Option<ContainerStatus>)>,
        written: &(dyn Fn(&str, Option<&ContainerStatus>) + Sync),
    ) -> ContainerWrites {
        let mut out = ContainerWrites::default();
        let mut changed = changed.into_iter().peekable();
        while changed.peek().is_some() {
            let batch: Vec<_> = changed.by_ref().take(STATUS_WRITE_BATCH).collect();
            if out.failed {
                out.not_written.extend(batch.into_iter().map(|(name, _)| name));
                continue;
            }
            let results = futures::future::join_all(batch.iter().map(|(name, st)| {
                let store = &self.store;
                async move {
                    let key = format!("status/containers/{name}");
                    match st {
                        Some(s) => store.put_json(&key, s).await.map(|_| ()),
                        None => store.delete_json(&key).await,
                    }
                }
            }))
            .await;
            for ((name, st), res) in batch.iter().zip(results) {
                if res.is_ok() {
                    written(name, st.as_ref());
                }
                if let Err(e) = res {
                    warn!(container = %name, error = %e, "could not write status; will retry");
                    out.not_written.push(name.clone());
                    out.failed = true;
                }
            }
        }
        out
    }

    /// Updates the shared agent status from the reconcile of the desired state at
    /// `revision` and writes it to etcd, unless the Container statuses could not be
    /// written. Returns whether etcd took both. An error-free reconcile enforces its
    /// revision (`apply --wait` waits for it); one with errors leaves the last one.
    pub(crate) async fn agent(
        &self,
        report: &Report,
        invalid: &[(String, String)],
        bird: BirdState,
        containers_written: bool,
        revision: i64,
    ) -> bool {
        let mut st = self.shared.lock().await;
        st.ready = report.errors.is_empty();
        if st.ready {
            st.enforced_revision = st.enforced_revision.max(revision);
        }
        st.last_reconcile = now_secs();
        st.endpoints_programmed = report.programmed;
        st.endpoints_failed = report.failed;
        st.errors = report.errors.clone();
        st.invalid_data = invalid.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        st.bird_restarts = bird.restarts;
        st.bird_pid = bird.pid;
        st.bird_adopted = bird.adopted;
        st.datastore_ok = containers_written;
        if st.datastore_ok {
            if let Err(e) = self.store.put_json(&format!("status/nodes/{}", self.node), &*st).await {
                warn!(error = %e, "could not write agent status");
                st.datastore_ok = false;
            }
        }
        st.datastore_ok
    }
}
