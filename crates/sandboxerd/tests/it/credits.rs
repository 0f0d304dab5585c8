//! Credits: escrow on create and extend, metering by the second,
//! settlement on destroy, expiry and failure, the credits API, usage export.
//! Handler tests on a fresh database each (sandboxes that must run are real
//! bubblewrap sandboxes), plus a `kill -9` of the real daemon mid-tick.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use sandboxer_api::{Consumer, LedgerEntry, LedgerKind, Sandbox, SandboxState};
use sandboxerd::config::TokenEntry;
use sandboxerd::lifecycle::metering::tick_at;
use sandboxerd::store::{now_ms, Billing, Change, Created, NewSandbox, Transition};
use sandboxerd::AppState;
use serde_json::json;

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, TestApp, TestDir};

/// One credit a second (3600 credits/hour), in hundredths per hour.
const RATE: i64 = 360_000;

/// A catalog with `profile.metered` (ext.local at 3600 credits/hour, 10s by
/// default) and `profile.misconfigured` (an entry of the same backend whose
/// `bwrap` is a binary that is not bubblewrap: every sandbox fails before ready).
pub fn catalog(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = testkit::repo_root();
    let profiles = dir.join("profiles");
    let extensions = dir.join("extensions");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::create_dir_all(&extensions).expect("mkdir");
    let local = std::fs::read_to_string(root.join("extensions/ext.local.yaml")).expect("ext");
    std::fs::write(
        extensions.join("ext.local.yaml"),
        local.replace("credits_per_hour: 1", "credits_per_hour: 3600"),
    )
    .expect("write");
    std::fs::write(
        extensions.join("ext.local-misconfigured.yaml"),
        local
            .replace(
                "id: ext.local",
                "id: ext.local-misconfigured\nbackend: ext.local\noptions:\n  bwrap: /bin/ls",
            )
            .replace("credits_per_hour: 1", "credits_per_hour: 3600"),
    )
    .expect("write");
    let shell = std::fs::read_to_string(root.join("profiles/local-shell.yaml")).expect("profile");
    std::fs::write(profiles.join("local-shell.yaml"), &shell).expect("write");
    let metered = shell
        .replace("profile.local-shell", "profile.metered")
        .replace("default: 1h", "default: 10s");
    std::fs::write(profiles.join("metered.yaml"), &metered).expect("write");
    std::fs::write(
        profiles.join("misconfigured.yaml"),
        metered
            .replace("profile.metered", "profile.misconfigured")
            .replace("extension: ext.local", "extension: ext.local-misconfigured"),
    )
    .expect("write");
    (profiles, extensions)
}

const ALPHA: &str = "alpha-token";
const BETA: &str = "beta-token";
const OPERATOR: &str = "operator-token";

fn token(t: &str, project: &str, operator: bool) -> TokenEntry {
    use sha2::Digest;
    TokenEntry {
        sha256: sha2::Sha256::digest(t.as_bytes()).into(),
        consumer: Consumer {
            actor_type: "agt".into(),
            actor: format!("{project}-agent"),
            project: project.into(),
        },
        operator,
    }
}

async fn app_with(enforce: bool, tokens: bool) -> TestApp {
    TestApp::with(|dir, s| {
        let (profiles, extensions) = catalog(dir);
        s.profiles_dir = profiles;
        s.extensions_dir = extensions;
        s.credits.enforce = enforce;
        s.limits.requests_per_second = 0;
        if tokens {
            s.tokens = vec![
                token(ALPHA, "alpha", false),
                token(BETA, "beta", false),
                token(OPERATOR, "ops", true),
            ];
        }
    })
    .await
}

async fn grant(t: &TestApp, project: &str, amount: i64) {
    let entry = t
        .state
        .db
        .grant(project, amount, "test grant", None)
        .await
        .expect("grant");
    assert!(matches!(entry, sandboxerd::store::Granted::New(_)));
}

/// A sandbox row made ready at once (no backend), charged at `RATE`.
async fn ready_sandbox(t: &TestApp, project: &str, ttl_ms: i64) -> Sandbox {
    ready_sandbox_paused_at(t, project, ttl_ms, 0).await
}

