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
//! read: see `write.rs` (`append_tree`) for how the walk stays inside it.
//!
//! `write.rs` walks a tree into an archive, `extract.rs` reads one back
//! into a directory, `io_adapters.rs` holds the readers and writers that count,
//! hash, cut and cancel the streams in between.
use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

mod extract;
mod io_adapters;
#[cfg(test)]
mod tests;
mod write;

pub use extract::{apply_root_meta, extract_archive};
pub use write::write_archive;

use io_adapters::HashingReader;

/// zstd level: 3 is zstd's default, a good speed/ratio balance for source trees.
pub(super) const ZSTD_LEVEL: i32 = 3;

/// Setuid and setgid: never written into an archive, never extracted.
pub(super) const SETID_BITS: u32 = 0o6000;

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

/// SHA-256 (hex) of a whole file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut reader = HashingReader::new(BufReader::new(File::open(path)?));
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish().0)
}
