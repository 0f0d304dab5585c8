//! Credits and cost: balances, grants, the ledger, usage export, estimates.
//! A consumer sees only its own project; another project answers 404
//! `project_not_found`, exactly like a project that does not exist.
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use sandboxer_api::{
    Balance, CreateGrant, Estimate, LedgerEntry, Page, Problem, ProblemCode, UsageRecord,
    UsageReport,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::cursor::{self, List};
use super::error::{ApiError, ApiResult};
use super::extract::{idempotency_key, page_limit, parse_query, ApiJson, ApiQuery, QueryParams};
use crate::lifecycle;
use crate::store::{now_ms, to_time, LedgerFilter, UsageFilter};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(estimate))
        .routes(routes!(get_balance))
        .routes(routes!(create_grant))
        .routes(routes!(list_ledger))
        .routes(routes!(usage))
}

/// Check that `caller` may see `project` (and that it is a project name).
fn scoped(caller: &Caller, project: &str) -> ApiResult<()> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ProblemCode::ProjectNotFound,
            format!("project `{project}` not found"),
        )
    };
    if !caller.operator && caller.consumer.project != project {
        return Err(not_found());
    }
    if project.is_empty() || project.len() > 128 || project.chars().any(char::is_control) {
        return Err(not_found());
    }
    Ok(())
}

/// Query of `GET /v1/estimate`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EstimateParams {
    /// A profile id.
    #[param(required = true)]
    profile: Option<String>,
    /// The lifetime to price (humantime); defaults to the profile's `ttl.default`.
    #[param(example = "1h")]
    ttl: Option<String>,
}

impl QueryParams for EstimateParams {}

/// What a sandbox of a profile would cost, and where it would run now.
#[utoipa::path(
    get, path = "/v1/estimate", tag = "credits",
    params(EstimateParams),
    responses(
        (status = 200, body = Estimate),
        (status = 400, description = "Unknown or repeated query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`profile_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing `profile` (`missing_profile`); bad `ttl` (`invalid_duration`, `ttl_exceeds_max`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No routing candidate can take a sandbox now (`no_extension_available`), or the extension is not built in (`extension_unavailable`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn estimate(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EstimateParams>,
) -> ApiResult<Json<Estimate>> {
    let estimate =
        lifecycle::credits::estimate(&state, q.profile.as_deref(), q.ttl.as_deref()).await?;
    Ok(Json(estimate))
}

/// A project's balance, what is reserved for its live sandboxes, and what is available.
#[utoipa::path(
    get, path = "/v1/credits/{project}", tag = "credits",
    params(("project" = String, Path, description = "Project name")),
    responses(
        (status = 200, body = Balance),
        (status = 404, description = "Not the caller's project (`project_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Balance>> {
    scoped(&caller, &project)?;
    Ok(Json(state.db.balance(&project).await?))
}

/// Headers of `POST /v1/credits/{project}/grants`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct GrantHeaders {
    /// A retried grant with the same key, amount and reason answers the entry
    /// written first (200) instead of granting twice; another amount or
    /// reason is 409. 1-255 visible ASCII characters.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// Operator: add credits to a project.
#[utoipa::path(
    post, path = "/v1/credits/{project}/grants", tag = "credits",
    params(("project" = String, Path, description = "Project name"), GrantHeaders),
    request_body = CreateGrant,
    responses(
        (status = 201, description = "Granted: the ledger entry", body = LedgerEntry),
        (status = 200, description = "A retry of an earlier grant (same `Idempotency-Key`): that entry", body = LedgerEntry),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator (`forbidden`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a project name (`project_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`Idempotency-Key` used before for another grant (`idempotency_conflict`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`amount` not from 1 to 10^12 or over the balance limit (`invalid_amount`); `reason` empty or over 512 characters (`invalid_reason`); unknown field (`invalid_body`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateGrant>,
) -> ApiResult<Response> {
    caller.require_operator("POST /v1/credits/{project}/grants")?;
    scoped(&caller, &project)?;
    let key = idempotency_key(&headers)?;
    let grant =
        lifecycle::credits::grant(&state, &project, req.amount, &req.reason, key.as_deref())
            .await?;
    let status = if grant.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(grant.entry)).into_response())
}

/// Query of `GET /v1/credits/{project}/ledger`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LedgerParams {
    /// Only entries about this sandbox.
    sandbox_id: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl QueryParams for LedgerParams {}

/// A project's ledger entries, newest first.
#[utoipa::path(
    get, path = "/v1/credits/{project}/ledger", tag = "credits",
    params(("project" = String, Path, description = "Project name"), LedgerParams),
    responses(
        (status = 200, body = Page<LedgerEntry>),
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not the caller's project (`project_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_ledger(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Page<LedgerEntry>>> {
    scoped(&caller, &project)?;
    // Parsed once the project is the caller's: another project's ledger is
    // 404 whatever the query.
    let q: LedgerParams = parse_query(query.as_deref())?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| cursor::decode_seq(List::Ledger, c, 1))
        .transpose()?;
    let filter = LedgerFilter {
        project,
        sandbox_id: q.sandbox_id,
        before,
        limit: page_limit(q.limit)?,
    };
    let (items, next) = state.db.ledger_entries(&filter).await?;
    Ok(Json(Page {
        items,
        next_cursor: cursor::next(List::Ledger, next),
    }))
}

/// Query of `GET /v1/usage`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    /// Only this project (a consumer's own by default; operators: every project).
    project: Option<String>,
    /// RFC 3339; debits at or after it count (default: the beginning).
    from: Option<String>,
    /// RFC 3339; debits before it count (default: now).
    to: Option<String>,
    /// `json` (default) or `csv` (`text/csv` with a header row).
    format: Option<String>,
}

impl QueryParams for UsageParams {}

/// The CSV header of `GET /v1/usage?format=csv`.
pub const USAGE_CSV_HEADER: &str =
    "sandbox_id,project,profile,extension,host,generation,start,end,seconds,credits";

/// Per-sandbox usage for billing export.
#[utoipa::path(
    get, path = "/v1/usage", tag = "credits",
    params(UsageParams),
    responses(
        (status = 200, description = "One record per sandbox debited in the window or running in it; `credits` sums its debits in the window", content(
            (UsageReport = "application/json"),
            (String = "text/csv")
        )),
        (status = 400, description = "Unknown or repeated query parameter; `format` not json or csv (`invalid_query`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not the caller's project (`project_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`from`/`to` not RFC 3339, or `from` after `to` (`invalid_time`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UsageParams>,
) -> ApiResult<Response> {
    let project = match (q.project, caller.scope()) {
        (Some(p), _) => {
            scoped(&caller, &p)?;
            Some(p)
        }
        (None, Some(own)) => Some(own.to_owned()),
        (None, None) => None,
    };
    let time = |field: &str, value: Option<&str>| -> ApiResult<Option<i64>> {
        value
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc).timestamp_millis())
                    .map_err(|e| {
                        ApiError::unprocessable(
                            ProblemCode::InvalidTime,
                            field,
                            format!("`{field}`: `{v}` is not an RFC 3339 time ({e})"),
                        )
                    })
            })
            .transpose()
    };
    let from = time("from", q.from.as_deref())?.unwrap_or(0);
    let to = time("to", q.to.as_deref())?.unwrap_or_else(|| now_ms() + 1);
    if from > to {
        return Err(ApiError::unprocessable(
            ProblemCode::InvalidTime,
            "from",
            "`from` is after `to`",
        ));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                ProblemCode::InvalidQuery,
                "format",
                format!("`format`: `{other}` is not `json` or `csv`"),
            ))
        }
    };
    let items = state
        .db
        .usage(&UsageFilter {
            project: project.clone(),
            from,
            to,
        })
        .await?;
    if csv {
        let mut resp = usage_csv(&items).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(resp);
    }
    Ok(Json(UsageReport {
        project,
        from: to_time(from),
        to: to_time(to),
        total_credits: items.iter().map(|r| r.credits).sum(),
        items,
    })
    .into_response())
}

