//! Who is calling: resolved from the bearer token by the auth middleware
//! (see `auth.rs`) and handed to handlers as an extractor.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use sandboxer_api::{Consumer, ProblemCode};

use super::error::ApiError;
use crate::lifecycle::Actor;

/// The identity a request acts as.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer: Consumer,
    /// Operators see and act on every project.
    pub operator: bool,
    /// Index of the token in the configuration (`None`: the local operator).
    pub token: Option<usize>,
}

impl Caller {
    /// The single local operator of a daemon without tokens (loopback only).
    pub fn local_operator() -> Self {
        Self {
            consumer: Consumer {
                actor_type: "adm".into(),
                actor: "local".into(),
                project: "default".into(),
            },
            operator: true,
            token: None,
        }
    }

    /// Who the operations see asking.
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            consumer: &self.consumer,
            operator: self.operator,
        }
    }

    /// The project every query is scoped to (`None`: all, for operators).
    pub fn scope(&self) -> Option<&str> {
        self.actor().scope()
    }

    /// `consumer` or `operator`.
    pub fn role(&self) -> &'static str {
        if self.operator {
            "operator"
        } else {
            "consumer"
        }
    }

    /// Refuse a consumer on an operator route.
    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        if self.operator {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ProblemCode::Forbidden,
                format!("{what} is for operators; this token has the consumer role"),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ProblemCode::Unauthorized,
                "this route needs `Authorization: Bearer <token>`",
            )
        })
    }
}
