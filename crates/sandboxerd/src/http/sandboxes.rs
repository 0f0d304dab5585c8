//! `/v1/sandboxes`: create, get, list, destroy, recreate, extend, touch, events.
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandboxer_api::{
    CreateSandbox, Event, ExtendTtl, ExtendedSandbox, NetworkLog, Page, Problem, ProblemCode,
    RecreateSandbox, Sandbox, SandboxState,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::cursor::{self, List};
use super::error::{ApiError, ApiResult};
use super::extract::{
    duration, idempotency_key, optional_json, page_limit, ApiJson, ApiQuery, QueryParams, MAX_WAIT,
};
use crate::lifecycle::{self, Missing};
use crate::store::ListFilter;
use crate::AppState;

/// The most `label=` filters one `GET /v1/sandboxes` takes.
pub const MAX_LABEL_FILTERS: usize = 64;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_sandbox, list_sandboxes))
        .routes(routes!(get_sandbox, delete_sandbox))
        .routes(routes!(recreate_sandbox))
        .routes(routes!(extend_ttl))
        .routes(routes!(touch_sandbox))
        .routes(routes!(pause_sandbox))
        .routes(routes!(resume_sandbox))
        .routes(routes!(sandbox_events))
        .routes(routes!(sandbox_network_log))
}

/// Query of `POST /v1/sandboxes`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    /// Answer once the sandbox is ready (201) or failed (200), or 202 when this runs out (max 10m).
    #[param(example = "60s")]
    wait: Option<String>,
}

impl QueryParams for CreateParams {}

/// Headers of `POST /v1/sandboxes`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct CreateHeaders {
    /// The same key and body return the same sandbox; another body is 409. 1-255 visible ASCII characters.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// Create a sandbox from a profile.
