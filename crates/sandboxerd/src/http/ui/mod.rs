//! `/ui`: the operators' status page, server-rendered (maud templates, no
//! JavaScript build chain). Sandboxes by state with their TTL countdown and
//! termination reasons, hosts with telemetry and stale counts, pools,
//! projects' credits and recent events on `/ui`; one sandbox with its
//! events and snapshots on `/ui/sandboxes/{id}`. A small script of our own
//! (`live.js`) refreshes the page on every change the daemon announces on
//! `/ui/live` (server-sent events) and counts TTLs down between changes.
//!
//! Behind the same tokens as the API: an operator sees everything, a
//! consumer its project. A browser cannot send a bearer header, so
//! `/ui/login` takes the token once and opens a session (`session.rs`):
//! an opaque id in an HttpOnly, SameSite=Strict cookie scoped to `/ui`,
//! never the token itself. Without tokens (loopback) every caller is the
//! local operator and there is nothing to log in to.
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use futures::Stream;
use serde::Deserialize;

use super::caller::Caller;
use crate::AppState;

mod pages;
pub mod session;

use session::{cookie_token, COOKIE};

/// The status page's routes (outside the OpenAPI document: they answer
/// HTML, not the API).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/sandboxes/{id}", get(sandbox))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/live", get(live))
        .route("/ui/assets/live.js", get(script))
        .route("/ui/assets/style.css", get(style))
}

/// What every page answers with: no caching, no framing, scripts and
/// styles only from here.
fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A storage error: logged, and a page that says no more than that.
fn failed(state: &AppState, caller: &Caller, e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "rendering the status page failed");
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::error(
            state,
            caller,
            "the page could not be made; the daemon's log says why",
        ),
    )
}

async fn index(State(state): State<AppState>, caller: Caller) -> Response {
    match pages::index(&state, &caller).await {
        Ok(page) => html(StatusCode::OK, page),
        Err(e) => failed(&state, &caller, e),
    }
}

async fn sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    match pages::sandbox(&state, &caller, &id).await {
        Ok(Some(page)) => html(StatusCode::OK, page),
        Ok(None) => html(
            StatusCode::NOT_FOUND,
            pages::error(&state, &caller, &format!("no sandbox `{id}` here")),
        ),
        Err(e) => failed(&state, &caller, e),
    }
}

async fn login_form(State(state): State<AppState>) -> Response {
    if state.settings.tokens.is_empty() {
        return Redirect::to("/ui").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// A form posted from another site (a login forced on the operator's
/// browser) is refused: `Sec-Fetch-Site`, or else `Origin`, must say it
/// came from this page.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host),
        (None, _) => true,
        _ => false,
    }
}

/// Whether the page was reached over HTTPS (a TLS proxy in front says so):
/// the cookie is then `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Writes a login (or its refusal) to the audit trail, like an API call.
async fn audit_login(state: &AppState, caller: Option<&Caller>, status: StatusCode) {
    let (actor_type, actor, project, role) = match caller {
        Some(c) => (
            c.consumer.actor_type.as_str(),
            c.consumer.actor.as_str(),
            c.consumer.project.as_str(),
            c.role(),
        ),
        None => ("-", "-", "-", "-"),
    };
    let entry = crate::store::NewAudit {
        actor_type,
        actor,
        project,
        role,
        method: "POST",
        path: "/ui/login",
        sandbox_id: None,
        status: status.as_u16(),
        code: (status == StatusCode::UNAUTHORIZED).then_some("unauthorized"),
    };
    if let Err(e) = state.db.audit(entry).await {
        tracing::error!(error = %e, "writing the audit trail failed");
    }
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if state.settings.tokens.is_empty() {
        return Redirect::to("/ui").into_response();
    }
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            pages::login(Some("the form was not posted from this page")),
        );
    }
    let token = f.token.trim();
    let found = (token.len() <= 512)
        .then(|| super::auth::lookup(&state.settings.tokens, token))
        .flatten();
    let Some((index, caller)) = found else {
        audit_login(&state, None, StatusCode::UNAUTHORIZED).await;
        // Slows guessing down (tokens are 256-bit: this is for the log).
        tokio::time::sleep(Duration::from_millis(250)).await;
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("that token is not valid here")),
        );
    };
    let id = match state.ui_sessions.open(index) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "no randomness for a session id");
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::login(Some("the daemon could not open a session")),
            );
        }
    };
    audit_login(&state, Some(&caller), StatusCode::SEE_OTHER).await;
    redirect_setting("/ui", &id, session::TTL.as_secs(), over_https(&headers))
}

/// A redirect to `to` that sets the session cookie to `value` for
/// `max_age` seconds (0 and an empty value: removes it); the cookie's
/// attributes are written here only.
fn redirect_setting(to: &str, value: &str, max_age: u64, secure: bool) -> Response {
    let secure = if secure { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut resp = Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some(id) = cookie_token(&headers) {
        state.ui_sessions.close(id);
    }
    redirect_setting("/ui/login", "", 0, over_https(&headers))
}

/// Ids gathered into one refresh at most.
const BURST: usize = 256;

/// `change` after each burst of changes to sandboxes the caller may see
/// (gathered over 200 ms; a consumer's are checked against its project in
/// one query per burst, not one per change), and a comment every 15 s so
/// proxies keep it open. Ends when the daemon starts to stop.
async fn live(
    State(state): State<AppState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let rx = state.events.subscribe();
    let scope = caller.scope().map(str::to_owned);
    let closing = state.closing.clone();
    let stream = futures::stream::unfold((rx, state, scope), |(mut rx, state, scope)| async move {
        loop {
            let mut ids = std::collections::BTreeSet::new();
            let mut lagged = false;
            match rx.recv().await {
                Ok(id) => {
                    ids.insert(id.to_string());
                }
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => return None,
            }
            // Whatever else changes meanwhile is in the same refresh.
            tokio::time::sleep(Duration::from_millis(200)).await;
            loop {
                match rx.try_recv() {
                    Ok(id) if ids.len() < BURST => {
                        ids.insert(id.to_string());
                    }
                    Ok(_) | Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(_) => break,
                }
            }
            let seen = match &scope {
                None => true,
                // A consumer hears only of its own project's sandboxes
                // (a lag, which may hide some, refreshes all the same).
                Some(p) => {
                    lagged || {
                        let ids: Vec<String> = ids.into_iter().collect();
                        state.db.any_in_project(&ids, p).await.unwrap_or(false)
                    }
                }
            };
            if seen {
                let event = SseEvent::default().event("change").data("changed");
                return Some((Ok(event), (rx, state, scope)));
            }
        }
    });
    let stream = futures::StreamExt::take_until(stream, async move { closing.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("live.js"))
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("style.css"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_from_another_site_is_refused() {
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7443"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7443"),
        );
        assert!(same_origin(&h));
    }
}
