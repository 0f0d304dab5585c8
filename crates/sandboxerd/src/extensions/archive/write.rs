//! Writing an archive: the walk of a tree that hostile code may change
//! while it is read, into a deterministic tar, zstd-compressed and hashed.
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{
    fstat, openat, readlinkat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD,
};
use rustix::io::Errno;
use tar::{EntryType, Header, HeaderMode};

use super::io_adapters::*;
use super::*;

/// Archive the tree under `src` into a new file `dest`, hashing while
/// writing, and fsync it. Over `max_content` bytes of tar stream the write
/// stops with [`WriteError::TooLarge`]; when `cancelled` answers true (it is
/// asked between entries and between read chunks) with
/// [`WriteError::Cancelled`]. The caller removes `dest` on any error.
pub fn write_archive(
    src: &Path,
    dest: &Path,
    max_content: u64,
    cancelled: &dyn Fn() -> bool,
) -> Result<ArchiveInfo, WriteError> {
    let io_err = |what: &str, e: io::Error| WriteError::Io(format!("{what}: {e}"));
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| io_err(&format!("creating {}", dest.display()), e))?;
    let mut encoder = zstd::stream::write::Encoder::new(HashingWriter::new(file), ZSTD_LEVEL)
        .map_err(|e| io_err("starting zstd", e))?;
    encoder
        .include_checksum(true)
        .map_err(|e| io_err("configuring zstd", e))?;
    let counting = CountingWriter {
        inner: encoder,
        written: 0,
        limit: max_content,
    };
    let mut builder = tar::Builder::new(counting);
    builder.mode(HeaderMode::Complete);
    builder.follow_symlinks(false);
    let skipped = match append_tree(&mut builder, src, cancelled) {
        Ok(n) => n,
        Err(e) if is_too_large(&e) => return Err(WriteError::TooLarge { limit: max_content }),
        Err(e) if says(&e, CANCELLED) => return Err(WriteError::Cancelled),
        Err(e) => return Err(io_err(&format!("archiving {}", src.display()), e)),
    };
    let counting = match builder.into_inner() {
        Ok(c) => c,
        Err(e) if is_too_large(&e) => return Err(WriteError::TooLarge { limit: max_content }),
        Err(e) => return Err(io_err("finishing the archive", e)),
    };
    let content_bytes = counting.written;
    let hashing = counting
        .inner
        .finish()
        .map_err(|e| io_err("finishing zstd", e))?;
    let (file, sha256, size_bytes) = hashing.finish();
    file.sync_all()
        .map_err(|e| io_err(&format!("syncing {}", dest.display()), e))?;
    Ok(ArchiveInfo {
        sha256,
        size_bytes,
        content_bytes,
        skipped,
    })
}

/// `O_*` flags for opening an entry met in the walk: never through a
/// symlink, never blocking (a FIFO swapped in answers at once), never
/// becoming the controlling terminal, never leaking into a child.
pub(super) fn walk_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// What an entry met in the walk turned out to be, checked on its own fd.
pub(super) enum Child {
    Dir(OwnedFd, Stat),
    File(OwnedFd, Stat),
    Symlink(Stat, OsString),
    /// A socket, FIFO or device node: left out and counted.
    Other,
    /// It changed kind or identity under the walk every time it was looked
    /// at, or vanished: left out and counted.
    Raced,
}

/// The deepest a walk goes: it holds one fd per directory level, and a
/// hostile tree nested thousands deep must not use up the daemon's fds.
pub(super) const MAX_DEPTH: usize = 256;

/// How many times one entry is looked at again when it changes between
/// `fstatat` and `openat` (an editor replacing a file by rename does that).
pub(super) const RACE_RETRIES: usize = 3;

