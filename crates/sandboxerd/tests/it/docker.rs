//! Issue 16, ext.docker on the real dockerd of the test command: a sandbox
//! is a container of a local image (`local/busybox`, imported from
//! busybox-static; nothing is pulled) with the agent mounted in; exec,
//! files, background processes and ports work; the read-only root, the
//! dropped capabilities and the limits hold against code that tries; pause
//! freezes it; a snapshot forks across ext.docker and ext.local both ways;
//! `kill -9` of the daemon between create and start leaves nothing; the
//! stale sweep removes an orphaned container; gVisor (`runsc`) where it is
//! registered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandboxer_api::{CreateSandbox, SandboxState};

use super::exit_snapshots::{destroyed, exec, sh};
use sandboxer_testkit as testkit;
use testkit::{require_bwrap, require_docker, Daemon, TestDir};

/// Profiles: `profile.docker` (runc, 128 MiB, 64 pids) and `profile.gvisor`
/// (runsc, 512 MiB) beside the shipped `profile.local-shell`.
fn profiles(dir: &Path) -> PathBuf {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let shell = testkit::repo_file("profiles/local-shell.yaml");
    std::fs::write(profiles.join("local-shell.yaml"), &shell).expect("write");
    let docker = shell
        .replace("profile.local-shell", "profile.docker")
        .replace(
            "extension: ext.local\n",
            "extension: ext.docker\nimage: local/busybox\n",
        )
        .replace("isolation: process", "isolation: container")
        .replace("memory: 512MiB", "memory: 128MiB\n  pids: 64");
    assert!(
        docker.contains("image: local/busybox"),
        "the template changed"
    );
    std::fs::write(profiles.join("docker.yaml"), &docker).expect("write");
    // gVisor's Sentry counts in the container's memory: the default 512 MiB.
    std::fs::write(
        profiles.join("gvisor.yaml"),
        docker
            .replace("profile.docker", "profile.gvisor")
            .replace("isolation: container", "isolation: gvisor")
            .replace("memory: 128MiB\n  pids: 64", "memory: 512MiB"),
    )
    .expect("write");
    profiles
}

/// A daemon, and on drop (a failed assertion included) whatever its
/// deployment left on the engine.
struct Docked {
    d: Daemon,
    data: PathBuf,
}

impl std::ops::Deref for Docked {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl std::ops::DerefMut for Docked {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.d
    }
}

impl Drop for Docked {
    fn drop(&mut self) {
        if let Ok(id) = std::fs::read_to_string(self.data.join("deployment-id")) {
            let _ = testkit::sh(&format!(
                "docker ps -aq --filter label=io.sandboxer.deployment={} | xargs -r docker rm -f >/dev/null 2>&1",
                id.trim()
            ));
        }
    }
}

fn daemon(dir: &Path, env: &[(&str, &str)]) -> Docked {
    require_bwrap();
    require_docker();
    let data = dir.join("data");
    let d = testkit::daemon!()
        .args(["--profiles", profiles(dir).to_str().expect("utf-8")])
        .envs(env)
        .start(&data);
    Docked { d, data }
}

fn req(profile: &str) -> CreateSandbox {
    CreateSandbox {
        profile: profile.into(),
        ..CreateSandbox::default()
    }
}

