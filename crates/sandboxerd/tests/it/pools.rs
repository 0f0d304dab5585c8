//! Warm pools (issue 8) against the real daemon and real bubblewrap: the
//! pool fills, a create is served from it with the consumer's labels and
//! lifetime and billed from the handout on, members stay invisible to
//! consumers, age out and are replaced, never leak across `kill -9`, and
//! are never shared by concurrent creates.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandboxctl::api::{CreateSandbox, LedgerKind, Sandbox, SandboxState};
use sandboxctl::token::token_sha256;
use sandboxctl::{Client, ListQuery, Method, UsageQuery};

use sandboxer_testkit as testkit;
use testkit::{alive, require_bwrap, run_inside, sandbox_dirs, Daemon, TestDir};

const POOLED: &str = "profile.pooled-shell";
const LABEL: &str = "io.sandboxer.pool";
const ALPHA: &str = "sbt_alpha_pool_token_for_tests_only_00000000000000000000000000000";
const OPS: &str = "sbt_ops_pool_token_for_tests_only_1111111111111111111111111111111111";
const WAIT: Duration = Duration::from_secs(30);

/// A catalog (`profile.local-shell`, and `profile.pooled-shell` with `pool`
/// and an optional input `note`; with `broken`, `profile.broken-pool` too, on
/// an ext.local entry whose `bwrap` is `/bin/ls`, so every member fails
/// before ready; ext.local priced at one credit a second) and a config file with a consumer token
/// (project `alpha`) and an operator token, plus `extra` TOML. Answers the
/// daemon's arguments.
fn setup(dir: &Path, pool: &str, extra: &str) -> Vec<String> {
    setup_with(dir, pool, extra, false)
}

fn setup_with(dir: &Path, pool: &str, extra: &str, broken: bool) -> Vec<String> {
    let root = testkit::repo_root();
    let profiles = dir.join("profiles");
    let extensions = dir.join("extensions");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::create_dir_all(&extensions).expect("mkdir");
    let local = std::fs::read_to_string(root.join("extensions/ext.local.yaml")).expect("ext");
    let local = local.replace("credits_per_hour: 1", "credits_per_hour: 3600");
    std::fs::write(extensions.join("ext.local.yaml"), &local).expect("write");
    std::fs::write(
        extensions.join("ext.local-broken.yaml"),
        local.replace(
            "id: ext.local",
            "id: ext.local-broken\nbackend: ext.local\noptions:\n  bwrap: /bin/ls",
        ),
    )
    .expect("write");
    let shell = std::fs::read_to_string(root.join("profiles/local-shell.yaml")).expect("profile");
    std::fs::write(profiles.join("local-shell.yaml"), &shell).expect("write");
    let pooled = format!(
        "{}\ninputs:\n  note:\n    required: false\npool: {pool}\n",
        shell.replace("profile.local-shell", POOLED)
    );
    std::fs::write(profiles.join("pooled-shell.yaml"), &pooled).expect("write");
    if broken {
        std::fs::write(
            profiles.join("broken-pool.yaml"),
            pooled
                .replace(POOLED, "profile.broken-pool")
                .replace("extension: ext.local", "extension: ext.local-broken"),
        )
        .expect("write");
    }
    let config = dir.join("sandboxerd.toml");
    let token = |t: &str, actor: &str, project: &str, role: &str| {
        format!(
            "[[tokens]]\ntoken_sha256 = \"{}\"\nactor_type = \"agt\"\nactor = \"{actor}\"\nproject = \"{project}\"\nrole = \"{role}\"\n\n",
            token_sha256(t)
        )
    };
    let mut toml = String::from("metering_interval = \"500ms\"\n");
    toml.push_str(extra);
    toml.push_str("\n[limits]\nrequests_per_second = 0\n\n");
    toml.push_str(&token(ALPHA, "alpha-agent", "alpha", "consumer"));
    toml.push_str(&token(OPS, "ops", "ops", "operator"));
    std::fs::write(&config, toml).expect("write config");
    [
        "--config".to_owned(),
        config.to_string_lossy().into_owned(),
        "--profiles".to_owned(),
        profiles.to_string_lossy().into_owned(),
        "--extensions".to_owned(),
        extensions.to_string_lossy().into_owned(),
    ]
    .to_vec()
}

