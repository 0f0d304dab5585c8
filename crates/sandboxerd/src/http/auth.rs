//! Authentication, per-token rate limits and the audit trail, as one
//! middleware in front of every route.
//!
//! With tokens configured, every route but `/healthz`, `/readyz` and
//! `/openapi.json` needs `Authorization: Bearer <token>`; the token's
//! SHA-256 is compared in constant time against every configured hash.
//! Without tokens the daemon serves loopback only and every caller is the
//! one local operator.
use std::num::NonZeroU32;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::Quota;
use sandboxer_api::ProblemCode;
use sha2::{Digest, Sha256};

use super::caller::Caller;
use super::error::ApiError;
use crate::config::{Limits, TokenEntry};
use crate::store::NewAudit;
use crate::AppState;

/// Routes anyone may call.
pub const PUBLIC: &[&str] = &["/healthz", "/readyz", "/openapi.json"];

/// Per-token rate limits of `[limits]`, keyed by token index: GCRA, which
/// behaves as a token bucket holding `burst` requests (at least 1), full at
/// first and refilled at `requests_per_second`.
pub struct RateLimiter(
    /// `None` when `requests_per_second` is 0 (no limit).
    Option<governor::RateLimiter<usize, HashMapStateStore<usize>, DefaultClock>>,
);

impl RateLimiter {
    /// The limiter of `limits`.
    pub fn new(limits: &Limits) -> RateLimiter {
        RateLimiter(NonZeroU32::new(limits.requests_per_second).map(|rate| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::hashmap(Quota::per_second(rate).allow_burst(burst))
        }))
    }

    /// Take one request from `token`'s bucket; `Err(seconds)` to wait when
    /// empty (whole seconds, rounded up, at least 1).
    pub fn take(&self, token: usize) -> Result<(), u64> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter.check_key(&token).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// The configured token a bearer token stands for.
pub fn lookup(tokens: &[TokenEntry], bearer: &str) -> Option<(usize, Caller)> {
    let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
    let mut found = None;
    // Compare against every entry, each in constant time, so timing says
    // nothing about which bytes matched.
    for (i, t) in tokens.iter().enumerate() {
        let diff = t
            .sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 && found.is_none() {
            found = caller_of(tokens, i).map(|c| (i, c));
        }
    }
    found
}

/// The caller configured token `i` stands for.
pub fn caller_of(tokens: &[TokenEntry], i: usize) -> Option<Caller> {
    tokens.get(i).map(|t| Caller {
        consumer: t.consumer.clone(),
        operator: t.operator,
        token: Some(i),
    })
}

fn unauthorized(detail: &str) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, ProblemCode::Unauthorized, detail).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The status page without a (valid) token: to the login form.
fn to_login() -> Response {
    axum::response::Redirect::to("/ui/login").into_response()
}

/// Resolve the caller, apply the rate limit, run the request, audit it.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let tokens = &state.settings.tokens;
    // The status page: a browser's token comes in its cookie, and a page
    // without one is sent to the login form rather than answered 401.
    let ui = super::ui::session::is_ui(&path);
    let caller = if tokens.is_empty() {
        Some(Caller::local_operator())
    } else {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        // A browser on the status page: its session cookie.
        let session = ui
            .then(|| super::ui::session::cookie_token(req.headers()))
            .flatten()
            .and_then(|id| state.ui_sessions.token(id))
            .and_then(|i| caller_of(tokens, i));
        match (bearer, session) {
            (Some(b), _) => match lookup(tokens, b) {
                Some((_, caller)) => Some(caller),
                None => return unauthorized("the bearer token is not valid"),
            },
            (None, Some(caller)) => Some(caller),
            (None, None) if PUBLIC.contains(&path.as_str()) => None,
            (None, None) if ui && super::ui::session::is_public(&path) => None,
            // The live stream is read by a script: an answer it understands.
            (None, None) if path == "/ui/live" => {
                return unauthorized("the status page's session is missing or ended")
            }
            (None, None) if ui => return to_login(),
            (None, None) => {
                return unauthorized("this route needs `Authorization: Bearer <token>`")
            }
        }
    };
    if let Some(Caller { token: Some(i), .. }) = &caller {
        if let Err(wait) = state.rate_limiter.take(*i) {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ProblemCode::RateLimited,
                format!(
                    "more than {} requests per second from this token; retry in {wait}s",
                    state.settings.limits.requests_per_second
                ),
            )
            .retry_after(wait)
            .into_response();
        }
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let method = req.method().as_str().to_owned();
    if let Some(c) = &caller {
        req.extensions_mut().insert(c.clone());
    }
    let mut resp = next.run(req).await;
    // For the request's log line (`observe_request`, outside this layer).
    if let Some(c) = &caller {
        resp.extensions_mut().insert(c.clone());
    }
    if mutating {
        if let Some(c) = &caller {
            let sandbox_id = sandbox_of(&path).map(str::to_owned).or_else(|| {
                resp.headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(sandbox_of)
                    .map(str::to_owned)
            });
            let code = resp.extensions().get::<ProblemCode>().map(|c| c.as_str());
            let entry = NewAudit {
                actor_type: &c.consumer.actor_type,
                actor: &c.consumer.actor,
                project: &c.consumer.project,
                role: c.role(),
                method: &method,
                path: &path,
                sandbox_id: sandbox_id.as_deref(),
                status: resp.status().as_u16(),
                code,
            };
            if let Err(e) = state.db.audit(entry).await {
                tracing::error!(error = %e, "writing the audit trail failed");
            }
        }
    }
    resp
}

/// The sandbox id in `/v1/sandboxes/{id}...`.
fn sandbox_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/sandboxes/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests_per_second: u32, burst: u32) -> Limits {
        Limits {
            requests_per_second,
            burst,
            ..Limits::default()
        }
    }

    #[test]
    fn a_token_gets_its_burst_then_waits_whole_seconds() {
        let limiter = RateLimiter::new(&limits(2, 5));
        for _ in 0..5 {
            assert_eq!(limiter.take(0), Ok(()));
        }
        // Half a second to the next request, answered as 1 s.
        assert_eq!(limiter.take(0), Err(1));
        // Another token has its own bucket.
        assert_eq!(limiter.take(1), Ok(()));
        // A slow rate waits longer than a second.
        let slow = RateLimiter::new(&limits(1, 0));
        assert_eq!(slow.take(0), Ok(()));
        let wait = slow.take(0).expect_err("limited");
        assert!((1..=2).contains(&wait), "{wait}");
    }

    #[test]
    fn zero_requests_per_second_is_no_limit() {
        let limiter = RateLimiter::new(&limits(0, 0));
        for _ in 0..1000 {
            assert_eq!(limiter.take(0), Ok(()));
        }
    }
}
