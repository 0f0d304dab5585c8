//! Sandboxes, their lifecycle states and events.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a sandbox is in its lifecycle.
///
/// `requested → provisioning → ready → active → destroying → destroyed`,
/// with `failed` (provisioning or teardown went wrong) and `expired` (its TTL
/// passed; teardown follows).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Requested,
    Provisioning,
    Ready,
    Active,
    Destroying,
    Destroyed,
    Failed,
    Expired,
    /// Every process frozen, memory kept (`POST …/pause`); `resume` makes it
    /// `ready` again. Its TTL keeps running.
    Paused,
}

impl SandboxState {
    /// Every state, in lifecycle order.
    pub const ALL: [SandboxState; 9] = [
        SandboxState::Requested,
        SandboxState::Provisioning,
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Destroying,
        SandboxState::Destroyed,
        SandboxState::Failed,
        SandboxState::Expired,
        SandboxState::Paused,
    ];

    /// The wire name (`ready`, `destroying`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Requested => "requested",
            SandboxState::Provisioning => "provisioning",
            SandboxState::Ready => "ready",
            SandboxState::Active => "active",
            SandboxState::Destroying => "destroying",
            SandboxState::Destroyed => "destroyed",
            SandboxState::Failed => "failed",
            SandboxState::Expired => "expired",
            SandboxState::Paused => "paused",
        }
    }

    /// Whether a consumer can use the sandbox in this state.
    pub fn is_live(self) -> bool {
        matches!(self, SandboxState::Ready | SandboxState::Active)
    }

    /// The states in which a sandbox exists and holds its resources (not
    /// ended): requested to active, or paused. Its TTL runs in each.
    pub const HOLDING: [SandboxState; 5] = [
        SandboxState::Requested,
        SandboxState::Provisioning,
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Paused,
    ];

    /// Whether nothing more will happen to the sandbox on its own.
    pub fn is_settled(self) -> bool {
        matches!(self, SandboxState::Destroyed | SandboxState::Failed)
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SandboxState::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state `{s}` (one of: {})", names.join(", "))
            })
    }
}

/// Who a sandbox belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// `adm` (a person), `agt` (an agent) or `atm` (an automation).
    pub actor_type: String,
    /// Who, e.g. `glas-harness`.
    pub actor: String,
    /// The project the sandbox is billed to and scoped by.
    pub project: String,
}

/// Why a sandbox failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    /// Stable code, e.g. `backend_unavailable`, `provision_failed`, `not_ready_in_time`.
    // A string, so a code newer than the client still decodes.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::ProblemCode))]
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and what happened.
    pub fn new(code: crate::ProblemCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// Why a sandbox ended (API.md "Lifecycle additions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// `DELETE /v1/sandboxes/{id}` (or a pool retiring a spare).
    Destroyed,
    /// Its TTL ran out.
    TtlExpired,
    /// Idle past its profile's `idle_reap`.
    IdleReaped,
    /// Its init was killed for going over its memory limit.
    OomKilled,
    /// Its init ended after the sandbox hit its `pids` limit.
    PidsExceeded,
    /// Its init ended after the workspace filled its `disk` limit.
    DiskFull,
    /// Its init (the agent, or the profile's command) ended by itself.
    InitExited,
    /// The backend lost it (found gone after a restart, or its host went).
    BackendLost,
    /// Its project ran out of credits.
    CreditsExhausted,
    /// It never became ready.
    ProvisionFailed,
}

impl TerminationReason {
    /// Every reason, in the order API.md lists them.
    pub const ALL: [TerminationReason; 10] = [
        TerminationReason::Destroyed,
        TerminationReason::TtlExpired,
        TerminationReason::IdleReaped,
        TerminationReason::OomKilled,
        TerminationReason::PidsExceeded,
        TerminationReason::DiskFull,
        TerminationReason::InitExited,
        TerminationReason::BackendLost,
        TerminationReason::CreditsExhausted,
        TerminationReason::ProvisionFailed,
    ];

    /// The wire name (`oom_killed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::Destroyed => "destroyed",
            TerminationReason::TtlExpired => "ttl_expired",
            TerminationReason::IdleReaped => "idle_reaped",
            TerminationReason::OomKilled => "oom_killed",
            TerminationReason::PidsExceeded => "pids_exceeded",
            TerminationReason::DiskFull => "disk_full",
            TerminationReason::InitExited => "init_exited",
            TerminationReason::BackendLost => "backend_lost",
            TerminationReason::CreditsExhausted => "credits_exhausted",
            TerminationReason::ProvisionFailed => "provision_failed",
        }
    }
}

impl std::fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TerminationReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TerminationReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown termination reason `{s}`"))
    }
}

/// How and when a sandbox ended: set once, by whatever decided its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Termination {
    pub reason: TerminationReason,
    pub at: DateTime<Utc>,
    /// What happened, for people (`memory limit 256 MiB reached`, ...).
    pub detail: String,
}

/// What a live sandbox uses now (where its extension can tell).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// CPU time of every process in it since it started.
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    /// The highest `memory_bytes` so far.
    pub memory_peak_bytes: u64,
    /// Processes (threads included) in it now.
    pub pids: u64,
    /// What its workspace holds.
    pub disk_bytes: u64,
    /// Processes the kernel killed for going over `memory`.
    pub oom_kills: u64,
    /// Forks refused at the `pids` limit.
    pub pids_refused: u64,
}

