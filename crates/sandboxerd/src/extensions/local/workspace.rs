//! The sandbox's directory on the host: made private, filled (copy mode),
//! given to the sandbox's host user, and removed.

use super::*;

/// A sandbox's own filesystem of `bytes` (`resources.disk`).
pub struct DiskPlan {
    pub disks: Arc<disk::Disks>,
    pub bytes: u64,
}

pub(super) fn prepare_dir(
    dir: &Path,
    workspace: &Path,
    copy_from: Option<&Path>,
    ids: SandboxIds,
    disk: Option<&DiskPlan>,
) -> Result<(), ExtError> {
    let io = |what: &str, e: std::io::Error| {
        ExtError::new(ProblemCode::ProvisionFailed, format!("{what}: {e}"))
    };
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    release_dir(dir, &id, disk.map(|d| d.disks.as_ref()))
        .map_err(|e| io(&format!("clearing {}", dir.display()), e))?;
    // The sandboxes dir and each sandbox's dir belong to the daemon alone:
    // no other host user reaches a workspace, or anything in it that the
    // sandbox made setuid.
    let sandboxes = dir.parent().unwrap_or(dir);
    for d in [sandboxes, dir] {
        fsutil::private_dir(d).map_err(|e| io(&format!("creating {}", d.display()), e))?;
    }
    if let Some(plan) = disk {
        // The sandbox's directory becomes its own filesystem of `disk`
        // bytes; its root gets the directory's private mode again.
        plan.disks.attach(&id, plan.bytes, dir).map_err(|e| {
            ExtError::new(
                ProblemCode::ProvisionFailed,
                format!("the sandbox's disk of {} bytes: {e}", plan.bytes),
            )
        })?;
        fsutil::private_dir(dir).map_err(|e| io(&format!("securing {}", dir.display()), e))?;
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
                ProblemCode::ProvisionFailed,
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
                ProblemCode::ProvisionFailed,
                format!(
                    "copying {} into the workspace: {}",
                    src.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
    }
    own_workspace(workspace, ids, ProblemCode::ProvisionFailed)
}

/// Give a tree that is about to be (or become part of) a workspace to the
/// sandbox's host user, setuid and setgid bits stripped.
pub(super) fn own_workspace(
    path: &Path,
    ids: SandboxIds,
    code: ProblemCode,
) -> Result<(), ExtError> {
    fsutil::own_tree(path, ids.owner()).map_err(|e| {
        ExtError::new(
            code,
            format!("giving {} to the sandbox's user: {e}", path.display()),
        )
    })
}

/// Live (not zombie) bubblewrap processes of sandbox `sandbox_id`: its
/// command line sets `SANDBOX_ID` to it.
pub(super) fn pids_running(sandbox_id: &str) -> Vec<i32> {
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

/// Unmount a sandbox's own filesystem (if `dir` is one), remove its
/// image, then its directory.
pub(super) fn release_dir(
    dir: &Path,
    sandbox_id: &str,
    disks: Option<&disk::Disks>,
) -> std::io::Result<()> {
    match disks {
        Some(d) => d.detach(sandbox_id, dir).map_err(std::io::Error::other)?,
        None if disk::is_mount_point(dir) => {
            // Mounted by a daemon configured otherwise: still never
            // recursed into and left mounted.
            return Err(std::io::Error::other(format!(
                "{} is a mount point; unmount it (and remove its image under <data_dir>/disks)",
                dir.display()
            )));
        }
        None => {}
    }
    remove_sandbox_dir(dir)
}

/// Remove a sandbox's directory. A file flagged immutable or append-only
/// (which a sandbox cannot set, having no capability, but a host process
/// might have) would pin it forever: on a refusal the flags are cleared
/// and the removal is tried once more. Gone already is fine.
pub(super) fn remove_sandbox_dir(dir: &Path) -> std::io::Result<()> {
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
