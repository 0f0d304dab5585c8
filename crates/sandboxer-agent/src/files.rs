//! Files, from inside: every path resolves in the sandbox's own mount
//! namespace with the sandbox's own privileges, so a symlink, `..` or an
//! absolute path can only reach what the sandbox itself can see. On top of
//! that: no special file is ever opened for reading (a fifo would hang, a
//! device would never end), writes land whole or not at all (a temporary
//! file renamed into place), and archives refuse entries that would land
//! outside their directory.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sandboxer_api::{FileEntry, FileList, FileType, Written};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::io::SyncIoBridge;

use crate::proto::{AgentError, FileMeta, FrameReader};
use crate::{reply_err, reply_ok};

/// The default working directory, and what relative paths are relative to.
pub(crate) const WORKSPACE: &str = "/workspace";

/// The longest path accepted.
const MAX_PATH: usize = 4096;

/// A request's path as a path in the sandbox: absolute as given, relative
/// to `/workspace` otherwise.
pub(crate) fn sandbox_path(p: &str) -> Result<PathBuf, AgentError> {
    if p.is_empty() {
        return Err(AgentError::new("invalid_path", "path is empty"));
    }
    if p.len() > MAX_PATH || p.contains('\0') {
        return Err(AgentError::new(
            "invalid_path",
            format!("path must be at most {MAX_PATH} bytes without NUL"),
        ));
    }
    let path = Path::new(p);
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(WORKSPACE).join(path)
    })
}

/// A file-system failure as a refusal with a code the daemon maps.
pub(crate) fn fs_error(path: &Path, e: &std::io::Error) -> AgentError {
    let p = path.display();
    match e.raw_os_error() {
        Some(libc::ENOENT) => {
            AgentError::new("file_not_found", format!("{p}: no such file or directory"))
        }
        Some(libc::ENOTDIR) => AgentError::new(
            "file_not_found",
            format!("{p}: a parent is not a directory"),
        ),
        Some(libc::EISDIR) => AgentError::new("is_a_directory", format!("{p} is a directory")),
        Some(libc::EACCES | libc::EPERM) => AgentError::new(
            "permission_denied",
            format!("{p}: permission denied in the sandbox"),
        ),
        Some(libc::EROFS) => AgentError::new(
            "permission_denied",
            format!("{p}: read-only file system in the sandbox"),
        ),
        Some(libc::ENOSPC | libc::EDQUOT) => {
            AgentError::new("disk_full", format!("{p}: no space left in the sandbox"))
        }
        Some(libc::ELOOP) => AgentError::new(
            "invalid_path",
            format!("{p}: too many levels of symbolic links"),
        ),
        Some(libc::ENAMETOOLONG) => AgentError::new("invalid_path", format!("{p}: name too long")),
        _ => AgentError::new("file_error", format!("{p}: {e}")),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::new("agent_error", format!("worker failed: {e}")))
}

/// Opens `path` for reading without blocking on a fifo; refuses what is
/// not a regular file.
fn open_regular(path: &Path) -> Result<(File, Metadata), AgentError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fs_error(path, &e))?;
    let meta = f.metadata().map_err(|e| fs_error(path, &e))?;
    if meta.is_dir() {
        return Err(AgentError::new(
            "is_a_directory",
            format!("{} is a directory", path.display()),
        ));
    }
    if !meta.is_file() {
        return Err(AgentError::new(
            "not_a_file",
            format!(
                "{} is not a regular file (a device, fifo or socket)",
                path.display()
            ),
        ));
    }
    Ok((f, meta))
}

pub(crate) async fn read(path: &str, mut w: OwnedWriteHalf) -> std::io::Result<()> {
    let p = match sandbox_path(path) {
        Ok(p) => p,
        Err(e) => return reply_err(&mut w, e).await,
    };
    let opened = match blocking(move || open_regular(&p)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) | Err(e) => return reply_err(&mut w, e).await,
    };
    let (file, meta) = opened;
    let size = meta.len();
    reply_ok(
        &mut w,
        &FileMeta {
            size,
            mode: meta.mode() & 0o7777,
        },
    )
    .await?;
    // At most the size announced: a file grown meanwhile does not make an endless answer.
    let mut f = tokio::fs::File::from_std(file).take(size);
    tokio::io::copy(&mut f, &mut w).await?;
    w.shutdown().await
}

