//! `ext.compose-ssh` for real: a throwaway `sshd` on a loopback port (keys
//! generated here), Debian's `docker.io` + `docker-compose`, and a
//! `local/busybox` image imported from `busybox-static` (nothing is pulled).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandboxctl::api::{CreateSandbox, Placement, SandboxState};

use sandboxer_testkit as testkit;
use testkit::{free_port, require_docker, sh, Daemon, Sshd, TestDir};

const LABEL: &str = "io.sandboxer.sandbox-id";

/// A daemon configuration with one host.
fn config(dir: &Path, port: u16, identity: &Path, host_key: &str, workdir: &Path) -> PathBuf {
    let path = dir.join("sandboxerd.toml");
    let mut f = std::fs::File::create(&path).expect("config");
    write!(
        f,
        "provision_timeout = \"90s\"\n\n[[hosts]]\nid = \"testhost\"\naddress = \"127.0.0.1\"\n\
         port = {port}\nuser = \"root\"\nidentity_file = \"{}\"\nhost_key = \"{host_key}\"\n\
         engine = \"docker\"\nworkdir = \"{}\"\nconnect_timeout = \"3s\"\ncommand_timeout = \"2m\"\n\
         labels = {{ tier = \"test\" }}\n",
        identity.display(),
        workdir.display()
    )
    .expect("write config");
    path
}

/// A repository with a two-service stack, a named volume and a `.git`.
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join(".git")).expect("repo");
    std::fs::write(repo.join(".git/config"), "[core]\n").expect(".git");
    std::fs::write(repo.join("hello.txt"), "hello from the repo\n").expect("file");
    std::fs::write(
        repo.join("docker-compose.yml"),
        r#"version: "3.7"
services:
  web:
    image: local/busybox
    command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/"]
    healthcheck:
      test: ["CMD", "/bin/busybox", "ls", "/"]
      interval: 1s
      retries: 30
  worker:
    image: local/busybox
    command: ["/bin/busybox", "sleep", "3600"]
    volumes: ["data:/data"]
volumes:
  data: {}
"#,
    )
    .expect("compose file");
    repo
}

fn create_req(repo: &Path) -> CreateSandbox {
    CreateSandbox {
        profile: "profile.compose-e2e".into(),
        inputs: BTreeMap::from([("repo".into(), repo.display().to_string())]),
        placement: Some(Placement {
            host: Some("testhost".into()),
        }),
        ..CreateSandbox::default()
    }
}

