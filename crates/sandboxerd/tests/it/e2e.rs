//! End-to-end: the real `sandboxerd` binary on port 0, real bubblewrap
//! sandboxes, driven through the `sandboxctl` client crate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sandboxctl::api::SandboxState;
use sandboxctl::{ClientError, ListQuery};

use sandboxer_testkit as testkit;
use testkit::{alive, local_shell, require_bwrap, run_inside};

fn pid_of(reachability: &serde_json::Value) -> i64 {
    reachability["pid"].as_i64().expect("reachability.pid")
}

#[tokio::test(flavor = "multi_thread")]
async fn full_lifecycle_on_real_bubblewrap() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let c = &d.client;

    let mut req = local_shell();
    req.labels = BTreeMap::from([("team".into(), "e2e".into())]);
    req.ttl = Some("30m".into());
    let (status, sbx) = c
        .create(&req, Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "ready within the wait: {sbx:?}");
    assert_eq!(sbx.state, SandboxState::Ready);
    assert_eq!(
        (sbx.extension.as_str(), sbx.host.as_str(), sbx.generation),
        ("ext.local", "local", 1)
    );
    assert_eq!(sbx.consumer.project, "default");
    let reach = sbx.reachability.clone().expect("reachability when ready");
    assert_eq!(reach["kind"], "local");
    let pid = pid_of(&reach);
    assert!(alive(pid), "the sandbox init runs on the host");
    let workdir = reach["workdir"].as_str().expect("workdir").to_owned();
    assert!(Path::new(&workdir).is_dir());

    // Inside: its own pid namespace (bubblewrap's init is pid 1), no network
    // but loopback, the workspace as cwd, read-only system dirs.
    let out = run_inside(
        &reach,
        &["sh", "-c", "cat /proc/1/comm; echo $$; pwd; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; hostname; \
           echo hi > made-inside; touch /usr/nope 2>/dev/null && echo usr-writable || echo usr-readonly"],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "bwrap",
        "pid 1 inside is the sandbox's init: {out}"
    );
    let inner_pid: i64 = lines[1].parse().expect("pid");
    assert!(
        inner_pid < 100,
        "a fresh pid namespace numbers from 1: {out}"
    );
    assert_eq!(lines[2], "/workspace");
    assert_eq!(lines[3], "lo", "only loopback: {out}");
    assert_eq!(lines.len(), 6, "exactly one interface: {out}");
    assert!(lines[4].starts_with("sbx-"), "own hostname: {out}");
    assert_eq!(lines[5], "usr-readonly");
    assert_eq!(
        std::fs::read_to_string(Path::new(&workdir).join("made-inside")).expect("file"),
        "hi\n"
    );

    // Get, list with filters, touch (ready → active), extend.
    assert_eq!(
        c.get(&sbx.id, None).await.expect("get").state,
        SandboxState::Ready
    );
    let q = ListQuery {
        labels: vec![("team".into(), "e2e".into())],
        state: Some("ready".into()),
        ..ListQuery::default()
    };
    let listed = c.list(&q).await.expect("list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        [sbx.id.as_str()]
    );
    let touched = c.touch(&sbx.id).await.expect("touch");
    assert_eq!(touched.state, SandboxState::Active);
    let ext = c.extend_ttl(&sbx.id, "1h").await.expect("extend");
    assert!(!ext.ttl_capped);
    assert_eq!((ext.sandbox.expires_at - sbx.expires_at).num_minutes(), 60);

    // Recreate: same id, generation 2, a new init, the old one gone, a fresh workspace.
    let again = c
        .recreate(&sbx.id, Some("10m".into()))
        .await
        .expect("recreate");
    assert_eq!((again.id.as_str(), again.generation), (sbx.id.as_str(), 2));
    let again = c
        .get(&sbx.id, Some(Duration::from_secs(30)))
        .await
        .expect("wait ready");
    assert_eq!(again.state, SandboxState::Ready, "{again:?}");
    let pid2 = pid_of(again.reachability.as_ref().expect("reachability"));
    assert_ne!(pid, pid2);
    assert!(!alive(pid), "the first generation's init was killed");
    assert!(
        !Path::new(&workdir).join("made-inside").exists(),
        "fresh workspace"
    );

    // Destroy: the process tree and the workspace go; destroy stays idempotent.
    let (status, gone) = c
        .destroy(&sbx.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    assert_eq!((status, gone.state), (200, SandboxState::Destroyed));
    assert!(gone.destroyed_at.is_some());
    assert!(!alive(pid2), "the sandbox's processes are gone");
    assert!(!Path::new(&workdir).exists(), "the workspace is removed");
    let (status, again) = c.destroy(&sbx.id, None).await.expect("destroy again");
    assert_eq!((status, again.state), (200, SandboxState::Destroyed));

    // The whole history, oldest first.
    let events = c.events(&sbx.id).await.expect("events");
    let path: Vec<(u32, SandboxState)> = events
        .items
        .iter()
        .map(|e| (e.generation, e.to_state))
        .collect();
    assert_eq!(
        path,
        [
            (1, SandboxState::Requested),
            (1, SandboxState::Provisioning),
            (1, SandboxState::Ready),
            (1, SandboxState::Active),
            (2, SandboxState::Provisioning),
            (2, SandboxState::Ready),
            (2, SandboxState::Destroying),
            (2, SandboxState::Destroyed),
        ]
    );
    assert!(events.items[0].from_state.is_none());

    // Errors come back as problems with stable codes.
    let err = c.get("sbx_nope", None).await.expect_err("404");
    assert!(
        matches!(&err, ClientError::Api { status: 404, problem } if problem.code == "sandbox_not_found"),
        "{err:?}"
    );
    let err = c.extend_ttl(&sbx.id, "1h").await.expect_err("409");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("invalid_state"))
    );
    let mut bad = local_shell();
    bad.ttl = Some("48h".into());
    let err = c.create(&bad, None, None).await.expect_err("422");
    assert_eq!(
        (err.status(), err.code()),
        (Some(422), Some("ttl_exceeds_max"))
    );

    let metrics = c
        .request_json(sandboxctl::Method::GET, "/metrics", None)
        .await
        .expect("metrics")
        .1;
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains("sandboxer_create_ready_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_create_through_the_client() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let c = &d.client;
    let req = local_shell();
    let (_, a) = c
        .create(&req, Some(Duration::from_secs(30)), Some("job-42"))
        .await
        .expect("create");
    let (status, b) = c
        .create(&req, Some(Duration::from_secs(30)), Some("job-42"))
        .await
        .expect("replay");
    assert_eq!(a.id, b.id, "same key, same body: same sandbox");
    assert_eq!(status, 201);
    let mut other = local_shell();
    other.ttl = Some("5m".into());
    let err = c
        .create(&other, None, Some("job-42"))
        .await
        .expect_err("409");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("idempotency_conflict"))
    );
    let all = c
        .list_all(&ListQuery {
            include_all: true,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    c.destroy(&a.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_outlive_kill_9_of_the_daemon() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let mut d = testkit::daemon!().start(dir.path());
    let (_, sbx) = d
        .client
        .create(&local_shell(), Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    assert_eq!(sbx.state, SandboxState::Ready);
    let reach = sbx.reachability.clone().expect("reachability");
    let pid = pid_of(&reach);
    d.kill9();
    assert!(
        alive(pid),
        "the sandbox is not a child that dies with the daemon"
    );

    let d = testkit::daemon!().start(dir.path());
    let after = d
        .client
        .get(&sbx.id, None)
        .await
        .expect("get after restart");
    assert_eq!(after.state, SandboxState::Ready);
    assert_eq!(after.reachability, Some(reach.clone()));
    assert!(alive(pid));
    assert_eq!(
        run_inside(&reach, &["cat", "/proc/1/comm"]).trim(),
        "bwrap",
        "still enterable"
    );
    let (status, gone) = d
        .client
        .destroy(&sbx.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    assert_eq!((status, gone.state), (200, SandboxState::Destroyed));
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_daemon_but_not_the_sandboxes() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let mut d = testkit::daemon!().start(dir.path());
    let (_, sbx) = d
        .client
        .create(&local_shell(), Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    let pid = pid_of(sbx.reachability.as_ref().expect("reachability"));
    let status = d.terminate();
    assert!(status.success(), "graceful exit: {status:?}");
    assert!(alive(pid));
    let d = testkit::daemon!().start(dir.path());
    d.client
        .destroy(&sbx.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_bubblewrap_the_extension_says_so_and_creates_fail_with_a_reason() {
    let dir = testkit::TestDir::new();
    // A PATH with no bwrap on it.
    let bin = tempfile::tempdir().expect("bin");
    let d = testkit::daemon!()
        .envs(&[("PATH", bin.path().to_str().expect("utf-8"))])
        .start(dir.path());
    let ext = d.client.extension("ext.local").await.expect("extension");
    assert!(!ext.availability.available);
    assert!(
        ext.availability
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("bubblewrap")),
        "{ext:?}"
    );
    let (status, sbx) = d
        .client
        .create(&local_shell(), Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    assert_eq!((status, sbx.state), (200, SandboxState::Failed));
    let failure = sbx.failure.expect("failure");
    assert_eq!(failure.code, "backend_unavailable");
    assert!(failure.message.contains("bubblewrap"), "{failure:?}");
}

/// Run the binary to completion and return (success, stderr).
fn run_daemon(args: &[&str]) -> (bool, String) {
    let out = testkit::daemon_bin!()
        .command()
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run sandboxerd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_catalog_or_database_stops_the_start_naming_the_path() {
    let dir = testkit::TestDir::new();
    let data = dir.path().join("data");
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let root = testkit::repo_root();
    let text = std::fs::read_to_string(root.join("profiles/local-shell.yaml")).expect("profile");
    std::fs::write(
        profiles.join("broken.yaml"),
        text.replace("max: 24h", "max: forever"),
    )
    .expect("write");
    let (ok, err) = run_daemon(&[
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--profiles",
        profiles.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("broken.yaml") && err.contains("ttl.max"),
        "names file and field: {err}"
    );

    std::fs::write(
        profiles.join("broken.yaml"),
        text.replace("isolation: process", "isolation: magic"),
    )
    .expect("write");
    let (ok, err) = run_daemon(&[
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--profiles",
        profiles.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("broken.yaml") && err.contains("isolation"),
        "{err}"
    );

    let (ok, err) = run_daemon(&[
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--profiles",
        "/nonexistent/profiles",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/profiles"), "{err}");

    // A database file that is not SQLite.
    let bad_data = dir.path().join("bad-data");
    std::fs::create_dir_all(&bad_data).expect("mkdir");
    std::fs::write(
        bad_data.join("sandboxer.db"),
        "this is not a database, just text".repeat(200),
    )
    .expect("write");
    let (ok, err) = run_daemon(&["--data-dir", bad_data.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(err.contains("sandboxer.db"), "names the database: {err}");

    // A non-loopback address without tokens.
    let out = testkit::daemon_bin!()
        .command()
        .args([
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
