//! The agent's local HTTP endpoint: /healthz, /readyz, /metrics, /status, /counters.
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
use calico_render::nft::RuleCounters;
use calico_schema::{now_secs, AgentStatus};
use tokio::sync::Mutex;
use tracing::warn;

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// Reads the per-rule counters of our own table from the kernel (blocking: it runs
/// `nft`), at scrape time.
pub type CounterSource = Arc<dyn Fn() -> Result<RuleCounters, String> + Send + Sync>;

type Shared = (Arc<Metrics>, Arc<Mutex<AgentStatus>>, Option<CounterSource>);

pub async fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<AgentStatus>>,
    counters: Option<CounterSource>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/counters", get(counters_page))
        .route(
            "/status",
            get(|State((_, s, _)): State<Shared>| async move { axum::Json(s.lock().await.clone()) }),
        )
        .with_state((metrics, status, counters));
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
async fn metrics_page(State((m, _, source)): State<Shared>, headers: HeaderMap) -> impl IntoResponse {
    // A failed read leaves the rule families empty rather than failing the page: the
    // agent's own metrics matter more than the counters.
    let rules = match read(source).await {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            warn!(error = %e, "reading the rule counters for /metrics");
            RuleCounters::new()
        }
        None => RuleCounters::new(),
    };
    let wants_om = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_om {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            m.render_openmetrics_with(&rules),
        )
    } else {
        ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], m.render_with(&rules))
    }
}

async fn read(source: Option<CounterSource>) -> Option<Result<RuleCounters, String>> {
    let source = source?;
    Some(
        tokio::task::spawn_blocking(move || source())
            .await
            .unwrap_or_else(|e| Err(format!("counter task: {e}"))),
    )
}

/// The per-rule counters as JSON (`{"Policy/db ingress[2]": {"packets": 3, "bytes":
/// 180}, ...}`), what `calicoctl explain --counters` asks for.
async fn counters_page(State((_, _, source)): State<Shared>) -> axum::response::Response {
    match read(source).await {
        Some(Ok(c)) => axum::Json(c).into_response(),
        Some(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the rule counters: {e}\n"),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "this agent serves no rule counters\n").into_response(),
    }
}

/// Ready: a reconcile finished without errors recently.
async fn readyz(State((_, s, _)): State<Shared>) -> (StatusCode, String) {
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
