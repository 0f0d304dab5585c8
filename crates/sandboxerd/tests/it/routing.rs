//! The router: policies, skipped candidates, failover before ready, the
//! decision recorded on the sandbox, and the catalog rules of routing.
//!
//! Every candidate here is real code: catalog entries that run the
//! `ext.local` backend (`backend: ext.local`) with their own class, price,
//! capabilities and `bwrap` option. `ext.local-missing` points `bwrap` at a
//! path that does not exist (unavailable, so skipped);
//! `ext.local-misconfigured` points it at `/bin/ls`, a binary that is not
//! bubblewrap: it is available, and every sandbox on it fails before ready,
//! for real, which is what a failover needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use sandboxer_api::{
    Capabilities, CostBreakdown, ExtensionClass, ExtensionSpec, Isolation, LedgerKind, NetworkMode,
    Pricing, RoutingPolicy,
};
use sandboxerd::routing::{isolates_enough, order, Candidate};
use serde_json::{json, Value};

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, Reply, TestApp, TestDir};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write");
}

/// The test catalog: five entries over the `ext.local` backend and one
/// routed profile per case.
fn catalog(dir: &Path) -> (PathBuf, PathBuf) {
    let root = testkit::repo_root();
    let profiles = dir.join("profiles");
    let extensions = dir.join("extensions");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::create_dir_all(&extensions).expect("mkdir");
    let local = std::fs::read_to_string(root.join("extensions/ext.local.yaml")).expect("ext");
    let entry = |id: &str, extra: &str, class: &str, price: i64| {
        local
            .replace(
                "id: ext.local",
                &format!("id: {id}\nbackend: ext.local{extra}"),
            )
            .replace("class: self-hosted", &format!("class: {class}"))
            .replace("credits_per_hour: 1", &format!("credits_per_hour: {price}"))
    };
    write(
        &extensions,
        "ext.local.yaml",
        &local.replace("credits_per_hour: 1", "credits_per_hour: 3600"),
    );
    write(
        &extensions,
        "ext.local-saas.yaml",
        &entry("ext.local-saas", "", "saas", 1800),
    );
    write(
        &extensions,
        "ext.local-misconfigured.yaml",
        &entry(
            "ext.local-misconfigured",
            "\noptions:\n  bwrap: /bin/ls",
            "self-hosted",
            1800,
        ),
    );
    write(
        &extensions,
        "ext.local-missing.yaml",
        &entry(
            "ext.local-missing",
            "\noptions:\n  bwrap: /nonexistent/bin/bwrap",
            "self-hosted",
            1,
        ),
    );
    write(
        &extensions,
        "ext.local-nosnap.yaml",
        &entry("ext.local-nosnap", "", "self-hosted", 1)
            .replace("snapshot: true", "snapshot: false")
            .replace("restore: true", "restore: false"),
    );
    let shell = std::fs::read_to_string(root.join("profiles/local-shell.yaml")).expect("profile");
    write(&profiles, "local-shell.yaml", &shell);
    let routed = |id: &str, policy: &str, candidates: &str, extra: &str| {
        shell.replace("profile.local-shell", id).replace(
            "extension: ext.local",
            &format!("routing:\n  policy: {policy}\n  candidates: [{candidates}]{extra}"),
        )
    };
    for (file, id, policy, candidates, extra) in [
        (
            "a.yaml",
            "profile.prefer-self",
            "prefer-self-hosted",
            "ext.local-saas, ext.local",
            "",
        ),
        (
            "b.yaml",
            "profile.cheapest",
            "lowest-cost",
            "ext.local, ext.local-saas",
            "",
        ),
        (
            "c.yaml",
            "profile.skip-missing",
            "explicit",
            "ext.local-missing, ext.local",
            "",
        ),
        (
            "d.yaml",
            "profile.needs-snapshots",
            "explicit",
            "ext.local-nosnap, ext.local",
            "\n  requires_snapshot: true",
        ),
        (
            "e.yaml",
            "profile.failover",
            "explicit",
            "ext.local-misconfigured, ext.local",
            "",
        ),
        (
            "f.yaml",
            "profile.all-fail",
            "explicit",
            "ext.local-misconfigured, ext.local-missing",
            "",
        ),
        (
            "g.yaml",
            "profile.none-left",
            "explicit",
            "ext.local-missing",
            "",
        ),
    ] {
        write(&profiles, file, &routed(id, policy, candidates, extra));
    }
    (profiles, extensions)
}

