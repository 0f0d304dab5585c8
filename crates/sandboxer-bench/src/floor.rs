//! What a sandbox costs without the daemon: bubblewrap run directly with
//! the daemon's own flags (the floor), and `ext.local` driven in-process
//! (no HTTP, no database), so the daemon's overhead can be split.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandboxer_api::Profile;
use sandboxerd::catalog::Catalog;
use sandboxerd::extensions::local::{LocalExtension, LOCAL_HOST};
use sandboxerd::extensions::{Extension, ProvisionRequest};

/// The profile every benchmark sandbox uses.
pub const PROFILE: &str = sandboxer_testkit::LOCAL_SHELL;

/// The benchmark profile as the daemon loads it from `repo`, checked
/// against the backends the daemon is built with.
pub fn load_profile(repo: &Path, scratch: &Path) -> anyhow::Result<Profile> {
    let mut settings = sandboxerd::config::Config::default().settings()?;
    settings.data_dir = scratch.to_owned();
    let catalog = Catalog::load(
        &repo.join("profiles"),
        &repo.join("extensions"),
        &sandboxerd::registry(&settings),
    )
    .context("loading the catalog")?;
    catalog
        .profiles
        .get(PROFILE)
        .map(|p| p.spec.clone())
        .with_context(|| format!("{PROFILE} is not in {}", repo.join("profiles").display()))
}

fn request(id: &str, profile: &Profile) -> ProvisionRequest {
    ProvisionRequest {
        sandbox_id: id.to_owned(),
        generation: 1,
        profile: profile.clone(),
        inputs: BTreeMap::new(),
        host: LOCAL_HOST.to_owned(),
        from_snapshot: None,
        secrets: BTreeMap::new(),
    }
}

/// Bubblewrap started by hand, exactly as `ext.local` starts it.
pub struct Floor {
    root: PathBuf,
    bwrap: PathBuf,
    ext: LocalExtension,
    profile: Profile,
}

impl Floor {
    /// Sandboxes under `root`; fails when `bwrap` is not on PATH.
    pub fn new(root: &Path, profile: Profile) -> anyhow::Result<Self> {
        let bwrap = std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("bwrap"))
                    .find(|c| c.is_file())
            })
            .context("bubblewrap (`bwrap`) is not on PATH; install it with `apt-get install -y bubblewrap`")?;
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        Ok(Floor {
            root: root.to_owned(),
            bwrap,
            ext: LocalExtension::new(root, Default::default()),
            profile,
        })
    }

    /// Start one sandbox and wait until the daemon would call it ready: the
    /// info fd holds `child-pid` and that init has started its command.
    /// Then kill it the way teardown does. Answers (start→ready, kill→gone).
    /// The directories and files are made before the clock starts, and
    /// readiness is polled every 50 µs: this is bubblewrap's own cost.
    pub fn run_once(&self, id: &str) -> anyhow::Result<(Duration, Duration)> {
        let dir = self.root.join(id);
        let workspace = dir.join("workspace");
        std::fs::create_dir_all(&workspace)
            .with_context(|| format!("creating {}", workspace.display()))?;
        let ids = self.ext.ids();
        if ids.switch {
            std::os::unix::fs::chown(&workspace, Some(ids.uid), Some(ids.gid))?;
        }
        let info_path = dir.join("info.json");
        // Exactly the daemon's command: arguments, descriptors, user, environment.
        let mut cmd = self
            .ext
            .bwrap_command(&request(id, &self.profile), &dir, None)
            .map_err(|e| anyhow::anyhow!("preparing bubblewrap: {e}"))?;

        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bwrap.display()))?;
        let pid = loop {
            if let Some(pid) = read_child_pid(&info_path) {
                if has_child(pid) {
                    break pid;
                }
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("bwrap.log")).unwrap_or_default();
                bail!(
                    "bubblewrap exited ({status}) before the sandbox was ready: {}",
                    log.trim()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bubblewrap did not report the sandbox within 60s");
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        let ready = started.elapsed();

        let started = Instant::now();
        // SIGKILL to the namespace's pid 1 ends everything in it; bubblewrap follows.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        child.wait()?;
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        Ok((ready, started.elapsed()))
    }
}

/// `ext.local` in-process: `provision` + `wait_ready`, then `teardown`.
pub struct InProcess {
    ext: LocalExtension,
    profile: Profile,
}

impl InProcess {
    /// Sandboxes under `<data_dir>/sandboxes`.
    pub fn new(data_dir: &Path, profile: Profile) -> Self {
        InProcess {
            ext: LocalExtension::new(data_dir, Default::default()),
            profile,
        }
    }

    /// One sandbox through the extension.
    pub async fn run_once(&self, id: &str) -> anyhow::Result<InProcessTimes> {
        let started = Instant::now();
        let state = self
            .ext
            .provision(&request(id, &self.profile))
            .await
            .map_err(|e| anyhow::anyhow!("ext.local provision: {e}"))?;
        let provision = started.elapsed();
        let info = self
            .ext
            .wait_ready(id, &state, Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("ext.local wait_ready: {e}"))?;
        let ready = started.elapsed();
        let started = Instant::now();
        self.ext
            .teardown(id, Some(&info.backend_state))
            .await
            .map_err(|e| anyhow::anyhow!("ext.local teardown: {e}"))?;
        Ok(InProcessTimes {
            provision,
            ready,
            teardown: started.elapsed(),
        })
    }
}

/// How long each step of [`InProcess::run_once`] took.
#[derive(Debug, Clone, Copy)]
pub struct InProcessTimes {
    /// `provision`: the workspace made and bubblewrap spawned.
    pub provision: Duration,
    /// `provision` + `wait_ready`.
    pub ready: Duration,
    /// `teardown`.
    pub teardown: Duration,
}

/// `child-pid` from bubblewrap's info fd, once written whole.
fn read_child_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("child-pid")?
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

/// Whether the sandbox init has started the command under it.
fn has_child(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|c| !c.trim().is_empty())
        .unwrap_or(false)
}
