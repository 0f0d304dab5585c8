//! Reading an archive back: hash-checked, only the kinds of entry this
//! format writes, ownership forced or kept, setuid and setgid never.
use std::fs::{self, File};
use std::io::{self};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rustix::fs::{chownat, openat, AtFlags, Gid, Mode, OFlags, Uid, CWD};
use tar::EntryType;

use super::io_adapters::*;
use super::*;

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
pub(super) const REFUSED: &str = "sandboxer: entry refused";

/// What an entry kind is called in a refusal.
pub(super) fn kind_name(kind: EntryType) -> &'static str {
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
pub(super) fn chown_nofollow(path: &Path, (uid, gid): (u32, u32)) -> io::Result<()> {
    chownat(
        CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io::Error::other(format!("giving {} to {uid}:{gid}: {e}", path.display())))
}

pub(super) fn extract_inner(
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
