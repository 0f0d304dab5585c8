//! `ext.local`: a bubblewrap sandbox per request on the daemon's own machine.
//!
//! Each sandbox gets a directory `<data_dir>/sandboxes/<id>/` holding its
//! `workspace/` (bound read-write at `/workspace` inside, passed to
//! bubblewrap as a descriptor), bubblewrap's `info.json` (the host pid of
//! the sandbox's pid 1) and `bwrap.log`. The sandbox runs in its own user
//! namespace, where uid and gid 0 are one unprivileged host id (the daemon's
//! own; `[local] sandbox_uid` under a root daemon, which starts bubblewrap as
//! that id), and new pid, mount, net, ipc, uts (and cgroup, where allowed)
//! namespaces, with read-only system directories, host secrets hidden, only
//! loopback, no capabilities and the seccomp filter of
//! [`crate::confine::seccomp`]. Its init (bubblewrap's reaper as pid 1,
//! the agent under it) lives until teardown. It is spawned in its own
//! process group and never waited on, so it outlives a restart or `kill -9`
//! of the daemon; everything needed to find it again is on disk. Its
//! command is the in-sandbox agent ([`agent`]), which serves exec, files,
//! processes and ports on `agent.sock` in the sandbox's directory. Commands
//! can also be entered with the sandbox's own privileges by `sandboxerd
//! enter` ([`crate::confine::enter`]).
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandboxer_api::{
    Availability, NetworkMode, NetworkPolicy, ProblemCode, TerminationReason, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::archive::{self, ExtractError};
use super::fsutil;
use super::{
    AgentEndpoint, BackendState, ExtError, Extension, Liveness, ProvisionRequest, ReadyInfo,
    SnapshotArchive, SnapshotSource,
};
use crate::config::{DiskMode, LimitsMode, LocalConfig};
use crate::confine::cgroup::{self, Cgroups, SandboxCgroup};
use crate::confine::seccomp;
use crate::egress::{Egress, Policy};
use crate::procfs::{self, is_zombie, owns_pid, stat as proc_stat};

/// The one host `ext.local` places on.
pub const LOCAL_HOST: &str = "local";

pub mod agent;
mod bwrap;
pub mod disk;
mod process;
mod restore;
mod workspace;

use bwrap::find_in_path;
use process::*;
use restore::*;
use workspace::*;

/// `ext.local` over bubblewrap.
#[derive(Clone)]
pub struct LocalExtension {
    /// The catalog id it serves (`ext.local`, or an entry naming `backend: ext.local`).
    id: &'static str,
    root: PathBuf,
    bwrap: Option<PathBuf>,
    /// The `bwrap` option of its catalog entry, for messages when it is missing.
    bwrap_option: Option<PathBuf>,
    /// Who the sandbox is on the host.
    ids: SandboxIds,
    /// The default seccomp programs, as bubblewrap reads them (built once).
    seccomp: Result<Programs, String>,
    /// Programs relaxed by a profile's `security.allow`, by switch set.
    relaxed: Arc<std::sync::Mutex<BTreeMap<Vec<String>, Programs>>>,
    /// This daemon's executable, whose `enter` subcommand joins a sandbox.
    exe: PathBuf,
    /// The in-sandbox agent as installed under the data dir (see
    /// [`agent::install`]), or why there is none.
    agent: Result<PathBuf, String>,
    /// The agent's own limits.
    agent_limits: agent::Limits,
    /// Where the sandboxes' cgroups go (`None`: `[local] limits = "off"`),
    /// or why they cannot be made here.
    cgroups: Option<Result<Arc<Cgroups>, String>>,
    /// Disk images for `resources.disk` (`None`: not enforced here), or
    /// why they are required and cannot be made.
    disks: Option<Result<Arc<disk::Disks>, String>>,
    /// The latest usage read per sandbox, and when.
    usage: Arc<std::sync::Mutex<HashMap<String, (Instant, Usage)>>>,
    /// The proxy `network: {mode: egress}` sandboxes go out through.
    egress: Arc<Egress>,
}

/// The directory (in a sandbox's directory on the host) holding its
/// egress proxy's socket, bound read-only into the sandbox.
const EGRESS_DIR: &str = "egress";

/// Rounds of SIGSTOP a pause makes at most before it gives up (without a
/// freezer).
const PAUSE_ROUNDS: usize = 200;

/// How long the kernel's freezer may take to freeze a sandbox.
const FREEZE_WAIT: Duration = Duration::from_secs(5);

/// How long a usage reading is served again.
const USAGE_FRESH: Duration = Duration::from_millis(250);

/// The most entries [`Extension::usage`] walks to sum a workspace's size.
const DISK_WALK_LIMIT: usize = 200_000;

/// Seccomp programs as the bytes bubblewrap reads, in load order.
type Programs = Arc<Vec<Vec<u8>>>;

/// The snapshot format of a workspace directory's archive (ext.local's,
/// and ext.docker's, which keeps its workspaces the same way).
pub const WORKSPACE_ARCHIVE: &str = "workspace-dir";

/// The `pids` limit of a profile that does not set one.
pub const DEFAULT_PIDS: u64 = 512;

/// The host ids that uid and gid 0 inside a sandbox map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxIds {
    pub uid: u32,
    pub gid: u32,
    /// The daemon is root and switches to these ids before starting
    /// bubblewrap (an unprivileged daemon's sandboxes are its own user).
    pub switch: bool,
}

