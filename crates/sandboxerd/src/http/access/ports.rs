//! `/v1/sandboxes/{id}/ports…`: what listens inside, and HTTP (WebSocket
//! upgrades included) proxied to a port on the sandbox's own loopback
//! through its agent.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Json;
use hyper_util::rt::TokioIo;
use sandboxer_agent::proto::Request as AgentRequest;
use sandboxer_api::{PortList, Problem, ProblemCode};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{call, target};
use crate::http::caller::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, QueryParams};
use crate::AppState;

#[derive(OpenApi)]
#[openapi(paths(proxy))]
struct ProxyDoc;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ProxyDoc::openapi())
        .routes(routes!(list_ports))
        .route("/v1/sandboxes/{id}/ports/{port}", any(proxy_root))
        .route("/v1/sandboxes/{id}/ports/{port}/", any(proxy_root))
        .route("/v1/sandboxes/{id}/ports/{port}/{*path}", any(proxy))
}

/// Query of `GET …/ports`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ServiceParams {
    /// ext.compose-ssh: the compose service (default: the stack's first).
    service: Option<String>,
}

impl QueryParams for ServiceParams {}

/// The TCP ports listening inside the sandbox.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/ports", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), ServiceParams),
    responses(
        (status = 400, description = "Unknown or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_service`", body = Problem, content_type = "application/problem+json"),
        (status = 200, body = PortList),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_ports(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ServiceParams>,
) -> ApiResult<Json<PortList>> {
    let t = target(&state, &caller, &id).await?;
    let (list, _) =
        call::<PortList>(&state, &t, q.service.as_deref(), &AgentRequest::Ports).await?;
    Ok(Json(list))
}

async fn proxy_root(
    state: State<AppState>,
    caller: Caller,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    forward(state, caller, id, port, String::new(), req).await
}

/// HTTP to a port inside the sandbox (any method; WebSocket upgrades pass
/// through). The path after the port and the query go on as they are; the
/// caller's `Authorization` header does not.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/ports/{port}/{path}", tag = "access",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("port" = u16, Path, description = "TCP port inside the sandbox (on its loopback)"),
        ("path" = String, Path, description = "Path on the server inside, any depth"),
    ),
    responses(
        (status = 200, description = "Whatever the server inside answers (any status, any body)"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_port`", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "`port_closed`: nothing listens there; `upstream_error`: it broke off", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn proxy(
    state: State<AppState>,
    caller: Caller,
    Path((id, port, path)): Path<(String, String, String)>,
    req: Request,
) -> ApiResult<Response> {
    forward(state, caller, id, port, path, req).await
}

/// Request headers that belong to one hop (or to the daemon) and are not passed on.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "host",
];

fn upstream_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        ProblemCode::UpstreamError,
        format!("the server inside the sandbox broke off: {e}"),
    )
}

async fn forward(
    State(state): State<AppState>,
    caller: Caller,
    id: String,
    port: String,
    path: String,
    mut req: Request,
) -> ApiResult<Response> {
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(ApiError::unprocessable(
                ProblemCode::InvalidPort,
                "port",
                format!("`{}` is not a TCP port (1 to 65535)", port.escape_debug()),
            ))
        }
    };
    let t = target(&state, &caller, &id).await?;
    let (_, conn) =
        call::<serde_json::Value>(&state, &t, None, &AgentRequest::Connect { port }).await?;
    if !conn.r.buffer().is_empty() {
        return Err(upstream_error("it spoke before it was asked"));
    }
    let stream = conn
        .r
        .into_inner()
        .reunite(conn.w)
        .map_err(|e| upstream_error(format!("socket halves: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(upstream_error)?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });

    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let path_and_query = match req.uri().query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    let uri: Uri = path_and_query.parse().map_err(|_| {
        ApiError::unprocessable(ProblemCode::InvalidPath, "path", "not a valid request path")
    })?;
    let mut up = hyper::Request::builder()
        .method(req.method().clone())
        .uri(uri);
    for (k, v) in req.headers() {
        if !HOP.contains(&k.as_str()) {
            up = up.header(k, v);
        }
    }
    up = up.header(header::HOST, format!("127.0.0.1:{port}"));
    if let Some(u) = &upgrade {
        up = up
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, u.clone());
    }
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let body = std::mem::take(req.body_mut());
    let up = up.body(body).map_err(upstream_error)?;
    let mut resp = sender.send_request(up).await.map_err(upstream_error)?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(upstream_error("it switched protocols unasked"));
        };
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(s)) = (client_upgrade.await, server_upgrade.await) {
                let mut c = TokioIo::new(c);
                let mut s = TokioIo::new(s);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
            }
        });
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        return out.body(Body::empty()).map_err(upstream_error);
    }
    let (mut parts, body) = resp.into_parts();
    for h in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "trailer",
        "upgrade",
        "proxy-connection",
    ] {
        parts.headers.remove(HeaderName::from_static(h));
    }
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}
