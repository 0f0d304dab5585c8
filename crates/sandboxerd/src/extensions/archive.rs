//! The snapshot archive format every backend writes and reads: a tar of the
//! workspace (entries in name order, so an unchanged tree gives the same
//! bytes and so the same content address), zstd-compressed with a content
//! checksum. The SHA-256 of the compressed bytes is the archive's name.
//!
//! Kept: regular files (content, mode, owner, mtime to the second),
//! directories (mode, owner, mtime, the root's too), symlinks (target as
//! written, never followed). Left out: sockets, FIFOs and device nodes; hard
//! links become separate copies. Setuid and setgid bits are never kept: they
//! are cleared in every header written and again on every entry extracted.
//!
//! The tree archived belongs to hostile code that may change it while it is
//! read: see [`append_tree`] for how the walk stays inside it.
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rustix::fs::{
    chownat, fstat, openat, readlinkat, statat, AtFlags, Dir, FileType, Gid, Mode, OFlags, Stat,
    Uid, CWD,
};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header, HeaderMode};

/// zstd level: 3 is zstd's default, a good speed/ratio balance for source trees.
const ZSTD_LEVEL: i32 = 3;

/// Setuid and setgid: never written into an archive, never extracted.
const SETID_BITS: u32 = 0o6000;

/// What writing an archive produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// SHA-256 (hex) of the compressed archive.
    pub sha256: String,
    /// Bytes of the compressed archive.
    pub size_bytes: u64,
    /// Bytes of the tar stream before compression.
    pub content_bytes: u64,
    /// Sockets, FIFOs and device nodes that were left out, and entries that
    /// kept changing kind (or vanished) while the tree was walked.
    pub skipped: u64,
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The tar stream grew past the limit; nothing usable was written.
    #[error("the workspace is larger than the limit of {limit} bytes (before compression)")]
    TooLarge { limit: u64 },
    /// `cancelled` answered true during the walk; nothing usable was written.
    #[error("the capture was cancelled")]
    Cancelled,
    #[error("{0}")]
    Io(String),
}

/// Why an archive could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The file is not the archive it claims to be (hash mismatch, or not a
    /// valid zstd tar at all).
    #[error("{0}")]
    Corrupt(String),
    /// The archive is sound but extracting it failed (disk full, permissions, ...).
    #[error("{0}")]
    Io(String),
}

/// Mode and mtime of the archived root directory, applied to whatever
/// directory the tree is restored into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootMeta {
    pub mode: u32,
    pub mtime: u64,
}

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

/// Extract the archive `src` into the directory `dest` (created if missing,
/// expected empty), checking that `src` hashes to `expected_sha256`. Answers
/// the root's metadata. On any error `dest` may hold part of the tree: the
/// caller removes it.
///
/// `owner`: when `Some((uid, gid))`, `dest` and every entry extracted (files,
/// directories, and symlinks themselves) belong to that uid and gid whatever
/// the archive says; when `None`, ownership is taken from the archive when
/// the daemon runs as root (as the tree was captured) and left to the
/// daemon's own ids otherwise. Setuid and setgid bits are never extracted.
/// Only regular files, directories and symlinks are: an archive holding a
/// hard link, a device node, a FIFO, any other kind of entry, or one path
/// twice is refused as [`ExtractError::Corrupt`] (no archive this module
/// writes holds one).
pub fn extract_archive(
    src: &Path,
    expected_sha256: &str,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Option<RootMeta>, ExtractError> {
    match extract_inner(src, dest, owner) {
        Ok((sha, root)) if sha.eq_ignore_ascii_case(expected_sha256) => Ok(root),
        Ok((sha, _)) => Err(ExtractError::Corrupt(format!(
            "archive {} hashes to {sha}, not {expected_sha256}",
            src.display()
        ))),
        Err(e) => {
            // Tell a damaged archive from a failing disk: hash the file alone.
            match sha256_file(src) {
                Ok(sha) if !sha.eq_ignore_ascii_case(expected_sha256) => {
                    Err(ExtractError::Corrupt(format!(
                        "archive {} hashes to {sha}, not {expected_sha256} ({e})",
                        src.display()
                    )))
                }
                Ok(_) if says(&e, REFUSED) => Err(ExtractError::Corrupt(format!(
                    "archive {}: {}",
                    src.display(),
                    e.to_string().replace(REFUSED, "refused")
                ))),
                Ok(_) => Err(ExtractError::Io(format!(
                    "extracting {}: {e}",
                    src.display()
                ))),
                Err(read) => Err(ExtractError::Io(format!(
                    "reading {}: {read}",
                    src.display()
                ))),
            }
        }
    }
}

/// The error an entry of a kind extraction refuses stops it with.
const REFUSED: &str = "sandboxer: entry refused";

/// What an entry kind is called in a refusal.
fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Link => "a hard link",
        EntryType::Char => "a character device",
        EntryType::Block => "a block device",
        EntryType::Fifo => "a FIFO",
        EntryType::Continuous => "a contiguous file",
        EntryType::GNUSparse => "a sparse file",
        _ => "an entry of an unsupported kind",
    }
}

