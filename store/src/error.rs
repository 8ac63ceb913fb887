//! The store's one error type, and the one mapping of etcd-client's errors: the store's
//! [`StoreError`] and IPAM's `IpamError` are both built from [`classify`].

use std::time::Duration;

/// Everything that can go wrong talking to the datastore. Callers branch on the variant
/// (retry on `Stale`, report `Conflict`/`NotFound` to the user, fail static on
/// `Unavailable`), so the variants say what happened, not where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd at {endpoints} is unreachable: {detail}")]
    Unavailable { endpoints: String, detail: String },
    /// A resourceVersion mismatch, a create of an existing resource, a replace of a missing one.
    #[error("conflict on {id}: {detail}")]
    Conflict { id: String, detail: String },
    #[error("{id} not found")]
    NotFound { id: String },
    /// A guard revision failed: the caller re-reads, re-validates and retries.
    #[error("stored state changed since it was validated")]
    Stale,
    /// Every attempt of a [`crate::Store::transact`] found the state changed under it.
    #[error("etcd kept changing while {what}: gave up after {attempts} attempts; try again")]
    KeptChanging { what: String, attempts: u32 },
    #[error("invalid data at {key}: {detail}")]
    Invalid { key: String, detail: String },
    #[error("etcd: {0}")]
    Etcd(EtcdFailure),
}

impl StoreError {
    /// The etcd-client error this one was mapped from, when it was.
    pub fn etcd_error(&self) -> Option<&etcd_client::Error> {
        match self {
            StoreError::Etcd(f) => f.etcd_error(),
            _ => None,
        }
    }
}

/// A failure other than unreachability (etcd refused the request, a TLS file is
/// unreadable, an answer made no sense): the text users see, and the etcd-client error
/// it came from, kept for callers that inspect it. The text already summarises that
/// error (its message and root cause), so the error is not also offered as
/// `Error::source`: the binaries print whole source chains (`{:#}`), which would then
/// say everything twice. Derefs to the text.
#[derive(Debug)]
pub struct EtcdFailure {
    text: String,
    source: Option<etcd_client::Error>,
}

impl EtcdFailure {
    /// A failure that did not come from etcd-client.
    pub(crate) fn new(text: impl Into<String>) -> EtcdFailure {
        EtcdFailure {
            text: text.into(),
            source: None,
        }
    }

    /// The etcd-client error behind it, if any.
    pub fn etcd_error(&self) -> Option<&etcd_client::Error> {
        self.source.as_ref()
    }

    /// The same failure with `note` after its text (a hint on what to change).
    pub(crate) fn noted(mut self, note: &str) -> EtcdFailure {
        self.text = format!("{} ({note})", self.text);
        self
    }

    /// The same failure with what was being done before its text.
    pub(crate) fn during(mut self, what: &str) -> EtcdFailure {
        self.text = format!("{what}: {}", self.text);
        self
    }
}

impl std::ops::Deref for EtcdFailure {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for EtcdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// What an etcd-client error means for whoever made the call.
pub(crate) enum Failure {
    /// etcd could not be reached (or has no leader): the detail says how.
    Unavailable(String),
    /// etcd answered and refused, or the client failed otherwise.
    Refused(EtcdFailure),
}

/// Maps an etcd-client error to a StoreError. Transport trouble becomes `Unavailable`
/// naming every endpoint, because the user's fix is the same whichever one failed:
/// check `--etcd` and that etcd runs.
pub(crate) fn from_etcd(endpoints: &str, e: etcd_client::Error) -> StoreError {
    match classify(e) {
        Failure::Unavailable(detail) => StoreError::Unavailable {
            endpoints: endpoints.to_string(),
            detail,
        },
        Failure::Refused(f) => StoreError::Etcd(f),
    }
}

/// The one reading of an etcd-client error: unreachable or refused, and the words for it.
pub(crate) fn classify(e: etcd_client::Error) -> Failure {
    match classify_raw(e) {
        Failure::Unavailable(text) => Failure::Unavailable(with_tls_hint(text)),
        refused => refused,
    }
}

/// rustls names certificate problems by their enum variant (`UnsupportedCertVersion`,
/// `UnknownIssuer`...); say what is wrong and what fixes it.
fn with_tls_hint(text: String) -> String {
    const NOT_NAMED: &str =
        "etcd's certificate does not name the host or IP in --etcd: add it to the certificate's subjectAltName";
    const HINTS: [(&str, &str); 6] = [
        (
            "UnsupportedCertVersion",
            "a certificate etcd presented is X.509 v1; TLS here takes only v3 certificates: reissue it with extensions (openssl x509 -req ... -extfile with a subjectAltName line)",
        ),
        (
            "UnknownIssuer",
            "etcd's certificate is not signed by the CA given with --etcd-ca",
        ),
        (
            "BadSignature",
            "etcd's certificate is not signed by the CA given with --etcd-ca (its signature does not verify)",
        ),
        ("NotValidForName", NOT_NAMED),
        ("certificate not valid for name", NOT_NAMED),
        ("Expired", "a certificate has expired"),
    ];
    match HINTS.iter().find(|(k, _)| text.contains(k)) {
        Some((_, hint)) => format!("{text} ({hint})"),
        None => text,
    }
}

fn classify_raw(e: etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    // gRPC status codes are fixed by the gRPC spec; naming them here avoids a direct
    // tonic dependency just for its `Code` enum.
    const CANCELLED: i32 = 1;
    const UNKNOWN: i32 = 2;
    const DEADLINE_EXCEEDED: i32 = 4;
    const UNAVAILABLE: i32 = 14;
    let text = match &e {
        E::TransportError(t) => return Failure::Unavailable(source_chain(t)),
        E::IoError(io) => return Failure::Unavailable(io.to_string()),
        E::GRpcStatus(s) => {
            let mut text = s.message().to_string();
            if text.is_empty() {
                text = format!("{:?}", s.code());
            }
            // tonic puts the transport failure (refused, reset, TLS) in the source.
            if let Some(src) = std::error::Error::source(s) {
                let cause = source_chain(src);
                let root = cause.rsplit(": ").next().unwrap_or(&cause).to_string();
                if !text.contains(&root) {
                    text.push_str(": ");
                    text.push_str(&root);
                }
            }
            // Something that is not etcd's gRPC (a plain HTTP or TLS server) answered:
            // the endpoint is wrong, not etcd's answer.
            if text.contains("h2 protocol error") {
                return Failure::Unavailable(format!(
                    "{text} (what answered does not speak etcd's gRPC: a wrong port, or etcd wants TLS: --etcd-ca)"
                ));
            }
            match i32::from(s.code()) {
                // Unknown is how tonic reports a connection that broke mid-call.
                UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN => return Failure::Unavailable(text),
                _ => text,
            }
        }
        other => other.to_string(),
    };
    Failure::Refused(EtcdFailure { text, source: Some(e) })
}

pub(crate) fn timed_out(endpoints: &str, after: Duration) -> StoreError {
    StoreError::Unavailable {
        endpoints: endpoints.to_string(),
        detail: format!("no answer within {}", human(after)),
    }
}

/// The top-level message and the root cause, because tonic's top level ("transport
/// error") alone does not say whether the connection was refused, timed out or failed
/// TLS, and the layers in between repeat each other.
fn source_chain(e: &dyn std::error::Error) -> String {
    let top = e.to_string();
    let mut root = None;
    let mut cur = e.source();
    while let Some(s) = cur {
        root = Some(s.to_string());
        cur = s.source();
    }
    match root {
        Some(r) if !top.contains(&r) => format!("{top}: {r}"),
        _ => top,
    }
}

pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
