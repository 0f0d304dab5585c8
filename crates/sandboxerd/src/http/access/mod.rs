//! Reaching into a sandbox (API v1.1): exec, background processes, files
//! and ports. These handlers parse, authorize and render; which sandbox
//! and whether it can be reached is [`crate::lifecycle::access`]; the work
//! is done inside the sandbox by its agent (`sandboxer-agent`).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use sandboxer_agent::client::{CallError, Conn};
use sandboxer_agent::proto::{self, kind, AgentError, Request};
use sandboxer_api::{
    ExecExit, ExecRequest, ExecResult, Problem, ProblemCode, ProcessInfo, ProcessList, SendSignal,
    SignalName, StartProcess,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{duration, ApiJson, ApiQuery, QueryParams};
use crate::lifecycle::access::{self as ops, Target};
use crate::AppState;

mod files;
mod ports;
pub mod ssh_keys;
mod text;

use text::Utf8Chunks;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(exec))
        .routes(routes!(start_process, list_processes))
        .routes(routes!(get_process))
        .routes(routes!(process_logs))
        .routes(routes!(signal_process))
        .merge(files::router())
        .merge(ports::router())
        .merge(ssh_keys::router())
}

/// An agent's refusal as an answer. Its code is taken only when it is one
/// of the agent's own (the agent runs with the sandbox's privileges, so
/// whatever it says is untrusted); anything else is 502 `agent_error`.
pub(super) fn agent_error(e: CallError) -> ApiError {
    let AgentError { code, message } = match e {
        CallError::Refused(e) => e,
        CallError::Unreachable(why) => {
            return ApiError::new(StatusCode::BAD_GATEWAY, ProblemCode::AgentUnreachable, why);
        }
    };
    use ProblemCode as C;
    let code = ProblemCode::parse(&code);
    let status = match code {
        C::FileNotFound | C::ProcessNotFound => StatusCode::NOT_FOUND,
        C::IsADirectory | C::NotADirectory | C::NotAFile => StatusCode::CONFLICT,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
        C::InvalidPath
        | C::UnsafePath
        | C::InvalidArchive
        | C::UnpackFailed
        | C::InvalidCommand
        | C::InvalidEnv
        | C::InvalidCwd
        | C::CommandNotFound
        | C::ExecFailed
        | C::FileError => StatusCode::UNPROCESSABLE_ENTITY,
        C::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::PortClosed => StatusCode::BAD_GATEWAY,
        C::TooManyProcesses => StatusCode::TOO_MANY_REQUESTS,
        C::BodyIncomplete => StatusCode::BAD_REQUEST,
        C::Unsupported => StatusCode::CONFLICT,
        C::UnknownService => StatusCode::UNPROCESSABLE_ENTITY,
        C::AgentUnreachable => StatusCode::BAD_GATEWAY,
        // Not one of the agent's own: nothing of it is taken.
        _ => {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                C::AgentError,
                "the sandbox's agent answered with a code it does not have",
            )
        }
    };
    let field = match code {
        C::InvalidPath
        | C::UnsafePath
        | C::FileNotFound
        | C::IsADirectory
        | C::NotADirectory
        | C::NotAFile => Some("path"),
        C::InvalidCommand | C::CommandNotFound | C::ExecFailed => Some("cmd"),
        C::InvalidEnv => Some("env"),
        C::InvalidCwd => Some("cwd"),
        C::UnknownService => Some("service"),
        _ => None,
    };
    // Bounded: a hostile agent does not get to write a megabyte into the answer.
    let mut detail = message;
    if detail.len() > 2048 {
        let mut cut = 2048;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    let e = ApiError::new(status, code, detail);
    match field {
        Some(f) => e.field(f),
        None => e,
    }
}

