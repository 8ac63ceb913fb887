//! calicoctl: the calico-docker command line.
//!
//! Exit codes: 0 success; 1 an error (each on its own line on stderr); 2 a usage error
//! (clap). `diff` alone differs: 0 no changes, 1 changes, 2 an error.
//!
//! Modules are of two sorts. Command modules run one command or a family of them:
//! `apply`, `delete`, `get`, `groups`, `ipam_cmd`, `node`, `status`, `diags`,
//! `reset`, `render_cmd`, `sync`, `master`. Shared modules serve them: `cli`, `args`,
//! `checks`, `conn`, `input`, `output`, `observed`, `resolve`, `docker_lookup`, `hostcmd`,
//! `run_dir`, `agent_proc`, `agent_http`, `birdc`, `textdiff`. A command module uses
//! shared modules only, never another command module: a helper two commands need moves
//! to a shared module. Shared modules never use command modules. The one exception:
//! `master` is built on `sync`'s engine (it runs a `Syncer` per directory, with sync's
//! ids, logging and shutdown), so it imports `sync`; `sync` never imports `master`.

// Product code handles every failure; panics are for tests (and test support).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod agent_http;
mod agent_proc;
mod apply;
mod args;
mod birdc;
mod checks;
mod cli;
mod confined;
mod conn;
mod delete;
mod desired;
mod diags;
mod docker_lookup;
mod explain;
mod get;
mod groups;
mod hostcmd;
mod in_docker;
mod input;
mod ipam_cmd;
mod master;
mod node;
mod observed;
mod output;
mod probe;
mod reach;
mod render_cmd;
mod reset;
mod resolve;
mod run_dir;
mod status;
mod sync;
mod textdiff;
mod version;
mod wait;

use std::process::ExitCode;

use anyhow::Result;
use calico_store::WriteMode;
use clap::{FromArgMatches, Parser, Subcommand};

use crate::cli::{Command, GlobalOpts};

#[derive(Debug, Parser)]
#[command(
    name = "calicoctl",
    version,
    about = "calico-docker: routable IPs and security groups for Docker containers",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    #[command(flatten)]
    Ctl(Command),
    /// Print the nftables ruleset, routes and bird.conf a node would get
    Render(render_cmd::RenderArgs),
    /// Why a packet from SRC to DST is allowed or dropped: the rule that decides it in
    /// each direction (exit 0: allowed, 1: dropped, 2: error)
    Explain(explain::ExplainArgs),
    /// Who can reach whom among the selected Containers: a table, JSON or an SVG picture;
    /// with --probe, checked with real packets (exit 1 when a packet disagrees)
    Reach(reach::ReachArgs),
    /// Register this host's Node and start its agent; `node stop` stops it
    Node(node::NodeArgs),
    /// This host's agent, its BGP sessions and its endpoints
    Status(status::StatusArgs),
    /// Show, check and repair IP address management
    Ipam(ipam_cmd::IpamArgs),
    /// Delete everything calico-docker keeps in etcd (/calico/v1/)
    Reset(reset::ResetArgs),
    /// Write a .tar.gz of logs, ruleset, routes, BIRD state and a datastore dump
    Diags(diags::DiagsArgs),
    /// Keep a directory of YAML files applied (GitOps); `sync status` shows its last result
    Sync(sync::SyncArgs),
    /// Run the cluster controller: directory sync and IPAM garbage collection, one leader at a time
    Master(master::MasterArgs),
    /// Print a shell completion script: `source <(calicoctl completion bash)`
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write man pages (calicoctl.1 and one per command, calicoctl-apply.1 ...) into DIR
    Man {
        /// Where to write them (created if missing), e.g. /usr/local/share/man/man1
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// Commands that never contact etcd, and those that look up Docker containers.
const OFFLINE: [&str; 4] = ["validate", "schema", "completion", "man"];
const USES_DOCKER: [&str; 6] = ["addtogroup", "removefromgroup", "node", "master", "explain", "reach"];
const ETCD_OPTIONS: [&str; 5] = ["etcd", "etcd_ca", "etcd_cert", "etcd_key", "timeout"];

/// The command line as parsed and as shown by help, completions and man pages. The
/// connection options are global, so `calicoctl --etcd X CMD` works for every command,
/// but each command's help shows them only where the command uses them.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let global = |id: &str| cmd.get_arguments().find(|a| a.get_id() == id).cloned();
    let etcd: Vec<clap::Arg> = ETCD_OPTIONS.iter().filter_map(|id| global(id)).collect();
    let docker: Vec<clap::Arg> = global("docker_host").into_iter().collect();
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        let mut hidden: Vec<clap::Arg> = Vec::new();
        if OFFLINE.contains(&name.as_str()) {
            hidden.extend(etcd.iter().cloned());
        }
        if !USES_DOCKER.contains(&name.as_str()) {
            hidden.extend(docker.iter().cloned());
        }
        // clap propagates a global option only into subcommands that lack one of the same
        // id, so a hidden copy here is what this command and those below it get. It is
        // still global: its value reaches the top-level GlobalOpts as before.
        cmd = cmd.mut_subcommand(name, |sc| sc.args(hidden.into_iter().map(|a| a.hide(true))));
    }
    cmd
}

