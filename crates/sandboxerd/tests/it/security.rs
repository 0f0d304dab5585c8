//! Tokens, per-project isolation, the operator role, the audit trail,
//! abuse limits and secrets, against the real daemon.

use std::path::Path;
use std::time::Duration;

use sandboxctl::api::{Consumer, CreateSandbox, SandboxState};
use sandboxctl::Method;

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, run_inside, token_block, TestDir};

const ALPHA: &str = "sbt_alpha_token_for_tests_only_000000000000000000000000000000000000";
const BETA: &str = "sbt_beta_token_for_tests_only_1111111111111111111111111111111111111";
const OPERATOR: &str = "sbt_operator_token_for_tests_only_22222222222222222222222222222222";
const SENTINEL: &str = "s3ntinel-VALUE-that-must-never-leak-7f3a9c";

/// A config file and a profiles dir with `profile.secret-shell` added.
fn setup(dir: &Path, limits: &str) -> (String, String) {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = std::fs::read_to_string(testkit::repo_root().join("profiles/local-shell.yaml"))
        .expect("profile");
    std::fs::write(profiles.join("local-shell.yaml"), &text).expect("write");
    std::fs::write(
        profiles.join("secret-shell.yaml"),
        text.replace("profile.local-shell", "profile.secret-shell")
            .replace(
                "    LANG: C.UTF-8",
                "    LANG: C.UTF-8\n  secret_refs:\n    API_KEY: demo",
            ),
    )
    .expect("write");
    let config = dir.join("sandboxerd.toml");
    let mut toml = String::new();
    toml.push_str(&token_block(ALPHA, "alpha-agent", "alpha", "consumer"));
    toml.push_str(&token_block(BETA, "beta-agent", "beta", "consumer"));
    toml.push_str(&token_block(OPERATOR, "ops", "ops", "operator"));
    toml.push_str(limits);
    toml.push_str("\n[secrets.demo]\nenv = \"DEMO_TEST_SENTINEL\"\n");
    std::fs::write(&config, toml).expect("write config");
    (
        config.to_string_lossy().into_owned(),
        profiles.to_string_lossy().into_owned(),
    )
}

