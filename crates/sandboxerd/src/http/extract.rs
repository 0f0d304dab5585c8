//! Extractors whose rejections are problems with stable codes.
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use sandboxer_api::ProblemCode;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};

/// JSON body; malformed, mistyped, oversized or mislabelled bodies are problems.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let text = r.body_text();
    match r {
        JsonRejection::JsonDataError(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
            // serde names the field and where it is.
            text.trim_start_matches("Failed to deserialize the JSON body into the target type: ")
                .to_owned(),
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, ProblemCode::InvalidJson, text)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::UnsupportedMediaType,
            "the body must be JSON with `Content-Type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::PayloadTooLarge,
            "the request body is larger than 1 MiB",
        ),
        other => ApiError::new(other.status(), ProblemCode::InvalidBody, text),
    }
}

/// Query-string pairs, in order, repeated keys kept.
fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or("")).map_err(|e| {
        ApiError::bad_request(
            ProblemCode::InvalidQuery,
            "query",
            format!("malformed query string: {e}"),
        )
    })
}

/// The longest anyone may block on a `wait`/`timeout` parameter.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Parse a humantime duration from field `field`; `max` bounds it.
pub fn duration(field: &str, value: &str, max: Option<Duration>) -> Result<Duration, ApiError> {
    Ok(crate::lifecycle::validate::duration(field, value, max)?)
}

/// The `Idempotency-Key` header, when given: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            ProblemCode::InvalidHeader,
            "Idempotency-Key",
            "`Idempotency-Key` must be 1 to 255 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

/// A JSON body that may be empty (then the type's default).
pub fn optional_json<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemCode::InvalidBody,
                e.to_string(),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ProblemCode::InvalidJson,
                e.to_string(),
            )
        }
    })
}

/// The query parameters a route takes: the same struct documents them
/// (`IntoParams`) and parses them (`Deserialize`, with
/// `#[serde(deny_unknown_fields)]`), so the two cannot drift.
pub trait QueryParams: DeserializeOwned {
    /// Keys that may be given more than once (every value is kept).
    const REPEATABLE: &'static [&'static str] = &[];
}

/// A route's query string as its [`QueryParams`] struct. A key the route
/// does not take is 400 `unknown_parameter` naming it; a key given twice
/// (unless repeatable), a malformed string or a value of the wrong kind is
/// 400 `invalid_query` naming its key.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: QueryParams,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query()).map(ApiQuery)
    }
}

/// [`ApiQuery`]'s parsing, for a raw query string.
pub fn parse_query<T: QueryParams>(raw: Option<&str>) -> Result<T, ApiError> {
    let raw = raw.unwrap_or("");
    let pairs = query_pairs(Some(raw))?;
    for (i, (key, _)) in pairs.iter().enumerate() {
        if !T::REPEATABLE.contains(&key.as_str()) && pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(ApiError::bad_request(
                ProblemCode::InvalidQuery,
                key,
                format!("query parameter `{key}` given more than once"),
            ));
        }
    }
    serde_html_form::from_str::<T>(raw).map_err(|e| query_error::<T>(&pairs, &e.to_string()))
}

/// A problem for what serde refused, naming the key at fault.
fn query_error<T: QueryParams>(pairs: &[(String, String)], message: &str) -> ApiError {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // "unknown field `k`, expected one of `a`, `b`" (or "there are no fields").
        let mut parts = rest.split('`');
        let key = parts.next().unwrap_or_default();
        let takes: Vec<&str> = parts.skip(1).step_by(2).collect();
        return ApiError::bad_request(
            ProblemCode::UnknownParameter,
            key,
            format!(
                "unknown query parameter `{key}` (this route takes: {})",
                if takes.is_empty() {
                    "none".to_owned()
                } else {
                    takes.join(", ")
                }
            ),
        );
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or_default();
        return ApiError::bad_request(
            ProblemCode::InvalidQuery,
            key,
            format!("query parameter `{key}` is required"),
        );
    }
    // A value serde could not read: the first key that fails on its own.
    for (key, value) in pairs {
        let alone = serde_urlencoded::to_string([(key, value)]).unwrap_or_default();
        if let Err(e) = serde_html_form::from_str::<T>(&alone) {
            if !e.to_string().starts_with("missing field") {
                return ApiError::bad_request(
                    ProblemCode::InvalidQuery,
                    key,
                    format!("`{key}`: `{value}` is not accepted ({e})"),
                );
            }
        }
    }
    ApiError::bad_request(ProblemCode::InvalidQuery, "query", message.to_owned())
}

/// A route that takes no query parameters.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl QueryParams for NoParams {}

/// `limit` of a list (1..=1000, default 100).
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            ProblemCode::InvalidQuery,
            "limit",
            format!("`limit`: `{n}` is not a whole number from 1 to 1000"),
        )),
    }
}