#[utoipa::path(
    post, path = "/v1/sandboxes", tag = "sandboxes",
    params(CreateParams, CreateHeaders),
    request_body = CreateSandbox,
    responses(
        (status = 201, description = "Ready (with `?wait=`)", body = Sandbox),
        (status = 200, description = "The live sandbox of this `name` (with `if_exists: \"return\"`: nothing created); or failed while waiting (with `?wait=`): see `failure`", body = Sandbox),
        (status = 202, description = "Accepted; provisioning goes on (a create served from a warm pool is already `ready`). `Location` names the sandbox", body = Sandbox,
            headers(("Location" = String, description = "/v1/sandboxes/{id}"))),
        (status = 400, description = "Malformed JSON, query or header", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "Credits are enforced and the project's available credits cannot cover the estimate (`insufficient_credits`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown profile (`profile_not_found`) or `from_snapshot` (`snapshot_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`name` taken by a live sandbox of the project (`name_taken`); Idempotency-Key used with another body (`idempotency_conflict`); `from_snapshot` not ready (`invalid_state`) or its extension cannot fork (`snapshot_unsupported`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field: profile (`missing_profile`, or `snapshot_incompatible` with `from_snapshot`), inputs, ttl, labels, name (`invalid_name`), consumer, placement", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The profile's extension is not built in (`extension_unavailable`), or no routing candidate can take the sandbox now (`no_extension_available`; the detail says why for each)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CreateParams>,
    ApiJson(req): ApiJson<CreateSandbox>,
) -> ApiResult<Response> {
    let wait = q
        .wait
        .as_deref()
        .map(|v| duration("wait", v, Some(MAX_WAIT)))
        .transpose()?;
    let key = idempotency_key(&headers)?;
    let made = lifecycle::create(&state, caller.actor(), req, key.as_deref()).await?;
    let sandbox = made.sandbox;
    let sandbox = match wait {
        // Already ready (a pooled sandbox): nothing to wait for.
        Some(_) if sandbox.state.is_live() => sandbox,
        Some(timeout) => lifecycle::wait_for(&state, &sandbox.id, None, timeout, |s| {
            s.is_live() || !matches!(s, SandboxState::Requested | SandboxState::Provisioning)
        })
        .await?
        .unwrap_or(sandbox),
        None => sandbox,
    };
    let status = match (wait.is_some(), sandbox.state) {
        // Get-or-create found it: nothing was created.
        _ if made.existing => StatusCode::OK,
        (true, s) if s.is_live() => StatusCode::CREATED,
        (true, SandboxState::Failed) => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let sandbox = super::render::sandbox(&state, &caller, sandbox);
    let mut resp = (status, Json(&sandbox)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/sandboxes/{}", sandbox.id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// Query of `GET /v1/sandboxes/{id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct GetParams {
    /// Long-poll until the sandbox reaches this state (`ready` also accepts `active`) or settles.
    wait_for: Option<SandboxState>,
    /// How long to long-poll (default 30s, max 10m).
    #[param(example = "30s")]
    timeout: Option<String>,
}

impl QueryParams for GetParams {}

/// One sandbox.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id (`sbx_…`)"), GetParams),
    responses(
        (status = 200, body = Sandbox),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_duration`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<GetParams>,
) -> ApiResult<Json<Sandbox>> {
    let target = q.wait_for;
    let timeout = q
        .timeout
        .as_deref()
        .map(|v| duration("timeout", v, Some(MAX_WAIT)))
        .transpose()?
        .unwrap_or(Duration::from_secs(30));
    let found = match target {
        None => state.db.get_sandbox(&id, caller.scope()).await?,
        Some(target) => {
            lifecycle::wait_for(&state, &id, caller.scope(), timeout, |s| {
                s == target || (target == SandboxState::Ready && s.is_live()) || s.is_settled()
            })
            .await?
        }
    };
    let Some(found) = found else {
        return Err(ApiError::not_found(Missing::Sandbox, &id));
    };
    let found = lifecycle::ops::with_usage(&state, found).await;
    Ok(Json(super::render::sandbox(&state, &caller, found)))
}

/// Query of `GET /v1/sandboxes`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only these states (comma-separated). Destroyed sandboxes are listed only when asked for here or with `include=all`.
    state: Option<String>,
    profile: Option<String>,
    extension: Option<String>,
    host: Option<String>,
    project: Option<String>,
    /// Sandboxes of this name (exact, case-sensitive). At most one of them
    /// is live; ended ones keep the name and are listed too unless
    /// `state` narrows the list (destroyed ones only with `include=all`).
    name: Option<String>,
    /// `key=value`; repeat for several (all must match).
    label: Option<Vec<String>>,
    /// `all`: include destroyed sandboxes.
    include: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl QueryParams for ListParams {
    const REPEATABLE: &'static [&'static str] = &["label"];
}

/// Sandboxes, newest first.
#[utoipa::path(
    get, path = "/v1/sandboxes", tag = "sandboxes",
    params(ListParams),
    responses(
        (status = 200, body = Page<Sandbox>),
        (status = 400, description = "Unknown or malformed filter", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_sandboxes(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Page<Sandbox>>> {
    let mut f = ListFilter {
        limit: page_limit(q.limit)?,
        ..ListFilter::default()
    };
    if let Some(states) = &q.state {
        for s in states.split(',').filter(|s| !s.is_empty()) {
            f.states.push(s.parse().map_err(|e| {
                ApiError::bad_request(ProblemCode::InvalidQuery, "state", format!("`state`: {e}"))
            })?);
        }
    }
    f.include_all = match q.include.as_deref() {
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
    f.profile = q.profile;
    f.extension = q.extension;
    f.host = q.host;
    f.name = q.name;
    f.project = match caller.scope() {
        Some(own) => Some(own.to_owned()),
        None => q.project,
    };
    let labels = q.label.unwrap_or_default();
    if labels.len() > MAX_LABEL_FILTERS {
        // Each filter is one subquery; SQLite refuses a statement of
        // about a thousand ("Expression tree is too large").
        return Err(ApiError::bad_request(
            ProblemCode::InvalidQuery,
            "label",
            format!(
                "`label`: {} label filters; at most {MAX_LABEL_FILTERS} are allowed",
                labels.len()
            ),
        ));
    }
    for v in &labels {
        let (k, val) = v.split_once('=').ok_or_else(|| {
            ApiError::bad_request(
                ProblemCode::InvalidQuery,
                "label",
                format!("`label`: `{v}` is not `key=value`"),
            )
        })?;
        f.labels.push((k.to_owned(), val.to_owned()));
    }
    f.cursor = q
        .cursor
        .as_deref()
        .map(|c| cursor::decode(List::Sandboxes, c))
        .transpose()?;
    let (items, next) = state.db.list_sandboxes(&f).await?;
    Ok(Json(Page {
        items: items
            .into_iter()
            .map(|s| super::render::sandbox(&state, &caller, s))
            .collect(),
        next_cursor: cursor::next(List::Sandboxes, next),
    }))
}

/// Query of routes that may block until a change (`?wait=`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    /// Block until the sandbox is destroyed, at most this long (max 10m).
    #[param(example = "60s")]
    wait: Option<String>,
}

impl QueryParams for WaitParams {}

/// Destroy a sandbox (idempotent).
#[utoipa::path(
    delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), WaitParams),
    responses(
        (status = 200, description = "Already destroyed (or destroyed within `?wait=`)", body = Sandbox),
        (status = 202, description = "Teardown under way (`destroying`)", body = Sandbox),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_duration`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitParams>,
) -> ApiResult<Response> {
    let wait = q
        .wait
        .as_deref()
        .map(|v| duration("wait", v, Some(MAX_WAIT)))
        .transpose()?;
    let sandbox = lifecycle::ops::destroy(&state, caller.scope(), &id).await?;
    let sandbox = match (wait, sandbox.state) {
        (Some(timeout), SandboxState::Destroying | SandboxState::Expired) => {
            lifecycle::wait_for(&state, &id, caller.scope(), timeout, |s| {
                !matches!(s, SandboxState::Destroying | SandboxState::Expired)
            })
            .await?
            .unwrap_or(sandbox)
        }
        _ => sandbox,
    };
    let status = if sandbox.state == SandboxState::Destroyed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let sandbox = super::render::sandbox(&state, &caller, sandbox);
    Ok((status, Json(sandbox)).into_response())
}

/// Tear a sandbox's backend down and provision it again: same id, same
/// profile and inputs, generation + 1, a fresh TTL.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/recreate", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<RecreateSandbox>, description = "Optional; an empty body keeps the profile's default TTL"),
    responses(
        (status = 202, description = "Recreating (`provisioning`, generation + 1)", body = Sandbox),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "Credits are enforced and the new lifetime's estimate cannot be reserved (`insufficient_credits`); nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not `ready`, `active` or `failed` (`invalid_state`); its name was taken by another live sandbox since it failed (`name_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `ttl`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn recreate_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Sandbox>)> {
    let req: RecreateSandbox = optional_json(&body)?;
    let sandbox = lifecycle::ops::recreate(&state, caller.scope(), &id, req.ttl.as_deref()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(super::render::sandbox(&state, &caller, sandbox)),
    ))
}

/// Move `expires_at` forward; never past `created_at + ttl.max`.
#[utoipa::path(
    patch, path = "/v1/sandboxes/{id}/ttl", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExtendTtl,
    responses(
        (status = 200, description = "Extended; `ttl_capped` says whether the ceiling cut it", body = ExtendedSandbox),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "Credits are enforced and the extra estimate cannot be reserved (`insufficient_credits`); nothing moved", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`destroying`, `destroyed`, `expired` or `failed` (`invalid_state`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad duration (`invalid_duration`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn extend_ttl(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExtendTtl>,
) -> ApiResult<Json<ExtendedSandbox>> {
    let extended = lifecycle::ops::extend(&state, caller.scope(), &id, &req.duration).await?;
    Ok(Json(extended))
}

/// Mark activity: idle reap counts from the last one; `ready` becomes `active`.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/touch", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = Sandbox),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not `ready` or `active` (`invalid_state`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn touch_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let sandbox = lifecycle::ops::touch(&state, caller.scope(), &id).await?;
    Ok(Json(super::render::sandbox(&state, &caller, sandbox)))
}

/// Freeze every process of a sandbox, keeping its memory: `paused` (its TTL
/// keeps running; exec, files, ports and SSH answer 409 until it is
/// resumed). Idempotent: a paused sandbox is answered as it is.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/pause", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Paused (now or already)", body = Sandbox),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not `ready`, `active` or `paused` (`invalid_state`), or its extension cannot pause (`unsupported`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn pause_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let sandbox = lifecycle::pause::pause(&state, caller.scope(), &id).await?;
    Ok(Json(super::render::sandbox(&state, &caller, sandbox)))
}

/// Let a paused sandbox's processes run again: `ready`. Idempotent: a
/// ready or active sandbox is answered as it is.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Ready (now or already)", body = Sandbox),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not `paused`, `ready` or `active` (`invalid_state`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn resume_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let sandbox = lifecycle::pause::resume(&state, caller.scope(), &id).await?;
    Ok(Json(super::render::sandbox(&state, &caller, sandbox)))
}

/// Query of `GET /v1/sandboxes/{id}/events`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventParams {
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl QueryParams for EventParams {}

/// The lifecycle transitions of a sandbox, oldest first.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/events", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), EventParams),
    responses(
        (status = 200, body = Page<Event>),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn sandbox_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventParams>,
) -> ApiResult<Json<Page<Event>>> {
    let limit = page_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => cursor::decode_seq(List::SandboxEvents, c, 0)?,
    };
    if state.db.get_row(&id, caller.scope()).await?.is_none() {
        return Err(ApiError::not_found(Missing::Sandbox, &id));
    }
    // What a pooled sandbox went through before it was handed out
    // (generation 0) is the pool's history, shown to operators only.
    let min_generation = if caller.operator { 0 } else { 1 };
    let (items, next_cursor) = state
        .db
        .events_from(&id, after, limit, min_generation)
        .await?;
    Ok(Json(Page {
        items,
        next_cursor: cursor::next(List::SandboxEvents, next_cursor),
    }))
}

/// The egress proxy's decisions for a sandbox with `network: {mode: egress}`:
/// each connection it allowed or refused, oldest first (the newest
/// `[egress] log_entries` are kept, in memory: a daemon restart starts
/// them afresh). Empty for other sandboxes.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/network-log", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = NetworkLog),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn sandbox_network_log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkLog>> {
    Ok(Json(
        lifecycle::ops::network_log(&state, caller.scope(), &id).await?,
    ))
}
