//! `exec`: run a command, stream its output, kill its whole tree when it
//! outlives its timeout or the daemon hangs up.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandboxer_api::{signal_name, ExecExit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::proto::{kind, write_frame, AgentError, Exec};
use crate::{reply_err, reply_ok};

/// Bytes read from a pipe at once (and the largest frame sent).
pub(crate) const CHUNK: usize = 64 * 1024;

/// The default working directory.
pub(crate) const WORKSPACE: &str = "/workspace";

/// A command ready to spawn: in its own session (so its process group is
/// its tree), with the sandbox's environment plus `env`.
pub(crate) fn command(
    argv: &[String],
    cwd: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<tokio::process::Command, AgentError> {
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Err(AgentError::new("invalid_command", "cmd is empty"));
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(AgentError::new(
            "invalid_command",
            "cmd contains a NUL byte",
        ));
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(AgentError::new(
                "invalid_env",
                format!(
                    "env: `{}` is not a valid variable name or value",
                    k.escape_debug()
                ),
            ));
        }
    }
    let cwd = cwd.unwrap_or(WORKSPACE);
    let cwd_path = crate::files::sandbox_path(cwd)?;
    match std::fs::metadata(&cwd_path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(AgentError::new(
                "invalid_cwd",
                format!("cwd {cwd} is not a directory"),
            ));
        }
        Err(e) => {
            return Err(AgentError::new("invalid_cwd", format!("cwd {cwd}: {e}")));
        }
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..]).current_dir(&cwd_path).envs(env);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The command adopts its orphaned descendants (a double fork
            // into a new session included), so they stay in its tree for
            // as long as it runs and `kill_tree` finds them.
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            // The agent ignores nothing it hands down; default dispositions.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    Ok(cmd)
}

/// How a child that could not start is described.
pub(crate) fn spawn_error(program: &str, e: &std::io::Error) -> AgentError {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => "command_not_found",
        std::io::ErrorKind::PermissionDenied => "permission_denied",
        _ => "exec_failed",
    };
    AgentError::new(code, format!("{program}: {e}"))
}

/// Exit code and signal name of a finished child.
pub(crate) fn exit_of(status: std::process::ExitStatus) -> (Option<i32>, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (Some(code), None),
        (None, Some(sig)) => (None, Some(signal_name(sig))),
        (None, None) => (None, None),
    }
}

pub(crate) async fn exec(
    x: Exec,
    mut r: BufReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut cmd = match command(&x.argv, x.cwd.as_deref(), &x.env) {
        Ok(c) => c,
        Err(e) => return reply_err(&mut w, e).await,
    };
    cmd.stdin(if x.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return reply_err(&mut w, spawn_error(&x.argv[0], &e)).await,
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    reply_ok(&mut w, &serde_json::json!({ "pid": pid })).await?;
    if let (Some(mut stdin), Some(text)) = (child.stdin.take(), x.stdin) {
        // A command that never reads its input must not stall the rest.
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let cap = x.max_output.unwrap_or(u64::MAX);
    let mut sent = [0u64; 2];
    let mut truncated = [false; 2];
    let mut buf_out = vec![0u8; CHUNK];
    let mut buf_err = vec![0u8; CHUNK];
    let mut probe = [0u8; 1];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(x.timeout_ms.max(1));
    let mut status = None;
    let mut timed_out = false;
    // After the tree is killed, how long a pipe held by an escaped process is waited for.
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        tokio::select! {
            n = read_some(&mut out, &mut buf_out), if out.is_some() => {
                match n {
                    Some(n) => forward(&mut w, kind::STDOUT, &buf_out[..n], cap, &mut sent[0], &mut truncated[0]).await?,
                    None => out = None,
                }
            }
            n = read_some(&mut err, &mut buf_err), if err.is_some() => {
                match n {
                    Some(n) => forward(&mut w, kind::STDERR, &buf_err[..n], cap, &mut sent[1], &mut truncated[1]).await?,
                    None => err = None,
                }
            }
            s = child.wait(), if status.is_none() => {
                status = Some(s?);
            }
            _ = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                kill_tree(pid);
                give_up = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or(deadline)), if give_up.is_some() && status.is_some() => {
                // Something outside the tree keeps a pipe open: stop reading.
                break;
            }
            gone = r.read(&mut probe) => {
                // The daemon hung up (its client went away): the command goes too.
                if matches!(gone, Ok(0) | Err(_)) {
                    kill_tree(pid);
                    let _ = child.wait().await;
                    return Ok(());
                }
            }
        }
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await?,
    };
    let (exit_code, signal) = exit_of(status);
    let exit = ExecExit {
        exit_code,
        signal,
        timed_out,
        stdout_truncated: truncated[0],
        stderr_truncated: truncated[1],
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let json = serde_json::to_vec(&exit).map_err(std::io::Error::other)?;
    write_frame(&mut w, kind::EXIT, &json).await?;
    w.shutdown().await
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    let r = r.as_mut()?;
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// Sends what fits under the cap; the rest is dropped and marked.
async fn forward(
    w: &mut OwnedWriteHalf,
    kind: u8,
    data: &[u8],
    cap: u64,
    sent: &mut u64,
    truncated: &mut bool,
) -> std::io::Result<()> {
    let room = cap.saturating_sub(*sent);
    let take = (data.len() as u64).min(room) as usize;
    if take < data.len() {
        *truncated = true;
    }
    if take > 0 {
        write_frame(w, kind, &data[..take]).await?;
        *sent += take as u64;
    }
    Ok(())
}

/// `(pid, ppid, process group, session)` of every live (not zombie) process in the sandbox.
fn processes() -> Vec<(i32, i32, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name (which may hold anything): state ppid pgrp session.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // A zombie is dead already; its parent reaps it.
        if f.first() == Some(&"Z") {
            continue;
        }
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<i32>().ok());
        if let (Some(ppid), Some(pgrp), Some(sid)) = (num(1), num(2), num(3)) {
            out.push((pid, ppid, pgrp, sid));
        }
    }
    out
}

/// The processes of `root`'s tree now: its descendants (it adopts orphans,
/// see [`command`]), its process group and its session.
fn tree_of(root: i32) -> HashSet<i32> {
    let all = processes();
    let me = std::process::id() as i32;
    let mut tree: HashSet<i32> = all.iter().filter(|p| p.0 == root).map(|p| p.0).collect();
    loop {
        let before = tree.len();
        for &(pid, ppid, pgrp, sid) in &all {
            if pid != me && pid > 1 && (tree.contains(&ppid) || pgrp == root || sid == root) {
                tree.insert(pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Kills `root`'s process tree: stops every member first (a stopped
/// process can neither fork nor exit and orphan its children away), again
/// until no new one appears, then kills them all; repeated while any is
/// left. A process that left the tree before this began (re-parented to the
/// sandbox's init while `root` was already gone) escapes; the sandbox's own
/// limits still hold it.
pub(crate) fn kill_tree(root: i32) {
    if root <= 1 {
        return;
    }
    for _ in 0..20 {
        let mut stopped: HashSet<i32> = HashSet::new();
        loop {
            let tree = tree_of(root);
            let new: Vec<i32> = tree.difference(&stopped).copied().collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                unsafe {
                    libc::kill(pid, libc::SIGSTOP);
                }
                stopped.insert(pid);
            }
        }
        unsafe {
            libc::kill(-root, libc::SIGKILL);
        }
        for &pid in &stopped {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if stopped.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
