//! Temporary directories that leak no process, and process checks.
use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A temporary directory that, when dropped (also when a test panics),
/// kills every process still running from it (daemons and sandboxes), so a
/// failing test leaks nothing onto the machine.
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    /// A new, empty directory under the system's temporary directory.
    pub fn new() -> Self {
        TestDir(tempfile::tempdir().expect("tempdir"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        kill_leftovers(self.0.path());
        unmount_under(self.0.path());
    }
}

/// Detach every mount at or under `dir`, deepest first (a sandbox's disk
/// image that a killed daemon left mounted), so removing `dir` removes
/// everything and no loop device stays held. Best effort.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let marker = dir.to_string_lossy().into_owned();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&marker))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = std::process::Command::new("umount")
            .args(["-l", p])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Kill what is still running from `dir`: every process (but this one)
/// whose command line names it, or whose stderr goes to a file under it (a
/// sandbox's bubblewrap gets its workspace as a descriptor but logs into
/// its dir). Answers how many were killed.
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

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}