/// The agent of sandbox `id`, reachable by `caller`.
pub(super) async fn target(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Target> {
    Ok(ops::target(state, caller.scope(), id).await?)
}

/// Opens a request to the target's agent (about a compose `service`).
pub(super) async fn open(
    state: &AppState,
    t: &Target,
    service: Option<&str>,
    req: &Request,
) -> ApiResult<Conn> {
    t.open(service, req, state.settings.access.agent_timeout)
        .await
        .map_err(agent_error)
}

/// Sends a one-line request and reads its one-line answer.
pub(super) async fn call<T: serde::de::DeserializeOwned>(
    state: &AppState,
    t: &Target,
    service: Option<&str>,
    req: &Request,
) -> ApiResult<(T, Conn)> {
    t.call(service, req, state.settings.access.agent_timeout)
        .await
        .map_err(agent_error)
}

/// Whether the client asked for server-sent events.
pub(crate) fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        })
}

fn check_command(cmd: &sandboxer_api::Command) -> ApiResult<Vec<String>> {
    if cmd.is_empty() {
        return Err(ApiError::unprocessable(
            ProblemCode::InvalidCommand,
            "cmd",
            "cmd is empty",
        ));
    }
    Ok(cmd.argv())
}

/// Run a command in the sandbox and answer its output, or stream it.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/exec", tag = "access",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The command ran (whatever its exit code). With `Accept: text/event-stream`: events `stdout` and `stderr` (data: a chunk of output as text) and a final `exit` (data: `ExecExit` JSON).", body = ExecResult),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state` (not ready or active), `unsupported` (the backend has no agent)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_command`, `command_not_found`, `invalid_cwd`, `invalid_env`, `invalid_duration`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_execs`", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "`agent_unreachable`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Response> {
    let argv = check_command(&req.cmd)?;
    let access = &state.settings.access;
    let timeout = match req.timeout.as_deref() {
        Some(v) => duration("timeout", v, Some(access.exec_timeout_max))?,
        None => access.exec_timeout,
    };
    let stream = wants_events(&headers);
    let t = target(&state, &caller, &id).await?;
    let slot = state
        .access_gates
        .exec_slot(&t.sandbox_id, access.max_concurrent_execs)
        .map_err(ApiError::from)?;
    let max_output = if stream {
        access.exec_stream_output_max
    } else {
        access.exec_output_max
    };
    let service = req.service.clone();
    let request = Request::Exec(proto::Exec {
        argv,
        cwd: req.cwd,
        env: req.env,
        stdin: req.stdin,
        timeout_ms: timeout.as_millis() as u64,
        max_output: Some(max_output),
        stdin_stream: false,
        pty: None,
    });
    let ooms = t.oom_kills(&state).await;
    let mut conn = open(&state, &t, service.as_deref(), &request).await?;
    let _started: serde_json::Value = conn
        .reply(state.settings.access.agent_timeout)
        .await
        .map_err(agent_error)?;
    if stream {
        let oom = OomCheck {
            state: state.clone(),
            target: t,
            before: ooms,
        };
        return Ok(sse(frame_events(conn, None, Some(slot), Some(oom))).into_response());
    }
    let mut result = ExecResult::default();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut exit = None;
    // No end but the agent's: the command's own timeout bounds it (plus slack).
    let read_all = async {
        while let Some(f) = conn.frame().await? {
            match f.kind {
                kind::STDOUT => append_capped(&mut out, &f.data, max_output),
                kind::STDERR => append_capped(&mut err, &f.data, max_output),
                kind::EXIT => match serde_json::from_slice::<ExecExit>(&f.data) {
                    Ok(e) => exit = Some(e),
                    Err(e) => {
                        tracing::warn!(error = %e, data = %String::from_utf8_lossy(&f.data), "the agent's exit frame does not parse")
                    }
                },
                _ => {}
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let slack = timeout + Duration::from_secs(30);
    let read = tokio::time::timeout(slack, read_all).await;
    drop(slot);
    let Some(exit) = exit else {
        let why = match read {
            Err(_) => "the agent did not finish the command in time".to_string(),
            Ok(Err(e)) => format!("the agent broke off: {e}"),
            Ok(Ok(())) => "the agent ended without an exit status".to_string(),
        };
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            ProblemCode::AgentUnreachable,
            why,
        ));
    };
    result.oom_killed = t.was_oom_killed(&state, ooms, &exit).await;
    result.exit_code = exit.exit_code;
    result.signal = exit.signal;
    result.timed_out = exit.timed_out;
    result.stdout_truncated = exit.stdout_truncated;
    result.stderr_truncated = exit.stderr_truncated;
    result.duration_ms = exit.duration_ms;
    result.stdout = String::from_utf8_lossy(&out).into_owned();
    result.stderr = String::from_utf8_lossy(&err).into_owned();
    Ok(Json(result).into_response())
}

