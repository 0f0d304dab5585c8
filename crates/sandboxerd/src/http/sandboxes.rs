//! `/v1/sandboxes`: create, get, list, destroy, recreate, extend, touch, events.
use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandboxer_api::{
    CreateSandbox, Event, ExtendTtl, ExtendedSandbox, Page, Problem, RecreateSandbox, Sandbox,
    SandboxState,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::cursor::{self, List};
use super::error::{ApiError, ApiResult};
use super::extract::{
    duration, optional_json, page_limit, ApiJson, ApiQuery, QueryParams, MAX_WAIT,
};
use crate::catalog::LoadedProfile;
use crate::lifecycle;
use crate::routing::{self, Needs, PlaceError};
use crate::store::{
    new_id, now_ms, Billing, Change, Created, Escrow, Extended, ListFilter, NewLifetime,
    NewSandbox, Transition,
};
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
        .routes(routes!(sandbox_events))
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
        (status = 200, description = "Failed while waiting (with `?wait=`): see `failure`", body = Sandbox),
        (status = 202, description = "Accepted; provisioning goes on (a create served from a warm pool is already `ready`). `Location` names the sandbox", body = Sandbox,
            headers(("Location" = String, description = "/v1/sandboxes/{id}"))),
        (status = 400, description = "Malformed JSON, query or header", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "Credits are enforced and the project's available credits cannot cover the estimate (`insufficient_credits`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown profile (`profile_not_found`) or `from_snapshot` (`snapshot_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key used with another body (`idempotency_conflict`); `from_snapshot` not ready (`invalid_state`) or its extension cannot fork (`snapshot_unsupported`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field: profile (`missing_profile`, or `snapshot_incompatible` with `from_snapshot`), inputs, ttl, labels, consumer, placement", body = Problem, content_type = "application/problem+json"),
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
    let idempotency_key = idempotency_key(&headers)?;

    let req = super::snapshots::resolve_fork(&state, &caller, req).await?;
    let (new, billing) = validate_create(&state, &caller, &req).await?;
    super::snapshots::record_fork(&state, &new.id, &req).await?;
    let hash = idempotency_key
        .as_ref()
        .map(|_| request_hash(&new.consumer.project, &req));
    let idem = idempotency_key.as_deref().zip(hash.as_deref());
    let cap = match state.settings.limits.live_sandboxes_per_project {
        0 => None,
        n => Some(i64::from(n)),
    };
    // A profile with a warm pool: a ready member, claimed in one
    // transaction, is answered just as a create that became ready.
    let (created, pooled) =
        match lifecycle::pool::hand_out(&state, &req, &new, idem, cap, &billing).await? {
            Some(outcome) => (outcome, true),
            None => (
                state
                    .db
                    .create_sandbox_billed(new, idem, cap, &billing)
                    .await?,
                false,
            ),
        };
    let sandbox = match created {
        Created::New(sbx) if pooled => sbx,
        Created::New(sbx) => {
            crate::fault::hit("create.after_insert");
            state.spawn(lifecycle::provision(
                state.clone(),
                sbx.id.clone(),
                sbx.generation,
                None,
            ));
            sbx
        }
        Created::Replayed(sbx) => sbx,
        Created::InsufficientCredits(short) => {
            return Err(super::error::insufficient(
                short,
                &caller.consumer.project,
                "this create",
            ))
        }
        Created::OverCap { cap } => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sandboxes",
                format!("project already has {cap} live sandboxes (the configured cap); destroy some first"),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            return Ok(resp);
        }
        Created::KeyConflict => {
            return Err(ApiError::conflict(
                "idempotency_conflict",
                "this Idempotency-Key was already used with a different request body",
            )
            .field("Idempotency-Key"))
        }
    };
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

pub(super) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_header",
            "Idempotency-Key",
            "`Idempotency-Key` must be 1 to 255 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

