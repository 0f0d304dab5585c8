//! The catalog: profiles (recipes for sandboxes) and extensions (backends).
//! These are both the YAML files under `profiles/` and `extensions/` and what
//! `GET /v1/profiles` and `GET /v1/extensions` answer.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A profile: which backend, what isolation and network, which inputs, how long.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `profile.<name>`.
    pub id: String,
    /// Bumped whenever the recipe changes; recorded on each sandbox.
    pub version: u32,
    #[serde(default)]
    pub description: String,
    /// The extension this profile is bound to (`ext.<name>`). Exactly one
    /// of `extension` and `routing` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// A policy over candidate extensions, instead of one bound `extension`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<crate::Routing>,
    /// `process` | `container` | `gvisor` | `microvm` | `saas`.
    pub isolation: Isolation,
    /// `ext.docker`: the image the sandbox runs (a reference to an image
    /// on the Docker host, e.g. `local/python:3.12`; never pulled unless
    /// `[docker] pull` allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `ext.docker`: instead of `image`, a template built with
    /// `POST /v1/templates` (its current build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default)]
    pub network: NetworkPolicy,
    #[serde(default)]
    pub workspace: WorkspaceSpec,
    /// Declared inputs by name.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSpec>,
    pub ttl: TtlSpec,
    #[serde(default)]
    pub resources: Resources,
    /// Named relaxations of the default confinement (ext.local).
    #[serde(default, skip_serializing_if = "Security::is_default")]
    pub security: Security,
    #[serde(default)]
    pub setup: Setup,
    #[serde(default)]
    pub placement: PlacementSpec,
    /// How a consumer reaches the sandbox (`local`, `compose`, ...).
    pub reachability: String,
    /// A coarse price tier for people (`free`, `standard`, ...).
    #[serde(default = "default_cost_class")]
    pub cost_class: String,
    /// Scales the extension's `pricing.credits_per_hour` for this profile's
    /// resources: 100 (the default) charges it as is, 200 twice, 50 half.
    #[serde(default = "default_price_factor")]
    pub price_factor_percent: u32,
    /// Limits of this profile's snapshots (all optional).
    #[serde(default)]
    pub snapshot: SnapshotPolicy,
    /// A warm pool: sandboxes of this profile kept provisioned ahead of
    /// demand and handed out on create (see `docs/pools.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    /// Compose stacks (`ext.compose-ssh`): which host-reaching settings the
    /// compose file may use. Without it every one of them is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<ComposePolicy>,
}

/// What a profile lets a compose file do beyond the default, which refuses
/// every setting that reaches the placement host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ComposePolicy {
    /// Settings allowed: `privileged`, `host_network` (`network_mode: host`),
    /// `host_pid` (`pid: host`), `host_ipc` (`ipc: host`), `host_userns`
    /// (`userns_mode: host`), `devices`, `cap_add`, `unconfined`
    /// (`security_opt` `seccomp:unconfined` / `apparmor:unconfined`),
    /// `host_binds` (bind mounts from outside the uploaded project).
    #[serde(default)]
    pub allow: Vec<ComposeAllow>,
}

/// One compose setting a profile may allow (see [`ComposePolicy`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ComposeAllow {
    Privileged,
    HostNetwork,
    HostPid,
    HostIpc,
    HostUserns,
    Devices,
    CapAdd,
    Unconfined,
    HostBinds,
}

/// A profile's warm pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// How many ready, unassigned sandboxes to keep (0 to 256; 0 keeps none).
    pub size: u32,
    /// How long an unassigned sandbox may wait before it is replaced by a
    /// fresh one (humantime, at least `1s`).
    pub max_age: String,
}

/// Snapshot limits of a profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SnapshotPolicy {
    /// Largest workspace a capture may archive, before compression
    /// (`2GiB`, `500MB`, `64KiB`); over it the capture fails with `snapshot_too_large`.
    #[serde(default = "default_snapshot_max_size")]
    pub max_size: String,
    /// How long a snapshot is kept before the reaper deletes it (humantime).
    #[serde(default = "default_snapshot_ttl")]
    pub ttl: String,
}

fn default_snapshot_max_size() -> String {
    "2GiB".to_owned()
}

fn default_snapshot_ttl() -> String {
    "7d".to_owned()
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            max_size: default_snapshot_max_size(),
            ttl: default_snapshot_ttl(),
        }
    }
}

fn default_cost_class() -> String {
    "standard".to_owned()
}

fn default_price_factor() -> u32 {
    100
}

/// How a sandbox is isolated from its host.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    Process,
    Container,
    Gvisor,
    Microvm,
    Saas,
}

/// Network policy of a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub mode: NetworkMode,
    /// Destinations reachable with `mode: egress`: a domain (`pypi.org`),
    /// a wildcard for the names below one (`*.pythonhosted.org`), an IP
    /// address or a CIDR (`10.1.0.0/16`), each optionally with `:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Destinations refused even when `allow` names them (same forms).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// A name as compared: lower case, no trailing dot; `None` when it is not
/// a DNS name (labels of letters, digits, `-` and `_`, 1 to 63 bytes each,
/// 253 in all).
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// `none` (default: loopback only), `egress` (an allow-list) or `open`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    #[default]
    None,
    Egress,
    Open,
}