impl SandboxIds {
    /// The owner to give what fills a workspace: the sandbox's host ids
    /// under a root daemon; `None` (leave it the daemon's, which it is)
    /// under an unprivileged one.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.switch.then_some((self.uid, self.gid))
    }

    /// The ids for a daemon running as the current user: `configured` when
    /// it is root, its own otherwise.
    pub fn for_this_process(configured: &LocalConfig) -> Self {
        if nix::unistd::geteuid().is_root() {
            SandboxIds {
                uid: configured.sandbox_uid,
                gid: configured.sandbox_gid,
                switch: true,
            }
        } else {
            SandboxIds {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                switch: false,
            }
        }
    }
}

/// What is kept on the sandbox row for `ext.local`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LocalState {
    dir: PathBuf,
    /// The profile's `security.allow` switches (for `enter`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seccomp_allow: Vec<String>,
    /// The profile's network rules, for `mode: egress` (served again
    /// after a daemon restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<NetworkPolicy>,
    #[serde(default)]
    pid: Option<i32>,
    /// Start time of `pid` (clock ticks since boot), so a reused pid is never killed.
    #[serde(default)]
    pid_start: Option<u64>,
}

impl LocalExtension {
    /// A backend keeping its sandboxes under `<data_dir>/sandboxes`, run as
    /// `local` says (see [`SandboxIds::for_this_process`]), with the
    /// default `[access]` (the agent found beside this executable).
    pub fn new(data_dir: &Path, local: LocalConfig) -> Self {
        Self::with_access(data_dir, local, &crate::config::AccessSettings::default())
    }

    /// The same with the agent and limits of `access`; the agent is
    /// installed under `data_dir` once, here.
    pub fn with_access(
        data_dir: &Path,
        local: LocalConfig,
        access: &crate::config::AccessSettings,
    ) -> Self {
        let seccomp = seccomp::programs()
            .map(|ps| Arc::new(ps.iter().map(|p| seccomp::to_bytes(p)).collect()))
            .map_err(|e| e.to_string());
        let ids = SandboxIds::for_this_process(&local);
        let cgroups = match local.limits {
            LimitsMode::Off => None,
            LimitsMode::Enforce => Some(
                Cgroups::detect(local.cgroup_parent.as_deref())
                    .map(|c| {
                        // Left by a daemon killed before its teardowns ran
                        // (and whose sandbox directory is gone too).
                        let sandboxes = data_dir.join("sandboxes");
                        let n = c.sweep(Duration::from_secs(60), |id| sandboxes.join(id).exists());
                        if n > 0 {
                            tracing::info!(removed = n, "removed empty cgroups of sandboxes that are gone");
                        }
                        Arc::new(c)
                    })
                    .map_err(|e| {
                        let e = format!(
                            "cannot enforce resource limits: {e} (or set `[local] limits = \"off\"` to run sandboxes without them)"
                        );
                        tracing::error!(error = %e, "ext.local is unavailable");
                        e
                    }),
            ),
        };
        let sandboxes = data_dir.join("sandboxes");
        let disks = match (local.disk, disk::Disks::new(data_dir)) {
            (DiskMode::Off, _) => None,
            (_, Ok(d)) => {
                let n = d.sweep(|id| sandboxes.join(id).exists());
                if n > 0 {
                    tracing::info!(
                        removed = n,
                        "removed disk images of sandboxes that are gone"
                    );
                }
                Some(Ok(d))
            }
            (DiskMode::Auto, Err(e)) => {
                tracing::info!(reason = %e, "ext.local records `resources.disk` without enforcing it");
                None
            }
            (DiskMode::Image, Err(e)) => Some(Err(format!(
                "cannot enforce `resources.disk` ([local] disk = \"image\"): {e}"
            ))),
        };
        Self {
            id: "ext.local",
            root: data_dir.join("sandboxes"),
            bwrap: find_in_path("bwrap"),
            bwrap_option: None,
            ids,
            seccomp,
            relaxed: Arc::default(),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sandboxerd")),
            agent: agent::install(access.agent.as_deref(), data_dir, ids),
            agent_limits: agent::Limits {
                max_log_bytes: access.process_log_max,
                max_processes: access.max_processes,
            },
            cgroups,
            disks,
            usage: Arc::default(),
            egress: Arc::default(),
        }
    }

