//! What the agents report in etcd, read for `get` (a Container's state) and `status`
//! (the agent's own report and its endpoints): one reader per status key.

use std::collections::BTreeMap;

use anyhow::Result;
use calico_schema::{AgentStatus, ContainerStatus};

use crate::conn::Ctx;

pub const STATUS_CONTAINERS: &str = "status/containers/";

/// The key an agent writes its own status at.
pub fn agent_status_key(node: &str) -> String {
    format!("status/nodes/{node}")
}

/// The observed state of Containers, by Container name. Undecodable entries are skipped.
pub async fn container_status(ctx: &Ctx) -> Result<BTreeMap<String, ContainerStatus>> {
    let entries = ctx
        .call("read status", ctx.store.list_json::<ContainerStatus>(STATUS_CONTAINERS))
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|(key, st)| {
            let name = key.rsplit('/').next().unwrap_or(&key).to_string();
            st.ok().map(|s| (name, s))
        })
        .collect())
}

/// The agent of `node`'s last report, if it has written one.
pub async fn agent_status(ctx: &Ctx, node: &str) -> Result<Option<AgentStatus>> {
    ctx.call(
        "read agent status",
        ctx.store.get_json::<AgentStatus>(&agent_status_key(node)),
    )
    .await
}

/// Every agent's last report, by node. Undecodable entries are skipped.
pub async fn agent_statuses(ctx: &Ctx) -> Result<BTreeMap<String, AgentStatus>> {
    let entries = ctx
        .call("read agent status", ctx.store.list_json::<AgentStatus>("status/nodes/"))
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|(key, st)| {
            let node = key.rsplit('/').next().unwrap_or(&key).to_string();
            st.ok().map(|s| (node, s))
        })
        .collect())
}