/// How the workspace starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// `empty` (a fresh directory) or `copy` (filled from the input named in `from_input`).
    #[serde(default = "default_workspace_mode")]
    pub mode: String,
    /// The input whose directory fills the workspace, for `copy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_input: Option<String>,
}

fn default_workspace_mode() -> String {
    "empty".to_owned()
}

impl Default for WorkspaceSpec {
    fn default() -> Self {
        Self {
            mode: default_workspace_mode(),
            from_input: None,
        }
    }
}

/// A declared input of a profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub description: String,
}

/// Lifetime rules, as humantime durations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TtlSpec {
    /// Lifetime when a create names none.
    pub default: String,
    /// Hard ceiling counted from creation; extend never goes past it.
    pub max: String,
    /// Destroy after this long without activity (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_reap: Option<String>,
    /// What happens when the TTL runs out (or `idle_reap` strikes):
    /// `destroy` (default), or `snapshot`: an exit snapshot of the
    /// workspace is taken first and recorded as the sandbox's
    /// `exit_snapshot`, so a fork (`from_snapshot`) brings the work back.
    #[serde(default, skip_serializing_if = "OnExpire::is_destroy")]
    pub on_expire: OnExpire,
    /// `true`: the TTL stops while the sandbox is paused and runs on from
    /// where it was at resume. A pause then lasts at most `ttl.max`; past
    /// that the sandbox expires paused (reason `ttl_expired`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_stops_clock: bool,
}

/// `ttl.on_expire`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnExpire {
    #[default]
    Destroy,
    Snapshot,
}

impl OnExpire {
    /// Whether this is the default.
    pub fn is_destroy(&self) -> bool {
        *self == OnExpire::Destroy
    }
}

/// Resources a sandbox may use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// e.g. `512MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// e.g. `2GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// The most processes (threads count) at once; ext.local defaults it to 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// `security` of a profile: the default confinement, relaxed only by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Switches that each allow a group of system calls the seccomp filter
    /// denies by default: `ptrace` (ptrace, process_vm_readv/writev: gdb,
    /// strace inside the sandbox), `perf` (perf_event_open: profilers),
    /// `io_uring` (io_uring_setup/enter/register).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

impl Security {
    /// Nothing relaxed.
    pub fn is_default(&self) -> bool {
        self.allow.is_empty()
    }
}

/// What is set up inside a sandbox when it is provisioned.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// Environment variables of the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables filled from secrets named in the daemon's
    /// configuration (`[secrets.<name>]`), resolved at provision time and
    /// never stored or shown: variable name → secret name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_refs: BTreeMap<String, String>,
}

/// Preferred and fallback hosts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    #[serde(default)]
    pub prefer: Vec<String>,
    #[serde(default)]
    pub fallback: Vec<String>,
}

/// An extension: a backend that provisions sandboxes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtensionSpec {
    /// `ext.<name>`.
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// `self-hosted` or `saas`.
    pub class: ExtensionClass,
    pub capabilities: Capabilities,
    pub pricing: Pricing,
    /// Hosts (self-hosted) or regions (SaaS) it can place on.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The backend compiled into sandboxerd that runs this entry, when it is
    /// not the one named by `id`: several catalog entries (price tiers, a
    /// pinned tool build) may share one backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Settings of the backend for this entry (for `ext.local`: `bwrap`,
    /// the absolute path of the bubblewrap to run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// Whether an extension runs on our hosts or is a provider's service.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ExtensionClass {
    SelfHosted,
    Saas,
}

/// What an extension can do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub snapshot: bool,
    #[serde(default)]
    pub restore: bool,
    pub isolation: Vec<Isolation>,
    pub network_policies: Vec<NetworkMode>,
}

/// Prices in integer credits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    pub credits_per_hour: i64,
    #[serde(default)]
    pub credits_per_snapshot_gib: i64,
    /// The rate of a paused sandbox (its memory is kept): 0 (the default)
    /// to `credits_per_hour`, scaled by the profile's `price_factor_percent`
    /// like the running rate.
    #[serde(default)]
    pub credits_per_paused_hour: i64,
}

/// An extension with its live availability, as `GET /v1/extensions` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Extension {
    pub id: String,
    pub description: String,
    pub class: ExtensionClass,
    pub capabilities: Capabilities,
    pub pricing: Pricing,
    pub hosts: Vec<String>,
    pub availability: Availability,
}

impl Extension {
    /// A catalog entry with its availability. (Fields are spelled out, not
    /// flattened: the YAML type refuses unknown fields, and a flattened
    /// strict schema would refuse `availability` in the OpenAPI document.)
    pub fn new(spec: ExtensionSpec, availability: Availability) -> Self {
        Self {
            id: spec.id,
            description: spec.description,
            class: spec.class,
            capabilities: spec.capabilities,
            pricing: spec.pricing,
            hosts: spec.hosts,
            availability,
        }
    }
}

/// Whether an extension can provision right now, and why not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Availability {
    pub available: bool,
    /// Why it is unavailable (e.g. `bwrap` not found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
