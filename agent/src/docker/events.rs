//! Following dockerd: container start/die/destroy and network events as one stream
//! (inspecting is [`super::client`]'s, the seed's environment [`super::env`]'s).
//!
//! [`EventFollower`] keeps a connection to dockerd's event stream and, every time it
//! (re)connects, first sends a [`DockerEvent::Resync`] listing every container, so a
//! consumer that treats Resync as the whole truth misses nothing across dockerd or
//! agent restarts. Events may repeat around a reconnect (the stream is replayed from
//! just before the listing): consumers must be idempotent.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use calico_schema::DEFAULT_DOCKER_HOST;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::{ContainerInfo, DockerClient, DockerError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkAction {
    Create,
    Destroy,
    Connect,
    Disconnect,
}

/// What the follower reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerEvent {
    /// Sent on every (re)connect before any event: every container dockerd has,
    /// running or stopped. Authoritative: a container not listed no longer exists.
    Resync(Vec<ContainerInfo>),
    /// A container started (inspected just after the event).
    Start(ContainerInfo),
    /// A container's process exited (stop, kill, crash); it may start again.
    Die { id: String, name: String },
    /// A container was removed (`docker rm`).
    Destroy { id: String, name: String },
    /// A network changed; `container` is set for connect/disconnect.
    Network {
        action: NetworkAction,
        network_id: String,
        name: String,
        driver: String,
        container: Option<String>,
    },
}

/// How to follow dockerd.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// `unix:///var/run/docker.sock`, or a private dockerd's socket.
    pub docker_host: String,
    /// First retry delay after losing dockerd; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl EventsConfig {
    pub fn new(docker_host: impl Into<String>) -> EventsConfig {
        EventsConfig {
            docker_host: docker_host.into(),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig::new(DEFAULT_DOCKER_HOST)
    }
}

/// A background task following dockerd. Dropping it stops the task.
pub struct EventFollower {
    rx: mpsc::Receiver<DockerEvent>,
    task: JoinHandle<()>,
}

impl EventFollower {
    /// Start following; the first item is a Resync once dockerd answers. The task
    /// retries forever (with backoff) while dockerd is away.
    pub fn spawn(config: EventsConfig) -> EventFollower {
        // Small buffer: a slow consumer should slow the follower, not grow memory.
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(follow(config, tx));
        EventFollower { rx, task }
    }

    /// The next event; `None` only after [`EventFollower::stop`].
    pub async fn next(&mut self) -> Option<DockerEvent> {
        self.rx.recv().await
    }

    pub fn stop(&mut self) {
        self.task.abort();
        self.rx.close();
    }
}

impl Drop for EventFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a session with dockerd ended.
enum SessionEnd {
    /// The consumer is gone: stop for good.
    Closed,
    /// dockerd went away or misbehaved; `synced` says whether this session got as far
    /// as sending its Resync (then the next retry starts from the short delay again).
    Lost { error: DockerError, synced: bool },
}

async fn follow(config: EventsConfig, tx: mpsc::Sender<DockerEvent>) {
    let mut delay = config.min_backoff;
    loop {
        match session(&config, &tx).await {
            SessionEnd::Closed => return,
            SessionEnd::Lost { error, synced } => {
                if synced {
                    delay = config.min_backoff;
                }
                tracing::warn!(host = %config.docker_host, error = %error, retry_in_ms = delay.as_millis() as u64, "lost dockerd; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return,
                }
                delay = (delay * 2).min(config.max_backoff);
            }
        }
    }
}

async fn session(config: &EventsConfig, tx: &mpsc::Sender<DockerEvent>) -> SessionEnd {
    let lost = |error, synced| SessionEnd::Lost { error, synced };
    let client = match DockerClient::connect(&config.docker_host).await {
        Ok(c) => c,
        Err(e) => return lost(e, false),
    };
    // Replay events from a second before the listing: whatever happens while we list
    // is seen either in the listing or as an event (or both).
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(1))
        .unwrap_or(0);
    let containers = match client.list_containers().await {
        Ok(c) => c,
        Err(e) => return lost(e, false),
    };
    tracing::info!(host = %config.docker_host, containers = containers.len(), "connected to dockerd; resync");
    if tx.send(DockerEvent::Resync(containers)).await.is_err() {
        return SessionEnd::Closed;
    }

    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string(), "network".to_string()]),
        (
            "event".to_string(),
            ["start", "die", "destroy", "create", "connect", "disconnect"]
                .map(String::from)
                .to_vec(),
        ),
    ]);
    let opts = EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    };
    let mut stream = client.raw().events(Some(opts));
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = tx.closed() => return SessionEnd::Closed,
        };
        let msg = match msg {
            None => return lost(DockerError::StreamEnded, true),
            Some(Err(source)) => {
                return lost(
                    DockerError::Api {
                        what: "reading the event stream".into(),
                        source,
                    },
                    true,
                )
            }
            Some(Ok(msg)) => msg,
        };
        let event = match translate(&client, msg).await {
            Ok(Some(ev)) => ev,
            Ok(None) => continue,
            Err(e) => return lost(e, true),
        };
        tracing::debug!(?event, "docker event");
        if tx.send(event).await.is_err() {
            return SessionEnd::Closed;
        }
    }
}

/// Turn a raw event into ours; `None` for events we do not report.
async fn translate(client: &DockerClient, msg: EventMessage) -> Result<Option<DockerEvent>, DockerError> {
    let action = msg.action.unwrap_or_default();
    let actor = msg.actor.unwrap_or_default();
    let id = actor.id.unwrap_or_default();
    let mut attrs = actor.attributes.unwrap_or_default();
    let mut take = |k: &str| attrs.remove(k).unwrap_or_default();
    match msg.typ {
        Some(EventMessageTypeEnum::CONTAINER) => match action.as_str() {
            "start" => match client.inspect_container(&id).await? {
                Some(info) => Ok(Some(DockerEvent::Start(info))),
                // Already removed again: its destroy event follows.
                None => Ok(None),
            },
            "die" => Ok(Some(DockerEvent::Die { id, name: take("name") })),
            "destroy" => Ok(Some(DockerEvent::Destroy { id, name: take("name") })),
            _ => Ok(None),
        },
        Some(EventMessageTypeEnum::NETWORK) => {
            let action = match action.as_str() {
                "create" => NetworkAction::Create,
                "destroy" => NetworkAction::Destroy,
                "connect" => NetworkAction::Connect,
                "disconnect" => NetworkAction::Disconnect,
                _ => return Ok(None),
            };
            let container = attrs.remove("container");
            Ok(Some(DockerEvent::Network {
                action,
                network_id: id,
                name: attrs.remove("name").unwrap_or_default(),
                driver: attrs.remove("type").unwrap_or_default(),
                container,
            }))
        }
        _ => Ok(None),
    }
}
