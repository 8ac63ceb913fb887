//! `calicoctl reset`: delete everything calico-docker keeps in etcd (/calico/v1/) and,
//! unless `--datastore-only`, what it put on this host outside etcd (our nftables table
//! and iptables chain), in the agent's network namespace.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use calico_store::PREFIX;
use clap::Args;

use crate::cli::GlobalOpts;
use crate::conn::Ctx;
use crate::hostcmd::{run_cmd, run_cmd_input};
use crate::run_dir::{AgentFiles, RunDir, RunDirArg};

#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// Do not ask; required when standard input is not a terminal
    #[arg(long)]
    pub yes: bool,
    /// The run directory of this host's agent: its record says which network namespace
    /// holds the dataplane to clean
    #[command(flatten)]
    pub dirs: RunDirArg,
    /// Only delete the keys in etcd; leave this host's nftables table and iptables
    /// chain in place
    #[arg(long)]
    pub datastore_only: bool,
}

pub async fn run(g: &GlobalOpts, args: &ResetArgs) -> Result<()> {
    let ctx = Ctx::connect(g).await?;
    let count = ctx.store.count_prefix(PREFIX).await.context("count keys")?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("reset deletes all {count} keys under {PREFIX}; standard input is not a terminal, so pass --yes");
        }
        eprint!(
            "This deletes every resource, IPAM allocation and status under {PREFIX} in etcd at {} ({count} keys). Type 'yes' to go on: ",
            ctx.cfg.endpoints.join(",")
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("not confirmed; nothing deleted");
        }
    }
    let deleted = ctx.store.delete_prefix(PREFIX).await.context("delete keys")?;
    println!("Deleted {deleted} keys under {PREFIX}");
    if args.datastore_only {
        return Ok(());
    }
    clean_host(&RunDir(args.dirs.run_dir.clone()))
}

/// Removes what calico-docker put on this host outside etcd: the nftables table
/// `inet calico` and the iptables FORWARD accept chain (IPv4 and IPv6), in the agent's
/// network namespace. Not while an agent runs there: it keeps its dataplane (fail
/// static) and would put both back.
fn clean_host(run: &RunDir) -> Result<()> {
    if let Some(pid) = run.agent().running() {
        println!(
            "The agent for {} is running (pid {pid}) and keeps this host's dataplane; \
             stop it with `calicoctl node stop --run-dir {}` and run reset again to remove it",
            run.0.display(),
            run.0.display()
        );
        return Ok(());
    }
    let netns = run.read_record().and_then(|r| r.netns);
    let ns = netns.as_deref();
    let mut errors = Vec::new();
    if run_cmd(ns, &["nft", "list", "table", "inet", calico_render::TABLE_NAME]).is_ok() {
        match run_cmd(ns, &["nft", "delete", "table", "inet", calico_render::TABLE_NAME]) {
            Ok(_) => println!("Removed nftables table inet {}", calico_render::TABLE_NAME),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        let listed = match run_cmd(ns, &[save, "-t", "filter"]) {
            Ok(text) => text,
            // No iptables on this host: nothing of ours can be there.
            Err(_) if !crate::hostcmd::have(save) => continue,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        if let Some(input) = calico_render::iptables::remove_forward(&listed) {
            match run_cmd_input(ns, &[restore, "-w", "--noflush"], Some(&input)) {
                Ok(_) => println!(
                    "Removed the iptables chain {} ({save})",
                    calico_render::iptables::FORWARD_CHAIN
                ),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    if !errors.is_empty() {
        bail!("could not clean this host: {}", errors.join("; "));
    }
    Ok(())
}
