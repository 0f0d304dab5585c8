//! Placement hosts (`GET /v1/hosts`): where self-hosted backends such as
//! `ext.compose-ssh` run sandboxes, as configured, with what was last seen.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A placement host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Host {
    /// Id named by profiles' `placement` and requests' `placement.host`.
    pub id: String,
    /// Hostname or IP address of its SSH server.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// SSH user sandboxes are made as.
    pub user: String,
    /// The pinned host key (`ssh-ed25519 AAAA…`).
    pub host_key: String,
    /// `docker` | `podman` | `auto`, as configured.
    pub engine: String,
    /// Folder under which each sandbox gets `<workdir>/<sandbox id>`.
    pub workdir: String,
    /// Free-form labels from the configuration.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Most live sandboxes at once (0: no cap).
    pub max_sandboxes: u32,
    /// Extensions that place on this host.
    pub extensions: Vec<String>,
    /// What was last seen of the host.
    pub telemetry: HostTelemetry,
}

/// The last facts learnt about a host, without contacting it now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostTelemetry {
    /// Outcome of the last SSH connection (`null`: none tried yet).
    pub reachable: Option<bool>,
    /// When that was.
    pub checked_at: Option<DateTime<Utc>>,
    /// The last connection error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The container engine found (`docker`, `podman`), once detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The compose command found (`docker compose`, `docker-compose`, `podman-compose`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
}

/// Live facts from a host (`GET /v1/hosts/{id}/inspect`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostInspect {
    /// The host id.
    pub host: String,
    /// `docker` or `podman`.
    pub engine: String,
    /// The engine's server version.
    pub engine_version: String,
    /// The compose command used.
    pub compose: String,
    /// `/proc/loadavg` of the host: 1, 5 and 15 minute load averages.
    pub load: Vec<f64>,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// Memory available for new work in bytes.
    pub memory_available_bytes: u64,
    /// Size of the filesystem holding the workdir, in bytes.
    pub disk_total_bytes: u64,
    /// Free space there, in bytes.
    pub disk_available_bytes: u64,
    /// Containers carrying the `io.sandboxer.sandbox-id` label.
    pub labelled_containers: u64,
    /// Of them, running.
    pub running_containers: u64,
    /// Sandbox folders under the workdir.
    pub workspaces: u64,
}

/// One resource sand-boxer left on a host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StaleItem {
    /// `container`, `network`, `volume` or `workdir`.
    pub kind: String,
    /// Its name on the host (a path for a workdir).
    pub name: String,
    /// The sandbox it was made for.
    pub sandbox_id: String,
}

/// What no live sandbox owns on a host (`GET /v1/hosts/{id}/stale`,
/// `POST /v1/hosts/{id}/reap-stale`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StaleReport {
    /// The host id.
    pub host: String,
    /// The stale resources found.
    pub items: Vec<StaleItem>,
    /// `true` when they were removed (`apply`), `false` for a dry run.
    pub applied: bool,
    /// Sandbox ids whose leftovers could not be removed, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Body of `POST /v1/hosts/{id}/reap-stale`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReapStale {
    /// Remove what is found; without it, a dry run.
    #[serde(default)]
    pub apply: bool,
}
