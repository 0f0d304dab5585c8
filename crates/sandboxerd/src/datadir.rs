//! The data dir belongs to one daemon at a time: an exclusive `flock` on
//! `<data_dir>/sandboxerd.lock`, taken before anything else touches the
//! data dir and held for the life of the process. A second daemon on the
//! same data dir would otherwise tear down sandboxes the first one is
//! provisioning (recovery treats them as left in flight).
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rustix::fs::{flock, FlockOperation};

/// The name of the lock file inside the data dir.
pub const LOCK_FILE: &str = "sandboxerd.lock";

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Create `data_dir` if missing and take its lock, writing this process's
/// pid into the lock file. Fails at once (never waits) when another process
/// holds it, naming the data dir and that process's pid.
pub fn lock(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("data dir {}: cannot create", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    // Not truncated on open: the holder's pid must stay readable.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| {
            format!(
                "data dir {}: cannot open {}",
                data_dir.display(),
                path.display()
            )
        })?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_owned()
            } else {
                format!("another sandboxerd (pid {holder})")
            };
            anyhow::bail!(
                "data dir {} is in use by {who} (lock file {}); two daemons must not share one data dir",
                data_dir.display(),
                path.display()
            );
        }
        Err(e) => {
            return Err(std::io::Error::from(e)).with_context(|| {
                format!(
                    "data dir {}: cannot lock {}",
                    data_dir.display(),
                    path.display()
                )
            })
        }
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|()| writeln!(file, "{pid}"))
        .and_then(|()| file.sync_all())
        .with_context(|| {
            format!(
                "data dir {}: cannot write {}",
                data_dir.display(),
                path.display()
            )
        })?;
    Ok(DataDirLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock(dir.path()).expect("first lock");
        let err = lock(dir.path()).expect_err("second lock must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        lock(dir.path()).expect("free again once dropped");
    }
}
