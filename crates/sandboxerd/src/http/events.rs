//! `GET /v1/events` (for pollers) and `POST /v1/expire` (operators and
//! scheduled jobs).
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use sandboxer_api::{Event, ExpireReport, ExpireRequest, Page, Problem};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{limit, only_params, optional_json, query_pairs, single};
use crate::lifecycle::reaper;
use crate::store::now_ms;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(expire))
}

/// Query of `GET /v1/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct EventsParams {
    /// An event id: list the events after it. Omitted: from the first.
    after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

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
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Page<Event>>> {
    let pairs = query_pairs(query.as_deref())?;
    only_params(&pairs, &["after", "limit"])?;
    let limit = limit(&pairs)?;
    let after = single(&pairs, "after")?;
    match state.db.events_after(after, caller.scope(), limit).await? {
        Some((items, next_cursor)) => Ok(Json(Page { items, next_cursor })),
        None => Err(ApiError::bad_request(
            "invalid_cursor",
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
    if !caller.operator {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "POST /v1/expire is for operators",
        ));
    }
    let req: ExpireRequest = optional_json(&body)?;
    let now = now_ms();
    let mut items = Vec::new();
    loop {
        let due = state.db.due_expiries(now, 1000).await?;
        if due.is_empty() {
            break;
        }
        if req.apply {
            let expired = reaper::expire(&state, &due, now).await?;
            let progressed = !expired.is_empty();
            items.extend(expired);
            if !progressed {
                break;
            }
        } else {
            for id in &due {
                if let Some(sbx) = state.db.get_sandbox(id, None).await? {
                    items.push(sbx);
                }
            }
            break;
        }
    }
    Ok(Json(ExpireReport {
        applied: req.apply,
        items,
    }))
}
