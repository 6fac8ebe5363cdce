//! The HTTP endpoint: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (can make progress).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
}

/// Binds now (so a taken port fails start-up) and serves until `stop` fires.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            metrics,
            health,
            shutdown,
        });
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    }))
}

async fn render(State(state): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(&state.metrics),
    )
}

/// 200 while every dependency answers and no shutdown is under way; 503 with the reason otherwise.
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let down = state.health.down();
    if down.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        let names: Vec<&str> = down.iter().map(|d| d.as_str()).collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("paused; down: {}\n", names.join(", ")),
        )
    }
}
