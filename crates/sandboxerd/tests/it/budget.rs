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

/// The project of a daemon without tokens.
const PROJECT: &str = "default";

/// A daemon metering every 200 ms with `on_exhausted = policy`, where
/// ext.local costs one credit a second.
fn daemon(dir: &Path, policy: &str) -> Daemon {
    let (profiles, extensions) = super::credits::catalog(dir);
    testkit::daemon!()
        .args([
            "--profiles",
            profiles.to_str().expect("utf-8"),
            "--extensions",
            extensions.to_str().expect("utf-8"),
        ])
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

async fn grant(d: &Daemon, amount: i64) {
    let (status, _) = d
        .client
        .grant(PROJECT, amount, "test grant", None)
        .await
        .expect("grant");
    assert_eq!(status, 201);
}

/// The reasons of sandbox `id`'s events, oldest first.
async fn reasons(d: &Daemon, id: &str) -> Vec<String> {
    let events = d.client.events(id).await.expect("events");
    events.items.into_iter().map(|e| e.reason).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_running_out_pauses_and_a_grant_resumes() {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon(dir.path(), "pause");
    // Credits for a few seconds: the counter starts, then the balance runs out.
    grant(&d, 5).await;
    let (id, wd) = started(&d, &testkit::local_shell()).await;

    // The balance reaches zero: paused, not ended.
    let paused = until(&d, &id, Duration::from_secs(30), |s| {
        s.state == SandboxState::Paused
    })
    .await;
    assert_eq!(paused.termination, None, "{paused:?}");
    let balance = d.client.balance(PROJECT).await.expect("balance");
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
    assert!(
        reasons(&d, &id)
            .await
            .iter()
            .any(|r| r == "paused: the project ran out of credits"),
        "{:?}",
        reasons(&d, &id).await
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
    grant(&d, 1000).await;
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
    // The money adds up: the balance is the grants less what was debited.
    let (_, gone) = d
        .client
        .destroy(&id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    let balance = d.client.balance(PROJECT).await.expect("balance");
    assert_eq!(
        balance.balance,
        1005 - gone.cost.accrued_credits,
        "{balance:?} {gone:?}"
    );
    assert!(gone.cost.accrued_credits >= 5, "{gone:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_running_out_with_snapshot_and_destroy_keeps_the_work() {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon(dir.path(), "snapshot_and_destroy");
    grant(&d, 8).await;
    let sbx = testkit::ready_sandbox(&d.client, &testkit::local_shell()).await;
    sh(
        &d,
        &sbx.id,
        "echo 'kept when the credits ran out' > work.txt",
    )
    .await;
    let gone = destroyed(&d, &sbx.id, Duration::from_secs(40)).await;
    let t = gone.termination.clone().expect("termination");
    assert_eq!(t.reason.as_str(), "credits_exhausted", "{gone:?}");
    let snap = gone.exit_snapshot.clone().expect("an exit snapshot");
    assert!(d.client.balance(PROJECT).await.expect("balance").balance <= 0);
    // With credits again, a fork of the exit snapshot holds the work.
    grant(&d, 1000).await;
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
    let d = daemon(dir.path(), "destroy");
    grant(&d, 4).await;
    let (id, _) = started(&d, &testkit::local_shell()).await;
    let (status, paused) = post(&d, &id, "pause").await;
    assert_eq!(
        (status, paused["state"].as_str()),
        (200, Some("paused")),
        "{paused}"
    );
    // A paused sandbox costs nothing here (no paused rate); another one,
    // running, spends the rest.
    let other = testkit::ready_sandbox(&d.client, &testkit::local_shell()).await;
    let gone = destroyed(&d, &id, Duration::from_secs(40)).await;
    destroyed(&d, &other.id, Duration::from_secs(40)).await;
    assert_eq!(
        gone.termination.as_ref().map(|t| t.reason.as_str()),
        Some("credits_exhausted")
    );
    // It was paused (by its user) when the credits ran out.
    let r = reasons(&d, &id).await;
    let at = |what: &str| r.iter().position(|x| x == what);
    assert!(at("paused") < at("the project ran out of credits"), "{r:?}");
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
