//! Connecting to etcd from the global options, with a hard deadline on every call so
//! that no command can hang when etcd is away.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use calico_store::{Store, StoreConfig, StoreError, TlsFiles};

use crate::cli::GlobalOpts;

pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:2379";
/// How much longer than the store's own timeout a call may take before we give up on it.
const SLACK: Duration = Duration::from_millis(1000);

/// The endpoint list: --etcd / ETCD_ENDPOINTS, else the seed's ETCD_AUTHORITY, else the default.
pub fn endpoints(g: &GlobalOpts) -> String {
    if let Some(e) = g.etcd.as_deref().filter(|e| !e.trim().is_empty()) {
        return e.trim().to_string();
    }
    match std::env::var("ETCD_AUTHORITY") {
        Ok(a) if !a.trim().is_empty() => a.trim().to_string(),
        _ => DEFAULT_ENDPOINTS.to_string(),
    }
}

pub fn store_config(g: &GlobalOpts) -> Result<StoreConfig> {
    if !(g.timeout.is_finite() && g.timeout > 0.0 && g.timeout <= 3600.0) {
        bail!(
            "--timeout must be a number of seconds between 0 and 3600, not {}",
            g.timeout
        );
    }
    let mut cfg = StoreConfig::from_list(&endpoints(g));
    if cfg.endpoints.is_empty() {
        bail!("--etcd names no endpoint");
    }
    cfg.timeout = Duration::from_secs_f64(g.timeout);
    if g.etcd_ca.is_some() || g.etcd_cert.is_some() || g.etcd_key.is_some() {
        if g.etcd_cert.is_some() != g.etcd_key.is_some() {
            bail!("--etcd-cert and --etcd-key go together");
        }
        cfg.tls = Some(TlsFiles {
            ca: g.etcd_ca.clone(),
            cert: g.etcd_cert.clone(),
            key: g.etcd_key.clone(),
        });
    }
    Ok(cfg)
}

/// A connected store plus what is needed to explain failures.
pub struct Ctx {
    pub store: Store,
    pub cfg: StoreConfig,
}

impl Ctx {
    pub async fn connect(g: &GlobalOpts) -> Result<Ctx> {
        let cfg = store_config(g)?;
        let store = deadline(&cfg, "connect", Store::connect(&cfg)).await?;
        Ok(Ctx { store, cfg })
    }

    /// Runs one store call with the deadline, turning store errors into user messages.
    pub async fn call<T>(&self, what: &str, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T> {
        deadline(&self.cfg, what, fut).await
    }
}

async fn deadline<T>(cfg: &StoreConfig, what: &str, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T> {
    match tokio::time::timeout(cfg.timeout + SLACK, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_error(cfg, e)),
        Err(_) => Err(anyhow::anyhow!(
            "etcd at {} did not answer within {:.1}s ({what})",
            cfg.endpoints.join(","),
            cfg.timeout.as_secs_f64()
        )),
    }
}

/// Store errors as one line each. Unavailability always names the endpoints, whatever
/// the store's own message says.
pub fn store_error(cfg: &StoreConfig, e: StoreError) -> anyhow::Error {
    match &e {
        StoreError::Unavailable { .. } => {
            let eps = cfg.endpoints.join(",");
            let msg = e.to_string();
            if msg.contains(&eps) || cfg.endpoints.iter().all(|ep| msg.contains(ep.as_str())) {
                anyhow::anyhow!("{msg}")
            } else {
                anyhow::anyhow!("etcd at {eps} is unavailable: {msg}")
            }
        }
        _ => anyhow::Error::new(e),
    }
}
