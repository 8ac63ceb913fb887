//! Connecting to etcd from the global options, and store errors in the words a user
//! needs. Every store call is already bounded by `--timeout` inside calico-store (a
//! timed-out call is `Unavailable`: "etcd at ... is unreachable: no answer within ..."),
//! so nothing here adds a deadline of its own.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use calico_store::{Store, StoreConfig, StoreError, TlsFiles};

use crate::cli::GlobalOpts;

pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:2379";

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
        let store = Store::connect(&cfg).await.map_err(|e| store_error(&cfg, e))?;
        Ok(Ctx { store, cfg })
    }

    /// Awaits one store call, turning store errors into user messages; `what` names the
    /// call in the debug log.
    pub async fn call<T>(&self, what: &str, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T> {
        fut.await.map_err(|e| {
            tracing::debug!(call = what, error = %e, "store call failed");
            store_error(&self.cfg, e)
        })
    }
}

/// Store errors as one line each. Unavailability always names the endpoints, whatever
/// the store's own message says.
pub fn store_error(cfg: &StoreConfig, e: StoreError) -> anyhow::Error {
    match &e {
        StoreError::Unavailable { .. } => {
            let eps = cfg.endpoints.join(",");
            let mut msg = e.to_string();
            // A server that wants a client certificate answers a handshake without one
            // with an alert, or (TLS 1.3) by closing the connection after it; only we know
            // whether we sent one.
            if let Some(tls) = &cfg.tls {
                let refused_cert = ["BadCertificate", "CertificateRequired", "UnknownCA"]
                    .iter()
                    .any(|a| msg.contains(a));
                if tls.cert.is_none() && (refused_cert || msg.contains("connection closed")) {
                    msg.push_str(
                        " (TLS without a client certificate: if etcd asks for one, give --etcd-cert and --etcd-key)",
                    );
                } else if tls.cert.is_some() && refused_cert {
                    msg.push_str(" (etcd refused the client certificate of --etcd-cert: is it signed by the CA etcd trusts, its --trusted-ca-file?)");
                }
            }
            if msg.contains(&eps) || cfg.endpoints.iter().all(|ep| msg.contains(ep.as_str())) {
                anyhow::anyhow!("{msg}")
            } else {
                anyhow::anyhow!("etcd at {eps} is unavailable: {msg}")
            }
        }
        _ => anyhow::Error::new(e),
    }
}
