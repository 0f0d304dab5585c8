//! Test helpers: a fresh in-process app per test, and the real daemon binary
//! started on port 0 for end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sandboxerd::config::Settings;

/// The repository root (profiles/ and extensions/ live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Fail with a clear message when bubblewrap is missing.
pub fn require_bwrap() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("bwrap").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "bubblewrap (`bwrap`) is not installed: these tests run real sandboxes; install it with `apt-get install -y bubblewrap`"
    );
}

/// Settings for a daemon whose data lives in `data_dir`.
pub fn settings(data_dir: &Path) -> Settings {
    let root = repo_root();
    let mut s = sandboxerd::config::Config::default()
        .settings()
        .expect("default settings");
    s.listen = "127.0.0.1:0".parse().expect("addr");
    s.data_dir = data_dir.to_owned();
    s.profiles_dir = root.join("profiles");
    s.extensions_dir = root.join("extensions");
    s.provision_timeout = Duration::from_secs(30);
    s.shutdown_grace = Duration::from_secs(5);
    s.reaper_interval = Duration::from_millis(200);
    s
}

/// The real `sandboxerd` binary, started on a free loopback port.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub client: sandboxctl::Client,
    /// Every line the daemon logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start the daemon on `data_dir` and wait until it serves.
    pub fn start(data_dir: &Path) -> Daemon {
        Self::start_with(data_dir, &[], &[])
    }

    /// Start with extra arguments and environment variables.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_as(data_dir, None, args, env)
    }

    /// Start as the user `uid:gid` (the test must be root for that; the
    /// data dir must be that user's), or as the test's own user for `None`.
    pub fn start_as(
        data_dir: &Path,
        user: Option<(u32, u32)>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        use std::os::unix::process::CommandExt;
        let mut root = repo_root();
        let mut exe = PathBuf::from(env!("CARGO_BIN_EXE_sandboxerd"));
        if user.is_some() {
            // The checkout may sit under a directory that user cannot
            // enter (a CI clone under /root): run a copy of the binary, the
            // profiles and the extensions from beside the data dir.
            let stage = data_dir.parent().expect("data dir has a parent");
            exe = stage.join("sandboxerd");
            std::fs::copy(env!("CARGO_BIN_EXE_sandboxerd"), &exe).expect("copy sandboxerd");
            for dir in ["profiles", "extensions"] {
                copy_dir(&root.join(dir), &stage.join(dir));
            }
            root = stage.to_owned();
        }
        let mut cmd = Command::new(&exe);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(&root)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sandboxerd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the log: the first line naming the bound address tells the port;
        // everything is echoed so a failing test shows the daemon's log.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[sandboxerd] {line}");
                if let Ok(mut l) = log2.lock() {
                    l.push(line.clone());
                }
                if !sent {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(addr) = v.get("addr").and_then(|a| a.as_str()) {
                            let _ = tx.send(addr.to_owned());
                            sent = true;
                        }
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                panic!("sandboxerd did not start serving within 60s (exit status: {status:?}); see its log above");
            }
        };
        let url = format!("http://{addr}");
        let client = sandboxctl::Client::new(&url, None).expect("client");
        Daemon {
            child,
            url,
            data_dir: data_dir.to_owned(),
            client,
            log,
        }
    }

    /// `kill -9` the daemon and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.child.wait().expect("wait")
    }
}

impl Daemon {
    /// A client of this daemon with a bearer token.
    pub fn client_with(&self, token: &str) -> sandboxctl::Client {
        sandboxctl::Client::new(&self.url, Some(token.to_owned())).expect("client")
    }

    /// The daemon's log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Run `argv` inside a sandbox through its `enter` prefix; returns stdout.
pub fn run_inside(reachability: &serde_json::Value, argv: &[&str]) -> String {
    run_inside_as(reachability, None, argv)
}

/// [`run_inside`], with `enter` run as the host user `uid:gid` (`None`:
/// the test's own).
pub fn run_inside_as(
    reachability: &serde_json::Value,
    user: Option<(u32, u32)>,
    argv: &[&str],
) -> String {
    use std::os::unix::process::CommandExt;
    let enter: Vec<String> = reachability["enter"]
        .as_array()
        .expect("enter is an array")
        .iter()
        .map(|v| v.as_str().expect("enter item").to_owned())
        .collect();
    let mut cmd = Command::new(&enter[0]);
    cmd.args(&enter[1..]).args(argv);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().expect("run enter");
    assert!(
        out.status.success(),
        "command inside the sandbox failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary data dir that, when dropped (also when a test panics), kills
/// every process still running from it (daemons and sandboxes), so a failing
/// test leaks nothing onto the machine.
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn new() -> Self {
        TestDir(tempfile::tempdir().expect("tempdir"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let marker = self.0.path().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            // A sandbox's bubblewrap names no path of the data dir (its
            // workspace is passed as a descriptor) but logs into it.
            let logs_here = std::fs::read_link(entry.path().join("fd/2"))
                .map(|l| l.to_string_lossy().starts_with(&marker))
                .unwrap_or(false);
            if logs_here || String::from_utf8_lossy(&cmdline).contains(&marker) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Sandbox ids that have a live bubblewrap process for `data_dir`: its
/// workspace is passed as a descriptor, but its stderr is
/// `<data_dir>/sandboxes/<id>/bwrap.log`.
pub fn sandbox_processes(data_dir: &Path) -> std::collections::HashSet<String> {
    let marker = format!("{}/sandboxes/", data_dir.display());
    let mut ids = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(log) = std::fs::read_link(entry.path().join("fd/2")) else {
            continue;
        };
        let log = log.to_string_lossy().into_owned();
        if let Some(rest) = log.strip_prefix(&marker) {
            if alive(pid) {
                ids.insert(rest.split('/').next().unwrap_or_default().to_owned());
            }
        }
    }
    ids
}

/// Give everything under a sandbox's workspace `ws` (written from the host
/// by the test) to the sandbox's host user, the owner of `ws`: root inside
/// the sandbox is that user, and a file of the host's root is nobody's there.
pub fn give_to_sandbox(ws: &Path) {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(ws).expect("workspace");
    fn walk(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("lchown");
        let meta = std::fs::symlink_metadata(p).expect("stat");
        if meta.is_dir() {
            for e in std::fs::read_dir(p).expect("read_dir") {
                walk(&e.expect("entry").path(), uid, gid);
            }
        }
    }
    walk(ws, owner.uid(), owner.gid());
}

/// Copy the files of `from` (one level, as profiles/ and extensions/ are)
/// into a new directory `to`, readable by every user.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Create `req` and wait up to 30 s for it: it must be ready (201).
pub async fn ready_sandbox(
    c: &sandboxctl::Client,
    req: &sandboxctl::api::CreateSandbox,
) -> sandboxctl::api::Sandbox {
    let (status, sbx) = c
        .create(req, Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    assert_eq!(
        (status, sbx.state),
        (201, sandboxctl::api::SandboxState::Ready),
        "ready within the wait: {sbx:?}"
    );
    sbx
}

/// A ready sandbox's workspace on the host (`reachability.workdir`).
pub fn workdir(sbx: &sandboxctl::api::Sandbox) -> PathBuf {
    PathBuf::from(
        sbx.reachability.as_ref().expect("reachability")["workdir"]
            .as_str()
            .expect("workdir"),
    )
}