fn start(data: &Path, args: &[String], env: &[(&str, &str)]) -> Daemon {
    testkit::daemon!().args(args).envs(env).start(data)
}

fn pooled(labels: &[(&str, &str)], ttl: Option<&str>) -> CreateSandbox {
    CreateSandbox {
        profile: POOLED.into(),
        ttl: ttl.map(str::to_owned),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..CreateSandbox::default()
    }
}

/// `/metrics` as text (operator).
async fn metrics(ops: &Client) -> String {
    let (status, body) = ops
        .request_json(Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    assert_eq!(status, 200, "{body}");
    body.as_str().expect("metrics are text").to_owned()
}

/// The value of one series (`name{labels}`), 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn ready_gauge(profile: &str) -> String {
    format!("sandboxer_pool_members{{profile=\"{profile}\",state=\"ready\"}}")
}

fn hits(text: &str) -> f64 {
    series(
        text,
        &format!("sandboxer_pool_hits_total{{profile=\"{POOLED}\"}}"),
    )
}

fn misses(text: &str, reason: &str) -> f64 {
    series(
        text,
        &format!("sandboxer_pool_misses_total{{profile=\"{POOLED}\",reason=\"{reason}\"}}"),
    )
}

/// Poll until `done` holds (or fail after `limit`, saying `what`).
async fn until<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ready, unassigned members of `profile`, read by an operator by id
/// (members are in no list): every sandbox directory whose row belongs to
/// no project and carries the pool label.
async fn members(ops: &Client, data: &Path, profile: &str) -> BTreeMap<String, Sandbox> {
    let mut found = BTreeMap::new();
    for id in sandbox_dirs(data) {
        if let Ok(s) = ops.get(&id, None).await {
            if s.consumer.project.is_empty()
                && s.state == SandboxState::Ready
                && s.labels.get(LABEL).map(String::as_str) == Some(profile)
            {
                found.insert(id, s);
            }
        }
    }
    found
}

/// Wait until `profile`'s pool holds `n` ready members; answers them.
async fn full(ops: &Client, data: &Path, profile: &str, n: usize) -> BTreeMap<String, Sandbox> {
    let gauge = ready_gauge(profile);
    until(WAIT, &format!("{n} ready members of {profile}"), || async {
        series(&metrics(ops).await, &gauge) == n as f64
            && members(ops, data, profile).await.len() == n
    })
    .await;
    members(ops, data, profile).await
}

/// The hostname ext.local gives the sandbox `id` (so a command that prints
/// it ran inside that sandbox and no other).
fn hostname(id: &str) -> String {
    let short = id.to_lowercase();
    format!("sbx-{}", &short[short.len() - 10..])
}

fn pid_of(s: &Sandbox) -> i64 {
    s.reachability
        .as_ref()
        .and_then(|r| r["pid"].as_i64())
        .expect("pid")
}

