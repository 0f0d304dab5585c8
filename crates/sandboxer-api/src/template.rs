//! Templates: ext.docker images built by the daemon from a Dockerfile (and
//! its context), cached by the hash of what they were built from.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /v1/templates` (JSON): a template from a Dockerfile alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BuildTemplate {
    /// 1 to 63 lower-case letters, digits, `.`, `_` and `-`, starting with
    /// a letter or digit; profiles name it in `template:`.
    pub id: String,
    /// The Dockerfile's text (`FROM` an image on the Docker host: nothing
    /// is pulled).
    pub dockerfile: String,
}

/// A built template.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Template {
    pub id: String,
    /// The image sandboxes of it run (`sandboxer-template/<id>:current`).
    pub image: String,
    /// SHA-256 (hex) of the build context (the Dockerfile alone, or the
    /// uploaded tar): the same inputs are never built twice.
    pub content_hash: String,
    /// The Docker image id.
    pub image_id: String,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
    /// This answer reused an earlier build of the same inputs.
    #[serde(default)]
    pub cached: bool,
}
