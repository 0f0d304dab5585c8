//! Issue 17, pause and resume on real bubblewrap: a paused sandbox's
//! processes stop (no progress, every one of them stopped), exec is
//! refused, and after resume its background process goes on with its
//! memory intact; both are idempotent; a paused sandbox's TTL still runs;
//! `kill -9` between the freeze and its record is put right at the next
//! start.

use std::path::Path;
use std::time::{Duration, Instant};

use sandboxer_api::{CreateSandbox, SandboxState, StartProcess};
use serde_json::Value;

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, Daemon, TestDir};

/// A counter kept in a shell variable (in memory), written to `n` every
/// 50 ms: it goes on from where it was only if the memory was kept.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /workspace/n.tmp; mv /workspace/n.tmp /workspace/n; sleep 0.05; done";

pub(super) async fn post(d: &Daemon, id: &str, what: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes/{id}/{what}", d.url))
        .send()
        .await
        .expect(what);
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

pub(super) fn counter(workdir: &Path) -> u64 {
    std::fs::read_to_string(workdir.join("n"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The state letters (/proc/<pid>/stat) of the host processes in sandbox
/// `id`'s cgroup.
pub(super) fn states(id: &str) -> Vec<char> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if !cgroups.lines().any(|l| l.ends_with(&format!("/{id}"))) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(state) = stat.rsplit(") ").next().and_then(|r| r.chars().next()) {
                out.push(state);
            }
        }
    }
    out
}

pub(super) async fn started(d: &Daemon, req: &CreateSandbox) -> (String, std::path::PathBuf) {
    let sbx = testkit::ready_sandbox(&d.client, req).await;
    let wd = testkit::workdir(&sbx);
    start_counter(d, &sbx.id, &wd).await;
    (sbx.id, wd)
}

/// Starts [`COUNTER`] in sandbox `id` as a background process and waits
/// until it has counted to 3 in `wd` (the workspace on the host).
pub(super) async fn start_counter(d: &Daemon, id: &str, wd: &Path) {
    d.client
        .start_process(
            id,
            &StartProcess {
                cmd: sandboxer_api::Command::Shell(COUNTER.into()),
                cwd: None,
                env: Default::default(),
                tag: None,
                service: None,
            },
        )
        .await
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(wd) < 3 {
        assert!(Instant::now() < deadline, "the counter did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_sandbox_stops_and_resumes_with_its_memory() {
    require_bwrap();
    let dir = TestDir::new();
    // As root: the cgroup freezer.
    let d = testkit::daemon!().start(dir.path());
    stops_and_resumes(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_sandbox_stops_and_resumes_with_its_memory_unprivileged() {
    require_bwrap();
    let Some((uid, gid)) = super::limits::unprivileged() else {
        return;
    };
    // An unprivileged daemon's delegated cgroups have no freezer: SIGSTOP.
    let dir = TestDir::new();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    for p in [dir.path(), data.as_path()] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
    }
    let d = testkit::daemon!().user((uid, gid)).start(&data);
    stops_and_resumes(&d).await;
}

async fn stops_and_resumes(d: &Daemon) {
    let (id, wd) = started(d, &testkit::local_shell()).await;

    let (status, sbx) = post(d, &id, "pause").await;
    assert_eq!(
        (status, sbx["state"].as_str()),
        (200, Some("paused")),
        "{sbx}"
    );
    assert!(sbx["paused_at"].is_string(), "{sbx}");
    let states_now = states(&id);
    assert!(!states_now.is_empty(), "no process of the sandbox found");
    // Frozen by the cgroup freezer (`D`), or stopped by SIGSTOP where
    // there is none (`T`).
    assert!(
        states_now
            .iter()
            .all(|s| matches!(s, 'D' | 'T' | 't' | 'Z')),
        "every process is frozen: {states_now:?}"
    );
    let frozen = counter(&wd);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(counter(&wd), frozen, "a paused sandbox made progress");
    // Idempotent, and nothing reaches inside meanwhile.
    let (status, again) = post(d, &id, "pause").await;
    assert_eq!((status, again["state"].as_str()), (200, Some("paused")));
    let r = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes/{id}/exec", d.url))
        .json(&serde_json::json!({"cmd": "true"}))
        .send()
        .await
        .expect("exec");
    assert_eq!(r.status(), 409, "exec on a paused sandbox");
    let events = d.client.events(&id).await.expect("events");
    assert!(
        events.items.iter().any(|e| e.reason == "paused"),
        "{events:?}"
    );

    let (status, sbx) = post(d, &id, "resume").await;
    assert_eq!(
        (status, sbx["state"].as_str()),
        (200, Some("ready")),
        "{sbx}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&wd) <= frozen + 2 {
        assert!(Instant::now() < deadline, "the counter did not go on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It went on from where it stood: its memory was kept (a restarted
    // counter would be back near 1).
    let after = counter(&wd);
    assert!(
        after > frozen && after < frozen + 200,
        "{frozen} then {after}"
    );
    let (status, again) = post(d, &id, "resume").await;
    assert_eq!((status, again["state"].as_str()), (200, Some("ready")));

    // A paused sandbox can be destroyed; nothing of it is left.
    post(d, &id, "pause").await;
    let (_, gone) = d
        .client
        .destroy(&id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed);
    assert!(states(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_sandboxs_ttl_runs_and_states_are_checked() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let req = CreateSandbox {
        ttl: Some("3s".into()),
        ..testkit::local_shell()
    };
    let (id, _) = started(&d, &req).await;
    let (status, _) = post(&d, &id, "pause").await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = d.client.get(&id, None).await.expect("get");
        if s.state == SandboxState::Destroyed {
            assert_eq!(
                s.termination.as_ref().map(|t| t.reason.as_str()),
                Some("ttl_expired")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a paused sandbox did not expire: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(states(&id).is_empty(), "processes left");
    // Ended sandboxes are neither paused nor resumed.
    let (status, p) = post(&d, &id, "pause").await;
    assert_eq!(
        (status, p["code"].as_str()),
        (409, Some("invalid_state")),
        "{p}"
    );
    let (status, p) = post(&d, &id, "resume").await;
    assert_eq!(
        (status, p["code"].as_str()),
        (409, Some("invalid_state")),
        "{p}"
    );
    let (status, _) = post(&d, "sbx_01NOSUCH000000000000000000", "pause").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_freeze_and_record_is_put_right_at_start() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let mut d = testkit::daemon!()
        .env("SANDBOXER_FAULT", "pause.after_backend")
        .start(&data);
    let (id, wd) = started(&d, &testkit::local_shell()).await;
    // Frozen, then the daemon dies before recording it: the row says ready.
    let _ = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes/{id}/pause", d.url))
        .send()
        .await;
    let status = d.child.wait().expect("wait");
    assert!(!status.success());
    let frozen = counter(&wd);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counter(&wd), frozen, "the freeze happened");
    drop(d);
    // The next start brings the processes to what the row records: running.
    let d = testkit::daemon!().start(&data);
    assert!(d.client.get(&id, None).await.expect("get").state.is_live());
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&wd) <= frozen + 2 {
        assert!(
            Instant::now() < deadline,
            "the sandbox stayed frozen after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