fn lines(script: &str) -> Vec<String> {
    let (ok, out) = sh(script);
    assert!(ok, "`{script}` failed: {out}");
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whatever the sandbox left on the host: containers, networks, volumes.
fn leftovers(id: &str) -> Vec<String> {
    let f = format!("--filter label={LABEL}={id}");
    let mut all = lines(&format!("docker ps -aq {f}"));
    all.extend(lines(&format!("docker network ls -q {f}")));
    all.extend(lines(&format!("docker volume ls -q {f}")));
    all
}

struct Setup {
    dir: TestDir,
    sshd: Sshd,
    workdir: PathBuf,
    repo: PathBuf,
}

/// Whatever a test leaves on the engine under its own workdir (a failed
/// assertion before the destroy) is removed when the test ends.
impl Drop for Setup {
    fn drop(&mut self) {
        // `remote-other`: the second host's workdir of the snapshot test.
        for workdir in [self.workdir.clone(), self.dir.path().join("remote-other")] {
            let f = format!("--filter label=io.sandboxer.workdir={}", workdir.display());
            for (list, remove) in [
                (format!("docker ps -aq {f}"), "docker rm -f -v"),
                (format!("docker network ls -q {f}"), "docker network rm"),
                (format!("docker volume ls -q {f}"), "docker volume rm -f"),
            ] {
                let _ = sh(&format!("{list} | xargs -r {remove} >/dev/null 2>&1"));
            }
        }
    }
}

fn setup() -> Setup {
    require_docker();
    let dir = TestDir::new();
    let sshd = Sshd::start(dir.path()).expect("the throwaway sshd");
    let workdir = dir.path().join("remote");
    let repo = repo(dir.path());
    Setup {
        dir,
        sshd,
        workdir,
        repo,
    }
}

fn start_daemon(s: &Setup, host_key: &str, port: u16, env: &[(&str, &str)]) -> Daemon {
    let cfg = config(&s.sshd.dir, port, &s.sshd.identity, host_key, &s.workdir);
    let data = s.dir.path().join("data");
    testkit::daemon!()
        .args(["--config", cfg.to_str().expect("utf-8 path")])
        .envs(env)
        .start(&data)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_service_stack_comes_up_labelled_and_goes_without_a_trace() {
    let s = setup();
    let d = start_daemon(&s, &s.sshd.host_key, s.sshd.port, &[]);
    let c = &d.client;

    let hosts = c.hosts().await.expect("GET /v1/hosts");
    assert_eq!(hosts.items[0].id, "testhost");
    // The catalog entry lists no hosts; the configured ones are shown
    // (`sandboxctl extensions` HOSTS).
    let (_, exts) = c
        .request_json(sandboxctl::Method::GET, "/v1/extensions", None)
        .await
        .expect("GET /v1/extensions");
    let compose = exts["items"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == "ext.compose-ssh"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(compose["hosts"], serde_json::json!(["testhost"]), "{exts}");
    assert_eq!(hosts.items[0].labels["tier"], "test");

    let (status, sbx) = c
        .create(&create_req(&s.repo), Some(Duration::from_secs(120)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "ready within the wait: {sbx:?}");
    assert_eq!(sbx.state, SandboxState::Ready);
    assert_eq!(
        (sbx.extension.as_str(), sbx.host.as_str()),
        ("ext.compose-ssh", "testhost")
    );
    let reach = sbx.reachability.clone().expect("reachability");
    assert_eq!(reach["kind"], "compose");
    assert_eq!(reach["project"], sbx.id.to_lowercase());
    assert_eq!(reach["port"], s.sshd.port);
    assert_eq!(reach["user"], "root");
    for svc in ["web", "worker"] {
        assert!(
            reach["services"][svc]["container"].is_string(),
            "service {svc} in {reach}"
        );
    }

    // Every container carries the label; the project's networks are internal.
    let containers = lines(&format!("docker ps -q --filter label={LABEL}={}", sbx.id));
    assert_eq!(containers.len(), 2, "two running containers");
    let networks = lines(&format!(
        "docker network ls --format '{{{{.Name}}}}' --filter label={LABEL}={}",
        sbx.id
    ));
    assert!(!networks.is_empty(), "the project network is labelled");
    for net in &networks {
        let internal = lines(&format!(
            "docker network inspect -f '{{{{.Internal}}}}' {net}"
        ));
        assert_eq!(internal, vec!["true"], "network {net} is internal");
    }
    assert_eq!(
        lines(&format!(
            "docker volume ls -q --filter label={LABEL}={}",
            sbx.id
        ))
        .len(),
        1,
        "the named volume is labelled"
    );

    // The repository's files are in the workdir, without `.git`.
    let workdir = PathBuf::from(reach["workdir"].as_str().expect("workdir"));
    assert_eq!(workdir, s.workdir.join(&sbx.id));
    assert_eq!(
        std::fs::read_to_string(workdir.join("hello.txt")).expect("hello.txt"),
        "hello from the repo\n"
    );
    assert!(!workdir.join(".git").exists(), ".git is not uploaded");

    let (_, host) = c
        .request_json(sandboxctl::Method::GET, "/v1/hosts/testhost", None)
        .await
        .expect("GET /v1/hosts/testhost");
    assert_eq!(host["telemetry"]["reachable"], true, "{host}");
    assert_eq!(host["telemetry"]["compose"], "docker-compose", "{host}");

    // Pause freezes every container of the stack (`docker pause`), resume
    // lets them go; a paused stack is torn down all the same.
    let in_state = |status: &str| {
        lines(&format!(
            "docker ps -q --filter label={LABEL}={} --filter status={status}",
            sbx.id
        ))
        .len()
    };
    let step = |what: &'static str| {
        let url = format!("{}/v1/sandboxes/{}/{what}", d.url, sbx.id);
        async move {
            let r = reqwest::Client::new().post(url).send().await.expect(what);
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.expect("json");
            (
                status,
                body["state"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    assert_eq!(step("pause").await, (200, "paused".to_owned()));
    assert_eq!((in_state("paused"), in_state("running")), (2, 0));
    assert_eq!(
        step("pause").await,
        (200, "paused".to_owned()),
        "idempotent"
    );
    assert_eq!(step("resume").await, (200, "ready".to_owned()));
    assert_eq!((in_state("paused"), in_state("running")), (0, 2));
    assert_eq!(step("pause").await, (200, "paused".to_owned()));

    let (_, gone) = c
        .destroy(&sbx.id, Some(Duration::from_secs(90)))
        .await
        .expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed, "{gone:?}");
    assert_eq!(leftovers(&sbx.id), Vec::<String>::new(), "nothing left");
    assert!(!workdir.exists(), "the workdir is removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_host_key_fails_with_host_key_mismatch() {
    let s = setup();
    let other = testkit::keygen(&s.dir.path().join("other_key")).expect("ssh-keygen");
    let d = start_daemon(&s, &other, s.sshd.port, &[]);
    let (_, sbx) = d
        .client
        .create(&create_req(&s.repo), Some(Duration::from_secs(60)), None)
        .await
        .expect("create");
    assert_eq!(sbx.state, SandboxState::Failed, "{sbx:?}");
    let failure = sbx.failure.expect("failure");
    assert_eq!(failure.code, "host_key_mismatch", "{failure:?}");
    assert_eq!(d.client.health().await.expect("healthz").status, "ok");
    assert!(!s.workdir.join(&sbx.id).exists(), "nothing was uploaded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_never_speaks_ssh_fails_within_the_timeout() {
    let s = setup();
    // Accepts TCP and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let d = start_daemon(&s, &s.sshd.host_key, port, &[]);
    let started = Instant::now();
    let (_, sbx) = d
        .client
        .create(&create_req(&s.repo), Some(Duration::from_secs(60)), None)
        .await
        .expect("create");
    assert_eq!(sbx.state, SandboxState::Failed, "{sbx:?}");
    assert_eq!(sbx.failure.expect("failure").code, "host_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed after {:?}",
        started.elapsed()
    );
    assert_eq!(d.client.health().await.expect("healthz").status, "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_provision_then_restart_leaves_nothing() {
    let s = setup();
    let mut d = start_daemon(
        &s,
        &s.sshd.host_key,
        s.sshd.port,
        &[("SANDBOXER_FAULT", "provision.after_spawn")],
    );
    let (_, sbx) = d
        .client
        .create(&create_req(&s.repo), None, None)
        .await
        .expect("create");
    // The daemon aborts right after `compose up`, before it records anything.
    let deadline = Instant::now() + Duration::from_secs(120);
    while d.child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the fault point was not reached");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !leftovers(&sbx.id).is_empty(),
        "the stack was up when the daemon died"
    );
    d.kill9();
    let d = start_daemon(&s, &s.sshd.host_key, s.sshd.port, &[]);
    let after = d.client.get(&sbx.id, None).await.expect("get");
    assert_eq!(after.state, SandboxState::Failed, "{after:?}");
    assert_eq!(after.failure.expect("failure").code, "interrupted");
    assert_eq!(leftovers(&sbx.id), Vec::<String>::new(), "nothing left");
    assert!(!s.workdir.join(&sbx.id).exists(), "the workdir is removed");
}

/// A labelled container and a workdir for a sandbox id no row has, as a
/// daemon killed before recording its sandbox would leave them.
fn make_orphan(s: &Setup) -> String {
    let orphan = format!(
        "sbx_ORPHAN{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0)
    );
    let (ok, out) = sh(&format!(
        "docker run -d --network none --label {LABEL}={orphan} --label io.sandboxer.workdir={} \
         local/busybox /bin/busybox sleep 600",
        s.workdir.display()
    ));
    assert!(ok, "orphan container: {out}");
    std::fs::create_dir_all(s.workdir.join(&orphan)).expect("orphan workdir");
    orphan
}

#[tokio::test(flavor = "multi_thread")]
async fn the_periodic_sweep_reaps_orphans_after_the_grace_and_spares_live_stacks() {
    let s = setup();
    let grace = Duration::from_secs(3);
    let d = start_daemon(
        &s,
        &s.sshd.host_key,
        s.sshd.port,
        &[
            ("SANDBOXER_STALE_SWEEP_INTERVAL", "500ms"),
            ("SANDBOXER_STALE_GRACE", "3s"),
        ],
    );
    let c = &d.client;
    // A live stack is made while the sweep runs every half second: neither
    // mid-provision nor ready is it ever taken for stale.
    let (status, sbx) = c
        .create(&create_req(&s.repo), Some(Duration::from_secs(120)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "ready within the wait: {sbx:?}");

    let made = Instant::now();
    let orphan = make_orphan(&s);
    let deadline = made + Duration::from_secs(90);
    while !leftovers(&orphan).is_empty() || s.workdir.join(&orphan).exists() {
        assert!(
            Instant::now() < deadline,
            "the sweep did not reap the orphan {orphan} within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Never before it had been seen stale for the whole grace period.
    assert!(
        made.elapsed() >= grace,
        "the orphan was reaped after {:?}, before the {grace:?} grace",
        made.elapsed()
    );

    let now = c.get(&sbx.id, None).await.expect("get");
    assert_eq!(now.state, SandboxState::Ready, "{now:?}");
    assert_eq!(
        lines(&format!("docker ps -q --filter label={LABEL}={}", sbx.id)).len(),
        2,
        "the live stack's containers are untouched"
    );
    assert!(s.workdir.join(&sbx.id).is_dir(), "its workdir is untouched");
    let (_, gone) = c
        .destroy(&sbx.id, Some(Duration::from_secs(90)))
        .await
        .expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed, "{gone:?}");
}

/// A `[[hosts]]` block for the throwaway sshd's key, under another id.
fn host_block(s: &Setup, id: &str, port: u16, workdir: &Path) -> String {
    format!(
        "[[hosts]]\nid = \"{id}\"\naddress = \"127.0.0.1\"\nport = {port}\nuser = \"root\"\n\
         identity_file = \"{}\"\nhost_key = \"{}\"\nengine = \"docker\"\nworkdir = \"{}\"\n\
         connect_timeout = \"3s\"\n\n",
        s.sshd.identity.display(),
        s.sshd.host_key,
        workdir.display()
    )
}

/// A daemon configured with `testhost` plus the `before` and `after`
/// host blocks around it, without the periodic stale sweep (it would
/// contact the hosts on its own).
fn start_daemon_with_hosts(s: &Setup, before: &str, after: &str) -> Daemon {
    let cfg = config(
        &s.sshd.dir,
        s.sshd.port,
        &s.sshd.identity,
        &s.sshd.host_key,
        &s.workdir,
    );
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replacen("[[hosts]]", &format!("{before}[[hosts]]"), 1);
    std::fs::write(&cfg, format!("{text}\n{after}")).expect("write config");
    testkit::daemon!()
        .args(["--config", cfg.to_str().expect("utf-8 path")])
        .envs(&[("SANDBOXER_STALE_SWEEP_INTERVAL", "0s")])
        .start(&s.dir.path().join("data"))
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_moves_past_an_unreachable_host_unless_it_was_asked_for() {
    let s = setup();
    // A host listed first whose port refuses connections.
    let down = host_block(&s, "downhost", free_port(), &s.workdir);
    let d = start_daemon_with_hosts(&s, &down, "");
    let c = &d.client;
    let hosts: Vec<String> = c
        .hosts()
        .await
        .expect("hosts")
        .items
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(hosts, vec!["downhost", "testhost"]);

    // Not asked: the first host refuses, the sandbox moves to the next.
    let mut req = create_req(&s.repo);
    req.placement = None;
    let (status, sbx) = c
        .create(&req, Some(Duration::from_secs(120)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "ready on the second host: {sbx:?}");
    assert_eq!(sbx.host, "testhost");
    let events = c.events(&sbx.id).await.expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.contains("host downhost cannot be used")),
        "the move is recorded: {events:?}"
    );

    // Now known down, the next create goes to the reachable host at once.
    let (status, second) = c
        .create(&req, Some(Duration::from_secs(120)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "{second:?}");
    assert_eq!(second.host, "testhost");
    let events = c.events(&second.id).await.expect("events");
    assert!(
        !events.items.iter().any(|e| e.reason.contains("downhost")),
        "placed past the known-down host without trying it: {events:?}"
    );

    // Asked for: the host is honoured, and the create fails there.
    req.placement = Some(Placement {
        host: Some("downhost".into()),
    });
    let (_, asked) = c
        .create(&req, Some(Duration::from_secs(60)), None)
        .await
        .expect("create");
    assert_eq!(asked.state, SandboxState::Failed, "{asked:?}");
    assert_eq!(asked.host, "downhost");
    assert_eq!(asked.failure.expect("failure").code, "host_unreachable");

    for id in [&sbx.id, &second.id] {
        let (_, gone) = c
            .destroy(id, Some(Duration::from_secs(90)))
            .await
            .expect("destroy");
        assert_eq!(gone.state, SandboxState::Destroyed, "{gone:?}");
        assert_eq!(leftovers(id), Vec::<String>::new(), "nothing left");
    }
}

/// `docker exec` in the sandbox's `worker` container.
fn in_worker(sandbox_id: &str, script: &str) -> (bool, String) {
    let worker = lines(&format!(
        "docker ps -q --filter label={LABEL}={sandbox_id} \
         --filter label=com.docker.compose.service=worker"
    ));
    assert_eq!(worker.len(), 1, "one worker container for {sandbox_id}");
    sh(&format!(
        "docker exec {} /bin/busybox sh -c '{script}'",
        worker[0]
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_snapshots_restore_in_place_and_fork_onto_another_host() {
    let s = setup();
    // A second host (same sshd and engine, its own workdir), so the fork
    // moves between hosts as far as one machine allows.
    let other_workdir = s.dir.path().join("remote-other");
    let other = host_block(&s, "otherhost", s.sshd.port, &other_workdir);
    let d = start_daemon_with_hosts(&s, "", &other);
    let c = &d.client;
    let (status, sbx) = c
        .create(&create_req(&s.repo), Some(Duration::from_secs(120)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "{sbx:?}");
    let workdir = s.workdir.join(&sbx.id);
    std::fs::write(workdir.join("state.txt"), "v1\n").expect("workdir file");
    let (ok, out) = in_worker(
        &sbx.id,
        "echo volume-v1 > /data/f && mkdir -p /data/d && echo deep > /data/d/g",
    );
    assert!(ok, "{out}");

    let (status, snap) = c
        .create_snapshot(
            &sbx.id,
            Some("before".into()),
            Some(Duration::from_secs(120)),
        )
        .await
        .expect("snapshot");
    assert_eq!(status, 201, "{snap:?}");
    assert!(snap.size_bytes.unwrap_or(0) > 0, "{snap:?}");
    // The stack runs on after the capture (paused only during it).
    let (ok, out) = in_worker(&sbx.id, "cat /data/f");
    assert!(ok && out.contains("volume-v1"), "{out}");

    // Change the workdir and the volume, then restore in place.
    std::fs::write(workdir.join("state.txt"), "v2\n").expect("change");
    std::fs::write(workdir.join("added.txt"), "new\n").expect("add");
    let (ok, out) = in_worker(
        &sbx.id,
        "echo volume-v2 > /data/f && echo extra > /data/extra",
    );
    assert!(ok, "{out}");
    let restored = c.restore(&sbx.id, &snap.id).await.expect("restore");
    assert_eq!(restored.state, SandboxState::Ready, "{restored:?}");
    assert_eq!(
        std::fs::read_to_string(workdir.join("state.txt")).expect("state.txt"),
        "v1\n"
    );
    assert!(!workdir.join("added.txt").exists(), "added files are gone");
    let (ok, out) = in_worker(&sbx.id, "cat /data/f /data/d/g; ls /data");
    assert!(ok, "{out}");
    assert!(out.contains("volume-v1") && out.contains("deep"), "{out}");
    assert!(
        !out.contains("extra"),
        "the volume is exactly the snapshot's: {out}"
    );
    // Still labelled and internal after the restore.
    for net in lines(&format!(
        "docker network ls --format '{{{{.Name}}}}' --filter label={LABEL}={}",
        sbx.id
    )) {
        let internal = lines(&format!(
            "docker network inspect -f '{{{{.Internal}}}}' {net}"
        ));
        assert_eq!(internal, vec!["true"], "network {net} is internal");
    }

    // Fork onto the other host: no `repo` input, the snapshot stands in.
    let fork_req = CreateSandbox {
        from_snapshot: Some(snap.id.clone()),
        placement: Some(Placement {
            host: Some("otherhost".into()),
        }),
        ..CreateSandbox::default()
    };
    let (status, fork) = c
        .create(&fork_req, Some(Duration::from_secs(120)), None)
        .await
        .expect("fork");
    assert_eq!(status, 201, "{fork:?}");
    assert_eq!(fork.host, "otherhost");
    assert_eq!(fork.profile, "profile.compose-e2e");
    let fork_dir = other_workdir.join(&fork.id);
    assert_eq!(
        std::fs::read_to_string(fork_dir.join("state.txt")).expect("fork state.txt"),
        "v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(fork_dir.join("hello.txt")).expect("fork hello.txt"),
        "hello from the repo\n"
    );
    let (ok, out) = in_worker(&fork.id, "cat /data/f /data/d/g");
    assert!(
        ok && out.contains("volume-v1") && out.contains("deep"),
        "{out}"
    );

    for id in [&sbx.id, &fork.id] {
        let (_, gone) = c
            .destroy(id, Some(Duration::from_secs(90)))
            .await
            .expect("destroy");
        assert_eq!(gone.state, SandboxState::Destroyed, "{gone:?}");
        assert_eq!(leftovers(id), Vec::<String>::new(), "nothing left of {id}");
    }
    let tmp = s.dir.path().join("data/snapshots/tmp");
    let stray: Vec<_> = std::fs::read_dir(&tmp)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(stray.is_empty(), "no staging left: {stray:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_are_listed_as_stale_and_reaped_on_apply() {
    let s = setup();
    let d = start_daemon(&s, &s.sshd.host_key, s.sshd.port, &[]);
    let c = &d.client;
    let orphan = make_orphan(&s);

    let inspect = c.inspect_host("testhost").await.expect("inspect");
    assert_eq!(inspect.engine, "docker");
    assert!(inspect.labelled_containers >= 1, "{inspect:?}");
    assert!(inspect.workspaces >= 1, "{inspect:?}");

    let mine = |report: &sandboxctl::api::StaleReport| -> Vec<String> {
        report
            .items
            .iter()
            .filter(|i| i.sandbox_id == orphan)
            .map(|i| i.kind.clone())
            .collect()
    };
    let stale = c.stale("testhost").await.expect("stale");
    assert_eq!(mine(&stale), vec!["container", "workdir"], "{stale:?}");

    let dry = c.reap_stale("testhost", false).await.expect("dry run");
    assert!(!dry.applied);
    assert_eq!(leftovers(&orphan).len(), 1, "a dry run removes nothing");

    let applied = c.reap_stale("testhost", true).await.expect("reap");
    assert!(applied.applied, "{applied:?}");
    assert!(applied.errors.is_empty(), "{applied:?}");
    assert_eq!(
        leftovers(&orphan),
        Vec::<String>::new(),
        "the orphan is gone"
    );
    assert!(!s.workdir.join(&orphan).exists(), "its workdir is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_canary_stack_comes_up_and_goes() {
    let s = setup();
    let d = start_daemon(&s, &s.sshd.host_key, s.sshd.port, &[]);
    let repo = testkit::repo_root().join("tests/fixtures/compose-canary");
    let req = CreateSandbox {
        profile: "profile.sandbox-canary".into(),
        ..create_req(&repo)
    };
    let (status, sbx) = d
        .client
        .create(&req, Some(Duration::from_secs(120)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "{sbx:?}");
    let reach = sbx.reachability.clone().expect("reachability");
    assert!(
        reach["services"]["canary"]["container"].is_string(),
        "{reach}"
    );
    let (_, gone) = d
        .client
        .destroy(&sbx.id, Some(Duration::from_secs(60)))
        .await
        .expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed);
    assert_eq!(leftovers(&sbx.id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compose_file_that_reaches_the_host_is_refused_before_up() {
    let s = setup();
    let d = start_daemon(&s, &s.sshd.host_key, s.sshd.port, &[]);
    let evil = s.dir.path().join("evil");
    std::fs::create_dir_all(&evil).expect("mkdir");
    std::fs::write(
        evil.join("docker-compose.yml"),
        "services:\n  pwn:\n    image: local/busybox\n    command: [\"/bin/busybox\", \"sleep\", \"3600\"]\n    \
         volumes: [\"/:/host\"]\n",
    )
    .expect("compose file");
    let (_, sbx) = d
        .client
        .create(&create_req(&evil), Some(Duration::from_secs(60)), None)
        .await
        .expect("create");
    assert_eq!(sbx.state, SandboxState::Failed, "{sbx:?}");
    let failure = sbx.failure.clone().expect("failure");
    assert_eq!(failure.code, "compose_not_allowed", "{failure:?}");
    assert!(
        failure.message.contains("service `pwn`") && failure.message.contains("`volumes`"),
        "{failure:?}"
    );
    assert!(leftovers(&sbx.id).is_empty(), "nothing reached the engine");
}

/// Exec and files of a compose service, through the same routes as ext.local.
#[tokio::test(flavor = "multi_thread")]
async fn exec_and_files_reach_into_a_compose_service() {
    let s = setup();
    let d = start_daemon(&s, &s.sshd.host_key, s.sshd.port, &[]);
    let (status, sbx) = d
        .client
        .create(&create_req(&s.repo), Some(Duration::from_secs(120)), None)
        .await
        .expect("create");
    assert_eq!(status, 201, "{sbx:?}");
    let http = reqwest::Client::new();
    let base = format!("{}/v1/sandboxes/{}", d.url, sbx.id);
    let reach = sbx.reachability.clone().expect("reachability");
    assert_eq!(
        reach["api"]["exec"],
        format!("/v1/sandboxes/{}/exec", sbx.id)
    );

    // exec in a named service: output, exit code, env, cwd, stdin.
    let r: serde_json::Value = http
        .post(format!("{base}/exec"))
        .json(&serde_json::json!({"cmd": "echo $A; pwd; cat; echo oops >&2; exit 4", "service": "worker", "env": {"A": "b"}, "cwd": "/data", "stdin": "in\n"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            r["exit_code"].as_i64(),
            r["stdout"].as_str(),
            r["stderr"].as_str()
        ),
        (Some(4), Some("b\n/data\nin\n"), Some("oops\n")),
        "{r}"
    );
    // Streamed.
    let text = http
        .post(format!("{base}/exec"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"cmd": ["echo", "streamed"], "service": "web"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("event: stdout\ndata: streamed") && text.contains("event: exit"),
        "{text}"
    );

    // Files in the worker's volume: write, read, list, download, delete.
    let put = |path: &str, body: &'static str| {
        http.put(format!("{base}/files"))
            .query(&[("path", path), ("service", "worker")])
            .body(body)
            .send()
    };
    let r = put("/data/sub/a.txt", "in the volume").await.unwrap();
    assert_eq!(r.status(), 201);
    let get = |path: &str| {
        http.get(format!("{base}/files"))
            .query(&[("path", path), ("service", "worker")])
            .send()
    };
    assert_eq!(
        get("/data/sub/a.txt").await.unwrap().text().await.unwrap(),
        "in the volume"
    );
    let (ok, out) = in_worker(&sbx.id, "cat /data/sub/a.txt");
    assert!(ok && out.contains("in the volume"), "{out}");
    let r = get("/data/nope").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = get("/data").await.unwrap();
    assert_eq!(r.status(), 409);
    let list: serde_json::Value = http
        .get(format!("{base}/files/list"))
        .query(&[("path", "/data"), ("service", "worker"), ("depth", "2")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"/data/sub/a.txt") && paths.contains(&"/data/sub"),
        "{list}"
    );
    let tarball = http
        .get(format!("{base}/files/download"))
        .query(&[("path", "/data/sub"), ("service", "worker")])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut ar = tar::Archive::new(&tarball[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .filter_map(|e| e.ok()?.path().ok().map(|p| p.display().to_string()))
        .collect();
    assert!(names.iter().any(|n| n.ends_with("a.txt")), "{names:?}");
    let r = http
        .delete(format!("{base}/files"))
        .query(&[
            ("path", "/data/sub"),
            ("service", "worker"),
            ("recursive", "true"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get("/data/sub/a.txt").await.unwrap().status(), 404);

    // The web service listens on 8080.
    let ports: serde_json::Value = http
        .get(format!("{base}/ports?service=web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ports["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 8080),
        "{ports}"
    );

    // What compose does not do, and a service that does not exist.
    let r = http
        .post(format!("{base}/processes"))
        .json(&serde_json::json!({"cmd": "sleep 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .post(format!("{base}/exec"))
        .json(&serde_json::json!({"cmd": "true", "service": "db"}))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["code"].as_str(), v["field"].as_str()),
        (Some("unknown_service"), Some("service")),
        "{v}"
    );

    let (_, gone) = d
        .client
        .destroy(&sbx.id, Some(Duration::from_secs(120)))
        .await
        .expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed);
}
