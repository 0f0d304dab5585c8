//! The readers and writers between the tar stream and the file: they
//! count (and cap) what is written, hash what passes, cut a read to an
//! exact length, and stop a walk that was cancelled.
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Asks `cancelled` before every read.
pub(super) struct CancellableReader<'a, R> {
    pub(super) inner: R,
    pub(super) cancelled: &'a dyn Fn() -> bool,
}

impl<R: Read> Read for CancellableReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.cancelled)() {
            return Err(io::Error::other(CANCELLED));
        }
        self.inner.read(buf)
    }
}

pub(super) const TOO_LARGE: &str = "sandboxer: archive over its size limit";
/// The error a cancelled walk stops with.
pub(super) const CANCELLED: &str = "sandboxer: archive cancelled";

/// Whether `e` (or an error it wraps: `tar` adds the entry's path) says `marker`.
pub(super) fn says(e: &io::Error, marker: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains(marker) {
            return true;
        }
        cur = err.source();
    }
    false
}

pub(super) fn is_too_large(e: &io::Error) -> bool {
    says(e, TOO_LARGE)
}

/// Counts the tar stream and refuses to go past `limit`.
pub(super) struct CountingWriter<W> {
    pub(super) inner: W,
    pub(super) written: u64,
    pub(super) limit: u64,
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
pub(super) struct HashingWriter<W> {
    pub(super) inner: W,
    pub(super) hasher: Sha256,
    pub(super) len: u64,
}

impl<W> HashingWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub(super) fn finish(self) -> (W, String, u64) {
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
pub(super) struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) hasher: Sha256,
    pub(super) len: u64,
}

impl<R> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub(super) fn finish(self) -> (String, u64) {
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
pub(super) struct ExactReader<R> {
    pub(super) inner: R,
    pub(super) left: u64,
    pub(super) inner_done: bool,
}

impl<R> ExactReader<R> {
    pub(super) fn new(inner: R, len: u64) -> Self {
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
