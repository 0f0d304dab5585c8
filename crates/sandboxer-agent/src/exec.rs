//! `exec`: run a command, stream its output, kill its whole tree when it
//! outlives its timeout or the daemon hangs up.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandboxer_api::{signal_name, ExecExit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::proto::{kind, read_frame, write_capped, write_frame, AgentError, Exec, PtySize};
use crate::{reply_err, reply_ok};

/// Bytes read from a pipe at once (and the largest frame sent).
pub(crate) const CHUNK: usize = 256 * 1024;

/// Widens a pipe the agent reads to [`CHUNK`] (Linux's default is 64 KiB):
/// a fast writer then fills whole chunks, and output goes out in fewer,
/// larger frames and events.
pub(crate) fn widen_pipe<F: AsRawFd>(fd: &F) {
    // SAFETY: a valid descriptor; failure (a capped pipe-max-size) changes nothing.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int);
    }
}

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
    let cwd = cwd.unwrap_or(crate::files::WORKSPACE);
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
            // At the sandbox's memory limit the kernel kills what the agent
            // started, not the agent (the sandbox's init): raising one's own
            // score needs no privilege, lowering it back does.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"500".as_ptr().cast(), 3);
                libc::close(fd);
            }
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

/// What the control-reader task hands the main loop.
enum Ctl {
    Resize(u16, u16),
    Signal(i32),
    /// The daemon hung up.
    Gone,
}

/// What goes to the command's standard input.
enum Input {
    Data(Vec<u8>),
    End,
}

/// A pseudo-terminal: the master (read and written by the agent) and the
/// slave (the command's standard streams).
fn open_pty(rows: u16, cols: u16) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to live locals; no name buffer; default termios.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok((master, slave))
}

