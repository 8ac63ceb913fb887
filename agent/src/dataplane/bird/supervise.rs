//! Supervising one BIRD: started as our child in the host's namespace, restarted with
//! backoff when it exits, stopped or left running (detached) when the agent stops.

use std::fs::OpenOptions;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::super::netns::{ns_label, run_in_netns_async};
use super::{birdc, io_err, parse_protocols, BirdControl, BirdError, BirdOptions, BirdProtocol};

#[derive(Debug, Default)]
struct SupervisorState {
    pid: Option<u32>,
    restarts: u64,
    last_exit: Option<String>,
}

/// Keeps one BIRD running: starts `bird -f -c CONF -s SOCK [-P PID]`,
/// restarts it with backoff when it exits, kills it when dropped.
///
/// BIRD runs in the foreground as our child so its exit is seen at once.
/// No parent-death signal is set: it would fire when the short-lived thread
/// that spawned BIRD (inside the namespace) exits, not when the agent does.
pub struct BirdSupervisor {
    opts: Arc<BirdOptions>,
    state: Arc<Mutex<SupervisorState>>,
    stop_tx: watch::Sender<StopMode>,
    task: Option<JoinHandle<()>>,
}

/// What the supervisor task is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopMode {
    Run,
    /// Stop BIRD and return.
    Stop,
    /// Return, leaving BIRD running (an agent restart must not withdraw routes).
    Detach,
}

fn lock(state: &Mutex<SupervisorState>) -> MutexGuard<'_, SupervisorState> {
    // The state is plain data, consistent after every statement: a panic
    // elsewhere cannot leave it half-written, so poisoning is ignored.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BirdSupervisor {
    /// Starts BIRD. Fails if the first start fails (missing binary, a BIRD
    /// already on the socket), not on later crashes, which are restarted.
    pub async fn start(opts: BirdOptions) -> Result<Self, BirdError> {
        if opts.socket.exists() && std::os::unix::net::UnixStream::connect(&opts.socket).is_ok() {
            return Err(BirdError::AlreadyRunning(opts.socket.clone()));
        }
        let opts = Arc::new(opts);
        let child = spawn_bird(&opts).await?;
        let state = Arc::new(Mutex::new(SupervisorState {
            pid: child.id(),
            ..Default::default()
        }));
        info!(pid = ?child.id(), config = %opts.config.display(), socket = %opts.socket.display(),
            netns = %ns_label(opts.netns.as_deref()), "bird started");
        let (stop_tx, stop_rx) = watch::channel(StopMode::Run);
        let task = tokio::spawn(supervise(opts.clone(), state.clone(), child, stop_rx));
        Ok(BirdSupervisor {
            opts,
            state,
            stop_tx,
            task: Some(task),
        })
    }

    pub fn options(&self) -> &BirdOptions {
        &self.opts
    }

    /// The running BIRD's pid, `None` while it is down between restarts.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.state).pid
    }

    pub fn restarts(&self) -> u64 {
        lock(&self.state).restarts
    }

    /// How the last BIRD exited, if one did.
    pub fn last_exit(&self) -> Option<String> {
        lock(&self.state).last_exit.clone()
    }

    /// Waits until BIRD answers on its control socket.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), BirdError> {
        let started = Instant::now();
        loop {
            if birdc(&self.opts.birdc, &self.opts.socket, &["show", "status"])
                .await
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(BirdError::NotReady {
                    socket: self.opts.socket.clone(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `birdc configure`: BIRD re-reads its config file (write it first with
    /// [`write_config`](super::write_config)). BIRD keeps the old config if the new one is bad.
    pub async fn reconfigure(&self) -> Result<(), BirdError> {
        let out = birdc(&self.opts.birdc, &self.opts.socket, &["configure"]).await?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") || out.contains("queueing") {
            info!("bird reconfigured");
            Ok(())
        } else {
            Err(BirdError::Unexpected {
                command: format!("birdc -s {} configure", self.opts.socket.display()),
                output: out.trim().to_string(),
            })
        }
    }

    pub async fn protocols(&self) -> Result<Vec<BirdProtocol>, BirdError> {
        let out = birdc(&self.opts.birdc, &self.opts.socket, &["show", "protocols", "all"]).await?;
        Ok(parse_protocols(&out))
    }

    /// Stops BIRD gracefully (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(StopMode::Stop);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops supervising but leaves BIRD running, with its socket and pid file, so
    /// the next agent can adopt it; returns its pid. For agent shutdown: stopping
    /// BIRD would withdraw this node's routes from its peers.
    pub async fn detach(mut self) -> Option<u32> {
        let pid = self.pid();
        let _ = self.stop_tx.send(StopMode::Detach);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        pid
    }
}

impl BirdControl for BirdSupervisor {
    async fn reconfigure(&self) -> Result<(), BirdError> {
        BirdSupervisor::reconfigure(self).await
    }

    async fn protocols(&self) -> Result<Vec<BirdProtocol>, BirdError> {
        BirdSupervisor::protocols(self).await
    }
}

impl Drop for BirdSupervisor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the task drops the Child, whose kill_on_drop SIGKILLs BIRD.
            task.abort();
            warn!("bird supervisor dropped without stop(); killing bird");
        }
    }
}

