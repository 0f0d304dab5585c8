//! The snapshot archive format every backend writes and reads: a tar of the
//! workspace (entries in name order, so an unchanged tree gives the same
//! bytes and so the same content address), zstd-compressed with a content
//! checksum. The SHA-256 of the compressed bytes is the archive's name.
//!
//! Kept: regular files (content, mode, owner, mtime to the second),
//! directories (mode, owner, mtime, the root's too), symlinks (target as
//! written, never followed). Left out: sockets, FIFOs and device nodes; hard
//! links become separate copies.
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header, HeaderMode};

/// zstd level: 3 is zstd's default, a good speed/ratio balance for source trees.
const ZSTD_LEVEL: i32 = 3;

/// What writing an archive produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// SHA-256 (hex) of the compressed archive.
    pub sha256: String,
    /// Bytes of the compressed archive.
    pub size_bytes: u64,
    /// Bytes of the tar stream before compression.
    pub content_bytes: u64,
    /// Sockets, FIFOs and device nodes that were left out.
    pub skipped: u64,
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The tar stream grew past the limit; nothing usable was written.
    #[error("the workspace is larger than the limit of {limit} bytes (before compression)")]
    TooLarge { limit: u64 },
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
/// stops with [`WriteError::TooLarge`]; the caller removes `dest` on any error.
pub fn write_archive(src: &Path, dest: &Path, max_content: u64) -> Result<ArchiveInfo, WriteError> {
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
    let skipped = match append_tree(&mut builder, src) {
        Ok(n) => n,
        Err(e) if is_too_large(&e) => return Err(WriteError::TooLarge { limit: max_content }),
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
pub fn extract_archive(
    src: &Path,
    expected_sha256: &str,
    dest: &Path,
) -> Result<Option<RootMeta>, ExtractError> {
    match extract_inner(src, dest) {
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

fn extract_inner(src: &Path, dest: &Path) -> io::Result<(String, Option<RootMeta>)> {
    fs::create_dir_all(dest)?;
    let file = File::open(src)?;
    let decoder = zstd::stream::read::Decoder::new(HashingReader::new(file))?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut root = None;
    {
        // Directories last, deepest first, so their modes and mtimes are not
        // disturbed by what is written into them (as `tar::Archive::unpack`).
        let mut dirs = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let is_root = entry
                .path()?
                .components()
                .all(|c| matches!(c, Component::CurDir | Component::RootDir));
            if is_root {
                let h = entry.header();
                root = Some(RootMeta {
                    mode: h.mode()?,
                    mtime: h.mtime()?,
                });
                continue;
            }
            if entry.header().entry_type() == EntryType::Directory {
                dirs.push(entry);
            } else if !entry.unpack_in(dest)? {
                return Err(io::Error::other(format!(
                    "entry `{}` points outside the workspace",
                    String::from_utf8_lossy(&entry.path_bytes())
                )));
            }
        }
        dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
        for mut dir in dirs {
            let mtime = dir.header().mtime().ok();
            let path = dir.path()?.into_owned();
            if !dir.unpack_in(dest)? {
                return Err(io::Error::other(format!(
                    "entry `{}` points outside the workspace",
                    path.display()
                )));
            }
            // tar restores a directory's mode but not its mtime; children
            // are all written by now (deepest first), so set it last.
            if let Some(mtime) = mtime {
                File::open(dest.join(&path))?
                    .set_modified(UNIX_EPOCH + Duration::from_secs(mtime))?;
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

/// Apply the archived root's mode and mtime to `dir`.
pub fn apply_root_meta(dir: &Path, meta: Option<RootMeta>) -> io::Result<()> {
    let Some(meta) = meta else {
        return Ok(());
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode & 0o7777))?;
    File::open(dir)?.set_modified(UNIX_EPOCH + Duration::from_secs(meta.mtime))
}

/// SHA-256 (hex) of a whole file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut reader = HashingReader::new(BufReader::new(File::open(path)?));
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish().0)
}

/// Append `root` as `./` and everything under it in name order. Answers how
/// many entries of kinds an archive does not keep were skipped.
fn append_tree<W: Write>(builder: &mut tar::Builder<W>, root: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    append_dir_header(builder, Path::new("./"), &meta)?;
    let mut skipped = 0;
    // Depth first, children in name order: a stack of (on disk, in archive).
    let mut stack: Vec<(PathBuf, PathBuf)> = children(root, Path::new(""))?;
    stack.reverse();
    while let Some((abs, rel)) = stack.pop() {
        let meta = fs::symlink_metadata(&abs)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            append_dir_header(builder, &rel, &meta)?;
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

fn append_dir_header<W: Write>(
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

/// The entries of `dir` in name order, as (path on disk, path in the archive).
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

const TOO_LARGE: &str = "sandboxer: archive over its size limit";

fn is_too_large(e: &io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains(TOO_LARGE) {
            return true;
        }
        cur = err.source();
    }
    false
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
        (self.inner, hex(&self.hasher.finalize()), self.len)
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
        (hex(&self.hasher.finalize()), self.len)
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

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
        let a = write_archive(&src, &tmp.path().join("a.tar.zst"), 1 << 30).expect("write");
        let b = write_archive(&src, &tmp.path().join("b.tar.zst"), 1 << 30).expect("write");
        assert_eq!(a.sha256, b.sha256, "same tree, same bytes");
        assert_eq!(
            a.sha256,
            sha256_file(&tmp.path().join("a.tar.zst")).expect("hash")
        );
        let out = tmp.path().join("out");
        let root = extract_archive(&tmp.path().join("a.tar.zst"), &a.sha256, &out).expect("x");
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
        let err = write_archive(&src, &tmp.path().join("x"), 100_000).expect_err("too large");
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
        let info = write_archive(&src, &path, 1 << 30).expect("write");
        let mut bytes = fs::read(&path).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&path, &bytes).expect("write");
        let err = extract_archive(&path, &info.sha256, &tmp.path().join("out")).expect_err("bad");
        assert!(matches!(err, ExtractError::Corrupt(_)), "{err}");
        // Appended garbage is caught too.
        let path2 = tmp.path().join("b");
        let info = write_archive(&src, &path2, 1 << 30).expect("write");
        let mut f = File::options().append(true).open(&path2).expect("open");
        f.write_all(b"junk").expect("append");
        let err = extract_archive(&path2, &info.sha256, &tmp.path().join("out2")).expect_err("bad");
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
}
