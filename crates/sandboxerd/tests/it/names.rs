//! Issue 17, names with get-or-create: a `name` is unique among a
//! project's live sandboxes, enforced by the database; `if_exists:
//! "return"` answers the live sandbox of that name, however many creates
//! race for it; an ended sandbox frees its name.

use std::collections::BTreeSet;

use sandboxer_api::{Consumer, CreateSandbox, IfExists, SandboxState};

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, TestDir};

fn named(name: &str, reuse: bool) -> CreateSandbox {
    CreateSandbox {
        name: Some(name.into()),
        if_exists: reuse.then_some(IfExists::Return),
        ..testkit::local_shell()
    }
}

fn problem_code(e: &sandboxctl::ClientError) -> (Option<u16>, String, Option<String>) {
    match e {
        sandboxctl::ClientError::Api { problem, .. } => (
            e.status(),
            problem.code.as_str().to_owned(),
            problem.field.clone(),
        ),
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_get_or_creates_with_one_name_make_one_sandbox() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let mut calls = Vec::new();
    for _ in 0..50 {
        let c = d.client.clone();
        calls.push(tokio::spawn(async move {
            c.create(&named("build-cache", true), None, None).await
        }));
    }
    let mut ids = BTreeSet::new();
    let mut statuses = Vec::new();
    for call in calls {
        let (status, sbx) = call.await.expect("join").expect("create");
        assert_eq!(sbx.name.as_deref(), Some("build-cache"));
        ids.insert(sbx.id);
        statuses.push(status);
    }
    assert_eq!(ids.len(), 1, "one name, one sandbox: {ids:?}");
    // One create made it (202); the 49 others got it back (200).
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        49,
        "{statuses:?}"
    );
    let q = sandboxctl::ListQuery {
        name: Some("build-cache".into()),
        ..Default::default()
    };
    let listed = d.client.list_all(&q).await.expect("list");
    assert_eq!(listed.len(), 1);
    let id = ids.into_iter().next().expect("id");
    assert_eq!(listed[0].id, id);
    // The one sandbox becomes ready; nothing else was provisioned.
    let ready = d
        .client
        .get(&id, Some(std::time::Duration::from_secs(30)))
        .await
        .expect("get");
    assert_eq!(ready.state, SandboxState::Ready);
    assert_eq!(testkit::sandbox_dirs(&d.data_dir).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_name_is_refused_per_project_and_freed_when_the_sandbox_ends() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let (_, first) = d
        .client
        .create(&named("ci-42", false), None, None)
        .await
        .expect("create");
    // Without `if_exists`: 409 name_taken, naming the field.
    let err = d
        .client
        .create(&named("ci-42", false), None, None)
        .await
        .expect_err("taken");
    let (status, code, field) = problem_code(&err);
    assert_eq!(
        (status, code.as_str(), field.as_deref()),
        (Some(409), "name_taken", Some("name"))
    );
    assert!(err.to_string().contains(&first.id), "{err}");
    // Another project has names of its own (an operator creates for it).
    let other = CreateSandbox {
        consumer: Some(Consumer {
            actor_type: "atm".into(),
            actor: "ci".into(),
            project: "other".into(),
        }),
        ..named("ci-42", false)
    };
    let (_, theirs) = d
        .client
        .create(&other, None, None)
        .await
        .expect("other project");
    assert_ne!(theirs.id, first.id);
    // Ended, the name is free: the next create makes a new sandbox.
    d.client
        .destroy(&first.id, Some(std::time::Duration::from_secs(30)))
        .await
        .expect("destroy");
    let (status, again) = d
        .client
        .create(&named("ci-42", true), None, None)
        .await
        .expect("create again");
    assert_eq!(status, 202, "a new sandbox, not the ended one");
    assert_ne!(again.id, first.id);
    // Both are found by name with `include=all`; the live one alone without.
    let mut q = sandboxctl::ListQuery {
        name: Some("ci-42".into()),
        project: Some("default".into()),
        ..Default::default()
    };
    let live = d.client.list_all(&q).await.expect("list");
    assert_eq!(
        live.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [again.id.as_str()]
    );
    q.include_all = true;
    assert_eq!(d.client.list_all(&q).await.expect("list").len(), 2);

    // Get-or-create naming another profile than the holder has: refused.
    let other_profile = CreateSandbox {
        profile: "profile.burst-sandbox".into(),
        ..named("ci-42", true)
    };
    let err = d
        .client
        .create(&other_profile, None, None)
        .await
        .expect_err("another profile");
    let (status, code, _) = problem_code(&err);
    assert_eq!((status, code.as_str()), (Some(409), "name_taken"), "{err}");

    // A failed sandbox frees its name; recreating it once another holds
    // the name is refused, not a 500.
    let (_, dup) = d
        .client
        .create(
            &named("dup", false),
            Some(std::time::Duration::from_secs(30)),
            None,
        )
        .await
        .expect("dup");
    let _ = d
        .client
        .exec(
            &dup.id,
            &sandboxer_api::ExecRequest {
                cmd: sandboxer_api::Command::Shell("kill -9 -1".into()),
                cwd: None,
                env: Default::default(),
                stdin: None,
                timeout: Some("5s".into()),
                service: None,
            },
        )
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.client.get(&dup.id, None).await.expect("get").state != SandboxState::Failed {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox did not fail"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, taker) = d
        .client
        .create(&named("dup", false), None, None)
        .await
        .expect("the name is free");
    let err = d.client.recreate(&dup.id, None).await.expect_err("taken");
    let (status, code, _) = problem_code(&err);
    assert_eq!((status, code.as_str()), (Some(409), "name_taken"), "{err}");
    assert!(err.to_string().contains(&taker.id), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_are_refused_naming_the_field() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    for bad in ["", "-lead", "has space", "sl/ash", "é", &"x".repeat(129)] {
        let err = d
            .client
            .create(&named(bad, false), None, None)
            .await
            .expect_err(bad);
        let (status, code, field) = problem_code(&err);
        assert_eq!(
            (status, code.as_str(), field.as_deref()),
            (Some(422), "invalid_name", Some("name")),
            "{bad:?}"
        );
    }
    let req = CreateSandbox {
        if_exists: Some(IfExists::Return),
        ..testkit::local_shell()
    };
    let err = d
        .client
        .create(&req, None, None)
        .await
        .expect_err("no name");
    let (status, code, field) = problem_code(&err);
    assert_eq!(
        (status, code.as_str(), field.as_deref()),
        (Some(422), "invalid_name", Some("if_exists"))
    );
    // Nothing was made.
    assert!(testkit::sandbox_dirs(&d.data_dir).is_empty());
}
