//! Backends behind one trait. A backend is one module here plus one YAML
//! file under `extensions/`; the catalog binds the two by id.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sandboxer_api::{
    Availability, CostBreakdown, Pricing, ProblemCode, Profile, TerminationReason, Usage,
};
use tokio_util::sync::CancellationToken;

pub mod archive;
pub mod compose;
pub mod docker;
pub mod fsutil;
pub mod local;

/// What a backend needs to provision one sandbox.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub sandbox_id: String,
    pub generation: u32,
    pub profile: Profile,
    pub inputs: BTreeMap<String, String>,
    pub host: String,
    /// Fork: the workspace starts from this snapshot, filled before the
    /// sandbox's init starts (its archive verified on the way).
    pub from_snapshot: Option<SnapshotSource>,
    /// Secret environment variables (`setup.secret_refs`, resolved).
    pub secrets: BTreeMap<String, crate::secrets::Secret>,
}

/// The environment of a sandbox's processes, for a backend that starts
/// them again on restore: the profile's `setup.env` and resolved secrets.
#[derive(Debug, Clone, Copy)]
pub struct SandboxEnv<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub secrets: &'a BTreeMap<String, crate::secrets::Secret>,
}

/// A stored snapshot archive to restore or fork from.
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    /// The snapshot id (`snap_…`), for messages.
    pub id: String,
    /// The archive on the daemon's disk.
    pub path: PathBuf,
    /// What the archive must hash to (SHA-256, hex); anything else is `snapshot_corrupt`.
    pub sha256: String,
}

/// What a capture wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotArchive {
    /// SHA-256 (hex) of the archive written.
    pub sha256: String,
    /// Bytes written (compressed).
    pub size_bytes: u64,
    /// Bytes of the workspace as archived, before compression.
    pub content_bytes: u64,
}

/// A backend's view of a running sandbox, kept on the sandbox row as JSON so a
/// restarted daemon can find (and tear down) what it made.
pub type BackendState = serde_json::Value;

/// What `wait_ready` learns: how to reach the sandbox, and the state to keep.
#[derive(Debug, Clone)]
pub struct ReadyInfo {
    pub reachability: serde_json::Value,
    pub backend_state: BackendState,
}

/// Whether a backend still holds a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone,
}

/// The failure of a capture whose `cancel` token was cancelled.
pub fn snapshot_cancelled() -> ExtError {
    ExtError::new(
        ProblemCode::SnapshotCancelled,
        "the capture was cancelled: the sandbox is being torn down or the daemon is stopping",
    )
}

/// The failure of a capture that [`archive::write_archive`] refused.
pub fn snapshot_write_error(e: archive::WriteError) -> ExtError {
    match e {
        archive::WriteError::TooLarge { limit } => ExtError::new(
            ProblemCode::SnapshotTooLarge,
            format!(
                "the workspace is larger than the profile's snapshot.max_size ({limit} bytes before compression)"
            ),
        ),
        archive::WriteError::Cancelled => snapshot_cancelled(),
        archive::WriteError::Io(msg) => ExtError::new(ProblemCode::SnapshotFailed, msg),
    }
}

/// A backend failure with a stable code that ends up in the sandbox's `failure`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ExtError {
    pub code: ProblemCode,
    pub message: String,
    /// The host could not be used at all and nothing was made on it (no
    /// connection, or full): placement may try another host.
    pub host_unusable: bool,
}

impl From<crate::secrets::SecretError> for ExtError {
    fn from(e: crate::secrets::SecretError) -> Self {
        ExtError::new(ProblemCode::SecretUnavailable, e.0)
    }
}

impl ExtError {
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            host_unusable: false,
        }
    }

    /// The `failure` a sandbox or snapshot records for this error.
    pub fn into_failure(self) -> sandboxer_api::Failure {
        sandboxer_api::Failure::new(self.code, self.message)
    }

    /// Mark the failure as one of the host, before anything was made there.
    pub fn host_unusable(mut self) -> Self {
        self.host_unusable = true;
        self
    }
}

/// One sandbox backend. Every method may be retried: `teardown` in
/// particular must succeed on a sandbox that is half made, already gone, or
/// was never made at all, so that a restarted daemon can always finish it.
#[async_trait]
pub trait Extension: Send + Sync {
    /// The catalog id (`ext.local`).
    fn id(&self) -> &'static str;

    /// Whether the backend can provision right now (checked live).
    async fn availability(&self) -> Availability;

    /// Host ids this backend places on.
    fn hosts(&self) -> Vec<String>;

    /// Whether host `id` failed its last connection attempt (placement
    /// then prefers the others).
    fn host_known_down(&self, _id: &str) -> bool {
        false
    }

    /// Start making the sandbox. Returns the state needed to find it again.
    async fn provision(&self, req: &ProvisionRequest) -> Result<BackendState, ExtError>;

    /// Wait until the sandbox is reachable, at most `timeout`.
    async fn wait_ready(
        &self,
        sandbox_id: &str,
        state: &BackendState,
        timeout: Duration,
    ) -> Result<ReadyInfo, ExtError>;

