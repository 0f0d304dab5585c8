//! TTL enforcement, the start-up reconciler, crash points and the event
//! outbox, against the real daemon and real bubblewrap sandboxes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandboxctl::api::{CreateSandbox, Sandbox, SandboxState};
use sandboxctl::{Client, ListQuery};

use sandboxer_testkit as testkit;
use testkit::{alive, require_bwrap, sandbox_dirs};

fn local_shell(ttl: Option<&str>) -> CreateSandbox {
    CreateSandbox {
        ttl: ttl.map(str::to_owned),
        ..testkit::local_shell()
    }
}

async fn all(c: &Client) -> Vec<Sandbox> {
    c.list_all(&ListQuery {
        include_all: true,
        ..ListQuery::default()
    })
    .await
    .expect("list")
}

/// Poll until no sandbox is in a transitional state (or fail after `limit`).
async fn settled(c: &Client, limit: Duration) -> Vec<Sandbox> {
    let start = Instant::now();
    loop {
        let rows = all(c).await;
        let moving: Vec<_> = rows
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    SandboxState::Requested
                        | SandboxState::Provisioning
                        | SandboxState::Destroying
                        | SandboxState::Expired
                )
            })
            .map(|s| (s.id.clone(), s.state))
            .collect();
        if moving.is_empty() {
            return rows;
        }
        assert!(
            start.elapsed() < limit,
            "rows still in flight after {limit:?}: {moving:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing on the machine without a live row, and every live row backed.
fn assert_nothing_leaked(data_dir: &Path, rows: &[Sandbox]) {
    let live: HashSet<String> = rows
        .iter()
        .filter(|s| s.state.is_live())
        .map(|s| s.id.clone())
        .collect();
    for s in rows {
        assert!(
            matches!(
                s.state,
                SandboxState::Ready
                    | SandboxState::Active
                    | SandboxState::Destroyed
                    | SandboxState::Failed
            ),
            "row {} left in {}",
            s.id,
            s.state
        );
    }
    let procs = testkit::sandbox_processes(data_dir);
    assert!(
        procs.is_subset(&live),
        "processes without a live row: {:?}",
        procs.difference(&live).collect::<Vec<_>>()
    );
    let dirs: HashSet<String> = sandbox_dirs(data_dir).into_iter().collect();
    assert!(
        dirs.is_subset(&live),
        "workspaces without a live row: {:?}",
        dirs.difference(&live).collect::<Vec<_>>()
    );
    for id in &live {
        assert!(procs.contains(id), "live row {id} has no process");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_ttl_sandbox_is_expired_and_destroyed_within_two_ticks() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let d = testkit::daemon!()
        .envs(&[("SANDBOXER_REAPER_INTERVAL", "1s")])
        .start(dir.path());
    let (_, sbx) = d
        .client
        .create(
            &local_shell(Some("2s")),
            Some(Duration::from_secs(30)),
            None,
        )
        .await
        .expect("create");
    assert_eq!(sbx.state, SandboxState::Ready);
    let pid = sbx
        .reachability
        .as_ref()
        .and_then(|r| r["pid"].as_i64())
        .expect("pid");
    let start = Instant::now();
    let gone = loop {
        let s = d.client.get(&sbx.id, None).await.expect("get");
        if s.state == SandboxState::Destroyed {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not destroyed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!alive(pid));
    let events = d.client.events(&sbx.id).await.expect("events");
    let expired = events
        .items
        .iter()
        .find(|e| e.to_state == SandboxState::Expired)
        .expect("an expired event");
    let late = expired.at - gone.expires_at;
    // Two ticks of 1s, plus slack for a loaded machine.
    assert!(
        late <= chrono::Duration::milliseconds(3500),
        "expired {late} after expires_at"
    );
    assert!(
        late >= chrono::Duration::zero(),
        "never before expires_at: {late}"
    );
    assert_eq!(
        events.items.last().map(|e| e.to_state),
        Some(SandboxState::Destroyed)
    );
    let end = gone.termination.as_ref().expect("termination");
    assert_eq!(end.reason, sandboxer_api::TerminationReason::TtlExpired);
    assert_eq!(end.at, expired.at, "decided by the expiry");
    assert_eq!(
        expired.termination,
        Some(sandboxer_api::TerminationReason::TtlExpired)
    );
    assert!(events
        .items
        .iter()
        .filter(|e| e.id != expired.id)
        .all(|e| e.termination.is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_that_passed_while_the_daemon_was_down_is_enforced_at_start() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let mut d = testkit::daemon!().start(dir.path());
    let (_, sbx) = d
        .client
        .create(
            &local_shell(Some("1s")),
            Some(Duration::from_secs(30)),
            None,
        )
        .await
        .expect("create");
    let pid = sbx
        .reachability
        .as_ref()
        .and_then(|r| r["pid"].as_i64())
        .expect("pid");
    d.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(alive(pid), "nothing kills it while the daemon is down");
    let d = testkit::daemon!().start(dir.path());
    let s = d.client.get(&sbx.id, None).await.expect("get");
    let s = if s.state == SandboxState::Destroyed {
        s
    } else {
        let start = Instant::now();
        loop {
            let s = d.client.get(&sbx.id, None).await.expect("get");
            if s.state == SandboxState::Destroyed {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "not enforced after restart: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(s.state, SandboxState::Destroyed);
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sandboxes_are_reaped_and_touch_keeps_them() {
    require_bwrap();
    let dir = testkit::TestDir::new();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = std::fs::read_to_string(testkit::repo_root().join("profiles/local-shell.yaml"))
        .expect("profile");
    std::fs::write(
        profiles.join("idle.yaml"),
        text.replace("profile.local-shell", "profile.idle-shell")
            .replace("  max: 24h", "  max: 24h\n  idle_reap: 2s"),
    )
    .expect("write");
    let data = dir.path().join("data");
    let d = testkit::daemon!()
        .args(["--profiles", profiles.to_str().expect("utf-8")])
        .start(&data);
    let req = CreateSandbox {
        profile: "profile.idle-shell".into(),
        ..CreateSandbox::default()
    };
    let (_, kept) = d
        .client
        .create(&req, Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    let (_, idle) = d
        .client
        .create(&req, Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    let start = Instant::now();
    loop {
        d.client
            .touch(&kept.id)
            .await
            .expect("touch keeps it alive");
        let s = d.client.get(&idle.id, None).await.expect("get");
        if s.state == SandboxState::Destroyed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "idle sandbox not reaped: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        d.client.get(&kept.id, None).await.expect("get").state,
        SandboxState::Active
    );
    let events = d.client.events(&idle.id).await.expect("events");
    assert!(events
        .items
        .iter()
        .any(|e| e.to_state == SandboxState::Destroying
            && e.reason.contains("idle")
            && e.termination == Some(sandboxer_api::TerminationReason::IdleReaped)));
    let gone = d.client.get(&idle.id, None).await.expect("get");
    assert_eq!(
        gone.termination.map(|t| t.reason),
        Some(sandboxer_api::TerminationReason::IdleReaped)
    );
    assert!(d
        .client
        .get(&kept.id, None)
        .await
        .expect("get")
        .termination
        .is_none());
    let metrics = d
        .client
        .request_json(sandboxctl::Method::GET, "/metrics", None)
        .await
        .expect("metrics")
        .1;
    assert!(metrics
        .as_str()
        .expect("text")
        .contains("sandboxer_sandboxes_idle_reaped_total 1"));
    d.client
        .destroy(&kept.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_crash_point_recovers_with_nothing_leaked() {
    require_bwrap();
    for point in sandboxerd::fault::POINTS {
        let dir = testkit::TestDir::new();
        let data = dir.path();
        let mut d = testkit::daemon!()
            .envs(&[("SANDBOXER_FAULT", point)])
            .start(data);
        let teardown = point.starts_with("teardown.");
        if teardown {
            let (_, sbx) = d
                .client
                .create(&local_shell(None), Some(Duration::from_secs(30)), None)
                .await
                .expect("create");
            assert_eq!(sbx.state, SandboxState::Ready, "{point}");
            let _ = d
                .client
                .destroy(&sbx.id, Some(Duration::from_secs(30)))
                .await;
        } else {
            let _ = d
                .client
                .create(&local_shell(None), Some(Duration::from_secs(30)), None)
                .await;
        }
        let start = Instant::now();
        let status = loop {
            if let Some(status) = d.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{point}: the daemon never reached the crash point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            !status.success(),
            "{point}: the daemon aborted at the crash point"
        );
        drop(d);

        let d = testkit::daemon!().start(data);
        let rows = settled(&d.client, Duration::from_secs(30)).await;
        assert_eq!(rows.len(), 1, "{point}: the row survived the crash");
        assert_nothing_leaked(data, &rows);
        if teardown {
            assert_eq!(
                rows[0].state,
                SandboxState::Destroyed,
                "{point}: teardown finished after restart"
            );
        }
        // Whatever survived can be destroyed cleanly.
        for s in rows
            .iter()
            .filter(|s| s.state.is_live() || s.state == SandboxState::Failed)
        {
            d.client
                .destroy(&s.id, Some(Duration::from_secs(30)))
                .await
                .expect("destroy");
        }
        let rows = settled(&d.client, Duration::from_secs(30)).await;
        assert!(
            rows.iter().all(|s| s.state == SandboxState::Destroyed),
            "{point}: {rows:?}"
        );
        assert!(
            testkit::sandbox_processes(data).is_empty() && sandbox_dirs(data).is_empty(),
            "{point}: leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_teardown_stays_destroying_and_is_retried_until_it_succeeds() {
    require_bwrap();
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test bind-mounts a directory to make teardown fail: run it as root"
    );
    let dir = testkit::TestDir::new();
    // No disk image: a lazy unmount of the sandbox's own filesystem would
    // take the busy mount below with it, and the teardown would not fail.
    let d = testkit::daemon!()
        .envs(&[
            ("SANDBOXER_REAPER_INTERVAL", "200ms"),
            ("SANDBOXER_LOCAL__DISK", "off"),
        ])
        .start(dir.path());
    let (_, sbx) = d
        .client
        .create(&local_shell(None), Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    let workdir = sbx
        .reachability
        .as_ref()
        .and_then(|r| r["workdir"].as_str())
        .expect("workdir")
        .to_owned();
    // A mount point inside the workspace: removing the directory fails (EBUSY).
    let mnt = Path::new(&workdir).join("busy");
    std::fs::create_dir(&mnt).expect("mkdir");
    let src = tempfile::tempdir().expect("src");
    let ok = std::process::Command::new("mount")
        .args(["--bind"])
        .arg(src.path())
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount --bind failed");
    let (status, s) = d
        .client
        .destroy(&sbx.id, Some(Duration::from_secs(3)))
        .await
        .expect("destroy");
    assert_eq!(
        (status, s.state),
        (202, SandboxState::Destroying),
        "teardown cannot finish while the mount is there"
    );
    let failure = s.failure.expect("the failed attempt is recorded");
    assert_eq!(failure.code, "teardown_failed");
    let ok = std::process::Command::new("umount")
        .arg(&mnt)
        .status()
        .expect("umount");
    assert!(ok.success());
    let s = d.client.get(&sbx.id, None).await.expect("get");
    let start = Instant::now();
    let mut s = s;
    while s.state != SandboxState::Destroyed {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "retry never succeeded: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = d.client.get(&sbx.id, None).await.expect("get");
    }
    assert!(s.failure.is_none());
    assert!(!Path::new(&workdir).exists());
    let metrics = d
        .client
        .request_json(sandboxctl::Method::GET, "/metrics", None)
        .await
        .expect("metrics")
        .1;
    assert!(!metrics
        .as_str()
        .expect("text")
        .contains("sandboxer_teardown_retries_total 0"));
}

/// A State Hub stand-in on loopback that refuses the first `fail_first` posts.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use axum::http::StatusCode;
    let got = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0usize));
    let got2 = got.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let got = got2.clone();
            let attempts = attempts.clone();
            async move {
                let mut n = attempts.lock().expect("lock");
                *n += 1;
                if *n <= fail_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                got.lock().expect("lock").push(v);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/events"), got)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_a_flaky_receiver_in_order_with_no_loss() {
    require_bwrap();
    let (url, got) = receiver(5).await;
    let dir = testkit::TestDir::new();
    let d = testkit::daemon!()
        .envs(&[("SANDBOXER_STATE_HUB_URL", &url)])
        .start(dir.path());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, s) = d
            .client
            .create(&local_shell(None), Some(Duration::from_secs(30)), None)
            .await
            .expect("create");
        d.client.touch(&s.id).await.expect("touch");
        ids.push(s.id);
    }
    for id in &ids {
        d.client
            .destroy(id, Some(Duration::from_secs(30)))
            .await
            .expect("destroy");
    }
    // Everything the API lists must arrive.
    let mut expected = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/events?limit=7&after={a}"),
            None => "/v1/events?limit=7".to_owned(),
        };
        let (status, page) = d
            .client
            .request_json(sandboxctl::Method::GET, &path, None)
            .await
            .expect("events");
        assert_eq!(status, 200);
        for e in page["items"].as_array().expect("items") {
            expected.push((
                e["sandbox_id"].as_str().expect("id").to_owned(),
                e["id"].as_str().expect("id").to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        expected.len(),
        3 * 6,
        "requested, provisioning, ready, active, destroying, destroyed per sandbox"
    );
    let start = Instant::now();
    loop {
        let delivered: HashSet<String> = got
            .lock()
            .expect("lock")
            .iter()
            .map(|v| v["event_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if expected.iter().all(|(_, id)| delivered.contains(id)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not all events delivered: {} of {}",
            delivered.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In order per sandbox (first delivery of each event), and with the facts a receiver needs.
    let received = got.lock().expect("lock").clone();
    let mut seen = HashSet::new();
    let mut per_sandbox: HashMap<String, Vec<String>> = HashMap::new();
    for v in &received {
        let id = v["event_id"].as_str().expect("event_id").to_owned();
        if seen.insert(id.clone()) {
            per_sandbox
                .entry(v["sandbox_id"].as_str().expect("sandbox_id").to_owned())
                .or_default()
                .push(id);
        }
        assert_eq!(v["profile"], "profile.local-shell");
        assert_eq!(v["extension"], "ext.local");
        assert_eq!(v["consumer"]["project"], "default");
        assert!(v["to_state"].is_string() && v["at"].is_string());
        assert!(v["expires_at"].is_string(), "{v}");
        // Only the event that decided the end says why it ended.
        if v["to_state"] == "destroying" {
            assert_eq!(v["termination"]["reason"], "destroyed", "{v}");
            assert!(v["termination"]["at"].is_string(), "{v}");
        } else {
            assert!(v["termination"].is_null(), "{v}");
        }
    }
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (sid, eid) in expected {
        want.entry(sid).or_default().push(eid);
    }
    for (sid, ids) in want {
        assert_eq!(
            per_sandbox.get(&sid),
            Some(&ids),
            "events of {sid} in order"
        );
    }
    let metrics = d
        .client
        .request_json(sandboxctl::Method::GET, "/metrics", None)
        .await
        .expect("metrics")
        .1;
    let text = metrics.as_str().expect("text").to_owned();
    assert!(text.contains("sandboxer_outbox_backlog 0"), "{text}");
    assert!(
        !text.contains("sandboxer_event_delivery_failures_total 0\n"),
        "the first attempts failed: {text}"
    );
}