/// The mode a written file gets: permission bits only (no setuid, setgid or sticky).
fn file_mode(mode: Option<u32>) -> u32 {
    mode.unwrap_or(0o644) & 0o777
}

pub(crate) async fn write(
    path: &str,
    mode: Option<u32>,
    max_bytes: u64,
    r: BufReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let p = match sandbox_path(path) {
        Ok(p) => p,
        Err(e) => return reply_err(&mut w, e).await,
    };
    let prepared = {
        let p = p.clone();
        blocking(move || prepare_write(&p)).await
    };
    let (tmp_path, tmp) = match prepared {
        Ok(Ok(x)) => x,
        Ok(Err(e)) | Err(e) => return reply_err(&mut w, e).await,
    };
    let body = FrameReader::new(r).take(max_bytes.saturating_add(1));
    let (f, copied) = copy_to_file(body, tmp).await;
    let flushed: std::io::Result<()> = Ok(());
    let outcome = match (copied, flushed) {
        (Ok(n), Ok(())) if n > max_bytes => Err(AgentError::new(
            "payload_too_large",
            format!("the file is larger than the limit of {max_bytes} bytes"),
        )),
        (Ok(n), Ok(())) => {
            let (tmp_path, p) = (tmp_path.clone(), p.clone());
            match f {
                Some(f) => {
                    match blocking(move || finish_write(f, &tmp_path, &p, file_mode(mode))).await {
                        Ok(Ok(())) => Ok(n),
                        Ok(Err(e)) | Err(e) => Err(e),
                    }
                }
                None => Err(AgentError::new("agent_error", "the file's handle was lost")),
            }
        }
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(AgentError::new(
                "body_incomplete",
                "the body was broken off before its end; the file was left as it was",
            ))
        }
        (Err(e), _) | (_, Err(e)) => Err(fs_error(&p, &e)),
    };
    match outcome {
        Ok(n) => {
            reply_ok(
                &mut w,
                &Written {
                    written: n,
                    entries: 1,
                },
            )
            .await
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_path);
            reply_err(&mut w, e).await
        }
    }
}

/// Bytes gathered before each write: a 1 MiB file is one write.
const WRITE_BATCH: usize = 1 << 20;

/// Copies `body` into `file`, gathering up to [`WRITE_BATCH`] bytes per
/// write on a blocking thread (a write per network chunk would cost a
/// thread hand-off each). Answers the file back and the bytes copied.
async fn copy_to_file<R: tokio::io::AsyncRead + Unpin>(
    mut body: R,
    mut file: File,
) -> (Option<File>, std::io::Result<u64>) {
    let mut buf = vec![0u8; WRITE_BATCH];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        let mut eof = false;
        while filled < buf.len() {
            match body.read(&mut buf[filled..]).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => filled += k,
                Err(e) => return (Some(file), Err(e)),
            }
        }
        if filled > 0 {
            let done = tokio::task::spawn_blocking(move || {
                let r = file.write_all(&buf[..filled]);
                (file, buf, r)
            })
            .await;
            match done {
                Ok((f, b, r)) => {
                    file = f;
                    buf = b;
                    if let Err(e) = r {
                        return (Some(file), Err(e));
                    }
                }
                // The handle went with the failed worker (the file is removed).
                Err(e) => {
                    return (
                        None,
                        Err(std::io::Error::other(format!("worker failed: {e}"))),
                    )
                }
            }
            total += filled as u64;
        }
        if eof {
            return (Some(file), Ok(total));
        }
    }
}

/// Makes the parents of `p` and a temporary file beside it.
fn prepare_write(p: &Path) -> Result<(PathBuf, File), AgentError> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(AgentError::new(
            "invalid_path",
            format!("{} names no file", p.display()),
        ));
    };
    if let Ok(m) = std::fs::metadata(p) {
        if m.is_dir() {
            return Err(AgentError::new(
                "is_a_directory",
                format!("{} is a directory", p.display()),
            ));
        }
    }
    std::fs::create_dir_all(parent).map_err(|e| fs_error(parent, &e))?;
    let tmp = parent.join(format!(
        ".{}.{}.part",
        name.to_string_lossy(),
        ulid::Ulid::new()
    ));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| fs_error(parent, &e))?;
    Ok((tmp, f))
}

fn finish_write(f: File, tmp: &Path, p: &Path, mode: u32) -> Result<(), AgentError> {
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| fs_error(p, &e))?;
    drop(f);
    std::fs::rename(tmp, p).map_err(|e| fs_error(p, &e))
}

