//! Cgroup delegation for a daemon started as an unprivileged user: what
//! systemd's `Delegate=yes` gives the shipped unit, made by hand (the test
//! runs as root) for each hierarchy that carries limits.
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The v1 controllers sand-boxer limits sandboxes with.
const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

/// Makes `/<name>` (unique to `data_dir`) in every cgroup hierarchy that
/// carries a controller sand-boxer uses, owned by `uid:gid` with its
/// `cgroup.procs`; answers the path to give as `[local] cgroup_parent` and
/// the directories made.
pub fn delegate(uid: u32, gid: u32, data_dir: &Path) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    let name = format!("sandboxer-test-{uid}-{:016x}", h.finish());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = left.split(' ').nth(4).unwrap_or_default();
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or_default();
        let opts = r.nth(1).unwrap_or_default();
        let wanted = fstype == "cgroup2"
            || (fstype == "cgroup" && opts.split(',').any(|o| CONTROLLERS.contains(&o)));
        if !wanted {
            continue;
        }
        let dir = Path::new(mountpoint).join(&name);
        if dirs.contains(&dir) {
            continue;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        for p in [dir.clone(), dir.join("cgroup.procs")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {uid}", p.display()))?;
        }
        if fstype == "cgroup2" {
            // Hand the controllers down to the delegated subtree.
            let _ = std::fs::write(
                Path::new(mountpoint).join("cgroup.subtree_control"),
                "+memory +pids +cpu",
            );
        }
        dirs.push(dir);
    }
    Ok((format!("/{name}"), dirs))
}

/// Removes a cgroup directory and the (empty) cgroups under it, deepest
/// first; best effort.
pub fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
