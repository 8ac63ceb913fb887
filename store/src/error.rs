//! The store's one error type, and how etcd-client's errors map onto it.

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
    #[error("invalid data at {key}: {detail}")]
    Invalid { key: String, detail: String },
    #[error("etcd: {0}")]
    Etcd(String),
}

/// Maps an etcd-client error to a StoreError. Transport trouble becomes `Unavailable`
/// naming every endpoint, because the user's fix is the same whichever one failed:
/// check `--etcd` and that etcd runs.
pub(crate) fn from_etcd(endpoints: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    // gRPC status codes are fixed by the gRPC spec; naming them here avoids a direct
    // tonic dependency just for its `Code` enum.
    const CANCELLED: i32 = 1;
    const UNKNOWN: i32 = 2;
    const DEADLINE_EXCEEDED: i32 = 4;
    const UNAVAILABLE: i32 = 14;
    let unavailable = |detail: String| StoreError::Unavailable {
        endpoints: endpoints.to_string(),
        detail,
    };
    match e {
        E::TransportError(t) => unavailable(source_chain(&t)),
        E::IoError(io) => unavailable(io.to_string()),
        E::GRpcStatus(s) => {
            let mut text = s.message().to_string();
            if text.is_empty() {
                text = format!("{:?}", s.code());
            }
            // tonic puts the transport failure (refused, reset, TLS) in the source.
            if let Some(src) = std::error::Error::source(&s) {
                let cause = source_chain(src);
                let root = cause.rsplit(": ").next().unwrap_or(&cause).to_string();
                if !text.contains(&root) {
                    text.push_str(": ");
                    text.push_str(&root);
                }
            }
            match i32::from(s.code()) {
                // Unknown is how tonic reports a connection that broke mid-call.
                UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN => unavailable(text),
                _ => StoreError::Etcd(text),
            }
        }
        other => StoreError::Etcd(other.to_string()),
    }
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