fn request_hash(project: &str, req: &CreateSandbox) -> String {
    let mut h = Sha256::new();
    h.update(project.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(req).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Check a create against the catalog and route it; every error names the field.
async fn validate_create(
    state: &AppState,
    caller: &Caller,
    req: &CreateSandbox,
) -> ApiResult<(NewSandbox, Billing)> {
    let profile = state
        .catalog
        .profiles
        .get(&req.profile)
        .ok_or_else(|| ApiError::not_found("profile", &req.profile).field("profile"))?;
    let spec = &profile.spec;
    for name in req.inputs.keys() {
        if !spec.inputs.contains_key(name) {
            let declared: Vec<&str> = spec.inputs.keys().map(String::as_str).collect();
            return Err(ApiError::unprocessable(
                "unknown_input",
                &format!("inputs.{name}"),
                format!(
                    "`inputs.{name}`: profile {} declares no such input (declared: {})",
                    spec.id,
                    if declared.is_empty() {
                        "none".to_owned()
                    } else {
                        declared.join(", ")
                    }
                ),
            ));
        }
    }
    // A fork's workspace comes from its snapshot, which stands in for the
    // inputs that would have made it (a compose repository, say).
    for (name, input) in &spec.inputs {
        if input.required
            && req.from_snapshot.is_none()
            && req.inputs.get(name).is_none_or(|v| v.is_empty())
        {
            return Err(ApiError::unprocessable(
                "missing_input",
                &format!("inputs.{name}"),
                format!("`inputs.{name}` is required by profile {}", spec.id),
            ));
        }
    }
    for (name, value) in &req.inputs {
        if value.len() > 4096 {
            return Err(ApiError::unprocessable(
                "invalid_input",
                &format!("inputs.{name}"),
                format!("`inputs.{name}` is longer than 4096 bytes"),
            ));
        }
    }
    // Host paths: resolved under `input_roots` now, before anything is
    // provisioned; the canonical path is what is stored and used.
    let mut inputs = req.inputs.clone();
    super::inputs::resolve(&state.settings, caller, spec, &mut inputs)?;
    let ttl = requested_ttl(req.ttl.as_deref(), profile)?;
    validate_labels(&req.labels)?;
    let consumer = match &req.consumer {
        None => caller.consumer.clone(),
        Some(c) if !caller.operator && *c != caller.consumer => return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "`consumer`: a consumer token creates sandboxes only for itself; leave `consumer` out",
        )
        .field("consumer")),
        Some(c) => {
            if !matches!(c.actor_type.as_str(), "adm" | "agt" | "atm") {
                return Err(ApiError::unprocessable(
                    "invalid_consumer",
                    "consumer.actor_type",
                    format!(
                        "`consumer.actor_type`: `{}` is not one of adm, agt, atm",
                        c.actor_type
                    ),
                ));
            }
            for (field, v) in [
                ("consumer.actor", &c.actor),
                ("consumer.project", &c.project),
            ] {
                if !valid_name(v, 128) {
                    return Err(ApiError::unprocessable(
                        "invalid_consumer",
                        field,
                        format!(
                            "`{field}` must be 1 to 128 letters, digits, `.`, `_`, `-`, `/` or `:`"
                        ),
                    ));
                }
            }
            c.clone()
        }
    };
    // A fork of a routed profile runs where its snapshot was taken.
    let fork_of = match (&req.from_snapshot, &spec.routing) {
        (Some(snap), Some(_)) => state
            .db
            .get_snapshot(snap, caller.scope())
            .await?
            .map(|s| s.extension),
        _ => None,
    };
    let needs = Needs {
        host: req.placement.as_ref().and_then(|p| p.host.clone()),
        fork_of,
    };
    let placed = routing::place(state, profile, ttl, &needs)
        .await
        .map_err(|e| place_error(&spec.id, e))?;
    let now = now_ms();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let max_ms = i64::try_from(profile.ttl_max.as_millis()).unwrap_or(i64::MAX);
    let new = NewSandbox {
        placement_host: needs.host.clone(),
        id: new_id("sbx"),
        profile: spec.id.clone(),
        profile_version: spec.version,
        extension: placed.target.extension.clone(),
        host: placed.target.host.clone(),
        consumer,
        inputs,
        labels: req.labels.clone(),
        now,
        expires_at: now.saturating_add(ttl_ms),
        max_expires_at: now.saturating_add(max_ms),
        // Whole credits for the lifetime asked for, rounded up (the same
        // price `GET /v1/estimate` quotes).
        estimate_credits: placed.target.estimate_credits,
    };
    let billing = Billing {
        rate_centicredits: placed.target.rate_centicredits,
        route: placed.route,
        enforce: state.settings.credits.enforce,
    };
    Ok((new, billing))
}

