//! The `Store` handle: connecting (a TCP probe, then a read that proves etcd serves),
//! and every KV call through the one wrapper (timeout, re-send, error mapping).

use std::future::Future;
use std::sync::Arc;

use etcd_client::{Client, GetOptions, KvClient, Txn};

use crate::retry::{self, MAX_DECODE};
use crate::{config, error, StoreConfig, StoreError, PREFIX};

/// A handle on etcd. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    kv: KvClient,
    pub(crate) cfg: StoreConfig,
    endpoints: String,
}

impl Store {
    /// Connects and proves etcd answers. Fails with `Unavailable`, naming all endpoints,
    /// within `cfg.timeout` when none does.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let endpoints = cfg.endpoints_text();
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Unavailable {
                endpoints,
                detail: "no etcd endpoints were given".into(),
            });
        }
        let deadline = tokio::time::Instant::now() + cfg.timeout;
        let options = cfg.connect_options()?;

        // etcd-client connects lazily and its balancer can wait (rather than fail) while no
        // endpoint is up, so a down etcd might only show as a timeout. A plain TCP connect
        // first turns "connection refused" into an immediate, precise error.
        reachable(cfg, deadline).await?;

        let connect = Client::connect(cfg.urls(), Some(options));
        let client = match tokio::time::timeout_at(deadline, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(error::from_etcd(&endpoints, e)),
            Err(_) => return Err(error::timed_out(&endpoints, cfg.timeout)),
        };
        let kv = client.kv_client().max_decoding_message_size(MAX_DECODE);
        let store = Store {
            inner: Arc::new(Inner {
                client,
                kv,
                cfg: cfg.clone(),
                endpoints,
            }),
        };

        // One read proves etcd serves requests (TLS accepted, quorum present), not just
        // that a port is open.
        let probe =
            store.kv_call(|mut kv| async move { kv.get(PREFIX, Some(GetOptions::new().with_count_only())).await });
        match tokio::time::timeout_at(deadline, probe).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(error::timed_out(&store.inner.endpoints, cfg.timeout)),
        }
    }

    /// A clone of the etcd client, for code that needs etcd directly (IPAM).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The version the etcd member answering us reports (`etcdctl endpoint status`).
    pub async fn server_version(&self) -> Result<String, StoreError> {
        let status = self
            .call(|| {
                let mut m = self.inner.client.maintenance_client();
                async move { m.status().await }
            })
            .await?;
        Ok(status.version().to_string())
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    fn kv(&self) -> KvClient {
        self.inner.kv.clone()
    }

    /// Runs one etcd call bounded by the configured timeout. etcd-client's own timeout
    /// only starts once a connection is picked; while every endpoint is down its balancer
    /// can wait indefinitely, so this outer bound is what guarantees nothing hangs.
    pub(crate) async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match retry::call(self.inner.cfg.timeout, attempt).await {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(error::from_etcd(&self.inner.endpoints, e)),
            None => Err(error::timed_out(&self.inner.endpoints, self.inner.cfg.timeout)),
        }
    }

    /// [`Store::call`] with a fresh KV client per attempt.
    pub(crate) async fn kv_call<T, F, Fut>(&self, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(|| f(self.kv())).await
    }
}

/// One transaction attempt (the transaction is cloned: a retried attempt sends it anew).
pub(crate) fn kv_txn(
    mut kv: KvClient,
    txn: &Txn,
) -> impl Future<Output = Result<etcd_client::TxnResponse, etcd_client::Error>> + use<> {
    let txn = txn.clone();
    async move { kv.txn(txn).await }
}

/// Checks a TCP connection to some endpoint can be opened, trying all concurrently.
/// Succeeds as soon as one connects; fails with every endpoint's reason when none does.
async fn reachable(cfg: &StoreConfig, deadline: tokio::time::Instant) -> Result<(), StoreError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut attempts: FuturesUnordered<_> = cfg
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| async move {
            let hp = config::host_port(e);
            match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(hp)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err((i, format!("{hp}: {err}"))),
                Err(_) => Err((
                    i,
                    format!("{hp}: no TCP connection within {}", error::human(cfg.timeout)),
                )),
            }
        })
        .collect();
    let mut reasons = Vec::new();
    while let Some(r) = attempts.next().await {
        match r {
            Ok(()) => return Ok(()),
            Err(reason) => reasons.push(reason),
        }
    }
    // In the order the user gave the endpoints, not the order they failed in.
    reasons.sort();
    let reasons: Vec<String> = reasons.into_iter().map(|(_, r)| r).collect();
    Err(StoreError::Unavailable {
        endpoints: cfg.endpoints_text(),
        detail: reasons.join("; "),
    })
}