async fn app(enforce: bool) -> TestApp {
    TestApp::with(|dir, s| {
        let (profiles, extensions) = catalog(dir);
        s.profiles_dir = profiles;
        s.extensions_dir = extensions;
        s.credits.enforce = enforce;
    })
    .await
}

async fn create(t: &TestApp, profile: &str) -> Reply {
    t.call(
        Method::POST,
        "/v1/sandboxes?wait=30s",
        Some(json!({"profile": profile})),
    )
    .await
}

fn considered(sbx: &Value) -> Vec<(String, Option<String>)> {
    sbx["route"]["considered"]
        .as_array()
        .expect("considered")
        .iter()
        .map(|c| {
            (
                c["extension"].as_str().expect("extension").to_owned(),
                c["skipped"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn estimates_follow_the_policy_and_explain_it() {
    let t = app(false).await;
    // prefer-self-hosted: ext.local (self-hosted, 3600/h) before the cheaper SaaS entry.
    let (s, _, e) = t
        .call(
            Method::GET,
            "/v1/estimate?profile=profile.prefer-self&ttl=30m",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["extension"], "ext.local");
    assert_eq!(e["credits"], 1800);
    assert_eq!(
        e["breakdown"],
        json!({"credits_per_hour": 3600, "price_factor_percent": 100, "seconds": 1800, "credits": 1800})
    );
    assert_eq!(e["route"]["policy"], "prefer-self-hosted");
    assert_eq!(e["route"]["chosen"], "ext.local");
    assert_eq!(
        considered(&e),
        [("ext.local".into(), None), ("ext.local-saas".into(), None)]
    );
    // lowest-cost: the SaaS entry at half the price.
    let (_, _, e) = t
        .call(
            Method::GET,
            "/v1/estimate?profile=profile.cheapest&ttl=30m",
            None,
        )
        .await;
    assert_eq!(
        (e["extension"].as_str(), e["credits"].as_i64()),
        (Some("ext.local-saas"), Some(900))
    );
    assert_eq!(e["route"]["considered"][0]["estimate_credits"], 900);
    assert_eq!(e["route"]["considered"][1]["estimate_credits"], 1800);
    // A bound profile has no route.
    let (_, _, e) = t
        .call(
            Method::GET,
            "/v1/estimate?profile=profile.local-shell",
            None,
        )
        .await;
    assert_eq!(e["extension"], "ext.local");
    assert_eq!(e["credits"], 3600, "the default ttl of 1h");
    assert!(e["route"].is_null());
    for (uri, status, code) in [
        (
            "/v1/estimate",
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_profile",
        ),
        (
            "/v1/estimate?profile=profile.nope",
            StatusCode::NOT_FOUND,
            "profile_not_found",
        ),
        (
            "/v1/estimate?profile=profile.cheapest&ttl=9d",
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl_exceeds_max",
        ),
        (
            "/v1/estimate?profile=profile.cheapest&ttl=soon",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_duration",
        ),
        (
            "/v1/estimate?profile=profile.cheapest&x=1",
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
        ),
        (
            "/v1/estimate?profile=profile.none-left",
            StatusCode::SERVICE_UNAVAILABLE,
            "no_extension_available",
        ),
    ] {
        let (s, _, b) = t.call(Method::GET, uri, None).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{uri}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_skips_unavailable_and_incapable_candidates_and_says_why() {
    require_bwrap();
    let t = app(false).await;
    let (s, _, sbx) = create(&t, "profile.skip-missing").await;
    assert_eq!(s, StatusCode::CREATED, "{sbx}");
    assert_eq!(sbx["state"], "ready");
    assert_eq!(sbx["extension"], "ext.local");
    let route = considered(&sbx);
    assert_eq!(route[0].0, "ext.local-missing");
    let why = route[0].1.as_deref().expect("skipped");
    assert!(
        why.starts_with("unavailable: bubblewrap not found at /nonexistent/bin/bwrap"),
        "{why}"
    );
    assert_eq!(route[1], ("ext.local".into(), None));
    assert_eq!(sbx["route"]["chosen"], "ext.local");

    let (s, _, sbx) = create(&t, "profile.needs-snapshots").await;
    assert_eq!(s, StatusCode::CREATED, "{sbx}");
    assert_eq!(
        considered(&sbx)[0],
        (
            "ext.local-nosnap".into(),
            Some("cannot snapshot and restore, which the profile requires".into())
        )
    );
    // The decision stays on the sandbox.
    let id = sbx["id"].as_str().expect("id");
    let (_, _, got) = t
        .call(Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(got["route"], sbx["route"]);
    // A bound profile's sandbox has none.
    let (_, _, bound) = create(&t, "profile.local-shell").await;
    assert!(bound["route"].is_null());

    // Nothing left: 503, naming each candidate's reason.
    let (s, _, b) = create(&t, "profile.none-left").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b["code"], "no_extension_available");
    assert!(
        b["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ext.local-missing: unavailable")),
        "{b}"
    );
    // placement.host no candidate has.
    let (s, _, b) = t
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"profile": "profile.skip-missing", "placement": {"host": "elsewhere"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (b["code"].as_str(), b["field"].as_str()),
        (Some("unknown_host"), Some("placement.host"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_before_ready_fails_over_to_the_next_candidate() {
    require_bwrap();
    let t = app(true).await;
    t.state
        .db
        .grant("default", 10_000, "test", None)
        .await
        .expect("grant");
    let (s, _, sbx) = create(&t, "profile.failover").await;
    assert_eq!(s, StatusCode::CREATED, "{sbx}");
    let id = sbx["id"].as_str().expect("id");
    assert_eq!(sbx["state"], "ready");
    assert_eq!(sbx["extension"], "ext.local", "same id, new extension");
    assert_eq!(sbx["host"], "local");
    let route = considered(&sbx);
    assert_eq!(route[0].0, "ext.local-misconfigured");
    let why = route[0].1.as_deref().expect("the failure is recorded");
    assert!(
        why.starts_with("failed before ready: provision_failed: bubblewrap failed:")
            && why.contains("ls"),
        "{why}"
    );
    assert_eq!(route[1], ("ext.local".into(), None));
    assert_eq!(sbx["route"]["chosen"], "ext.local");
    // An event says why it moved.
    let (_, _, events) = t
        .call(Method::GET, &format!("/v1/sandboxes/{id}/events"), None)
        .await;
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with(
            "failover: ext.local-misconfigured failed before ready (provision_failed"
        ) && r.ends_with("trying ext.local at local")),
        "{reasons:?}"
    );
    // The reservation followed the price: 1800 for an hour there, 3600 here.
    assert_eq!(sbx["cost"]["estimate_credits"], 3600);
    let b = t.state.db.balance("default").await.expect("balance");
    assert_eq!((b.balance, b.reserved), (10_000, 3600));
    assert_eq!(
        t.state
            .db
            .balance_from_ledger("default")
            .await
            .expect("sums"),
        (10_000, 3600)
    );
    let (_, _, metrics) = t.call(Method::GET, "/metrics", None).await;
    assert!(metrics
        .as_str()
        .expect("text")
        .contains("sandboxer_route_failovers_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_candidate_fails_the_sandbox_fails_with_the_whole_story() {
    require_bwrap();
    let t = app(true).await;
    // Enough for the first candidate (1800) but not the second's 3600.
    t.state
        .db
        .grant("default", 2000, "test", None)
        .await
        .expect("grant");
    let (s, _, sbx) = create(&t, "profile.failover").await;
    assert_eq!(s, StatusCode::OK, "{sbx}");
    assert_eq!(sbx["state"], "failed");
    let route = considered(&sbx);
    assert!(route[0]
        .1
        .as_deref()
        .is_some_and(|w| w.starts_with("failed before ready")));
    assert_eq!(
        route[1].1.as_deref(),
        Some("insufficient credits: 1800 needed, 200 available")
    );
    assert_eq!(sbx["failure"]["code"], "provision_failed");
    // Settled: nothing held, nothing charged.
    let id = sbx["id"].as_str().expect("id").to_owned();
    let start = std::time::Instant::now();
    loop {
        let b = t.state.db.balance("default").await.expect("balance");
        if b.reserved == 0 {
            assert_eq!(b.balance, 2000);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (entries, _) = t
        .state
        .db
        .ledger_entries(&sandboxerd::store::LedgerFilter {
            project: "default".into(),
            sandbox_id: Some(id),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("ledger");
    assert!(entries.iter().all(|e| e.kind != LedgerKind::Debit));

    // Both failing for their own reasons.
    let (s, _, sbx) = create(&t, "profile.all-fail").await;
    assert_eq!(s, StatusCode::OK, "{sbx}");
    let route = considered(&sbx);
    assert!(route[0]
        .1
        .as_deref()
        .is_some_and(|w| w.starts_with("failed before ready")));
    assert!(route[1]
        .1
        .as_deref()
        .is_some_and(|w| w.starts_with("unavailable:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_burst_profile_routes_to_ext_local() {
    require_bwrap();
    let t = TestApp::new().await;
    let (s, _, sbx) = create(&t, "profile.burst-sandbox").await;
    assert_eq!(s, StatusCode::CREATED, "{sbx}");
    assert_eq!(sbx["extension"], "ext.local");
    assert_eq!(
        sbx["route"],
        json!({
            "policy": "prefer-self-hosted",
            "considered": [{"extension": "ext.local", "estimate_credits": 1}],
            "chosen": "ext.local"
        })
    );
}

fn spec(id: &str, class: ExtensionClass, credits_per_hour: i64) -> ExtensionSpec {
    ExtensionSpec {
        id: id.into(),
        description: String::new(),
        class,
        capabilities: Capabilities {
            snapshot: false,
            restore: false,
            isolation: vec![Isolation::Container],
            network_policies: vec![NetworkMode::None],
        },
        pricing: Pricing {
            credits_per_hour,
            credits_per_snapshot_gib: 0,
            credits_per_paused_hour: 0,
        },
        hosts: vec![],
        backend: None,
        options: Default::default(),
    }
}

#[test]
fn policies_order_candidates_stably() {
    let specs = [
        spec("ext.saas-a", ExtensionClass::Saas, 5),
        spec("ext.self-b", ExtensionClass::SelfHosted, 9),
        spec("ext.saas-c", ExtensionClass::Saas, 1),
        spec("ext.self-d", ExtensionClass::SelfHosted, 5),
    ];
    let candidates = || {
        specs
            .iter()
            .map(|s| Candidate {
                spec: s,
                hosts: vec![],
                down: vec![],
                built_in: true,
                breakdown: CostBreakdown {
                    credits_per_hour: s.pricing.credits_per_hour,
                    price_factor_percent: 100,
                    seconds: 3600,
                    credits: s.pricing.credits_per_hour,
                },
            })
            .collect::<Vec<_>>()
    };
    let ids = |policy| {
        order(policy, candidates())
            .iter()
            .map(|c| c.spec.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(RoutingPolicy::Explicit),
        ["ext.saas-a", "ext.self-b", "ext.saas-c", "ext.self-d"]
    );
    assert_eq!(
        ids(RoutingPolicy::PreferSelfHosted),
        ["ext.self-b", "ext.self-d", "ext.saas-a", "ext.saas-c"]
    );
    assert_eq!(
        ids(RoutingPolicy::LowestCost),
        ["ext.saas-c", "ext.saas-a", "ext.self-d", "ext.self-b"]
    );
}

#[test]
fn stronger_isolation_satisfies_weaker() {
    use Isolation::*;
    assert!(isolates_enough(&[Container], Process));
    assert!(isolates_enough(&[Microvm], Gvisor));
    assert!(!isolates_enough(&[Process], Container));
    assert!(!isolates_enough(&[Microvm], Saas));
    assert!(isolates_enough(&[Saas], Saas));
    assert!(!isolates_enough(&[Saas], Process));
}

#[tokio::test]
async fn the_catalog_refuses_bad_routing() {
    let cases = [
        (
            "extension: ext.local",
            "extension: ext.local\nrouting:\n  policy: explicit\n  candidates: [ext.local]",
            "give exactly one of them",
        ),
        ("extension: ext.local\n", "", "field `extension`: required"),
        (
            "extension: ext.local",
            "routing:\n  policy: explicit\n  candidates: []",
            "name at least one extension",
        ),
        (
            "extension: ext.local",
            "routing:\n  policy: explicit\n  candidates: [ext.local, ext.local]",
            "`routing.candidates[1]`: `ext.local` is listed twice",
        ),
        (
            "extension: ext.local",
            "routing:\n  policy: explicit\n  candidates: [ext.nope]",
            "`routing.candidates[0]`: `ext.nope` is not in the extension catalog",
        ),
        (
            "extension: ext.local",
            "routing:\n  policy: cheapest\n  candidates: [ext.local]",
            "policy",
        ),
        (
            "cost_class: free",
            "cost_class: free\nprice_factor_percent: 0",
            "field `price_factor_percent`",
        ),
    ];
    for (from, to, want) in cases {
        let dir = TestDir::new();
        let (profiles, extensions) = catalog(dir.path());
        let text = std::fs::read_to_string(profiles.join("local-shell.yaml")).expect("read");
        assert!(text.contains(from), "{from}");
        std::fs::write(profiles.join("local-shell.yaml"), text.replace(from, to)).expect("write");
        let mut s = testkit::settings(&dir.path().join("data"));
        s.profiles_dir = profiles;
        s.extensions_dir = extensions;
        let err = match sandboxerd::build_state(s).await {
            Ok(_) => panic!("{to}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(want) && err.contains("local-shell.yaml"),
            "{to}: {err}"
        );
    }
    // What the extension cannot enforce leaves the profile out (saying why);
    // the daemon still starts.
    let dir = TestDir::new();
    let (profiles, extensions) = catalog(dir.path());
    let text = std::fs::read_to_string(profiles.join("local-shell.yaml")).expect("read");
    std::fs::write(
        profiles.join("local-shell.yaml"),
        text.replace("isolation: process", "isolation: container"),
    )
    .expect("write");
    let mut s = testkit::settings(&dir.path().join("data"));
    s.profiles_dir = profiles;
    s.extensions_dir = extensions;
    let state = sandboxerd::build_state(s).await.expect("starts");
    assert!(!state.catalog.profiles.contains_key("profile.local-shell"));
    let why = &state.catalog.rejected["profile.local-shell"];
    assert!(
        why.contains("`isolation`") && why.contains("local-shell.yaml"),
        "{why}"
    );
    // An entry over a backend that does not take its options.
    let dir = TestDir::new();
    let (profiles, extensions) = catalog(dir.path());
    let text = std::fs::read_to_string(extensions.join("ext.local-missing.yaml")).expect("read");
    std::fs::write(
        extensions.join("ext.local-missing.yaml"),
        text.replace("bwrap: /nonexistent", "colour: blue\n  bwrap: /nonexistent"),
    )
    .expect("write");
    let mut s = testkit::settings(&dir.path().join("data"));
    s.profiles_dir = profiles;
    s.extensions_dir = extensions;
    let err = match sandboxerd::build_state(s).await {
        Ok(_) => panic!("unknown option accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("ext.local-missing") && err.contains("`colour` is not an option"),
        "{err}"
    );
}
