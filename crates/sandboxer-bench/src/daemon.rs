//! The real `sandboxerd` binary, started on `127.0.0.1:0` with a data dir of
//! its own; its bound address is read from the JSON log line with `addr`.
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The `sandboxerd` binary next to this benchmark's own executable (both
/// are built into the same `target/<profile>/`).
pub fn locate() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot tell where this executable is")?;
    let dir = me
        .parent()
        .context("this executable has no parent directory")?;
    let bin = dir.join("sandboxerd");
    if !bin.is_file() {
        let profile = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        bail!(
            "the daemon binary {} is missing: build it first with `cargo build{profile} -p sandboxerd`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Warn when the daemon binary is older than the daemon's sources: the
/// benchmark would measure an old build.
pub fn warn_if_stale(bin: &Path, repo: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
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
            bin.display()
        );
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

/// What the log reader keeps of the daemon's log.
#[derive(Default)]
pub struct LogStats {
    /// Lines mentioning `database is locked`.
    pub locked: AtomicUsize,
    /// Lines logged at level ERROR.
    pub errors: AtomicUsize,
    /// The last lines, for messages when something goes wrong.
    pub tail: Mutex<VecDeque<String>>,
}

impl LogStats {
    /// The last lines of the log, one per line.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Counters and the tail of its log.
    pub log: Arc<LogStats>,
}

/// Resident memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most ever resident.
    pub hwm_kib: u64,
}

impl Daemon {
    /// Start `bin` in `repo` (for its `profiles/` and `extensions/`) on
    /// `data_dir`, its log written to `log_path`, and wait until it serves.
    pub fn start(
        bin: &Path,
        repo: &Path,
        data_dir: &Path,
        log_path: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, repo, &repo.join("profiles"), data_dir, log_path, &[])
    }

    /// [`Daemon::start`] with the profiles of `profiles` instead of the
    /// repository's, and more command-line arguments (`--config <file>`).
    pub fn start_with(
        bin: &Path,
        repo: &Path,
        profiles: &Path,
        data_dir: &Path,
        log_path: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.current_dir(repo)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--profiles")
            .arg(profiles)
            .arg("--extensions")
            .arg(repo.join("extensions"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Only the defaults: a developer's own configuration must not change the figures.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SANDBOXER_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("the daemon's stderr")?;
        let mut file = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log = Arc::new(LogStats::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if line.contains("database is locked") {
                    stats.locked.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("\"level\":\"ERROR\"") {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
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
                let mut tail = stats.tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "sandboxerd did not start serving within 60s (exit status: {status:?}); its log ends with:\n{}",
                    log.tail()
                );
            }
        };
        Ok(Daemon {
            child,
            url: format!("http://{addr}"),
            log,
        })
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its memory now.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory(self.pid())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid")?);
        let _ = kill(pid, Signal::SIGTERM);
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS` and `VmHWM` of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path}: no `{name}` line"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Kill what is still running from `dir` (sandboxes a failed run left
/// behind): every process whose command line names it, or whose stderr goes
/// to a file under it (a sandbox's bubblewrap gets its workspace as a
/// descriptor but logs into its dir). Answers how many.
pub fn kill_leftovers(dir: &Path) -> usize {
    let marker = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let logs_here = std::fs::read_link(entry.path().join("fd/2"))
            .map(|l| l.to_string_lossy().starts_with(&marker))
            .unwrap_or(false);
        if (logs_here || String::from_utf8_lossy(&cmdline).contains(&marker))
            && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}
