//! File-system chores for sandbox directories the sandbox cannot see or
//! touch at that moment (before it starts, after it ended, or a directory
//! beside its workspace), so plain path walks are safe here: nothing swaps
//! entries under them. Symlinks are never followed.
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Create `path` (and missing parents) with mode 0700; an existing one
/// is narrowed so that no one but its owner may read or write it and
/// others may not even enter it: group and other bits beyond 0710 are
/// dropped. A 0710 directory (see [`traversable_by_group`]) stays as it
/// is: making it 0700 even for a moment would fail a bubblewrap looking
/// its way through it at that moment.
pub fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let mode = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    let narrowed = mode & 0o1710;
    if narrowed != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(narrowed))?;
    }
    Ok(())
}

/// Make `path` (a directory of the daemon's) traversable, and nothing
/// more, by the group `gid`: group `gid`, mode 0710. bubblewrap, started as
/// the sandbox's host user under a root daemon, must look up the path of
/// the workspace it binds; no one else may. Nothing is changed when it is
/// so already.
pub fn traversable_by_group(path: &Path, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path)?;
    if meta.gid() != gid {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    if meta.permissions().mode() & 0o7777 != 0o710 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o710))?;
    }
    Ok(())
}

/// Give every entry under `root` (and `root` itself) to `uid:gid`, without
/// following symlinks, and strip setuid and setgid bits from everything, so
/// nothing in a workspace can raise privileges on the host.
/// `uid`/`gid` `None`: ownership is left alone, the bits are still stripped.
pub fn own_tree(root: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let meta = fs::symlink_metadata(root)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    }
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o6000 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(mode & 0o1777))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            own_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// Clear the immutable and append-only flags of everything under `root`
/// (best effort: needs `CAP_LINUX_IMMUTABLE`, so a root daemon), so the tree
/// can be removed.
pub fn clear_inode_flags(root: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags, Mode, OFlags};
    let Ok(meta) = fs::symlink_metadata(root) else {
        return;
    };
    if !(meta.is_dir() || meta.is_file()) {
        return;
    }
    let flags = if meta.is_dir() {
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
    } else {
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
    };
    if let Ok(fd) = rustix::fs::open(root, flags, Mode::empty()) {
        if let Ok(current) = ioctl_getflags(&fd) {
            let pinned = IFlags::IMMUTABLE | IFlags::APPEND;
            if current.intersects(pinned) {
                let _ = ioctl_setflags(&fd, current - pinned);
            }
        }
    }
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(root) {
            for entry in entries.flatten() {
                clear_inode_flags(&entry.path());
            }
        }
    }
}

/// Bytes allocated to the tree at `root` (`st_blocks`, so sparse files
/// count what they hold), without following symlinks or leaving its
/// filesystem; stops after `max_entries` entries (what was counted so far).
/// An entry that vanishes under the walk is skipped.
pub fn disk_usage(root: &Path, max_entries: usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = top.blocks() * 512;
    let mut seen = 1usize;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if seen >= max_entries {
                return total;
            }
            seen += 1;
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() && meta.dev() == dev {
                stack.push(entry.path());
            }
        }
    }
    total
}
