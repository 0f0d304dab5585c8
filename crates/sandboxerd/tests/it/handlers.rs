//! Handler tests: a fresh database per test, requests through `Router::oneshot`.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use sandboxerd::store::{now_ms, NewSandbox};
use serde_json::{json, Value};

use sandboxer_testkit as testkit;
use testkit::{assert_problem, TestApp};

/// Insert a sandbox row directly (no backend), for list and TTL tests.
async fn insert(
    t: &TestApp,
    project: &str,
    labels: &[(&str, &str)],
    ttl_ms: i64,
    max_ms: i64,
) -> String {
    let new = NewSandbox {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..testkit::sandbox_row(project, ttl_ms, max_ms)
    };
    let id = new.id.clone();
    t.state.db.create_sandbox(new, None).await.expect("insert");
    id
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let t = TestApp::new().await;
    let (s, _, b) = t.call(Method::GET, "/healthz", None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"status": "ok"})));
    let (s, _, b) = t.call(Method::GET, "/readyz", None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"status": "ok"})));
    insert(&t, "p", &[], 60_000, 120_000).await;
    let (s, ctype, b) = t.call(Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/plain"));
    let text = b.as_str().expect("text");
    assert!(
        text.contains("sandboxer_sandboxes{state=\"requested\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sandboxer_create_ready_seconds_bucket{le=\"+Inf\"}"),
        "{text}"
    );
    assert!(
        text.contains(
            "sandboxer_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );
    // No receiver configured: an event written is not a backlog.
    assert!(text.contains("sandboxer_outbox_backlog 0\n"), "{text}");
    assert!(
        text.contains("sandboxer_sandboxes{state=\"paused\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn catalog_lists_and_finds() {
    let t = TestApp::new().await;
    let (s, _, b) = t.call(Method::GET, "/v1/profiles", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|p| p["id"] == "profile.local-shell"));
    let (s, _, b) = t
        .call(Method::GET, "/v1/profiles/profile.local-shell", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["ttl"], json!({"default": "1h", "max": "24h"}));
    assert_eq!(b["extension"], "ext.local");
    let got = t.call(Method::GET, "/v1/profiles/profile.nope", None).await;
    assert_problem(&got, StatusCode::NOT_FOUND, "profile_not_found", None);
    let (s, _, b) = t.call(Method::GET, "/v1/extensions/ext.local", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["class"], "self-hosted");
    assert!(b["availability"]["available"].is_boolean());
    let got = t.call(Method::GET, "/v1/extensions/ext.nope", None).await;
    assert_problem(&got, StatusCode::NOT_FOUND, "extension_not_found", None);
}

#[tokio::test]
async fn create_rejects_bad_input_naming_the_field() {
    let t = TestApp::new().await;
    let cases = [
        (
            json!({"profile": "profile.nope"}),
            StatusCode::NOT_FOUND,
            "profile_not_found",
            Some("profile"),
        ),
        (
            json!({"profile": "profile.local-shell", "ttl": "soon"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_duration",
            Some("ttl"),
        ),
        (
            json!({"profile": "profile.local-shell", "ttl": "0s"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_duration",
            Some("ttl"),
        ),
        (
            json!({"profile": "profile.local-shell", "ttl": "25h"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl_exceeds_max",
            Some("ttl"),
        ),
        (
            json!({"profile": "profile.local-shell", "inputs": {"repo": "/x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_input",
            Some("inputs.repo"),
        ),
        (
            json!({"profile": "profile.local-shell", "labels": {"bad key": "v"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_label",
            Some("labels.bad key"),
        ),
        (
            json!({"profile": "profile.local-shell", "consumer": {"actor_type": "xyz", "actor": "a", "project": "p"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_consumer",
            Some("consumer.actor_type"),
        ),
        (
            json!({"profile": "profile.local-shell", "placement": {"host": "elsewhere"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_host",
            Some("placement.host"),
        ),
        (
            json!({"profile": "profile.local-shell", "surprise": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            None,
        ),
        (
            json!({"profile": 7}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            None,
        ),
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_profile",
            Some("profile"),
        ),
    ];
    for (body, status, code, field) in cases {
        let got = t
            .call(Method::POST, "/v1/sandboxes", Some(body.clone()))
            .await;
        assert_problem(&got, status, code, field);
    }
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes?wait=forever",
            Some(json!({"profile": "profile.local-shell"})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_duration",
        Some("wait"),
    );
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes?wait=11m",
            Some(json!({"profile": "profile.local-shell"})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_duration",
        Some("wait"),
    );
    let got = t
        .call(
            Method::POST,
            "/v1/sandboxes?colour=red",
            Some(json!({"profile": "profile.local-shell"})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::BAD_REQUEST,
        "unknown_parameter",
        Some("colour"),
    );

    // Malformed JSON, no content type, an oversized body, a bad Idempotency-Key.
    let req = Request::post("/v1/sandboxes")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"profile\": "))
        .expect("req");
    assert_problem(
        &t.send(req).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        None,
    );
    let req = Request::post("/v1/sandboxes")
        .body(Body::from("{}"))
        .expect("req");
    assert_problem(
        &t.send(req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );
    let big = format!("{{\"profile\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let req = Request::post("/v1/sandboxes")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("req");
    assert_problem(
        &t.send(req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    let req = Request::post("/v1/sandboxes")
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", "")
        .body(Body::from(
            json!({"profile": "profile.local-shell"}).to_string(),
        ))
        .expect("req");
    assert_problem(
        &t.send(req).await,
        StatusCode::BAD_REQUEST,
        "invalid_header",
        Some("Idempotency-Key"),
    );

    // Nothing was created by any of these.
    let (_, _, b) = t.call(Method::GET, "/v1/sandboxes?include=all", None).await;
    assert_eq!(b["items"], json!([]));
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_are_problems() {
    let t = TestApp::new().await;
    assert_problem(
        &t.call(Method::GET, "/v1/nothing", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_problem(
        &t.call(Method::PUT, "/v1/sandboxes", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    for (method, uri) in [
        (Method::GET, "/v1/sandboxes/sbx_missing"),
        (Method::DELETE, "/v1/sandboxes/sbx_missing"),
        (Method::POST, "/v1/sandboxes/sbx_missing/touch"),
        (Method::POST, "/v1/sandboxes/sbx_missing/recreate"),
        (Method::GET, "/v1/sandboxes/sbx_missing/events"),
    ] {
        assert_problem(
            &t.call(method, uri, None).await,
            StatusCode::NOT_FOUND,
            "sandbox_not_found",
            None,
        );
    }
    let got = t
        .call(
            Method::PATCH,
            "/v1/sandboxes/sbx_missing/ttl",
            Some(json!({"duration": "1h"})),
        )
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "sandbox_not_found", None);
}

/// The label filter's substring pre-check (`instr` on the stored JSON) must
/// agree with `json_extract` for values JSON escapes and for keys with dots,
/// spaces and non-ASCII, and must not match a value that merely starts with
/// the one asked for.
#[tokio::test]
async fn list_label_filter_matches_escaped_pairs_exactly() {
    let t = TestApp::new().await;
    let odd = insert(
        &t,
        "alpha",
        &[("dotted.ké y", "v\"a\\l ü/é"), ("team", "red")],
        60_000,
        120_000,
    )
    .await;
    insert(&t, "alpha", &[("team", "redder")], 60_000, 120_000).await;
    insert(&t, "alpha", &[("team", "re")], 60_000, 120_000).await;
    let ids = |b: &Value| -> Vec<String> {
        b["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let query = serde_urlencoded::to_string([("label", "dotted.ké y=v\"a\\l ü/é")]).expect("query");
    let (s, _, b) = t
        .call(Method::GET, &format!("/v1/sandboxes?{query}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(ids(&b), vec![odd.clone()]);
    let (_, _, b) = t
        .call(Method::GET, "/v1/sandboxes?label=team=red", None)
        .await;
    assert_eq!(ids(&b), vec![odd]);
}

#[tokio::test]
async fn list_filters_and_paginates() {
    let t = TestApp::new().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let team = if i % 2 == 0 { "red" } else { "blue" };
        let project = if i < 5 { "alpha" } else { "beta" };
        ids.push(
            insert(
                &t,
                project,
                &[("team", team), ("dotted.key", "v")],
                60_000,
                120_000,
            )
            .await,
        );
    }
    let (s, _, b) = t.call(Method::GET, "/v1/sandboxes?limit=3", None).await;
    assert_eq!(s, StatusCode::OK);
    let page1: Vec<String> = b["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        page1,
        ids.iter().rev().take(3).cloned().collect::<Vec<_>>(),
        "newest first"
    );
    let cursor = b["next_cursor"].as_str().expect("cursor").to_owned();
    let mut seen = page1.clone();
    let mut next = Some(cursor);
    while let Some(c) = next {
        let (_, _, b) = t
            .call(
                Method::GET,
                &format!("/v1/sandboxes?limit=3&cursor={c}"),
                None,
            )
            .await;
        seen.extend(
            b["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|s| s["id"].as_str().expect("id").to_owned()),
        );
        next = b["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 7, "every row once");
    let count = |b: &Value| b["items"].as_array().map(Vec::len).unwrap_or(0);
    let (_, _, b) = t
        .call(Method::GET, "/v1/sandboxes?label=team=red", None)
        .await;
    assert_eq!(count(&b), 4);
    let (_, _, b) = t
        .call(
            Method::GET,
            "/v1/sandboxes?label=team=red&label=dotted.key=v&project=beta",
            None,
        )
        .await;
    assert_eq!(count(&b), 1);
    let (_, _, b) = t.call(Method::GET, "/v1/sandboxes?state=requested&profile=profile.local-shell&extension=ext.local&host=local", None).await;
    assert_eq!(count(&b), 7);
    let (_, _, b) = t
        .call(Method::GET, "/v1/sandboxes?state=ready,active", None)
        .await;
    assert_eq!(count(&b), 0);
    for (uri, field) in [
        ("/v1/sandboxes?state=sleeping", "state"),
        ("/v1/sandboxes?limit=0", "limit"),
        ("/v1/sandboxes?limit=1001", "limit"),
        ("/v1/sandboxes?limit=ten", "limit"),
        ("/v1/sandboxes?label=team", "label"),
        ("/v1/sandboxes?include=some", "include"),
        ("/v1/sandboxes?limit=1&limit=2", "limit"),
    ] {
        assert_problem(
            &t.call(Method::GET, uri, None).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
            Some(field),
        );
    }
    assert_problem(
        &t.call(Method::GET, "/v1/sandboxes?cursor=abc", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        Some("cursor"),
    );
    assert_problem(
        &t.call(Method::GET, "/v1/sandboxes?sort=id", None).await,
        StatusCode::BAD_REQUEST,
        "unknown_parameter",
        Some("sort"),
    );
}

#[tokio::test]
async fn extend_ttl_moves_forward_and_stops_at_the_ceiling() {
    let t = TestApp::new().await;
    let id = insert(&t, "p", &[], 60 * 60_000, 3 * 60 * 60_000).await;
    let (_, _, before) = t
        .call(Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    let (s, _, b) = t
        .call(
            Method::PATCH,
            &format!("/v1/sandboxes/{id}/ttl"),
            Some(json!({"duration": "30m"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["ttl_capped"], false);
    let t0 = chrono::DateTime::parse_from_rfc3339(before["expires_at"].as_str().expect("t"))
        .expect("rfc3339");
    let t1 = chrono::DateTime::parse_from_rfc3339(b["expires_at"].as_str().expect("t"))
        .expect("rfc3339");
    assert_eq!((t1 - t0).num_minutes(), 30);
    let (s, _, b) = t
        .call(
            Method::PATCH,
            &format!("/v1/sandboxes/{id}/ttl"),
            Some(json!({"duration": "1d"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["ttl_capped"], true);
    let created = chrono::DateTime::parse_from_rfc3339(b["created_at"].as_str().expect("t"))
        .expect("rfc3339");
    let capped = chrono::DateTime::parse_from_rfc3339(b["expires_at"].as_str().expect("t"))
        .expect("rfc3339");
    assert_eq!(
        (capped - created).num_minutes(),
        180,
        "never past created_at + ttl.max"
    );

    for (body, code) in [
        (json!({"duration": "later"}), "invalid_duration"),
        (json!({"duration": "0s"}), "invalid_duration"),
    ] {
        let got = t
            .call(
                Method::PATCH,
                &format!("/v1/sandboxes/{id}/ttl"),
                Some(body),
            )
            .await;
        assert_problem(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            Some("duration"),
        );
    }
    let got = t
        .call(
            Method::PATCH,
            &format!("/v1/sandboxes/{id}/ttl"),
            Some(json!({})),
        )
        .await;
    assert_problem(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", None);

    // A destroyed sandbox cannot be extended, touched or recreated.
    let (s, _, _) = t
        .call(
            Method::DELETE,
            &format!("/v1/sandboxes/{id}?wait=10s"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let got = t
        .call(
            Method::PATCH,
            &format!("/v1/sandboxes/{id}/ttl"),
            Some(json!({"duration": "1h"})),
        )
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "invalid_state", None);
    assert_problem(
        &t.call(Method::POST, &format!("/v1/sandboxes/{id}/touch"), None)
            .await,
        StatusCode::CONFLICT,
        "invalid_state",
        None,
    );
    assert_problem(
        &t.call(Method::POST, &format!("/v1/sandboxes/{id}/recreate"), None)
            .await,
        StatusCode::CONFLICT,
        "invalid_state",
        None,
    );
    // Destroy stays idempotent: 200 with the sandbox itself.
    let (s, _, b) = t
        .call(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("destroyed"))
    );
    // Destroyed ones are hidden unless asked for.
    let (_, _, b) = t.call(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(b["items"], json!([]));
    let (_, _, b) = t
        .call(Method::GET, "/v1/sandboxes?state=destroyed", None)
        .await;
    assert_eq!(b["items"][0]["id"], id);
    // Every transition is in the history, oldest first.
    let (_, _, b) = t
        .call(Method::GET, &format!("/v1/sandboxes/{id}/events"), None)
        .await;
    let states: Vec<&str> = b["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["to_state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["requested", "destroying", "destroyed"]);
    let (_, _, b) = t
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/events?limit=1"),
            None,
        )
        .await;
    let cursor = b["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, _, b) = t
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/events?limit=5&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(b["items"][0]["to_state"], "destroying");
    assert_problem(
        &t.call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/events?cursor=x"),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        Some("cursor"),
    );
}

#[tokio::test]
async fn idempotency_key_returns_the_same_sandbox_and_refuses_another_body() {
    let t = TestApp::new().await;
    let post = |body: Value, key: &'static str| {
        Request::post("/v1/sandboxes")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(body.to_string()))
            .expect("req")
    };
    // An unknown profile is refused before the key is recorded.
    let (s, _, _) = t.send(post(json!({"profile": "profile.nope"}), "k1")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let body = json!({"profile": "profile.local-shell", "labels": {"run": "1"}});
    let (s1, _, a) = t.send(post(body.clone(), "k1")).await;
    let (s2, _, b) = t.send(post(body.clone(), "k1")).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(a["id"], b["id"]);
    let got = t
        .send(post(
            json!({"profile": "profile.local-shell", "labels": {"run": "2"}}),
            "k1",
        ))
        .await;
    assert_problem(
        &got,
        StatusCode::CONFLICT,
        "idempotency_conflict",
        Some("Idempotency-Key"),
    );
    let (_, _, list) = t.call(Method::GET, "/v1/sandboxes?include=all", None).await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "one sandbox for one key"
    );
    let id = a["id"].as_str().expect("id");
    let _ = t
        .call(
            Method::DELETE,
            &format!("/v1/sandboxes/{id}?wait=30s"),
            None,
        )
        .await;
}

#[tokio::test]
async fn openapi_document_is_checked_in_and_served() {
    let generated = sandboxerd::http::openapi()
        .to_pretty_json()
        .expect("render");
    let path = testkit::repo_root().join("openapi/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in.trim() != generated.trim() {
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, format!("{generated}\n")).expect("write openapi.json");
        } else {
            panic!(
                "{} is out of date with the code; regenerate it with `just openapi` \
                 (or `UPDATE_OPENAPI=1 cargo test -p sandboxerd --test handlers openapi`)",
                path.display()
            );
        }
    }
    let t = TestApp::new().await;
    let (s, _, served) = t.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let doc: Value = serde_json::from_str(&generated).expect("json");
    assert_eq!(served, doc, "the served document is the checked-in one");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1"
    );
    for path in [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/recreate",
        "/v1/sandboxes/{id}/ttl",
        "/v1/sandboxes/{id}/touch",
        "/v1/sandboxes/{id}/events",
        "/v1/profiles",
        "/v1/extensions/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_racing_expiry_has_exactly_one_outcome() {
    let t = TestApp::new().await;
    let (mut extend_won, mut expiry_won) = (0, 0);
    for i in 0..1000 {
        // Expiring within a millisecond or two of the race.
        let id = insert(&t, "p", &[], 1 + (i % 3), 3_600_000).await;
        let (a, b) = (t.state.clone(), t.state.clone());
        let (id_a, id_b) = (id.clone(), id.clone());
        let extend = tokio::spawn(async move { a.db.extend_ttl(&id_a, None, 600_000).await });
        let expire = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            sandboxerd::lifecycle::reaper::expire(&b, std::slice::from_ref(&id_b), now_ms()).await
        });
        let extended = extend.await.expect("join").expect("extend");
        let expired = expire.await.expect("join").expect("expire");
        let row = t
            .state
            .db
            .get_sandbox(&id, None)
            .await
            .expect("get")
            .expect("row");
        match (extended, expired.is_empty()) {
            (Some((sbx, _)), true) => {
                extend_won += 1;
                assert_eq!(sbx.state.as_str(), "requested");
                assert!(row.expires_at > chrono::Utc::now(), "extended and alive");
                assert!(!matches!(
                    row.state.as_str(),
                    "expired" | "destroying" | "destroyed"
                ));
            }
            (None, false) => {
                expiry_won += 1;
                assert!(
                    matches!(row.state.as_str(), "expired" | "destroyed"),
                    "{:?}",
                    row.state
                );
            }
            (Some(_), false) => {
                panic!("{id}: the extend answered 200 and the sandbox was expired anyway")
            }
            (None, true) => {
                // Neither: the extend came after expiry time but before the sweep; the
                // next sweep expires it. The extend correctly refused.
                let again = sandboxerd::lifecycle::reaper::expire(
                    &t.state,
                    std::slice::from_ref(&id),
                    now_ms(),
                )
                .await
                .expect("expire");
                assert_eq!(again.len(), 1);
                expiry_won += 1;
            }
        }
    }
    assert_eq!(extend_won + expiry_won, 1000);
}

#[tokio::test]
async fn expire_endpoint_dry_runs_then_applies() {
    let t = TestApp::new().await;
    let due = insert(&t, "p", &[], -1000, 3_600_000).await;
    let fresh = insert(&t, "p", &[], 3_600_000, 7_200_000).await;
    let (s, _, b) = t.call(Method::POST, "/v1/expire", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["applied"], false);
    assert_eq!(b["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(b["items"][0]["id"], due);
    assert_eq!(
        b["items"][0]["state"], "requested",
        "a dry run changes nothing"
    );
    let (s, _, b) = t
        .call(Method::POST, "/v1/expire", Some(json!({"apply": true})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["applied"], true);
    assert_eq!(b["items"][0]["state"], "expired");
    let (_, _, b) = t
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{due}?wait_for=destroyed&timeout=10s"),
            None,
        )
        .await;
    assert_eq!(b["state"], "destroyed");
    let (_, _, b) = t
        .call(Method::GET, &format!("/v1/sandboxes/{fresh}"), None)
        .await;
    assert_eq!(b["state"], "requested");
    let got = t
        .call(Method::POST, "/v1/expire", Some(json!({"apply": "yes"})))
        .await;
    assert_problem(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", None);

    // Events across sandboxes, oldest first, with a cursor.
    let (s, _, b) = t.call(Method::GET, "/v1/events?limit=2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["items"][0]["sandbox_id"], due);
    assert_eq!(b["items"][0]["to_state"], "requested");
    let next = b["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, _, b) = t
        .call(Method::GET, &format!("/v1/events?after={next}"), None)
        .await;
    let states: Vec<&str> = b["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["to_state"].as_str().expect("s"))
        .collect();
    assert_eq!(states, ["expired", "destroyed"]);
    let got = t.call(Method::GET, "/v1/events?after=evt_nope", None).await;
    assert_problem(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        Some("after"),
    );
}

#[tokio::test]
async fn errors_from_the_framework_are_problems_too() {
    let t = TestApp::new().await;
    // A path segment that is not UTF-8 once decoded.
    let got = t.call(Method::GET, "/v1/sandboxes/%FF", None).await;
    assert_eq!(got.1, "application/problem+json", "{:?}", got.2);
    assert!(got.0.is_client_error());
    // An oversized body on a route that reads raw bytes.
    let big = format!("{{\"ttl\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let req = Request::post("/v1/sandboxes/sbx_x/recreate")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("req");
    assert_problem(
        &t.send(req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
}

/// Issue 22: a profile on a backend with no placement host configured is
/// refused at create, saying so, instead of failing later with an empty
/// host name.
#[tokio::test]
async fn a_profile_without_a_configured_host_is_refused_at_create() {
    let t = TestApp::new().await;
    let repo = testkit::repo_root().join("tests/fixtures/compose-canary");
    let (s, _, b) = t
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"profile": "profile.compose-e2e", "inputs": {"repo": repo}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["code"], "unknown_host", "{b}");
    assert_eq!(b["field"], "placement.host", "{b}");
    let detail = b["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("no placement host configured"), "{detail}");
}
