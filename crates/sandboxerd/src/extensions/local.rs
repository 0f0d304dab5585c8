//! `ext.local`: a bubblewrap sandbox per request on the daemon's own machine.
//!
//! Each sandbox gets a directory `<data_dir>/sandboxes/<id>/` holding its
//! `workspace/` (bound read-write at `/workspace` inside), bubblewrap's
//! `info.json` (the host pid of the sandbox's pid 1) and `bwrap.log`. The
//! sandbox runs in new pid, mount, net, ipc, uts (and cgroup, where allowed)
//! namespaces with read-only system directories and only loopback. Its init
//! (bubblewrap's reaper as pid 1, `sleep infinity` under it) lives until
//! teardown. It is spawned in its own process group and never waited on, so
//! it outlives a restart or `kill -9` of the daemon; everything needed to find
//! it again is on disk.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandboxer_api::Availability;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::archive::{self, ExtractError, WriteError};
use super::{
    BackendState, ExtError, Extension, Liveness, ProvisionRequest, ReadyInfo, SnapshotArchive,
    SnapshotSource,
};

/// The one host `ext.local` places on.
pub const LOCAL_HOST: &str = "local";

/// Directories bound read-only into every sandbox (when they exist).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc", "/opt",
];

/// `ext.local` over bubblewrap.
pub struct LocalExtension {
    /// The catalog id it serves (`ext.local`, or an entry naming `backend: ext.local`).
    id: &'static str,
    root: PathBuf,
    bwrap: Option<PathBuf>,
    nsenter: Option<PathBuf>,
    /// The `bwrap` option of its catalog entry, for messages when it is missing.
    bwrap_option: Option<PathBuf>,
}

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
    /// A backend keeping its sandboxes under `<data_dir>/sandboxes`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            id: "ext.local",
            root: data_dir.join("sandboxes"),
            bwrap: find_in_path("bwrap"),
            nsenter: find_in_path("nsenter"),
            bwrap_option: None,
        }
    }

    fn dir_of(&self, sandbox_id: &str) -> PathBuf {
        self.root.join(sandbox_id)
    }

    /// The bubblewrap arguments (everything after `bwrap`) that start the
    /// sandbox of `req` with `workspace` bound at `/workspace`. Public so the
    /// benchmark can time bubblewrap alone with exactly the daemon's flags.
    pub fn bwrap_args(&self, req: &ProvisionRequest, workspace: &Path) -> Vec<String> {
        let mut args: Vec<String> = [
            "--info-fd",
            "1",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--new-session",
            // Root inside gets no capabilities: it cannot remount the
            // read-only system directories or reach the host's devices.
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
                // Kernel settings stay read-only even for uid 0 inside.
                "--ro-bind",
                "/proc/sys",
                "/proc/sys",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        // Password hashes are no business of a sandbox.
        for secret in ["/etc/shadow", "/etc/gshadow"] {
            if Path::new(secret).exists() {
                args.extend(["--ro-bind".into(), "/dev/null".into(), secret.into()]);
            }
        }
        args.extend([
            "--bind".into(),
            workspace.to_string_lossy().into_owned(),
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

    fn enter_prefix(&self, pid: i32) -> Vec<String> {
        let nsenter = self
            .nsenter
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "nsenter".into());
        let mut argv = vec![nsenter, "--target".into(), pid.to_string()];
        if !nix::unistd::geteuid().is_root() {
            // Unprivileged bubblewrap lives in a user namespace of its own.
            argv.extend(["--user".into(), "--preserve-credentials".into()]);
        }
        argv.extend(
            [
                "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        argv
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
        if self.nsenter.is_none() {
            return Availability {
                available: false,
                reason: Some("`nsenter` (util-linux) is not on PATH".into()),
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

    /// Options: `bwrap` and `nsenter`, absolute paths of the tools to run
    /// instead of the ones found on PATH. Every instance keeps its
    /// sandboxes under the same `<data_dir>/sandboxes` (ids never clash).
    fn instance(
        &self,
        id: &'static str,
        options: &BTreeMap<String, String>,
    ) -> Option<Result<std::sync::Arc<dyn Extension>, String>> {
        let mut ext = LocalExtension {
            id,
            root: self.root.clone(),
            bwrap: self.bwrap.clone(),
            nsenter: self.nsenter.clone(),
            bwrap_option: None,
        };
        for (key, value) in options {
            if !matches!(key.as_str(), "bwrap" | "nsenter") {
                return Some(Err(format!(
                    "`{key}` is not an option of ext.local (it takes `bwrap`, `nsenter`)"
                )));
            }
            let path = PathBuf::from(value);
            if !path.is_absolute() {
                return Some(Err(format!("`{key}`: `{value}` is not an absolute path")));
            }
            let found = path.is_file().then(|| path.clone());
            match key.as_str() {
                "bwrap" => {
                    ext.bwrap = found;
                    ext.bwrap_option = Some(path);
                }
                _ => ext.nsenter = found,
            }
        }
        Some(Ok(std::sync::Arc::new(ext)))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %req.sandbox_id))]
    async fn provision(&self, req: &ProvisionRequest) -> Result<BackendState, ExtError> {
        let Some(bwrap) = self.bwrap.clone() else {
            return Err(ExtError::new(
                "backend_unavailable",
                "bubblewrap (`bwrap`) is not installed; install it with `apt-get install bubblewrap`",
            ));
        };
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
        tokio::task::spawn_blocking(move || {
            prepare_dir(&dir2, &workspace2, copy_from.as_deref())?;
            match &from_snapshot {
                Some(src) => fill_from_snapshot(&workspace2, src),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| ExtError::new("provision_failed", format!("workspace task: {e}")))??;

        let info = std::fs::File::create(dir.join("info.json"))
            .map_err(|e| ExtError::new("provision_failed", format!("creating info.json: {e}")))?;
        let log = std::fs::File::create(dir.join("bwrap.log"))
            .map_err(|e| ExtError::new("provision_failed", format!("creating bwrap.log: {e}")))?;
        let mut cmd = tokio::process::Command::new(&bwrap);
        cmd.args(self.bwrap_args(req, &workspace))
            // bubblewrap passes its own environment on: only the secrets,
            // which thus never appear on a command line (`ps` shows argv to
            // every user; environ only to the same user).
            .env_clear()
            .envs(req.secrets.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(info))
            .stderr(Stdio::from(log))
            // Its own process group: a Ctrl-C to the daemon's terminal does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| {
            ExtError::new(
                "provision_failed",
                format!("starting {}: {e}", bwrap.display()),
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
                            "enter": self.enter_prefix(pid),
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
        // Whatever else runs from this sandbox's workspace: a bubblewrap
        // started by a daemon that died before it learnt the pid (or before
        // bubblewrap reported it) is found by its command line.
        let workspace = st.dir.join("workspace");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stray = pids_running(&workspace);
            if stray.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ExtError::new(
                    "teardown_failed",
                    format!(
                        "processes {stray:?} of {} still alive 10s after SIGKILL",
                        workspace.display()
                    ),
                ));
            }
            for pid in stray {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let dir = st.dir.clone();
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
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
    ) -> Result<SnapshotArchive, ExtError> {
        let dir = self.dir_of(sandbox_id);
        let dest = dest.to_owned();
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
            match archive::write_archive(&workspace, &dest, max_content_bytes) {
                Ok(info) => {
                    if info.skipped > 0 {
                        tracing::info!(
                            skipped = info.skipped,
                            "sockets, FIFOs or device nodes left out of the snapshot"
                        );
                    }
                    Ok(SnapshotArchive {
                        sha256: info.sha256,
                        size_bytes: info.size_bytes,
                        content_bytes: info.content_bytes,
                    })
                }
                Err(WriteError::TooLarge { limit }) => Err(ExtError::new(
                    "snapshot_too_large",
                    format!(
                        "the workspace is larger than the profile's snapshot.max_size ({limit} bytes before compression)"
                    ),
                )),
                Err(WriteError::Io(msg)) => Err(ExtError::new("snapshot_failed", msg)),
            }
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
        tokio::task::spawn_blocking(move || restore_in_place(&dir, &src))
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
fn fill_from_snapshot(workspace: &Path, src: &SnapshotSource) -> Result<(), ExtError> {
    let root = archive::extract_archive(&src.path, &src.sha256, workspace)
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
fn restore_in_place(dir: &Path, src: &SnapshotSource) -> Result<(), ExtError> {
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
    let root = match archive::extract_archive(&src.path, &src.sha256, &new) {
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

fn prepare_dir(dir: &Path, workspace: &Path, copy_from: Option<&Path>) -> Result<(), ExtError> {
    let io =
        |what: &str, e: std::io::Error| ExtError::new("provision_failed", format!("{what}: {e}"));
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&format!("clearing {}", dir.display()), e)),
    }
    std::fs::create_dir_all(workspace)
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
    Ok(())
}

/// Live (not zombie) processes whose command line names `workspace` as an
/// argument: the bubblewrap processes of one sandbox.
fn pids_running(workspace: &Path) -> Vec<i32> {
    let want = workspace.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|arg| arg == want))
                .unwrap_or(false)
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
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

/// State letter and start time of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn is_zombie(pid: i32) -> bool {
    matches!(proc_stat(pid), Some(('Z' | 'X', _)) | None)
}

/// Whether `pid` is still the process we started (same start time when known).
fn owns_pid(pid: i32, start: Option<u64>) -> bool {
    match (proc_stat(pid), start) {
        (Some((_, actual)), Some(expected)) => actual == expected,
        (Some(_), None) => std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .next()
                    .is_some_and(|argv0| argv0.ends_with(b"bwrap"))
            })
            .unwrap_or(false),
        (None, _) => false,
    }
}

/// Whether the sandbox init has started the command under it yet.
fn has_child(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|c| !c.trim().is_empty())
        .unwrap_or(false)
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
