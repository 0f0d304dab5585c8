//! One error type for handlers, mapped once to `application/problem+json`:
//! the operations' [`OpError`] and storage errors become problems here.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxer_api::{Problem, ProblemCode};

use crate::lifecycle::{Missing, OpError, Refusal};
use crate::store::StoreError;

/// An error answer: a status, a stable code, a detail naming the field.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ProblemCode,
    pub detail: String,
    pub field: Option<String>,
    /// Seconds for `Retry-After`, when waiting may help.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// The same error, naming the request field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error, telling the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 404: `what` `id` does not exist (for this caller).
    pub fn not_found(what: Missing, id: &str) -> Self {
        OpError::not_found(what, id).into()
    }

    pub fn unprocessable(code: ProblemCode, field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).field(field)
    }

    pub fn bad_request(code: ProblemCode, field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail).field(field)
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!(
                "https://sand-boxer.dev/problems/{}",
                self.code.as_str().replace('_', "-")
            ),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_owned(),
            field: self.field.clone(),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let (how, code, detail, field) = match e {
            OpError::Store(e) => return e.into(),
            OpError::Refused {
                how,
                code,
                detail,
                field,
            } => (how, code, detail, field),
        };
        let status = match how {
            Refusal::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Conflict => StatusCode::CONFLICT,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::Credits => StatusCode::PAYMENT_REQUIRED,
            Refusal::Busy => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Upstream => StatusCode::BAD_GATEWAY,
        };
        let mut err = ApiError::new(status, code, detail);
        err.field = field;
        if how == Refusal::Busy {
            // Sandboxes come and go within seconds to minutes.
            err = err.retry_after(30);
        }
        err
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
                ProblemCode::StorageUnavailable,
                "the daemon cannot store this now (its database cannot be written); nothing was changed, retry later",
            );
        }
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::Internal,
            "internal error; see the daemon's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Left on the response for the audit trail.
        resp.extensions_mut().insert(self.code);
        resp
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
