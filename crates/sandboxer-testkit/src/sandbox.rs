//! Looking at sandboxes from the host: running commands inside, finding
//! their processes and workspaces.
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandboxer_api::{CreateSandbox, Sandbox, SandboxState};

use crate::dir::alive;

/// Run `argv` inside a sandbox through its `enter` prefix; returns stdout
/// (panics when the command fails).
pub fn run_inside(reachability: &serde_json::Value, argv: &[&str]) -> String {
    run_inside_as(reachability, None, argv)
}

/// [`run_inside`], with `enter` run as the host user `uid:gid` (`None`:
/// the caller's own).
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

/// Sandbox ids that have a live bubblewrap process for `data_dir`: its
/// workspace is passed as a descriptor, but its stderr is
/// `<data_dir>/sandboxes/<id>/bwrap.log`.
pub fn sandbox_processes(data_dir: &Path) -> HashSet<String> {
    let marker = format!("{}/sandboxes/", data_dir.display());
    let mut ids = HashSet::new();
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
    // The daemon's own walk (no symlink followed; setuid bits dropped, as
    // for everything that fills a workspace).
    sandboxerd::extensions::fsutil::own_tree(ws, Some((owner.uid(), owner.gid())))
        .expect("giving the workspace to the sandbox's user");
}

/// Create `req` and wait up to 30 s for it: it must be ready (201).
pub async fn ready_sandbox(c: &sandboxctl::Client, req: &CreateSandbox) -> Sandbox {
    let (status, sbx) = c
        .create(req, Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    assert_eq!(
        (status, sbx.state),
        (201, SandboxState::Ready),
        "ready within the wait: {sbx:?}"
    );
    sbx
}

/// A ready sandbox's workspace on the host (`reachability.workdir`).
pub fn workdir(sbx: &Sandbox) -> PathBuf {
    PathBuf::from(
        sbx.reachability.as_ref().expect("reachability")["workdir"]
            .as_str()
            .expect("workdir"),
    )
}

/// Sandbox ids with a directory under `<data_dir>/sandboxes`.
pub fn sandbox_dirs(data_dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(data_dir.join("sandboxes")) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}