/// `docker ps -a` ids carrying sandbox `id`'s label.
fn containers_of(id: &str) -> Vec<String> {
    let (_, out) = testkit::sh(&format!(
        "docker ps -aq --filter label=io.sandboxer.sandbox-id={id}"
    ));
    out.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_runs_commands_files_and_ports_and_its_limits_hold() {
    let dir = TestDir::new();
    let d = daemon(dir.path(), &[]);
    let sbx = testkit::ready_sandbox(&d.client, &req("profile.docker")).await;
    assert_eq!(sbx.extension, "ext.docker");
    let reach = sbx.reachability.clone().expect("reachability");
    assert_eq!(reach["kind"], "docker", "{reach}");
    assert_eq!(containers_of(&sbx.id).len(), 1, "one labelled container");

    // Commands run as the sandbox's user, with no capabilities, on a
    // read-only root, in /workspace.
    let out = sh(&d, &sbx.id, "id -u; pwd; grep CapEff /proc/self/status").await;
    assert!(out.contains("/workspace"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(!out.starts_with("0\n"), "not root: {out}");
    let r = exec(&d, &sbx.id, "touch /etc/owned").await;
    assert_ne!(r.exit_code, Some(0), "the root filesystem is read-only");
    // No network but loopback.
    let out = sh(&d, &sbx.id, "ls /sys/class/net").await;
    assert_eq!(out.trim(), "lo", "{out}");

    // Files in and out, byte for byte.
    d.client
        .write_file(
            &sbx.id,
            "/workspace/in.bin",
            None,
            reqwest::Body::from(b"\x00\x01bytes\xff".to_vec()),
        )
        .await
        .expect("put");
    let mut dl = d
        .client
        .read_file(&sbx.id, "/workspace/in.bin")
        .await
        .expect("get");
    let mut back = Vec::new();
    while let Some(c) = dl.chunk().await.expect("chunk") {
        back.extend(c);
    }
    assert_eq!(back, b"\x00\x01bytes\xff");

    // A server inside, reached through the port proxy.
    let r = exec(
        &d,
        &sbx.id,
        "mkdir -p www && echo served-from-the-container > www/index.html && (httpd -p 127.0.0.1:8080 -h www &) ; sleep 0.3",
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "{}", r.stderr);
    let body = reqwest::get(format!("{}/v1/sandboxes/{}/ports/8080/", d.url, sbx.id))
        .await
        .expect("proxy")
        .text()
        .await
        .expect("text");
    assert!(body.contains("served-from-the-container"), "{body}");

    // The memory limit (128 MiB, no swap): a process that takes more dies;
    // the sandbox lives on.
    let r = exec(&d, &sbx.id, "head -c 400m /dev/zero | tail > /dev/null").await;
    assert_ne!(r.exit_code, Some(0), "400 MiB in a 128 MiB sandbox");
    // The pids limit (64): a fork bomb is refused past it, and the sandbox
    // answers again once the bomb's processes end.
    let r = exec(
        &d,
        &sbx.id,
        "i=0; while [ $i -lt 200 ]; do sleep 3 & i=$((i+1)); done; wait",
    )
    .await;
    assert!(
        r.stderr.contains("fork") || r.stderr.contains("Resource temporarily unavailable"),
        "forks were refused: {r:?}"
    );
    let (_, limit) = testkit::sh(&format!(
        "docker inspect -f '{{{{.HostConfig.PidsLimit}}}}' {}",
        reach["container"].as_str().expect("container")
    ));
    assert_eq!(limit.trim(), "64");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(sh(&d, &sbx.id, "echo alive").await, "alive\n");

    // Pause freezes it (a counter stops), resume lets it go on.
    let workdir = PathBuf::from(reach["workdir"].as_str().expect("workdir"));
    super::pause::start_counter(&d, &sbx.id, &workdir).await;
    let count = || super::pause::counter(&workdir);
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/sandboxes/{}/pause", d.url, sbx.id))
        .send()
        .await
        .expect("pause");
    assert_eq!(r.status(), 200);
    let (_, state) = testkit::sh(&format!(
        "docker inspect -f '{{{{.State.Paused}}}}' {}",
        reach["container"].as_str().expect("container")
    ));
    assert_eq!(state.trim(), "true");
    let frozen = count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(), frozen, "a paused container made progress");
    let r = client
        .post(format!("{}/v1/sandboxes/{}/resume", d.url, sbx.id))
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() <= frozen + 2 {
        assert!(Instant::now() < deadline, "the counter did not go on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Code inside swaps the agent's socket for a symlink to the host's
    // Docker socket: the daemon does not follow it (the sandbox has cut
    // itself off; nothing reaches dockerd).
    let r = exec(
        &d,
        &sbx.id,
        "rm /run/sandboxer/agent.sock && ln -s /var/run/docker.sock /run/sandboxer/agent.sock",
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let err = d
        .client
        .exec(
            &sbx.id,
            &sandboxer_api::ExecRequest {
                cmd: sandboxer_api::Command::Shell("true".into()),
                cwd: None,
                env: Default::default(),
                stdin: None,
                timeout: None,
                service: None,
            },
        )
        .await
        .expect_err("the socket is a symlink now");
    assert!(err.to_string().contains("agent_unreachable"), "{err}");

    // Destroyed: no container, no workspace.
    let (_, gone) = d
        .client
        .destroy(&sbx.id, Some(Duration::from_secs(60)))
        .await
        .expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed);
    assert!(
        containers_of(&sbx.id).is_empty(),
        "the container is removed"
    );
    assert!(!workdir.exists(), "the workspace is removed");
}

/// A snapshot of sandbox `from`, forked into a ready sandbox of `profile`.
async fn fork_onto(d: &Daemon, from: &str, profile: &str) -> sandboxer_api::Sandbox {
    let (_, snap) = d
        .client
        .create_snapshot(from, None, Some(Duration::from_secs(60)))
        .await
        .expect("snapshot");
    let fork = CreateSandbox {
        from_snapshot: Some(snap.id),
        ..req(profile)
    };
    testkit::ready_sandbox(&d.client, &fork).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_forks_across_ext_docker_and_ext_local() {
    let dir = TestDir::new();
    let d = daemon(dir.path(), &[]);
    let from_docker = testkit::ready_sandbox(&d.client, &req("profile.docker")).await;
    sh(
        &d,
        &from_docker.id,
        "mkdir -p out && echo made-in-a-container > out/r.txt",
    )
    .await;
    // Forked onto ext.local (bubblewrap).
    let on_local = fork_onto(&d, &from_docker.id, "profile.local-shell").await;
    assert_eq!(on_local.extension, "ext.local");
    assert_eq!(
        sh(&d, &on_local.id, "cat out/r.txt").await,
        "made-in-a-container\n"
    );
    // And back: a file written on ext.local, forked into a container.
    sh(&d, &on_local.id, "echo made-in-bubblewrap > out/b.txt").await;
    let in_docker = fork_onto(&d, &on_local.id, "profile.docker").await;
    assert_eq!(in_docker.extension, "ext.docker");
    assert_eq!(
        sh(&d, &in_docker.id, "cat out/r.txt out/b.txt").await,
        "made-in-a-container\nmade-in-bubblewrap\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_between_create_and_start_leaves_nothing() {
    let dir = TestDir::new();
    require_bwrap();
    require_docker();
    let data = dir.path().join("data");
    // Not a `Docked`: what it leaves is for the next start to clear.
    let mut d = testkit::daemon!()
        .args(["--profiles", profiles(dir.path()).to_str().expect("utf-8")])
        .env("SANDBOXER_FAULT", "docker.after_create")
        .start(&data);
    let client = d.client.clone();
    let create = tokio::spawn(async move {
        let _ = client
            .create(&req("profile.docker"), Some(Duration::from_secs(5)), None)
            .await;
    });
    let status = tokio::task::spawn_blocking(move || {
        let s = d.child.wait().expect("wait");
        (d, s)
    });
    let (dead, status) = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("the daemon reached the crash point")
        .expect("join");
    assert!(!status.success());
    let _ = create.await;
    drop(dead);
    // The container was made (labelled) but never recorded or started.
    let (_, made) = testkit::sh(&format!(
        "docker ps -aq --filter label=io.sandboxer.deployment={}",
        std::fs::read_to_string(data.join("deployment-id"))
            .expect("deployment-id")
            .trim()
    ));
    assert_eq!(
        made.lines().count(),
        1,
        "the crash point is after the create"
    );
    // The next start settles the row and removes the container.
    let d = daemon(dir.path(), &[]);
    let list = d.client.list(&Default::default()).await.expect("list");
    let page = d
        .client
        .list(&sandboxctl::ListQuery {
            include_all: true,
            ..Default::default()
        })
        .await
        .expect("list all");
    assert!(
        list.items
            .iter()
            .all(|s| !SandboxState::HOLDING.contains(&s.state)),
        "nothing live: {list:?}"
    );
    let sbx = page.items.first().expect("the row");
    assert!(
        matches!(sbx.state, SandboxState::Failed | SandboxState::Destroyed),
        "{sbx:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_of(&sbx.id).is_empty() {
        assert!(Instant::now() < deadline, "the container was left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stale_sweep_removes_an_orphaned_container() {
    let dir = TestDir::new();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    // The deployment's id, fixed ahead so the orphan can carry it.
    let deployment = format!("{:032x}", u128::from(std::process::id()) << 64 | 0xd0c4e2);
    std::fs::write(data.join("deployment-id"), &deployment).expect("write");
    // A container of this deployment that no sandbox row owns (an id of
    // its own: a run that failed before may have left one of another).
    let orphan = format!("sbx_01ORPHAN{:014}", std::process::id());
    let orphan = orphan.as_str();
    let (ok, out) = testkit::sh(&format!(
        "docker create --name sandboxer-orphan-{} --label io.sandboxer.sandbox-id={orphan} \
         --label io.sandboxer.deployment={} --network none local/busybox sleep 600",
        std::process::id(),
        deployment
    ));
    assert!(ok, "{out}");
    let d = daemon(
        dir.path(),
        &[
            ("SANDBOXER_STALE_SWEEP_INTERVAL", "500ms"),
            ("SANDBOXER_STALE_GRACE", "1s"),
        ],
    );
    // A live sandbox of the same deployment is spared.
    let live = testkit::ready_sandbox(&d.client, &req("profile.docker")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_of(orphan).is_empty() {
        assert!(Instant::now() < deadline, "the orphan is still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(containers_of(&live.id).len(), 1, "the live one is kept");
    assert_eq!(
        d.client.get(&live.id, None).await.expect("get").state,
        SandboxState::Ready
    );
    let (_, gone) = d
        .client
        .destroy(&live.id, Some(Duration::from_secs(60)))
        .await
        .expect("destroy");
    destroyed(&d, &gone.id, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gvisor_runs_the_sandbox_on_its_own_kernel_where_runsc_is_registered() {
    let (_, runtimes) = testkit::sh("docker info --format '{{json .Runtimes}}'");
    if !runtimes.contains("runsc") {
        // The test command registers it; say so rather than pass silently.
        panic!("gVisor's runsc is not a registered Docker runtime: install `runsc` and register it in /etc/docker/daemon.json (scripts/test does both)");
    }
    let dir = TestDir::new();
    let d = daemon(dir.path(), &[]);
    let sbx = testkit::ready_sandbox(&d.client, &req("profile.gvisor")).await;
    assert_eq!(
        sbx.reachability.as_ref().expect("reach")["runtime"],
        "runsc"
    );
    // gVisor's Sentry answers as its own kernel, not the host's.
    let (_, host_kernel) = testkit::sh("uname -r");
    let inside = sh(&d, &sbx.id, "uname -r").await;
    assert_ne!(
        inside.trim(),
        host_kernel.trim(),
        "the host's kernel is not seen"
    );
    sh(&d, &sbx.id, "echo in-gvisor > g.txt").await;
    assert_eq!(sh(&d, &sbx.id, "cat g.txt").await, "in-gvisor\n");
    let (_, gone) = d
        .client
        .destroy(&sbx.id, Some(Duration::from_secs(60)))
        .await
        .expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed);
    assert!(containers_of(&sbx.id).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_builds_once_streams_its_log_and_runs_as_a_sandbox() {
    let dir = TestDir::new();
    // `profile.templated` runs the template `greeter`.
    let profiles = profiles(dir.path());
    let docker = std::fs::read_to_string(profiles.join("docker.yaml")).expect("read");
    std::fs::write(
        profiles.join("templated.yaml"),
        docker
            .replace("profile.docker", "profile.templated")
            .replace("image: local/busybox", "template: greeter"),
    )
    .expect("write");
    let d = daemon(dir.path(), &[]);
    let tid = format!("greeter-{}", std::process::id());
    // The profile names `greeter`: built under that id below, after a
    // unique one shows caching.
    let dockerfile = format!(
        "FROM local/busybox\nRUN echo built-by-{tid} > /etc/greeting\nLABEL purpose=test\n"
    );
    let mut lines = Vec::new();
    let first = d
        .client
        .build_template(
            &tid,
            sandboxctl::TemplateSource::Dockerfile(dockerfile.clone()),
            |l| lines.push(l.to_owned()),
        )
        .await
        .expect("build");
    assert!(!first.cached, "{first:?}");
    assert_eq!(first.image, format!("sandboxer-template/{tid}:current"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Step") || l.contains("RUN")),
        "the build's output streamed: {lines:?}"
    );
    // The same Dockerfile again: not rebuilt, same image.
    let again = d
        .client
        .build_template(
            &tid,
            sandboxctl::TemplateSource::Dockerfile(dockerfile),
            |_| {},
        )
        .await
        .expect("rebuild");
    assert!(again.cached, "{again:?}");
    assert_eq!(again.image_id, first.image_id);
    assert_eq!(again.content_hash, first.content_hash);
    let listed = d.client.templates().await.expect("list");
    assert!(listed.items.iter().any(|t| t.id == tid), "{listed:?}");
    // A broken Dockerfile fails with the build's error.
    let err = d
        .client
        .build_template(
            &format!("{tid}-broken"),
            sandboxctl::TemplateSource::Dockerfile("FROM local/busybox\nRUN exit 3\n".into()),
            |_| {},
        )
        .await
        .expect_err("a failing RUN");
    assert!(err.to_string().contains("template_build_failed"), "{err}");
    // Builds have no network: nothing is pulled.
    let err = d
        .client
        .build_template(
            &format!("{tid}-pull"),
            sandboxctl::TemplateSource::Dockerfile("FROM sandboxer-test/not-here:1\n".into()),
            |_| {},
        )
        .await
        .expect_err("an image that is not on the host");
    assert!(err.to_string().contains("template_build_failed"), "{err}");

    // A sandbox of the profile that names the template runs the build.
    d.client
        .build_template(
            "greeter",
            sandboxctl::TemplateSource::Dockerfile(
                "FROM local/busybox\nRUN echo hello-from-the-template > /etc/greeting\n".into(),
            ),
            |_| {},
        )
        .await
        .expect("greeter");
    let sbx = testkit::ready_sandbox(&d.client, &req("profile.templated")).await;
    assert_eq!(
        sh(&d, &sbx.id, "cat /etc/greeting").await,
        "hello-from-the-template\n"
    );
    // Removing a template a sandbox runs is refused; after it, it goes.
    let err = d
        .client
        .delete_template("greeter")
        .await
        .expect_err("in use");
    assert!(err.to_string().contains("invalid_state"), "{err}");
    d.client
        .destroy(&sbx.id, Some(Duration::from_secs(60)))
        .await
        .expect("destroy");
    d.client.delete_template("greeter").await.expect("rm");
    d.client.delete_template(&tid).await.expect("rm");
    let err = d.client.template(&tid).await.expect_err("gone");
    assert!(err.to_string().contains("template_not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_operators_build_templates_and_bad_input_is_named() {
    let dir = TestDir::new();
    let config = dir.path().join("tokens.toml");
    std::fs::write(
        &config,
        testkit::token_block("consumer-tok", "c", "p", "consumer")
            + &testkit::token_block("operator-tok", "o", "ops", "operator"),
    )
    .expect("write");
    require_docker();
    let d = testkit::daemon!()
        .args(["--config", config.to_str().expect("utf-8")])
        .start(&dir.path().join("data"));
    let err = d
        .client_with("consumer-tok")
        .build_template(
            "x",
            sandboxctl::TemplateSource::Dockerfile("FROM local/busybox\n".into()),
            |_| {},
        )
        .await
        .expect_err("a consumer");
    assert!(err.to_string().contains("forbidden"), "{err}");
    let http = reqwest::Client::new();
    for (body, status, code, field) in [
        (
            serde_json::json!({"id": "Bad/Id", "dockerfile": "FROM x"}),
            422,
            "invalid_template",
            "id",
        ),
        (
            serde_json::json!({"id": "ok", "dockerfile": "  "}),
            422,
            "invalid_template",
            "dockerfile",
        ),
        (
            serde_json::json!({"id": "ok", "dockerfile": "FROM x", "extra": 1}),
            422,
            "invalid_json",
            "body",
        ),
    ] {
        let r = http
            .post(format!("{}/v1/templates", d.url))
            .bearer_auth("operator-tok")
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), status, "{body}");
        let p: serde_json::Value = r.json().await.expect("problem");
        assert_eq!(
            (p["code"].as_str(), p["field"].as_str()),
            (Some(code), Some(field)),
            "{p}"
        );
    }
    let r = http
        .post(format!("{}/v1/templates", d.url))
        .bearer_auth("operator-tok")
        .header("content-type", "text/plain")
        .body("FROM x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 415);
    let r = http
        .post(format!("{}/v1/templates", d.url))
        .bearer_auth("operator-tok")
        .header("content-type", "application/x-tar")
        .body(vec![0u8; 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422, "a tar without ?id=");
    // A context over the 64 MiB limit is refused before any build.
    let r = http
        .post(format!("{}/v1/templates?id=huge", d.url))
        .bearer_auth("operator-tok")
        .header("content-type", "application/x-tar")
        .body(vec![0u8; (64 << 20) + 1])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413, "a 64 MiB + 1 context");
    let (_, images) = testkit::sh("docker images -q sandboxer-template/huge");
    assert!(images.trim().is_empty(), "nothing was built: {images}");
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_pools_and_routing_take_ext_docker_like_the_others() {
    let dir = TestDir::new();
    let profiles = profiles(dir.path());
    let docker = std::fs::read_to_string(profiles.join("docker.yaml")).expect("read");
    // A pool of two containers kept ready.
    std::fs::write(
        profiles.join("pooled.yaml"),
        docker.replace("profile.docker", "profile.pooled") + "pool:\n  size: 2\n  max_age: 30m\n",
    )
    .expect("write");
    // Routed between ext.docker and ext.local by price: ext.local costs 1
    // credit an hour, ext.docker 2; with ext.local listed first too.
    let routed = docker
        .replace("profile.docker", "profile.routed")
        .replace(
            "extension: ext.docker\n",
            "routing:\n  policy: lowest-cost\n  candidates: [ext.docker, ext.local]\n",
        )
        .replace("isolation: container", "isolation: process");
    std::fs::write(profiles.join("routed.yaml"), &routed).expect("write");
    let d = daemon(dir.path(), &[]);

    // The pool fills with containers, and a create is handed one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = d
            .client
            .request_json(sandboxctl::Method::GET, "/metrics", None)
            .await
            .expect("metrics");
        let text = m.as_str().unwrap_or_default().to_owned();
        if text.lines().any(|l| {
            l.starts_with("sandboxer_pool_members{profile=\"profile.pooled\",state=\"ready\"} 2")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "the pool did not fill: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let sbx = testkit::ready_sandbox(&d.client, &req("profile.pooled")).await;
    assert_eq!(sbx.extension, "ext.docker");
    assert_eq!(
        sh(&d, &sbx.id, "echo from-the-pool").await,
        "from-the-pool\n"
    );
    eprintln!("pooled create answered in {:?}", started.elapsed());

    // The router takes the cheaper candidate, and the money is ext.local's.
    let routed = testkit::ready_sandbox(&d.client, &req("profile.routed")).await;
    assert_eq!(routed.extension, "ext.local", "{:?}", routed.route);
    let route = routed.route.clone().expect("route");
    assert_eq!(route.considered.len(), 2, "{route:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_reaches_only_what_the_allow_list_names_from_a_container() {
    require_bwrap();
    require_docker();
    let dir = TestDir::new();
    let profiles = profiles(dir.path());
    let docker = std::fs::read_to_string(profiles.join("docker.yaml")).expect("read");
    assert!(
        docker.contains("network:\n  mode: none\n"),
        "the template changed"
    );
    let egress = |text: &str, from: &str, to: &str| {
        text.replace(from, to).replace(
            "network:\n  mode: none\n",
            "network:\n  mode: egress\n  allow: [allowed.test]\n",
        )
    };
    std::fs::write(
        profiles.join("egress.yaml"),
        egress(&docker, "profile.docker", "profile.docker-egress"),
    )
    .expect("write");
    let gvisor = std::fs::read_to_string(profiles.join("gvisor.yaml")).expect("read");
    std::fs::write(
        profiles.join("gvisor-egress.yaml"),
        egress(&gvisor, "profile.gvisor", "profile.gvisor-egress"),
    )
    .expect("write");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[egress.resolve]\n\"allowed.test\" = \"127.0.0.1\"\n\"denied.test\" = \"127.0.0.1\"\n",
    )
    .expect("write");
    let data = dir.path().join("data");
    let d = Docked {
        d: testkit::daemon!()
            .args([
                "--profiles",
                profiles.to_str().expect("utf-8"),
                "--config",
                config.to_str().expect("utf-8"),
            ])
            .start(&data),
        data,
    };
    let origin = testkit::Origin::start().await;
    // runc, and gVisor where runsc is registered (its agent reaches the
    // proxy's socket on the host: `--host-uds=all`).
    let (_, runtimes) = testkit::sh("docker info --format '{{json .Runtimes}}'");
    let mut profiles = vec!["profile.docker-egress"];
    if runtimes.contains("runsc") {
        profiles.push("profile.gvisor-egress");
    }
    for profile in profiles {
        egress_from(&d, profile, origin.port).await;
    }
}

async fn egress_from(d: &Docked, profile: &str, port: u16) {
    let sbx = testkit::ready_sandbox(&d.client, &req(profile)).await;
    // Through the proxy (busybox wget honours http_proxy): the allowed host
    // answers, the other one is refused by the proxy.
    let out = sh(
        d,
        &sbx.id,
        &format!("wget -q -O- http://allowed.test:{port}/from-a-container"),
    )
    .await;
    assert_eq!(out.trim(), "hello /from-a-container");
    let r = exec(
        d,
        &sbx.id,
        &format!("wget -q -O- http://denied.test:{port}/no"),
    )
    .await;
    assert_ne!(r.exit_code, Some(0), "denied.test was reached: {r:?}");
    // Around the proxy there is no way out: the container has no network.
    let r = exec(
        d,
        &sbx.id,
        &format!("wget -q -Y off -O- http://172.17.0.1:{port}/direct"),
    )
    .await;
    assert_ne!(r.exit_code, Some(0), "reached the host directly: {r:?}");
    let log = d
        .client
        .request_json(
            sandboxctl::Method::GET,
            &format!("/v1/sandboxes/{}/network-log", sbx.id),
            None,
        )
        .await
        .expect("network-log")
        .1;
    let items = log["items"].as_array().cloned().unwrap_or_default();
    assert!(
        items
            .iter()
            .any(|e| e["host"] == "denied.test" && e["decision"] == "denied"),
        "{log}"
    );
    assert!(
        items
            .iter()
            .any(|e| e["host"] == "allowed.test" && e["decision"] == "allowed"),
        "{log}"
    );
}