/// Give `path` (never followed if it is a symlink) to `owner`.
fn chown_nofollow(path: &Path, (uid, gid): (u32, u32)) -> io::Result<()> {
    chownat(
        CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io::Error::other(format!("giving {} to {uid}:{gid}: {e}", path.display())))
}

fn extract_inner(
    src: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> io::Result<(String, Option<RootMeta>)> {
    fs::create_dir_all(dest)?;
    if let Some(owner) = owner {
        chown_nofollow(dest, owner)?;
    }
    let file = File::open(src)?;
    let decoder = zstd::stream::read::Decoder::new(HashingReader::new(file))?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(owner.is_none() && nix::unistd::geteuid().is_root());
    archive.set_mask(SETID_BITS);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut root = None;
    {
        // Directories last, deepest first, so their modes and mtimes are not
        // disturbed by what is written into them (as `tar::Archive::unpack`).
        let mut dirs = Vec::new();
        // Every path once: a second entry at the same path (a symlink, then
        // a directory through it) could make tar follow the first.
        let mut seen = std::collections::HashSet::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let rel: PathBuf = path
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect();
            let is_root = path
                .components()
                .all(|c| matches!(c, Component::CurDir | Component::RootDir));
            if is_root {
                let h = entry.header();
                root = Some(RootMeta {
                    mode: h.mode()? & !SETID_BITS,
                    mtime: h.mtime()?,
                });
                continue;
            }
            let kind = entry.header().entry_type();
            if !matches!(
                kind,
                EntryType::Regular | EntryType::Directory | EntryType::Symlink
            ) {
                return Err(io::Error::other(format!(
                    "{REFUSED}: entry `{}` is {}; snapshots hold only regular files, directories and symlinks",
                    path.display(),
                    kind_name(kind)
                )));
            }
            if !seen.insert(rel.clone()) {
                return Err(io::Error::other(format!(
                    "{REFUSED}: entry `{}` appears twice",
                    path.display()
                )));
            }
            if kind == EntryType::Directory {
                dirs.push((entry, rel));
                continue;
            }
            if !entry.unpack_in(dest)? {
                return Err(io::Error::other(format!(
                    "entry `{}` points outside the workspace",
                    path.display()
                )));
            }
            if let Some(owner) = owner {
                chown_nofollow(&dest.join(&rel), owner)?;
            }
        }
        dirs.sort_by(|a, b| b.0.path_bytes().cmp(&a.0.path_bytes()));
        for (mut dir, rel) in dirs {
            let mtime = dir.header().mtime().ok();
            if !dir.unpack_in(dest)? {
                return Err(io::Error::other(format!(
                    "entry `{}` points outside the workspace",
                    rel.display()
                )));
            }
            let at = dest.join(&rel);
            if let Some(owner) = owner {
                chown_nofollow(&at, owner)?;
            }
            // tar restores a directory's mode but not its mtime; children
            // are all written by now (deepest first), so set it last.
            if let Some(mtime) = mtime {
                let fd = openat(
                    CWD,
                    &at,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                File::from(fd).set_modified(UNIX_EPOCH + Duration::from_secs(mtime))?;
            }
        }
    }
    // Read to the very end so every byte of the file goes through the hash
    // (the tar reader stops at the end-of-archive marker).
    let mut decoder = archive.into_inner();
    io::copy(&mut decoder, &mut io::sink())?;
    let mut rest = decoder.finish();
    io::copy(&mut rest, &mut io::sink())?;
    let (sha, _) = rest.into_inner().finish();
    Ok((sha, root))
}

/// Apply the archived root's mode (less setuid and setgid) and mtime to `dir`.
pub fn apply_root_meta(dir: &Path, meta: Option<RootMeta>) -> io::Result<()> {
    let Some(meta) = meta else {
        return Ok(());
    };
    fs::set_permissions(
        dir,
        fs::Permissions::from_mode(meta.mode & 0o7777 & !SETID_BITS),
    )?;
    File::open(dir)?.set_modified(UNIX_EPOCH + Duration::from_secs(meta.mtime))
}

/// SHA-256 (hex) of a whole file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut reader = HashingReader::new(BufReader::new(File::open(path)?));
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish().0)
}