/// A routing refusal as a problem.
pub(super) fn place_error(profile: &str, e: PlaceError) -> ApiError {
    match e {
        PlaceError::UnknownHost { host, hosts } => ApiError::unprocessable(
            "unknown_host",
            "placement.host",
            format!(
                "`placement.host`: {profile} places on {}, not `{host}`",
                hosts.join(", ")
            ),
        ),
        PlaceError::NotBuiltIn(ext) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "extension_unavailable",
            format!("extension {ext} is not built into this daemon"),
        ),
        PlaceError::NoCandidate(route) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_extension_available",
            format!(
                "no candidate of {profile} ({} policy) can take this sandbox now: {}",
                route.policy,
                routing::explain(&route)
            ),
        ),
    }
}

/// The lifetime asked for (or the profile's default): more than zero, at most `ttl.max`.
pub(super) fn requested_ttl(ttl: Option<&str>, profile: &LoadedProfile) -> ApiResult<Duration> {
    let Some(v) = ttl else {
        return Ok(profile.ttl_default);
    };
    let ttl = duration("ttl", v, None)?;
    if ttl.is_zero() {
        return Err(ApiError::unprocessable(
            "invalid_duration",
            "ttl",
            "`ttl` must be more than zero",
        ));
    }
    if ttl > profile.ttl_max {
        return Err(ApiError::unprocessable(
            "ttl_exceeds_max",
            "ttl",
            format!(
                "`ttl` {v} is longer than profile {}'s ttl.max of {}",
                profile.spec.id, profile.spec.ttl.max
            ),
        ));
    }
    Ok(ttl)
}

fn valid_name(v: &str, max: usize) -> bool {
    !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'))
}

