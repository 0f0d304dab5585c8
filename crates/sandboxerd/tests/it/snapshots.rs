//! Snapshots: capture, restore in place, fork, delete, limits and crash
//! recovery. End-to-end tests run the real daemon on real bubblewrap and
//! drive it with the `sandboxctl` client; handler tests call the router
//! in-process for the 4xx answers.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use sandboxctl::api::{CreateSandbox, Sandbox, SandboxState, SnapshotState};
use sandboxctl::SnapshotQuery;
use sandboxerd::store::{new_id, now_ms, Captured, NewSnapshot, SnapshotCreated};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use sandboxer_testkit as testkit;
use testkit::{
    assert_problem, local_shell, ready_sandbox, require_bwrap, run_inside, workdir, TestApp,
};

const WAIT: Duration = Duration::from_secs(30);

fn fork_of(snapshot_id: &str) -> CreateSandbox {
    CreateSandbox {
        from_snapshot: Some(snapshot_id.to_owned()),
        ..CreateSandbox::default()
    }
}

/// One entry of a tree as far as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        mode: u32,
        mtime: i64,
        content: Vec<u8>,
    },
    Link {
        target: PathBuf,
    },
}

/// Every entry under `root` (the root itself as ""), by relative path.
fn manifest(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let meta = std::fs::symlink_metadata(&abs).expect("stat");
        let key = rel.to_string_lossy().into_owned();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&abs).expect("readlink");
            out.insert(key, Node::Link { target });
        } else if meta.is_dir() {
            out.insert(
                key,
                Node::Dir {
                    mode,
                    mtime: meta.mtime(),
                },
            );
            for entry in std::fs::read_dir(&abs).expect("read_dir") {
                stack.push(rel.join(entry.expect("entry").file_name()));
            }
        } else {
            let content = std::fs::read(&abs).expect("read");
            out.insert(
                key,
                Node::File {
                    mode,
                    mtime: meta.mtime(),
                    content,
                },
            );
        }
    }
    out
}