/// `O_*` flags for opening an entry met in the walk: never through a
/// symlink, never blocking (a FIFO swapped in answers at once), never
/// becoming the controlling terminal, never leaking into a child.
fn walk_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// What an entry met in the walk turned out to be, checked on its own fd.
enum Child {
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
const MAX_DEPTH: usize = 256;

/// How many times one entry is looked at again when it changes between
/// `fstatat` and `openat` (an editor replacing a file by rename does that).
const RACE_RETRIES: usize = 3;

/// Look at the entry `name` of the directory `dir` without ever following
/// a symlink: `fstatat(AT_SYMLINK_NOFOLLOW)` says what it is, then a
/// directory or regular file is opened relative to `dir` with `O_NOFOLLOW`
/// and its `fstat` must show the same kind, device and inode; a symlink is
/// read with `readlinkat`. Nothing but a regular file or a directory is
/// ever opened.
fn open_child(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Child> {
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
struct Frame {
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
fn append_tree<W: Write>(
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
fn header(st: &Stat, kind: EntryType, size: u64) -> Header {
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

fn append_dir_header<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    st: &Stat,
) -> io::Result<()> {
    let mut h = header(st, EntryType::Directory, 0);
    builder.append_data(&mut h, rel, io::empty())
}

/// The names in the directory `dir` (read through its fd), in reverse name
/// order.
fn sorted_names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
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

/// Asks `cancelled` before every read.
struct CancellableReader<'a, R> {
    inner: R,
    cancelled: &'a dyn Fn() -> bool,
}

impl<R: Read> Read for CancellableReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.cancelled)() {
            return Err(io::Error::other(CANCELLED));
        }
        self.inner.read(buf)
    }
}

const TOO_LARGE: &str = "sandboxer: archive over its size limit";
/// The error a cancelled walk stops with.
const CANCELLED: &str = "sandboxer: archive cancelled";

/// Whether `e` (or an error it wraps: `tar` adds the entry's path) says `marker`.
fn says(e: &io::Error, marker: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains(marker) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn is_too_large(e: &io::Error) -> bool {
    says(e, TOO_LARGE)
}

/// Counts the tar stream and refuses to go past `limit`.
struct CountingWriter<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.limit {
            return Err(io::Error::other(TOO_LARGE));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts what goes through to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Exactly `len` bytes: the file's, padded with zeros if it shrank while
/// being read, cut if it grew, so the tar entry always matches its header.
struct ExactReader<R> {
    inner: R,
    left: u64,
    inner_done: bool,
}

impl<R> ExactReader<R> {
    fn new(inner: R, len: u64) -> Self {
        Self {
            inner,
            left: len,
            inner_done: false,
        }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = if self.inner_done {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.inner_done = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    fn never() -> bool {
        false
    }

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("sub/deeper")).expect("mkdir");
        fs::write(dir.join("a.txt"), "alpha\n").expect("write");
        fs::write(dir.join("sub/secret"), "s3cret").expect("write");
        fs::set_permissions(dir.join("sub/secret"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        fs::write(dir.join("sub/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
        fs::set_permissions(dir.join("sub/run.sh"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        symlink("sub/secret", dir.join("link")).expect("symlink");
        symlink("/nonexistent/target", dir.join("dangling")).expect("symlink");
    }

    #[test]
    fn round_trip_keeps_modes_links_and_is_deterministic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        let a = write_archive(&src, &tmp.path().join("a.tar.zst"), 1 << 30, &never).expect("write");
        let b = write_archive(&src, &tmp.path().join("b.tar.zst"), 1 << 30, &never).expect("write");
        assert_eq!(a.sha256, b.sha256, "same tree, same bytes");
        assert_eq!(
            a.sha256,
            sha256_file(&tmp.path().join("a.tar.zst")).expect("hash")
        );
        let out = tmp.path().join("out");
        let root =
            extract_archive(&tmp.path().join("a.tar.zst"), &a.sha256, &out, None).expect("x");
        apply_root_meta(&out, root).expect("root meta");
        let mode = |p: &str| {
            fs::symlink_metadata(out.join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("sub/secret"), 0o600);
        assert_eq!(mode("sub/run.sh"), 0o755);
        assert_eq!(
            fs::read_link(out.join("link")).expect("link"),
            Path::new("sub/secret")
        );
        assert_eq!(
            fs::read_link(out.join("dangling")).expect("link"),
            Path::new("/nonexistent/target")
        );
        assert_eq!(
            fs::read_to_string(out.join("a.txt")).expect("read"),
            "alpha\n"
        );
        assert!(out.join("sub/deeper").is_dir());
    }

    #[test]
    fn over_the_limit_is_too_large() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("big"), vec![7u8; 200_000]).expect("write");
        let err =
            write_archive(&src, &tmp.path().join("x"), 100_000, &never).expect_err("too large");
        assert!(
            matches!(err, WriteError::TooLarge { limit: 100_000 }),
            "{err}"
        );
    }

    #[test]
    fn a_flipped_byte_is_corrupt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        let path = tmp.path().join("a");
        let info = write_archive(&src, &path, 1 << 30, &never).expect("write");
        let mut bytes = fs::read(&path).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&path, &bytes).expect("write");
        let err =
            extract_archive(&path, &info.sha256, &tmp.path().join("out"), None).expect_err("bad");
        assert!(matches!(err, ExtractError::Corrupt(_)), "{err}");
        // Appended garbage is caught too.
        let path2 = tmp.path().join("b");
        let info = write_archive(&src, &path2, 1 << 30, &never).expect("write");
        let mut f = File::options().append(true).open(&path2).expect("open");
        f.write_all(b"junk").expect("append");
        let err =
            extract_archive(&path2, &info.sha256, &tmp.path().join("out2"), None).expect_err("bad");
        assert!(matches!(err, ExtractError::Corrupt(_)), "{err}");
    }

    #[test]
    fn exact_reader_pads_and_cuts() {
        let mut out = Vec::new();
        ExactReader::new(&b"abc"[..], 5)
            .read_to_end(&mut out)
            .expect("read");
        assert_eq!(out, b"abc\0\0");
        out.clear();
        ExactReader::new(&b"abcdef"[..], 2)
            .read_to_end(&mut out)
            .expect("read");
        assert_eq!(out, b"ab");
    }

    /// The walk as it was before it went by directory fds (by path, with
    /// `tar`'s own header filling), kept to prove the bytes did not change.
    fn legacy_append_tree<W: Write>(builder: &mut tar::Builder<W>, root: &Path) -> io::Result<u64> {
        fn dir_header<W: Write>(
            builder: &mut tar::Builder<W>,
            rel: &Path,
            meta: &fs::Metadata,
        ) -> io::Result<()> {
            let mut h = Header::new_gnu();
            h.set_metadata_in_mode(meta, HeaderMode::Complete);
            h.set_entry_type(EntryType::Directory);
            h.set_size(0);
            builder.append_data(&mut h, rel, io::empty())
        }
        fn children(dir: &Path, rel: &Path) -> io::Result<Vec<(PathBuf, PathBuf)>> {
            let mut names = Vec::new();
            for entry in fs::read_dir(dir)? {
                names.push(entry?.file_name());
            }
            names.sort();
            Ok(names
                .into_iter()
                .map(|name| (dir.join(&name), rel.join(&name)))
                .collect())
        }
        let meta = fs::symlink_metadata(root)?;
        dir_header(builder, Path::new("./"), &meta)?;
        let mut skipped = 0;
        let mut stack = children(root, Path::new(""))?;
        stack.reverse();
        while let Some((abs, rel)) = stack.pop() {
            let meta = fs::symlink_metadata(&abs)?;
            let kind = meta.file_type();
            if kind.is_dir() {
                dir_header(builder, &rel, &meta)?;
                let mut below = children(&abs, &rel)?;
                below.reverse();
                stack.extend(below);
            } else if kind.is_symlink() {
                let target = fs::read_link(&abs)?;
                let mut h = Header::new_gnu();
                h.set_metadata_in_mode(&meta, HeaderMode::Complete);
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                builder.append_link(&mut h, &rel, &target)?;
            } else if kind.is_file() {
                let mut h = Header::new_gnu();
                h.set_metadata_in_mode(&meta, HeaderMode::Complete);
                h.set_entry_type(EntryType::Regular);
                let len = meta.len();
                h.set_size(len);
                let file = File::open(&abs)?;
                builder.append_data(&mut h, &rel, ExactReader::new(file, len))?;
            } else {
                skipped += 1;
            }
        }
        Ok(skipped)
    }

    fn tar_bytes(
        walk: impl FnOnce(&mut tar::Builder<Vec<u8>>) -> io::Result<u64>,
    ) -> (Vec<u8>, u64) {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(HeaderMode::Complete);
        builder.follow_symlinks(false);
        let skipped = walk(&mut builder).expect("walk");
        (builder.into_inner().expect("finish"), skipped)
    }

    #[test]
    fn an_unchanged_tree_archives_to_the_same_bytes_as_the_path_walk_did() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        // Long names (GNU long-name entries), an empty dir, a FIFO (skipped
        // by both), an old mtime, a big file.
        let long = "n".repeat(150);
        fs::create_dir_all(src.join(&long).join("empty")).expect("mkdir");
        fs::write(src.join(&long).join(&long), vec![9u8; 70_000]).expect("write");
        rustix::fs::mkfifoat(CWD, src.join("pipe"), Mode::from_raw_mode(0o600)).expect("fifo");
        File::open(src.join("sub"))
            .expect("open")
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000_000))
            .expect("mtime");
        let (new, new_skipped) = tar_bytes(|b| append_tree(b, &src, &never));
        let (old, old_skipped) = tar_bytes(|b| legacy_append_tree(b, &src));
        assert_eq!((new_skipped, old_skipped), (1, 1));
        assert!(
            new == old,
            "the tar stream changed ({} vs {} bytes)",
            new.len(),
            old.len()
        );
    }

    fn header_modes(path: &Path) -> Vec<(String, u32)> {
        let decoder =
            zstd::stream::read::Decoder::new(File::open(path).expect("open")).expect("zstd");
        let mut archive = tar::Archive::new(decoder);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let path = String::from_utf8_lossy(&e.path_bytes())
                    .trim_end_matches('/')
                    .to_owned();
                (path, e.header().mode().expect("mode"))
            })
            .collect()
    }

