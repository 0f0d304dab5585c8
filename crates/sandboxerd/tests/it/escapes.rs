//! Hostile-tenant regression tests (issue 12): what code inside an
//! `ext.local` sandbox, or a command entered into it, must not be able to
//! do to the host. Each runs the real daemon and real bubblewrap, as root
//! (the README's quick start) and, where it matters, as an unprivileged user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandboxctl::api::{Sandbox, SandboxState, Snapshot, SnapshotState};

use sandboxer_testkit as testkit;
use testkit::{local_shell, require_bwrap, run_inside, run_inside_as, Daemon, TestDir};

const WAIT: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A ready sandbox's reachability.
async fn ready(d: &Daemon) -> (String, serde_json::Value) {
    let (_, sbx) = d
        .client
        .create(&local_shell(), Some(WAIT), None)
        .await
        .expect("create");
    assert_eq!(sbx.state, SandboxState::Ready, "{sbx:?}");
    (sbx.id.clone(), sbx.reachability.expect("reachability"))
}

/// A ready snapshot of sandbox `id`, and a ready fork of it.
async fn snapshot_and_fork(d: &Daemon, id: &str) -> (Snapshot, Sandbox) {
    let (_, snap) = d
        .client
        .create_snapshot(id, None, Some(WAIT))
        .await
        .expect("snapshot");
    assert_eq!(snap.state, SnapshotState::Ready, "{snap:?}");
    let mut fork = local_shell();
    fork.from_snapshot = Some(snap.id.clone());
    let (_, forked) = d
        .client
        .create(&fork, Some(WAIT), None)
        .await
        .expect("fork");
    assert_eq!(forked.state, SandboxState::Ready, "{forked:?}");
    (snap, forked)
}

/// One line `key=value` per probe, run inside through `enter`: what a
/// process entered from the host holds, and what each dangerous system
/// call answers. Each call is made so that it would succeed (or fail with
/// another errno) without the seccomp filter: `EPERM` (1) / `ENOSYS` (38)
/// can only come from the filter.
const PROBE: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp'):
    print('self.%s=%s' % (k, status[k].strip()))
init = dict(l.split(':', 1) for l in open('/proc/1/status') if ':' in l)
for k in ('CapEff', 'CapBnd', 'Seccomp', 'NoNewPrivs'):
    print('init.%s=%s' % (k, init[k].strip()))
