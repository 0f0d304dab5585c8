//! The content-addressed store of snapshot archives: `<data_dir>/snapshots/<sha256>`,
//! with captures in flight under `<data_dir>/snapshots/tmp/<snapshot id>.tmp`.
//! A blob appears under its name only once complete, hashed and synced
//! (rename), so a name in the store always means a whole archive.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The blob store under one data dir.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
}

/// Whether `s` can name a blob: 64 lower-case hex digits.
pub fn is_blob_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Blobs {
    /// The store of the daemon whose data lives in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("snapshots"),
        }
    }

    /// The folder of captures in flight.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the capture of snapshot `snapshot_id` writes its archive.
    pub fn tmp_path(&self, snapshot_id: &str) -> PathBuf {
        self.tmp_dir().join(format!("{snapshot_id}.tmp"))
    }

    /// Where the blob `sha256` lives; `None` for a name that is not a hash,
    /// so a row can never point the store at another path.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        is_blob_name(sha256).then(|| self.root.join(sha256))
    }

    /// Create the folders, readable by the daemon's user alone (snapshots
    /// hold workspaces: no other user of the host, sandboxes' host user
    /// included, may read them).
    pub fn prepare(&self) -> io::Result<()> {
        crate::extensions::fsutil::private_dir(&self.root)?;
        crate::extensions::fsutil::private_dir(&self.tmp_dir())
    }

    /// Move a finished capture `tmp` (`size` bytes) to its name. When the
    /// blob exists already (another snapshot of the same tree) the copy is
    /// dropped, unless the stored one has the wrong size, which is replaced.
    pub fn commit(&self, tmp: &Path, sha256: &str, size: u64) -> io::Result<PathBuf> {
        let Some(dest) = self.path(sha256) else {
            return Err(io::Error::other(format!("`{sha256}` is not a SHA-256")));
        };
        match fs::metadata(&dest) {
            Ok(meta) if meta.is_file() && meta.len() == size => {
                fs::remove_file(tmp)?;
                return Ok(dest);
            }
            _ => {}
        }
        fs::rename(tmp, &dest)?;
        // Make the rename itself durable before the row says `ready`.
        fs::File::open(&self.root)?.sync_all()?;
        Ok(dest)
    }

    /// Remove the blob `sha256` (fine when it is gone already).
    pub fn remove(&self, sha256: &str) -> io::Result<()> {
        let Some(path) = self.path(sha256) else {
            return Ok(());
        };
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove a capture's temp file (fine when it is gone already).
    pub fn remove_tmp(&self, snapshot_id: &str) -> io::Result<()> {
        match fs::remove_file(self.tmp_path(snapshot_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove every temp file (at start-up, when no capture runs). Answers how many.
    pub fn clear_tmp(&self) -> io::Result<usize> {
        let entries = match fs::read_dir(self.tmp_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut n = 0;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            n += 1;
        }
        Ok(n)
    }

    /// The names of every blob in the store.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                if is_blob_name(name) {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_names_dedupes_and_refuses_non_hashes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::new(tmp.path());
        blobs.prepare().expect("prepare");
        let sha = "a".repeat(64);
        fs::write(blobs.tmp_path("snap_1"), b"1234").expect("write");
        let dest = blobs
            .commit(&blobs.tmp_path("snap_1"), &sha, 4)
            .expect("commit");
        assert_eq!(fs::read(&dest).expect("read"), b"1234");
        fs::write(blobs.tmp_path("snap_2"), b"1234").expect("write");
        blobs
            .commit(&blobs.tmp_path("snap_2"), &sha, 4)
            .expect("dedupe");
        assert!(!blobs.tmp_path("snap_2").exists(), "the copy is dropped");
        assert_eq!(blobs.list().expect("list"), std::slice::from_ref(&sha));
        assert!(blobs.path("../../etc/passwd").is_none());
        assert!(blobs.path(&"A".repeat(64)).is_none());
        blobs.remove(&sha).expect("remove");
        blobs.remove(&sha).expect("remove again");
        assert!(blobs.list().expect("list").is_empty());
        fs::write(blobs.tmp_path("snap_3"), b"x").expect("write");
        assert_eq!(blobs.clear_tmp().expect("clear"), 1);
    }
}
