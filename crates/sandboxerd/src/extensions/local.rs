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
//! `sleep infinity` under it) lives until teardown. It is spawned in its own
//! process group and never waited on, so it outlives a restart or `kill -9`
//! of the daemon; everything needed to find it again is on disk. Commands
//! are entered with the sandbox's own privileges by `sandboxerd enter`
//! ([`crate::confine::enter`]).
use std::collections::BTreeMap;
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
use sandboxer_api::Availability;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::archive::{self, ExtractError};
use super::fsutil;
use super::{
    BackendState, ExtError, Extension, Liveness, ProvisionRequest, ReadyInfo, SnapshotArchive,
    SnapshotSource,
};
use crate::config::LocalConfig;
use crate::confine::seccomp;
use crate::procfs;

/// The one host `ext.local` places on.
pub const LOCAL_HOST: &str = "local";

/// Directories bound read-only into every sandbox (when they exist).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc", "/opt",
];

/// Files of the host's `/etc` replaced by an empty file in every sandbox.
const HIDDEN_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/docker/key.json",
];

/// Directories of the host's `/etc` replaced by an empty tmpfs.
const HIDDEN_DIRS: &[&str] = &[
    "/etc/ssl/private",
    "/etc/sandboxer",
    "/etc/credstore",
    "/etc/credstore.encrypted",
];

/// [`HIDDEN_FILES`] that exist, and the SSH host private keys.
fn hidden_files() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = HIDDEN_FILES
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    if let Ok(entries) = std::fs::read_dir("/etc/ssh") {
        let mut keys: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("ssh_host_") && name.ends_with("_key")
            })
            .map(|e| e.path())
            .collect();
        keys.sort();
        out.extend(keys);
    }
    out
}

/// `ext.local` over bubblewrap.
pub struct LocalExtension {
    /// The catalog id it serves (`ext.local`, or an entry naming `backend: ext.local`).
    id: &'static str,
    root: PathBuf,
    bwrap: Option<PathBuf>,
    /// The `bwrap` option of its catalog entry, for messages when it is missing.
    bwrap_option: Option<PathBuf>,
    /// Who the sandbox is on the host.
    ids: SandboxIds,
    /// The seccomp programs, as bubblewrap reads them (built once).
    seccomp: Result<Arc<Vec<Vec<u8>>>, String>,
    /// This daemon's executable, whose `enter` subcommand joins a sandbox.
    exe: PathBuf,
}

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
    pub fn for_this_process(configured: LocalConfig) -> Self {
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

/// Fixed descriptor numbers in bubblewrap's process.
const WORKSPACE_FD: i32 = 10;
const SECCOMP_FD: i32 = 11;

/// What is kept on the sandbox row for `ext.local`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LocalState {
    dir: PathBuf,
    #[serde(default)]
    pid: Option<i32>,
    /// Start time of `pid` (clock ticks since boot), so a reused pid is never killed.
    #[serde(default)]
    pid_start: Option<u64>,
}

impl LocalExtension {
    /// A backend keeping its sandboxes under `<data_dir>/sandboxes`, run as
    /// `local` says (see [`SandboxIds::for_this_process`]).
    pub fn new(data_dir: &Path, local: LocalConfig) -> Self {
        let seccomp = seccomp::programs()
            .map(|ps| Arc::new(ps.iter().map(|p| seccomp::to_bytes(p)).collect()))
            .map_err(|e| e.to_string());
        Self {
            id: "ext.local",
            root: data_dir.join("sandboxes"),
            bwrap: find_in_path("bwrap"),
            bwrap_option: None,
            ids: SandboxIds::for_this_process(local),
            seccomp,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sandboxerd")),
        }
    }

    /// Who this backend's sandboxes are on the host.
    pub fn ids(&self) -> SandboxIds {
        self.ids
    }

    fn dir_of(&self, sandbox_id: &str) -> PathBuf {
        self.root.join(sandbox_id)
    }

