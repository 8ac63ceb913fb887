//! How to reach etcd: endpoints, a timeout, optional TLS files.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::{EtcdFailure, StoreError};

/// PEM files for TLS to etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where etcd is and how long to wait for it.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `host:port` or `http(s)://host:port`.
    pub endpoints: Vec<String>,
    /// Bounds connecting and every single request, so nothing the store does can hang.
    pub timeout: Duration,
    pub tls: Option<TlsFiles>,
}

/// Five seconds: long enough for a loaded etcd to answer, short enough that a user
/// whose etcd is down gets an answer before giving up on the command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl StoreConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        StoreConfig {
            endpoints,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
        }
    }

    /// Parses the seed's `--etcd` / `ETCD_ENDPOINTS` form: `a:1,b:2` (spaces and empty
    /// items are ignored, so a trailing comma does no harm).
    pub fn from_list(s: &str) -> Self {
        StoreConfig::new(
            s.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    /// The endpoints as they appear in messages.
    pub(crate) fn endpoints_text(&self) -> String {
        if self.endpoints.is_empty() {
            "(no endpoints)".to_string()
        } else {
            self.endpoints.join(",")
        }
    }

    /// Whether the connection is TLS: explicitly configured files, or any https:// endpoint.
    fn uses_tls(&self) -> bool {
        self.tls.is_some() || self.endpoints.iter().any(|e| e.trim().starts_with("https://"))
    }

    /// The endpoints as URLs with an explicit scheme. With TLS on, every endpoint uses
    /// https: etcd-client refuses to mix TLS options with http:// URLs, and a user who
    /// gave CA/cert/key files plainly wants TLS.
    pub(crate) fn urls(&self) -> Vec<String> {
        let tls = self.uses_tls();
        self.endpoints
            .iter()
            .map(|e| {
                let bare = host_port(e);
                if tls {
                    if e.trim().starts_with("http://") {
                        tracing::warn!(endpoint = %e, "TLS is configured; connecting with https");
                    }
                    format!("https://{bare}")
                } else {
                    format!("http://{bare}")
                }
            })
            .collect()
    }

    /// etcd-client options: the timeout on connect and on each request, HTTP/2
    /// keep-alive so a watch on a silently dead connection is noticed, and TLS.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        // Keep-alive pings every 10 s (at least the timeout) and give up after the
        // timeout: a dead peer is noticed in well under a minute without flooding etcd,
        // which answers too-frequent pings with GOAWAY.
        let interval = self.timeout.max(Duration::from_secs(10));
        let mut o = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(interval, self.timeout)
            .with_keep_alive_while_idle(true);
        if self.uses_tls() {
            o = o.with_tls(self.tls_options()?);
        }
        Ok(o)
    }

    fn tls_options(&self) -> Result<TlsOptions, StoreError> {
        let mut t = TlsOptions::new();
        let Some(files) = &self.tls else {
            return Ok(t);
        };
        if let Some(ca) = &files.ca {
            t = t.ca_certificate(Certificate::from_pem(read_pem("CA", ca)?));
        }
        match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                t = t.identity(Identity::from_pem(
                    read_pem("certificate", cert)?,
                    read_pem("key", key)?,
                ));
            }
            (None, None) => {}
            // A certificate without its key (or the reverse) cannot authenticate; say so
            // now rather than let etcd reject the handshake with a vaguer message.
            _ => {
                return Err(StoreError::Etcd(EtcdFailure::new(
                    "the TLS client certificate and key must be given together",
                )))
            }
        }
        Ok(t)
    }
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| {
        StoreError::Etcd(EtcdFailure::new(format!(
            "cannot read the TLS {what} file {}: {e}",
            path.display()
        )))
    })
}

/// `host:port` of an endpoint given with or without a scheme (and without any path).
pub(crate) fn host_port(endpoint: &str) -> &str {
    let e = endpoint.trim();
    let e = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .unwrap_or(e);
    e.split('/').next().unwrap_or(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_list_splits_and_trims() {
        let c = StoreConfig::from_list(" a:1, http://b:2 ,,");
        assert_eq!(c.endpoints, vec!["a:1", "http://b:2"]);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.urls(), vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn tls_makes_every_endpoint_https() {
        let mut c = StoreConfig::from_list("a:1,http://b:2/");
        c.tls = Some(TlsFiles::default());
        assert_eq!(c.urls(), vec!["https://a:1", "https://b:2"]);
        let c = StoreConfig::from_list("https://a:1,b:2");
        assert_eq!(c.urls(), vec!["https://a:1", "https://b:2"]);
    }

    #[test]
    fn cert_without_key_is_an_error() {
        let mut c = StoreConfig::from_list("a:1");
        c.tls = Some(TlsFiles {
            cert: Some("/nonexistent".into()),
            ..Default::default()
        });
        assert!(matches!(c.connect_options(), Err(StoreError::Etcd(_))));
    }
}
