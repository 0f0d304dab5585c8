//! The real `sandboxerd` binary, started on `127.0.0.1:0` with a data dir of
//! the caller's; its bound address is read from the JSON log line with `addr`.
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fixtures::repo_root;

/// How long a daemon may take to log the address it serves on.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Where the `sandboxerd` binary is. Tests take it from cargo
/// ([`daemon_bin!`](crate::daemon_bin)); the benchmarks find it beside
/// themselves ([`DaemonBin::beside_current_exe`]).
#[derive(Debug, Clone)]
pub struct DaemonBin(PathBuf);

impl DaemonBin {
    /// The binary at `path`.
    pub fn new(path: impl Into<PathBuf>) -> DaemonBin {
        DaemonBin(path.into())
    }

    /// The `sandboxerd` next to the running executable (both are built into
    /// the same `target/<profile>/`), or one level up from a test binary in
    /// `target/<profile>/deps/`; the error says how to build it.
    pub fn beside_current_exe() -> anyhow::Result<DaemonBin> {
        let me = std::env::current_exe().context("cannot tell where this executable is")?;
        let dir = me
            .parent()
            .context("this executable has no parent directory")?;
        let candidates = [dir.join("sandboxerd"), dir.join("../sandboxerd")];
        if let Some(bin) = candidates.iter().find(|b| b.is_file()) {
            return Ok(DaemonBin(bin.clone()));
        }
        let profile = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        bail!(
            "the daemon binary {} is missing: build it first with `cargo build{profile} -p sandboxerd`",
            candidates[0].display()
        )
    }

    /// The binary's path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A command running the binary in the repository root (for its
    /// `profiles/` and `extensions/`), for a test that runs it to completion
    /// (a start that must fail).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.0);
        cmd.current_dir(repo_root());
        cmd
    }

    /// Warn on stderr when the binary is older than the daemon's sources
    /// under `repo`: a benchmark would measure an old build.
    pub fn warn_if_stale(&self, repo: &Path) {
        let Ok(built) = std::fs::metadata(&self.0).and_then(|m| m.modified()) else {
            return;
        };
        let newest = [
            repo.join("crates/sandboxerd/src"),
            repo.join("crates/sandboxer-api/src"),
            repo.join("migrations"),
        ]
        .iter()
        .filter_map(|d| newest_mtime(d))
        .max();
        if newest.is_some_and(|n| n > built) {
            eprintln!(
                "warning: {} is older than the daemon's sources; rebuild it (`cargo build --release -p sandboxerd`) \
                 or the figures are those of the old build",
                self.0.display()
            );
        }
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(t);
    }
    newest
}

/// What the daemon logged: the lines (all of them, or the last 40 when they
/// also go to a file) and counters a benchmark reports.
#[derive(Default)]
pub struct DaemonLog {
    lines: Mutex<VecDeque<String>>,
    keep: Option<usize>,
    /// Lines mentioning `database is locked`.
    pub locked: AtomicUsize,
    /// Lines logged at level ERROR.
    pub errors: AtomicUsize,
}

