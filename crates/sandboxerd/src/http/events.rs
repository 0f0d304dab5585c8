//! `GET /v1/events` (for pollers) and `POST /v1/expire` (operators and
//! scheduled jobs).
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::Json;
use sandboxer_api::{AuditEntry, Event, ExpireReport, ExpireRequest, Page, Problem, ProblemCode};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::cursor::{self, List};
use super::error::{ApiError, ApiResult};
use super::extract::{optional_json, page_limit, parse_query, ApiQuery, QueryParams};
use crate::lifecycle::reaper;
use crate::store::AuditFilter;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(expire))
        .routes(routes!(list_audit))
}

/// Query of `GET /v1/events`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    /// An event id: list the events after it. Omitted: from the first.
    after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

impl QueryParams for EventsParams {}

/// Lifecycle events across sandboxes, oldest first. Poll with `after` set
/// to the last id seen (or `next_cursor`).
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventsParams),
    responses(
        (status = 200, body = Page<Event>),
        (status = 400, description = "Unknown parameter, bad limit, or an `after` id this API never gave out", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventsParams>,
) -> ApiResult<Json<Page<Event>>> {
    let limit = page_limit(q.limit)?;
    let after = q.after.as_deref();
    match state.db.events_after(after, caller.scope(), limit).await? {
        Some((items, next_cursor)) => Ok(Json(Page { items, next_cursor })),
        None => Err(ApiError::bad_request(
            ProblemCode::InvalidCursor,
            "after",
            "`after` is not the id of an event",
        )),
    }
}

/// Operator: the sandboxes past `expires_at`. A dry run lists them; with
/// `apply` they are expired and destroyed now, as the reaper would on its tick.
#[utoipa::path(
    post, path = "/v1/expire", tag = "events",
    request_body(content = Option<ExpireRequest>, description = "Optional; an empty body is a dry run"),
    responses(
        (status = 200, body = ExpireReport),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator (`forbidden`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown field", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn expire(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<ExpireReport>> {
    caller.require_operator("POST /v1/expire")?;
    let req: ExpireRequest = optional_json(&body)?;
    let items = reaper::expire_due(&state, req.apply).await?;
    Ok(Json(ExpireReport {
        applied: req.apply,
        items,
    }))
}

/// Query of `GET /v1/audit`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    project: Option<String>,
    actor: Option<String>,
    sandbox_id: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl QueryParams for AuditParams {}

/// Operator: the audit trail of mutating requests, newest first.
#[utoipa::path(
    get, path = "/v1/audit", tag = "events",
    params(AuditParams),
    responses(
        (status = 200, body = Page<AuditEntry>),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator (`forbidden`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Page<AuditEntry>>> {
    caller.require_operator("GET /v1/audit")?;
    // Parsed once the caller may ask at all: a consumer gets 403 whatever
    // its query.
    let q: AuditParams = parse_query(query.as_deref())?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| cursor::decode_seq(List::Audit, c, 1))
        .transpose()?;
    let filter = AuditFilter {
        project: q.project,
        actor: q.actor,
        sandbox_id: q.sandbox_id,
        before,
        limit: page_limit(q.limit)?,
    };
    let (items, next) = state.db.audit_entries(&filter).await?;
    Ok(Json(Page {
        items,
        next_cursor: cursor::next(List::Audit, next),
    }))
}