async fn spawn_bird(opts: &BirdOptions) -> Result<Child, BirdError> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "-f".into(),
        "-c".into(),
        opts.config.clone().into(),
        "-s".into(),
        opts.socket.clone().into(),
    ];
    if let Some(pid) = &opts.pid_file {
        args.push("-P".into());
        args.push(pid.clone().into());
    }
    let command = std::iter::once(opts.bird.display().to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let netns = ns_label(opts.netns.as_deref());
    let spawn_err = |source| BirdError::Spawn {
        command: command.clone(),
        netns: netns.clone(),
        source,
    };

    let (stdout, stderr) = match &opts.log {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_err("open bird log", path))?;
            let f2 = f.try_clone().map_err(io_err("open bird log", path))?;
            (Stdio::from(f), Stdio::from(f2))
        }
        None => (Stdio::piped(), Stdio::piped()),
    };
    let bird = opts.bird.clone();
    let rt = tokio::runtime::Handle::current();
    // Spawned from a thread inside the namespace: the child inherits it. The
    // runtime is entered there so tokio can watch the child's exit.
    let mut child = run_in_netns_async(opts.netns.as_deref(), move || {
        let _guard = rt.enter();
        Command::new(bird)
            .args(args)
            // Its own process group: a Ctrl-C meant for the agent must not reach
            // BIRD, which outlives agent restarts.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
    })
    .await?
    .map_err(spawn_err)?;

    for stream in [
        child.stdout.take().map(Either::Out),
        child.stderr.take().map(Either::Err),
    ]
    .into_iter()
    .flatten()
    {
        tokio::spawn(forward_output(stream));
    }
    Ok(child)
}

enum Either {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

async fn forward_output(stream: Either) {
    let mut lines: Box<dyn tokio::io::AsyncBufRead + Send + Unpin> = match stream {
        Either::Out(s) => Box::new(BufReader::new(s)),
        Either::Err(s) => Box::new(BufReader::new(s)),
    };
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => info!(target: "bird", "{}", line.trim_end()),
        }
    }
}

async fn supervise(
    opts: Arc<BirdOptions>,
    state: Arc<Mutex<SupervisorState>>,
    mut child: Child,
    mut stop_rx: watch::Receiver<StopMode>,
) {
    let mut backoff = opts.backoff_initial;
    let mut started = Instant::now();
    loop {
        tokio::select! {
            status = child.wait() => {
                let what = match &status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                {
                    let mut st = lock(&state);
                    st.pid = None;
                    st.last_exit = Some(what.clone());
                }
                if started.elapsed() >= opts.stable_after {
                    backoff = opts.backoff_initial;
                }
                warn!(exit = %what, restart_in = ?backoff, "bird exited");
            }
            _ = stop_rx.changed() => {
                if *stop_rx.borrow() == StopMode::Detach {
                    // Not dropped: its kill_on_drop would SIGKILL BIRD.
                    info!(pid = ?child.id(), "leaving bird running");
                    std::mem::forget(child);
                    return;
                }
                terminate(&mut child).await;
                lock(&state).pid = None;
                return;
            }
        }

        // Restart, retrying spawn failures with the same backoff.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_rx.changed() => return,
            }
            backoff = (backoff * 2).min(opts.backoff_max);
            match spawn_bird(&opts).await {
                Ok(c) => {
                    child = c;
                    started = Instant::now();
                    let mut st = lock(&state);
                    st.pid = child.id();
                    st.restarts += 1;
                    info!(pid = ?st.pid, restarts = st.restarts, "bird restarted");
                    break;
                }
                Err(e) => error!(error = %e, retry_in = ?backoff, "bird restart failed"),
            }
        }
    }
}

/// SIGTERM lets BIRD remove its socket and pid file; SIGKILL if it lingers.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            info!(exit = %status, "bird stopped");
            return;
        }
        warn!("bird ignored SIGTERM for 5 s; killing it");
    }
    let _ = child.kill().await;
}