print('uid_map=%s' % ' '.join(open('/proc/self/uid_map').read().split()))
buf = ctypes.create_string_buffer(256)
ctypes.c_uint.from_buffer(buf, 0).value = 128
mid = ctypes.c_int(0)
r = libc.name_to_handle_at(-100, b'/workspace', buf, ctypes.byref(mid), 0)
print('name_to_handle_at_libc=%d' % (0 if r == 0 else ctypes.get_errno()))
print('open_by_handle_at=%d' % call(304, os.open('/workspace', os.O_RDONLY), 0, 0))
print('unshare_newuser=%d' % call(272, 0x10000000))
r = libc.syscall(ctypes.c_long(56), ctypes.c_long(0x10000000 | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
if r == 0:
    os._exit(0)
print('clone_newuser=%d' % (0 if r > 0 else ctypes.get_errno()))
print('ptrace_traceme=%d' % call(101, 0, 0, 0, 0))
print('keyctl=%d' % call(250, 0, -2, 1))
print('bpf=%d' % call(321, 0, 0, 0))
print('perf_event_open=%d' % call(298, 0, 0, -1, -1, 0))
print('io_uring_setup=%d' % call(425, 1, 0))
print('clone3=%d' % call(435, 0, 0))
print('x32_getpid=%d' % call(0x40000000 | 39))
print('mount=%d' % call(165, 0, 0, 0, 0, 0))
"#;

fn probe(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What every entered command and the sandbox's init must show.
fn assert_confined(p: &std::collections::BTreeMap<String, String>, who: &str) {
    let zero = "0000000000000000";
    for key in [
        "self.CapEff",
        "self.CapPrm",
        "self.CapBnd",
        "self.CapAmb",
        "init.CapEff",
        "init.CapBnd",
    ] {
        assert_eq!(p[key], zero, "{who}: {key} must be empty: {p:?}");
    }
    for key in ["self.NoNewPrivs", "init.NoNewPrivs"] {
        assert_eq!(p[key], "1", "{who}: {key}: {p:?}");
    }
    for key in ["self.Seccomp", "init.Seccomp"] {
        assert_eq!(p[key], "2", "{who}: {key} (2 = filter): {p:?}");
    }
    // Root inside is an unprivileged id outside.
    let map: Vec<&str> = p["uid_map"].split(' ').collect();
    assert_eq!(map[0], "0", "{who}: uid_map {map:?}");
    assert_ne!(map[1], "0", "{who}: root inside must not be root outside");
    assert_eq!(map[2], "1", "{who}: one id mapped: {map:?}");
    for call in [
        "name_to_handle_at_libc",
        "open_by_handle_at",
        "unshare_newuser",
        "clone_newuser",
        "ptrace_traceme",
        "keyctl",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "mount",
    ] {
        assert_eq!(p[call], "1", "{who}: {call} must fail with EPERM: {p:?}");
    }
    for call in ["clone3", "x32_getpid"] {
        assert_eq!(p[call], "38", "{who}: {call} must fail with ENOSYS: {p:?}");
    }
}

/// Finding 1: a command entered from a root daemon's host had every
/// capability and no filter, and reached the host's disk.
#[tokio::test(flavor = "multi_thread")]
async fn entered_commands_hold_no_capability_and_run_under_the_filter() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(&dir.path().join("data"));
    let (_, reach) = ready(&d).await;
    let p = probe(&run_inside(&reach, &["python3", "-c", PROBE]));
    assert_confined(&p, "entered as the test's user");

    // The host's read-only directories stay read-only and unmountable.
    let marker = format!("/etc/sandboxer-escape-{}", std::process::id());
    let script = format!(
        "mount -o remount,bind,rw /usr 2>/dev/null && echo remount-ok; \
         mount -t sysfs sysfs /tmp 2>/dev/null && echo sysfs-ok; \
         mount -o remount,rw /etc 2>/dev/null; touch {marker} 2>/dev/null && echo etc-writable; \
         echo done"
    );
    let out = run_inside(&reach, &["sh", "-c", &script]);
    assert_eq!(out.trim(), "done", "{out}");
    assert!(!Path::new(&marker).exists(), "the host's /etc was written");
}

/// Finding 6: root-only files of the host are not readable inside.
#[tokio::test(flavor = "multi_thread")]
async fn host_secrets_are_not_readable_inside() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(&dir.path().join("data"));
    let (_, reach) = ready(&d).await;
    let mut secrets: Vec<PathBuf> = [
        "/etc/shadow",
        "/etc/shadow-",
        "/etc/gshadow",
        "/etc/gshadow-",
        "/etc/docker/key.json",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for dir in ["/etc/ssh", "/etc/ssl/private"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dir.ends_with("private")
                    || (name.starts_with("ssh_host_") && name.ends_with("_key"))
                {
                    secrets.push(e.path());
                }
            }
        }
    }
    let mut checked = 0;
    for path in &secrets {
        let Ok(host) = std::fs::read(path) else {
            continue;
        };
        if host.is_empty() {
            continue;
        }
        let inside = run_inside(
            &reach,
            &[
                "sh",
                "-c",
                &format!("cat '{}' 2>/dev/null; true", path.display()),
            ],
        );
        assert!(
            inside.is_empty(),
            "{} is readable inside the sandbox ({} bytes)",
            path.display(),
            inside.len()
        );
        checked += 1;
    }
    if is_root() {
        assert!(checked > 0, "no host secret file to check on this machine");
    }
    // The daemon's own data is out of sight too.
    let out = run_inside(
        &reach,
        &[
            "sh",
            "-c",
            &format!(
                "ls {} 2>/dev/null; ls /root 2>/dev/null; echo end",
                d.data_dir.display()
            ),
        ],
    );
    assert_eq!(out.trim(), "end", "{out}");
}

/// Finding 5: a setuid file made inside gives nothing on the host, and the
/// data dir keeps other host users out.
#[tokio::test(flavor = "multi_thread")]
async fn setuid_files_made_inside_give_nothing_on_the_host() {
    require_bwrap();
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let d = testkit::daemon!().start(&data);
    let (id, reach) = ready(&d).await;
    let out = run_inside(
        &reach,
        &[
            "sh",
            "-c",
            "cp /usr/bin/id suid-id && chown 0:0 suid-id && chmod 6755 suid-id && stat -c %a suid-id",
        ],
    );
    assert_eq!(
        out.trim(),
        "6755",
        "inside, the sandbox may set the bits: {out}"
    );
    let workdir = PathBuf::from(reach["workdir"].as_str().expect("workdir"));
    let meta = std::fs::metadata(workdir.join("suid-id")).expect("stat");
    assert_ne!(
        meta.uid(),
        0,
        "a file made inside must not be root's on the host"
    );
    assert_ne!(meta.gid(), 0, "nor root's group's");

    // Nobody else on the host reaches it: the data dir is the daemon's.
    let mode = std::fs::metadata(&data)
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o007, 0, "data dir is open to others: {mode:o}");
    let db = std::fs::metadata(data.join("sandboxer.db")).expect("db");
    assert_eq!(
        db.permissions().mode() & 0o077,
        0,
        "database mode {:o}",
        db.permissions().mode()
    );
    if is_root() {
        use std::os::unix::process::CommandExt;
        let other = std::process::Command::new("/usr/bin/test")
            .arg("-e")
            .arg(workdir.join("suid-id"))
            .uid(4242)
            .gid(4242)
            .status()
            .expect("test -e as another user");
        assert!(
            !other.success(),
            "another host user can reach the workspace"
        );
    }

    // A snapshot keeps no setuid bit, and neither does a fork of it.
    let (snap, forked) = snapshot_and_fork(&d, &id).await;
    let fork_dir = testkit::workdir(&forked);
    let meta = std::fs::metadata(fork_dir.join("suid-id")).expect("forked file");
    assert_eq!(
        meta.permissions().mode() & 0o6000,
        0,
        "setuid kept by a fork"
    );
    assert_ne!(meta.uid(), 0);
    // Restore in place too.
    d.client.restore(&id, &snap.id).await.expect("restore");
    let restored = d
        .client
        .get(&id, Some(WAIT))
        .await
        .expect("wait for the restore");
    assert!(restored.state.is_live(), "{restored:?}");
    let meta = std::fs::metadata(workdir.join("suid-id")).expect("restored file");
    assert_eq!(
        meta.permissions().mode() & 0o6000,
        0,
        "setuid kept by a restore"
    );
}

