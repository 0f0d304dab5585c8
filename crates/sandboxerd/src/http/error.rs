//! One error type for handlers, mapped once to `application/problem+json`.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxer_api::Problem;

use crate::store::StoreError;

/// An error answer: a status, a stable code, a detail naming the field.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    /// The same error, naming the request field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        let code = match what {
            "sandbox" => "sandbox_not_found",
            "profile" => "profile_not_found",
            "extension" => "extension_not_found",
            "snapshot" => "snapshot_not_found",
            _ => "not_found",
        };
        Self::new(
            StatusCode::NOT_FOUND,
            code,
            format!("{what} `{id}` not found"),
        )
    }

    pub fn unprocessable(code: &'static str, field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).field(field)
    }

    pub fn bad_request(code: &'static str, field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail).field(field)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!(
                "https://sand-boxer.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            field: self.field.clone(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The cause goes to the log with its chain; the client gets no internals.
        tracing::error!(error = %e, "storage error");
        if e.is_storage_unavailable() {
            // Nothing of the request was stored: worth retrying later.
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the daemon cannot store this now (its database cannot be written); nothing was changed, retry later",
            );
        }
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the daemon's log",
        )
    }
}

/// The problem code of an error answer, left on the response for the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp.extensions_mut().insert(ProblemCode(self.code));
        resp
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// 402 `insufficient_credits`, naming what is available and what `what` needs.
pub fn insufficient(short: crate::store::Shortfall, project: &str, what: &str) -> ApiError {
    let whose = if project.is_empty() {
        "the project".to_owned()
    } else {
        format!("project `{project}`")
    };
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_credits",
        format!(
            "{whose} has {} credits available; {what} needs {} reserved",
            short.available, short.needed
        ),
    )
}