/// Usage records as CSV (RFC 4180): a header row, then one row each, each
/// ending in CRLF; a cell is quoted only when it holds `,`, `"`, CR or LF.
pub fn usage_csv(items: &[UsageRecord]) -> String {
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let time = |t: &Option<DateTime<Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    // Writing to a `Vec` cannot fail, and every cell is a `String`, so the
    // bytes are UTF-8.
    let written = out
        .write_record(USAGE_CSV_HEADER.split(','))
        .and_then(|()| {
            items.iter().try_for_each(|r| {
                out.write_record([
                    r.sandbox_id.as_str(),
                    &r.project,
                    &r.profile,
                    &r.extension,
                    &r.host,
                    &r.generation.to_string(),
                    &time(&r.start),
                    &time(&r.end),
                    &r.seconds.to_string(),
                    &r.credits.to_string(),
                ])
            })
        });
    debug_assert!(written.is_ok(), "{written:?}");
    let bytes = out.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_csv_quotes_only_what_needs_it() {
        let record = UsageRecord {
            sandbox_id: "sbx_1".into(),
            project: "a,b".into(),
            profile: "say \"hi\"".into(),
            extension: "ext.local".into(),
            host: "two\r\nlines".into(),
            generation: 2,
            start: DateTime::from_timestamp_millis(1_700_000_000_123),
            end: None,
            seconds: 61,
            credits: 7,
        };
        assert_eq!(
            usage_csv(&[record]),
            format!(
                "{USAGE_CSV_HEADER}\r\n\
                 sbx_1,\"a,b\",\"say \"\"hi\"\"\",ext.local,\"two\r\nlines\",2,2023-11-14T22:13:20.123Z,,61,7\r\n"
            )
        );
        assert_eq!(usage_csv(&[]), format!("{USAGE_CSV_HEADER}\r\n"));
    }
}
