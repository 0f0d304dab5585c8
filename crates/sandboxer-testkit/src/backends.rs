//! The real backends tests run against: bubblewrap, and dockerd with the
//! `local/busybox` image. Each check says what is missing and how to get it.
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// Whether `tool` is a command on `PATH`.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Run `script` with `sh -c`; answers whether it succeeded and its stdout
/// followed by its stderr.
pub fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
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

/// Panic naming what is missing unless [`prepare_docker`] succeeds.
pub fn require_docker() {
    if let Err(e) = prepare_docker() {
        panic!("{e:#}");
    }
}

/// The `local/busybox` image's version (its `io.sandboxer.image` label):
/// bumped when its applets change.
const IMAGE_VERSION: &str = "2";

/// Make sure the compose tools are installed, `dockerd` answers (starting
/// it when it does not; it is then left running for later tests and runs)
/// and the `local/busybox` image exists (imported from busybox-static,
/// nothing is pulled). Done once per process.
// dockerd, once started, is left running on purpose.
#[allow(clippy::zombie_processes)]
pub fn prepare_docker() -> anyhow::Result<()> {
    for tool in [
        "docker",
        "docker-compose",
        "ssh-keygen",
        "/usr/sbin/sshd",
        "busybox",
    ] {
        ensure!(
            have(tool) || Path::new(tool).exists(),
            "`{tool}` is not installed: real compose stacks need \
             `apt-get install -y docker.io docker-compose busybox-static openssh-server`"
        );
    }
    static READY: Mutex<bool> = Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        return Ok(());
    }
    if !sh("docker info >/dev/null 2>&1").0 {
        let log = std::fs::File::create("/tmp/dockerd.log").context("creating /tmp/dockerd.log")?;
        Command::new("dockerd")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting dockerd (are you root?)")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sh("docker info >/dev/null 2>&1").0 {
            ensure!(
                Instant::now() < deadline,
                "dockerd did not answer within 60s; see /tmp/dockerd.log"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // Rebuilt when it is older than the applets listed here (its label).
    let (_, version) = sh(
        "docker image inspect -f '{{index .Config.Labels \"io.sandboxer.image\"}}' local/busybox 2>/dev/null",
    );
    if version.trim() != IMAGE_VERSION {
        let root = tempfile::tempdir().context("tempdir")?;
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        let (_, busybox) = sh("command -v busybox");
        std::fs::copy(busybox.trim(), bin.join("busybox"))
            .with_context(|| format!("copying busybox from `{}`", busybox.trim()))?;
        for applet in [
            "sh", "sleep", "httpd", "nc", "cat", "ls", "echo", "wget", "true", "stat", "find",
            "mkdir", "dirname", "basename", "mv", "chmod", "rm", "tar", "env", "pwd", "id", "head",
            "tr", "wc", "test", "[",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        for d in ["tmp", "www", "data"] {
            std::fs::create_dir_all(root.path().join(d))?;
        }
        let (ok, out) = sh(&format!(
            "tar -C {} -c . | docker import --change 'LABEL io.sandboxer.image={IMAGE_VERSION}' - local/busybox",
            root.path().display()
        ));
        if !ok {
            bail!("docker import of local/busybox failed: {out}");
        }
    }
    *ready = true;
    Ok(())
}
