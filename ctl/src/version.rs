//! `calicoctl version`: calicoctl's own version and the versions of what it works with on
//! this host and cluster: the running agent (its /status), BIRD (`birdc show status`)
//! and the etcd member answering. Each one it cannot reach is printed as
//! `unknown: <why>`, so the command always succeeds and always says all four.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use calico_schema::AgentStatus;
use clap::Args;

use crate::agent_http;
use crate::birdc::birdc;
use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::run_dir::{AgentFiles, RunDir, RunDirArg};

#[derive(Args, Debug, Clone)]
pub struct VersionArgs {
    #[command(flatten)]
    pub dirs: RunDirArg,
}

pub async fn run(g: &GlobalOpts, args: &VersionArgs) -> Result<()> {
    let run = RunDir(args.dirs.run_dir.clone());
    let (agent, bird, etcd) = tokio::join!(agent_version(&run), bird_version(&run), etcd_version(g));
    println!("calicoctl {}", env!("CARGO_PKG_VERSION"));
    println!("API version {}", calico_schema::API_VERSION);
    println!("calico-node {}", known(agent));
    println!("BIRD {}", known(bird));
    println!("etcd {}", known(etcd));
    Ok(())
}

fn known(v: Result<String>) -> String {
    v.unwrap_or_else(|e| format!("unknown: {e:#}"))
}

/// The agent started from this run directory, asked on its HTTP address.
async fn agent_version(run: &RunDir) -> Result<String> {
    let record = run.read_record().ok_or_else(|| {
        anyhow!(
            "no agent record in {} (not started by `calicoctl node`?)",
            run.0.display()
        )
    })?;
    let http = record
        .http
        .ok_or_else(|| anyhow!("the agent in {} serves no HTTP", run.0.display()))?;
    let (code, body) = agent_http::get(&http, "/status", Duration::from_secs(2)).await?;
    if code != 200 {
        return Err(anyhow!("the agent at {http} answered /status with {code}"));
    }
    let status: AgentStatus =
        serde_json::from_str(&body).with_context(|| format!("the agent at {http} sent an unreadable /status"))?;
    Ok(status.version)
}

/// BIRD on this host's control socket: the first line of `show status` is `BIRD 2.0.12`.
async fn bird_version(run: &RunDir) -> Result<String> {
    let text = birdc(&run.bird_ctl(), &["show", "status"]).await?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("BIRD "))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("birdc's answer names no version"))
}

async fn etcd_version(g: &GlobalOpts) -> Result<String> {
    let ctx = Ctx::connect(g).await?;
    ctx.call("status", ctx.store.server_version()).await
}