/// [`ready_sandbox`] charged `paused_rate` (hundredths per hour) while paused.
async fn ready_sandbox_paused_at(
    t: &TestApp,
    project: &str,
    ttl_ms: i64,
    paused_rate: i64,
) -> Sandbox {
    let new = NewSandbox {
        profile: "profile.metered".into(),
        estimate_credits: sandboxerd::ledger::credits_for(
            RATE,
            sandboxerd::ledger::billed_seconds(ttl_ms),
        ),
        ..testkit::sandbox_row(project, ttl_ms, 3_600_000)
    };
    let billing = Billing {
        rate_centicredits: RATE,
        paused_rate_centicredits: paused_rate,
        route: None,
        enforce: t.state.settings.credits.enforce,
    };
    let id = match t
        .state
        .db
        .create_sandbox_billed(new, None, None, &billing)
        .await
        .expect("insert")
    {
        Created::New(s) => s.id,
        other => panic!("not created: {other:?}"),
    };
    let change = Change {
        reason: "test: ready",
        set_ready_at: true,
        ..Change::default()
    };
    match t
        .state
        .db
        .transition(&id, &[SandboxState::Requested], SandboxState::Ready, change)
        .await
        .expect("ready")
    {
        Transition::Done { sandbox, .. } => sandbox,
        other => panic!("not ready: {other:?}"),
    }
}

async fn get(t: &TestApp, id: &str) -> Sandbox {
    t.state
        .db
        .get_sandbox(id, None)
        .await
        .expect("get")
        .expect("row")
}

