//! Issue 15, "Isolation that holds": the profile's `cpus`, `memory` and
//! `pids` enforced on real bubblewrap through cgroups, and a termination
//! reason for every death, tried the way hostile code would (a fork flood,
//! a memory hog, a busy loop, killing its own init, escaping the process
//! tree with a double fork and `setsid`). Each test is bounded in size and
//! time; none needs more than a few hundred MiB of the host.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sandboxer_api::{CreateSandbox, SandboxState, TerminationReason};
use serde_json::{json, Value};

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, Daemon, TestDir};

/// A daemon whose only profile is `profile.limits`: local-shell with
/// `resources` replaced by `resources`.
fn daemon_with(dir: &Path, resources: &str) -> Daemon {
    daemon_as(dir, resources, None)
}

/// [`daemon_with`], run as `user` when given: an unprivileged daemon with a
/// delegated cgroup subtree (what the shipped unit's `Delegate=yes` gives).
fn daemon_as(dir: &Path, resources: &str, user: Option<(u32, u32)>) -> Daemon {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = std::fs::read_to_string(testkit::repo_root().join("profiles/local-shell.yaml"))
        .expect("profile");
    let start = text.find("resources:").expect("resources");
    let end = start + text[start..].find("setup:").expect("setup");
    let text = format!(
        "{}resources:\n{resources}\n{}",
        &text[..start],
        &text[end..]
    )
    .replace("profile.local-shell", "profile.limits");
    std::fs::write(profiles.join("limits.yaml"), text).expect("write");
    let data = dir.join("data");
    let mut daemon = testkit::daemon!().args(["--profiles", profiles.to_str().expect("utf-8")]);
    if let Some((uid, gid)) = user {
        std::fs::create_dir_all(&data).expect("mkdir");
        for p in [
            dir.to_path_buf(),
            profiles.clone(),
            profiles.join("limits.yaml"),
            data.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
        }
        daemon = daemon.user((uid, gid));
    }
    daemon.start(&data)
}

/// The user an unprivileged daemon runs as, when this test can start one
/// (it must be root to); `None` says why it is skipped.
pub(crate) fn unprivileged() -> Option<(u32, u32)> {
    if nix::unistd::geteuid().is_root() {
        Some((4246, 4246))
    } else {
        eprintln!("SKIPPED: starting the daemon as another user needs root");
        None
    }
}

async fn limited(d: &Daemon) -> String {
    let req = CreateSandbox {
        profile: "profile.limits".into(),
        ..CreateSandbox::default()
    };
    testkit::ready_sandbox(&d.client, &req).await.id
}

async fn exec(d: &Daemon, id: &str, cmd: Value, timeout: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes/{id}/exec", d.url))
        .json(&json!({"cmd": cmd, "timeout": timeout}))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("exec");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    let log = d.data_dir.join("sandboxes").join(id).join("bwrap.log");
    let log = std::fs::read_to_string(log).unwrap_or_default();
    if status != StatusCode::OK {
        let sbx = d.client.get(id, None).await;
        let ev = d.client.events(id).await;
        panic!("{v}\nbwrap.log: {log}\n{sbx:?}\n{ev:?}");
    }
    v
}

async fn usage(d: &Daemon, id: &str) -> sandboxer_api::Usage {
    let sbx = d.client.get(id, None).await.expect("get");
    let Some(u) = sbx.usage.clone() else {
        panic!("no usage on a live sandbox: {sbx:?}")
    };
    u
}

