//! `apply --wait`: returns when every node's agent has enforced the change, that is
//! when the revision its dataplane enforces (`status/nodes/NODE` enforcedRevision, set
//! by each error-free reconcile) has reached the change's revision.
//!
//! Every live agent is waited for: each watches the whole desired state and reconciles
//! every change, because a Container's change alters the member sets on every node that
//! names its groups. An agent that has not reported for longer than [`ALIVE`] is not
//! waited for and is named as such (a node whose agent is stopped would otherwise make
//! every wait time out).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use calico_schema::{now_secs, AgentStatus};

use crate::conn::Ctx;
use crate::observed::agent_statuses;

/// An agent reports after every reconcile and at least every resync (30 s by default);
/// one silent for longer than this is taken for stopped.
pub const ALIVE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

/// Why a node is not yet at `revision`, in words.
fn behind(node: &str, st: &AgentStatus, revision: i64) -> String {
    let why = if st.errors.is_empty() {
        "not reconciled yet".to_string()
    } else {
        st.errors.join("; ")
    };
    format!(
        "{node}: enforces revision {}, not {revision}: {why}",
        st.enforced_revision
    )
}

/// Waits until every live agent enforces `revision`, for at most `timeout`.
pub async fn enforced(ctx: &Ctx, revision: i64, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let now = now_secs();
        let statuses = agent_statuses(ctx).await?;
        let (live, stale): (Vec<_>, Vec<_>) = statuses
            .iter()
            .partition(|(_, st)| now.saturating_sub(st.last_reconcile) <= ALIVE.as_secs());
        let lagging: Vec<String> = live
            .iter()
            .filter(|(_, st)| st.enforced_revision < revision)
            .map(|(node, st)| behind(node, st, revision))
            .collect();
        if lagging.is_empty() {
            let nodes: Vec<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
            let took = started.elapsed().as_secs_f64();
            if nodes.is_empty() {
                println!("enforced: no agent is running (nothing to wait for)");
            } else {
                println!("enforced on {} in {took:.1}s", nodes.join(", "));
            }
            for (node, st) in &stale {
                println!(
                    "not waited for: {node} (its agent last reported {}s ago)",
                    now.saturating_sub(st.last_reconcile)
                );
            }
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bail!(
                "not enforced everywhere within {:.0}s (revision {revision}):\n{}",
                timeout.as_secs_f64(),
                lagging.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