    /// The same, serving egress sandboxes through `egress` (the daemon's
    /// one proxy, whose log the API reads).
    pub fn with_egress(self, egress: Arc<Egress>) -> Self {
        Self { egress, ..self }
    }

    /// Serves sandbox `sandbox_id`'s egress proxy on `<dir>/egress/proxy.sock`
    /// (the directory made when missing), connectable by the sandbox's
    /// host user.
    /// Serves sandbox `sandbox_id`'s egress proxy on `<dir>/egress/proxy.sock`
    /// (also for ext.docker, which mounts that directory into the container).
    pub fn serve_egress(&self, sandbox_id: &str, network: &NetworkPolicy) -> Result<(), ExtError> {
        let fail = |e: String| {
            ExtError::new(
                ProblemCode::ProvisionFailed,
                format!("the sandbox's egress proxy: {e}"),
            )
        };
        let policy = Policy::parse(network).map_err(fail)?;
        let dir = self.dir_of(sandbox_id).join(EGRESS_DIR);
        fsutil::private_dir(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        if self.ids.switch {
            fsutil::traversable_by_group(&dir, self.ids.gid)
                .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        }
        let group = self.ids.switch.then_some(self.ids.gid);
        self.egress
            .serve(sandbox_id, &dir.join(agent::EGRESS_SOCKET), policy, group)
            .map_err(|e| fail(e.to_string()))
    }

    /// The directory holding sandbox `sandbox_id`'s egress proxy socket.
    pub fn egress_dir(&self, sandbox_id: &str) -> PathBuf {
        self.dir_of(sandbox_id).join(EGRESS_DIR)
    }

    /// The loopback port the agent relays to the egress proxy, inside.
    pub fn egress_port(&self) -> u16 {
        self.egress.proxy_port()
    }

    /// Stops serving sandbox `sandbox_id`'s egress proxy (idempotent).
    pub fn stop_egress(&self, sandbox_id: &str) {
        self.egress.stop(sandbox_id);
    }

    /// Whether sandbox `sandbox_id`'s egress proxy is served now.
    pub fn egress_served(&self, sandbox_id: &str) -> bool {
        self.egress.is_served(sandbox_id)
    }

    /// Who this backend's sandboxes are on the host.
    pub fn ids(&self) -> SandboxIds {
        self.ids
    }

    /// The limits `profile` sets on an ext.local sandbox (`pids` defaults
    /// to [`DEFAULT_PIDS`]).
    fn limits_of(profile: &sandboxer_api::Profile) -> cgroup::Limits {
        let r = &profile.resources;
        cgroup::Limits {
            cpus: r.cpus,
            memory_bytes: r.memory.as_deref().and_then(crate::config::parse_size),
            pids: Some(r.pids.unwrap_or(DEFAULT_PIDS)),
        }
    }

    /// Makes sandbox `req`'s cgroup with its profile's limits (`None` when
    /// `[local] limits = "off"`).
    fn prepare_cgroup(&self, req: &ProvisionRequest) -> Result<Option<SandboxCgroup>, ExtError> {
        match &self.cgroups {
            None => Ok(None),
            Some(Err(e)) => Err(ExtError::new(ProblemCode::BackendUnavailable, e.clone())),
            Some(Ok(cgroups)) => cgroups
                .create(&req.sandbox_id, Self::limits_of(&req.profile))
                .map(Some)
                .map_err(|e| {
                    ExtError::new(
                        ProblemCode::ProvisionFailed,
                        format!("setting the sandbox's resource limits: {e}"),
                    )
                }),
        }
    }

    /// The disk image sandbox `req` gets: its images and size, where
    /// `resources.disk` is set and enforced.
    fn disk_for(&self, req: &ProvisionRequest) -> Result<Option<DiskPlan>, ExtError> {
        let Some(bytes) = req
            .profile
            .resources
            .disk
            .as_deref()
            .and_then(crate::config::parse_size)
        else {
            return Ok(None);
        };
        match &self.disks {
            None => Ok(None),
            Some(Err(e)) => Err(ExtError::new(ProblemCode::BackendUnavailable, e.clone())),
            Some(Ok(d)) => Ok(Some(DiskPlan {
                disks: d.clone(),
                bytes,
            })),
        }
    }

    /// The seccomp programs for a profile's `security.allow` (built once
    /// per set of switches).
    fn seccomp_for(&self, allow: &[String]) -> Result<Programs, ExtError> {
        let unavailable = |e: String| {
            ExtError::new(
                ProblemCode::BackendUnavailable,
                format!("no seccomp filter for this machine: {e}"),
            )
        };
        let default = self.seccomp.clone().map_err(unavailable)?;
        if allow.is_empty() {
            return Ok(default);
        }
        let key =
            seccomp::switches(allow).map_err(|e| ExtError::new(ProblemCode::ProvisionFailed, e))?;
        let mut cache = self.relaxed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let programs: Programs = Arc::new(
            seccomp::programs_allowing(&key)
                .map_err(|e| unavailable(e.to_string()))?
                .iter()
                .map(|p| seccomp::to_bytes(p))
                .collect(),
        );
        cache.insert(key, programs.clone());
        Ok(programs)
    }

    /// Sandbox `sandbox_id`'s cgroup, whose processes pause and resume act on.
    fn pausable(&self, sandbox_id: &str) -> Result<SandboxCgroup, ExtError> {
        match self.cgroup_of(sandbox_id) {
            Some(cg) if cg.exists() => Ok(cg),
            Some(_) => Err(ExtError::new(
                ProblemCode::BackendLost,
                format!("the cgroup of {sandbox_id} is gone"),
            )),
            None => Err(ExtError::new(
                ProblemCode::Unsupported,
                "pausing needs the sandboxes' cgroups (`[local] limits = \"enforce\"`)",
            )),
        }
    }

    /// The usage last read for `sandbox_id` and when.
    fn usage_cache(&self, sandbox_id: &str) -> Option<(Instant, Usage)> {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sandbox_id)
            .cloned()
    }

