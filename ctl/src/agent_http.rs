//! Asking a local agent's HTTP endpoint (`calico-node --http`: /healthz, /readyz): one
//! GET, one connection, with a deadline, over hyper's HTTP/1 client.
//!
//! hyper's connection-level client rather than a pooled one: each probe is a single
//! request to a known address, and connecting ourselves keeps the messages of a refused
//! or unreachable endpoint the operating system's own (`Connection refused`).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The agent's own default (`calico-node --http`).
pub const DEFAULT_HTTP: &str = "127.0.0.1:9099";

/// `GET path` from `addr` (HOST:PORT); the status code and body. Connecting may take
/// `timeout`, and so may the answer after it.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} names no address"))?;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(sa))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))??;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let request = Request::get(path)
            .header(HOST, addr)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| anyhow!("GET {path}: {e}"))?;
        // The connection is driven alongside the request; it ends once the answer is read.
        let answer = async {
            let response = sender.send_request(request).await?;
            let code = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((code, String::from_utf8_lossy(&body).into_owned()))
        };
        let (_, answer) = tokio::join!(conn, answer);
        answer.map_err(anyhow::Error::from)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(explain(addr, e)),
        Err(_) => Err(anyhow!("{addr} did not answer within {timeout:?}")),
    }
}

/// hyper's errors in the words a probe's reader needs: no HTTP at all, or the I/O error
/// underneath.
fn explain(addr: &str, e: anyhow::Error) -> anyhow::Error {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return e;
    };
    if h.is_parse() || h.is_incomplete_message() {
        return anyhow!("not an HTTP answer from {addr}");
    }
    let mut source = std::error::Error::source(h);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return anyhow!("{io}");
        }
        source = s.source();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `calicoctl node` hands the agent a loopback --http unless told otherwise.
    #[test]
    fn the_default_endpoint_is_loopback() {
        let addr: std::net::SocketAddr = DEFAULT_HTTP.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }

    /// Serves one connection with `reply`, after reading the request.
    async fn serve_once(reply: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(reply).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn code_and_body() {
        let addr = serve_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready").await;
        assert_eq!(
            get(&addr, "/readyz", Duration::from_secs(2)).await.unwrap(),
            (503, "not ready".to_string())
        );
    }

    #[tokio::test]
    async fn not_http_and_refused() {
        let addr = serve_once(b"SSH-2.0-OpenSSH\r\n").await;
        let e = get(&addr, "/healthz", Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.to_string(), format!("not an HTTP answer from {addr}"));
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = get(&free.to_string(), "/healthz", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }
}
