//! `/v1/sandboxes/{id}/files…`: read, write, delete, list, tar upload and
//! download, streamed through the daemon (never held whole in memory).

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use sandboxer_agent::client::Conn;
use sandboxer_agent::proto::{self, FileMeta, Request};
use sandboxer_api::{FileList, Problem, ProblemCode, Written};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{agent_error, call, open, target};
use crate::http::caller::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, QueryParams};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(read_file, write_file, delete_file))
        .routes(routes!(list_files))
        .routes(routes!(upload))
        .routes(routes!(download))
}

/// The deepest `depth` a listing takes.
const MAX_DEPTH: u32 = 16;

/// Query of the file routes that take only a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PathParams {
    /// A path in the sandbox's own view: absolute, or relative to `/workspace`.
    #[param(example = "/workspace/a.txt")]
    path: String,
    /// ext.compose-ssh: the compose service (default: the stack's first).
    service: Option<String>,
}

impl QueryParams for PathParams {}

/// Query of `PUT …/files`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    #[param(example = "/workspace/a.txt")]
    path: String,
    /// Permission bits in octal (default `0644`; setuid, setgid and sticky are never set).
    #[param(example = "0644")]
    mode: Option<String>,
    /// ext.compose-ssh: the compose service (default: the stack's first).
    service: Option<String>,
}

impl QueryParams for WriteParams {}

/// Query of `DELETE …/files`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    path: String,
    /// Delete a directory with everything in it.
    recursive: Option<bool>,
    /// ext.compose-ssh: the compose service (default: the stack's first).
    service: Option<String>,
}

impl QueryParams for DeleteParams {}

/// Query of `GET …/files/list`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[param(example = "/workspace")]
    path: String,
    /// Levels to descend, 1 to 16 (default 1); symlinks are never followed.
    depth: Option<u32>,
    /// ext.compose-ssh: the compose service (default: the stack's first).
    service: Option<String>,
}

impl QueryParams for ListParams {}

fn check_path(p: &str) -> ApiResult<()> {
    if p.is_empty() || p.len() > 4096 || p.contains('\0') {
        return Err(ApiError::unprocessable(
            ProblemCode::InvalidPath,
            "path",
            "path must be 1 to 4096 bytes without NUL",
        ));
    }
    Ok(())
}

/// `0644`, `644` or `0o644`: permission bits.
fn parse_mode(v: &str) -> ApiResult<u32> {
    let digits = v.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m & 0o777),
        _ => Err(ApiError::unprocessable(
            ProblemCode::InvalidMode,
            "mode",
            format!(
                "`{}` is not an octal file mode such as 0644",
                v.escape_debug()
            ),
        )),
    }
}

/// A file's bytes.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/files", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), PathParams),
    responses(
        (status = 422, description = "`invalid_path`, `unknown_service`", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Unknown, missing or malformed query parameter; `body_incomplete`", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "`sandbox_not_found`, `file_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`is_a_directory`, `not_a_file` (a device, fifo or socket), `invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`permission_denied` (the sandbox itself may not read it)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn read_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathParams>,
) -> ApiResult<Response> {
    let (meta, mut resp) = stream_out(
        &state,
        &caller,
        &id,
        &q.path,
        q.service.as_deref(),
        |path| Request::Read { path },
        "application/octet-stream",
    )
    .await?;
    let h = resp.headers_mut();
    h.insert("file-size", HeaderValue::from(meta.size));
    h.insert(
        "file-mode",
        HeaderValue::from_str(&format!("{:04o}", meta.mode))
            .unwrap_or(HeaderValue::from_static("0644")),
    );
    Ok(resp)
}

/// A read or download: the agent's [`FileMeta`], and its bytes streamed
/// as the answer's body with `content_type`.
async fn stream_out(
    state: &AppState,
    caller: &Caller,
    id: &str,
    path: &str,
    service: Option<&str>,
    request: impl FnOnce(String) -> Request,
    content_type: &'static str,
) -> ApiResult<(FileMeta, Response)> {
    check_path(path)?;
    let t = target(state, caller, id).await?;
    let (meta, conn) = call::<FileMeta>(state, &t, service, &request(path.to_string())).await?;
    let mut resp = Body::from_stream(byte_stream(conn)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok((meta, resp))
}

/// The rest of an agent connection as a body stream.
fn byte_stream(conn: Conn) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(conn.r, |mut r| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    })
}

/// Streams a request body to the agent as `data` frames, at most `limit`
/// bytes, ends it with `end`, then reads the answer. Over the limit, or
/// when the client breaks off, no `end` is sent: the agent drops what it
/// got (a write leaves the file as it was).
async fn send_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    mut conn: Conn,
    body: Body,
    limit: u64,
) -> ApiResult<T> {
    let mut stream = body.into_data_stream();
    let mut sent: u64 = 0;
    let mut broken = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ProblemCode::BodyUnreadable,
                format!("reading the request body: {e}"),
            )
        })?;
        sent += chunk.len() as u64;
        if sent > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ProblemCode::PayloadTooLarge,
                format!("the body is larger than the limit of {limit} bytes"),
            ));
        }
        for piece in chunk.chunks(proto::MAX_FRAME) {
            if proto::write_frame(&mut conn.w, proto::kind::DATA, piece)
                .await
                .is_err()
            {
                // The agent stopped reading: it has refused; its answer says why.
                broken = true;
                break;
            }
        }
        if broken {
            break;
        }
    }
    if !broken {
        let _ = proto::write_frame(&mut conn.w, proto::kind::END, b"").await;
    }
    conn.reply(
        state
            .settings
            .access
            .agent_timeout
            .max(std::time::Duration::from_secs(600)),
    )
    .await
    .map_err(agent_error)
}