fn code(e: &sandboxctl::ClientError) -> (Option<u16>, Option<&str>) {
    (e.status(), e.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_isolate_projects_audit_and_keep_secrets() {
    require_bwrap();
    let dir = TestDir::new();
    let (config, profiles) = setup(dir.path(), "[limits]\nlive_sandboxes_per_project = 2\n");
    let data = dir.path().join("data");
    let d = testkit::daemon!()
        .args(["--config", &config, "--profiles", &profiles])
        .envs(&[("DEMO_TEST_SENTINEL", SENTINEL)])
        .start(&data);
    let anon = &d.client;
    let alpha = d.client_with(ALPHA);
    let beta = d.client_with(BETA);
    let ops = d.client_with(OPERATOR);

    // Public routes stay open; everything else needs a valid token.
    assert_eq!(anon.health().await.expect("healthz").status, "ok");
    let err = anon.list(&Default::default()).await.expect_err("401");
    assert_eq!(code(&err), (Some(401), Some("unauthorized")));
    let err = d
        .client_with("sbt_wrong")
        .list(&Default::default())
        .await
        .expect_err("401");
    assert_eq!(code(&err), (Some(401), Some("unauthorized")));
    let (status, _) = anon
        .request_json(Method::GET, "/v1/profiles", None)
        .await
        .expect("call");
    assert_eq!(status, 401);

    // The consumer comes from the token; claiming another project is refused.
    let req = CreateSandbox {
        profile: "profile.secret-shell".into(),
        ..CreateSandbox::default()
    };
    let (_, a) = alpha
        .create(&req, Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    assert_eq!(a.state, SandboxState::Ready, "{a:?}");
    assert_eq!(a.consumer.project, "alpha");
    assert_eq!(a.consumer.actor, "alpha-agent");
    let mut claim = testkit::local_shell();
    claim.consumer = Some(Consumer {
        actor_type: "agt".into(),
        actor: "beta-agent".into(),
        project: "beta".into(),
    });
    let err = alpha.create(&claim, None, None).await.expect_err("403");
    assert_eq!(code(&err), (Some(403), Some("forbidden")));

    // Another project's sandbox does not exist for beta.
    for err in [
        beta.get(&a.id, None).await.expect_err("404"),
        beta.destroy(&a.id, None).await.expect_err("404"),
        beta.touch(&a.id).await.expect_err("404"),
        beta.extend_ttl(&a.id, "1h").await.expect_err("404"),
        beta.events(&a.id).await.expect_err("404"),
    ] {
        assert_eq!(code(&err), (Some(404), Some("sandbox_not_found")));
    }
    let mut q = sandboxctl::ListQuery {
        project: Some("alpha".into()),
        ..Default::default()
    };
    assert!(
        beta.list(&q).await.expect("list").items.is_empty(),
        "a consumer's project filter is its own"
    );
    q.project = None;
    assert!(beta.list(&q).await.expect("list").items.is_empty());
    let (_, events) = beta
        .request_json(Method::GET, "/v1/events", None)
        .await
        .expect("events");
    assert_eq!(
        events["items"],
        serde_json::json!([]),
        "no other project's events"
    );

    // Operators see all, filter by project, and alone may expire or read the audit trail.
    q.project = Some("alpha".into());
    assert_eq!(ops.list(&q).await.expect("list").items.len(), 1);
    assert_eq!(
        code(&alpha.expire(false).await.expect_err("403")),
        (Some(403), Some("forbidden"))
    );
    assert_eq!(
        code(&alpha.audit(None, None, 10).await.expect_err("403")),
        (Some(403), Some("forbidden"))
    );
    let audit = ops.audit(Some("alpha"), None, 100).await.expect("audit");
    let create = audit
        .items
        .iter()
        .find(|e| {
            e.method == "POST"
                && e.path == "/v1/sandboxes"
                && e.sandbox_id.as_deref() == Some(a.id.as_str())
        })
        .expect("the create is audited with its sandbox");
    assert_eq!(
        (create.actor.as_str(), create.role.as_str(), create.status),
        ("alpha-agent", "consumer", 201)
    );
    let refused = audit
        .items
        .iter()
        .find(|e| e.status == 403)
        .expect("the refused claim is audited");
    assert_eq!(refused.code.as_deref(), Some("forbidden"));
    let beta_audit = ops
        .audit(Some("beta"), Some(&a.id), 100)
        .await
        .expect("audit");
    assert!(
        beta_audit.items.iter().all(|e| e.status == 404),
        "beta's attempts on alpha's sandbox failed"
    );
    assert_eq!(
        beta_audit.items.len(),
        3,
        "destroy, touch, extend were recorded (gets are not mutating): {:?}",
        beta_audit.items
    );

    // The live-sandbox cap per project.
    let plain = testkit::local_shell();
    let (_, b) = alpha
        .create(&plain, Some(Duration::from_secs(30)), None)
        .await
        .expect("second");
    let err = alpha.create(&plain, None, None).await.expect_err("429");
    assert_eq!(code(&err), (Some(429), Some("too_many_sandboxes")));
    let (_, other) = beta
        .create(&plain, Some(Duration::from_secs(30)), None)
        .await
        .expect("beta has its own cap");

    // A consumer's view of its sandbox has no host pid, path or argv.
    let seen = a.reachability.clone().expect("reachability");
    for host_only in ["enter", "pid", "workdir"] {
        assert!(
            seen.get(host_only).is_none(),
            "{host_only} shown to a consumer: {seen}"
        );
    }
    // The secret reaches the sandbox's environment and nowhere else.
    let a_ops = ops.get(&a.id, None).await.expect("operator view");
    let reach = a_ops.reachability.clone().expect("reachability");
    let env = run_inside(&reach, &["sh", "-c", "env"]);
    assert!(
        env.lines().any(|l| l == format!("API_KEY={SENTINEL}")),
        "secret in the sandbox: {env}"
    );
    let (_, profile) = ops
        .request_json(Method::GET, "/v1/profiles/profile.secret-shell", None)
        .await
        .expect("profile");
    assert_eq!(
        profile["setup"]["secret_refs"]["API_KEY"], "demo",
        "only the name is shown"
    );
    let mut seen = String::new();
    for path in [
        format!("/v1/sandboxes/{}", a.id),
        format!("/v1/sandboxes/{}/events", a.id),
        "/v1/events".into(),
    ] {
        seen.push_str(
            &ops.request_json(Method::GET, &path, None)
                .await
                .expect("get")
                .1
                .to_string(),
        );
    }
    for c in [&alpha, &beta, &ops] {
        for s in [&a.id, &b.id, &other.id] {
            let _ = c.destroy(s, Some(Duration::from_secs(30))).await;
        }
    }
    assert!(!seen.contains(SENTINEL), "the API never returns the secret");
    assert!(
        !d.log_text().contains(SENTINEL),
        "the log never holds the secret"
    );
    for f in ["sandboxer.db", "sandboxer.db-wal"] {
        if let Ok(bytes) = std::fs::read(data.join(f)) {
            assert!(
                !bytes
                    .windows(SENTINEL.len())
                    .any(|w| w == SENTINEL.as_bytes()),
                "{f} never holds the secret"
            );
        }
    }
    // The bubblewrap command line (visible to every user via ps) never holds it either.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(SENTINEL));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let dir = TestDir::new();
    let (config, profiles) = setup(dir.path(), "[limits]\nrequests_per_second = 2\nburst = 5\n");
    let d = testkit::daemon!()
        .args(["--config", &config, "--profiles", &profiles])
        .start(&dir.path().join("data"));
    let alpha = d.client_with(ALPHA);
    let mut limited = None;
    for _ in 0..20 {
        if let Err(e) = alpha.list(&Default::default()).await {
            limited = Some(e);
            break;
        }
    }
    let err = limited.expect("some request was limited");
    assert_eq!(code(&err), (Some(429), Some("rate_limited")));
    // Other tokens have their own bucket.
    d.client_with(BETA)
        .list(&Default::default())
        .await
        .expect("beta is not limited");
    // Retry-After is there.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/sandboxes", d.url))
        .bearer_auth(ALPHA)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 429);
    let after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=5).contains(&after));
}

#[test]
fn a_bad_token_block_stops_the_start_naming_the_field() {
    let dir = TestDir::new();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[tokens]]\ntoken_sha256 = \"abc\"\nactor_type = \"agt\"\nactor = \"x\"\nproject = \"p\"\nrole = \"consumer\"\n",
    )
    .expect("write");
    let out = testkit::daemon_bin!()
        .command()
        .args(["--config", config.to_str().expect("utf-8"), "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokens[0].token_sha256"), "{err}");
}
