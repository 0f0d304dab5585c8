//! Snapshots: capture (`POST /v1/sandboxes/{id}/snapshots`), list, get,
//! delete, restore in place (`POST /v1/sandboxes/{id}/restore`). The fork
//! side of `POST /v1/sandboxes` (`from_snapshot`) is `lifecycle::create::fork`.
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandboxer_api::{
    CreateSnapshot, Page, Problem, ProblemCode, RestoreSnapshot, Sandbox, Snapshot, SnapshotState,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::cursor::{self, List};
use super::error::{ApiError, ApiResult};
use super::extract::{
    duration, optional_json, page_limit, ApiJson, ApiQuery, QueryParams, MAX_WAIT,
};
use crate::lifecycle::snapshots as lifecycle;
use crate::lifecycle::Missing;
use crate::store::SnapshotFilter;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_snapshot, list_sandbox_snapshots))
        .routes(routes!(list_snapshots))
        .routes(routes!(get_snapshot, delete_snapshot))
        .routes(routes!(restore_sandbox))
}

/// Query of `POST /v1/sandboxes/{id}/snapshots`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    /// Answer once the snapshot is ready (201) or failed (200), or 202 when this runs out (max 10m).
    #[param(example = "60s")]
    wait: Option<String>,
}

impl QueryParams for CreateParams {}