    #[test]
    fn setuid_and_setgid_are_never_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("shared")).expect("mkdir");
        fs::write(src.join("suid"), "#!/bin/sh\n").expect("write");
        fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        fs::write(src.join("sgid"), "x").expect("write");
        fs::set_permissions(src.join("sgid"), fs::Permissions::from_mode(0o2711)).expect("chmod");
        fs::set_permissions(src.join("shared"), fs::Permissions::from_mode(0o3775)).expect("chmod");
        assert_eq!(
            fs::metadata(src.join("suid")).expect("meta").mode() & 0o7777,
            0o4755
        );
        let dest = tmp.path().join("a.tar.zst");
        write_archive(&src, &dest, 1 << 30, &never).expect("write");
        let modes: std::collections::BTreeMap<_, _> = header_modes(&dest).into_iter().collect();
        assert_eq!(modes["suid"] & 0o7777, 0o755);
        assert_eq!(modes["sgid"] & 0o7777, 0o711);
        assert_eq!(
            modes["shared"] & 0o7777,
            0o1775,
            "sticky stays, setgid goes"
        );
    }

    /// A hand-made entry: path, type, mode, content or link target.
    type Spec<'a> = (&'a str, EntryType, u32, &'a str);

    /// A `.tar.zst` of hand-made entries, and its SHA-256.
    fn hand_built(path: &Path, entries: &[Spec<'_>]) -> String {
        let mut builder = tar::Builder::new(Vec::new());
        let mut root = Header::new_gnu();
        root.set_entry_type(EntryType::Directory);
        root.set_mode(0o755);
        root.set_size(0);
        builder
            .append_data(&mut root, "./", io::empty())
            .expect("root");
        for (name, kind, mode, data) in entries {
            let mut h = Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_uid(4242);
            h.set_gid(4343);
            h.set_mtime(1_000_000_000);
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    h.set_size(0);
                    builder.append_link(&mut h, name, data).expect("link");
                }
                _ => {
                    h.set_size(data.len() as u64);
                    builder
                        .append_data(&mut h, name, data.as_bytes())
                        .expect("data");
                }
            }
        }
        let tar = builder.into_inner().expect("tar");
        let compressed = zstd::stream::encode_all(&tar[..], 3).expect("zstd");
        fs::write(path, compressed).expect("write");
        sha256_file(path).expect("hash")
    }

    #[test]
    fn setuid_and_setgid_are_never_extracted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("a.tar.zst");
        let sha = hand_built(
            &path,
            &[
                ("dir", EntryType::Directory, 0o2775, ""),
                ("dir/suid", EntryType::Regular, 0o4755, "x"),
                ("sgid", EntryType::Regular, 0o6711, "y"),
            ],
        );
        let out = tmp.path().join("out");
        let root = extract_archive(&path, &sha, &out, None).expect("extract");
        let mode = |p: &str| fs::symlink_metadata(out.join(p)).expect("meta").mode() & 0o7777;
        assert_eq!(mode("dir/suid"), 0o755);
        assert_eq!(mode("sgid"), 0o711);
        assert_eq!(mode("dir"), 0o775);
        // The root's mode too.
        apply_root_meta(
            &out,
            Some(RootMeta {
                mode: 0o6750,
                mtime: 1,
            }),
        )
        .expect("root meta");
        assert_eq!(mode(""), 0o750);
        assert_eq!(root.map(|r| r.mode & 0o7777), Some(0o755));
    }

    #[test]
    fn an_owner_is_forced_on_every_entry_extracted() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: giving files to another uid needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("a.tar.zst");
        let sha = hand_built(
            &path,
            &[
                ("dir", EntryType::Directory, 0o755, ""),
                ("dir/file", EntryType::Regular, 0o4644, "x"),
                ("dir/link", EntryType::Symlink, 0o777, "/etc/passwd"),
            ],
        );
        let out = tmp.path().join("out");
        extract_archive(&path, &sha, &out, Some((1234, 5678))).expect("extract");
        for p in ["", "dir", "dir/file", "dir/link"] {
            let meta = fs::symlink_metadata(out.join(p)).expect("meta");
            assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "owner of `{p}`");
        }
        assert_eq!(
            fs::symlink_metadata(out.join("dir/file"))
                .expect("meta")
                .mode()
                & 0o7777,
            0o644
        );
        // The symlink itself was given away, not what it points at.
        assert_eq!(fs::metadata("/etc/passwd").expect("meta").uid(), 0);
        // Without an owner, the archive's own (the daemon runs as root here).
        let out2 = tmp.path().join("out2");
        extract_archive(&path, &sha, &out2, None).expect("extract");
        let meta = fs::symlink_metadata(out2.join("dir/file")).expect("meta");
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    }

    #[test]
    fn hard_links_devices_fifos_and_duplicates_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cases: &[(&[Spec<'_>], &str)] = &[
            (
                &[
                    ("file", EntryType::Regular, 0o644, "x"),
                    ("hard", EntryType::Link, 0o644, "file"),
                ],
                "hard link",
            ),
            (&[("tty", EntryType::Char, 0o666, "")], "character device"),
            (&[("disk", EntryType::Block, 0o666, "")], "block device"),
            (&[("pipe", EntryType::Fifo, 0o644, "")], "FIFO"),
            (
                &[
                    ("d", EntryType::Symlink, 0o777, "/etc"),
                    ("d", EntryType::Directory, 0o755, ""),
                ],
                "appears twice",
            ),
        ];
        for (i, (entries, what)) in cases.iter().enumerate() {
            let path = tmp.path().join(format!("a{i}.tar.zst"));
            let sha = hand_built(&path, entries);
            let out = tmp.path().join(format!("out{i}"));
            let err = extract_archive(&path, &sha, &out, None).expect_err("refused");
            assert!(
                matches!(&err, ExtractError::Corrupt(m) if m.contains(what) && m.contains("refused")),
                "{what}: {err}"
            );
        }
        // Nothing was made outside, and no device node inside.
        assert!(!tmp.path().join("out1/tty").exists());
    }

    #[test]
    fn a_cancelled_walk_stops_with_cancelled() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        let asked = std::cell::Cell::new(0);
        let cancel_at_third = || {
            asked.set(asked.get() + 1);
            asked.get() >= 3
        };
        let err = write_archive(&src, &tmp.path().join("a"), 1 << 30, &cancel_at_third)
            .expect_err("cancelled");
        assert!(matches!(err, WriteError::Cancelled), "{err}");
        // Between read chunks too: a file bigger than one chunk.
        fs::write(src.join("big"), vec![1u8; 4 << 20]).expect("write");
        let reads = std::cell::Cell::new(0);
        let started_big = || {
            reads.set(reads.get() + 1);
            reads.get() > 12
        };
        let err = write_archive(&src, &tmp.path().join("b"), 1 << 30, &started_big)
            .expect_err("cancelled");
        assert!(matches!(err, WriteError::Cancelled), "{err}");
    }

    #[test]
    fn a_tree_nested_too_deep_fails_clearly() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        let mut deep = src.clone();
        for _ in 0..MAX_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).expect("mkdir");
        write_archive(&src, &tmp.path().join("a"), 1 << 30, &never).expect("at the limit");
        fs::create_dir(deep.join("d")).expect("mkdir");
        let err = write_archive(&src, &tmp.path().join("b"), 1 << 30, &never).expect_err("deep");
        assert!(err.to_string().contains("directories deep"), "{err}");
    }

    #[test]
    fn a_symlink_root_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        symlink(&src, tmp.path().join("link")).expect("symlink");
        let err = write_archive(
            &tmp.path().join("link"),
            &tmp.path().join("a"),
            1 << 30,
            &never,
        )
        .expect_err("a symlink");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