/// The workspace as a process inside the sandbox sees it.
fn listing_inside(reach: &Value) -> String {
    run_inside(
        reach,
        &[
            "sh",
            "-c",
            "cd /workspace && find . -printf '%P|%y|%m|%s|%l\\n' | sort && cat src/main.rs secret.key 2>&1",
        ],
    )
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A small tree with everything a snapshot must keep: nested files, a 0600
/// secret, an executable, symlinks (one dangling), an empty 0700 dir, an
/// old mtime.
fn populate(ws: &Path) {
    std::fs::create_dir_all(ws.join("src/deep/er")).expect("mkdir");
    std::fs::create_dir_all(ws.join("bin")).expect("mkdir");
    std::fs::create_dir_all(ws.join("empty")).expect("mkdir");
    chmod(&ws.join("empty"), 0o700);
    std::fs::write(ws.join("src/main.rs"), "fn main() {}\n").expect("write");
    std::fs::write(ws.join("src/deep/er/data.bin"), vec![0u8, 1, 2, 255]).expect("write");
    std::fs::write(ws.join("secret.key"), "k3y\n").expect("write");
    chmod(&ws.join("secret.key"), 0o600);
    std::fs::write(ws.join("bin/run.sh"), "#!/bin/sh\necho run\n").expect("write");
    chmod(&ws.join("bin/run.sh"), 0o755);
    std::os::unix::fs::symlink("src/main.rs", ws.join("latest")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", ws.join("dangling")).expect("symlink");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(ws.join("src/main.rs"))
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    // Written from the host as an operator would: then given to the
    // sandbox's host user (the owner of the workspace), or the sandbox could
    // not read its own 0700 dir and 0600 file.
    testkit::give_to_sandbox(ws);
    // Directories keep their mtimes too (set last: writing inside moves them).
    for d in ["src/deep", "empty"] {
        std::fs::File::open(ws.join(d))
            .expect("open dir")
            .set_modified(old)
            .expect("dir mtime");
    }
}

/// Change, add and remove things in every way a restore must undo.
fn scribble(ws: &Path, reach: &Value) {
    std::fs::write(ws.join("src/main.rs"), "fn main() { panic!() }\n").expect("write");
    chmod(&ws.join("secret.key"), 0o644);
    std::fs::remove_file(ws.join("bin/run.sh")).expect("rm");
    std::fs::remove_file(ws.join("latest")).expect("rm");
    std::os::unix::fs::symlink("secret.key", ws.join("latest")).expect("symlink");
    std::fs::write(ws.join("added.txt"), "new\n").expect("write");
    std::fs::create_dir_all(ws.join("added-dir/x")).expect("mkdir");
    run_inside(
        reach,
        &["sh", "-c", "echo changed > made-inside; touch added-inside"],
    );
}

fn reach_of(sbx: &Sandbox) -> Value {
    sbx.reachability.clone().expect("reachability")
}

fn blob_names(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("snapshots"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn tmp_files(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("snapshots/tmp"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing a restore works with is left beside the workspace.
fn assert_no_restore_leftovers(ws: &Path) {
    let sandbox_dir = ws.parent().expect("sandbox dir");
    let names: Vec<String> = std::fs::read_dir(sandbox_dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("restore"))
        .collect();
    assert!(names.is_empty(), "left beside the workspace: {names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_change_restore_and_fork_on_real_bubblewrap() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let c = &d.client;

    let sbx = ready_sandbox(c, &local_shell()).await;
    let ws = workdir(&sbx);
    let reach = reach_of(&sbx);
    populate(&ws);
    run_inside(&reach, &["sh", "-c", "echo inside > made-inside"]);
    let before = manifest(&ws);
    let inside_before = listing_inside(&reach);
    assert!(
        inside_before.contains("secret.key|f|600|"),
        "{inside_before}"
    );
    assert!(
        inside_before.contains("latest|l|777|11|src/main.rs"),
        "{inside_before}"
    );

    // Capture: ready within the wait, named by its hash, nothing left in tmp/.
    let (status, snap) = c
        .create_snapshot(&sbx.id, Some("clean tree".into()), Some(WAIT))
        .await
        .expect("snapshot");
    assert_eq!(
        (status, snap.state),
        (201, SnapshotState::Ready),
        "{snap:?}"
    );
    assert!(snap.id.starts_with("snap_"));
    assert_eq!(snap.sandbox_id, sbx.id);
    assert_eq!(snap.label.as_deref(), Some("clean tree"));
    assert_eq!(
        (
            snap.profile.as_str(),
            snap.extension.as_str(),
            snap.project.as_str()
        ),
        ("profile.local-shell", "ext.local", "default")
    );
    let sha = snap.sha256.clone().expect("sha256");
    assert_eq!(sha.len(), 64);
    assert!(snap.size_bytes.expect("size") > 0);
    assert!(snap.content_bytes.expect("content") >= snap.size_bytes.expect("size"));
    assert!(snap.expires_at > snap.created_at + chrono::TimeDelta::days(6));
    assert_eq!(blob_names(dir.path()), std::slice::from_ref(&sha));
    assert!(tmp_files(dir.path()).is_empty());

    // The same tree again: the same content address, one blob.
    let (_, snap2) = c
        .create_snapshot(&sbx.id, None, Some(WAIT))
        .await
        .expect("snapshot again");
    assert_eq!(snap2.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(blob_names(dir.path()).len(), 1);

    // Change everything, then restore: exactly the snapshot's tree, on the
    // host and from inside the running sandbox (same init, same pid).
    scribble(&ws, &reach);
    assert_ne!(manifest(&ws), before);
    let restored = c.restore(&sbx.id, &snap.id).await.expect("restore");
    assert_eq!(restored.id, sbx.id);
    assert_eq!(
        restored.reachability, sbx.reachability,
        "same sandbox, same init"
    );
    assert_eq!(manifest(&ws), before, "exactly the snapshot's tree");
    assert_eq!(listing_inside(&reach), inside_before, "seen from inside");
    assert_eq!(
        run_inside(&reach, &["cat", "/workspace/made-inside"]),
        "inside\n"
    );
    assert_no_restore_leftovers(&ws);

    // Lists and get.
    let mine = c
        .list_snapshots(&SnapshotQuery {
            sandbox: Some(sbx.id.clone()),
            ..SnapshotQuery::default()
        })
        .await
        .expect("list");
    let ids: Vec<&str> = mine.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [snap2.id.as_str(), snap.id.as_str()], "newest first");
    let all = c
        .list_all_snapshots(&SnapshotQuery {
            limit: Some(1),
            ..SnapshotQuery::default()
        })
        .await
        .expect("list all");
    assert_eq!(all.len(), 2, "followed every page");
    assert_eq!(c.get_snapshot(&snap.id).await.expect("get"), snap);

    // Fork: a new sandbox on the snapshot's profile, with the same tree.
    let fork = ready_sandbox(c, &fork_of(&snap.id)).await;
    assert_ne!(fork.id, sbx.id);
    assert_eq!(fork.profile, "profile.local-shell");
    assert_eq!(manifest(&workdir(&fork)), before);
    assert_eq!(listing_inside(&reach_of(&fork)), inside_before);

    // A snapshot outlives its sandbox: still good for a fork.
    let (_, gone) = c.destroy(&sbx.id, Some(WAIT)).await.expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed);
    let fork2 = ready_sandbox(c, &fork_of(&snap.id)).await;
    assert_eq!(manifest(&workdir(&fork2)), before);
    let err = c.restore(&sbx.id, &snap.id).await.expect_err("destroyed");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("invalid_state"))
    );

    // Delete: idempotent; the blob goes with the last snapshot holding it.
    let deleted = c.delete_snapshot(&snap.id).await.expect("delete");
    assert_eq!(deleted.state, SnapshotState::Deleted);
    assert!(deleted.deleted_at.is_some());
    assert_eq!(
        blob_names(dir.path()),
        std::slice::from_ref(&sha),
        "snap2 still holds it"
    );
    let again = c.delete_snapshot(&snap.id).await.expect("delete again");
    assert_eq!(again.state, SnapshotState::Deleted);
    c.delete_snapshot(&snap2.id).await.expect("delete snap2");
    assert!(blob_names(dir.path()).is_empty(), "no snapshot holds it");
    let listed = c
        .list_all_snapshots(&SnapshotQuery::default())
        .await
        .expect("list");
    assert!(listed.is_empty(), "deleted ones only on request");
    let listed = c
        .list_all_snapshots(&SnapshotQuery {
            include_all: true,
            ..SnapshotQuery::default()
        })
        .await
        .expect("list all");
    assert_eq!(listed.len(), 2);
    let err = c
        .create(&fork_of(&snap.id), None, None)
        .await
        .expect_err("deleted");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("invalid_state"))
    );

    for s in [&fork, &fork2] {
        c.destroy(&s.id, Some(WAIT)).await.expect("destroy");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_archive_or_a_failed_swap_leaves_the_workspace_as_it_was() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    // Every restore of this daemon fails between moving the old tree out
    // and moving the new one in: the roll-back must put it all back.
    let d = testkit::daemon!()
        .envs(&[("SANDBOXER_FAULT", "restore.before_move_in")])
        .start(dir.path());
    let c = &d.client;
    let sbx = ready_sandbox(c, &local_shell()).await;
    let ws = workdir(&sbx);
    let reach = reach_of(&sbx);
    populate(&ws);
    let (_, snap) = c
        .create_snapshot(&sbx.id, None, Some(WAIT))
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Ready);
    scribble(&ws, &reach);
    let changed = manifest(&ws);
    let inside = listing_inside(&reach);

    let err = c.restore(&sbx.id, &snap.id).await.expect_err("fault");
    assert_eq!(
        (err.status(), err.code()),
        (Some(500), Some("restore_failed"))
    );
    assert_eq!(manifest(&ws), changed, "rolled back");
    assert_eq!(listing_inside(&reach), inside);
    assert_no_restore_leftovers(&ws);
    assert_eq!(
        c.get_snapshot(&snap.id).await.expect("get").state,
        SnapshotState::Ready
    );

    // Damage the archive: a fork fails with `snapshot_corrupt`, and a restore
    // is refused before the workspace is touched.
    let blob = dir
        .path()
        .join("snapshots")
        .join(snap.sha256.as_deref().expect("sha"));
    let mut bytes = std::fs::read(&blob).expect("read blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).expect("write blob");

    let (status, fork) = c
        .create(&fork_of(&snap.id), Some(WAIT), None)
        .await
        .expect("create");
    assert_eq!(
        (status, fork.state),
        (200, SandboxState::Failed),
        "{fork:?}"
    );
    assert_eq!(
        fork.failure.as_ref().map(|f| f.code.as_str()),
        Some("snapshot_corrupt")
    );

    let err = c.restore(&sbx.id, &snap.id).await.expect_err("corrupt");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("snapshot_corrupt"))
    );
    assert_eq!(manifest(&ws), changed, "workspace untouched");
    assert_eq!(listing_inside(&reach), inside);
    assert_no_restore_leftovers(&ws);
    let snap = c.get_snapshot(&snap.id).await.expect("get");
    assert_eq!(snap.state, SnapshotState::Failed);
    assert_eq!(
        snap.failure.as_ref().map(|f| f.code.as_str()),
        Some("snapshot_corrupt")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_capture_or_restore_leaves_nothing_behind() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let data = dir.path();

    // 1. The daemon dies with the archive written but not yet named.
    let mut d = testkit::daemon!()
        .envs(&[("SANDBOXER_FAULT", "snapshot.after_temp_write")])
        .start(data);
    let sbx = ready_sandbox(&d.client, &local_shell()).await;
    let ws = workdir(&sbx);
    let reach = reach_of(&sbx);
    populate(&ws);
    // The answer may or may not make it out before the crash.
    let _ = d.client.create_snapshot(&sbx.id, None, Some(WAIT)).await;
    let status = d.child.wait().expect("wait");
    assert!(!status.success(), "the daemon died at the crash point");
    assert_eq!(
        tmp_files(data).len(),
        1,
        "it died mid-capture: {:?}",
        tmp_files(data)
    );
    drop(d);

    // 2. After a restart: no `creating` row, no temp file, no blob; the
    // sandbox is fine. Then the daemon dies mid-restore, the old tree moved out.
    let mut d = testkit::daemon!()
        .envs(&[("SANDBOXER_FAULT", "restore.after_move_out")])
        .start(data);
    let rows = d
        .client
        .list_all_snapshots(&SnapshotQuery {
            include_all: true,
            ..SnapshotQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, SnapshotState::Failed);
    assert_eq!(
        rows[0].failure.as_ref().map(|f| f.code.as_str()),
        Some("interrupted")
    );
    assert!(tmp_files(data).is_empty(), "{:?}", tmp_files(data));
    assert!(blob_names(data).is_empty());
    assert_eq!(
        d.client.get(&sbx.id, None).await.expect("get").state,
        SandboxState::Ready
    );
    let (_, snap) = d
        .client
        .create_snapshot(&sbx.id, None, Some(WAIT))
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Ready);
    scribble(&ws, &reach);
    let changed = manifest(&ws);
    let _ = d.client.restore(&sbx.id, &snap.id).await;
    let status = d.child.wait().expect("wait");
    assert!(!status.success(), "the daemon died mid-restore");
    drop(d);

    // 3. The restart rolls the half-done restore back: exactly as it was.
    let d = testkit::daemon!().start(data);
    assert_eq!(manifest(&ws), changed, "rolled back at start");
    assert_no_restore_leftovers(&ws);
    assert!(run_inside(&reach, &["ls", "/workspace"]).contains("added-inside"));
    let restored = d.client.restore(&sbx.id, &snap.id).await.expect("restore");
    assert_eq!(restored.state, SandboxState::Ready);
    assert!(!ws.join("added-inside").exists());
    d.client
        .destroy(&sbx.id, Some(WAIT))
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_over_max_size_fails_and_forks_may_change_profile() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let root = testkit::repo_root();
    let shell = std::fs::read_to_string(root.join("profiles/local-shell.yaml")).expect("read");
    std::fs::write(profiles.join("local-shell.yaml"), &shell).expect("write");
    let tiny = shell
        .replace("id: profile.local-shell", "id: profile.tiny-snapshots")
        .replace("max_size: 2GiB", "max_size: 64KiB");
    assert!(tiny.contains("max_size: 64KiB"));
    std::fs::write(profiles.join("tiny.yaml"), tiny).expect("write");
    let data = dir.path().join("data");
    let d = testkit::daemon!()
        .args(["--profiles", profiles.to_str().expect("utf-8")])
        .start(&data);
    let c = &d.client;

    let tiny_req = CreateSandbox {
        profile: "profile.tiny-snapshots".into(),
        ..CreateSandbox::default()
    };
    let small = ready_sandbox(c, &tiny_req).await;
    // 1 MiB that does not compress: over 64 KiB by any measure.
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(workdir(&small).join("big.bin"), &noise).expect("write");
    let (status, snap) = c
        .create_snapshot(&small.id, None, Some(WAIT))
        .await
        .expect("snapshot");
    assert_eq!(
        (status, snap.state),
        (200, SnapshotState::Failed),
        "{snap:?}"
    );
    let failure = snap.failure.clone().expect("failure");
    assert_eq!(failure.code, "snapshot_too_large");
    assert!(failure.message.contains("65536"), "{failure:?}");
    assert!(snap.sha256.is_none() && snap.size_bytes.is_none());
    assert!(blob_names(&data).is_empty(), "no blob left");
    assert!(tmp_files(&data).is_empty(), "no temp file left");

    // A snapshot of a local-shell sandbox forks into the tiny profile (same
    // extension), which then keeps its own limits.
    let shell_sbx = ready_sandbox(c, &local_shell()).await;
    populate(&workdir(&shell_sbx));
    let (_, snap) = c
        .create_snapshot(&shell_sbx.id, None, Some(WAIT))
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Ready);
    let mut req = fork_of(&snap.id);
    req.profile = "profile.tiny-snapshots".into();
    let fork = ready_sandbox(c, &req).await;
    assert_eq!(fork.profile, "profile.tiny-snapshots");
    assert_eq!(manifest(&workdir(&fork)), manifest(&workdir(&shell_sbx)));
    for s in [&small, &shell_sbx, &fork] {
        c.destroy(&s.id, Some(WAIT)).await.expect("destroy");
    }
}

// ---- handler tests: in-process router, fresh database per test ----

/// A ready sandbox on real bubblewrap.
async fn sandbox(t: &TestApp) -> Value {
    let (s, _, b) = t
        .call(
            Method::POST,
            "/v1/sandboxes?wait=30s",
            Some(json!({"profile": "profile.local-shell"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b
}

/// A snapshot row of `sandbox_id` inserted directly, `ready` with a fake
/// blob when `ready`.
async fn snapshot_row(
    t: &TestApp,
    sandbox_id: &str,
    project: &str,
    ready: bool,
    ttl_ms: i64,
) -> String {
    let now = now_ms();
    let id = new_id("snap");
    let new = NewSnapshot {
        id: id.clone(),
        sandbox_id: sandbox_id.into(),
        sandbox_generation: 1,
        profile: "profile.local-shell".into(),
        profile_version: 1,
        extension: "ext.local".into(),
        host: "local".into(),
        project: project.into(),
        label: None,
        now,
        expires_at: now + ttl_ms,
    };
    let created = t.state.db.create_snapshot(new, 1000).await.expect("insert");
    assert!(matches!(created, SnapshotCreated::New(_)));
    if ready {
        let sha: String = Sha256::digest(id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let blobs = t.state.settings.data_dir.join("snapshots");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        std::fs::write(blobs.join(&sha), b"not really an archive").expect("blob");
        t.state
            .db
            .snapshot_ready(
                &id,
                &Captured {
                    sha256: sha,
                    size_bytes: 21,
                    content_bytes: 21,
                },
            )
            .await
            .expect("ready");
    }
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_requests_are_refused_with_stable_codes() {
    require_bwrap();
    let t = TestApp::new().await;
    let sbx = sandbox(&t).await;
    let id = sbx["id"].as_str().expect("id").to_owned();
    let snaps = format!("/v1/sandboxes/{id}/snapshots");

    let got = t
        .call(Method::POST, "/v1/sandboxes/sbx_nope/snapshots", None)
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "sandbox_not_found", None);
    let got = t
        .call(Method::POST, &snaps, Some(json!({"label": "a\u{7}b"})))
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_label",
        Some("label"),
    );
    let got = t
        .call(
            Method::POST,
            &snaps,
            Some(json!({"label": "x".repeat(257)})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_label",
        Some("label"),
    );
    let got = t.call(Method::POST, &snaps, Some(json!({"nope": 1}))).await;
    assert_problem(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", None);
    let got = t
        .send(
            Request::post(&snaps)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{"))
                .expect("request"),
        )
        .await;
    assert_problem(&got, StatusCode::BAD_REQUEST, "invalid_json", None);
    let got = t
        .call(Method::POST, &format!("{snaps}?wait=soon"), None)
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_duration",
        Some("wait"),
    );
    let got = t
        .call(Method::POST, &format!("{snaps}?bogus=1"), None)
        .await;
    assert_problem(
        &got,
        StatusCode::BAD_REQUEST,
        "unknown_parameter",
        Some("bogus"),
    );

    let got = t.call(Method::GET, "/v1/snapshots/snap_nope", None).await;
    assert_problem(&got, StatusCode::NOT_FOUND, "snapshot_not_found", None);
    let got = t
        .call(Method::DELETE, "/v1/snapshots/snap_nope", None)
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "snapshot_not_found", None);
    let got = t
        .call(Method::GET, "/v1/sandboxes/sbx_nope/snapshots", None)
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "sandbox_not_found", None);
    for (query, field) in [
        ("cursor=sbx_1", "cursor"),
        ("state=sleeping", "state"),
        ("limit=0", "limit"),
        ("include=some", "include"),
        ("label=a=b", "label"),
    ] {
        let got = t
            .call(Method::GET, &format!("/v1/snapshots?{query}"), None)
            .await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{query}: {}", got.2);
        assert_eq!(got.2["field"], field, "{query}: {}", got.2);
    }

    // Restore.
    let restore = format!("/v1/sandboxes/{id}/restore");
    let got = t
        .send(
            Request::post(&restore)
                .body(Body::from("{}"))
                .expect("request"),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );
    let got = t.call(Method::POST, &restore, Some(json!({}))).await;
    assert_problem(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", None);
    let got = t
        .call(
            Method::POST,
            &restore,
            Some(json!({"snapshot_id": "snap_nope"})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::NOT_FOUND,
        "snapshot_not_found",
        Some("snapshot_id"),
    );
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes/sbx_nope/restore",
            Some(json!({"snapshot_id": "snap_nope"})),
        )
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "sandbox_not_found", None);
    let creating = snapshot_row(&t, &id, "default", false, 60_000).await;
    let got = t
        .call(
            Method::POST,
            &restore,
            Some(json!({"snapshot_id": creating})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::CONFLICT,
        "invalid_state",
        Some("snapshot_id"),
    );

    // Fork.
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"from_snapshot": "snap_nope"})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::NOT_FOUND,
        "snapshot_not_found",
        Some("from_snapshot"),
    );
    let got = t.call(Method::POST, "/v1/sandboxes", Some(json!({}))).await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_profile",
        Some("profile"),
    );
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"from_snapshot": creating})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::CONFLICT,
        "invalid_state",
        Some("from_snapshot"),
    );
    let ready = snapshot_row(&t, &id, "default", true, 60_000).await;
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"from_snapshot": ready, "profile": "profile.nope"})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::NOT_FOUND,
        "profile_not_found",
        Some("profile"),
    );

    // A capture that cannot read its workspace ends `failed`, never `ready`.
    let dir = sbx["reachability"]["workdir"].as_str().expect("workdir");
    std::fs::remove_dir_all(dir).expect("rm workspace");
    let (s, _, b) = t
        .call(Method::POST, &format!("{snaps}?wait=30s"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "failed");
    assert_eq!(b["failure"]["code"], "snapshot_failed");
    assert!(b["sha256"].is_null());

    // Not ready or active: 409.
    let (s, _, _) = t
        .call(
            Method::DELETE,
            &format!("/v1/sandboxes/{id}?wait=30s"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let got = t.call(Method::POST, &snaps, None).await;
    assert_problem(&got, StatusCode::CONFLICT, "invalid_state", None);
    let got = t
        .call(Method::POST, &restore, Some(json!({"snapshot_id": ready})))
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "invalid_state", None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quota_pagination_and_expiry_sweep() {
    require_bwrap();
    let t = TestApp::with(|_, s| s.snapshot_quota_per_project = 3).await;
    let sbx = sandbox(&t).await;
    let id = sbx["id"].as_str().expect("id").to_owned();
    let project = sbx["consumer"]["project"]
        .as_str()
        .expect("project")
        .to_owned();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(snapshot_row(&t, &id, &project, true, 60_000).await);
    }
    // Another project's snapshots do not count.
    snapshot_row(&t, "sbx_other", "elsewhere", true, 60_000).await;
    let got = t
        .call(Method::POST, &format!("/v1/sandboxes/{id}/snapshots"), None)
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "snapshot_quota_exceeded", None);

    // Pages of two, newest first, no repeats.
    let mut seen = Vec::new();
    let mut uri = format!("/v1/sandboxes/{id}/snapshots?limit=2");
    loop {
        let (s, _, b) = t.call(Method::GET, &uri, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        for item in b["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        match b["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/sandboxes/{id}/snapshots?limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut expect = ids.clone();
    expect.reverse();
    assert_eq!(seen, expect);
    let (_, _, b) = t
        .call(Method::GET, "/v1/snapshots?project=elsewhere", None)
        .await;
    assert_eq!(b["items"].as_array().expect("items").len(), 1);

    // Deleting one frees a slot and its blob.
    let sha = {
        let (_, _, b) = t
            .call(Method::GET, &format!("/v1/snapshots/{}", ids[0]), None)
            .await;
        b["sha256"].as_str().expect("sha").to_owned()
    };
    let blob = t.state.settings.data_dir.join("snapshots").join(&sha);
    assert!(blob.exists());
    let (s, _, b) = t
        .call(Method::DELETE, &format!("/v1/snapshots/{}", ids[0]), None)
        .await;
    assert_eq!((s, b["state"].as_str()), (StatusCode::OK, Some("deleted")));
    assert!(!blob.exists());

    // The expiry sweep deletes what is past `expires_at`, with its blob.
    let expired = snapshot_row(&t, &id, &project, true, -1).await;
    let sha = {
        let (_, _, b) = t
            .call(Method::GET, &format!("/v1/snapshots/{expired}"), None)
            .await;
        b["sha256"].as_str().expect("sha").to_owned()
    };
    let swept = sandboxerd::lifecycle::snapshots::sweep_expired_snapshots(&t.state)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    let (_, _, b) = t
        .call(Method::GET, &format!("/v1/snapshots/{expired}"), None)
        .await;
    assert_eq!(b["state"], "deleted");
    assert!(!t
        .state
        .settings
        .data_dir
        .join("snapshots")
        .join(sha)
        .exists());
    assert_eq!(
        sandboxerd::lifecycle::snapshots::sweep_expired_snapshots(&t.state)
            .await
            .expect("sweep"),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_that_cannot_snapshot_answers_409() {
    require_bwrap();
    let exts = tempfile::tempdir().expect("tempdir");
    let yaml = std::fs::read_to_string(testkit::repo_root().join("extensions/ext.local.yaml"))
        .expect("read");
    let off = yaml
        .replace("snapshot: true", "snapshot: false")
        .replace("restore: true", "restore: false");
    assert_ne!(off, yaml);
    std::fs::write(exts.path().join("ext.local.yaml"), off).expect("write");
    // The other shipped profiles still need their extensions.
    std::fs::copy(
        testkit::repo_root().join("extensions/ext.compose-ssh.yaml"),
        exts.path().join("ext.compose-ssh.yaml"),
    )
    .expect("copy ext.compose-ssh.yaml");
    let path = exts.path().to_owned();
    let t = TestApp::with(move |_, s| s.extensions_dir = path).await;
    let sbx = sandbox(&t).await;
    let id = sbx["id"].as_str().expect("id");
    let got = t
        .call(Method::POST, &format!("/v1/sandboxes/{id}/snapshots"), None)
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "snapshot_unsupported", None);
    let snap = snapshot_row(&t, id, "default", true, 60_000).await;
    let got = t
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/restore"),
            Some(json!({"snapshot_id": snap})),
        )
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "snapshot_unsupported", None);
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"from_snapshot": snap})),
        )
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "snapshot_unsupported", None);
}

#[test]
fn the_openapi_document_describes_the_snapshot_routes() {
    let doc: Value = serde_json::from_str(
        &sandboxerd::http::openapi()
            .to_pretty_json()
            .expect("render"),
    )
    .expect("json");
    for (path, method, statuses) in [
        (
            "/v1/sandboxes/{id}/snapshots",
            "post",
            &["201", "202", "404", "409", "422"][..],
        ),
        ("/v1/sandboxes/{id}/snapshots", "get", &["200", "404"]),
        ("/v1/snapshots", "get", &["200", "400"]),
        ("/v1/snapshots/{id}", "get", &["200", "404"]),
        ("/v1/snapshots/{id}", "delete", &["200", "404"]),
        (
            "/v1/sandboxes/{id}/restore",
            "post",
            &["200", "404", "409", "422"],
        ),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is documented");
        for status in statuses {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} lists {status}"
            );
        }
    }
    assert!(
        doc["components"]["schemas"]["CreateSandbox"]["properties"]["from_snapshot"].is_object()
    );
    assert!(doc["components"]["schemas"]["Profile"]["properties"]["snapshot"].is_object());
}
