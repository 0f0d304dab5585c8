//! The HTTP API: one module per resource, each with its own router, joined
//! here with the OpenAPI document generated from the same handlers.
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use sandboxer_api::ProblemCode;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

pub mod access;
pub mod auth;
pub mod caller;
pub mod catalog;
pub mod credits;
pub mod cursor;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod hosts;
pub mod render;
pub mod sandboxes;
pub mod server;
pub mod snapshots;
pub mod templates;
pub mod ui;

use error::ApiError;

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sand-boxer",
        description = "Establishes sandboxes for agents, CI and validators: pick a profile, get a ready sandbox, \
                       with its lifecycle recorded, its TTL enforced and its cost metered.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "sandboxes", description = "Create, inspect, extend and destroy sandboxes"),
        (name = "snapshots", description = "Checkpoint a workspace, restore it in place, fork sandboxes from it"),
        (name = "credits", description = "Balances, grants, the ledger, usage export and estimates"),
        (name = "catalog", description = "Profiles and extensions"),
        (name = "events", description = "Lifecycle events and expiry"),
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "hosts", description = "Placement hosts and their telemetry"),
        (name = "access", description = "Inside a sandbox: exec, background processes, files, ports"),
    )
)]
struct ApiDoc;

fn routers() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(catalog::router())
        .merge(sandboxes::router())
        .merge(snapshots::router())
        .merge(events::router())
        .merge(hosts::router())
        .merge(credits::router())
        .merge(access::router())
        .merge(templates::router())
}

/// The OpenAPI document of everything the daemon serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = routers().split_for_parts();
    finish_document(&mut api);
    api
}

/// What every route shares, added once to the generated document: the
/// version, the bearer scheme, and the answers of the auth middleware
/// (401, 429) on every route that needs a token.
fn finish_document(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::Ref;

    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    api.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    for (path, item) in api.paths.paths.iter_mut() {
        if auth::PUBLIC.contains(&path.as_str()) {
            continue;
        }
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                problem("Missing or invalid bearer token (`unauthorized`)").into()
            });
            responses.entry("429".into()).or_insert_with(|| {
                problem("Over the token's request rate (`rate_limited`); see `Retry-After`").into()
            });
        }
    }
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (router, mut api) = routers().split_for_parts();
    finish_document(&mut api);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(api) }),
        )
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Long-polls block for at most 10 minutes; nothing runs longer.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(660),
        ))
        // Outermost, so it also sees what the layers above answer themselves.
        .layer(middleware::map_response(problem_for_plain_errors))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ProblemCode::NotFound,
        "no such route",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ProblemCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

/// Errors answered by axum or tower themselves (a path that does not
/// decode, a body over the limit, a timeout) come as plain text; turn them
/// into problems so every error a client sees has the same shape.
async fn problem_for_plain_errors(resp: Response) -> Response {
    let status = resp.status();
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => ProblemCode::BadRequest,
        StatusCode::NOT_FOUND => ProblemCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ProblemCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemCode::UnsupportedMediaType,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => ProblemCode::Timeout,
        s if s.is_client_error() => ProblemCode::BadRequest,
        _ => ProblemCode::Internal,
    };
    let detail = match (status, text.is_empty()) {
        (StatusCode::SERVICE_UNAVAILABLE, true) => {
            "the request took too long and was cut off".to_owned()
        }
        (StatusCode::PAYLOAD_TOO_LARGE, _) => "the request body is larger than 1 MiB".to_owned(),
        (_, true) => status.canonical_reason().unwrap_or("error").to_owned(),
        (_, false) => text,
    };
    ApiError::new(status, code, detail).into_response()
}

/// Counts each request for `/metrics` and logs one line for it (method,
/// route, path, status, duration, project, request id), inside a span
/// that carries the request id to everything logged while it is served.
/// The id is the request's `X-Request-Id` when it sends a usable one (1 to
/// 128 visible ASCII characters), else a new `req_<ULID>`; it is echoed in
/// the answer's `X-Request-Id`.
async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| crate::store::new_id("req"));
    let started = std::time::Instant::now();
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut resp = next.run(req).instrument(span).await.into_response();
    let status = resp.status().as_u16();
    state.metrics.count_request(&route, &method, status);
    let project = resp
        .extensions()
        .get::<caller::Caller>()
        .map(|c| c.consumer.project.clone())
        .unwrap_or_default();
    let code = resp.extensions().get::<ProblemCode>().map(|c| c.as_str());
    tracing::info!(
        request_id = %request_id,
        method = %method,
        route = %route,
        path = %path,
        status,
        ms = started.elapsed().as_secs_f64() * 1e3,
        project = %project,
        code,
        "request"
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// The header a request id travels in.
const REQUEST_ID: &str = "x-request-id";