    /// Remove everything the sandbox holds on the backend. Idempotent.
    async fn teardown(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError>;

    /// Ask the backend whether the sandbox still exists.
    async fn probe(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<Liveness, ExtError>;

    /// Whether this backend can pause sandboxes ([`Extension::pause`]).
    fn can_pause(&self) -> bool {
        false
    }

    /// Freezes every process of the sandbox, keeping its memory.
    /// Idempotent: a paused sandbox stays paused.
    async fn pause(
        &self,
        _sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        Err(cannot_pause(self.id()))
    }

    /// Lets every process of a paused sandbox run again. Idempotent.
    async fn resume(
        &self,
        _sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        Err(cannot_pause(self.id()))
    }

    /// Whether the backend holds the sandbox frozen (`None`: it cannot
    /// tell), for the start-up reconciler.
    async fn frozen(&self, _sandbox_id: &str, _state: Option<&BackendState>) -> Option<bool> {
        None
    }

    /// Takes up again what the daemon itself serves for a live sandbox
    /// (e.g. its egress proxy) after a restart. Idempotent.
    async fn reattach(
        &self,
        _sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        Ok(())
    }

    /// Whether [`Extension::probe`] is cheap enough (no network) for the
    /// exit watcher to call on each of its sandboxes every second, so that
    /// a sandbox whose init died is noticed within 2 s.
    fn watches_exits(&self) -> bool {
        false
    }

    /// Why a sandbox that [`Extension::probe`] found gone ended, as far as
    /// the backend can tell (`init_exited` when it cannot say more).
    /// `last` is its usage when it was last seen alive, so that only limits
    /// hit since then are blamed.
    async fn exit_cause(
        &self,
        _sandbox_id: &str,
        _state: Option<&BackendState>,
        _last: Option<&Usage>,
    ) -> (TerminationReason, String) {
        (
            TerminationReason::InitExited,
            "the sandbox's init ended".into(),
        )
    }

    /// What a running sandbox uses now, where the backend measures it.
    /// `state` may be `None` (the GET path does not read the row again).
    /// `walk`: `disk_bytes` even where it costs a walk of the workspace.
    async fn usage(
        &self,
        _sandbox_id: &str,
        _state: Option<&BackendState>,
        _walk: bool,
    ) -> Option<Usage> {
        None
    }

    /// Whether this backend implements [`Extension::snapshot`] and
    /// [`Extension::restore`] (and so forks through [`ProvisionRequest::from_snapshot`]).
    fn can_snapshot(&self) -> bool {
        false
    }

    /// Capture the sandbox's workspace as an archive (see `extensions::archive`)
    /// written to the new file `dest`, hashed while written and synced. Over
    /// `max_content_bytes` before compression it fails with `snapshot_too_large`.
    /// Once `cancel` is cancelled (a teardown of the sandbox, or shutdown) it
    /// stops soon (between entries or read chunks of the walk) with
    /// `snapshot_cancelled`. The caller removes `dest` after any failure.
    async fn snapshot(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
        dest: &Path,
        max_content_bytes: u64,
        cancel: &CancellationToken,
    ) -> Result<SnapshotArchive, ExtError> {
        let _ = (sandbox_id, state, dest, max_content_bytes, cancel);
        Err(ExtError::new(
            ProblemCode::SnapshotUnsupported,
            format!("{} cannot snapshot sandboxes", self.id()),
        ))
    }

    /// Replace the running sandbox's workspace with the archive `src`, seen
    /// from inside the sandbox. The archive's hash is checked before the
    /// workspace is touched (`snapshot_corrupt`); on any failure the
    /// workspace is left exactly as it was.
    async fn restore(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
        src: &SnapshotSource,
        env: SandboxEnv<'_>,
    ) -> Result<(), ExtError> {
        let _ = (sandbox_id, state, src, env);
        Err(ExtError::new(
            ProblemCode::SnapshotUnsupported,
            format!("{} cannot restore snapshots", self.id()),
        ))
    }

    /// What `ttl` of a sandbox costs here at `pricing` (this entry's YAML),
    /// scaled by the profile's `price_factor_percent`. The default charges
    /// the YAML price by the second, rounded up to whole credits, which is
    /// also how the metering ticker charges running time.
    fn estimate_cost(
        &self,
        pricing: &Pricing,
        price_factor_percent: u32,
        ttl: Duration,
    ) -> CostBreakdown {
        crate::ledger::estimate(pricing, price_factor_percent, ttl)
    }

    /// Another instance of this backend, serving the catalog entry `id`
    /// (an extension YAML with `backend: <this id>`, or this id with
    /// `options`) configured by `options`. `None` when this backend takes no
    /// options and serves only its own id; `Err` names the option at fault.
    fn instance(
        &self,
        id: &'static str,
        options: &BTreeMap<String, String>,
    ) -> Option<Result<Arc<dyn Extension>, String>> {
        let _ = (id, options);
        None
    }

    /// At start-up: finish (by rolling back) a restore that a crash of the
    /// daemon interrupted, so the workspace is whole again.
    async fn recover_workspace(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        let _ = (sandbox_id, state);
        Ok(())
    }

    /// The format of this backend's snapshot archives, when another
    /// backend shares it (ext.local and ext.docker archive the same
    /// workspace directory): a snapshot then forks and restores across
    /// them. `None`: only this backend reads its snapshots.
    fn snapshot_format(&self) -> Option<&'static str> {
        None
    }

    /// The backend's host inventory, when it places on hosts.
    fn inventory(&self) -> Option<&dyn HostInventory> {
        None
    }

    /// Where the agent of a running sandbox answers (exec, processes, files
    /// and ports of API v1.1); `None`: this backend has no agent.
    fn agent(&self, sandbox_id: &str, state: &BackendState) -> Option<AgentEndpoint> {
        let _ = (sandbox_id, state);
        None
    }

    /// Whether [`Extension::agent`] answers for its running sandboxes (so
    /// their `reachability` names the access routes).
    fn has_agent(&self) -> bool {
        false
    }
}

/// How the daemon reaches a sandbox's in-sandbox agent.
#[derive(Clone)]
pub enum AgentEndpoint {
    /// A Unix socket on the daemon's machine, outside the sandbox.
    Unix(PathBuf),
    /// The daemon serves the agent's protocol itself, on one end of a
    /// socket pair per request (a backend that cannot run the agent).
    Served(Arc<dyn ServeAgent>),
}

impl std::fmt::Debug for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentEndpoint::Unix(p) => f.debug_tuple("Unix").field(p).finish(),
            AgentEndpoint::Served(_) => f.write_str("Served"),
        }
    }
}