fn validate_labels(labels: &BTreeMap<String, String>) -> ApiResult<()> {
    if labels.len() > 64 {
        return Err(ApiError::unprocessable(
            "invalid_label",
            "labels",
            "at most 64 labels",
        ));
    }
    for (k, v) in labels {
        if !valid_name(k, 63) {
            return Err(ApiError::unprocessable(
                "invalid_label",
                &format!("labels.{k}"),
                format!(
                    "label key `{k}` must be 1 to 63 letters, digits, `.`, `_`, `-`, `/` or `:`"
                ),
            ));
        }
        if v.len() > 256 || v.chars().any(char::is_control) {
            return Err(ApiError::unprocessable(
                "invalid_label",
                &format!("labels.{k}"),
                format!("label `{k}`: the value must be at most 256 characters without control characters"),
            ));
        }
    }
    Ok(())
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
    found
        .map(|s| Json(super::render::sandbox(&state, &caller, s)))
        .ok_or_else(|| ApiError::not_found("sandbox", &id))
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
                ApiError::bad_request("invalid_query", "state", format!("`state`: {e}"))
            })?);
        }
    }
    f.include_all = match q.include.as_deref() {
        None => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "include",
                format!("`include`: `{other}` is not `all`"),
            ))
        }
    };
    f.profile = q.profile;
    f.extension = q.extension;
    f.host = q.host;
    f.project = match caller.scope() {
        Some(own) => Some(own.to_owned()),
        None => q.project,
    };
    let labels = q.label.unwrap_or_default();
    if labels.len() > MAX_LABEL_FILTERS {
        // Each filter is one subquery; SQLite refuses a statement of
        // about a thousand ("Expression tree is too large").
        return Err(ApiError::bad_request(
            "invalid_query",
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
                "invalid_query",
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
    if state.db.get_row(&id, caller.scope()).await?.is_none() {
        return Err(ApiError::not_found("sandbox", &id));
    }
    let from = [
        SandboxState::Requested,
        SandboxState::Provisioning,
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Failed,
    ];
    let change = Change {
        reason: "destroy requested",
        ..Change::default()
    };
    let sandbox = match state
        .db
        .transition(&id, &from, SandboxState::Destroying, change)
        .await?
    {
        Transition::Done { sandbox, .. } => {
            state.notify(&id);
            state.spawn(lifecycle::destroy(state.clone(), id.clone()));
            sandbox
        }
        Transition::Refused(sandbox) => sandbox,
        Transition::NotFound => return Err(ApiError::not_found("sandbox", &id)),
        Transition::InsufficientCredits(short) => {
            return Err(super::error::insufficient(short, "", "a destroy"))
        }
    };
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
        (status = 409, description = "Not `ready`, `active` or `failed` (`invalid_state`)", body = Problem, content_type = "application/problem+json"),
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
    let Some(row) = state.db.get_row(&id, caller.scope()).await? else {
        return Err(ApiError::not_found("sandbox", &id));
    };
    let profile = state.catalog.profiles.get(&row.profile).ok_or_else(|| {
        ApiError::conflict(
            "profile_not_found",
            format!(
                "profile `{}` of this sandbox is no longer in the catalog",
                row.profile
            ),
        )
    })?;
    let ttl = requested_ttl(req.ttl.as_deref(), profile)?;
    let now = now_ms();
    let old_backend = row.backend_state();
    let change = Change {
        reason: "recreate requested",
        generation: Some(row.generation),
        new_generation: Some(NewLifetime {
            expires_at: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            max_expires_at: now
                .saturating_add(i64::try_from(profile.ttl_max.as_millis()).unwrap_or(i64::MAX)),
        }),
        reachability: Some(None),
        failure: Some(None),
        escrow: Some(Escrow {
            enforce: state.settings.credits.enforce,
        }),
        ..Change::default()
    };
    let from = [
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Failed,
    ];
    match state
        .db
        .transition(&id, &from, SandboxState::Provisioning, change)
        .await?
    {
        Transition::Done { sandbox, .. } => {
            state.notify(&id);
            state.spawn(lifecycle::provision(
                state.clone(),
                id.clone(),
                sandbox.generation,
                Some(old_backend.unwrap_or_default()),
            ));
            Ok((StatusCode::ACCEPTED, Json(sandbox)))
        }
        Transition::Refused(sbx) => Err(ApiError::conflict(
            "invalid_state",
            format!(
                "sandbox {id} is `{}`; only ready, active or failed sandboxes can be recreated",
                sbx.state
            ),
        )),
        Transition::NotFound => Err(ApiError::not_found("sandbox", &id)),
        Transition::InsufficientCredits(short) => {
            Err(
                super::error::insufficient(short, &row.project, "the recreated sandbox's lifetime")
                    .field("ttl"),
            )
        }
    }
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
    let by = duration("duration", &req.duration, None)?;
    if by.is_zero() {
        return Err(ApiError::unprocessable(
            "invalid_duration",
            "duration",
            "`duration` must be more than zero",
        ));
    }
    let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    let enforce = state.settings.credits.enforce;
    match state
        .db
        .extend_ttl_billed(&id, caller.scope(), by_ms, enforce)
        .await?
    {
        Extended::Done(sandbox, ttl_capped) => {
            state.notify(&id);
            Ok(Json(ExtendedSandbox {
                sandbox: *sandbox,
                ttl_capped,
            }))
        }
        Extended::InsufficientCredits(short) => {
            let project = match caller.scope() {
                Some(p) => p.to_owned(),
                None => state
                    .db
                    .get_sandbox(&id, None)
                    .await?
                    .map(|s| s.consumer.project)
                    .unwrap_or_default(),
            };
            Err(super::error::insufficient(short, &project, "this extension").field("duration"))
        }
        Extended::NotExtendable => match state.db.get_sandbox(&id, caller.scope()).await? {
            None => Err(ApiError::not_found("sandbox", &id)),
            Some(sbx) => Err(ApiError::conflict(
                "invalid_state",
                format!(
                    "sandbox {id} is `{}` (or past its expiry); its TTL cannot be extended",
                    sbx.state
                ),
            )),
        },
    }
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
    if state.db.get_row(&id, caller.scope()).await?.is_none() {
        return Err(ApiError::not_found("sandbox", &id));
    }
    match state.db.touch(&id).await? {
        Transition::Done { sandbox, .. } => {
            state.notify(&id);
            Ok(Json(sandbox))
        }
        Transition::Refused(sbx) => Err(ApiError::conflict(
            "invalid_state",
            format!(
                "sandbox {id} is `{}`; only ready or active sandboxes can be touched",
                sbx.state
            ),
        )),
        Transition::NotFound => Err(ApiError::not_found("sandbox", &id)),
        Transition::InsufficientCredits(short) => {
            Err(super::error::insufficient(short, "", "a touch"))
        }
    }
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
        return Err(ApiError::not_found("sandbox", &id));
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