/// Write a file (parents are created); it appears whole or not at all.
#[utoipa::path(
    put, path = "/v1/sandboxes/{id}/files", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), WriteParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 400, description = "Unknown, missing or malformed query parameter; `body_incomplete`", body = Problem, content_type = "application/problem+json"),
        (status = 201, body = Written),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`is_a_directory`, `invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large` (over `[access] file_max`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_path`, `invalid_mode`", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "`disk_full`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn write_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteParams>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Written>)> {
    check_path(&q.path)?;
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    let t = target(&state, &caller, &id).await?;
    let limit = state.settings.access.file_max;
    let request = Request::Write {
        path: q.path,
        mode,
        max_bytes: limit,
    };
    let conn = open(&state, &t, q.service.as_deref(), &request).await?;
    let written = send_body::<Written>(&state, conn, body, limit).await?;
    Ok((StatusCode::CREATED, Json(written)))
}

/// The answer of `DELETE …/files`.
#[derive(serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    /// Whether something was there to delete.
    pub deleted: bool,
}

/// Delete a file, a symlink (not what it points to) or, with `recursive`, a directory. Idempotent.
#[utoipa::path(
    delete, path = "/v1/sandboxes/{id}/files", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), DeleteParams),
    responses(
        (status = 400, description = "Unknown, missing or malformed query parameter; `body_incomplete`", body = Problem, content_type = "application/problem+json"),
        (status = 200, body = Deleted),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`is_a_directory` (without `recursive`), `invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_path`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteParams>,
) -> ApiResult<Json<Deleted>> {
    check_path(&q.path)?;
    let t = target(&state, &caller, &id).await?;
    let request = Request::Delete {
        path: q.path,
        recursive: q.recursive.unwrap_or(false),
    };
    let (deleted, _) = call::<Deleted>(&state, &t, q.service.as_deref(), &request).await?;
    Ok(Json(deleted))
}

/// The entries of a directory (symlinks are listed, never followed).
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/files/list", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), ListParams),
    responses(
        (status = 400, description = "Unknown, missing or malformed query parameter; `body_incomplete`", body = Problem, content_type = "application/problem+json"),
        (status = 200, body = FileList),
        (status = 404, description = "`sandbox_not_found`, `file_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_a_directory`, `invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_path`, `invalid_depth`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<FileList>> {
    check_path(&q.path)?;
    let depth = q.depth.unwrap_or(1);
    if !(1..=MAX_DEPTH).contains(&depth) {
        return Err(ApiError::unprocessable(
            ProblemCode::InvalidDepth,
            "depth",
            format!("depth must be 1 to {MAX_DEPTH}"),
        ));
    }
    let t = target(&state, &caller, &id).await?;
    let request = Request::List {
        path: q.path,
        depth,
        max_entries: state.settings.access.list_max_entries as usize,
    };
    let (list, _) = call::<FileList>(&state, &t, q.service.as_deref(), &request).await?;
    Ok(Json(list))
}

/// Whether a content type is one an upload takes.
fn is_tar(headers: &HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(v) => {
            let t = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                t.as_str(),
                "application/x-tar" | "application/tar" | "application/octet-stream"
            )
        }
    }
}

/// Unpack a tar archive into a directory (made if missing). Entries that
/// would land outside it (absolute, `..`, through a symlink, hard links to
/// outside) and special files are refused.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/files/upload", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), PathParams),
    request_body(description = "A tar archive", content((Vec<u8> = "application/x-tar"), (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 400, description = "Unknown, missing or malformed query parameter; `body_incomplete`", body = Problem, content_type = "application/problem+json"),
        (status = 200, body = Written),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large` (over `[access] upload_max`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: not `application/x-tar`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unsafe_path` (naming the entry; entries before it stay unpacked), `invalid_archive`, `invalid_path`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Written>> {
    check_path(&q.path)?;
    if !is_tar(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::UnsupportedMediaType,
            "an upload is a tar archive: send it as application/x-tar",
        ));
    }
    let t = target(&state, &caller, &id).await?;
    let limit = state.settings.access.upload_max;
    let request = Request::Upload {
        path: q.path,
        max_bytes: limit,
    };
    let conn = open(&state, &t, q.service.as_deref(), &request).await?;
    let written = send_body::<Written>(&state, conn, body, limit).await?;
    Ok(Json(written))
}

/// A tar archive of a directory (or of one file), streamed.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/files/download", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), PathParams),
    responses(
        (status = 400, description = "Unknown, missing or malformed query parameter; `body_incomplete`", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The tree as a tar archive: directories, regular files and symlinks (as links); sockets, fifos and devices are left out", content_type = "application/x-tar", body = Vec<u8>),
        (status = 404, description = "`sandbox_not_found`, `file_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_a_file`, `invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_path`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathParams>,
) -> ApiResult<Response> {
    let (_, resp) = stream_out(
        &state,
        &caller,
        &id,
        &q.path,
        q.service.as_deref(),
        |path| Request::Download { path },
        "application/x-tar",
    )
    .await?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert_eq!(parse_mode("4755").unwrap(), 0o755);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("rwx").is_err());
    }
}
