//! Issue 17, exit snapshots: with `ttl.on_expire: snapshot`, a sandbox
//! whose TTL runs out is snapshotted before it is torn down, the snapshot
//! is its `exit_snapshot`, and a fork of it holds the files written just
//! before expiry; a crash in the middle leaves nothing stuck.

use std::path::Path;
use std::time::{Duration, Instant};

use sandboxer_api::{CreateSandbox, SandboxState, SnapshotState};

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, Daemon, TestDir};

/// Writes `profile.keep` (local-shell with a 4 s TTL and `on_expire:
/// snapshot`) into `dir/profiles`; answers that folder.
fn profiles(dir: &Path) -> std::path::PathBuf {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = testkit::repo_file("profiles/local-shell.yaml");
    assert!(
        text.contains("ttl:\n  default: 1h\n"),
        "the template changed"
    );
    std::fs::write(
        profiles.join("keep.yaml"),
        text.replace("profile.local-shell", "profile.keep").replace(
            "ttl:\n  default: 1h\n",
            "ttl:\n  on_expire: snapshot\n  default: 4s\n",
        ),
    )
    .expect("write");
    profiles
}

fn daemon(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    testkit::daemon!()
        .args(["--profiles", profiles(dir).to_str().expect("utf-8")])
        .envs(env)
        .start(&dir.join("data"))
}

fn keep() -> CreateSandbox {
    CreateSandbox {
        profile: "profile.keep".into(),
        ..CreateSandbox::default()
    }
}

/// Runs `cmd` by `/bin/sh -c` in sandbox `id` (at most 60 s); its result.
pub(super) async fn exec(d: &Daemon, id: &str, cmd: &str) -> sandboxer_api::ExecResult {
    d.client
        .exec(
            id,
            &sandboxer_api::ExecRequest {
                cmd: sandboxer_api::Command::Shell(cmd.into()),
                cwd: None,
                env: Default::default(),
                stdin: None,
                timeout: Some("60s".into()),
                service: None,
            },
        )
        .await
        .expect("exec")
}

/// [`exec`] that must succeed; its standard output.
pub(super) async fn sh(d: &Daemon, id: &str, cmd: &str) -> String {
    let r = exec(d, id, cmd).await;
    assert_eq!(r.exit_code, Some(0), "{cmd}: {}", r.stderr);
    r.stdout
}

/// Polls until sandbox `id` is `destroyed` (at most `limit`).
pub(super) async fn destroyed(d: &Daemon, id: &str, limit: Duration) -> sandboxer_api::Sandbox {
    let deadline = Instant::now() + limit;
    loop {
        let s = d.client.get(id, None).await.expect("get");
        if s.state == SandboxState::Destroyed {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "not destroyed in {limit:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_sandbox_leaves_a_snapshot_that_forks_into_its_files() {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon(dir.path(), &[]);
    let sbx = testkit::ready_sandbox(&d.client, &keep()).await;
    sh(
        &d,
        &sbx.id,
        "mkdir -p out && echo 'written just before expiry' > out/result.txt",
    )
    .await;
    let gone = destroyed(&d, &sbx.id, Duration::from_secs(30)).await;
    assert_eq!(
        gone.termination.as_ref().map(|t| t.reason.as_str()),
        Some("ttl_expired")
    );
    let snap_id = gone.exit_snapshot.clone().expect("an exit snapshot");
    let snap = d.client.get_snapshot(&snap_id).await.expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Ready, "{snap:?}");
    assert_eq!(snap.sandbox_id, sbx.id);
    assert!(
        snap.label
            .as_deref()
            .unwrap_or_default()
            .contains("TTL ran out"),
        "{snap:?}"
    );
    let events = d.client.events(&sbx.id).await.expect("events");
    assert!(
        events.items.iter().any(|e| e
            .reason
            .contains(&format!("exit snapshot {snap_id} started"))),
        "{events:?}"
    );
    // The work comes back in a fork.
    let fork = CreateSandbox {
        from_snapshot: Some(snap_id),
        ..keep()
    };
    let forked = testkit::ready_sandbox(&d.client, &fork).await;
    assert_eq!(
        sh(&d, &forked.id, "cat out/result.txt").await,
        "written just before expiry\n"
    );
    // A destroy asked for is not an expiry: no snapshot.
    let (_, gone) = d
        .client
        .destroy(&forked.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    assert_eq!(gone.exit_snapshot, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_the_exit_snapshot_leaves_nothing_stuck() {
    require_bwrap();
    let dir = TestDir::new();
    let mut d = daemon(dir.path(), &[("SANDBOXER_FAULT", "teardown.exit_snapshot")]);
    let sbx = testkit::ready_sandbox(&d.client, &keep()).await;
    sh(&d, &sbx.id, "echo x > x.txt").await;
    // The TTL runs out; the daemon dies as the exit snapshot starts.
    let status = tokio::task::spawn_blocking(move || {
        let s = d.child.wait().expect("wait");
        (d, s)
    });
    let (d_dead, status) = tokio::time::timeout(Duration::from_secs(30), status)
        .await
        .expect("the daemon did not reach the crash point")
        .expect("join");
    assert!(!status.success());
    drop(d_dead);
    let d = daemon(dir.path(), &[]);
    let gone = destroyed(&d, &sbx.id, Duration::from_secs(30)).await;
    // Recorded before the capture began, so it is not taken twice; the
    // interrupted capture is `failed`, and the teardown went on.
    let snap_id = gone.exit_snapshot.clone().expect("recorded");
    let snap = d.client.get_snapshot(&snap_id).await.expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Failed, "{snap:?}");
    let q = sandboxctl::SnapshotQuery {
        sandbox: Some(sbx.id.clone()),
        include_all: true,
        ..Default::default()
    };
    assert_eq!(
        d.client.list_snapshots(&q).await.expect("list").items.len(),
        1
    );
    assert!(testkit::sandbox_dirs(&d.data_dir).is_empty());
}
