//! Restore in place and fork: a snapshot extracted beside the workspace
//! (or into a fresh one), then swapped in entry by entry, rolled back on a
//! failure and finished or undone after a crash.

use super::*;

/// Beside `workspace/` in the sandbox dir (so renames stay on one file
/// system): the extracted snapshot, the entries moved out of the workspace,
/// and the marker saying which half of the swap is under way.
pub(super) const RESTORE_NEW: &str = "restore-new";
pub(super) const RESTORE_OLD: &str = "restore-old";
/// Present while new entries are moved in (the old ones are all out).
pub(super) const RESTORE_SWAPPING: &str = "restore-swapping";
/// Present once every new entry is in: what is left is clean-up.
pub(super) const RESTORE_DONE: &str = "restore-done";
/// The workspace directory's own mtime before a restore touched it
/// (nanoseconds since the epoch), for a rollback after a crash.
pub(super) const RESTORE_ROOT_MTIME: &str = "restore-root-mtime";

pub(super) fn restore_err(what: impl std::fmt::Display) -> ExtError {
    ExtError::new(ProblemCode::RestoreFailed, what.to_string())
}

/// Fill a fresh workspace from a snapshot (fork), verifying the archive.
pub(super) fn fill_from_snapshot(
    workspace: &Path,
    src: &SnapshotSource,
    ids: SandboxIds,
) -> Result<(), ExtError> {
    // Owned by the sandbox's host user, setuid and setgid stripped.
    let root = archive::extract_archive(&src.path, &src.sha256, workspace, ids.owner())
        .map_err(|e| extract_error(src, e, ProblemCode::ProvisionFailed))?;
    archive::apply_root_meta(workspace, root).map_err(|e| {
        ExtError::new(
            ProblemCode::ProvisionFailed,
            format!("workspace of snapshot {}: {e}", src.id),
        )
    })
}

pub(super) fn extract_error(
    src: &SnapshotSource,
    e: ExtractError,
    io_code: ProblemCode,
) -> ExtError {
    match e {
        ExtractError::Corrupt(msg) => ExtError::new(
            ProblemCode::SnapshotCorrupt,
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
pub(super) fn restore_in_place(
    dir: &Path,
    src: &SnapshotSource,
    ids: SandboxIds,
) -> Result<(), ExtError> {
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
            return Err(extract_error(src, e, ProblemCode::RestoreFailed));
        }
    };
    // Moving entries out and back touches the workspace directory itself;
    // a rollback puts its mtime back too, so it is exactly as it was. It is
    // kept on disk, for a rollback by the next start after a crash.
    let root_mtime = std::fs::metadata(&workspace)
        .and_then(|m| m.modified())
        .ok();
    if let Some(nanos) = root_mtime
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
    {
        let _ = std::fs::write(dir.join(RESTORE_ROOT_MTIME), nanos.to_string());
    }
    let restore_root_mtime = || {
        put_root_mtime_back(dir);
        let _ = remove_tree(&dir.join(RESTORE_ROOT_MTIME));
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
        if crate::fault::wanted("restore.before_move_in") {
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

pub(super) fn rollback_note(back: std::io::Result<()>) -> String {
    match back {
        Ok(()) => "; the workspace was left as it was".to_owned(),
        Err(e) => format!("; rolling back failed too ({e}), the next start finishes it"),
    }
}

/// Put a workspace an interrupted restore left behind back in order:
/// finished swaps are cleaned up, unfinished ones rolled back.
pub(super) fn finish_interrupted_restore(dir: &Path) -> Result<(), ExtError> {
    let new = dir.join(RESTORE_NEW);
    let old = dir.join(RESTORE_OLD);
    let done = dir.join(RESTORE_DONE);
    let swapping = dir.join(RESTORE_SWAPPING);
    let mtime = dir.join(RESTORE_ROOT_MTIME);
    if done.exists() {
        remove_tree(&mtime)
            .map_err(|e| restore_err(format!("removing {}: {e}", mtime.display())))?;
        remove_tree(&old).map_err(|e| restore_err(format!("removing {}: {e}", old.display())))?;
        remove_tree(&new).map_err(|e| restore_err(format!("removing {}: {e}", new.display())))?;
        remove_tree(&done).map_err(|e| restore_err(format!("removing {}: {e}", done.display())))?;
        return Ok(());
    }
    if swapping.exists() || old.exists() {
        tracing::warn!(dir = %dir.display(), "rolling back an interrupted restore");
        roll_back_swap(dir).map_err(|e| restore_err(format!("rolling back a restore: {e}")))?;
        put_root_mtime_back(dir);
    }
    remove_tree(&mtime).map_err(|e| restore_err(format!("removing {}: {e}", mtime.display())))?;
    remove_tree(&new).map_err(|e| restore_err(format!("removing {}: {e}", new.display())))
}

/// Gives the workspace directory back the mtime recorded before the
/// restore began (best effort: only a timestamp).
fn put_root_mtime_back(dir: &Path) {
    let Some(nanos) = std::fs::read_to_string(dir.join(RESTORE_ROOT_MTIME))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return;
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
    let _ = std::fs::File::open(dir.join("workspace")).and_then(|f| f.set_modified(t));
}

/// Undo a swap: with the marker, the workspace holds new entries (moved
/// back to `restore-new/`); then every old entry moves back in.
pub(super) fn roll_back_swap(dir: &Path) -> std::io::Result<()> {
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
pub(super) fn move_entries(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::rename(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Remove a file or a tree; gone already is fine.
pub(super) fn remove_tree(path: &Path) -> std::io::Result<()> {
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
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
