//! `calico-node`: the per-host agent. Usually started by `calicoctl node`; run it
//! directly (in the foreground) under a service manager.

// Product code handles every failure; panics are for tests (and test support).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use calico_agent::agent::{run, AgentConfig, LogControl};
use calico_store::StoreConfig;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "calico-node", version, about = "calico-docker node agent")]
struct Args {
    /// This node's name (its Node resource).
    #[arg(long, env = "CALICO_NODE_NAME")]
    name: String,
    /// etcd endpoints, HOST:PORT[,HOST:PORT...], as calicoctl's --etcd.
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_name = "HOST:PORT[,...]"
    )]
    etcd: String,
    /// CA certificate to verify etcd's server certificate (enables TLS).
    #[arg(long, env = "ETCD_CA_CERT_FILE", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (enables TLS; needs --etcd-key).
    #[arg(long, env = "ETCD_CERT_FILE", value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Client key for etcd (enables TLS; needs --etcd-cert).
    #[arg(long, env = "ETCD_KEY_FILE", value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Bound on connecting to etcd and on each request, in seconds (calicoctl's name and
    /// environment variable; --etcd-timeout is the older name).
    #[arg(
        long = "timeout",
        alias = "etcd-timeout",
        env = "CALICO_TIMEOUT",
        default_value_t = 5.0,
        value_name = "SECONDS"
    )]
    etcd_timeout: f64,
    /// Program the dataplane of this network namespace instead of our own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// BIRD's config, control socket and pid file go here.
    #[arg(long, default_value = calico_schema::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Local HTTP endpoint for /healthz, /readyz, /metrics (empty: none).
    #[arg(long, default_value = "127.0.0.1:9099")]
    http: String,
    /// Full resync period in seconds.
    #[arg(long, default_value_t = 30)]
    resync: u64,
    /// dockerd's API socket (unix:///path): turns on the Docker integration (the `calico`
    /// and `calico-ipam` plugins, CALICO_IP containers). Default: unix:///var/run/docker.sock
    /// when it exists and --netns is not given; `none`: off.
    #[arg(long, value_name = "unix:///PATH")]
    docker_host: Option<String>,
    /// Where the Docker plugin sockets go (calico.sock, calico-ipam.sock); dockerd looks
    /// in /run/docker/plugins.
    #[arg(long, default_value = calico_agent::docker::DEFAULT_PLUGIN_DIR)]
    plugin_dir: PathBuf,
    /// Log filter (tracing env-filter syntax), e.g. info or calico_agent=debug. Without
    /// it (and without CALICO_LOG) the agent follows ClusterConfig's logLevel (info
    /// until it has read it).
    #[arg(long, env = "CALICO_LOG")]
    log: Option<String>,
    /// Also append the log to this file (stdout keeps it too). `calicoctl node --docker`
    /// gives <log-dir>/calico-node.log, so `docker logs` and `calicoctl status` both
    /// have it.
    #[arg(long, env = "CALICO_LOG_FILE", value_name = "FILE")]
    log_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let args = Args::parse();
    let log_control = init_logging(args.log.as_deref(), args.log_file.as_deref())?;
    write_pid_file(&args.run_dir)?;
    let mut etcd = StoreConfig::from_list(&args.etcd);
    etcd.timeout = Duration::try_from_secs_f64(args.etcd_timeout.max(0.1))
        .map_err(|_| anyhow::anyhow!("--timeout must be a number of seconds"))?;
    if etcd.endpoints.is_empty() {
        anyhow::bail!("--etcd names no endpoint");
    }
    if args.etcd_ca.is_some() || args.etcd_cert.is_some() {
        // Read now, so a wrong path fails at start with its name, not as a retry loop.
        for f in [&args.etcd_ca, &args.etcd_cert, &args.etcd_key].into_iter().flatten() {
            std::fs::metadata(f).with_context(|| format!("etcd TLS file {}", f.display()))?;
        }
        etcd.tls = Some(calico_store::TlsFiles {
            ca: args.etcd_ca,
            cert: args.etcd_cert,
            key: args.etcd_key,
        });
    }
    let http_listen: Option<SocketAddr> = if args.http.is_empty() {
        None
    } else {
        Some(args.http.parse().context("--http must be HOST:PORT")?)
    };
    let docker =
        calico_agent::docker::DockerConfig::from_flags(args.docker_host, args.plugin_dir, args.netns.is_none());
    let cfg = AgentConfig {
        node: args.name,
        etcd,
        host_netns: args.netns,
        run_dir: args.run_dir,
        http_listen,
        resync: Duration::from_secs(args.resync.max(1)),
        debounce: Duration::from_millis(20),
        docker,
        log_control,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        run(cfg, rx).await
    })
}

/// glibc gives threads their own malloc arenas (up to 8 per core). The agent starts
/// many short-lived threads (each namespace switch happens on its own thread), and
/// every arena keeps its own free memory: a few shared arenas keep the resident size
/// close to what is live. `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// The agent's own pid in `<run-dir>/calico-node.pid`, by temp file and rename. `calicoctl
/// node` writes it too, but an agent that Docker restarted (`node --docker`) has a new
/// pid that only the agent knows.
fn write_pid_file(run_dir: &std::path::Path) -> anyhow::Result<()> {
    let run = calico_schema::RunDir(run_dir.to_path_buf());
    std::fs::create_dir_all(run_dir).with_context(|| format!("create run dir {}", run_dir.display()))?;
    let pid_file = run.agent_pid();
    let tmp = pid_file.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, &pid_file))
        .with_context(|| format!("write {}", pid_file.display()))
}

/// Logs to stdout (and, with `--log-file`, appends to that file) through a filter that
/// can be swapped at run time. With `--log` (or CALICO_LOG) the filter is fixed and None
/// is returned; otherwise the agent sets it from ClusterConfig's logLevel through the
/// returned control.
fn init_logging(fixed: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<Option<LogControl>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter = EnvFilter::try_new(fixed.unwrap_or("info")).context("--log")?;
    let (filter, handle) = reload::Layer::new(filter);
    let file_layer = match file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("--log-file: create {}", dir.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--log-file {}", path.display()))?;
            Some(fmt::layer().with_ansi(false).with_writer(std::sync::Mutex::new(f)))
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_ansi(false))
        .with(file_layer)
        .init();
    if fixed.is_some() {
        return Ok(None);
    }
    Ok(Some(LogControl::new(move |level| {
        handle.reload(EnvFilter::new(level.as_str())).map_err(|e| e.to_string())
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP endpoint (/metrics, /status) is for the host itself: unless --http says
    /// otherwise it listens on loopback only (docs/security.md).
    #[test]
    fn http_listens_on_loopback_by_default() {
        let args = Args::try_parse_from(["calico-node", "--name", "n1"]).expect("parse");
        let addr: SocketAddr = args.http.parse().expect("a HOST:PORT");
        assert!(addr.ip().is_loopback(), "{addr}");
        let args = Args::try_parse_from(["calico-node", "--name", "n1", "--http", "0.0.0.0:9099"]).expect("parse");
        assert_eq!(args.http, "0.0.0.0:9099", "told otherwise, it listens where told");
    }
}