pub(crate) async fn delete(
    path: &str,
    recursive: bool,
    w: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let p = match sandbox_path(path) {
        Ok(p) => p,
        Err(e) => return reply_err(w, e).await,
    };
    let done = blocking(move || -> Result<bool, AgentError> {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(fs_error(&p, &e)),
        };
        if meta.is_dir() {
            if !recursive {
                return Err(AgentError::new(
                    "is_a_directory",
                    format!(
                        "{} is a directory; pass recursive=true to delete it",
                        p.display()
                    ),
                ));
            }
            // std's remove_dir_all does not follow symlinks, even swapped in under it.
            std::fs::remove_dir_all(&p).map_err(|e| fs_error(&p, &e))?;
        } else {
            std::fs::remove_file(&p).map_err(|e| fs_error(&p, &e))?;
        }
        Ok(true)
    })
    .await;
    match done {
        Ok(Ok(deleted)) => reply_ok(w, &serde_json::json!({ "deleted": deleted })).await,
        Ok(Err(e)) | Err(e) => reply_err(w, e).await,
    }
}

fn entry(path: &Path, meta: &Metadata) -> FileEntry {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: path.to_string_lossy().into_owned(),
        kind,
        size: meta.len(),
        mode: format!("{:04o}", meta.mode() & 0o7777),
        modified_at: meta
            .modified()
            .ok()
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        target: if ft.is_symlink() {
            std::fs::read_link(path)
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        },
    }
}

pub(crate) async fn list(
    path: &str,
    depth: u32,
    max_entries: usize,
    w: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let p = match sandbox_path(path) {
        Ok(p) => p,
        Err(e) => return reply_err(w, e).await,
    };
    let listed = blocking(move || -> Result<FileList, AgentError> {
        let meta = std::fs::metadata(&p).map_err(|e| fs_error(&p, &e))?;
        if !meta.is_dir() {
            return Err(AgentError::new(
                "not_a_directory",
                format!("{} is not a directory", p.display()),
            ));
        }
        let mut items = Vec::new();
        let mut truncated = false;
        // Breadth first, never through a symlink.
        let mut level = vec![p.clone()];
        for _ in 0..depth.max(1) {
            let mut next = Vec::new();
            for dir in level {
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut names: Vec<_> = rd.flatten().collect();
                names.sort_by_key(|e| e.file_name());
                for e in names {
                    if items.len() >= max_entries {
                        truncated = true;
                        break;
                    }
                    let Ok(m) = e.path().symlink_metadata() else {
                        continue;
                    };
                    if m.is_dir() {
                        next.push(e.path());
                    }
                    items.push(entry(&e.path(), &m));
                }
            }
            level = next;
            if truncated {
                break;
            }
        }
        Ok(FileList { items, truncated })
    })
    .await;
    match listed {
        Ok(Ok(list)) => reply_ok(w, &list).await,
        Ok(Err(e)) | Err(e) => reply_err(w, e).await,
    }
}