fn append_capped(buf: &mut Vec<u8>, data: &[u8], cap: u64) {
    let room = (cap as usize).saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

fn sse<S>(events: S) -> Sse<axum::response::sse::KeepAliveStream<S>>
where
    S: Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static,
{
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The frames of an exec or a log as events: `stdout`, `stderr` (text,
/// characters split across chunks kept whole), then `exit`. `offset`, when
/// given, is where the first byte sits in the process's output; each
/// output event then carries the offset after it as its `id`, so a client
/// that lost the stream can resume from there.
fn frame_events(
    conn: Conn,
    offset: Option<u64>,
    hold: Option<ops::Slot>,
    oom: Option<OomCheck>,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static {
    struct St {
        conn: Conn,
        text: [Utf8Chunks; 2],
        offset: Option<u64>,
        done: bool,
        _hold: Option<ops::Slot>,
        oom: Option<OomCheck>,
    }
    let st = St {
        conn,
        text: [Utf8Chunks::default(), Utf8Chunks::default()],
        offset,
        done: false,
        _hold: hold,
        oom,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let frame = match st.conn.frame().await {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => {
                    st.done = true;
                    let e = Event::default()
                        .event("error")
                        .data(r#"{"code":"agent_unreachable","detail":"the sandbox's agent broke off the stream"}"#);
                    return Some((Ok(e), st));
                }
            };
            let (name, i) = match frame.kind {
                kind::STDOUT => ("stdout", 0),
                kind::STDERR => ("stderr", 1),
                kind::EXIT => {
                    st.done = true;
                    let mut data = String::from_utf8_lossy(&frame.data).into_owned();
                    if let (Some(oom), Ok(mut exit)) =
                        (&st.oom, serde_json::from_slice::<ExecExit>(&frame.data))
                    {
                        exit.oom_killed = oom
                            .target
                            .was_oom_killed(&oom.state, oom.before, &exit)
                            .await;
                        data = serde_json::to_string(&exit).unwrap_or(data);
                    }
                    return Some((Ok(Event::default().event("exit").data(data)), st));
                }
                _ => continue,
            };
            if let Some(o) = st.offset.as_mut() {
                *o += frame.data.len() as u64;
            }
            let text = st.text[i].push(&frame.data);
            if text.is_empty() {
                continue;
            }
            let mut e = Event::default().event(name).data(text);
            if let Some(o) = st.offset {
                e = e.id(o.to_string());
            }
            return Some((Ok(e), st));
        }
    })
}

/// What an exec's `exit` event needs to say whether the command was
/// killed at the memory limit.
struct OomCheck {
    state: AppState,
    target: Target,
    before: Option<u64>,
}

/// Start a background process; it outlives the request and a restart of the daemon.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/processes", tag = "access",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = StartProcess,
    responses(
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 201, body = ProcessInfo),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_command`, `command_not_found`, `invalid_cwd`, `invalid_env`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_processes`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn start_process(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StartProcess>,
) -> ApiResult<(StatusCode, Json<ProcessInfo>)> {
    let argv = check_command(&req.cmd)?;
    if req.tag.as_ref().is_some_and(|t| t.len() > 256) {
        return Err(ApiError::unprocessable(
            ProblemCode::InvalidTag,
            "tag",
            "tag is longer than 256 bytes",
        ));
    }
    let t = target(&state, &caller, &id).await?;
    let service = req.service.clone();
    let request = Request::Spawn(proto::Spawn {
        argv,
        cwd: req.cwd,
        env: req.env,
        tag: req.tag,
    });
    let (info, _) = call::<ProcessInfo>(&state, &t, service.as_deref(), &request).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// The sandbox's background processes, running and exited.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/processes", tag = "access",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = ProcessList),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_processes(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProcessList>> {
    let t = target(&state, &caller, &id).await?;
    let (list, _) = call::<ProcessList>(&state, &t, None, &Request::Processes).await?;
    Ok(Json(list))
}

/// One background process.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/processes/{proc}", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), ("proc" = String, Path, description = "Process id (`proc_…`)")),
    responses(
        (status = 200, body = ProcessInfo),
        (status = 404, description = "`sandbox_not_found`, `process_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_process(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, proc_id)): Path<(String, String)>,
) -> ApiResult<Json<ProcessInfo>> {
    let t = target(&state, &caller, &id).await?;
    let (info, _) =
        call::<ProcessInfo>(&state, &t, None, &Request::Process { id: proc_id }).await?;
    Ok(Json(info))
}

/// Query of `GET …/processes/{proc}/logs`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogParams {
    /// Stream as server-sent events until the process ends.
    follow: Option<bool>,
    /// Byte of the combined output to start from (default 0; output older
    /// than what is kept starts at the oldest kept, see `Log-Offset`).
    offset: Option<u64>,
}

impl QueryParams for LogParams {}

#[derive(Deserialize)]
struct LogHead {
    info: ProcessInfo,
    from: u64,
}

/// A background process's combined output from `offset`: the bytes (header
/// `Log-Offset` says where they start; the next offset is that plus their
/// length), or with `follow=true` events `stdout`/`stderr` (each with the
/// offset after it as its `id`) and `exit`.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/processes/{proc}/logs", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), ("proc" = String, Path, description = "Process id"), LogParams),
    responses(
        (status = 400, description = "Unknown, missing or malformed query parameter; `body_incomplete`", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The output (`text/plain`), or a stream of events with `follow=true`", content_type = "text/plain", body = String),
        (status = 404, description = "`sandbox_not_found`, `process_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn process_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, proc_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<LogParams>,
) -> ApiResult<Response> {
    let follow = q.follow.unwrap_or(false);
    let t = target(&state, &caller, &id).await?;
    let request = Request::Logs {
        id: proc_id,
        offset: q.offset.unwrap_or(0),
        follow,
    };
    let (head, conn) = call::<LogHead>(&state, &t, None, &request).await?;
    if follow {
        return Ok(sse(frame_events(conn, Some(head.from), None, None)).into_response());
    }
    let body = futures::stream::unfold(conn, |mut conn| async move {
        loop {
            match conn.frame().await {
                Ok(Some(f)) if f.kind == kind::STDOUT || f.kind == kind::STDERR => {
                    return Some((
                        Ok::<_, std::io::Error>(axum::body::Bytes::from(f.data)),
                        conn,
                    ));
                }
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some((Err(e), conn)),
            }
        }
    });
    let mut resp = axum::body::Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("log-offset", HeaderValue::from(head.from));
    h.insert(
        "process-state",
        HeaderValue::from_static(match head.info.state {
            sandboxer_api::ProcessState::Running => "running",
            sandboxer_api::ProcessState::Exited => "exited",
        }),
    );
    Ok(resp)
}

/// Send a signal to a background process (its process group).
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/processes/{proc}/signal", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), ("proc" = String, Path, description = "Process id")),
    request_body = SendSignal,
    responses(
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "Sent (nothing happens to a process that has exited)", body = ProcessInfo),
        (status = 404, description = "`sandbox_not_found`, `process_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state`, `unsupported`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_signal`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn signal_process(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, proc_id)): Path<(String, String)>,
    ApiJson(req): ApiJson<SendSignal>,
) -> ApiResult<Json<ProcessInfo>> {
    let Some(sig) = SignalName::parse(&req.signal) else {
        return Err(ApiError::unprocessable(
            ProblemCode::InvalidSignal,
            "signal",
            format!(
                "`{}` is not one of KILL, TERM, INT, HUP",
                req.signal.escape_debug()
            ),
        ));
    };
    let t = target(&state, &caller, &id).await?;
    let request = Request::Signal {
        id: proc_id,
        signal: sig.number(),
    };
    let (info, _) = call::<ProcessInfo>(&state, &t, None, &request).await?;
    Ok(Json(info))
}
