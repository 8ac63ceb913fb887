//! What every plugin method handler shares: the [`Fault`] a call fails with (its HTTP
//! status and the message Docker shows), decoding a body with a message that names
//! the call and the field, and running a [`super::super::Backend`] call.
//!
//! Per libnetwork's docs/remote.md, a body that cannot be decoded (bad JSON, a
//! missing ID, an unparsable CIDR) is HTTP 400; an operation that fails is HTTP 200.

use std::future::Future;
use std::net::IpAddr;

use axum::body::Bytes;
use axum::http::StatusCode;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::wire::{DiscoveryNotification, EndpointRequest};

/// Why a request failed: the HTTP status and the message for `Err`.
#[derive(Debug)]
pub(super) struct Fault {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl Fault {
    /// The request could not be decoded (HTTP 400, per docs/remote.md).
    pub(super) fn bad_request(message: impl Into<String>) -> Fault {
        Fault {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The request was understood but cannot be carried out.
    pub(super) fn failed(message: impl Into<String>) -> Fault {
        Fault {
            status: StatusCode::OK,
            message: message.into(),
        }
    }
}

/// A method's answer: the JSON body of a success, or why it failed.
pub(super) type Outcome = Result<Value, Fault>;

/// The empty success body.
pub(super) fn done() -> Outcome {
    Ok(json!({}))
}

/// Decode a JSON body, with a message that says which call and what was wrong.
pub(super) fn decode<T: DeserializeOwned>(method: &str, body: &Bytes) -> Result<T, Fault> {
    let text =
        std::str::from_utf8(body).map_err(|e| Fault::bad_request(format!("{method}: body is not UTF-8: {e}")))?;
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Err(Fault::bad_request(format!(
            "{method}: empty request body; expected a JSON object"
        )));
    }
    serde_json::from_str(trimmed).map_err(|e| Fault::bad_request(format!("{method}: malformed JSON body: {e}")))
}

pub(super) fn require(method: &str, field: &str, value: &str) -> Result<(), Fault> {
    if value.trim().is_empty() {
        return Err(Fault::bad_request(format!("{method}: missing {field}")));
    }
    Ok(())
}

/// The NetworkID and EndpointID of the calls that carry nothing else.
pub(super) fn endpoint_ids(method: &str, body: &Bytes) -> Result<(String, String), Fault> {
    let req: EndpointRequest = decode(method, body)?;
    require(method, "NetworkID", &req.network_id)?;
    require(method, "EndpointID", &req.endpoint_id)?;
    Ok((req.network_id, req.endpoint_id))
}

pub(super) fn to_value<T: Serialize>(value: T) -> Outcome {
    serde_json::to_value(value).map_err(|e| Fault::failed(format!("internal error encoding the response: {e}")))
}

/// Run a backend call; its error chain (`{:#}`) becomes the message Docker shows.
pub(super) async fn backend_call<T>(method: &str, fut: impl Future<Output = anyhow::Result<T>>) -> Result<T, Fault> {
    fut.await.map_err(|e| Fault::failed(format!("{method}: {e:#}")))
}

pub(super) fn parse_ip(method: &str, field: &str, s: &str) -> Result<IpAddr, Fault> {
    let s = s.trim();
    // Docker sends plain addresses; accept CIDR too, as some clients do.
    let parsed = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()));
    parsed.ok_or_else(|| Fault::bad_request(format!("{method}: {field} {s:?} is not an IP address")))
}

pub(super) fn parse_cidr(method: &str, field: &str, s: &str) -> Result<IpNet, Fault> {
    s.trim()
        .parse::<IpNet>()
        .map_err(|_| Fault::bad_request(format!("{method}: {field} {s:?} is not a CIDR (address/prefix length)")))
}

/// DiscoverNew / DiscoverDelete, which both drivers answer alike: node discovery is
/// for overlay-style drivers, and Calico learns its peers from etcd. The body is
/// decoded only to log what Docker said.
pub(super) async fn discover<B>(_backend: std::sync::Arc<B>, method: &'static str, body: Bytes) -> Outcome {
    let note: DiscoveryNotification = decode(method, &body)?;
    tracing::debug!(
        method,
        discovery_type = note.discovery_type,
        "docker discovery notification ignored"
    );
    done()
}
