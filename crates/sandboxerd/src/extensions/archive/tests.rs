//! The archive format's tests: round trips, limits, damage, the walk
//! against the old path walk, and what extraction refuses.
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rustix::fs::{Mode, CWD};
use tar::{EntryType, Header, HeaderMode};

use super::extract::*;
use super::io_adapters::*;
use super::write::*;
use super::*;

fn never() -> bool {
    false
}

fn tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).expect("mkdir");
    fs::write(dir.join("a.txt"), "alpha\n").expect("write");
    fs::write(dir.join("sub/secret"), "s3cret").expect("write");
    fs::set_permissions(dir.join("sub/secret"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(dir.join("sub/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(dir.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
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
    let root = extract_archive(&tmp.path().join("a.tar.zst"), &a.sha256, &out, None).expect("x");
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
    let err = write_archive(&src, &tmp.path().join("x"), 100_000, &never).expect_err("too large");
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
    let err = extract_archive(&path, &info.sha256, &tmp.path().join("out"), None).expect_err("bad");
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

fn tar_bytes(walk: impl FnOnce(&mut tar::Builder<Vec<u8>>) -> io::Result<u64>) -> (Vec<u8>, u64) {
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
    let decoder = zstd::stream::read::Decoder::new(File::open(path).expect("open")).expect("zstd");
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
    let err =
        write_archive(&src, &tmp.path().join("b"), 1 << 30, &started_big).expect_err("cancelled");
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