/// What a sandbox is expected to cost and has cost so far, in integer credits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cost {
    /// The price of its whole lifetime (`expires_at - created_at`) at its
    /// extension's rate: what is reserved when credits are enforced.
    pub estimate_credits: i64,
    /// Debited so far for its running time (every generation).
    pub accrued_credits: i64,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sandbox {
    /// `sbx_` followed by a ULID.
    pub id: String,
    /// Its name, unique among the project's live sandboxes (`null`: none).
    #[serde(default)]
    pub name: Option<String>,
    /// The snapshot taken when its TTL ran out or it was reaped idle
    /// (`ttl.on_expire: snapshot`): fork it with `from_snapshot` to get the
    /// work back. `null` when none was taken (it may have `failed`: see the
    /// snapshot).
    #[serde(default)]
    pub exit_snapshot: Option<String>,
    pub profile: String,
    pub profile_version: u32,
    pub extension: String,
    pub host: String,
    pub state: SandboxState,
    pub consumer: Consumer,
    pub inputs: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Starts at 1; each recreate adds one.
    pub generation: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub destroyed_at: Option<DateTime<Utc>>,
    /// The latest activity (create, touch, extend): idle reap counts from it.
    pub last_activity_at: DateTime<Utc>,
    /// While `paused`: since when.
    #[serde(default)]
    pub paused_at: Option<DateTime<Utc>>,
    /// How to get in; `null` until the sandbox is ready. The `kind` field
    /// says which shape it has (`local`: `workdir`, `pid`, `enter`).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub reachability: Option<serde_json::Value>,
    pub failure: Option<Failure>,
    pub cost: Cost,
    /// For profiles that route over candidates: which extensions were
    /// considered, why each was skipped, which one was chosen. `null` for
    /// profiles bound to one extension.
    #[serde(default)]
    pub route: Option<crate::Route>,
    /// Why and when it ended; `null` while it lives.
    #[serde(default)]
    pub termination: Option<Termination>,
    /// Live usage of a `ready`/`active` sandbox (`GET /v1/sandboxes/{id}`
    /// only, and only where its extension measures it); `null` otherwise.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Where to place a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// A host id; must be one the profile's extension serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// A profile id, e.g. `profile.local-shell`. Required unless
    /// `from_snapshot` is given, which defaults it to the snapshot's profile.
    #[serde(default)]
    pub profile: String,
    /// Values for the profile's declared inputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Lifetime as a humantime duration (`30m`, `4h`); defaults to the profile's `ttl.default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Free-form labels for filtering (`?label=k=v`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Who the sandbox is for; defaults to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Consumer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Fork: a snapshot (`snap_…`) whose workspace the new sandbox starts
    /// from. `profile` may then name another profile on the same extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// OpenSSH public keys that may open SSH sessions into the sandbox
    /// through the daemon's SSH gateway (as `POST …/ssh-keys` adds them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// A name unique among the project's live sandboxes (1 to 128 letters,
    /// digits, `-`, `_` and `.`, starting with a letter or digit). A create
    /// whose name is taken answers 409 `name_taken`, or, with `if_exists:
    /// "return"`, 200 with that sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What a create whose `name` is taken does: `error` (default: 409
    /// `name_taken`) or `return` (get-or-create: 200 with the live sandbox
    /// of that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_exists: Option<IfExists>,
}

/// `if_exists` of a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum IfExists {
    /// 409 `name_taken`.
    Error,
    /// 200 with the live sandbox of that name.
    Return,
}

/// Body of `POST /v1/sandboxes/{id}/recreate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RecreateSandbox {
    /// Fresh lifetime; defaults to the profile's `ttl.default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Body of `PATCH /v1/sandboxes/{id}/ttl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtendTtl {
    /// How far to move `expires_at` forward (`30m`, `2h`).
    pub duration: String,
}

/// Answer of `PATCH /v1/sandboxes/{id}/ttl`: the sandbox and whether the
/// extension was cut at the profile's `ttl.max`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtendedSandbox {
    #[serde(flatten)]
    pub sandbox: Sandbox,
    /// True when `expires_at` stopped at `created_at + ttl.max`.
    pub ttl_capped: bool,
}

/// One lifecycle transition of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// `evt_` followed by a ULID.
    pub id: String,
    pub sandbox_id: String,
    /// The generation the transition belongs to.
    pub generation: u32,
    /// `null` for the first event of a sandbox.
    pub from_state: Option<SandboxState>,
    pub to_state: SandboxState,
    /// Why the transition happened.
    pub reason: String,
    pub at: DateTime<Utc>,
    /// On the event that decided the sandbox's end: why it ended.
    #[serde(default)]
    pub termination: Option<TerminationReason>,
}

/// Body of `POST /v1/expire`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExpireRequest {
    /// `false` (default): only list what is due. `true`: expire and destroy it now.
    #[serde(default)]
    pub apply: bool,
}

/// Answer of `POST /v1/expire`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExpireReport {
    /// Whether the sandboxes were expired (`true`) or only listed.
    pub applied: bool,
    /// The sandboxes past `expires_at`: as they are (dry run) or as expired.
    pub items: Vec<Sandbox>,
}
