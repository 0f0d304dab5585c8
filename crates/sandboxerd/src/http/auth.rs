//! Authentication, per-token rate limits and the audit trail, as one
//! middleware in front of every route.
//!
//! With tokens configured, every route but `/healthz`, `/readyz` and
//! `/openapi.json` needs `Authorization: Bearer <token>`; the token's
//! SHA-256 is compared in constant time against every configured hash.
//! Without tokens the daemon serves loopback only and every caller is the
//! one local operator.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::caller::Caller;
use super::error::{ApiError, ProblemCode};
use crate::config::{Limits, TokenEntry};
use crate::store::NewAudit;
use crate::AppState;

/// Routes anyone may call.
pub const PUBLIC: &[&str] = &["/healthz", "/readyz", "/openapi.json"];

/// Token buckets per token index.
#[derive(Default)]
pub struct RateLimiter(Mutex<HashMap<usize, (f64, Instant)>>);

impl RateLimiter {
    /// Take one request from `token`'s bucket; `Err(seconds)` to wait when empty.
    pub fn take(&self, token: usize, limits: &Limits) -> Result<(), u64> {
        if limits.requests_per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(limits.requests_per_second);
        let burst = f64::from(limits.burst.max(1));
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = map.entry(token).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
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
            found = Some((
                i,
                Caller {
                    consumer: t.consumer.clone(),
                    operator: t.operator,
                    token: Some(i),
                },
            ));
        }
    }
    found
}

fn unauthorized(detail: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// Resolve the caller, apply the rate limit, run the request, audit it.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let tokens = &state.settings.tokens;
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
        match bearer {
            Some(b) => match lookup(tokens, b) {
                Some((_, caller)) => Some(caller),
                None => return unauthorized("the bearer token is not valid"),
            },
            None if PUBLIC.contains(&path.as_str()) => None,
            None => return unauthorized("this route needs `Authorization: Bearer <token>`"),
        }
    };
    if let Some(Caller { token: Some(i), .. }) = &caller {
        if let Err(wait) = state.rate_limiter.take(*i, &state.settings.limits) {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} requests per second from this token; retry in {wait}s",
                    state.settings.limits.requests_per_second
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let method = req.method().as_str().to_owned();
    if let Some(c) = &caller {
        req.extensions_mut().insert(c.clone());
    }
    let resp = next.run(req).await;
    if mutating {
        if let Some(c) = &caller {
            let sandbox_id = sandbox_of(&path).map(str::to_owned).or_else(|| {
                resp.headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(sandbox_of)
                    .map(str::to_owned)
            });
            let code = resp.extensions().get::<ProblemCode>().map(|p| p.0);
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
