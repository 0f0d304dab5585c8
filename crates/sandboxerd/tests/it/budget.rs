//! Issue 17, the budget step-down and the TTL clock of a pause, on real
//! bubblewrap: when a project's balance reaches zero its running sandboxes
//! are paused (`[credits] on_exhausted = "pause"`, resumed by a grant) or
//! snapshotted and destroyed; a profile with `ttl.pause_stops_clock`
//! keeps its TTL while paused.

use std::path::Path;
use std::time::{Duration, Instant};

use sandboxer_api::{CreateSandbox, Sandbox, SandboxState};

use super::exit_snapshots::{destroyed, sh};
use super::pause::{counter, post, started, states};
use sandboxer_testkit as testkit;
use testkit::{require_bwrap, Daemon, TestDir};

/// A daemon metering every 200 ms with `on_exhausted = policy` (ext.local
/// costs 1 credit/hour: the first tick debits one credit from a project
/// that has none).
fn daemon(dir: &Path, policy: &str) -> Daemon {
    testkit::daemon!()
        .envs(&[
            ("SANDBOXER_CREDITS__ON_EXHAUSTED", policy),
            ("SANDBOXER_METERING_INTERVAL", "200ms"),
        ])
        .start(&dir.join("data"))
}

async fn until(d: &Daemon, id: &str, limit: Duration, done: impl Fn(&Sandbox) -> bool) -> Sandbox {
    let deadline = Instant::now() + limit;
    loop {
        let s = d.client.get(id, None).await.expect("get");
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "not reached in {limit:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_running_out_pauses_and_a_grant_resumes() {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon(dir.path(), "pause");
    let (id, wd) = started(&d, &testkit::local_shell()).await;
    let project = d.client.get(&id, None).await.expect("get").consumer.project;

    // The first debit takes the balance below zero: paused, not ended.
    let paused = until(&d, &id, Duration::from_secs(20), |s| {
        s.state == SandboxState::Paused
    })
    .await;
    assert_eq!(paused.termination, None, "{paused:?}");
    let balance = d.client.balance(&project).await.expect("balance");
    assert!(balance.balance <= 0, "{balance:?}");
    let frozen = counter(&wd);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counter(&wd),
        frozen,
        "a sandbox paused for credits made progress"
    );
    assert!(states(&id)
        .iter()
        .all(|s| matches!(s, 'D' | 'T' | 't' | 'Z')));
    let events = d.client.events(&id).await.expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.contains("ran out of credits")),
        "{events:?}"
    );
    // Its consumer cannot resume it while the project has nothing.
    let (status, problem) = post(&d, &id, "resume").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (402, Some("insufficient_credits")),
        "{problem}"
    );
    // A user's pause of it changes nothing (idempotent, still the budget's).
    let (status, _) = post(&d, &id, "pause").await;
    assert_eq!(status, 200);

    // A grant: the sandbox resumes by itself, its memory intact.
    let (status, _) = d
        .client
        .grant(&project, 100, "top up", None)
        .await
        .expect("grant");
    assert_eq!(status, 201);
    until(&d, &id, Duration::from_secs(20), |s| {
        s.state == SandboxState::Ready
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&wd) <= frozen + 2 {
        assert!(
            Instant::now() < deadline,
            "the counter did not go on after the grant"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = counter(&wd);
    assert!(after < frozen + 200, "{frozen} then {after}: memory lost");
    // The money adds up: what was debited is what the balance lost.
    let s = d.client.get(&id, None).await.expect("get");
    let balance = d.client.balance(&project).await.expect("balance");
    assert_eq!(
        balance.balance,
        100 - s.cost.accrued_credits,
        "{balance:?} {s:?}"
    );
    // It stays running while the balance is above zero (1 credit an hour).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        d.client.get(&id, None).await.expect("get").state,
        SandboxState::Ready
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_running_out_with_snapshot_and_destroy_keeps_the_work() {
    require_bwrap();
    let dir = TestDir::new();
    // ext.local at one credit a second, and a project with four.
    let (profiles, extensions) = super::credits::catalog(dir.path());
    let d = testkit::daemon!()
        .args([
            "--profiles",
            profiles.to_str().expect("utf-8"),
            "--extensions",
            extensions.to_str().expect("utf-8"),
        ])
        .envs(&[
            ("SANDBOXER_CREDITS__ON_EXHAUSTED", "snapshot_and_destroy"),
            ("SANDBOXER_METERING_INTERVAL", "250ms"),
        ])
        .start(&dir.path().join("data"));
    let probe = testkit::local_shell();
    let project = {
        let s = testkit::ready_sandbox(&d.client, &probe).await;
        d.client
            .destroy(&s.id, Some(Duration::from_secs(30)))
            .await
            .expect("destroy");
        s.consumer.project
    };
    let spent = d.client.balance(&project).await.expect("balance").balance;
    d.client
        .grant(&project, 4 - spent, "four seconds", None)
        .await
        .expect("grant");
    let sbx = testkit::ready_sandbox(&d.client, &testkit::local_shell()).await;
    sh(
        &d,
        &sbx.id,
        "echo 'kept when the credits ran out' > work.txt",
    )
    .await;
    let gone = destroyed(&d, &sbx.id, Duration::from_secs(30)).await;
    let t = gone.termination.clone().expect("termination");
    assert_eq!(t.reason.as_str(), "credits_exhausted", "{gone:?}");
    let snap = gone.exit_snapshot.clone().expect("an exit snapshot");
    assert!(d.client.balance(&project).await.expect("balance").balance <= 0);
    // With credits again, a fork of the exit snapshot holds the work.
    d.client
        .grant(&project, 1000, "top up", None)
        .await
        .expect("grant");
    let fork = CreateSandbox {
        from_snapshot: Some(snap),
        ..testkit::local_shell()
    };
    let forked = testkit::ready_sandbox(&d.client, &fork).await;
    assert_eq!(
        sh(&d, &forked.id, "cat work.txt").await,
        "kept when the credits ran out\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_running_out_with_destroy_ends_paused_sandboxes_too() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!()
        .envs(&[
            ("SANDBOXER_CREDITS__ON_EXHAUSTED", "destroy"),
            ("SANDBOXER_METERING_INTERVAL", "1s"),
        ])
        .start(&dir.path().join("data"));
    let (id, _) = started(&d, &testkit::local_shell()).await;
    let _ = post(&d, &id, "pause").await;
    let gone = destroyed(&d, &id, Duration::from_secs(30)).await;
    assert_eq!(
        gone.termination.as_ref().map(|t| t.reason.as_str()),
        Some("credits_exhausted")
    );
    assert_eq!(gone.exit_snapshot, None, "destroy takes no snapshot");
    assert!(states(&id).is_empty(), "processes left");
}

/// `profile.held`: local-shell with `ttl.pause_stops_clock`, 4 s by default.
fn held_daemon(dir: &Path) -> Daemon {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = testkit::repo_file("profiles/local-shell.yaml");
    assert!(
        text.contains("ttl:\n  default: 1h\n  max: 24h\n"),
        "the template changed"
    );
    std::fs::write(
        profiles.join("held.yaml"),
        text.replace("profile.local-shell", "profile.held").replace(
            "ttl:\n  default: 1h\n  max: 24h\n",
            "ttl:\n  pause_stops_clock: true\n  default: 4s\n  max: 1h\n",
        ),
    )
    .expect("write");
    testkit::daemon!()
        .args(["--profiles", profiles.to_str().expect("utf-8")])
        .start(&dir.join("data"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_that_stops_the_clock_keeps_the_ttl_left() {
    require_bwrap();
    let dir = TestDir::new();
    let d = held_daemon(dir.path());
    let req = CreateSandbox {
        profile: "profile.held".into(),
        ..CreateSandbox::default()
    };
    let (id, wd) = started(&d, &req).await;
    let before = d.client.get(&id, None).await.expect("get");
    let (status, paused) = post(&d, &id, "pause").await;
    assert_eq!(status, 200, "{paused}");
    let paused_at = chrono::Utc::now();
    let left = before.expires_at - paused_at;
    // Paused past its TTL: it is still there, frozen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = d.client.get(&id, None).await.expect("get");
    assert_eq!(
        s.state,
        SandboxState::Paused,
        "a stopped clock expired: {s:?}"
    );
    assert!(
        s.expires_at > paused_at + chrono::Duration::minutes(59),
        "{s:?}"
    );
    // Its TTL is held aside: an extend waits for the resume.
    let r = reqwest::Client::new()
        .patch(format!("{}/v1/sandboxes/{id}/ttl", d.url))
        .json(&serde_json::json!({"duration": "10s"}))
        .send()
        .await
        .expect("extend");
    assert_eq!(r.status(), 409);
    let problem: serde_json::Value = r.json().await.expect("json");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("clock stopped"),
        "{problem}"
    );
    let frozen = counter(&wd);

    let (status, resumed) = post(&d, &id, "resume").await;
    assert_eq!(status, 200, "{resumed}");
    let now = chrono::Utc::now();
    let s = d.client.get(&id, None).await.expect("get");
    let again = s.expires_at - now;
    // What was left when it paused, give or take the requests' own time.
    assert!(
        (again - left).num_milliseconds().abs() < 1500,
        "left {left:?} at the pause, {again:?} at the resume"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&wd) <= frozen + 2 {
        assert!(Instant::now() < deadline, "the counter did not go on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And then the clock runs out as usual.
    let gone = destroyed(&d, &id, Duration::from_secs(30)).await;
    assert_eq!(
        gone.termination.as_ref().map(|t| t.reason.as_str()),
        Some("ttl_expired")
    );
}
