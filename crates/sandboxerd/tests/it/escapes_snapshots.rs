//! Snapshot capture against a hostile workspace: sandbox code swaps
//! directories for symlinks out of the tree and regular files for FIFOs
//! while the daemon archives it. A thread of the test does, on the host
//! side and directly in the sandbox's workspace, what code inside the
//! sandbox can do there (`renameat2(RENAME_EXCHANGE)` in a loop).
//!
//! Nothing from outside the workspace may ever reach an archive (or a fork
//! made from one); a capture must never block; a teardown must cancel a
//! capture in flight; and SIGTERM must end the daemon within its grace.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{mkfifoat, renameat_with, Mode, RenameFlags, CWD};
use sandboxctl::api::{CreateSandbox, Sandbox, SandboxState, Snapshot, SnapshotState};
use sandboxctl::Client;
use sandboxerd::extensions::archive;

use sandboxer_testkit as testkit;
use testkit::{local_shell, ready_sandbox, require_bwrap, workdir, Daemon, TestDir};

const WAIT: Duration = Duration::from_secs(30);

/// A thread exchanging each pair of paths (`RENAME_EXCHANGE`) in a loop
/// until dropped.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Swapper {
    fn start(pairs: Vec<(PathBuf, PathBuf)>) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (stop2, swaps2) = (stop.clone(), swaps.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                for (a, b) in &pairs {
                    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).expect("RENAME_EXCHANGE");
                    swaps2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Swapper {
            stop,
            swaps,
            thread: Some(thread),
        }
    }

    fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One entry of an archive.
#[derive(Debug)]
struct Entry {
    path: String,
    kind: tar::EntryType,
    content: Vec<u8>,
}

/// Every entry of the `.tar.zst` archive at `path`.
fn entries(path: &Path) -> Vec<Entry> {
    let file = std::fs::File::open(path).expect("open archive");
    let decoder = zstd::stream::read::Decoder::new(file).expect("zstd");
    let mut tar = tar::Archive::new(decoder);
    let mut out = Vec::new();
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_owned();
        let kind = entry.header().entry_type();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("read entry");
        out.push(Entry {
            path,
            kind,
            content,
        });
    }
    out
}

/// What the race attacks: host files the daemon (root) can read, and a
/// marker planted outside the workspace.
struct Secrets {
    /// Host files that must never be archived, by content.
    host_files: Vec<(PathBuf, Vec<u8>)>,
    /// Unique bytes of the planted file outside the workspace.
    marker: Vec<u8>,
    /// Paths the archive may hold (both names of each swapped pair).
    allowed: BTreeSet<String>,
}