/// Serves one agent request arriving on `stream`, about `service` (a
/// compose service; `None`: the backend's default).
pub trait ServeAgent: Send + Sync {
    fn serve(self: Arc<Self>, service: Option<String>, stream: tokio::net::UnixStream);
}

/// Facts a host-based backend keeps about one of its placement hosts
/// (`GET /v1/hosts`).
#[derive(Debug, Clone, Default)]
pub struct HostSeen {
    /// The last connection attempt's outcome (`None`: not tried yet).
    pub reachable: Option<bool>,
    /// When (Unix ms).
    pub checked_at_ms: Option<i64>,
    /// The last connection error.
    pub error: Option<String>,
    /// The container engine found there, once detected (`docker`, `podman`).
    pub engine: Option<String>,
    /// Its compose command, once detected.
    pub compose: Option<String>,
}

/// What a backend that places on hosts offers the operator routes and the
/// stale sweep: telemetry, and what it left on a host (by sandbox id) with
/// the way to remove it. A new host-based backend implements this and
/// returns itself from [`Extension::inventory`]; nothing else changes.
#[async_trait]
pub trait HostInventory: Send + Sync {
    /// What is known of `host` without asking it; `None` when this backend
    /// does not place on `host`.
    fn seen(&self, host: &str) -> Option<HostSeen>;
    /// Ask `host` for live facts (engine, load, memory, disk, what it runs).
    async fn inspect(&self, host: &str) -> Result<sandboxer_api::HostInspect, ExtError>;
    /// Everything this deployment made on `host`, labelled with its sandbox id.
    async fn owned(&self, host: &str) -> Result<Vec<sandboxer_api::StaleItem>, ExtError>;
    /// Remove what sandbox `sandbox_id` left on `host` (idempotent).
    async fn reap(&self, host: &str, sandbox_id: &str) -> Result<(), ExtError>;
}

/// What a backend that cannot pause answers to pause and resume.
fn cannot_pause(id: &str) -> ExtError {
    ExtError::new(
        ProblemCode::Unsupported,
        format!("{id} cannot pause or resume sandboxes"),
    )
}

/// The extensions the daemon has code for, by id.
#[derive(Clone, Default)]
pub struct Registry {
    by_id: HashMap<String, Arc<dyn Extension>>,
    /// The egress proxy the backends serve `network: {mode: egress}` through.
    pub egress: Arc<crate::egress::Egress>,
}

impl Registry {
    /// Add (or replace) a backend under its id.
    pub fn insert(&mut self, ext: Arc<dyn Extension>) {
        self.by_id.insert(ext.id().to_owned(), ext);
    }

    /// The backend whose inventory covers `host` (the first by id), if any.
    pub fn inventory_for(&self, host: &str) -> Option<Arc<dyn Extension>> {
        let mut ids: Vec<&String> = self.by_id.keys().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| self.by_id.get(id))
            .find(|ext| ext.inventory().is_some_and(|inv| inv.seen(host).is_some()))
            .cloned()
    }

    pub fn get(&self, id: &str) -> Option<Arc<dyn Extension>> {
        self.by_id.get(id).cloned()
    }

    /// Whether a snapshot taken on extension `taken_on` can be forked or
    /// restored on extension `into` (the same one, or one that shares its
    /// archive format).
    pub fn snapshots_compatible(&self, taken_on: &str, into: &str) -> bool {
        if taken_on == into {
            return true;
        }
        let format = |id: &str| self.get(id).and_then(|e| e.snapshot_format());
        format(taken_on).is_some_and(|f| Some(f) == format(into))
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }
}