/// Reads at most `max` bytes, then fails with `too_large`.
struct Capped<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over = true;
            return Err(std::io::Error::other("too_large"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Whether a name in an archive stays inside its directory.
fn safe_relative(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn unpack<R: Read>(reader: R, dst: &Path, max_bytes: u64) -> Result<Written, AgentError> {
    let mut capped = Capped {
        inner: reader,
        left: max_bytes,
        over: false,
    };
    let result = unpack_inner(&mut capped, dst);
    if capped.over {
        return Err(AgentError::new(
            "payload_too_large",
            format!("the archive is larger than the limit of {max_bytes} bytes"),
        ));
    }
    result
}

fn unpack_inner<R: Read>(reader: R, dst: &Path) -> Result<Written, AgentError> {
    let bad_tar = |e: std::io::Error| {
        AgentError::new(
            "invalid_archive",
            format!("not a readable tar archive: {e}"),
        )
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    ar.set_preserve_mtime(true);
    // No setuid, setgid or sticky bits from an archive.
    ar.set_mask(0o7000);
    let mut written = 0u64;
    let mut entries = 0u64;
    for e in ar.entries().map_err(bad_tar)? {
        let mut e = e.map_err(bad_tar)?;
        let name = e.path().map_err(bad_tar)?.into_owned();
        let shown = name.display().to_string();
        if !safe_relative(&name) {
            return Err(AgentError::new(
                "unsafe_path",
                format!("entry `{shown}` would land outside {} (absolute or `..`); nothing after it was unpacked", dst.display()),
            ));
        }
        let kind = e.header().entry_type();
        match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink => {}
            tar::EntryType::Link => {
                let target = e.link_name().map_err(bad_tar)?.map(|t| t.into_owned());
                if !target.as_deref().is_some_and(safe_relative) {
                    return Err(AgentError::new(
                        "unsafe_path",
                        format!("hard link `{shown}` points outside the archive; nothing after it was unpacked"),
                    ));
                }
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink => continue,
            _ => {
                return Err(AgentError::new(
                    "unsafe_path",
                    format!("entry `{shown}` is a device node, fifo or other special file, which is never unpacked"),
                ))
            }
        }
        match e.unpack_in(dst) {
            Ok(true) => {}
            Ok(false) => {
                return Err(AgentError::new(
                    "unsafe_path",
                    format!("entry `{shown}` would land outside {}", dst.display()),
                ));
            }
            Err(err) => {
                let msg = err.to_string();
                if msg.contains("outside of") || msg.contains("symlink") {
                    return Err(AgentError::new(
                        "unsafe_path",
                        format!(
                            "entry `{shown}` would land outside {} through a symlink",
                            dst.display()
                        ),
                    ));
                }
                if msg.contains("too_large") {
                    return Err(AgentError::new(
                        "payload_too_large",
                        "the archive is larger than the limit",
                    ));
                }
                return Err(AgentError::new(
                    "unpack_failed",
                    format!("entry `{shown}`: {msg}"),
                ));
            }
        }
        if kind == tar::EntryType::Regular || kind == tar::EntryType::Continuous {
            written += e.header().size().unwrap_or(0);
        }
        entries += 1;
    }
    Ok(Written { written, entries })
}

pub(crate) async fn upload(
    path: &str,
    max_bytes: u64,
    r: BufReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let dst = match sandbox_path(path) {
        Ok(p) => p,
        Err(e) => return reply_err(&mut w, e).await,
    };
    let ready = {
        let dst = dst.clone();
        blocking(move || -> Result<(), AgentError> {
            std::fs::create_dir_all(&dst).map_err(|e| fs_error(&dst, &e))?;
            Ok(())
        })
        .await
    };
    if let Ok(Err(e)) | Err(e) = ready {
        return reply_err(&mut w, e).await;
    }
    let bridge = SyncIoBridge::new(FrameReader::new(r));
    let outcome = blocking(move || unpack(bridge, &dst, max_bytes)).await;
    match outcome {
        Ok(Ok(written)) => reply_ok(&mut w, &written).await,
        Ok(Err(e)) | Err(e) => reply_err(&mut w, e).await,
    }
}

pub(crate) async fn download(path: &str, mut w: OwnedWriteHalf) -> std::io::Result<()> {
    let root = match sandbox_path(path) {
        Ok(p) => p,
        Err(e) => return reply_err(&mut w, e).await,
    };
    let meta = {
        let root = root.clone();
        blocking(move || std::fs::metadata(&root).map_err(|e| fs_error(&root, &e))).await
    };
    let meta = match meta {
        Ok(Ok(m)) => m,
        Ok(Err(e)) | Err(e) => return reply_err(&mut w, e).await,
    };
    if !meta.is_dir() && !meta.is_file() {
        return reply_err(
            &mut w,
            AgentError::new(
                "not_a_file",
                format!("{} is neither a file nor a directory", root.display()),
            ),
        )
        .await;
    }
    reply_ok(
        &mut w,
        &FileMeta {
            size: 0,
            mode: meta.mode() & 0o7777,
        },
    )
    .await?;
    let bridge = SyncIoBridge::new(w);
    let _ = blocking(move || -> std::io::Result<()> {
        let mut b = tar::Builder::new(bridge);
        b.mode(tar::HeaderMode::Complete);
        if meta.is_dir() {
            archive_tree(&mut b, &root)?;
        } else {
            let name = root
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("file"));
            if let Ok((mut f, m)) = open_regular(&root) {
                append_file(&mut b, &name, &mut f, &m)?;
            }
        }
        let mut bridge = b.into_inner()?;
        bridge.flush()?;
        bridge.shutdown()
    })
    .await;
    Ok(())
}

/// Archives the tree under `root` (names relative to it): directories,
/// regular files (each opened once, without blocking, read through that
/// handle) and symlinks (as links); sockets, fifos and devices are skipped.
fn archive_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path) -> std::io::Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<_> = rd.flatten().collect();
        children.sort_by_key(|e| e.file_name());
        for e in children.into_iter().rev() {
            let name = rel.join(e.file_name());
            let full = root.join(&name);
            let Ok(m) = full.symlink_metadata() else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_dir() {
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                b.append_data(&mut h, &name, std::io::empty())?;
                stack.push(name);
            } else if ft.is_symlink() {
                if let Ok(target) = std::fs::read_link(&full) {
                    let mut h = tar::Header::new_gnu();
                    h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                    h.set_size(0);
                    b.append_link(&mut h, &name, &target)?;
                }
            } else if ft.is_file() {
                // The handle's own metadata: what was opened is what is described.
                if let Ok((mut f, fm)) = open_regular(&full) {
                    append_file(b, &name, &mut f, &fm)?;
                }
            }
        }
    }
    Ok(())
}

fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    name: &Path,
    f: &mut File,
    m: &Metadata,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(m, tar::HeaderMode::Complete);
    let size = m.len();
    h.set_size(size);
    // Exactly `size` bytes whatever happens to the file meanwhile: padded
    // with zeros if it shrank, cut if it grew.
    let body = f.take(size).chain(std::io::repeat(0)).take(size);
    b.append_data(&mut h, name, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_in_the_workspace() {
        assert_eq!(
            sandbox_path("a/b").unwrap(),
            PathBuf::from("/workspace/a/b")
        );
        assert_eq!(sandbox_path("/etc/x").unwrap(), PathBuf::from("/etc/x"));
        assert_eq!(sandbox_path("").unwrap_err().code, "invalid_path");
        assert_eq!(sandbox_path("a\0b").unwrap_err().code, "invalid_path");
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        // Bypass the builder's own path checks: write the name bytes as they come.
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o4755);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn unsafe_archives_are_refused() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                tar_with(|b| raw_entry(b, "../escape", tar::EntryType::Regular, None, b"x")),
            ),
            (
                "absolute",
                tar_with(|b| raw_entry(b, "/tmp/escape", tar::EntryType::Regular, None, b"x")),
            ),
            (
                "hardlink",
                tar_with(|b| {
                    raw_entry(b, "h", tar::EntryType::Link, Some("../../etc/passwd"), b"")
                }),
            ),
            (
                "abs hardlink",
                tar_with(|b| raw_entry(b, "h", tar::EntryType::Link, Some("/etc/passwd"), b"")),
            ),
            (
                "device",
                tar_with(|b| raw_entry(b, "dev", tar::EntryType::Char, None, b"")),
            ),
            (
                "fifo",
                tar_with(|b| raw_entry(b, "f", tar::EntryType::Fifo, None, b"")),
            ),
            (
                "through symlink",
                tar_with(|b| {
                    raw_entry(b, "out", tar::EntryType::Symlink, Some("/"), b"");
                    raw_entry(
                        b,
                        "out/tmp/escaped-through-link",
                        tar::EntryType::Regular,
                        None,
                        b"x",
                    );
                }),
            ),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let dst = dir.path().join("dst");
            std::fs::create_dir(&dst).unwrap();
            let err = unpack(&bytes[..], &dst, 1 << 20).unwrap_err();
            assert_eq!(err.code, "unsafe_path", "{what}: {err}");
        }
        assert!(!Path::new("/tmp/escaped-through-link").exists());
    }

    #[test]
    fn an_archive_unpacks_without_setuid_and_within_its_limit() {
        let bytes = tar_with(|b| {
            raw_entry(b, "d/", tar::EntryType::Directory, None, b"");
            raw_entry(b, "d/run", tar::EntryType::Regular, None, b"#!/bin/sh\n");
        });
        let dir = tempfile::tempdir().unwrap();
        let w = unpack(&bytes[..], dir.path(), 1 << 20).unwrap();
        assert_eq!((w.written, w.entries), (10, 2));
        let mode = std::fs::metadata(dir.path().join("d/run")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o755);
        let err = unpack(&bytes[..], dir.path(), 100).unwrap_err();
        assert_eq!(err.code, "payload_too_large");
        let err = unpack(
            &b"this is not a tar archive at all, not even close....."[..],
            dir.path(),
            1 << 20,
        );
        assert!(err.is_err());
    }
}