/// Snapshot a sandbox's workspace.
///
/// The capture runs in the background under the sandbox's lock (provision,
/// restore and teardown of that sandbox wait for it). A capture over the
/// profile's `snapshot.max_size` ends `failed` with `snapshot_too_large`.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id (`sbx_…`)"), CreateParams),
    request_body(content = Option<CreateSnapshot>, description = "Optional; an empty body takes no label"),
    responses(
        (status = 201, description = "Ready (with `?wait=`)", body = Snapshot),
        (status = 200, description = "Failed while waiting (with `?wait=`): see `failure`", body = Snapshot),
        (status = 202, description = "Accepted; the capture goes on (`creating`). `Location` names the snapshot", body = Snapshot,
            headers(("Location" = String, description = "/v1/snapshots/{id}"))),
        (status = 400, description = "Malformed JSON or query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The extension cannot snapshot (`snapshot_unsupported`), the sandbox is not `ready`/`active` (`invalid_state`), or the project holds its quota of snapshots (`snapshot_quota_exceeded`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `label` or `wait`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CreateParams>,
    body: Bytes,
) -> ApiResult<Response> {
    let wait = q
        .wait
        .as_deref()
        .map(|v| duration("wait", v, Some(MAX_WAIT)))
        .transpose()?;
    let req: CreateSnapshot = optional_json(&body)?;
    let snap = lifecycle::create(&state, caller.scope(), &id, req.label).await?;
    let snap = match wait {
        Some(timeout) => lifecycle::wait_settled(&state, &snap.id, None, timeout)
            .await?
            .unwrap_or(snap),
        None => snap,
    };
    let status = match (wait.is_some(), snap.state) {
        (true, SnapshotState::Ready) => StatusCode::CREATED,
        (true, SnapshotState::Failed) => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let mut resp = (status, Json(&snap)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/snapshots/{}", snap.id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// Query of `GET /v1/sandboxes/{id}/snapshots`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only these states (comma-separated). Deleted snapshots are listed only when asked for here or with `include=all`.
    state: Option<String>,
    /// `all`: include deleted snapshots.
    include: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl QueryParams for ListParams {}

/// Query of `GET /v1/snapshots`: the list filters plus `sandbox` and `project`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AllParams {
    /// Only these states (comma-separated). Deleted snapshots are listed only when asked for here or with `include=all`.
    state: Option<String>,
    /// `all`: include deleted snapshots.
    include: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only snapshots of this sandbox.
    sandbox: Option<String>,
    /// Only snapshots of this project (operators; a consumer sees only its own).
    project: Option<String>,
}

impl QueryParams for AllParams {}

/// Snapshots of one sandbox, newest first.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id (`sbx_…`)"), ListParams),
    responses(
        (status = 200, body = Page<Snapshot>),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_sandbox_snapshots(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Page<Snapshot>>> {
    let mut f = filter(
        q.state.as_deref(),
        q.include.as_deref(),
        q.limit,
        q.cursor.as_deref(),
    )?;
    if state.db.get_row(&id, caller.scope()).await?.is_none() {
        return Err(ApiError::not_found(Missing::Sandbox, &id));
    }
    f.sandbox_id = Some(id);
    f.project = caller.scope().map(str::to_owned);
    let (items, next) = state.db.list_snapshots(&f).await?;
    Ok(Json(Page {
        items,
        next_cursor: cursor::next(List::Snapshots, next),
    }))
}

/// Every snapshot the caller can see, newest first.
#[utoipa::path(
    get, path = "/v1/snapshots", tag = "snapshots",
    params(AllParams),
    responses(
        (status = 200, body = Page<Snapshot>),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_snapshots(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AllParams>,
) -> ApiResult<Json<Page<Snapshot>>> {
    let mut f = filter(
        q.state.as_deref(),
        q.include.as_deref(),
        q.limit,
        q.cursor.as_deref(),
    )?;
    f.sandbox_id = q.sandbox;
    f.project = match caller.scope() {
        Some(own) => Some(own.to_owned()),
        None => q.project,
    };
    let (items, next) = state.db.list_snapshots(&f).await?;
    Ok(Json(Page {
        items,
        next_cursor: cursor::next(List::Snapshots, next),
    }))
}

/// `state`, `include`, `limit` and `cursor` of a snapshot list.
fn filter(
    states: Option<&str>,
    include: Option<&str>,
    limit: Option<u32>,
    after: Option<&str>,
) -> ApiResult<SnapshotFilter> {
    let mut f = SnapshotFilter {
        limit: page_limit(limit)?,
        ..SnapshotFilter::default()
    };
    if let Some(states) = states {
        for s in states.split(',').filter(|s| !s.is_empty()) {
            f.states.push(s.parse().map_err(|e| {
                ApiError::bad_request(ProblemCode::InvalidQuery, "state", format!("`state`: {e}"))
            })?);
        }
    }
    f.include_all = match include {
        None => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                ProblemCode::InvalidQuery,
                "include",
                format!("`include`: `{other}` is not `all`"),
            ))
        }
    };
    f.cursor = after
        .map(|c| cursor::decode(List::Snapshots, c))
        .transpose()?;
    Ok(f)
}

/// One snapshot.
#[utoipa::path(
    get, path = "/v1/snapshots/{id}", tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id (`snap_…`)")),
    responses(
        (status = 200, body = Snapshot),
        (status = 404, description = "`snapshot_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Snapshot>> {
    state
        .db
        .get_snapshot(&id, caller.scope())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(Missing::Snapshot, &id))
}

/// Delete a snapshot (idempotent). Its archive is removed unless another
/// snapshot of the same content holds it. A capture still running is
/// dropped when it ends.
#[utoipa::path(
    delete, path = "/v1/snapshots/{id}", tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id (`snap_…`)")),
    responses(
        (status = 200, description = "Deleted (or deleted already): the snapshot, state `deleted`", body = Snapshot),
        (status = 404, description = "`snapshot_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Snapshot>> {
    lifecycle::delete(&state, &id, caller.scope())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(Missing::Snapshot, &id))
}

/// Roll a sandbox's workspace back to a snapshot, in place.
///
/// The archive is verified before the workspace is touched; processes in
/// the sandbox keep running and see the restored tree at `/workspace`. On
/// any failure the workspace is left exactly as it was. The snapshot may be
/// of another sandbox on the same extension.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/restore", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id (`sbx_…`)")),
    request_body = RestoreSnapshot,
    responses(
        (status = 200, description = "Restored: the sandbox", body = Sandbox),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found` or `snapshot_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The extension cannot restore (`snapshot_unsupported`), the sandbox is not `ready`/`active` or the snapshot not `ready` (`invalid_state`), or the archive is damaged (`snapshot_corrupt`; the workspace is untouched)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing `snapshot_id`, or a snapshot of another extension (`snapshot_incompatible`)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The backend failed (`restore_failed`); the workspace is as it was", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn restore_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RestoreSnapshot>,
) -> ApiResult<Json<Sandbox>> {
    let sandbox = lifecycle::restore(&state, &id, &req.snapshot_id, caller.scope()).await?;
    state.notify(&id);
    Ok(Json(super::render::sandbox(&state, &caller, sandbox)))
}