impl Secrets {
    /// Check one archive; answers a description of the first escape.
    fn escape_in(&self, entries: &[Entry]) -> Option<String> {
        for e in entries {
            if e.path != "." && !self.allowed.contains(&e.path) {
                return Some(format!(
                    "entry `{}` ({:?}) is not in the workspace: a directory listing from outside",
                    e.path, e.kind
                ));
            }
            if e.kind == tar::EntryType::Regular {
                if contains(&e.content, &self.marker) {
                    return Some(format!("entry `{}` holds the host marker", e.path));
                }
                for (host, bytes) in &self.host_files {
                    if !bytes.is_empty() && &e.content == bytes {
                        return Some(format!(
                            "entry `{}` holds the host's {}",
                            e.path,
                            host.display()
                        ));
                    }
                }
            }
        }
        None
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Lay out in `ws` the swap pairs of the symlink race: `d/` (holding files
/// named like `/etc`'s secrets) against `l -> /etc`, and `d2/` against
/// `l2 -> <host_dir>` (which holds the marker under the name `d2/` uses).
/// Answers the pairs and what must never be archived.
fn symlink_race_tree(ws: &Path, host_dir: &Path) -> (Vec<(PathBuf, PathBuf)>, Secrets) {
    let marker = format!(
        "HOST-MARKER-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    )
    .into_bytes();
    std::fs::create_dir_all(host_dir).expect("host dir");
    std::fs::write(host_dir.join("secret"), &marker).expect("marker");
    std::fs::write(host_dir.join("other"), &marker).expect("marker");
    std::fs::create_dir_all(ws.join("d")).expect("mkdir d");
    std::fs::write(ws.join("d/shadow"), "decoy shadow\n").expect("write");
    std::fs::write(ws.join("d/passwd"), "decoy passwd\n").expect("write");
    std::os::unix::fs::symlink("/etc", ws.join("l")).expect("symlink l");
    std::fs::create_dir_all(ws.join("d2")).expect("mkdir d2");
    std::fs::write(ws.join("d2/secret"), "decoy secret\n").expect("write");
    std::os::unix::fs::symlink(host_dir, ws.join("l2")).expect("symlink l2");
    let mut allowed = BTreeSet::new();
    for top in ["d", "l"] {
        allowed.insert(top.to_owned());
        for f in ["shadow", "passwd"] {
            allowed.insert(format!("{top}/{f}"));
        }
    }
    for top in ["d2", "l2"] {
        allowed.insert(top.to_owned());
        allowed.insert(format!("{top}/secret"));
    }
    let host_files = ["/etc/shadow", "/etc/passwd", "/etc/gshadow"]
        .iter()
        .filter_map(|p| std::fs::read(p).ok().map(|b| (PathBuf::from(p), b)))
        .collect();
    let pairs = vec![(ws.join("d"), ws.join("l")), (ws.join("d2"), ws.join("l2"))];
    (
        pairs,
        Secrets {
            host_files,
            marker,
            allowed,
        },
    )
}

/// Poll snapshot `id` until it is no longer `creating`, at most `limit`.
async fn settled(c: &Client, id: &str, limit: Duration) -> Snapshot {
    let deadline = Instant::now() + limit;
    loop {
        let snap = c.get_snapshot(id).await.expect("get snapshot");
        if snap.state != SnapshotState::Creating || Instant::now() >= deadline {
            return snap;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll sandbox `id` until it is `destroyed`, at most `limit`; answers it then.
async fn destroyed_within(c: &Client, id: &str, limit: Duration) -> Sandbox {
    let deadline = Instant::now() + limit;
    loop {
        let sbx = c.get(id, None).await.expect("get sandbox");
        if sbx.state == SandboxState::Destroyed || Instant::now() >= deadline {
            return sbx;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM the daemon and answers how long it took to exit (`None`: it
/// was still running after `limit`, then killed).
fn terminate_within(d: &mut Daemon, limit: Duration) -> Option<Duration> {
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let started = Instant::now();
    while started.elapsed() < limit {
        if d.child.try_wait().expect("try_wait").is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    None
}

/// The blob of a ready snapshot.
fn blob_of(data_dir: &Path, snap: &Snapshot) -> PathBuf {
    let sha = snap.sha256.as_deref().expect("sha256");
    sandboxerd::blobs::Blobs::new(data_dir)
        .path(sha)
        .expect("blob path")
}

/// Every regular file and directory under `root`, never following a symlink.
fn walk_nofollow(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let meta = std::fs::symlink_metadata(&abs).expect("stat");
        let name = rel.to_string_lossy().into_owned();
        if meta.is_dir() {
            for e in std::fs::read_dir(&abs).expect("read_dir") {
                stack.push(rel.join(e.expect("entry").file_name()));
            }
            out.push((name, None));
        } else if meta.is_file() {
            out.push((name, Some(std::fs::read(&abs).expect("read"))));
        }
    }
    out
}

/// Finding 2, at the archive layer: hundreds of captures of a tree whose
/// directories are swapped for symlinks out of it (to `/etc`, and to a
/// host folder holding a marker) all the while. Not one may hold a host
/// file or list a host directory.
#[test]
fn write_archive_never_follows_a_directory_swapped_for_a_symlink() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ws = tmp.path().join("workspace");
    std::fs::create_dir_all(&ws).expect("mkdir");
    let (pairs, secrets) = symlink_race_tree(&ws, &tmp.path().join("host"));
    let swapper = Swapper::start(pairs);
    let started = Instant::now();
    let mut rounds = 0;
    let mut errors = Vec::new();
    while rounds < 1000 && started.elapsed() < Duration::from_secs(30) {
        let dest = tmp.path().join(format!("a{rounds}.tar.zst"));
        // A failed capture leaks nothing; what matters is what an archive holds.
        match archive::write_archive(&ws, &dest, 1 << 30, &|| false) {
            Ok(_) => {
                if let Some(escape) = secrets.escape_in(&entries(&dest)) {
                    panic!("round {rounds}: {escape}");
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        let _ = std::fs::remove_file(&dest);
        rounds += 1;
    }
    assert!(
        swapper.swaps() > 1000,
        "the race ran: {} swaps",
        swapper.swaps()
    );
    assert!(rounds >= 50, "only {rounds} rounds");
    // The walk copes with entries changing under it: no capture fails.
    assert!(
        errors.is_empty(),
        "{} of {rounds} failed: {:?}",
        errors.len(),
        errors.first()
    );
}

/// Finding 3, at the archive layer: a regular file swapped with a FIFO all
/// the while never blocks a capture (each finishes within seconds).
#[test]
fn write_archive_never_blocks_on_a_fifo_swapped_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ws = tmp.path().join("workspace");
    std::fs::create_dir_all(ws.join("sub")).expect("mkdir");
    std::fs::write(ws.join("f"), "data\n").expect("write");
    mkfifoat(CWD, ws.join("p"), Mode::from_raw_mode(0o644)).expect("mkfifo");
    std::fs::write(ws.join("sub/f"), "data\n").expect("write");
    mkfifoat(CWD, ws.join("sub/p"), Mode::from_raw_mode(0o644)).expect("mkfifo");
    let swapper = Swapper::start(vec![
        (ws.join("f"), ws.join("p")),
        (ws.join("sub/f"), ws.join("sub/p")),
    ]);
    let (tx, rx) = std::sync::mpsc::channel();
    let ws2 = ws.clone();
    let out = tmp.path().to_owned();
    const ROUNDS: usize = 2000;
    std::thread::spawn(move || {
        for i in 0..ROUNDS {
            let dest = out.join(format!("a{i}.tar.zst"));
            let r = archive::write_archive(&ws2, &dest, 1 << 30, &|| false);
            let _ = std::fs::remove_file(&dest);
            if tx.send(r.map(|info| info.skipped)).is_err() {
                return;
            }
        }
    });
    let mut skipped = 0;
    for i in 0..ROUNDS {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => skipped += r.expect("capture"),
            Err(_) => panic!("capture {i} did not finish within 10 s: blocked on a FIFO"),
        }
    }
    assert!(swapper.swaps() > 100, "the race ran");
    // FIFOs (and entries that changed kind under the walk) were left out.
    assert!(skipped > 0, "skipped {skipped}");
}

/// Finding 2 through the daemon: snapshots of a real sandbox whose
/// workspace swaps directories for symlinks out of it hold nothing from
/// the host, and neither does a sandbox forked from one.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_of_a_racing_workspace_hold_no_host_file() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let c = &d.client;
    let sbx = ready_sandbox(c, &local_shell()).await;
    let ws = workdir(&sbx);
    let (pairs, secrets) = symlink_race_tree(&ws, &dir.path().join("host-secrets"));
    let swapper = Swapper::start(pairs);
    let started = Instant::now();
    let mut ready = Vec::new();
    let mut failed = Vec::new();
    for i in 0..40 {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let (_, snap) = c
            .create_snapshot(&sbx.id, None, Some(WAIT))
            .await
            .expect("snapshot");
        match snap.state {
            SnapshotState::Ready => {
                let entries = entries(&blob_of(dir.path(), &snap));
                if let Some(escape) = secrets.escape_in(&entries) {
                    panic!("snapshot {i} ({}): {escape}", snap.id);
                }
                ready.push(snap);
            }
            _ => failed.push(snap),
        }
    }
    drop(swapper);
    assert!(
        failed.is_empty(),
        "{} captures failed; the first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        ready.len() >= 5,
        "only {} snapshots in a minute",
        ready.len()
    );

    // A fork of the last one: its workspace holds nothing from the host.
    let last = ready.last().expect("a snapshot");
    let fork = ready_sandbox(
        c,
        &CreateSandbox {
            from_snapshot: Some(last.id.clone()),
            ..CreateSandbox::default()
        },
    )
    .await;
    for (path, content) in walk_nofollow(&workdir(&fork)) {
        if !path.is_empty() {
            assert!(
                secrets.allowed.contains(&path),
                "fork holds `{path}`, which is not from the workspace"
            );
        }
        if let Some(bytes) = content {
            assert!(
                !contains(&bytes, &secrets.marker),
                "fork's `{path}` is the host marker"
            );
            for (host, b) in &secrets.host_files {
                assert!(
                    &bytes != b,
                    "fork's `{path}` is the host's {}",
                    host.display()
                );
            }
        }
    }
}

/// Finding 3 through the daemon: while a regular file and a FIFO swap in
/// the workspace, every capture ends (`ready` or `failed`) in bounded
/// time, a DELETE then destroys the sandbox within seconds, and SIGTERM
/// ends the daemon within its grace.
#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_swapped_in_blocks_no_capture_teardown_or_shutdown() {
    require_bwrap();
    let dir = TestDir::new();
    let mut d = testkit::daemon!().start(dir.path());
    let c = d.client.clone();
    let sbx = ready_sandbox(&c, &local_shell()).await;
    let ws = workdir(&sbx);
    std::fs::create_dir_all(ws.join("sub")).expect("mkdir");
    for at in [ws.clone(), ws.join("sub")] {
        std::fs::write(at.join("f"), "data\n").expect("write");
        mkfifoat(CWD, at.join("p"), Mode::from_raw_mode(0o644)).expect("mkfifo");
    }
    let swapper = Swapper::start(vec![
        (ws.join("f"), ws.join("p")),
        (ws.join("sub/f"), ws.join("sub/p")),
    ]);
    for i in 0..40 {
        let (_, snap) = c
            .create_snapshot(&sbx.id, None, Some(Duration::from_secs(10)))
            .await
            .expect("snapshot");
        let snap = settled(&c, &snap.id, Duration::from_secs(5)).await;
        assert_ne!(
            snap.state,
            SnapshotState::Creating,
            "snapshot {i} ({}) still creating after 15 s: the capture is blocked",
            snap.id
        );
    }
    drop(swapper);

    let started = Instant::now();
    let (status, _) = c.destroy(&sbx.id, None).await.expect("destroy");
    assert!(status == 202 || status == 200, "{status}");
    let gone = destroyed_within(&c, &sbx.id, Duration::from_secs(10)).await;
    assert_eq!(
        gone.state,
        SandboxState::Destroyed,
        "not destroyed {:?} after the DELETE",
        started.elapsed()
    );

    let took = terminate_within(&mut d, Duration::from_secs(20));
    assert!(
        took.is_some(),
        "the daemon did not exit within 20 s of SIGTERM"
    );
}

/// Fill `ws` with `n` small files, so a walk slowed by the
/// `snapshot.slow_walk` fault (100 ms an entry) takes `n / 10` seconds.
fn many_files(ws: &Path, n: usize) {
    for i in 0..n {
        std::fs::write(ws.join(format!("file-{i:04}")), format!("{i}\n")).expect("write");
    }
}

/// A capture in the middle of its walk is cancelled by a DELETE of its
/// sandbox (destroyed within seconds; the snapshot ends `failed` with
/// `snapshot_cancelled`), and by SIGTERM (the daemon exits within its
/// grace; the snapshot is `failed` after the next start).
#[tokio::test(flavor = "multi_thread")]
async fn a_capture_in_flight_is_cancelled_by_delete_and_by_shutdown() {
    require_bwrap();
    let dir = TestDir::new();
    let env = [("SANDBOXER_FAULT", "snapshot.slow_walk")];
    let mut d = testkit::daemon!().envs(&env).start(dir.path());
    let c = d.client.clone();

    // DELETE.
    let sbx = ready_sandbox(&c, &local_shell()).await;
    many_files(&workdir(&sbx), 600);
    let (status, snap) = c
        .create_snapshot(&sbx.id, None, None)
        .await
        .expect("snapshot");
    assert_eq!((status, snap.state), (202, SnapshotState::Creating));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.get_snapshot(&snap.id).await.expect("get").state,
        SnapshotState::Creating,
        "the slow capture is still walking"
    );
    let started = Instant::now();
    c.destroy(&sbx.id, None).await.expect("destroy");
    let gone = destroyed_within(&c, &sbx.id, Duration::from_secs(5)).await;
    assert_eq!(
        gone.state,
        SandboxState::Destroyed,
        "a capture in flight held the teardown for {:?}",
        started.elapsed()
    );
    let snap = settled(&c, &snap.id, Duration::from_secs(5)).await;
    assert_eq!(snap.state, SnapshotState::Failed, "{snap:?}");
    let failure = snap.failure.expect("failure");
    assert_eq!(failure.code, "snapshot_cancelled", "{failure:?}");
    assert!(failure.message.contains("cancelled"), "{failure:?}");

    // SIGTERM.
    let sbx = ready_sandbox(&c, &local_shell()).await;
    many_files(&workdir(&sbx), 600);
    let (_, snap) = c
        .create_snapshot(&sbx.id, None, None)
        .await
        .expect("snapshot");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let took = terminate_within(&mut d, Duration::from_secs(20));
    assert!(
        took.is_some(),
        "the daemon did not exit within 20 s of SIGTERM with a capture in flight"
    );
    drop(d);
    let d = testkit::daemon!().start(dir.path());
    let snap = d.client.get_snapshot(&snap.id).await.expect("get");
    assert_eq!(snap.state, SnapshotState::Failed, "{snap:?}");
    let code = snap.failure.expect("failure").code;
    assert!(
        code == "snapshot_cancelled" || code == "interrupted",
        "{code}"
    );
    let _ = d.client.destroy(&sbx.id, Some(WAIT)).await;
}
