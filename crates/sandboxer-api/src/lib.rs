//! The HTTP contract of sand-boxer (see `shared/API.md`): every type that
//! crosses the wire, shared by the daemon and the client so they can never
//! drift apart. OpenAPI schemas are derived behind the `openapi` feature.
#![forbid(unsafe_code)]

pub mod access;
pub mod catalog;
pub mod credits;
pub mod host;
pub mod problem;
pub mod routing;
pub mod sandbox;
pub mod snapshot;
pub mod template;

pub use access::*;
pub use catalog::*;
pub use credits::*;
pub use host::*;
pub use problem::{Problem, ProblemCode};
pub use routing::*;
pub use sandbox::*;
pub use snapshot::*;
pub use template::*;

use serde::{Deserialize, Serialize};

/// A page of a list: `items` plus the cursor of the next page (`null` on the last).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` to get the next page; `null` when there is none.
    pub next_cursor: Option<String>,
}

/// Answer of `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`, or `starting` while the daemon is not ready.
    pub status: String,
}

/// One mutating request, as `GET /v1/audit` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Position in the trail (newest is highest).
    pub seq: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor_type: String,
    pub actor: String,
    pub project: String,
    /// `consumer` or `operator`.
    pub role: String,
    pub method: String,
    pub path: String,
    /// The sandbox the request was about, when there was one.
    pub sandbox_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// The problem code, when the request failed.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<ProblemCode>))]
    pub code: Option<String>,
}