/// Host processes whose command line holds `marker`.
fn host_processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_flood_stops_at_pids_and_the_sandbox_and_host_live_on() {
    a_fork_flood_stops_at_pids_and_the_sandbox_and_host_live_on_as(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_flood_stops_at_pids_and_the_sandbox_and_host_live_on_unprivileged() {
    if let Some(user) = unprivileged() {
        a_fork_flood_stops_at_pids_and_the_sandbox_and_host_live_on_as(Some(user)).await;
    }
}

async fn a_fork_flood_stops_at_pids_and_the_sandbox_and_host_live_on_as(user: Option<(u32, u32)>) {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon_as(dir.path(), "  pids: 256\n  memory: 512MiB", user);
    let id = limited(&d).await;
    // 3,000 forks, each child becoming a `sleep 30` with its output closed:
    // the parent counts what the kernel allowed and what it refused.
    let flood = r#"
import os
started = refused = 0
for _ in range(3000):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        fd = os.open('/dev/null', os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(fd, n)
        try:
            os.execvp('sleep', ['sleep', '30'])
        finally:
            os._exit(127)
    started += 1
print('started=%d refused=%d' % (started, refused))
"#;
    let v = if testkit::have("python3") {
        exec(&d, &id, json!(["python3", "-c", flood]), "60s").await
    } else {
        // Without python the shell stops at its first refused fork.
        let script = "i=0; while [ $i -lt 3000 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done";
        exec(&d, &id, json!(["/bin/sh", "-c", script]), "60s").await
    };
    let u = usage(&d, &id).await;
    assert!(u.pids_refused > 0, "no fork was refused: {u:?} {v}");
    assert!(u.pids <= 256, "more than the limit: {u:?}");
    let out = v["stdout"].as_str().unwrap_or_default();
    if let Some(counts) = out.trim().strip_prefix("started=") {
        let (started, refused) = counts.split_once(" refused=").expect("counts");
        let started: u64 = started.parse().expect("count");
        let refused: u64 = refused.parse().expect("count");
        assert!(started < 256, "{started} children started under pids: 256");
        assert_eq!(started + refused, 3000, "{out}");
    }
    // The host still forks, and the sandbox answers once the flood is gone.
    assert!(std::process::Command::new("true")
        .status()
        .expect("host fork")
        .success());
    // (Not `kill -9 -1`: that would end the agent too, and with it the sandbox.)
    exec(&d, &id, json!("pkill sleep; true"), "20s").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = exec(&d, &id, json!(["echo", "alive"]), "10s").await;
        if v["stdout"] == "alive\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox never recovered: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sbx = d.client.get(&id, None).await.expect("get");
    assert!(sbx.state.is_live(), "{sbx:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_oom_killed_and_reported_while_the_sandbox_lives_on() {
    a_memory_hog_is_oom_killed_and_reported_while_the_sandbox_lives_on_as(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_oom_killed_and_reported_while_the_sandbox_lives_on_unprivileged() {
    if let Some(user) = unprivileged() {
        a_memory_hog_is_oom_killed_and_reported_while_the_sandbox_lives_on_as(Some(user)).await;
    }
}

async fn a_memory_hog_is_oom_killed_and_reported_while_the_sandbox_lives_on_as(
    user: Option<(u32, u32)>,
) {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon_as(dir.path(), "  memory: 256MiB", user);
    let id = limited(&d).await;
    // A string doubled until it would pass 4 GiB.
    let hog = r#"BEGIN { s = "x"; for (i = 0; i < 32; i++) s = s s; print length(s) }"#;
    let v = exec(&d, &id, json!(["awk", hog]), "60s").await;
    assert_eq!(v["signal"], "KILL", "{v}");
    assert_eq!(v["oom_killed"], true, "{v}");
    assert!(v["stdout"].as_str().unwrap_or_default().is_empty(), "{v}");
    let u = usage(&d, &id).await;
    assert!(u.oom_kills >= 1, "{u:?}");
    assert!(
        u.memory_peak_bytes <= 256 << 20,
        "peak past the limit: {u:?}"
    );
    assert!(u.memory_peak_bytes > 64 << 20, "the hog never grew: {u:?}");
    // It lives on, and its events say what happened (the watcher: ≤ 2 s).
    let v = exec(&d, &id, json!(["echo", "still here"]), "10s").await;
    assert_eq!(v["stdout"], "still here\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = d.client.events(&id).await.expect("events");
        if events
            .items
            .iter()
            .any(|e| e.reason.starts_with("oom_kill"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no oom_kill event: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sbx = d.client.get(&id, None).await.expect("get");
    assert!(sbx.state.is_live() && sbx.termination.is_none(), "{sbx:?}");
    let (_, metrics) = d
        .client
        .request_json(sandboxctl::Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains(&format!(
            "sandboxer_sandbox_oom_kills_total{{sandbox_id=\"{id}\"}} 1"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn half_a_cpu_holds_a_busy_loop_near_half_a_core() {
    half_a_cpu_holds_a_busy_loop_near_half_a_core_as(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn half_a_cpu_holds_a_busy_loop_near_half_a_core_unprivileged() {
    if let Some(user) = unprivileged() {
        half_a_cpu_holds_a_busy_loop_near_half_a_core_as(Some(user)).await;
    }
}

async fn half_a_cpu_holds_a_busy_loop_near_half_a_core_as(user: Option<(u32, u32)>) {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon_as(dir.path(), "  cpus: 0.5", user);
    let id = limited(&d).await;
    let before = usage(&d, &id).await.cpu_seconds;
    let started = Instant::now();
    // Two busy loops for 3 s: without the quota they could take two cores.
    let script = "(timeout 3 sh -c 'while :; do :; done' &); timeout 3 sh -c 'while :; do :; done'; sleep 0.2";
    exec(&d, &id, json!(["/bin/sh", "-c", script]), "30s").await;
    let wall = started.elapsed().as_secs_f64();
    let used = usage(&d, &id).await.cpu_seconds - before;
    // The quota is 50 ms of CPU per 100 ms period: at most half the wall
    // time, plus one period of slack. How far below depends on how busy
    // this shared machine is, so the floor is loose.
    assert!(
        used <= wall * 0.5 + 0.15,
        "{used:.2} s of CPU in {wall:.2} s under cpus: 0.5"
    );
    assert!(
        used >= 0.5,
        "the loop barely ran: {used:.2} s in {wall:.2} s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_whose_init_dies_ends_within_seconds_with_the_reason() {
    a_sandbox_whose_init_dies_ends_within_seconds_with_the_reason_as(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_whose_init_dies_ends_within_seconds_with_the_reason_unprivileged() {
    if let Some(user) = unprivileged() {
        a_sandbox_whose_init_dies_ends_within_seconds_with_the_reason_as(Some(user)).await;
    }
}

async fn a_sandbox_whose_init_dies_ends_within_seconds_with_the_reason_as(
    user: Option<(u32, u32)>,
) {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon_as(dir.path(), "  memory: 256MiB\n  pids: 64", user);
    let id = limited(&d).await;
    let sbx = d.client.get(&id, None).await.expect("get");
    let pid = sbx.reachability.as_ref().expect("reach")["pid"]
        .as_i64()
        .expect("pid");
    // Some OOM kill first, which must not be blamed for the death below.
    let hog = r#"BEGIN { s = "x"; for (i = 0; i < 32; i++) s = s s }"#;
    let v = exec(&d, &id, json!(["awk", hog]), "60s").await;
    assert_eq!(v["oom_killed"], true, "{v}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Hostile code kills its own init (the agent, pid 2 inside).
    let killed = Instant::now();
    let _ = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes/{id}/exec", d.url))
        .json(&json!({"cmd": ["kill", "-9", "2"]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let gone = loop {
        let s = d.client.get(&id, None).await.expect("get");
        if s.state == SandboxState::Failed {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "still {:?} after its init died",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = gone.termination.as_ref().expect("termination");
    assert_eq!(t.reason, TerminationReason::InitExited, "{t:?}");
    assert_eq!(
        gone.failure.as_ref().map(|f| f.code.as_str()),
        Some("sandbox_exited")
    );
    assert!(gone.reachability.is_none() && gone.usage.is_none());
    eprintln!(
        "init death noticed in {:?} (the watcher checks every second)",
        killed.elapsed()
    );
    // Its processes, directory and cgroup are gone too.
    assert!(!testkit::alive(pid));
    let sandbox_dir = d.data_dir.join("sandboxes").join(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandbox_dir.exists() {
        assert!(Instant::now() < deadline, "{} left", sandbox_dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cgroup_dirs_of(&id).is_empty(), "{:?}", cgroup_dirs_of(&id));
    let events = d.client.events(&id).await.expect("events");
    let last = events.items.last().expect("events");
    assert_eq!(last.to_state, SandboxState::Failed);
    assert_eq!(last.termination, Some(TerminationReason::InitExited));
    // A destroy afterwards finds nothing to do and keeps the reason.
    d.client
        .destroy(&id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    let after = d.client.get(&id, None).await.expect("get");
    assert_eq!(
        after.termination.map(|t| t.reason),
        Some(TerminationReason::InitExited)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_leaves_no_process_even_after_a_double_fork_and_setsid() {
    destroy_leaves_no_process_even_after_a_double_fork_and_setsid_as(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_leaves_no_process_even_after_a_double_fork_and_setsid_unprivileged() {
    if let Some(user) = unprivileged() {
        destroy_leaves_no_process_even_after_a_double_fork_and_setsid_as(Some(user)).await;
    }
}

async fn destroy_leaves_no_process_even_after_a_double_fork_and_setsid_as(
    user: Option<(u32, u32)>,
) {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon_as(dir.path(), "  memory: 256MiB", user);
    let id = limited(&d).await;
    let marker = format!("4242.{}", std::process::id());
    let script = format!(
        "setsid sh -c 'sleep {marker} & sleep {marker} &' < /dev/null > /dev/null 2>&1 & \
         (sh -c 'nohup sleep {marker} > /dev/null 2>&1 &' &); sleep 0.5; echo ok"
    );
    let v = exec(&d, &id, json!(["/bin/sh", "-c", script]), "30s").await;
    assert_eq!(v["stdout"], "ok\n", "{v}");
    assert!(
        host_processes_with(&marker).len() >= 3,
        "the escapees did not start"
    );
    d.client
        .destroy(&id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    let left = host_processes_with(&marker);
    assert!(left.is_empty(), "left after destroy: {left:?}");
    assert!(cgroup_dirs_of(&id).is_empty(), "{:?}", cgroup_dirs_of(&id));
    let gone = d.client.get(&id, None).await.expect("get");
    assert_eq!(
        gone.termination.map(|t| t.reason),
        Some(TerminationReason::Destroyed)
    );
}

/// The cgroup directories named `id` under any cgroup mount.
fn cgroup_dirs_of(id: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, id: &str, depth: usize, out: &mut Vec<std::path::PathBuf>) {
        if depth > 6 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == id {
                out.push(e.path());
            } else {
                walk(&e.path(), id, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), id, 0, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_past_disk_fails_with_enospc_inside_and_nothing_is_left_after() {
    require_bwrap();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: a sandbox's disk image is mounted by a root daemon only");
        return;
    }
    let dir = TestDir::new();
    let d = daemon_with(dir.path(), "  disk: 256MiB");
    let id = limited(&d).await;
    // 2 GiB asked for; the sandbox's own filesystem ends at 256 MiB.
    let v = exec(
        &d,
        &id,
        json!([
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/workspace/fill bs=1M count=2048; echo dd=$?"
        ]),
        "120s",
    )
    .await;
    let err = v["stderr"].as_str().unwrap_or_default();
    assert!(err.contains("No space left on device"), "{v}");
    assert!(
        v["stdout"].as_str().unwrap_or_default().contains("dd=1"),
        "{v}"
    );
    let u = usage(&d, &id).await;
    assert!(u.disk_bytes <= 256 << 20, "{u:?}");
    assert!(u.disk_bytes >= 200 << 20, "the write stopped early: {u:?}");
    // Nothing of it reached the host's disk beyond the image, and the
    // sandbox lives on: freeing space makes writes work again.
    let v = exec(
        &d,
        &id,
        json!([
            "/bin/sh",
            "-c",
            "rm /workspace/fill && echo ok > /workspace/small && cat /workspace/small"
        ]),
        "30s",
    )
    .await;
    assert_eq!(v["stdout"], "ok\n", "{v}");
    let image = d.data_dir.join("disks").join(format!("{id}.img"));
    assert!(image.is_file(), "{} missing", image.display());
    // Full again, and then its init dies: the reason says the disk.
    exec(
        &d,
        &id,
        json!([
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/workspace/fill bs=1M count=2048 2>/dev/null; true"
        ]),
        "120s",
    )
    .await;
    let _ = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes/{id}/exec", d.url))
        .json(&json!({"cmd": ["kill", "-9", "2"]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let ended = loop {
        let s = d.client.get(&id, None).await.expect("get");
        if s.state == SandboxState::Failed {
            break s;
        }
        assert!(Instant::now() < deadline, "still {:?}", s.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        ended.termination.map(|t| t.reason),
        Some(TerminationReason::DiskFull)
    );
    d.client
        .destroy(&id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    assert!(!image.exists(), "image left after destroy");
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .expect("losetup");
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(!loops.contains(&id), "loop device left: {loops}");
    assert!(!d.data_dir.join("sandboxes").join(&id).exists());
}

/// errno of a raw system call inside the sandbox (0: allowed).
const SYSCALLS: &str = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
print('ptrace=%d' % call(101, 0, 0, 0, 0))
print('keyctl=%d' % call(250, 0, -2, 1))
print('mount=%d' % call(165, 0, 0, 0, 0, 0))
print('unshare_newuser=%d' % call(272, 0x10000000))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_named_security_switch_relaxes_only_its_calls() {
    require_bwrap();
    if !testkit::have("python3") {
        eprintln!("SKIPPED: python3 is needed inside the sandbox for the system-call probe");
        return;
    }
    let dir = TestDir::new();
    let d = daemon_with(dir.path(), "  memory: 256MiB\nsecurity:\n  allow: [ptrace]");
    let id = limited(&d).await;
    let v = exec(&d, &id, json!(["python3", "-c", SYSCALLS]), "30s").await;
    let out = v["stdout"].as_str().unwrap_or_default();
    // EPERM is 1: what stays denied answers it; ptrace(TRACEME) is allowed.
    for line in ["ptrace=0", "keyctl=1", "mount=1", "unshare_newuser=1"] {
        assert!(out.lines().any(|l| l == line), "{line} expected in {v}");
    }
    // Commands entered from the host get the same filter.
    let sbx = d.client.get(&id, None).await.expect("get");
    let enter = sbx.reachability.expect("reach")["enter"].clone();
    let argv: Vec<String> = serde_json::from_value(enter).expect("argv");
    assert!(
        argv.windows(2).any(|w| w == ["--seccomp-allow", "ptrace"]),
        "{argv:?}"
    );
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args(["python3", "-c", SYSCALLS])
        .output()
        .expect("enter");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.lines().any(|l| l == "ptrace=0"), "{out}");
    assert!(out.lines().any(|l| l == "keyctl=1"), "{out}");

    // A switch that does not exist stops the profile, naming the field.
    let bad = TestDir::new();
    let profiles = bad.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = std::fs::read_to_string(dir.path().join("profiles/limits.yaml")).expect("read");
    std::fs::write(
        profiles.join("limits.yaml"),
        text.replace("[ptrace]", "[ptrace, mount]"),
    )
    .expect("write");
    let err = testkit::daemon!()
        .args(["--profiles", profiles.to_str().expect("utf-8")])
        .try_start(&bad.path().join("data"))
        .err()
        .expect("the daemon must refuse the profile");
    let err = format!("{err:#}");
    assert!(
        err.contains("security.allow[1]") && err.contains("`mount`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_its_extension_cannot_enforce_is_rejected_and_the_daemon_starts() {
    require_bwrap();
    let dir = TestDir::new();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = std::fs::read_to_string(testkit::repo_root().join("profiles/local-shell.yaml"))
        .expect("profile");
    assert!(text.contains("  mode: none"), "the template changed");
    std::fs::write(
        profiles.join("open.yaml"),
        text.replace("profile.local-shell", "profile.open")
            .replace("  mode: none", "  mode: open"),
    )
    .expect("write");
    std::fs::write(profiles.join("shell.yaml"), &text).expect("write");
    // Starts: the other profile works, the rejected one says why.
    let d = testkit::daemon!()
        .args(["--profiles", profiles.to_str().expect("utf-8")])
        .start(&dir.path().join("data"));
    testkit::ready_sandbox(&d.client, &testkit::local_shell()).await;
    let req = CreateSandbox {
        profile: "profile.open".into(),
        ..CreateSandbox::default()
    };
    let err = d.client.create(&req, None, None).await.expect_err("422");
    assert_eq!(err.status(), Some(422), "{err}");
    let sandboxctl::ClientError::Api { problem, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(problem.code.as_str(), "profile_rejected", "{problem:?}");
    assert_eq!(problem.field.as_deref(), Some("profile"));
    let detail = problem.detail.clone();
    assert!(
        detail.contains("open.yaml") && detail.contains("network.mode"),
        "{detail}"
    );
    assert!(d.log_text().contains("profile rejected"), "not logged");
}
