//! The in-sandbox agent of `ext.local`: where its binary comes from, how it
//! is started (bubblewrap's command, with the listening socket the daemon
//! made as a descriptor) and how the daemon checks it answers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandboxer_agent::client;
use sandboxer_agent::proto::{Hello, Request};

use super::SandboxIds;
use crate::extensions::fsutil;

/// Where the agent is inside every sandbox (under the sandbox's own `/run` tmpfs).
pub const AGENT_IN_SANDBOX: &str = "/run/sandboxer/agent";
/// Where it spills background processes' output, inside.
pub const LOG_DIR_IN_SANDBOX: &str = "/run/sandboxer/logs";
/// The socket's name in the sandbox's directory on the host.
pub const SOCKET: &str = "agent.sock";

/// The agent's own limits, from `[access]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_log_bytes: u64,
    pub max_processes: u32,
}

/// The binary to install: `configured`, else `sandboxer-agent` next to this
/// executable, else on `PATH`.
fn source(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!(
                "the in-sandbox agent {} (config `access.agent`) is not a file",
                p.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("sandboxer-agent"))
        .filter(|p| p.is_file());
    beside
        .or_else(|| super::bwrap::find_in_path("sandboxer-agent"))
        .ok_or_else(|| {
            "the in-sandbox agent `sandboxer-agent` is neither next to sandboxerd nor on PATH \
         (build it with `cargo build -p sandboxerd`, or set `access.agent`)"
                .to_string()
        })
}

/// Copies the agent binary to `<data_dir>/agent/sandboxer-agent`, where
/// the sandbox's host user can look it up whatever the modes of the
/// directories it was built or installed in (bubblewrap resolves a bind
/// source as that user). A new copy replaces the old by rename, so running
/// sandboxes keep the binary they started with.
pub fn install(
    configured: Option<&Path>,
    data_dir: &Path,
    ids: SandboxIds,
) -> Result<PathBuf, String> {
    let src = source(configured)?;
    let dir = data_dir.join("agent");
    let fail = |what: &str, e: std::io::Error| format!("installing the agent: {what}: {e}");
    fsutil::private_dir(data_dir).map_err(|e| fail(&data_dir.display().to_string(), e))?;
    fsutil::private_dir(&dir).map_err(|e| fail(&dir.display().to_string(), e))?;
    if ids.switch {
        for d in [data_dir, dir.as_path()] {
            fsutil::traversable_by_group(d, ids.gid)
                .map_err(|e| fail(&d.display().to_string(), e))?;
        }
    }
    let dst = dir.join("sandboxer-agent");
    let tmp = dir.join(format!(".sandboxer-agent.{}", std::process::id()));
    std::fs::copy(&src, &tmp).map_err(|e| fail(&src.display().to_string(), e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(&tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| fail(&dst.display().to_string(), e))?;
    Ok(dst)
}

/// Where the directory holding the egress proxy's socket is, inside.
pub const EGRESS_DIR_IN_SANDBOX: &str = "/run/sandboxer/egress";
/// The egress proxy's socket's name, in that directory and on the host.
pub const EGRESS_SOCKET: &str = "proxy.sock";

/// The command bubblewrap runs: the agent on descriptor `fd`, relaying
/// `127.0.0.1:<egress_port>` to the egress proxy when given.
pub fn command(fd: i32, limits: Limits, egress_port: Option<u16>) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        AGENT_IN_SANDBOX.into(),
        "--listen-fd".into(),
        fd.to_string(),
        "--log-dir".into(),
        LOG_DIR_IN_SANDBOX.into(),
        "--max-log-bytes".into(),
        limits.max_log_bytes.to_string(),
        "--max-processes".into(),
        limits.max_processes.to_string(),
    ];
    if let Some(port) = egress_port {
        argv.extend([
            "--egress-socket".into(),
            format!("{EGRESS_DIR_IN_SANDBOX}/{EGRESS_SOCKET}"),
            "--egress-port".into(),
            port.to_string(),
        ]);
    }
    argv
}

/// Makes the socket the agent will serve on: `<dir>/agent.sock`, 0600, the
/// daemon's. The agent gets the listening descriptor; the path is never
/// inside the sandbox.
pub fn listen(dir: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let path = dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Whether the agent behind `socket` answers a ping within `timeout`.
pub async fn ping(socket: &Path, timeout: Duration) -> Result<Hello, client::CallError> {
    client::call::<Hello>(socket, &Request::Ping, timeout)
        .await
        .map(|(hello, _)| hello)
}
