//! A background process's combined output: spilled to two files in turn
//! (so at most `cap` bytes are kept, the newest), addressed by the offset
//! of a byte in everything the process ever wrote, with the stream each
//! byte came from. The files are read through the handles the agent opened,
//! so code in the sandbox renaming or replacing them changes nothing here.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Stream switches remembered; past this the oldest are forgotten (their
/// bytes are then told as the stream of the oldest switch remembered).
const MAX_SEGMENTS: usize = 65_536;

pub(crate) struct LogStore {
    path: PathBuf,
    /// Half the bytes kept: the current file turns over at this size.
    half: u64,
    cur: Option<File>,
    cur_start: u64,
    cur_len: u64,
    /// The previous file and where it starts.
    old: Option<(File, u64)>,
    /// `(offset, stream)` where each run of one stream starts.
    segments: VecDeque<(u64, u8)>,
}

impl LogStore {
    /// A store spilling to `<dir>/<id>.log` (and `.log.1`); with no file it
    /// can make, it counts what is written and keeps nothing.
    pub fn new(dir: &Path, id: &str, cap: u64) -> Self {
        let path = dir.join(format!("{id}.log"));
        let cur = create(&path);
        LogStore {
            path,
            half: (cap / 2).max(2048),
            cur,
            cur_start: 0,
            cur_len: 0,
            old: None,
            segments: VecDeque::new(),
        }
    }

    /// Bytes written so far (the offset of the next one).
    pub fn total(&self) -> u64 {
        self.cur_start + self.cur_len
    }

    /// The oldest offset still kept.
    pub fn base(&self) -> u64 {
        self.old.as_ref().map(|(_, s)| *s).unwrap_or(self.cur_start)
    }

    pub fn append(&mut self, stream: u8, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.segments.back().map(|s| s.1) != Some(stream) {
            self.segments.push_back((self.total(), stream));
            if self.segments.len() > MAX_SEGMENTS {
                self.segments.pop_front();
            }
        }
        let written = match self.cur.as_mut() {
            Some(f) => f.write_all(data).is_ok(),
            None => false,
        };
        if !written {
            // No room (the sandbox's disk or memory is full): the bytes are
            // counted, and lost; the reader is told where output resumes.
            self.cur = None;
        }
        self.cur_len += data.len() as u64;
        if self.cur_len >= self.half || !written {
            self.turn_over();
        }
    }

    /// The current file becomes the old one; a new one starts.
    fn turn_over(&mut self) {
        let old_path = self.path.with_extension("log.1");
        let _ = std::fs::remove_file(&old_path);
        let _ = std::fs::rename(&self.path, &old_path);
        self.old = self.cur.take().map(|f| (f, self.cur_start));
        self.cur_start += self.cur_len;
        self.cur_len = 0;
        self.cur = create(&self.path);
        let base = self.base();
        while self.segments.len() > 1 && self.segments.get(1).is_some_and(|s| s.0 <= base) {
            self.segments.pop_front();
        }
    }

    /// Up to `max` bytes from `offset` (moved up to [`Self::base`]), split by
    /// stream: `(offset read from, [(stream, bytes)])`.
    pub fn read(&self, offset: u64, max: usize) -> (u64, Vec<(u8, Vec<u8>)>) {
        let from = offset.max(self.base());
        let end = self.total().min(from + max as u64);
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut at = from;
        while at < end {
            let (file, start, len) = match &self.old {
                Some((f, s)) if at < self.cur_start => (Some(f), *s, self.cur_start - *s),
                _ => (self.cur.as_ref(), self.cur_start, self.cur_len),
            };
            // Stop at the end of this file and of this stream's run.
            let run_end = self
                .segments
                .iter()
                .find(|s| s.0 > at)
                .map(|s| s.0)
                .unwrap_or(u64::MAX);
            let stop = end.min(start + len).min(run_end);
            let stream = self
                .segments
                .iter()
                .rev()
                .find(|s| s.0 <= at)
                .or(self.segments.front())
                .map(|s| s.1)
                .unwrap_or(crate::proto::kind::STDOUT);
            let mut buf = vec![0u8; (stop - at) as usize];
            let got = match file {
                Some(f) => read_full_at(f, &mut buf, at - start),
                None => 0,
            };
            if got < buf.len() {
                // Lost to a full disk: the gap reads as nothing.
                buf.truncate(got);
            }
            match out.last_mut() {
                Some((s, bytes)) if *s == stream => bytes.extend_from_slice(&buf),
                _ => out.push((stream, buf)),
            }
            at = stop;
        }
        (from, out)
    }

    /// Removes the files (the process's record is dropped).
    pub fn remove(&mut self) {
        self.cur = None;
        self.old = None;
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("log.1"));
    }
}

fn create(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()
}

fn read_full_at(f: &File, buf: &mut [u8], mut pos: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], pos) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got += n;
                pos += n as u64;
            }
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::kind::{STDERR, STDOUT};

    #[test]
    fn keeps_the_newest_bytes_with_their_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::new(dir.path(), "p", 4096);
        log.append(STDOUT, b"hello ");
        log.append(STDERR, b"oops ");
        log.append(STDOUT, b"world");
        let (from, parts) = log.read(0, 1 << 20);
        assert_eq!(from, 0);
        assert_eq!(
            parts,
            vec![
                (STDOUT, b"hello ".to_vec()),
                (STDERR, b"oops ".to_vec()),
                (STDOUT, b"world".to_vec())
            ]
        );
        let (from, parts) = log.read(8, 1 << 20);
        assert_eq!(from, 8);
        assert_eq!(
            parts,
            vec![(STDERR, b"ps ".to_vec()), (STDOUT, b"world".to_vec())]
        );
        // Past the cap the oldest go; offsets keep counting.
        for i in 0..100u32 {
            log.append(if i % 2 == 0 { STDOUT } else { STDERR }, &[b'x'; 100]);
        }
        assert_eq!(log.total(), 16 + 10_000);
        assert!(log.base() > 0);
        assert!(log.total() - log.base() <= 4096);
        let (from, parts) = log.read(0, 1 << 20);
        assert_eq!(from, log.base());
        let bytes: usize = parts.iter().map(|p| p.1.len()).sum();
        assert_eq!(bytes as u64, log.total() - from);
        // Runs alternate as written: each 100-byte write is one stream.
        let (_, last) = log.read(log.total() - 150, 1 << 20);
        assert_eq!(
            last,
            vec![(STDOUT, vec![b'x'; 50]), (STDERR, vec![b'x'; 100])]
        );
    }

    #[test]
    fn a_replaced_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::new(dir.path(), "p", 1 << 20);
        log.append(STDOUT, b"kept");
        std::fs::remove_file(dir.path().join("p.log")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("p.log")).unwrap();
        let (_, parts) = log.read(0, 100);
        assert_eq!(parts, vec![(STDOUT, b"kept".to_vec())]);
    }
}