impl DaemonLog {
    /// The lines kept, one string.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn push(&self, line: String) {
        if line.contains("database is locked") {
            self.locked.fetch_add(1, Ordering::Relaxed);
        }
        if line.contains("\"level\":\"ERROR\"") {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if self.keep.is_some_and(|k| lines.len() >= k) {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

/// How to start a [`Daemon`]: made by [`Daemon::builder`] (or
/// [`daemon!`](crate::daemon)), ended by [`DaemonBuilder::start`].
#[derive(Debug, Clone)]
pub struct DaemonBuilder {
    bin: DaemonBin,
    repo: PathBuf,
    profiles: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    user: Option<(u32, u32)>,
    log_file: Option<PathBuf>,
}

impl DaemonBuilder {
    /// Run in `repo` (for its `profiles/` and `extensions/`) instead of this
    /// checkout's root.
    pub fn repo(mut self, repo: impl Into<PathBuf>) -> Self {
        self.repo = repo.into();
        self
    }

    /// Load the profiles of `dir` (`--profiles`) instead of the repository's.
    pub fn profiles(mut self, dir: impl Into<PathBuf>) -> Self {
        self.profiles = Some(dir.into());
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More command-line arguments (`["--config", path]`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// One environment variable (`SANDBOXER_FAULT`, ...). The caller's own
    /// `SANDBOXER_*` variables are never passed on.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// More environment variables, as [`DaemonBuilder::env`].
    pub fn envs(mut self, vars: &[(&str, &str)]) -> Self {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Run as the user `uid:gid` (the caller must be root; the data dir must
    /// be that user's). A copy of the binary, the profiles and the
    /// extensions is run from beside the data dir, as the checkout may sit
    /// where that user cannot enter (a CI clone under /root).
    pub fn user(mut self, user: (u32, u32)) -> Self {
        self.user = Some(user);
        self
    }

    /// Write the log to `path` (and keep only its last lines in memory)
    /// instead of echoing it to stderr.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Start on `data_dir` and wait until the daemon serves; panics saying
    /// why it did not (its log is on stderr).
    pub fn start(self, data_dir: &Path) -> Daemon {
        self.try_start(data_dir).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`DaemonBuilder::start`] answering an error instead of panicking.
    pub fn try_start(self, data_dir: &Path) -> anyhow::Result<Daemon> {
        use std::os::unix::process::CommandExt;
        let mut root = self.repo.clone();
        let mut exe = self.bin.0.clone();
        if self.user.is_some() {
            let stage = data_dir.parent().context("the data dir has no parent")?;
            exe = stage.join("sandboxerd");
            std::fs::copy(&self.bin.0, &exe)
                .with_context(|| format!("copying {}", self.bin.0.display()))?;
            // The in-sandbox agent, which the daemon looks for beside itself.
            let agent = self.bin.0.with_file_name("sandboxer-agent");
            if agent.is_file() {
                std::fs::copy(&agent, stage.join("sandboxer-agent"))
                    .with_context(|| format!("copying {}", agent.display()))?;
            }
            for dir in ["profiles", "extensions"] {
                copy_dir(&root.join(dir), &stage.join(dir))?;
            }
            root = stage.to_owned();
        }
        let mut cmd = Command::new(&exe);
        let mut cgroup_dirs = Vec::new();
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
            // What systemd's `Delegate=yes` does for the shipped unit: a
            // cgroup subtree of the daemon's own, where it makes the
            // sandboxes' cgroups.
            let (parent, dirs) = crate::cgroups::delegate(uid, gid, data_dir)?;
            cmd.env("SANDBOXER_LOCAL__CGROUP_PARENT", parent);
            cgroup_dirs = dirs;
        }
        // Only the caller's settings: a developer's own environment must
        // change neither a test nor the figures.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SANDBOXER_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(&root)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--log-format", "json"]);
        if let Some(p) = &self.profiles {
            cmd.arg("--profiles").arg(p);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stderr = child.stderr.take().context("the daemon's stderr")?;
        let mut file = match &self.log_file {
            Some(p) => Some(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => None,
        };
        let log = Arc::new(DaemonLog {
            keep: file.as_ref().map(|_| 40),
            ..DaemonLog::default()
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match file.as_mut() {
                    Some(f) => {
                        let _ = writeln!(f, "{line}");
                    }
                    // Echoed, so a failing test shows the daemon's log.
                    None => eprintln!("[sandboxerd] {line}"),
                }
                if !sent {
                    let addr = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("addr").and_then(|a| a.as_str()).map(str::to_owned));
                    if let Some(addr) = addr {
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
                sink.push(line);
            }
        });
        let addr = match rx.recv_timeout(START_LIMIT) {
            Ok(addr) => addr,
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "sandboxerd did not start serving within {START_LIMIT:?} (exit status: {status:?}); its log ends with:\n{}",
                    log.text()
                );
            }
        };
        let url = format!("http://{addr}");
        let client = sandboxctl::Client::new(&url, None).context("a client of the daemon")?;
        Ok(Daemon {
            child,
            url,
            data_dir: data_dir.to_owned(),
            client,
            log,
            cgroup_dirs,
        })
    }
}

/// Copy the files of `from` (one level, as profiles/ and extensions/ are)
/// into a new directory `to`, readable by every user.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .flatten()
    {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// A running `sandboxerd`, killed when dropped.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// A client of it without a token.
    pub client: sandboxctl::Client,
    /// What it logged so far.
    pub log: Arc<DaemonLog>,
    /// The cgroup subtrees delegated to it (an unprivileged daemon), removed
    /// when it is dropped.
    cgroup_dirs: Vec<PathBuf>,
}

impl Daemon {
    /// How to start `bin`: on port 0, in this checkout's root, logging JSON.
    pub fn builder(bin: DaemonBin) -> DaemonBuilder {
        DaemonBuilder {
            bin,
            repo: repo_root(),
            profiles: None,
            args: Vec::new(),
            env: Vec::new(),
            user: None,
            log_file: None,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client of this daemon with a bearer token.
    pub fn client_with(&self, token: &str) -> sandboxctl::Client {
        sandboxctl::Client::new(&self.url, Some(token.to_owned())).expect("client")
    }

    /// The daemon's log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// `kill -9` the daemon and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        kill(self.pid_t(), Signal::SIGTERM).expect("SIGTERM");
        self.child.wait().expect("wait")
    }

    /// SIGTERM, then SIGKILL (and an error) if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let _ = kill(self.pid_t(), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("sandboxerd did not stop within {grace:?} of SIGTERM; it was killed")
    }

    fn pid_t(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits an i32"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for dir in &self.cgroup_dirs {
            crate::cgroups::remove_tree(dir);
        }
    }
}