/// Wait until every id of `gone` is destroyed, its process dead and its
/// workspace removed.
async fn torn_down(ops: &Client, data: &Path, gone: &BTreeMap<String, Sandbox>) {
    for (id, s) in gone {
        let pid = pid_of(s);
        until(WAIT, &format!("{id} torn down"), || async {
            let row = ops.get(id, None).await.expect("get by id");
            row.state == SandboxState::Destroyed
                && !alive(pid)
                && !data.join("sandboxes").join(id).exists()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_fills_serves_a_create_with_the_consumers_labels_and_ttl_and_refills() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 2, max_age: 10m}", "");
    let d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);

    let before = full(&ops, &data, POOLED, 2).await;
    for m in before.values() {
        assert_eq!(m.generation, 0, "an unassigned member: {m:?}");
        assert_eq!(m.cost.estimate_credits, 0);
        assert!(alive(pid_of(m)), "a member is a running sandbox");
    }
    // Invisible: in nobody's list (an operator's included), nobody's by id
    // but an operator's.
    let listed = ops
        .list_all(&ListQuery {
            include_all: true,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(listed.is_empty(), "members listed: {listed:?}");
    let (status, body) = ops
        .request_json(Method::GET, "/v1/sandboxes?project=", None)
        .await
        .expect("list");
    assert_eq!(status, 200);
    assert_eq!(body["items"], serde_json::json!([]), "{body}");
    for id in before.keys() {
        let err = alpha.get(id, None).await.expect_err("404");
        assert_eq!(err.status(), Some(404), "{err}");
    }

    let asked = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    let (status, sbx) = alpha
        .create(
            &pooled(&[("team", "a"), ("run", "7")], Some("10m")),
            Some(WAIT),
            None,
        )
        .await
        .expect("create");
    assert_eq!(status, 201, "{sbx:?}");
    assert_eq!(sbx.state, SandboxState::Ready);
    assert!(
        before.contains_key(&sbx.id),
        "served from the pool: {sbx:?}"
    );
    // Assigned at handout: the consumer's labels (no pool label), consumer,
    // a first generation, and a lifetime counted from now.
    assert_eq!(
        sbx.labels,
        BTreeMap::from([("run".into(), "7".into()), ("team".into(), "a".into())])
    );
    assert_eq!(sbx.consumer.project, "alpha");
    assert_eq!(sbx.consumer.actor, "alpha-agent");
    assert_eq!(sbx.generation, 1);
    assert!(sbx.created_at >= asked, "created at handout: {sbx:?}");
    assert_eq!(sbx.ready_at, Some(sbx.created_at));
    assert_eq!(
        sbx.expires_at - sbx.created_at,
        chrono::Duration::minutes(10)
    );
    assert_eq!(sbx.cost.estimate_credits, 600, "10 min at 1 credit/s");
    // A consumer sees no host pid, path or argv: only the daemon's routes.
    let seen = sbx.reachability.clone().expect("reachability");
    assert!(
        seen.get("enter").is_none() && seen.get("pid").is_none() && seen.get("workdir").is_none(),
        "{seen}"
    );
    assert_eq!(
        seen["api"]["exec"],
        format!("/v1/sandboxes/{}/exec", sbx.id)
    );
    // It works: its way in (the operator's view) runs a command inside this sandbox.
    let sbx = ops.get(&sbx.id, None).await.expect("operator view");
    let reach = sbx.reachability.clone().expect("reachability");
    assert_eq!(reach["kind"], "local");
    let out = run_inside(&reach, &["sh", "-c", "hostname; pwd"]);
    assert_eq!(out, format!("{}\n/workspace\n", hostname(&sbx.id)));
    assert!(Path::new(reach["workdir"].as_str().expect("workdir")).is_dir());
    // The same sandbox through get, list and events, as a consumer sees it.
    assert_eq!(
        alpha.get(&sbx.id, None).await.expect("get").labels,
        sbx.labels
    );
    let mine = alpha.list_all(&ListQuery::default()).await.expect("list");
    assert_eq!(
        mine.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [sbx.id.as_str()]
    );
    // The label filter sees the labels the handout wrote over the pool's.
    let by_label = |k: &str, v: &str| ListQuery {
        labels: vec![(k.to_owned(), v.to_owned())],
        include_all: true,
        ..ListQuery::default()
    };
    let found = alpha.list_all(&by_label("team", "a")).await.expect("list");
    assert_eq!(
        found.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [sbx.id.as_str()]
    );
    let stale = alpha
        .list_all(&by_label(LABEL, POOLED))
        .await
        .expect("list");
    assert!(stale.is_empty(), "the pool label is gone: {stale:?}");
    let events = alpha.events(&sbx.id).await.expect("events").items;
    let steps: Vec<(Option<SandboxState>, SandboxState, u32)> = events
        .iter()
        .map(|e| (e.from_state, e.to_state, e.generation))
        .collect();
    assert_eq!(
        steps,
        [
            (None, SandboxState::Requested, 1),
            (Some(SandboxState::Requested), SandboxState::Provisioning, 1),
            (Some(SandboxState::Provisioning), SandboxState::Ready, 1),
        ]
    );
    let (_, feed) = alpha
        .request_json(Method::GET, "/v1/events?limit=1000", None)
        .await
        .expect("feed");
    let feed = feed["items"].as_array().expect("items").clone();
    assert_eq!(feed.len(), 3, "the consumer's feed: {feed:?}");
    assert!(feed.iter().all(|e| e["sandbox_id"] == sbx.id.as_str()));
    // Operators see the pool's part of its history too.
    let all = ops.events(&sbx.id).await.expect("events").items;
    assert!(
        all.iter()
            .any(|e| e.generation == 0 && e.to_state == SandboxState::Ready),
        "{all:?}"
    );
    // The audit trail names the sandbox like any create.
    let audit = ops
        .audit(Some("alpha"), Some(&sbx.id), 10)
        .await
        .expect("audit");
    assert!(
        audit
            .items
            .iter()
            .any(|a| a.method == "POST" && a.status == 201),
        "{audit:?}"
    );

    let m = metrics(&ops).await;
    assert_eq!(hits(&m), 1.0, "{m}");
    assert_eq!(misses(&m, "empty"), 0.0, "{m}");
    assert_eq!(
        series(&m, &format!("sandboxer_pool_size{{profile=\"{POOLED}\"}}")),
        2.0
    );

    // Refilled: two ready members again, one of them new.
    let after = full(&ops, &data, POOLED, 2).await;
    assert!(!after.contains_key(&sbx.id));
    assert_eq!(
        after.keys().filter(|id| before.contains_key(*id)).count(),
        1,
        "one old member left, one new"
    );

    let (status, gone) = alpha.destroy(&sbx.id, Some(WAIT)).await.expect("destroy");
    assert_eq!((status, gone.state), (200, SandboxState::Destroyed));
    assert!(!alive(pid_of(&sbx)));
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_starts_at_handout_and_a_refused_create_keeps_the_member() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(
        dir.path(),
        "{size: 1, max_age: 10m}",
        "[credits]\nenforce = true\n",
    );
    let d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);
    let member = full(&ops, &data, POOLED, 1).await;
    let (member_id, made) = member.iter().next().expect("a member");
    // Let a few metering ticks (every 500ms) pass over the ready member.
    let ticks = series(&metrics(&ops).await, "sandboxer_metering_ticks_total");
    until(WAIT, "three metering ticks", || async {
        series(&metrics(&ops).await, "sandboxer_metering_ticks_total") >= ticks + 3.0
    })
    .await;
    let usage = ops.usage(&UsageQuery::default()).await.expect("usage");
    assert!(
        usage.items.iter().all(|u| u.sandbox_id != *member_id),
        "an unassigned member is billed to nobody: {usage:?}"
    );
    assert_eq!(usage.total_credits, 0);

    // No credits: refused as a normal create would be, and the member stays.
    let err = alpha
        .create(&pooled(&[], Some("60s")), Some(WAIT), None)
        .await
        .expect_err("402");
    assert_eq!(err.status(), Some(402), "{err}");
    assert_eq!(err.code(), Some("insufficient_credits"));
    let still = members(&ops, &data, POOLED).await;
    assert!(still.contains_key(member_id), "the member was not lost");
    assert_eq!(hits(&metrics(&ops).await), 0.0);
    assert!(alpha
        .ledger_all("alpha", None)
        .await
        .expect("ledger")
        .is_empty());

    let (status, _) = ops.grant("alpha", 1000, "test", None).await.expect("grant");
    assert_eq!(status, 201);
    let (status, sbx) = alpha
        .create(&pooled(&[], Some("60s")), Some(WAIT), Some("retry-me"))
        .await
        .expect("create");
    assert_eq!(status, 201);
    assert_eq!(&sbx.id, member_id, "served from the pool");
    // A retry with the same key is the same sandbox, reserved once.
    full(&ops, &data, POOLED, 1).await;
    let (_, again) = alpha
        .create(&pooled(&[], Some("60s")), Some(WAIT), Some("retry-me"))
        .await
        .expect("replay");
    assert_eq!(again.id, sbx.id);
    assert_eq!(hits(&metrics(&ops).await), 1.0);
    assert!(sbx.created_at > made.created_at);
    // The reservation is made with the handout, for the consumer's lifetime
    // (a metering tick may already have used part of it: what is available
    // stays 1000 - 60 either way).
    let balance = alpha.balance("alpha").await.expect("balance");
    assert_eq!(balance.available, 940, "{balance:?}");
    assert!(
        balance.reserved > 0 && balance.reserved <= 60,
        "{balance:?}"
    );
    let ledger = alpha.ledger_all("alpha", None).await.expect("ledger");
    let reserves: Vec<_> = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Reserve)
        .collect();
    assert_eq!(reserves.len(), 1, "{ledger:?}");
    assert_eq!(reserves[0].sandbox_id.as_deref(), Some(sbx.id.as_str()));
    assert_eq!((reserves[0].amount, reserves[0].generation), (60, Some(1)));
    assert!(reserves[0].created_at >= sbx.created_at);

    // Metered from the handout: debits appear, all after it.
    until(WAIT, "a debit of the handed-out sandbox", || async {
        alpha
            .ledger_all("alpha", Some(&sbx.id))
            .await
            .expect("ledger")
            .iter()
            .any(|e| e.kind == LedgerKind::Debit)
    })
    .await;
    let (status, gone) = alpha.destroy(&sbx.id, Some(WAIT)).await.expect("destroy");
    assert_eq!((status, gone.state), (200, SandboxState::Destroyed));
    until(WAIT, "settled", || async {
        alpha.balance("alpha").await.expect("balance").reserved == 0
    })
    .await;
    let usage = alpha.usage(&UsageQuery::default()).await.expect("usage");
    let record = usage
        .items
        .iter()
        .find(|u| u.sandbox_id == sbx.id)
        .expect("a usage record");
    // Charged from the handout, not from when the member was made.
    assert_eq!(record.start, Some(sbx.created_at), "{record:?}");
    let end = record.end.expect("ended").min(sbx.expires_at);
    let ran_ms = (end - sbx.created_at).num_milliseconds();
    assert_eq!(record.seconds, (ran_ms + 999) / 1000, "{record:?}");
    let debited: i64 = alpha
        .ledger_all("alpha", Some(&sbx.id))
        .await
        .expect("ledger")
        .iter()
        .filter(|e| e.kind == LedgerKind::Debit)
        .map(|e| e.amount)
        .sum();
    assert_eq!(debited, record.credits);
    assert_eq!(record.credits, record.seconds, "one credit a second");
    let balance = alpha.balance("alpha").await.expect("balance");
    assert_eq!(balance.balance, 1000 - debited);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_at_its_cap_is_refused_and_the_member_stays() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 1, max_age: 10m}", "");
    let d = start(
        &data,
        &args,
        &[("SANDBOXER_LIMITS__LIVE_SANDBOXES_PER_PROJECT", "1")],
    );
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);
    full(&ops, &data, POOLED, 1).await;
    let (_, first) = alpha
        .create(&pooled(&[], None), Some(WAIT), None)
        .await
        .expect("create");
    assert_eq!(first.state, SandboxState::Ready);
    // Members count toward no project: the refilled pool leaves alpha at 1.
    let waiting = full(&ops, &data, POOLED, 1).await;
    let err = alpha
        .create(&pooled(&[], None), Some(WAIT), None)
        .await
        .expect_err("429");
    assert_eq!(err.status(), Some(429), "{err}");
    assert_eq!(err.code(), Some("too_many_sandboxes"));
    assert_eq!(
        members(&ops, &data, POOLED)
            .await
            .keys()
            .collect::<Vec<_>>(),
        waiting.keys().collect::<Vec<_>>()
    );
    assert_eq!(hits(&metrics(&ops).await), 1.0);
    // Another project is not held up by alpha's cap (operators create for any).
    let (_, other) = ops
        .create(&pooled(&[], None), Some(WAIT), None)
        .await
        .expect("create");
    assert!(waiting.contains_key(&other.id), "served from the pool");
}

