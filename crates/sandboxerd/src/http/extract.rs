//! Extractors whose rejections are problems with stable codes.
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
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
            "invalid_body",
            // serde names the field and where it is.
            text.trim_start_matches("Failed to deserialize the JSON body into the target type: ")
                .to_owned(),
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", text)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with `Content-Type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than 1 MiB",
        ),
        other => ApiError::new(other.status(), "invalid_body", text),
    }
}

/// Query-string pairs, in order, repeated keys kept.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or("")).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            "query",
            format!("malformed query string: {e}"),
        )
    })
}

/// Refuse parameters a route does not take, so a typo is not silently ignored.
pub fn only_params(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    for (k, _) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                k,
                format!(
                    "unknown query parameter `{k}` (this route takes: {})",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// The value of a parameter given at most once.
pub fn single<'a>(pairs: &'a [(String, String)], key: &str) -> Result<Option<&'a str>, ApiError> {
    let mut found = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            key,
            format!("query parameter `{key}` given more than once"),
        ));
    }
    Ok(first)
}

/// The longest anyone may block on a `wait`/`timeout` parameter.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Parse a humantime duration from field `field`; `max` bounds it.
pub fn duration(field: &str, value: &str, max: Option<Duration>) -> Result<Duration, ApiError> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        ApiError::unprocessable(
            "invalid_duration",
            field,
            format!("`{field}`: `{value}` is not a duration like `30m`, `4h` or `1h30m` ({e})"),
        )
    })?;
    if let Some(max) = max {
        if d > max {
            return Err(ApiError::unprocessable(
                "invalid_duration",
                field,
                format!(
                    "`{field}`: {value} is longer than the most allowed, {}",
                    humantime::format_duration(max)
                ),
            ));
        }
    }
    Ok(d)
}

/// `?limit=` (1..=1000, default 100).
pub fn limit(pairs: &[(String, String)]) -> Result<u32, ApiError> {
    match single(pairs, "limit")? {
        None => Ok(100),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_query",
                "limit",
                format!("`limit`: `{v}` is not a whole number from 1 to 1000"),
            )),
        },
    }
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
                "invalid_body",
                e.to_string(),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string())
        }
    })
}