/// Look at the entry `name` of the directory `dir` without ever following
/// a symlink: `fstatat(AT_SYMLINK_NOFOLLOW)` says what it is, then a
/// directory or regular file is opened relative to `dir` with `O_NOFOLLOW`
/// and its `fstat` must show the same kind, device and inode; a symlink is
/// read with `readlinkat`. Nothing but a regular file or a directory is
/// ever opened.
pub(super) fn open_child(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Child> {
    for _ in 0..RACE_RETRIES {
        let seen = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Child::Raced),
            Err(e) => return Err(e.into()),
        };
        let kind = FileType::from_raw_mode(seen.st_mode);
        let flags = match kind {
            FileType::Directory => walk_flags() | OFlags::DIRECTORY,
            FileType::RegularFile => walk_flags(),
            FileType::Symlink => match readlinkat(dir, name, Vec::new()) {
                Ok(target) => {
                    return Ok(Child::Symlink(
                        seen,
                        OsString::from_vec(target.into_bytes()),
                    ))
                }
                // No longer a symlink (EINVAL) or gone: look again.
                Err(Errno::INVAL | Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            _ => return Ok(Child::Other),
        };
        let fd = match openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            // Swapped for a symlink (ELOOP), a non-directory (ENOTDIR), or gone.
            Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT | Errno::NXIO) => continue,
            Err(e) => return Err(e.into()),
        };
        let st = fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != kind
            || st.st_dev != seen.st_dev
            || st.st_ino != seen.st_ino
        {
            continue;
        }
        return Ok(match kind {
            FileType::Directory => Child::Dir(fd, st),
            _ => Child::File(fd, st),
        });
    }
    Ok(Child::Raced)
}

/// A directory being walked: its fd, its path in the archive, and the
/// names still to visit (in reverse name order, so `pop` gives the next).
pub(super) struct Frame {
    fd: OwnedFd,
    rel: PathBuf,
    names: Vec<OsString>,
}

/// Append `root` as `./` and everything under it in name order. Answers how
/// many entries were left out: sockets, FIFOs and device nodes, and entries
/// that kept changing under the walk.
///
/// The tree may be changed by hostile code while it is walked: it is walked
/// by directory fds, never by path, so a directory swapped for a symlink
/// (`renameat2(RENAME_EXCHANGE)`) is never followed out of the tree, and a
/// FIFO swapped in is never opened for reading. `cancelled` is asked between
/// entries and between read chunks; when it answers true the walk stops with
/// an error carrying [`CANCELLED`].
pub(super) fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    cancelled: &dyn Fn() -> bool,
) -> io::Result<u64> {
    let fd = match openat(CWD, root, walk_flags() | OFlags::DIRECTORY, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let st = fstat(&fd)?;
    append_dir_header(builder, Path::new("./"), &st)?;
    let mut skipped = 0;
    let names = sorted_names(&fd)?;
    let mut stack = vec![Frame {
        fd,
        rel: PathBuf::new(),
        names,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            stack.pop();
            continue;
        };
        if cancelled() {
            return Err(io::Error::other(CANCELLED));
        }
        crate::fault::pause("snapshot.slow_walk", Duration::from_millis(100));
        let rel = top.rel.join(&name);
        match open_child(top.fd.as_fd(), &name)? {
            Child::Dir(fd, st) => {
                if stack.len() > MAX_DEPTH {
                    return Err(io::Error::other(format!(
                        "`{}` is nested more than {MAX_DEPTH} directories deep",
                        rel.display()
                    )));
                }
                append_dir_header(builder, &rel, &st)?;
                let names = sorted_names(&fd)?;
                stack.push(Frame { fd, rel, names });
            }
            Child::Symlink(st, target) => {
                let mut h = header(&st, EntryType::Symlink, 0);
                builder.append_link(&mut h, &rel, &target)?;
            }
            Child::File(fd, st) => {
                let len = u64::try_from(st.st_size).unwrap_or(0);
                let mut h = header(&st, EntryType::Regular, len);
                let reader = CancellableReader {
                    inner: File::from(fd),
                    cancelled,
                };
                builder.append_data(&mut h, &rel, ExactReader::new(reader, len))?;
            }
            Child::Other | Child::Raced => skipped += 1,
        }
    }
    Ok(skipped)
}

/// A tar header as `Header::set_metadata_in_mode(.., HeaderMode::Complete)`
/// fills it from the same `stat` (so an unchanged tree archives to the same
/// bytes as it always did), less the setuid and setgid bits.
pub(super) fn header(st: &Stat, kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    // `as`: a negative mtime wraps, exactly as `tar` stores it.
    h.set_mtime(st.st_mtime as u64);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mode(st.st_mode & !SETID_BITS);
    h.set_entry_type(kind);
    h.set_size(size);
    if let Some(gnu) = h.as_gnu_mut() {
        gnu.set_device_major(0);
        gnu.set_device_minor(0);
    }
    h
}

pub(super) fn append_dir_header<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    st: &Stat,
) -> io::Result<()> {
    let mut h = header(st, EntryType::Directory, 0);
    builder.append_data(&mut h, rel, io::empty())
}

/// The names in the directory `dir` (read through its fd), in reverse name
/// order.
pub(super) fn sorted_names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort_by(|a, b| b.cmp(a));
    Ok(names)
}
