//! Snapshots: content-addressed archives of a sandbox's workspace, to roll a
//! sandbox back in place or to fork new sandboxes from.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Failure;

/// Where a snapshot is in its life.
///
/// `creating → ready`, or `failed` (the capture went wrong; `failure` says
/// why and no archive was kept); `deleted` once deleted or expired.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    Creating,
    Ready,
    Failed,
    Deleted,
}

impl SnapshotState {
    /// Every state, in lifecycle order.
    pub const ALL: [SnapshotState; 4] = [
        SnapshotState::Creating,
        SnapshotState::Ready,
        SnapshotState::Failed,
        SnapshotState::Deleted,
    ];

    /// The wire name (`creating`, `ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "creating",
            SnapshotState::Ready => "ready",
            SnapshotState::Failed => "failed",
            SnapshotState::Deleted => "deleted",
        }
    }
}

impl std::fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SnapshotState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SnapshotState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SnapshotState::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown snapshot state `{s}` (one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    /// `snap_` followed by a ULID.
    pub id: String,
    /// The sandbox it was taken of (which may since have been destroyed).
    pub sandbox_id: String,
    /// The sandbox's generation when it was taken.
    pub sandbox_generation: u32,
    /// The profile (and its version) the sandbox ran: a fork uses it by default.
    pub profile: String,
    pub profile_version: u32,
    pub extension: String,
    pub host: String,
    /// The project it belongs to (that of its sandbox).
    pub project: String,
    /// Free text given at creation.
    pub label: Option<String>,
    pub state: SnapshotState,
    /// Bytes of the stored (compressed) archive; `null` until ready.
    pub size_bytes: Option<u64>,
    /// Bytes of the workspace as archived, before compression: the figure
    /// the profile's `snapshot.max_size` bounds. `null` until ready.
    pub content_bytes: Option<u64>,
    /// SHA-256 (hex) of the stored archive, its content address; `null` until ready.
    pub sha256: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
    /// When the reaper deletes it (the profile's `snapshot.ttl` after creation).
    pub expires_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why the capture failed (`snapshot_too_large`, `interrupted`, ...).
    pub failure: Option<Failure>,
}

/// Body of `POST /v1/sandboxes/{id}/snapshots` (may be empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Free text to recognise the snapshot by (at most 256 characters, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Body of `POST /v1/sandboxes/{id}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshot {
    /// The snapshot (`snap_…`) whose workspace replaces the sandbox's.
    pub snapshot_id: String,
}
