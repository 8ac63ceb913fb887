//! The agent's local HTTP endpoint: /healthz, /readyz, /metrics, /status.
//!
//! It serves what the run loop (`agent`) hands it, the metrics and the shared agent
//! status, and imports neither the loop nor the reconcile: arrows go agent -> http ->
//! metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use calico_schema::{now_secs, AgentStatus};
use tokio::sync::Mutex;
use tracing::warn;

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

type Shared = (Arc<Metrics>, Arc<Mutex<AgentStatus>>);

pub async fn spawn(addr: SocketAddr, metrics: Arc<Metrics>, status: Arc<Mutex<AgentStatus>>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
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

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text format
/// otherwise (curl, promtool, older scrapers).
async fn metrics_page(State((m, _)): State<Shared>, headers: HeaderMap) -> impl IntoResponse {
    let wants_om = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_om {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            m.render_openmetrics(),
        )
    } else {
        ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], m.render())
    }
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