fn resize(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid descriptor and a live winsize.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;

pub(crate) async fn exec(
    x: Exec,
    r: BufReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut env = x.env.clone();
    if let Some(p) = &x.pty {
        env.entry("TERM".into())
            .or_insert_with(|| p.term.clone().unwrap_or_else(|| "xterm-256color".into()));
    }
    let mut cmd = match command(&x.argv, x.cwd.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => return reply_err(&mut w, e).await,
    };
    let pty = match &x.pty {
        None => None,
        Some(p) => match open_pty(p.rows, p.cols) {
            Ok(fds) => Some(fds),
            Err(e) => {
                return reply_err(
                    &mut w,
                    AgentError::new("exec_failed", format!("no terminal: {e}")),
                )
                .await
            }
        },
    };
    match &pty {
        Some((_, slave)) => {
            let stdio = || slave.try_clone().map(Stdio::from);
            cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
            // SAFETY: one ioctl between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::ioctl(0, libc::TIOCSCTTY, 0);
                    Ok(())
                });
            }
        }
        None => {
            let input = if x.stdin.is_some() || x.stdin_stream {
                Stdio::piped()
            } else {
                Stdio::null()
            };
            cmd.stdin(input)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    let started = Instant::now();
    let spawned = cmd.spawn();
    // The command holds the terminal's slave side now; the agent must not.
    let master = pty.map(|(m, _slave)| m);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return reply_err(&mut w, spawn_error(&x.argv[0], &e)).await,
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    reply_ok(&mut w, &serde_json::json!({ "pid": pid })).await?;

    // Standard input: a writer task fed by the control reader (so a command
    // that does not read never stalls its output).
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(64);
    let mut stdin_sink: Option<Box<dyn AsyncWrite + Unpin + Send>> =
        match (&master, child.stdin.take()) {
            (Some(m), _) => Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(
                m.try_clone()?,
            )))),
            (None, Some(pipe)) => Some(Box::new(pipe)),
            (None, None) => None,
        };
    let is_pty = master.is_some();
    if let (Some(text), false) = (&x.stdin, x.stdin_stream) {
        let _ = in_tx.try_send(Input::Data(text.as_bytes().to_vec()));
        let _ = in_tx.try_send(Input::End);
    }
    tokio::spawn(async move {
        while let Some(msg) = in_rx.recv().await {
            let Some(sink) = stdin_sink.as_mut() else {
                continue;
            };
            match msg {
                Input::Data(d) => {
                    if sink.write_all(&d).await.is_err() {
                        stdin_sink = None;
                    }
                }
                Input::End if is_pty => {
                    // End of input on a terminal is its EOF character.
                    let _ = sink.write_all(&[4]).await;
                }
                Input::End => {
                    let _ = sink.shutdown().await;
                    stdin_sink = None;
                }
            }
        }
    });
    let (ctl_tx, mut ctl) = mpsc::channel::<Ctl>(16);
    tokio::spawn(read_controls(r, x.stdin_stream, in_tx, ctl_tx));

    let (mut out, mut err): (Option<Reader>, Option<Reader>) = match &master {
        Some(m) => (
            Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(
                m.try_clone()?,
            )))),
            None,
        ),
        None => (
            child.stdout.take().map(|o| {
                widen_pipe(&o);
                Box::new(o) as Reader
            }),
            child.stderr.take().map(|e| {
                widen_pipe(&e);
                Box::new(e) as Reader
            }),
        ),
    };
    let cap = x.max_output.unwrap_or(u64::MAX);
    let mut sent = [0u64; 2];
    let mut truncated = [false; 2];
    let mut buf_out = vec![0u8; CHUNK];
    let mut buf_err = vec![0u8; CHUNK];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(x.timeout_ms.max(1));
    let mut status = None;
    let mut timed_out = false;
    // After the command ends (or its tree is killed), how long a pipe held
    // by a process outside the tree is waited for.
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        tokio::select! {
            n = read_some(&mut out, &mut buf_out), if out.is_some() => {
                match n {
                    Some(n) => write_capped(&mut w, kind::STDOUT, &buf_out[..n], cap, &mut sent[0], &mut truncated[0]).await?,
                    None => out = None,
                }
            }
            n = read_some(&mut err, &mut buf_err), if err.is_some() => {
                match n {
                    Some(n) => write_capped(&mut w, kind::STDERR, &buf_err[..n], cap, &mut sent[1], &mut truncated[1]).await?,
                    None => err = None,
                }
            }
            s = child.wait(), if status.is_none() => {
                status = Some(s?);
                if is_pty {
                    // A terminal's master reads until every holder of the
                    // slave is gone; a background job may hold it forever.
                    give_up = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                }
            }
            _ = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                kill_tree(pid);
                give_up = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or(deadline)), if give_up.is_some() && status.is_some() => {
                break;
            }
            c = ctl.recv() => match c {
                Some(Ctl::Resize(rows, cols)) => {
                    if let Some(m) = &master {
                        resize(m, rows, cols);
                    }
                }
                Some(Ctl::Signal(sig)) => unsafe {
                    libc::kill(-pid, sig);
                },
                Some(Ctl::Gone) | None => {
                    // The daemon hung up (its client went away): the command goes too.
                    kill_tree(pid);
                    let _ = child.wait().await;
                    return Ok(());
                }
            },
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
        // The daemon, which sees the sandbox's cgroup, fills this in.
        oom_killed: false,
    };
    let json = serde_json::to_vec(&exit).map_err(std::io::Error::other)?;
    write_frame(&mut w, kind::EXIT, &json).await?;
    w.shutdown().await
}

/// Reads what the daemon sends after an `exec` request: input, resizes and
/// signals as frames when `streamed`, else nothing but its hanging up.
async fn read_controls(
    mut r: BufReader<OwnedReadHalf>,
    streamed: bool,
    input: mpsc::Sender<Input>,
    ctl: mpsc::Sender<Ctl>,
) {
    if !streamed {
        let mut probe = [0u8; 64];
        while let Ok(n) = r.read(&mut probe).await {
            if n == 0 {
                break;
            }
        }
        let _ = ctl.send(Ctl::Gone).await;
        return;
    }
    loop {
        let frame = match read_frame(&mut r).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        match frame.kind {
            kind::STDIN => {
                // A closed input (the program exited) drops the bytes.
                let _ = input.send(Input::Data(frame.data)).await;
            }
            kind::STDIN_END => {
                let _ = input.send(Input::End).await;
            }
            kind::RESIZE => {
                if let Ok(size) = serde_json::from_slice::<PtySize>(&frame.data) {
                    let _ = ctl.send(Ctl::Resize(size.rows, size.cols)).await;
                }
            }
            kind::SIGNAL => {
                if let Ok(sig) = serde_json::from_slice::<i32>(&frame.data) {
                    if matches!(sig, 1 | 2 | 3 | 9 | 15 | 10 | 12 | 28) {
                        let _ = ctl.send(Ctl::Signal(sig)).await;
                    }
                }
            }
            _ => {}
        }
    }
    let _ = ctl.send(Ctl::Gone).await;
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    let r = r.as_mut()?;
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
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