/// Finding 7: an immutable file cannot be made inside, and one made by the
/// host does not pin the sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn an_immutable_file_never_pins_a_sandbox() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(&dir.path().join("data"));
    let (id, reach) = ready(&d).await;
    let out = run_inside(
        &reach,
        &[
            "sh",
            "-c",
            "touch pinned; chattr +i pinned 2>/dev/null && echo immutable; echo end",
        ],
    );
    assert_eq!(out.trim(), "end", "chattr +i worked inside: {out}");
    let workdir = PathBuf::from(reach["workdir"].as_str().expect("workdir"));
    if is_root() {
        // As the host's root could: flag it, then destroy.
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(workdir.join("pinned"))
            .status()
            .expect("chattr");
        assert!(st.success(), "chattr +i as root on the host");
    }
    let (_, gone) = d.client.destroy(&id, Some(WAIT)).await.expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed, "{gone:?}");
    assert!(!workdir.exists(), "the workspace was left behind");
}

/// Findings 1 and 14's premise: a daemon running as an unprivileged user
/// provisions, enters (as itself and as root), snapshots and forks, with
/// the same confinement.
#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_daemon_provisions_enters_and_snapshots() {
    require_bwrap();
    if !is_root() {
        // Already unprivileged: the other tests of this file cover it.
        return;
    }
    const USER: (u32, u32) = (4243, 4243);
    let dir = TestDir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::os::unix::fs::chown(&data, Some(USER.0), Some(USER.1)).expect("chown");
    let d = testkit::daemon!().user(USER).start(&data);
    let (id, reach) = ready(&d).await;
    for (who, user) in [("the daemon's user", Some(USER)), ("root", None)] {
        let p = probe(&run_inside_as(&reach, user, &["python3", "-c", PROBE]));
        assert_confined(&p, who);
        assert_eq!(
            p["uid_map"].split(' ').nth(1),
            Some("4243"),
            "root inside is the daemon's user: {p:?}"
        );
    }
    let marker = format!("/etc/sandboxer-escape-u{}", std::process::id());
    let out = run_inside_as(
        &reach,
        Some(USER),
        &[
            "sh",
            "-c",
            &format!("echo x > made; touch {marker} 2>/dev/null && echo etc; echo end"),
        ],
    );
    assert_eq!(out.trim(), "end", "{out}");
    assert!(!Path::new(&marker).exists());
    let (_, forked) = snapshot_and_fork(&d, &id).await;
    let out = run_inside_as(
        forked.reachability.as_ref().expect("reach"),
        Some(USER),
        &["cat", "made"],
    );
    assert_eq!(out, "x\n");
    let (_, gone) = d.client.destroy(&id, Some(WAIT)).await.expect("destroy");
    assert_eq!(gone.state, SandboxState::Destroyed);
}

/// Opening the data dir to the sandbox's group must never close it, even
/// for a moment, under a bubblewrap of a concurrent create looking its way
/// through it (under a root daemon, 16 creates at once on a fresh data dir
/// failed with `Can't find source path /proc/self/fd/10`).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_on_a_fresh_data_dir_all_get_ready() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(&dir.path().join("data"));
    let req = local_shell();
    let creates = (0..16).map(|_| d.client.create(&req, Some(WAIT), None));
    for res in futures::future::join_all(creates).await {
        let (_, sbx) = res.expect("create");
        assert_eq!(sbx.state, SandboxState::Ready, "{:?}", sbx.failure);
    }
}
