//! Who is calling. Without tokens configured (the only mode so far) the
//! daemon serves loopback only, and every caller is the one local operator.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sandboxer_api::Consumer;

use super::error::ApiError;

/// The identity a request acts as.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer: Consumer,
    /// Operators see and act on every project.
    pub operator: bool,
}

impl Caller {
    /// The single local operator of a daemon without tokens.
    pub fn local_operator() -> Self {
        Self {
            consumer: Consumer {
                actor_type: "adm".into(),
                actor: "local".into(),
                project: "default".into(),
            },
            operator: true,
        }
    }

    /// The project every query is scoped to (`None`: all, for operators).
    pub fn scope(&self) -> Option<&str> {
        if self.operator {
            None
        } else {
            Some(&self.consumer.project)
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller::local_operator())
    }
}
