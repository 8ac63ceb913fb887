//! The agent's local HTTP endpoint: /healthz, /readyz, /metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::Mutex;
use tracing::warn;

use crate::agent::{now_secs, AgentStatus};
use crate::metrics::Metrics;

type Shared = (Arc<Metrics>, Arc<Mutex<AgentStatus>>);

pub async fn spawn(addr: SocketAddr, metrics: Arc<Metrics>, status: Arc<Mutex<AgentStatus>>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State((m, _)): State<Shared>| async move { m.render() }),
        )
        .route(
            "/status",
            get(|State((_, s)): State<Shared>| async move { axum::Json(s.lock().await.clone()) }),
        )
        .with_state((metrics, status));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(())
}

/// Ready: a reconcile finished without errors recently.
async fn readyz(State((_, s)): State<Shared>) -> (StatusCode, String) {
    let st = s.lock().await;
    if st.ready && now_secs().saturating_sub(st.last_reconcile) < 300 {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", st.errors.join("; ")),
        )
    }
}
