//! `/healthz`, `/readyz`, `/metrics`.
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use sandboxer_api::Health;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::error::ApiResult;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// 200 once the database and catalog are loaded, else 503 (also while the
/// database cannot be written, e.g. on a full disk).
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, description = "Still starting", body = Health))
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.ready.load(Ordering::SeqCst)
        && !state.db.writer.is_closed()
        && state.db.check_writable().await
    {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "starting".into(),
            }),
        )
    }
}

/// Prometheus text: sandboxes by state, create→ready latency, warm pools, HTTP requests.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    // Counts span every project: operators only.
    caller.require_operator("GET /metrics")?;
    let by_state = state.db.count_by_state().await?;
    // Undelivered to a configured receiver: without one, events are only
    // kept for `GET /v1/events`, and nothing is behind.
    let backlog = if state.settings.state_hub_url.is_some() {
        state.db.outbox_backlog().await?
    } else {
        0
    };
    let pools = crate::lifecycle::pool::gauges(&state).await?;
    let mut text = state.metrics.render(&by_state, backlog, &pools);
    state.extensions.egress.render_metrics(&mut text);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