/// The exit codes of a command that answers a yes/no question (diff, explain): 0 yes,
/// 1 no, 2 an error (reported here, so that it is not confused with "no").
fn answer_exit(answer: Result<bool>) -> Result<()> {
    match answer {
        Ok(true) => Ok(()),
        Ok(false) => Err(Exit(1).into()),
        Err(e) => {
            report(&e);
            Err(Exit(2).into())
        }
    }
}

/// Several independent errors, reported one per line.
#[derive(Debug)]
pub struct Lines(pub Vec<String>);

impl std::fmt::Display for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for Lines {}

/// Ends the program with this code and nothing printed (`diff` found changes).
#[derive(Debug)]
struct Exit(u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        TopCommand::Ctl(cmd) => match cmd {
            Command::Apply(a) => apply::write(g, &a, WriteMode::Apply).await,
            Command::Create(a) => apply::write(g, &a, WriteMode::Create).await,
            Command::Replace(a) => apply::write(g, &a, WriteMode::Replace).await,
            Command::Delete(a) => delete::run(g, &a).await,
            Command::Get(a) => get::run(g, &a).await,
            // diff(1)'s codes: 0 same, 1 different.
            Command::Diff(a) => answer_exit(apply::diff(g, &a).await.map(|changed| !changed)),
            Command::Validate(a) => apply::validate(&a),
            Command::Schema => {
                print!("{}", calico_schema::schema_text());
                Ok(())
            }
            Command::Version(a) => version::run(g, &a).await,
            Command::Addgroup { group } => groups::addgroup(g, &group).await,
            Command::Removegroup { group, force } => groups::removegroup(g, &group, force).await,
            Command::Showgroups { detailed } => groups::showgroups(g, detailed).await,
            Command::Addtogroup {
                container,
                group,
                force,
            } => groups::addtogroup(g, &container, &group, force).await,
            Command::Removefromgroup {
                container,
                group,
                force,
            } => groups::removefromgroup(g, &container, &group, force).await,
        },
        TopCommand::Render(a) => render_cmd::run(g, &a).await,
        TopCommand::Explain(a) => answer_exit(explain::run(g, &a).await),
        TopCommand::Reach(a) => answer_exit(reach::run(g, &a).await),
        TopCommand::Node(a) => node::run(g, &a).await,
        TopCommand::Status(a) => status::run(g, &a).await,
        TopCommand::Ipam(a) => ipam_cmd::run(g, &a).await,
        TopCommand::Reset(a) => reset::run(g, &a).await,
        TopCommand::Diags(a) => diags::diags(g, &a).await,
        TopCommand::Sync(a) => sync::run(g, &a).await,
        TopCommand::Master(a) => master::run(g, &a).await,
        TopCommand::Completion { shell } => {
            // Into a buffer, then print!: a closed stdout then ends us quietly (above).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "calicoctl", &mut script);
            print!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        TopCommand::Man { dir } => write_man_pages(command(), &dir),
    }
}

/// One man page for calicoctl and one for each command below it (`calicoctl-node-stop.1`),
/// from the same definitions as `--help` and the completions.
fn write_man_pages(cmd: clap::Command, dir: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = 0;
    let mut stack = vec![(String::from("calicoctl"), cmd.name("calicoctl"))];
    while let Some((name, cmd)) = stack.pop() {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_name = format!("{name}-{}", sub.get_name());
            stack.push((sub_name.clone(), sub.clone().name(sub_name)));
        }
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .with_context(|| format!("render {name}.1"))?;
        std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))?;
        written += 1;
    }
    println!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

/// A command whose reader goes away (`calicoctl get all -o yaml | head`) ends quietly, as
/// Unix tools do, instead of reporting a broken pipe. SIGPIPE itself stays ignored (Rust's
/// default): sockets are written with writev, and a peer closing one (a server that is
/// not etcd, a connection reset) must be an error the command reports, not a signal
/// that kills it. So only the one failure that means "the reader of stdout is gone",
/// print!'s panic on a broken pipe, is turned into SIGPIPE's default action.
fn end_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            use nix::sys::signal::{raise, signal, SigHandler, Signal};
            // SAFETY: resets one signal's action to the default, then raises it: the
            // process ends here, as `head`'s writer would.
            let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
            let _ = raise(Signal::SIGPIPE);
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Prints an error: input diagnostics as they are (`file:line:col: field: message`),
/// anything else as `error: ...`, one line per error.
fn report(e: &anyhow::Error) {
    if let Some(d) = e.downcast_ref::<input::InputErrors>() {
        eprintln!("{d}");
        return;
    }
    let text = format!("{e:#}");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("error: {line}");
    }
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    end_quietly_when_stdout_closes();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // Never wait for leftover background work (an etcd reconnect loop...) on the way out.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            report(&e);
            ExitCode::FAILURE
        }
    }
}
