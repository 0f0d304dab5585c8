//! `/v1/templates`: ext.docker images built from a Dockerfile (operators),
//! listed and removed. The build itself is `crate::templates`.
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandboxer_api::{BuildTemplate, Page, Problem, ProblemCode, Template};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use crate::extensions::ExtError;
use crate::templates;
use crate::AppState;

/// The templates routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(build_template, list_templates))
        .routes(routes!(get_template, delete_template))
        .layer(axum::extract::DefaultBodyLimit::max(templates::MAX_CONTEXT))
}

fn ext_error(e: ExtError) -> ApiError {
    let status = match e.code {
        ProblemCode::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ProblemCode::InvalidState => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.code, e.message)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ProblemCode::TemplateNotFound,
        format!("template `{id}` not found"),
    )
}

/// Query of `POST /v1/templates` with a tar body.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct BuildParams {
    /// The template's id (with an `application/x-tar` body; a JSON body
    /// names it itself).
    id: Option<String>,
}

/// Build a template (operators): from `{"id", "dockerfile"}`, or from an
/// `application/x-tar` context (a `Dockerfile` at its root) with `?id=`.
/// The same context is never built twice. With `Accept:
/// text/event-stream` the build's output streams as `log` events, then
/// `done` (the template) or `error` (a problem).
#[utoipa::path(
    post, path = "/v1/templates", tag = "templates",
    params(BuildParams),
    request_body(content(
        (BuildTemplate = "application/json"),
        (Vec<u8> = "application/x-tar"),
    )),
    responses(
        (status = 201, description = "Built", body = Template),
        (status = 200, description = "The same context was built before; it is current again (`cached`)", body = Template),
        (status = 400, description = "`unknown_parameter`: `?id=` with a JSON body, or a query parameter this route does not take", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Context over 64 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor a tar", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_template` (id, Dockerfile), `template_build_failed` (the build's error)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`backend_unavailable`: no Docker Engine", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn build_template(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<BuildParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_operator("building templates")?;
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (id, context) = if kind.starts_with("application/json") {
        if q.id.is_some() {
            return Err(ApiError::bad_request(
                ProblemCode::UnknownParameter,
                "id",
                "with a JSON body the id is in the body",
            ));
        }
        let req: BuildTemplate = serde_json::from_slice(&body).map_err(|e| {
            ApiError::unprocessable(
                ProblemCode::InvalidJson,
                "body",
                format!("not a template: {e}"),
            )
        })?;
        if req.dockerfile.trim().is_empty() {
            return Err(ApiError::unprocessable(
                ProblemCode::InvalidTemplate,
                "dockerfile",
                "`dockerfile` is empty",
            ));
        }
        let context = templates::context_of(&req.dockerfile).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ProblemCode::Internal,
                e.to_string(),
            )
        })?;
        (req.id, context)
    } else if kind.starts_with("application/x-tar") {
        let Some(id) = q.id else {
            return Err(ApiError::unprocessable(
                ProblemCode::InvalidTemplate,
                "id",
                "a tar context needs `?id=`",
            ));
        };
        (id, body.to_vec())
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::UnsupportedMediaType,
            "send `application/json` ({\"id\", \"dockerfile\"}) or an `application/x-tar` context with `?id=`",
        ));
    };
    if !templates::valid_id(&id) {
        return Err(ApiError::unprocessable(
            ProblemCode::InvalidTemplate,
            "id",
            "`id` must be 1 to 63 lower-case letters, digits, `.`, `_` or `-`, starting with a letter or digit",
        ));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
    let st = state.clone();
    let build = state
        .tasks
        .spawn(async move { st.templates.build(&id, context, tx).await });
    if super::access::wants_events(&headers) {
        let events = async_stream_events(rx, build);
        return Ok(axum::response::sse::Sse::new(events)
            .keep_alive(axum::response::sse::KeepAlive::default())
            .into_response());
    }
    // Without a stream the log is read and dropped as it comes.
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let result = build.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::Internal,
            format!("build task: {e}"),
        )
    })?;
    let _ = drain.await;
    let t = result.map_err(ext_error)?;
    let status = if t.cached {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(t)).into_response())
}

/// The build's lines as `log` events, then `done` or `error`.
fn async_stream_events(
    rx: tokio::sync::mpsc::Receiver<String>,
    build: tokio::task::JoinHandle<Result<Template, ExtError>>,
) -> impl futures::Stream<Item = Result<Event, std::convert::Infallible>> {
    enum Stage {
        Log(
            tokio::sync::mpsc::Receiver<String>,
            tokio::task::JoinHandle<Result<Template, ExtError>>,
        ),
        Done,
    }
    futures::stream::unfold(Stage::Log(rx, build), |stage| async move {
        match stage {
            Stage::Log(mut rx, build) => match rx.recv().await {
                Some(line) => Some((
                    Ok(Event::default().event("log").data(line.trim_end())),
                    Stage::Log(rx, build),
                )),
                None => {
                    let event = match build.await {
                        Ok(Ok(t)) => Event::default()
                            .event("done")
                            .data(serde_json::to_string(&t).unwrap_or_default()),
                        Ok(Err(e)) => {
                            let problem = ext_error(e).problem();
                            Event::default()
                                .event("error")
                                .data(serde_json::to_string(&problem).unwrap_or_default())
                        }
                        Err(e) => Event::default()
                            .event("error")
                            .data(format!("{{\"detail\":\"build task: {e}\"}}")),
                    };
                    Some((Ok(event), Stage::Done))
                }
            },
            Stage::Done => None,
        }
    })
}

/// Every template's current build.
#[utoipa::path(
    get, path = "/v1/templates", tag = "templates",
    responses(
        (status = 200, body = Page<Template>),
        (status = 503, description = "`backend_unavailable`: no Docker Engine", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_templates(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Page<Template>>> {
    let items = state.templates.list(None).await.map_err(ext_error)?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// One template's current build.
#[utoipa::path(
    get, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 200, body = Template),
        (status = 404, description = "`template_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_template(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Template>> {
    if !templates::valid_id(&id) {
        return Err(not_found(&id));
    }
    let t = state.templates.list(Some(&id)).await.map_err(ext_error)?;
    t.into_iter().next().map(Json).ok_or_else(|| not_found(&id))
}

/// Remove every build of a template (operators). 409 while a sandbox
/// runs it.
#[utoipa::path(
    delete, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "`forbidden`: not an operator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`template_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`: a container still uses it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_operator("removing templates")?;
    if !templates::valid_id(&id) {
        return Err(not_found(&id));
    }
    if state.templates.delete(&id).await.map_err(ext_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}