#[tokio::test(flavor = "multi_thread")]
async fn members_older_than_max_age_are_retired_and_replaced() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 2, max_age: 2s}", "");
    let d = start(&data, &args, &[("SANDBOXER_REAPER_INTERVAL", "200ms")]);
    let ops = d.client_with(OPS);
    let first = full(&ops, &data, POOLED, 2).await;
    for m in first.values() {
        assert_eq!(
            m.expires_at - m.created_at,
            chrono::Duration::seconds(2),
            "a member lives max_age: {m:?}"
        );
    }
    torn_down(&ops, &data, &first).await;
    for id in first.keys() {
        let events = ops.events(id).await.expect("events").items;
        assert!(
            events.iter().any(|e| e.to_state == SandboxState::Expired),
            "retired by the reaper at max_age: {events:?}"
        );
    }
    let fresh = full(&ops, &data, POOLED, 2).await;
    assert!(fresh.keys().all(|id| !first.contains_key(id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_a_full_pool_leaks_nothing_and_the_pool_is_made_again() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 3, max_age: 10m}", "");
    let mut d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);
    // One consumer sandbox from the pool, which must survive as any sandbox does.
    full(&ops, &data, POOLED, 3).await;
    let (_, kept) = alpha
        .create(&pooled(&[("keep", "yes")], None), Some(WAIT), None)
        .await
        .expect("create");
    assert_eq!(kept.state, SandboxState::Ready);
    let old = full(&ops, &data, POOLED, 3).await;
    d.kill9();
    for m in old.values() {
        assert!(alive(pid_of(m)), "sandboxes outlive the daemon");
    }

    let d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);
    // The previous run's members are retired at start, the pool made again.
    torn_down(&ops, &data, &old).await;
    for id in old.keys() {
        let events = ops.events(id).await.expect("events").items;
        assert!(
            events
                .iter()
                .any(|e| e.reason.contains("left by a previous run")),
            "{events:?}"
        );
    }
    let new = full(&ops, &data, POOLED, 3).await;
    assert!(new.keys().all(|id| !old.contains_key(id)));
    let kept = ops.get(&kept.id, None).await.expect("operator view");
    let still = alpha.get(&kept.id, None).await.expect("get");
    assert_eq!(
        still.state,
        SandboxState::Ready,
        "the consumer's sandbox stays"
    );
    assert!(alive(pid_of(&kept)));
    // Nothing runs and no workspace exists that is not a live sandbox.
    let live: HashSet<String> = new
        .keys()
        .cloned()
        .chain(std::iter::once(kept.id.clone()))
        .collect();
    let procs = testkit::sandbox_processes(&data);
    assert!(
        procs.is_subset(&live),
        "leaked processes: {procs:?} vs {live:?}"
    );
    let dirs: HashSet<String> = sandbox_dirs(&data).into_iter().collect();
    assert!(
        dirs.is_subset(&live),
        "leaked workspaces: {dirs:?} vs {live:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_never_share_a_member() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 4, max_age: 10m}", "");
    let d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);
    let pool = full(&ops, &data, POOLED, 4).await;
    let creates = (0..8).map(|i| {
        let c = alpha.clone();
        async move {
            let label = i.to_string();
            c.create(&pooled(&[("n", &label)], None), Some(WAIT), None)
                .await
                .expect("create")
        }
    });
    let made = futures::future::join_all(creates).await;
    let mut ids = HashSet::new();
    let mut pids = HashSet::new();
    for (status, sbx) in &made {
        assert_eq!((*status, sbx.state), (201, SandboxState::Ready), "{sbx:?}");
        let sbx = &ops.get(&sbx.id, None).await.expect("operator view");
        assert!(ids.insert(sbx.id.clone()), "{} handed out twice", sbx.id);
        assert!(pids.insert(pid_of(sbx)), "a process shared: {sbx:?}");
        let out = run_inside(sbx.reachability.as_ref().expect("reach"), &["hostname"]);
        assert_eq!(out.trim(), hostname(&sbx.id));
    }
    let from_pool = made
        .iter()
        .filter(|(_, s)| pool.contains_key(&s.id))
        .count();
    let m = metrics(&ops).await;
    // Every ready member went to one create; the rest were provisioned.
    assert_eq!(from_pool, 4, "{m}");
    assert!(hits(&m) >= 4.0, "{m}");
    assert_eq!(hits(&m) + misses(&m, "empty"), 8.0, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_a_pool_cannot_serve_are_misses_provisioned_as_usual() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 1, max_age: 10m}", "");
    let d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);
    let pool = full(&ops, &data, POOLED, 1).await;
    let mut req = pooled(&[], None);
    req.inputs.insert("note".into(), "made on demand".into());
    let (status, sbx) = alpha.create(&req, Some(WAIT), None).await.expect("create");
    assert_eq!((status, sbx.state), (201, SandboxState::Ready));
    assert!(!pool.contains_key(&sbx.id), "not from the pool");
    assert_eq!(
        sbx.inputs.get("note").map(String::as_str),
        Some("made on demand")
    );
    let m = metrics(&ops).await;
    assert_eq!(misses(&m, "ineligible"), 1.0, "{m}");
    assert_eq!(hits(&m), 0.0, "{m}");
    assert_eq!(members(&ops, &data, POOLED).await.len(), 1);
    // Another profile is no pool's business.
    let (status, plain) = alpha
        .create(&testkit::local_shell(), Some(WAIT), None)
        .await
        .expect("create");
    assert_eq!(status, 201);
    assert!(!pool.contains_key(&plain.id));
    let m = metrics(&ops).await;
    assert_eq!(
        hits(&m) + misses(&m, "empty") + misses(&m, "ineligible"),
        1.0
    );
    assert!(!m.contains("profile=\"profile.local-shell\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_whose_members_fail_backs_off() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup_with(
        dir.path(),
        "{size: 2, max_age: 10m}",
        "[pools]\nrefill_interval = \"10ms\"\n",
        true,
    );
    let d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let failures = "sandboxer_pool_refill_failures_total{profile=\"profile.broken-pool\"}";
    until(WAIT, "two refill failures", || async {
        series(&metrics(&ops).await, failures) >= 2.0
    })
    .await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = series(&metrics(&ops).await, failures);
    // Without back-off, one start every 10ms would fail hundreds of times
    // in these seconds; with it (1s, 2s, 4s, ... between rounds of at most
    // `refill_concurrency` starts) a handful. A slow machine only lowers it.
    let bound = 2.0 * (started.elapsed().as_secs_f64().log2().ceil() + 3.0);
    assert!(n <= bound, "{n} failures in {:?}", started.elapsed());
    let m = metrics(&ops).await;
    assert_eq!(
        series(
            &m,
            "sandboxer_pool_members{profile=\"profile.broken-pool\",state=\"ready\"}"
        ),
        0.0
    );
    // The healthy pool next to it is not held up.
    full(&ops, &data, POOLED, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_tears_the_unassigned_members_down() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 2, max_age: 10m}", "");
    let mut d = start(&data, &args, &[]);
    let ops = d.client_with(OPS);
    let alpha = d.client_with(ALPHA);
    full(&ops, &data, POOLED, 2).await;
    let (_, kept) = alpha
        .create(&pooled(&[], None), Some(WAIT), None)
        .await
        .expect("create");
    let pool = full(&ops, &data, POOLED, 2).await;
    let kept = ops.get(&kept.id, None).await.expect("operator view");
    assert!(d.terminate().success());
    for (id, m) in &pool {
        assert!(!alive(pid_of(m)), "{id} still running after shutdown");
        assert!(
            !data.join("sandboxes").join(id).exists(),
            "{id} left a workspace"
        );
    }
    assert!(
        alive(pid_of(&kept)),
        "a consumer's sandbox outlives the daemon"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_pools_disabled_no_member_is_made() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let args = setup(dir.path(), "{size: 2, max_age: 10m}", "");
    let d = start(&data, &args, &[("SANDBOXER_POOLS__ENABLED", "false")]);
    let ops = d.client_with(OPS);
    let (status, sbx) = d
        .client_with(ALPHA)
        .create(&pooled(&[], None), Some(WAIT), None)
        .await
        .expect("create");
    assert_eq!((status, sbx.state), (201, SandboxState::Ready));
    let m = metrics(&ops).await;
    assert!(!m.contains("sandboxer_pool_size{"), "{m}");
    assert_eq!(sandbox_dirs(&data), BTreeSet::from([sbx.id.clone()]));
}

fn catalog_error(profile_yaml: &str) -> String {
    let dir = TestDir::new();
    let profiles: PathBuf = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::write(profiles.join("pooled.yaml"), profile_yaml).expect("write");
    let settings = testkit::settings(&dir.path().join("data"));
    let registry = sandboxerd::registry(&settings);
    match sandboxerd::catalog::Catalog::load(
        &profiles,
        &testkit::repo_root().join("extensions"),
        &registry,
    ) {
        Ok(_) => panic!("accepted: {profile_yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_bad_pool_is_refused_at_start_naming_the_file_and_the_field() {
    let shell = std::fs::read_to_string(testkit::repo_root().join("profiles/local-shell.yaml"))
        .expect("profile");
    let with = |extra: &str| format!("{shell}\n{extra}\n");
    for (extra, field) in [
        ("pool: {size: 1000, max_age: 10m}", "field `pool.size`"),
        ("pool: {size: 2, max_age: 0s}", "field `pool.max_age`"),
        ("pool: {size: 2, max_age: soon}", "field `pool.max_age`"),
        ("pool: {size: 2}", "pool"),
        ("pool: {size: -1, max_age: 1m}", "pool"),
        (
            "inputs:\n  repo:\n    required: true\npool: {size: 2, max_age: 10m}",
            "field `pool`: a pooled sandbox is made before any create",
        ),
    ] {
        let err = catalog_error(&with(extra));
        assert!(err.contains("pooled.yaml"), "{extra}: {err}");
        assert!(err.contains(field), "{extra}: {err}");
    }
    // A good one loads, and `size: 0` keeps no pool.
    let dir = TestDir::new();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::write(
        profiles.join("a.yaml"),
        with("pool: {size: 3, max_age: 30m}"),
    )
    .expect("write");
    std::fs::write(
        profiles.join("b.yaml"),
        with("pool: {size: 0, max_age: 30m}").replace("profile.local-shell", "profile.b"),
    )
    .expect("write");
    let settings = testkit::settings(&dir.path().join("data"));
    let catalog = sandboxerd::catalog::Catalog::load(
        &profiles,
        &testkit::repo_root().join("extensions"),
        &sandboxerd::registry(&settings),
    )
    .expect("load");
    let pool = catalog.profiles["profile.local-shell"].pool.expect("pool");
    assert_eq!((pool.size, pool.max_age), (3, Duration::from_secs(1800)));
    assert!(catalog.profiles["profile.b"].pool.is_none());
}