    /// Reads sandbox `sandbox_id`'s usage now; the workspace is walked for
    /// `disk_bytes` only with `walk` when it has no filesystem of its own.
    async fn read_usage(&self, sandbox_id: &str, walk: bool) -> Option<Usage> {
        let cg = self.cgroup_of(sandbox_id)?;
        if !cg.exists() {
            return None;
        }
        let dir = self.dir_of(sandbox_id);
        // A few small reads of cgroup files, and for a sandbox with its own
        // filesystem one statvfs: cheap enough to do inline.
        let mut u = cg.usage();
        match disk::used_bytes(&dir) {
            Some(used) => u.disk_bytes = used,
            None if walk => {
                // No filesystem of its own: the workspace is walked.
                let workspace = dir.join("workspace");
                u.disk_bytes = tokio::task::spawn_blocking(move || {
                    fsutil::disk_usage(&workspace, DISK_WALK_LIMIT)
                })
                .await
                .unwrap_or(0);
            }
            None => {}
        }
        Some(u)
    }

    /// Sandbox `id`'s cgroup, where limits are enforced.
    fn cgroup_of(&self, sandbox_id: &str) -> Option<SandboxCgroup> {
        match &self.cgroups {
            Some(Ok(c)) => Some(c.of(sandbox_id)),
            _ => None,
        }
    }

    fn dir_of(&self, sandbox_id: &str) -> PathBuf {
        self.root.join(sandbox_id)
    }

    /// The directory of sandbox `sandbox_id` (its `workspace` inside).
    pub fn sandbox_dir(&self, sandbox_id: &str) -> PathBuf {
        self.dir_of(sandbox_id)
    }

    /// The agent binary as installed under the data dir, or why there is none.
    pub fn agent_binary(&self) -> Result<&Path, &str> {
        self.agent.as_deref().map_err(String::as_str)
    }