    /// The bubblewrap arguments (everything after `bwrap`) that start the
    /// sandbox of `req`; the workspace and the seccomp programs come as the
    /// descriptors [`Self::bwrap_command`] maps. Public so the benchmark can
    /// time bubblewrap alone with exactly the daemon's flags.
    pub fn bwrap_args(&self, req: &ProvisionRequest) -> Vec<String> {
        let mut args: Vec<String> = [
            "--info-fd",
            "1",
            // Its own user namespace: uid and gid 0 inside are an
            // unprivileged id on the host (the daemon's own, or
            // `[local] sandbox_uid` under a root daemon), so no host file
            // is the sandbox's unless that id owns it, and no capability it
            // holds inside counts outside. No second, nested namespace
            // (as `--uid` other than 0 would make), so `enter` can join it.
            "--unshare-user",
            "--uid",
            "0",
            "--gid",
            "0",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--new-session",
            // No capabilities, even inside its own namespace: it cannot
            // remount, change file flags or load filters.
            "--cap-drop",
            "ALL",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let short = req.sandbox_id.to_lowercase();
        let hostname = format!("sbx-{}", &short[short.len().saturating_sub(10)..]);
        args.extend(["--hostname".into(), hostname]);
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        args.extend([
                            "--symlink".into(),
                            target.to_string_lossy().into_owned(),
                            dir.to_string(),
                        ]);
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    args.extend(["--ro-bind".into(), dir.to_string(), dir.to_string()]);
                }
                _ => {}
            }
        }
        args.extend(
            [
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                "/run",
                // Kernel settings stay read-only whatever their modes.
                "--ro-bind",
                "/proc/sys",
                "/proc/sys",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        // Password hashes and private keys are no business of a sandbox.
        // The user namespace already makes root-only files unreadable;
        // these are hidden besides, whatever their modes on this host.
        for secret in hidden_files() {
            args.extend([
                "--ro-bind".into(),
                "/dev/null".into(),
                secret.to_string_lossy().into_owned(),
            ]);
        }
        for secret in HIDDEN_DIRS {
            if Path::new(secret).is_dir() {
                args.extend(["--tmpfs".into(), secret.to_string()]);
            }
        }
        if let Ok(ps) = &self.seccomp {
            for i in 0..ps.len() {
                args.extend([
                    "--add-seccomp-fd".into(),
                    (SECCOMP_FD + i as i32).to_string(),
                ]);
            }
        }
        args.extend([
            "--bind-fd".into(),
            WORKSPACE_FD.to_string(),
            "/workspace".into(),
            "--chdir".into(),
            "/workspace".into(),
        ]);
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
        );
        env.insert("HOME".into(), "/workspace".into());
        env.insert("SANDBOX_ID".into(), req.sandbox_id.clone());
        env.extend(req.profile.setup.env.clone());
        for (k, v) in env {
            args.extend(["--setenv".into(), k, v]);
        }
        args.extend(["--".into(), "sleep".into(), "infinity".into()]);
        args
    }

    /// bubblewrap for `req`, ready to spawn: its arguments, the workspace
    /// under `dir` and the seccomp programs as descriptors, the sandbox's
    /// host ids, a clean environment holding only the secrets (so they are
    /// never on a command line), `info.json` on stdout and `bwrap.log` on
    /// stderr, in a process group of its own.
    pub fn bwrap_command(
        &self,
        req: &ProvisionRequest,
        dir: &Path,
    ) -> Result<std::process::Command, ExtError> {
        let Some(bwrap) = self.bwrap.clone() else {
            return Err(ExtError::new(
                "backend_unavailable",
                "bubblewrap (`bwrap`) is not installed; install it with `apt-get install bubblewrap`",
            ));
        };
        let programs = self.seccomp.as_ref().map_err(|e| {
            ExtError::new(
                "backend_unavailable",
                format!("no seccomp filter for this machine: {e}"),
            )
        })?;
        let fail = |what: String| {
            move |e: std::io::Error| ExtError::new("provision_failed", format!("{what}: {e}"))
        };
        let workspace = dir.join("workspace");
        // By descriptor, so what is bound is the directory opened here.
        // (bubblewrap 0.8 still resolves the descriptor's path as the
        // sandbox's user, hence the 0710 directories of `prepare_dir`.)
        let ws = std::fs::File::open(&workspace)
            .map_err(fail(format!("opening {}", workspace.display())))?;
        let mut mappings = vec![FdMapping {
            parent_fd: OwnedFd::from(ws),
            child_fd: WORKSPACE_FD,
        }];
        for (i, bytes) in programs.iter().enumerate() {
            let (reader, mut writer) =
                std::io::pipe().map_err(fail("making a pipe for the seccomp filter".into()))?;
            // A program is a few KiB: it fits the pipe's buffer whole.
            std::io::Write::write_all(&mut writer, bytes)
                .map_err(fail("writing the seccomp filter".into()))?;
            drop(writer);
            mappings.push(FdMapping {
                parent_fd: OwnedFd::from(reader),
                child_fd: SECCOMP_FD + i as i32,
            });
        }
        let info = std::fs::File::create(dir.join("info.json"))
            .map_err(fail("creating info.json".into()))?;
        let log = std::fs::File::create(dir.join("bwrap.log"))
            .map_err(fail("creating bwrap.log".into()))?;
        let mut cmd = std::process::Command::new(&bwrap);
        cmd.args(self.bwrap_args(req))
            // bubblewrap passes its own environment on: only the secrets,
            // which thus never appear on a command line (`ps` shows argv to
            // every user; environ only to the same user).
            .env_clear()
            .envs(req.secrets.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(info))
            .stderr(Stdio::from(log))
            // Its own process group: a Ctrl-C to the daemon's terminal does not reach it.
            .process_group(0);
        if self.ids.switch {
            // A root daemon starts bubblewrap as the sandbox's host user
            // (supplementary groups dropped), so the sandbox's user
            // namespace maps root inside to that user.
            cmd.uid(self.ids.uid).gid(self.ids.gid);
        }
        cmd.fd_mappings(mappings).map_err(|e| {
            ExtError::new(
                "provision_failed",
                format!("descriptors for bubblewrap: {e}"),
            )
        })?;
        Ok(cmd)
    }

    /// The argv prefix that runs a command inside the sandbox whose init is
    /// `pid`, with the sandbox's privileges: `sandboxerd enter`.
    fn enter_prefix(&self, pid: i32, start: u64) -> Vec<String> {
        vec![
            self.exe.to_string_lossy().into_owned(),
            "enter".into(),
            "--pid".into(),
            pid.to_string(),
            "--start".into(),
            start.to_string(),
            "--".into(),
        ]
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
        let mut ext = LocalExtension {
            id,
            root: self.root.clone(),
            bwrap: self.bwrap.clone(),
            bwrap_option: None,
            ids: self.ids,
            seccomp: self.seccomp.clone(),
            exe: self.exe.clone(),
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
                "backend_unavailable",
                "bubblewrap (`bwrap`) is not installed; install it with `apt-get install bubblewrap`",
            ));
        }
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
        let workspace2 = workspace.clone();
        let from_snapshot = req.from_snapshot.clone();
        let ids = self.ids;
        tokio::task::spawn_blocking(move || {
            prepare_dir(&dir2, &workspace2, copy_from.as_deref(), ids)?;
            match &from_snapshot {
                Some(src) => fill_from_snapshot(&workspace2, src, ids),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| ExtError::new("provision_failed", format!("workspace task: {e}")))??;

        let cmd = self.bwrap_command(req, &dir)?;
        let bwrap = cmd.get_program().to_owned();
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| {
            ExtError::new(
                "provision_failed",
                format!("starting {}: {e}", Path::new(&bwrap).display()),
            )
        })?;
        // Never waited on: dropping the handle leaves the sandbox running and
        // lets tokio reap the process whenever it exits.
        drop(child);
        Ok(serde_json::to_value(LocalState {
            dir,
            pid: None,
            pid_start: None,
        })
        .unwrap_or_default())
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
                        let workdir = st.dir.join("workspace");
                        let reachability = json!({
                            "kind": "local",
                            "workdir": workdir,
                            "pid": pid,
                            "enter": self.enter_prefix(pid, start),
                        });
                        let backend_state = serde_json::to_value(LocalState {
                            dir: st.dir.clone(),
                            pid: Some(pid),
                            pid_start: Some(start),
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
                    "not_ready_in_time",
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
        if let Some(pid) = st.pid {
            if owns_pid(pid, st.pid_start) {
                // SIGKILL to the namespace's pid 1 ends every process in it.
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(ExtError::new(
                            "teardown_failed",
                            format!("killing sandbox init {pid}: {e}"),
                        ))
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while owns_pid(pid, st.pid_start) && !is_zombie(pid) {
                    if Instant::now() > deadline {
                        return Err(ExtError::new(
                            "teardown_failed",
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
                    "teardown_failed",
                    format!("processes {stray:?} of {sandbox_id} still alive 10s after SIGKILL"),
                ));
            }
            for pid in stray {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let dir = st.dir.clone();
        tokio::task::spawn_blocking(move || match remove_sandbox_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) => Err(ExtError::new(
                "teardown_failed",
                format!("removing {}: {e}", dir.display()),
            )),
        })
        .await
        .map_err(|e| ExtError::new("teardown_failed", format!("teardown task: {e}")))?
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
                    "snapshot_failed",
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
        .map_err(|e| ExtError::new("snapshot_failed", format!("capture task: {e}")))?
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
            .map_err(|e| ExtError::new("restore_failed", format!("restore task: {e}")))?
    }

    async fn recover_workspace(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        let dir = self.dir_of(sandbox_id);
        tokio::task::spawn_blocking(move || finish_interrupted_restore(&dir))
            .await
            .map_err(|e| ExtError::new("restore_failed", format!("recovery task: {e}")))?
    }
}

/// Beside `workspace/` in the sandbox dir (so renames stay on one file
/// system): the extracted snapshot, the entries moved out of the workspace,
/// and the marker saying which half of the swap is under way.
const RESTORE_NEW: &str = "restore-new";
const RESTORE_OLD: &str = "restore-old";
/// Present while new entries are moved in (the old ones are all out).
const RESTORE_SWAPPING: &str = "restore-swapping";
/// Present once every new entry is in: what is left is clean-up.
const RESTORE_DONE: &str = "restore-done";

fn restore_err(what: impl std::fmt::Display) -> ExtError {
    ExtError::new("restore_failed", what.to_string())
}

/// Fill a fresh workspace from a snapshot (fork), verifying the archive.
fn fill_from_snapshot(
    workspace: &Path,
    src: &SnapshotSource,
    ids: SandboxIds,
) -> Result<(), ExtError> {
    // Owned by the sandbox's host user, setuid and setgid stripped.
    let root = archive::extract_archive(&src.path, &src.sha256, workspace, ids.owner())
        .map_err(|e| extract_error(src, e, "provision_failed"))?;
    archive::apply_root_meta(workspace, root).map_err(|e| {
        ExtError::new(
            "provision_failed",
            format!("workspace of snapshot {}: {e}", src.id),
        )
    })
}

fn extract_error(src: &SnapshotSource, e: ExtractError, io_code: &'static str) -> ExtError {
    match e {
        ExtractError::Corrupt(msg) => ExtError::new(
            "snapshot_corrupt",
            format!("snapshot {} is damaged: {msg}", src.id),
        ),
        ExtractError::Io(msg) => ExtError::new(io_code, msg),
    }
}

/// Restore in place. The bubblewrap sandbox holds `workspace/` itself (a
/// bind mount pins the directory, not its path), so the tree is replaced
/// inside that directory: the snapshot is extracted beside it (and verified)
/// first; then the old entries move out into `restore-old/`, the new ones
/// move in, and the old ones are deleted. Each move is a rename on one file
/// system. A failure rolls the moves back, and a crash is rolled back by
/// [`finish_interrupted_restore`], so the workspace ends either exactly as
/// it was or exactly as the snapshot.
fn restore_in_place(dir: &Path, src: &SnapshotSource, ids: SandboxIds) -> Result<(), ExtError> {
    let workspace = dir.join("workspace");
    if !workspace.is_dir() {
        return Err(restore_err(format!(
            "workspace {} does not exist",
            workspace.display()
        )));
    }
    finish_interrupted_restore(dir)?;
    let new = dir.join(RESTORE_NEW);
    let old = dir.join(RESTORE_OLD);
    // 1. Extract beside the workspace, verifying the hash; nothing touched yet.
    // Owned by the sandbox's host user before it becomes visible to the
    // sandbox, setuid and setgid stripped.
    let root = match archive::extract_archive(&src.path, &src.sha256, &new, ids.owner()) {
        Ok(root) => root,
        Err(e) => {
            let _ = remove_tree(&new);
            return Err(extract_error(src, e, "restore_failed"));
        }
    };
    // Moving entries out and back touches the workspace directory itself;
    // a rollback puts its mtime back too, so it is exactly as it was.
    let root_mtime = std::fs::metadata(&workspace)
        .and_then(|m| m.modified())
        .ok();
    let restore_root_mtime = || {
        if let Some(t) = root_mtime {
            let _ = std::fs::File::open(&workspace).and_then(|f| f.set_modified(t));
        }
    };
    // 2. Move the old entries out.
    std::fs::create_dir(&old)
        .map_err(|e| restore_err(format!("creating {}: {e}", old.display())))?;
    sync_dir(dir);
    if let Err(e) = move_entries(&workspace, &old) {
        let back = move_entries(&old, &workspace);
        restore_root_mtime();
        let _ = remove_tree(&old);
        let _ = remove_tree(&new);
        return Err(restore_err(format!(
            "moving the old workspace aside: {e}{}",
            rollback_note(back)
        )));
    }
    let swapping = dir.join(RESTORE_SWAPPING);
    let marked = std::fs::File::create(&swapping).and_then(|f| f.sync_all());
    sync_dir(dir);
    crate::fault::hit("restore.after_move_out");
    // 3. Move the new entries in.
    let moved_in = marked.map_err(|e| e.to_string()).and_then(|()| {
        if fault_error("restore.before_move_in") {
            return Err("fault injected at restore.before_move_in".to_owned());
        }
        move_entries(&new, &workspace).map_err(|e| e.to_string())
    });
    if let Err(e) = moved_in {
        let back = roll_back_swap(dir);
        restore_root_mtime();
        return Err(restore_err(format!(
            "moving the snapshot in: {e}{}",
            rollback_note(back)
        )));
    }
    let _ = std::fs::rename(&swapping, dir.join(RESTORE_DONE));
    sync_dir(dir);
    if let Err(e) = archive::apply_root_meta(&workspace, root) {
        tracing::warn!(error = %e, "could not apply the snapshot's workspace mode and mtime");
    }
    // 4. Clean up; a crash here is finished by the next start.
    finish_interrupted_restore(dir)
}

fn rollback_note(back: std::io::Result<()>) -> String {
    match back {
        Ok(()) => "; the workspace was left as it was".to_owned(),
        Err(e) => format!("; rolling back failed too ({e}), the next start finishes it"),
    }
}

/// Whether the test-only fault `point` is set to make an operation fail
/// (`SANDBOXER_FAULT=<point>`, debug builds only).
fn fault_error(point: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("SANDBOXER_FAULT").is_ok_and(|v| v == point)
}

/// Put a workspace an interrupted restore left behind back in order:
/// finished swaps are cleaned up, unfinished ones rolled back.
fn finish_interrupted_restore(dir: &Path) -> Result<(), ExtError> {
    let new = dir.join(RESTORE_NEW);
    let old = dir.join(RESTORE_OLD);
    let done = dir.join(RESTORE_DONE);
    let swapping = dir.join(RESTORE_SWAPPING);
    if done.exists() {
        remove_tree(&old).map_err(|e| restore_err(format!("removing {}: {e}", old.display())))?;
        remove_tree(&new).map_err(|e| restore_err(format!("removing {}: {e}", new.display())))?;
        remove_tree(&done).map_err(|e| restore_err(format!("removing {}: {e}", done.display())))?;
        return Ok(());
    }
    if swapping.exists() || old.exists() {
        tracing::warn!(dir = %dir.display(), "rolling back an interrupted restore");
        roll_back_swap(dir).map_err(|e| restore_err(format!("rolling back a restore: {e}")))?;
    }
    remove_tree(&new).map_err(|e| restore_err(format!("removing {}: {e}", new.display())))
}

/// Undo a swap: with the marker, the workspace holds new entries (moved
/// back to `restore-new/`); then every old entry moves back in.
fn roll_back_swap(dir: &Path) -> std::io::Result<()> {
    let workspace = dir.join("workspace");
    let new = dir.join(RESTORE_NEW);
    let old = dir.join(RESTORE_OLD);
    let swapping = dir.join(RESTORE_SWAPPING);
    if swapping.exists() {
        std::fs::create_dir_all(&new)?;
        move_entries(&workspace, &new)?;
    }
    if old.exists() {
        move_entries(&old, &workspace)?;
    }
    sync_dir(dir);
    remove_tree(&swapping)?;
    remove_tree(&old)?;
    remove_tree(&new)?;
    sync_dir(dir);
    Ok(())
}

/// Rename every entry of `from` into `to` (same file system, no name clashes).
fn move_entries(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::rename(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Remove a file or a tree; gone already is fine.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    let res = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Make renames in `dir` durable (best effort: a failure here only weakens
/// crash ordering, which the recovery copes with).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn prepare_dir(
    dir: &Path,
    workspace: &Path,
    copy_from: Option<&Path>,
    ids: SandboxIds,
) -> Result<(), ExtError> {
    let io =
        |what: &str, e: std::io::Error| ExtError::new("provision_failed", format!("{what}: {e}"));
    remove_sandbox_dir(dir).map_err(|e| io(&format!("clearing {}", dir.display()), e))?;
    // The sandboxes dir and each sandbox's dir belong to the daemon alone:
    // no other host user reaches a workspace, or anything in it that the
    // sandbox made setuid.
    let sandboxes = dir.parent().unwrap_or(dir);
    for d in [sandboxes, dir] {
        fsutil::private_dir(d).map_err(|e| io(&format!("creating {}", d.display()), e))?;
    }
    if ids.switch {
        // A root daemon starts bubblewrap as the sandbox's host user, which
        // must be able to look the workspace up: the data dir, `sandboxes/`
        // and the sandbox's dir are 0710 with the sandbox's group.
        let data_dir = sandboxes.parent().unwrap_or(sandboxes);
        for d in [data_dir, sandboxes, dir] {
            fsutil::traversable_by_group(d, ids.gid).map_err(|e| {
                io(
                    &format!("opening {} to the sandbox's group", d.display()),
                    e,
                )
            })?;
        }
    }
    std::fs::create_dir(workspace)
        .map_err(|e| io(&format!("creating {}", workspace.display()), e))?;
    if let Some(src) = copy_from {
        if !src.is_dir() {
            return Err(ExtError::new(
                "provision_failed",
                format!("workspace source {} is not a directory", src.display()),
            ));
        }
        // `src` was canonicalized under `input_roots` at create time (see
        // `http::inputs`). `-a` implies `--no-dereference`: a symlink in the
        // tree is copied as a link, never as the host file it points at, and
        // inside the sandbox it resolves in the sandbox's own view of the
        // file system (host secrets such as /etc/shadow are masked there).
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg("--no-preserve=ownership")
            .arg(format!("{}/.", src.display()))
            .arg(workspace)
            .output()
            .map_err(|e| io("running cp", e))?;
        if !out.status.success() {
            return Err(ExtError::new(
                "provision_failed",
                format!(
                    "copying {} into the workspace: {}",
                    src.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
    }
    own_workspace(workspace, ids, "provision_failed")
}

/// Give a tree that is about to be (or become part of) a workspace to the
/// sandbox's host user, setuid and setgid bits stripped.
fn own_workspace(path: &Path, ids: SandboxIds, code: &'static str) -> Result<(), ExtError> {
    fsutil::own_tree(path, ids.owner()).map_err(|e| {
        ExtError::new(
            code,
            format!("giving {} to the sandbox's user: {e}", path.display()),
        )
    })
}

/// Live (not zombie) bubblewrap processes of sandbox `sandbox_id`: its
/// command line sets `SANDBOX_ID` to it.
fn pids_running(sandbox_id: &str) -> Vec<i32> {
    let want: [&[u8]; 3] = [b"--setenv", b"SANDBOX_ID", sandbox_id.as_bytes()];
    procfs::all_pids()
        .into_iter()
        .filter(|pid| {
            let argv = procfs::argv(*pid);
            argv.first().is_some_and(|a| a.ends_with(b"bwrap"))
                && argv
                    .windows(3)
                    .any(|w| w.iter().map(Vec::as_slice).eq(want.iter().copied()))
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

/// Remove a sandbox's directory. A file flagged immutable or append-only
/// (which a sandbox cannot set, having no capability, but a host process
/// might have) would pin it forever: on a refusal the flags are cleared
/// and the removal is tried once more. Gone already is fine.
fn remove_sandbox_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            fsutil::clear_inode_flags(dir);
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
        Err(e) => Err(e),
    }
}

/// The host pid of the sandbox's pid 1, once bubblewrap has written it.
fn read_info_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .get("child-pid")?
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

use procfs::{is_zombie, owns_pid, stat as proc_stat};

/// Whether the sandbox init has started the command under it yet.
fn has_child(pid: i32) -> bool {
    !procfs::children(pid).is_empty()
}

fn bwrap_exited(dir: &Path) -> bool {
    // bubblewrap writes nothing to its log unless it failed.
    std::fs::metadata(dir.join("bwrap.log"))
        .map(|m| m.len() > 0)
        .unwrap_or(false)
}

fn exited_error(dir: &Path) -> ExtError {
    let log = std::fs::read_to_string(dir.join("bwrap.log")).unwrap_or_default();
    let log = log.trim();
    ExtError::new(
        "provision_failed",
        if log.is_empty() {
            "bubblewrap exited before the sandbox was ready".to_owned()
        } else {
            format!("bubblewrap failed: {log}")
        },
    )
}
