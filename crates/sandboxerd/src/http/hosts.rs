//! `/v1/hosts`: the configured placement hosts and what was last seen of them.
use axum::extract::{Path, State};
use axum::Json;
use sandboxer_api::{Host, HostInspect, HostTelemetry, Page, Problem, ReapStale, StaleReport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use crate::lifecycle::{self, Missing};
use crate::AppState;

/// The hosts routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_hosts))
        .routes(routes!(get_host))
        .routes(routes!(inspect_host))
        .routes(routes!(stale))
        .routes(routes!(reap_stale))
}

fn host_view(state: &AppState, host: &crate::hosts::Host) -> Host {
    let ext = state.extensions.inventory_for(&host.id);
    let seen = ext
        .as_deref()
        .and_then(|e| e.inventory())
        .and_then(|inv| inv.seen(&host.id));
    let extensions = ext.iter().map(|e| e.id().to_owned()).collect();
    let seen = seen.unwrap_or_default();
    Host {
        id: host.id.clone(),
        address: host.address.clone(),
        port: host.port,
        user: host.user.clone(),
        host_key: host.host_key.clone(),
        engine: host.engine.as_str().to_owned(),
        workdir: host.workdir.clone(),
        labels: host.labels.clone(),
        max_sandboxes: host.max_sandboxes,
        extensions,
        telemetry: HostTelemetry {
            reachable: seen.reachable,
            checked_at: seen
                .checked_at_ms
                .and_then(chrono::DateTime::from_timestamp_millis),
            error: seen.error,
            engine: seen.engine,
            compose: seen.compose,
        },
    }
}

/// Every configured placement host, in configuration order.
#[utoipa::path(
    get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = Page<Host>))
)]
async fn list_hosts(State(state): State<AppState>, _caller: Caller) -> Json<Page<Host>> {
    Json(Page {
        items: state
            .settings
            .hosts
            .iter()
            .map(|h| host_view(&state, h))
            .collect(),
        next_cursor: None,
    })
}

/// One placement host.
#[utoipa::path(
    get, path = "/v1/hosts/{id}", tag = "hosts",
    params(("id" = String, Path, description = "Host id, as configured in `[[hosts]]`")),
    responses(
        (status = 200, body = Host),
        (status = 404, description = "`host_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_host(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Host>> {
    state
        .settings
        .hosts
        .iter()
        .find(|h| h.id == id)
        .map(|h| Json(host_view(&state, h)))
        .ok_or_else(|| ApiError::not_found(Missing::Host, &id))
}

/// Live facts from a host: engine and version, load, memory, disk of the
/// workdir, labelled containers and workspaces (operator).
#[utoipa::path(
    get, path = "/v1/hosts/{id}/inspect", tag = "hosts",
    params(("id" = String, Path, description = "Host id")),
    responses(
        (status = 200, body = HostInspect),
        (status = 403, description = "`forbidden`: operators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`host_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The host could not be asked (`host_timeout`, `host_key_mismatch`, ...)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn inspect_host(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostInspect>> {
    caller.require_operator("inspecting a host")?;
    Ok(Json(lifecycle::hosts::inspect(&state, &id).await?))
}

/// Labelled containers, networks, volumes and workdirs on a host that no
/// live sandbox owns (operator).
#[utoipa::path(
    get, path = "/v1/hosts/{id}/stale", tag = "hosts",
    params(("id" = String, Path, description = "Host id")),
    responses(
        (status = 200, body = StaleReport),
        (status = 403, description = "`forbidden`: operators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`host_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The host could not be asked", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn stale(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<StaleReport>> {
    caller.require_operator("listing stale resources")?;
    Ok(Json(
        lifecycle::hosts::stale_report(&state, &id, false).await?,
    ))
}

/// Remove what no live sandbox owns on a host; a dry run unless `apply` (operator).
#[utoipa::path(
    post, path = "/v1/hosts/{id}/reap-stale", tag = "hosts",
    params(("id" = String, Path, description = "Host id")),
    request_body(content = Option<ReapStale>, description = "Optional; an empty body is a dry run"),
    responses(
        (status = 200, body = StaleReport),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: operators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`host_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The host could not be asked", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reap_stale(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<StaleReport>> {
    caller.require_operator("reaping stale resources")?;
    let req: ReapStale = super::extract::optional_json(&body)?;
    Ok(Json(
        lifecycle::hosts::stale_report(&state, &id, req.apply).await?,
    ))
}