async fn ledger_of(t: &TestApp, project: &str) -> Vec<LedgerEntry> {
    t.state
        .db
        .ledger_entries(&sandboxerd::store::LedgerFilter {
            project: project.into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("ledger")
        .0
}

/// The cached balance equals the sums of the ledger rows; answers it.
async fn consistent_balance(t: &TestApp, project: &str) -> sandboxer_api::Balance {
    let b = t.state.db.balance(project).await.expect("balance");
    let derived = t
        .state
        .db
        .balance_from_ledger(project)
        .await
        .expect("derived");
    assert_eq!((b.balance, b.reserved), derived, "cache vs ledger");
    assert_eq!(b.available, b.balance - b.reserved);
    b
}

fn sum(entries: &[LedgerEntry], kind: LedgerKind, sandbox: Option<&str>) -> i64 {
    entries
        .iter()
        .filter(|e| e.kind == kind && (sandbox.is_none() || e.sandbox_id.as_deref() == sandbox))
        .map(|e| e.amount)
        .sum()
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// Wait until the sandbox is destroyed or failed and holds nothing any more.
async fn wait_settled(t: &TestApp, id: &str) -> Sandbox {
    let start = std::time::Instant::now();
    loop {
        let s = get(t, id).await;
        let held: i64 = ledger_of(t, &s.consumer.project)
            .await
            .iter()
            .filter(|e| e.sandbox_id.as_deref() == Some(id))
            .map(|e| match e.kind {
                LedgerKind::Reserve => e.amount,
                LedgerKind::Release => -e.amount,
                _ => 0,
            })
            .sum();
        if s.state.is_settled() && held == 0 {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{id} never settled: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_reserve_more_than_the_balance() {
    require_bwrap();
    let t = app_with(true, false).await;
    // profile.metered: 10s at one credit a second = 10 credits each; room for 7.
    grant(&t, "default", 70).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let (status, _, body) = t
                .call(
                    Method::POST,
                    "/v1/sandboxes",
                    Some(json!({"profile": "profile.metered"})),
                )
                .await;
            (status, body)
        }));
    }
    let (mut created, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (status, body) = task.await.expect("join");
        match status {
            StatusCode::ACCEPTED => created.push(body["id"].as_str().expect("id").to_owned()),
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(body["code"], "insufficient_credits", "{body}");
                let detail = body["detail"].as_str().expect("detail");
                assert!(
                    detail.contains("0 credits available") && detail.contains("needs 10"),
                    "{detail}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created.len(), refused), (7, 43));
    let b = consistent_balance(&t, "default").await;
    assert_eq!((b.balance, b.reserved, b.available), (70, 70, 0));
    let ledger = ledger_of(&t, "default").await;
    assert_eq!(
        ledger
            .iter()
            .filter(|e| e.kind == LedgerKind::Reserve)
            .count(),
        7
    );
    for id in &created {
        assert_eq!(get(&t, id).await.cost.estimate_credits, 10);
    }
    // Destroying them gives every reservation back, less what they used.
    for id in &created {
        let (s, _, _) = t
            .call_as(Method::DELETE, &format!("/v1/sandboxes/{id}"), None, None)
            .await;
        assert!(s.is_success());
    }
    for id in &created {
        wait_settled(&t, id).await;
    }
    let b = consistent_balance(&t, "default").await;
    let debited = sum(&ledger_of(&t, "default").await, LedgerKind::Debit, None);
    assert_eq!((b.balance, b.reserved), (70 - debited, 0));
}

#[tokio::test]
async fn metering_debits_each_second_once_across_repeats_and_a_restart() {
    let t = app_with(true, false).await;
    grant(&t, "p", 1000).await;
    let s = ready_sandbox(&t, "p", 600_000).await;
    let ready = ms(s.ready_at.expect("ready_at"));
    assert_eq!(consistent_balance(&t, "p").await.reserved, 600);

    let first = tick_at(&t.state, ready + 10_000).await.expect("tick");
    assert_eq!(first.debited, 10);
    // The same instant again (a retried tick): nothing.
    assert_eq!(
        tick_at(&t.state, ready + 10_000)
            .await
            .expect("tick")
            .debited,
        0
    );
    // Half a second on: the 11th second started.
    assert_eq!(
        tick_at(&t.state, ready + 10_500)
            .await
            .expect("tick")
            .debited,
        1
    );
    // A tick from a clock that went back: nothing.
    assert_eq!(
        tick_at(&t.state, ready + 3_000)
            .await
            .expect("tick")
            .debited,
        0
    );

    // A crash: the database is closed as it was and opened again (the
    // sandbox, having no backend here, is not looked at by the reconciler),
    // and the new process ticks for the same instant, then later.
    let path = t.state.settings.data_dir.join("sandboxer.db");
    t.state.db.close().await;
    drop(t.app);
    let state = AppState {
        db: sandboxerd::store::Db::open(&path).await.expect("reopen"),
        ..t.state.clone()
    };
    assert_eq!(
        tick_at(&state, ready + 10_500).await.expect("tick").debited,
        0
    );
    assert_eq!(
        tick_at(&state, ready + 20_000).await.expect("tick").debited,
        9
    );

    let (entries, _) = state
        .db
        .ledger_entries(&sandboxerd::store::LedgerFilter {
            project: "p".into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("ledger");
    let debits: Vec<&LedgerEntry> = entries
        .iter()
        .filter(|e| e.kind == LedgerKind::Debit)
        .collect();
    assert_eq!(debits.len(), 3, "{debits:?}");
    assert_eq!(sum(&entries, LedgerKind::Debit, None), 20);
    // Keys name the sandbox, its generation and the cumulative amount.
    let keys: Vec<&str> = debits.iter().map(|e| e.idempotency_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("debit:{}:1:20", s.id),
            format!("debit:{}:1:11", s.id),
            format!("debit:{}:1:10", s.id)
        ]
    );
    let row = state
        .db
        .get_sandbox(&s.id, None)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(row.cost.accrued_credits, 20);
    let b = state.db.balance("p").await.expect("balance");
    // Every debit came out of the reservation: available did not move.
    assert_eq!((b.balance, b.reserved, b.available), (980, 580, 400));
    assert_eq!(
        state.db.balance_from_ledger("p").await.expect("derived"),
        (980, 580)
    );
    drop(t.dir);
}

#[tokio::test]
async fn enforced_metering_never_debits_past_the_reservation() {
    let t = app_with(true, false).await;
    grant(&t, "p", 100).await;
    let s = ready_sandbox(&t, "p", 5_000).await;
    let ready = ms(s.ready_at.expect("ready_at"));
    // Far past its expiry: billing stops at expires_at, within the 5 reserved.
    let done = tick_at(&t.state, ready + 3_600_000).await.expect("tick");
    assert!(done.debited <= 5, "{done:?}");
    let b = consistent_balance(&t, "p").await;
    assert_eq!(b.balance, 100 - done.debited);
    assert!(b.reserved >= 0);
}

#[tokio::test]
async fn without_enforcement_use_is_still_metered_and_the_balance_may_go_negative() {
    let t = app_with(false, false).await;
    let s = ready_sandbox(&t, "free-rider", 600_000).await;
    let ready = ms(s.ready_at.expect("ready_at"));
    let b = consistent_balance(&t, "free-rider").await;
    assert_eq!((b.balance, b.reserved), (0, 0), "nothing reserved");
    assert_eq!(
        tick_at(&t.state, ready + 42_000)
            .await
            .expect("tick")
            .debited,
        42
    );
    let b = consistent_balance(&t, "free-rider").await;
    assert_eq!((b.balance, b.reserved, b.available), (-42, 0, -42));
    assert_eq!(get(&t, &s.id).await.cost.accrued_credits, 42);
}

#[tokio::test]
async fn destroy_settles_use_to_the_second_and_releases_the_rest() {
    let t = app_with(true, false).await;
    grant(&t, "default", 1000).await;
    let s = ready_sandbox(&t, "default", 600_000).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, _) = t
        .call_as(
            Method::DELETE,
            &format!("/v1/sandboxes/{}", s.id),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = wait_settled(&t, &s.id).await;
    assert_eq!(done.state, SandboxState::Destroyed);
    // Billing ends at the destroy request (its event's time).
    let (events, _) = t.state.db.events(&s.id, 0, 100).await.expect("events");
    let ended = events
        .iter()
        .find(|e| e.to_state == SandboxState::Destroying)
        .expect("destroying event")
        .at;
    let expected = sandboxerd::ledger::credits_for(
        RATE,
        sandboxerd::ledger::billed_seconds(ms(ended) - ms(s.ready_at.expect("ready"))),
    );
    assert!(expected >= 2, "{expected}");
    let ledger = ledger_of(&t, "default").await;
    assert_eq!(sum(&ledger, LedgerKind::Debit, Some(&s.id)), expected);
    assert_eq!(done.cost.accrued_credits, expected);
    let b = consistent_balance(&t, "default").await;
    assert_eq!((b.balance, b.reserved), (1000 - expected, 0));
    // Ticks after settlement change nothing.
    tick_at(&t.state, now_ms() + 60_000).await.expect("tick");
    let b = consistent_balance(&t, "default").await;
    assert_eq!((b.balance, b.reserved), (1000 - expected, 0));
}

#[tokio::test]
async fn expiry_settles_at_expires_at() {
    let t = app_with(true, false).await;
    grant(&t, "p", 1000).await;
    let s = ready_sandbox(&t, "p", 1_500).await;
    assert_eq!(s.cost.estimate_credits, 2);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let swept = sandboxerd::lifecycle::reaper::sweep(&t.state)
        .await
        .expect("sweep");
    assert_eq!(swept.expired, 1);
    let done = wait_settled(&t, &s.id).await;
    assert_eq!(done.state, SandboxState::Destroyed);
    // The reaper ran after expires_at; billing stops at expires_at.
    let expected = sandboxerd::ledger::credits_for(
        RATE,
        sandboxerd::ledger::billed_seconds(ms(s.expires_at) - ms(s.ready_at.expect("ready"))),
    );
    assert_eq!(
        sum(&ledger_of(&t, "p").await, LedgerKind::Debit, None),
        expected
    );
    let b = consistent_balance(&t, "p").await;
    assert_eq!((b.balance, b.reserved), (1000 - expected, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_before_ready_is_charged_nothing() {
    let t = app_with(true, false).await;
    grant(&t, "default", 100).await;
    let (status, _, body) = t
        .call_as(
            Method::POST,
            "/v1/sandboxes?wait=30s",
            None,
            Some(json!({"profile": "profile.misconfigured"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "failed");
    let id = body["id"].as_str().expect("id");
    let failure = &body["failure"];
    assert_eq!(failure["code"], "provision_failed", "{body}");
    wait_settled(&t, id).await;
    let ledger = ledger_of(&t, "default").await;
    assert_eq!(sum(&ledger, LedgerKind::Reserve, Some(id)), 10);
    assert_eq!(sum(&ledger, LedgerKind::Release, Some(id)), 10);
    assert_eq!(sum(&ledger, LedgerKind::Debit, Some(id)), 0);
    let b = consistent_balance(&t, "default").await;
    assert_eq!((b.balance, b.reserved), (100, 0));
}

#[tokio::test]
async fn the_ticker_settles_what_a_crash_left_unsettled() {
    let t = app_with(true, false).await;
    grant(&t, "p", 2000).await;
    // Failed after ready (as the start-up reconciler fails a lost sandbox),
    // and destroyed-requested, both without the settlement that follows in
    // the lifecycle: as if the daemon died right after the transition.
    let lost = ready_sandbox(&t, "p", 600_000).await;
    let left = ready_sandbox(&t, "p", 600_000).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (id, to) in [
        (&lost.id, SandboxState::Failed),
        (&left.id, SandboxState::Destroying),
    ] {
        let change = Change {
            reason: "test: ended without settlement",
            ..Change::default()
        };
        let done = t
            .state
            .db
            .transition(id, &[SandboxState::Ready], to, change)
            .await
            .expect("transition");
        assert!(matches!(done, Transition::Done { .. }));
    }
    assert_eq!(consistent_balance(&t, "p").await.reserved, 1200);
    let done = tick_at(&t.state, now_ms()).await.expect("tick");
    assert_eq!(done.settled, 2, "{done:?}");
    let b = consistent_balance(&t, "p").await;
    let ledger = ledger_of(&t, "p").await;
    let debited = sum(&ledger, LedgerKind::Debit, None);
    assert!(
        (4..=6).contains(&debited),
        "two sandboxes of about 2s: {debited}"
    );
    assert_eq!((b.balance, b.reserved), (2000 - debited, 0));
    // Settled once: another tick finds nothing.
    assert_eq!(tick_at(&t.state, now_ms()).await.expect("tick").settled, 0);
}

#[tokio::test]
async fn extend_reserves_the_extra_first_or_moves_nothing() {
    let t = app_with(true, false).await;
    grant(&t, "default", 100).await;
    let s = ready_sandbox(&t, "default", 60_000).await;
    assert_eq!(consistent_balance(&t, "default").await.available, 40);
    let (status, _, body) = t
        .call_as(
            Method::PATCH,
            &format!("/v1/sandboxes/{}/ttl", s.id),
            None,
            Some(json!({"duration": "30s"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cost"]["estimate_credits"], 90);
    assert_eq!(consistent_balance(&t, "default").await.available, 10);
    let (status, _, body) = t
        .call_as(
            Method::PATCH,
            &format!("/v1/sandboxes/{}/ttl", s.id),
            None,
            Some(json!({"duration": "1m"})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["code"], "insufficient_credits");
    assert_eq!(body["field"], "duration");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("10 credits available") && d.contains("needs 60")),
        "{body}"
    );
    let after = get(&t, &s.id).await;
    assert_eq!(
        ms(after.expires_at),
        ms(s.expires_at) + 30_000,
        "a refused extend moves nothing"
    );
    assert_eq!(after.cost.estimate_credits, 90);
    let b = consistent_balance(&t, "default").await;
    assert_eq!((b.reserved, b.available), (90, 10));
}

#[tokio::test]
async fn recreate_settles_the_old_generation_and_reserves_the_new_one() {
    // The recreated generation is provisioned for real.
    require_bwrap();
    let t = app_with(true, false).await;
    grant(&t, "default", 25).await;
    let s = ready_sandbox(&t, "default", 10_000).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Generation 1 is settled (about 2 used, the rest released), then 30s
    // would need 30 reserved with about 23 available: refused, nothing moves.
    let (status, _, body) = t
        .call_as(
            Method::POST,
            &format!("/v1/sandboxes/{}/recreate", s.id),
            None,
            Some(json!({"ttl": "30s"})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(get(&t, &s.id).await.generation, 1, "nothing changed");
    let (status, _, body) = t
        .call_as(
            Method::POST,
            &format!("/v1/sandboxes/{}/recreate", s.id),
            None,
            Some(json!({"ttl": "5s"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["generation"], 2);
    assert_eq!(body["cost"]["estimate_credits"], 5);
    let ledger = ledger_of(&t, "default").await;
    let gen1_debit: i64 = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Debit && e.generation == Some(1))
        .map(|e| e.amount)
        .sum();
    assert!((2..=3).contains(&gen1_debit), "{gen1_debit}");
    let b = consistent_balance(&t, "default").await;
    assert_eq!((b.balance, b.reserved), (25 - gen1_debit, 5));
}

#[tokio::test]
async fn the_credits_api_is_scoped_by_project_and_grants_are_for_operators() {
    let t = app_with(true, true).await;
    // A consumer sees its own project only; another one does not exist for it.
    let (s, _, b) = t
        .call_as(Method::GET, "/v1/credits/alpha", Some(ALPHA), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b,
        json!({"project": "alpha", "balance": 0, "reserved": 0, "available": 0})
    );
    for uri in [
        "/v1/credits/beta",
        "/v1/credits/beta/ledger",
        "/v1/credits/no-such-project",
        "/v1/usage?project=beta",
    ] {
        let (s, ctype, b) = t.call_as(Method::GET, uri, Some(ALPHA), None).await;
        assert_eq!(
            (s, ctype.as_str()),
            (StatusCode::NOT_FOUND, "application/problem+json"),
            "{uri}"
        );
        assert_eq!(b["code"], "project_not_found", "{uri}: {b}");
    }
    let grant = json!({"amount": 50, "reason": "trial"});
    let (s, _, b) = t
        .call_as(
            Method::POST,
            "/v1/credits/alpha/grants",
            Some(ALPHA),
            Some(grant.clone()),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );

    // Operators grant; bad amounts and reasons name the field.
    for (body, code, field) in [
        (
            json!({"amount": 0, "reason": "x"}),
            "invalid_amount",
            "amount",
        ),
        (
            json!({"amount": -5, "reason": "x"}),
            "invalid_amount",
            "amount",
        ),
        (
            json!({"amount": 1_000_000_000_001i64, "reason": "x"}),
            "invalid_amount",
            "amount",
        ),
        (
            json!({"amount": 5, "reason": "  "}),
            "invalid_reason",
            "reason",
        ),
    ] {
        let (s, _, b) = t
            .call_as(
                Method::POST,
                "/v1/credits/alpha/grants",
                Some(OPERATOR),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(
            (b["code"].as_str(), b["field"].as_str()),
            (Some(code), Some(field))
        );
    }
    let (s, _, b) = t
        .call_as(
            Method::POST,
            "/v1/credits/alpha/grants",
            Some(OPERATOR),
            Some(json!({"amount": 5})),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body"))
    );

    // An Idempotency-Key makes a retried grant answer the same entry.
    let t = &t;
    let send = |amount: i64| async move {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/credits/alpha/grants")
            .header(header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "invoice-42")
            .body(Body::from(
                json!({"amount": amount, "reason": "invoice 42"}).to_string(),
            ))
            .expect("request");
        let (status, _, body) = t.send(req).await;
        (status, body)
    };
    let (s1, first) = send(50).await;
    let (s2, again) = send(50).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(first, again);
    assert_eq!(first["kind"], "grant");
    assert_eq!(first["amount"], 50);
    assert!(first["sandbox_id"].is_null());
    let (s3, conflict) = send(60).await;
    assert_eq!(
        (s3, conflict["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_conflict"))
    );
    let (_, _, b) = t
        .call_as(Method::GET, "/v1/credits/alpha", Some(ALPHA), None)
        .await;
    assert_eq!(b["balance"], 50, "granted once");

    // The ledger, newest first, page by page.
    for i in 1..=4 {
        let (s, _, _) = t
            .call_as(
                Method::POST,
                "/v1/credits/alpha/grants",
                Some(OPERATOR),
                Some(json!({"amount": i, "reason": format!("grant {i}")})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let mut uri = "/v1/credits/alpha/ledger?limit=2".to_owned();
    let mut amounts = Vec::new();
    loop {
        let (s, _, page) = t.call_as(Method::GET, &uri, Some(ALPHA), None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for e in page["items"].as_array().expect("items") {
            amounts.push(e["amount"].as_i64().expect("amount"));
        }
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/credits/alpha/ledger?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(amounts, [4, 3, 2, 1, 50]);
    let (s, _, b) = t
        .call_as(
            Method::GET,
            "/v1/credits/alpha/ledger?cursor=xyz",
            Some(ALPHA),
            None,
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_cursor"))
    );
    // The operator sees any project; the grants were audited.
    let (s, _, b) = t
        .call_as(Method::GET, "/v1/credits/alpha", Some(OPERATOR), None)
        .await;
    assert_eq!((s, b["balance"].as_i64()), (StatusCode::OK, Some(60)));
    let (_, _, audit) = t
        .call_as(Method::GET, "/v1/audit?project=ops", Some(OPERATOR), None)
        .await;
    assert!(audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|e| e["path"] == "/v1/credits/alpha/grants" && e["status"] == 201));
}

#[tokio::test]
async fn usage_csv_parses_and_sums_to_the_ledger_debits() {
    let t = app_with(false, false).await;
    grant(&t, "p", 1000).await;
    let a = ready_sandbox(&t, "p", 600_000).await;
    let b = ready_sandbox(&t, "p", 600_000).await;
    let other = ready_sandbox(&t, "q", 600_000).await;
    let at = ms(b.ready_at.expect("ready")) + 7_000;
    tick_at(&t.state, at).await.expect("tick");
    tick_at(&t.state, at + 5_000).await.expect("tick");
    let (s, ctype, body) = t
        .call_as(Method::GET, "/v1/usage?project=p&format=csv", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctype, "text/csv; charset=utf-8");
    let text = body.as_str().expect("csv text");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("sandbox_id,project,profile,extension,host,generation,start,end,seconds,credits")
    );
    let mut total = 0;
    let mut ids = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 10, "{line}");
        ids.push(cells[0].to_owned());
        assert_eq!(cells[1], "p");
        assert!(
            chrono::DateTime::parse_from_rfc3339(cells[6]).is_ok(),
            "{line}"
        );
        assert_eq!(cells[7], "", "still running: no end");
        total += cells[9].parse::<i64>().expect("credits");
    }
    ids.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(
        ids, want,
        "the other project's sandbox is not in p's export"
    );
    let debits = sum(&ledger_of(&t, "p").await, LedgerKind::Debit, None);
    assert!(debits >= 24, "{debits}");
    assert_eq!(total, debits);
    // JSON says the same, with the total.
    let (_, _, report) = t
        .call_as(Method::GET, "/v1/usage?project=p", None, None)
        .await;
    assert_eq!(report["total_credits"], debits);
    // A window before any debit: the running sandboxes, no credits.
    let (s, _, early) = t
        .call_as(
            Method::GET,
            "/v1/usage?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z",
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(early["total_credits"], 0);
    // Every project for an operator.
    let (_, _, all) = t.call_as(Method::GET, "/v1/usage", None, None).await;
    let all_ids: Vec<&str> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["sandbox_id"].as_str())
        .collect();
    assert!(all_ids.contains(&other.id.as_str()));
    for (uri, code, field) in [
        ("/v1/usage?format=xml", "invalid_query", "format"),
        ("/v1/usage?from=yesterday", "invalid_time", "from"),
        (
            "/v1/usage?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
            "invalid_time",
            "from",
        ),
    ] {
        let (s, _, b) = t.call_as(Method::GET, uri, None, None).await;
        assert!(s.is_client_error(), "{uri}");
        assert_eq!(
            (b["code"].as_str(), b["field"].as_str()),
            (Some(code), Some(field)),
            "{uri}"
        );
    }
}

/// `kill -9` in the middle of a metering transaction (after the debit row,
/// before the commit), then a restart: the debit that never committed is
/// not there, and the next tick charges the whole period once.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_tick_never_double_debits() {
    require_bwrap();
    let dir = TestDir::new();
    let (profiles, extensions) = catalog(dir.path());
    let data = dir.path().join("data");
    let args = [
        "--profiles",
        profiles.to_str().expect("utf-8"),
        "--extensions",
        extensions.to_str().expect("utf-8"),
    ];
    let env = [
        ("SANDBOXER_CREDITS__ENFORCE", "true"),
        ("SANDBOXER_METERING_INTERVAL", "500ms"),
    ];
    let mut crashing = env.to_vec();
    crashing.push(("SANDBOXER_FAULT", "metering.after_debit"));
    // Ticks at start and every 2s: the create below is answered before the
    // first tick that finds a ready sandbox (and aborts).
    crashing.retain(|(k, _)| *k != "SANDBOXER_METERING_INTERVAL");
    crashing.push(("SANDBOXER_METERING_INTERVAL", "2s"));
    let mut d = testkit::daemon!().args(args).envs(&crashing).start(&data);
    let (status, _) = d
        .client
        .grant("default", 1000, "test", None)
        .await
        .expect("grant");
    assert_eq!(status, 201);
    let req = sandboxer_api::CreateSandbox {
        profile: "profile.metered".into(),
        ttl: Some("60s".into()),
        ..Default::default()
    };
    let (_, sbx) = d
        .client
        .create(&req, Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    assert_eq!(sbx.state, SandboxState::Ready, "{sbx:?}");
    let ready = ms(sbx.ready_at.expect("ready_at"));
    // The first tick that debits aborts the process.
    let start = std::time::Instant::now();
    while d.child.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the fault never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(d);
    let d = testkit::daemon!().args(args).envs(&env).start(&data);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, done) = d
        .client
        .destroy(&sbx.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    assert_eq!(done.state, SandboxState::Destroyed);
    let ended = now_ms();
    // Settlement follows the destroy at once; wait for the release.
    let start = std::time::Instant::now();
    let balance = loop {
        let b = d.client.balance("default").await.expect("balance");
        if b.reserved == 0 {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not settled: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ledger = d
        .client
        .ledger_all("default", Some(&sbx.id))
        .await
        .expect("ledger");
    let debited = sum(&ledger, LedgerKind::Debit, None);
    // At one credit a second, never more than the seconds it ran.
    let ran = sandboxerd::ledger::billed_seconds(ended - ready);
    assert!(
        debited >= 1 && debited <= ran,
        "debited {debited} for {ran}s: {ledger:?}"
    );
    assert_eq!(balance.balance, 1000 - debited);
    let got = d.client.get(&sbx.id, None).await.expect("get");
    assert_eq!(got.cost.accrued_credits, debited);
    // The usage export agrees, as JSON and as CSV.
    let report = d
        .client
        .usage(&sandboxctl::UsageQuery {
            project: Some("default".into()),
            ..Default::default()
        })
        .await
        .expect("usage");
    assert_eq!(report.total_credits, debited);
    let estimate = d
        .client
        .estimate("profile.metered", Some("1m"))
        .await
        .expect("estimate");
    assert_eq!(
        (estimate.extension.as_str(), estimate.credits),
        ("ext.local", 60)
    );
    let csv = d
        .client
        .usage_csv(&sandboxctl::UsageQuery::default())
        .await
        .expect("csv");
    let total: i64 = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.rsplit(',').next()?.parse::<i64>().ok())
        .sum();
    assert_eq!(total, debited);
}

#[tokio::test]
async fn paused_time_is_not_billed_as_running_time() {
    use sandboxerd::store::PauseStep;
    let t = app_with(true, false).await;
    grant(&t, "p", 1000).await;
    let s = ready_sandbox(&t, "p", 600_000).await;
    let ready = ms(s.ready_at.expect("ready_at"));
    let step = |from: SandboxState, to: SandboxState, pause: PauseStep| {
        let db = t.state.db.clone();
        let id = s.id.clone();
        async move {
            let change = Change {
                reason: "test: pause step",
                pause: Some(pause),
                ..Change::default()
            };
            match db.transition(&id, &[from], to, change).await.expect("step") {
                Transition::Done { sandbox, .. } => sandbox,
                other => panic!("{other:?}"),
            }
        }
    };
    step(SandboxState::Ready, SandboxState::Paused, PauseStep::Pause).await;
    // Paused: the ticker leaves it alone.
    assert_eq!(
        tick_at(&t.state, ready + 5_000)
            .await
            .expect("tick")
            .debited,
        0
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    step(SandboxState::Paused, SandboxState::Ready, PauseStep::Resume).await;
    // 10 s since ready, of which 2.1 s (and a few ms) paused: 8 billed seconds.
    assert_eq!(
        tick_at(&t.state, ready + 10_000)
            .await
            .expect("tick")
            .debited,
        8
    );
    // Paused again: nothing more is charged while the pause lasts.
    step(SandboxState::Ready, SandboxState::Paused, PauseStep::Pause).await;
    assert_eq!(
        tick_at(&t.state, ready + 60_000)
            .await
            .expect("tick")
            .debited,
        0
    );
    let b = consistent_balance(&t, "p").await;
    assert_eq!(b.balance, 1000 - 8);
}

#[tokio::test]
async fn paused_time_is_billed_at_the_paused_rate() {
    use sandboxerd::store::PauseStep;
    let t = app_with(true, false).await;
    grant(&t, "p", 1000).await;
    // One credit a second running, a tenth of that paused.
    let s = ready_sandbox_paused_at(&t, "p", 600_000, RATE / 10).await;
    let ready = ms(s.ready_at.expect("ready_at"));
    let change = Change {
        reason: "test: pause",
        pause: Some(PauseStep::Pause),
        ..Change::default()
    };
    let paused = match t
        .state
        .db
        .transition(&s.id, &[SandboxState::Ready], SandboxState::Paused, change)
        .await
        .expect("pause")
    {
        Transition::Done { sandbox, .. } => sandbox,
        other => panic!("{other:?}"),
    };
    let paused_at = ms(paused.paused_at.expect("paused_at"));
    // 20 s after ready, nearly all of it paused: metered while paused, at
    // the paused rate (2 credits for 20 s), plus the moment it ran.
    let at = ready + 20_000;
    // 1 s running (any part of a second) and 20 s paused: 1 + 2 credits.
    let expected = if paused_at > ready { 3 } else { 2 };
    assert_eq!(tick_at(&t.state, at).await.expect("tick").debited, expected);
    // A repeated tick for the same instant debits nothing more.
    assert_eq!(tick_at(&t.state, at).await.expect("tick").debited, 0);
    let entries = ledger_of(&t, "p").await;
    assert!(
        entries
            .iter()
            .any(|e| e.reason.contains("paused at 360.00 credits/hour")),
        "{entries:?}"
    );
    let b = consistent_balance(&t, "p").await;
    assert_eq!(b.balance, 1000 - expected);
}