    /// The workspace part of a provision, also for a backend that runs the
    /// sandbox elsewhere (ext.docker bind-mounts it): `<dir>/workspace`
    /// made (on its own disk image when the profile sets `resources.disk`),
    /// filled from a fork's snapshot or the profile's copy input, owned by
    /// the sandbox's ids. Answers the sandbox's directory.
    pub async fn prepare_workspace(&self, req: &ProvisionRequest) -> Result<PathBuf, ExtError> {
        let dir = self.dir_of(&req.sandbox_id);
        let workspace = dir.join("workspace");
        let copy_from = match (
            req.profile.workspace.mode.as_str(),
            &req.profile.workspace.from_input,
        ) {
            // A fork starts from its snapshot, not from the profile's source.
            _ if req.from_snapshot.is_some() => None,
            ("copy", Some(input)) => req.inputs.get(input).map(PathBuf::from),
            _ => None,
        };
        let dir2 = dir.clone();
        let from_snapshot = req.from_snapshot.clone();
        let ids = self.ids;
        let disk = self.disk_for(req)?;
        tokio::task::spawn_blocking(move || {
            prepare_dir(&dir2, &workspace, copy_from.as_deref(), ids, disk.as_ref())?;
            match &from_snapshot {
                Some(src) => fill_from_snapshot(&workspace, src, ids),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| {
            ExtError::new(ProblemCode::ProvisionFailed, format!("workspace task: {e}"))
        })??;
        Ok(dir)
    }

    /// Removes what [`LocalExtension::prepare_workspace`] made (its disk
    /// image detached first); idempotent.
    pub async fn release_workspace(&self, sandbox_id: &str) -> Result<(), ExtError> {
        let dir = self.dir_of(sandbox_id);
        let disks = match &self.disks {
            Some(Ok(d)) => Some(d.clone()),
            _ => None,
        };
        let id = sandbox_id.to_owned();
        tokio::task::spawn_blocking(move || {
            release_dir(&dir, &id, disks.as_deref()).map_err(|e| {
                ExtError::new(
                    ProblemCode::TeardownFailed,
                    format!("removing {}: {e}", dir.display()),
                )
            })
        })
        .await
        .map_err(|e| ExtError::new(ProblemCode::TeardownFailed, format!("teardown task: {e}")))?
    }

    fn load_state(&self, sandbox_id: &str, state: Option<&BackendState>) -> LocalState {
        let mut st: LocalState = state
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        // The directory is always derived from the id: a row never points us
        // at another path to delete.
        st.dir = self.dir_of(sandbox_id);
        if st.pid.is_none() {
            if let Some(pid) = read_info_pid(&st.dir.join("info.json")) {
                st.pid = Some(pid);
            }
        }
        st
    }
}

#[async_trait]
impl Extension for LocalExtension {
    fn id(&self) -> &'static str {
        self.id
    }

    async fn availability(&self) -> Availability {
        if let (None, Some(path)) = (&self.bwrap, &self.bwrap_option) {
            return Availability {
                available: false,
                reason: Some(format!(
                    "bubblewrap not found at {} (option `bwrap` of {})",
                    path.display(),
                    self.id
                )),
            };
        }
        if self.bwrap.is_none() {
            return Availability {
                available: false,
                reason: Some(
                    "bubblewrap (`bwrap`) is not installed or not on PATH; install it with `apt-get install bubblewrap`"
                        .into(),
                ),
            };
        }
        if let Err(e) = &self.seccomp {
            return Availability {
                available: false,
                reason: Some(format!("no seccomp filter for this machine: {e}")),
            };
        }
        if let Err(e) = &self.agent {
            return Availability {
                available: false,
                reason: Some(e.clone()),
            };
        }
        if let Some(Err(e)) = &self.cgroups {
            return Availability {
                available: false,
                reason: Some(e.clone()),
            };
        }
        if let Some(Err(e)) = &self.disks {
            return Availability {
                available: false,
                reason: Some(e.clone()),
            };
        }
        Availability {
            available: true,
            reason: None,
        }
    }

    fn hosts(&self) -> Vec<String> {
        vec![LOCAL_HOST.to_owned()]
    }

    /// Options: `bwrap`, the absolute path of the bubblewrap to run instead
    /// of the one found on PATH. Every instance keeps its sandboxes under the
    /// same `<data_dir>/sandboxes` (ids never clash).
    fn instance(
        &self,
        id: &'static str,
        options: &BTreeMap<String, String>,
    ) -> Option<Result<std::sync::Arc<dyn Extension>, String>> {
        // Everything shared with this instance (the caches too), but its id
        // and its own bubblewrap option.
        let mut ext = LocalExtension {
            id,
            bwrap_option: None,
            ..self.clone()
        };
        for (key, value) in options {
            if key == "nsenter" {
                return Some(Err(
                    "`nsenter` is no longer an option of ext.local: commands enter a sandbox through `sandboxerd enter`, with the sandbox's own privileges".into(),
                ));
            }
            if key != "bwrap" {
                return Some(Err(format!(
                    "`{key}` is not an option of ext.local (it takes `bwrap`)"
                )));
            }
            let path = PathBuf::from(value);
            if !path.is_absolute() {
                return Some(Err(format!("`{key}`: `{value}` is not an absolute path")));
            }
            ext.bwrap = path.is_file().then(|| path.clone());
            ext.bwrap_option = Some(path);
        }
        Some(Ok(std::sync::Arc::new(ext)))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %req.sandbox_id))]
    async fn provision(&self, req: &ProvisionRequest) -> Result<BackendState, ExtError> {
        if self.bwrap.is_none() {
            return Err(ExtError::new(
                ProblemCode::BackendUnavailable,
                "bubblewrap (`bwrap`) is not installed; install it with `apt-get install bubblewrap`",
            ));
        }
        let started = Instant::now();
        let dir = self.prepare_workspace(req).await?;

        let egress =
            (req.profile.network.mode == NetworkMode::Egress).then(|| req.profile.network.clone());
        if let Some(network) = &egress {
            self.serve_egress(&req.sandbox_id, network)?;
        }
        let prepared = started.elapsed();
        let cgroup = self.prepare_cgroup(req)?;
        let limited = started.elapsed();
        let cmd = self.bwrap_command(req, &dir, cgroup.as_ref())?;
        let bwrap = cmd.get_program().to_owned();
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| {
            ExtError::new(
                ProblemCode::ProvisionFailed,
                format!("starting {}: {e}", Path::new(&bwrap).display()),
            )
        })?;
        // Never waited on: dropping the handle leaves the sandbox running and
        // lets tokio reap the process whenever it exits.
        drop(child);
        tracing::debug!(
            dir_and_disk_us = prepared.as_micros() as u64,
            cgroup_us = (limited - prepared).as_micros() as u64,
            spawn_us = (started.elapsed() - limited).as_micros() as u64,
            "provisioned"
        );
        Ok(serde_json::to_value(LocalState {
            dir,
            seccomp_allow: req.profile.security.allow.clone(),
            egress,
            pid: None,
            pid_start: None,
        })
        .unwrap_or_default())
    }

    fn agent(&self, sandbox_id: &str, _state: &BackendState) -> Option<AgentEndpoint> {
        Some(AgentEndpoint::Unix(
            self.dir_of(sandbox_id).join(agent::SOCKET),
        ))
    }

    fn has_agent(&self) -> bool {
        true
    }

    #[tracing::instrument(skip_all, fields(sandbox_id))]
    async fn wait_ready(
        &self,
        sandbox_id: &str,
        state: &BackendState,
        timeout: Duration,
    ) -> Result<ReadyInfo, ExtError> {
        let st = self.load_state(sandbox_id, Some(state));
        let info_path = st.dir.join("info.json");
        let started = Instant::now();
        // tokio rounds a sleep up to its next millisecond tick, so this
        // polls about once a millisecond (a 1 ms sleep would take ~2 ms).
        let mut pause = Duration::from_micros(250);
        loop {
            if let Some(pid) = read_info_pid(&info_path) {
                if let Some((proc_state, start)) = proc_stat(pid) {
                    if proc_state != 'Z' && proc_state != 'X' && has_child(pid) {
                        // Ready once the agent answers (bounded by what is left of `timeout`).
                        let left = timeout.saturating_sub(started.elapsed());
                        let socket = st.dir.join(agent::SOCKET);
                        if let Err(e) = agent::ping(&socket, left.min(Duration::from_secs(5))).await
                        {
                            if started.elapsed() >= timeout {
                                return Err(ExtError::new(
                                    ProblemCode::NotReadyInTime,
                                    format!(
                                        "the sandbox started but its agent did not answer: {e}"
                                    ),
                                ));
                            }
                            if !bwrap_exited(&st.dir) {
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                            return Err(exited_error(&st.dir));
                        }
                        let workdir = st.dir.join("workspace");
                        let reachability = json!({
                            "kind": "local",
                            "workdir": workdir,
                            "pid": pid,
                            "enter": self.enter_prefix(pid, start, &st.seccomp_allow),
                        });
                        let backend_state = serde_json::to_value(LocalState {
                            pid: Some(pid),
                            pid_start: Some(start),
                            ..st.clone()
                        })
                        .unwrap_or_default();
                        return Ok(ReadyInfo {
                            reachability,
                            backend_state,
                        });
                    }
                    if proc_state == 'Z' || proc_state == 'X' {
                        return Err(exited_error(&st.dir));
                    }
                } else {
                    return Err(exited_error(&st.dir));
                }
            } else if bwrap_exited(&st.dir) {
                return Err(exited_error(&st.dir));
            }
            if started.elapsed() >= timeout {
                return Err(ExtError::new(
                    ProblemCode::NotReadyInTime,
                    format!("bubblewrap did not report the sandbox within {timeout:?}"),
                ));
            }
            tokio::time::sleep(pause).await;
            // Bubblewrap starts in a few milliseconds, and each step of a
            // back-off is added whole to a create's latency: poll every tick
            // while a normal start is plausible, back off only for slow ones.
            if started.elapsed() > Duration::from_millis(100) {
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }

    #[tracing::instrument(skip_all, fields(sandbox_id))]
    async fn teardown(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        let st = self.load_state(sandbox_id, state);
        self.egress.stop(sandbox_id);
        // A v1-frozen task dies of SIGKILL only once thawed.
        if let Some(cg) = self.cgroup_of(sandbox_id) {
            let _ = cg.freeze(false, FREEZE_WAIT);
        }
        if let Some(pid) = st.pid {
            if owns_pid(pid, st.pid_start) {
                // SIGKILL to the namespace's pid 1 ends every process in it.
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(ExtError::new(
                            ProblemCode::TeardownFailed,
                            format!("killing sandbox init {pid}: {e}"),
                        ))
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while owns_pid(pid, st.pid_start) && !is_zombie(pid) {
                    if Instant::now() > deadline {
                        return Err(ExtError::new(
                            ProblemCode::TeardownFailed,
                            format!("sandbox init {pid} still alive 10s after SIGKILL"),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        // Whatever else runs for this sandbox: a bubblewrap started by a
        // daemon that died before it learnt the pid (or before bubblewrap
        // reported it) is found by its command line.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stray = pids_running(sandbox_id);
            if stray.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ExtError::new(
                    ProblemCode::TeardownFailed,
                    format!("processes {stray:?} of {sandbox_id} still alive 10s after SIGKILL"),
                ));
            }
            for pid in stray {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sandbox_id);
        // Anything left in its cgroup (nothing should be: every process of
        // the sandbox is in its pid namespace), then the cgroup itself.
        if let Some(cg) = self.cgroup_of(sandbox_id) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                cg.kill_all();
                match cg.remove() {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(ExtError::new(
                            ProblemCode::TeardownFailed,
                            format!("the sandbox's cgroup is still busy 10s after SIGKILL: {e}"),
                        ))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
        let dir = st.dir.clone();
        let disks = match &self.disks {
            Some(Ok(d)) => Some(d.clone()),
            _ => None,
        };
        let id = sandbox_id.to_owned();
        tokio::task::spawn_blocking(move || match release_dir(&dir, &id, disks.as_deref()) {
            Ok(()) => Ok(()),
            Err(e) => Err(ExtError::new(
                ProblemCode::TeardownFailed,
                format!("removing {}: {e}", dir.display()),
            )),
        })
        .await
        .map_err(|e| ExtError::new(ProblemCode::TeardownFailed, format!("teardown task: {e}")))?
    }

    async fn probe(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<Liveness, ExtError> {
        let st = self.load_state(sandbox_id, state);
        Ok(match st.pid {
            Some(pid) if owns_pid(pid, st.pid_start) && !is_zombie(pid) => Liveness::Alive,
            _ => Liveness::Gone,
        })
    }

    fn watches_exits(&self) -> bool {
        true
    }

    fn can_pause(&self) -> bool {
        matches!(self.cgroups, Some(Ok(_)))
    }

    /// The kernel's freezer on the sandbox's cgroup where there is one
    /// (cgroup v2, or the v1 `freezer` controller): every task frozen,
    /// whatever it does (vfork, threads, signals of its own), checked by
    /// the kernel. Elsewhere, SIGSTOP to every process in the cgroup again
    /// until each is stopped.
    async fn pause(&self, sandbox_id: &str, _state: Option<&BackendState>) -> Result<(), ExtError> {
        let cg = self.pausable(sandbox_id)?;
        let frozen = {
            let cg = cg.clone();
            tokio::task::spawn_blocking(move || cg.freeze(true, FREEZE_WAIT))
                .await
                .map_err(|e| ExtError::new(ProblemCode::Internal, format!("freeze task: {e}")))?
        };
        match frozen {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                // Never left half frozen.
                let _ = cg.freeze(false, FREEZE_WAIT);
                return Err(ExtError::new(
                    ProblemCode::Internal,
                    format!("freezing {sandbox_id}: {e}"),
                ));
            }
        }
        for _ in 0..PAUSE_ROUNDS {
            let mut running = 0;
            for pid in cg.pids() {
                match proc_stat(pid) {
                    Some(('T' | 't' | 'Z' | 'X', _)) => {}
                    Some(_) => {
                        running += 1;
                        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                    }
                    None => {}
                }
            }
            if running == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Never left half stopped.
        for pid in cg.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Err(ExtError::new(
            ProblemCode::Internal,
            format!(
                "processes of {sandbox_id} kept running after {PAUSE_ROUNDS} rounds of SIGSTOP"
            ),
        ))
    }

    /// Thaws the freezer, or SIGCONT to every process in the cgroup.
    async fn resume(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        let cg = self.pausable(sandbox_id)?;
        match cg.freeze(false, FREEZE_WAIT) {
            Ok(true) => Ok(()),
            Ok(false) => {
                for pid in cg.pids() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                }
                Ok(())
            }
            Err(e) => Err(ExtError::new(
                ProblemCode::Internal,
                format!("thawing {sandbox_id}: {e}"),
            )),
        }
    }

    async fn frozen(&self, sandbox_id: &str, _state: Option<&BackendState>) -> Option<bool> {
        self.cgroup_of(sandbox_id)?.is_frozen()
    }

    async fn reattach(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        let st = self.load_state(sandbox_id, state);
        match &st.egress {
            Some(network) if !self.egress.is_served(sandbox_id) => {
                self.serve_egress(sandbox_id, network)
            }
            _ => Ok(()),
        }
    }

    async fn exit_cause(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
        last: Option<&Usage>,
    ) -> (TerminationReason, String) {
        let dir = self.dir_of(sandbox_id);
        let log = std::fs::read_to_string(dir.join("bwrap.log")).unwrap_or_default();
        let log = log.trim();
        let hits = self
            .cgroup_of(sandbox_id)
            .map(|cg| cg.hits())
            .unwrap_or_default();
        let (ooms, refused) = last.map_or((0, 0), |u| (u.oom_kills, u.pids_refused));
        // Only what happened since it was last seen alive: an OOM kill of
        // some other process a minute ago did not end it.
        if hits.oom_kills > ooms {
            return (
                TerminationReason::OomKilled,
                format!(
                    "its init was killed at the memory limit ({} OOM kill(s) in the sandbox)",
                    hits.oom_kills
                ),
            );
        }
        if hits.pids_refused > refused {
            return (
                TerminationReason::PidsExceeded,
                format!(
                    "its init ended as forks were refused at the pids limit ({} refused)",
                    hits.pids_refused
                ),
            );
        }
        if disk::is_full(&dir) {
            return (
                TerminationReason::DiskFull,
                "its init ended with its disk full (writes were failing with ENOSPC)".into(),
            );
        }
        let detail = if log.is_empty() {
            "the sandbox's init (its agent) ended".to_owned()
        } else {
            format!(
                "the sandbox's init ended: {}",
                log.chars().take(500).collect::<String>()
            )
        };
        (TerminationReason::InitExited, detail)
    }

    async fn usage(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
        walk: bool,
    ) -> Option<Usage> {
        // The watcher (no walk) reads live every second and is not cached:
        // its reading would hide what happened since from a client.
        if !walk {
            return self.read_usage(sandbox_id, false).await;
        }
        // Reading cgroup v1 files costs ~40 µs each: a sandbox polled by
        // many clients through GET is read at most every USAGE_FRESH.
        if let Some((at, u)) = self.usage_cache(sandbox_id) {
            if at.elapsed() < USAGE_FRESH {
                return Some(u);
            }
        }
        let u = self.read_usage(sandbox_id, true).await?;
        let mut cache = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(sandbox_id.to_owned(), (Instant::now(), u.clone()));
        Some(u)
    }

    fn can_snapshot(&self) -> bool {
        true
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn snapshot(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
        dest: &Path,
        max_content_bytes: u64,
        cancel: &CancellationToken,
    ) -> Result<SnapshotArchive, ExtError> {
        let dir = self.dir_of(sandbox_id);
        let dest = dest.to_owned();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            // Never archive a half-swapped tree.
            finish_interrupted_restore(&dir)?;
            let workspace = dir.join("workspace");
            if !workspace.is_dir() {
                return Err(ExtError::new(
                    ProblemCode::SnapshotFailed,
                    format!("workspace {} does not exist", workspace.display()),
                ));
            }
            let cancelled = || cancel.is_cancelled();
            let info = archive::write_archive(&workspace, &dest, max_content_bytes, &cancelled)
                .map_err(super::snapshot_write_error)?;
            if info.skipped > 0 {
                tracing::info!(
                    skipped = info.skipped,
                    "sockets, FIFOs, device nodes or entries changing under the walk left out of the snapshot"
                );
            }
            Ok(SnapshotArchive {
                sha256: info.sha256,
                size_bytes: info.size_bytes,
                content_bytes: info.content_bytes,
            })
        })
        .await
        .map_err(|e| ExtError::new(ProblemCode::SnapshotFailed, format!("capture task: {e}")))?
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id, snapshot_id = %src.id))]
    async fn restore(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
        src: &SnapshotSource,
        // The init keeps running through a restore: nothing to start again.
        _env: super::SandboxEnv<'_>,
    ) -> Result<(), ExtError> {
        let dir = self.dir_of(sandbox_id);
        let src = src.clone();
        let ids = self.ids;
        tokio::task::spawn_blocking(move || restore_in_place(&dir, &src, ids))
            .await
            .map_err(|e| ExtError::new(ProblemCode::RestoreFailed, format!("restore task: {e}")))?
    }

    fn snapshot_format(&self) -> Option<&'static str> {
        Some(WORKSPACE_ARCHIVE)
    }

    async fn recover_workspace(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        let dir = self.dir_of(sandbox_id);
        tokio::task::spawn_blocking(move || finish_interrupted_restore(&dir))
            .await
            .map_err(|e| ExtError::new(ProblemCode::RestoreFailed, format!("recovery task: {e}")))?
    }
}
