//! Background processes: started by `spawn`, watched by the agent (which
//! outlives the daemon), their output kept in a [`LogStore`].

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sandboxer_api::{ExecExit, ProcessInfo, ProcessList, ProcessState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::exec::{command, exit_of, spawn_error, CHUNK};
use crate::logstore::LogStore;
use crate::proto::{kind, write_frame, AgentError, Spawn};
use crate::{reply_err, reply_ok, Agent};

struct Proc {
    info: ProcessInfo,
    log: LogStore,
    exit: Option<ExecExit>,
    started: Instant,
    /// Bumped on every write and at the end, for followers.
    changed: watch::Sender<u64>,
}

/// Every background process the agent knows, in start order.
pub(crate) struct Table {
    max: usize,
    procs: Mutex<BTreeMap<String, Arc<Mutex<Proc>>>>,
}

pub(crate) fn not_found(id: &str) -> AgentError {
    AgentError::new(
        "process_not_found",
        format!("no process {id} in this sandbox"),
    )
}

impl Table {
    pub fn new(max: usize) -> Self {
        Table {
            max,
            procs: Mutex::new(BTreeMap::new()),
        }
    }

    fn all(&self) -> Vec<Arc<Mutex<Proc>>> {
        self.procs
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn get(&self, id: &str) -> Option<Arc<Mutex<Proc>>> {
        self.procs.lock().ok()?.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.procs.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn list(&self) -> ProcessList {
        ProcessList {
            items: self
                .all()
                .iter()
                .filter_map(|p| p.lock().ok().map(|p| p.info.clone()))
                .collect(),
        }
    }

    pub fn info(&self, id: &str) -> Option<ProcessInfo> {
        let p = self.get(id)?;
        let p = p.lock().ok()?;
        Some(p.info.clone())
    }

    /// Signals the process's group (its tree, unless something left it).
    pub fn signal(&self, id: &str, signal: i32) -> Result<ProcessInfo, AgentError> {
        let p = self.get(id).ok_or_else(|| not_found(id))?;
        let p = p.lock().map_err(|_| not_found(id))?;
        if p.info.state == ProcessState::Running {
            if signal == libc::SIGKILL {
                crate::exec::kill_tree(p.info.pid);
            } else {
                unsafe {
                    libc::kill(-p.info.pid, signal);
                }
            }
        }
        Ok(p.info.clone())
    }

    /// Makes room for one more: drops the oldest exited processes (and
    /// their logs); refuses when every kept one still runs.
    fn make_room(&self) -> Result<(), AgentError> {
        let mut m = self
            .procs
            .lock()
            .map_err(|_| AgentError::new("agent_error", "process table poisoned"))?;
        while m.len() >= self.max {
            let oldest_exited = m
                .iter()
                .find(|(_, p)| {
                    p.lock()
                        .map(|p| p.info.state == ProcessState::Exited)
                        .unwrap_or(true)
                })
                .map(|(id, _)| id.clone());
            match oldest_exited {
                Some(id) => {
                    if let Some(p) = m.remove(&id) {
                        if let Ok(mut p) = p.lock() {
                            p.log.remove();
                        }
                    }
                }
                None => {
                    return Err(AgentError::new(
                        "too_many_processes",
                        format!(
                        "{} background processes are running in this sandbox, the most it keeps",
                        m.len()
                    ),
                    ))
                }
            }
        }
        Ok(())
    }
}

pub(crate) async fn spawn(
    agent: &Arc<Agent>,
    s: Spawn,
    w: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    if let Err(e) = agent.procs.make_room() {
        return reply_err(w, e).await;
    }
    let mut cmd = match command(&s.argv, s.cwd.as_deref(), &s.env) {
        Ok(c) => c,
        Err(e) => return reply_err(w, e).await,
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ = std::fs::create_dir_all(&agent.opts.log_dir);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return reply_err(w, spawn_error(&s.argv[0], &e)).await,
    };
    let id = format!("proc_{}", ulid::Ulid::new());
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let info = ProcessInfo {
        id: id.clone(),
        pid,
        cmd: s.argv.clone(),
        tag: s.tag,
        state: ProcessState::Running,
        exit_code: None,
        signal: None,
        started_at: crate::now_rfc3339(),
        ended_at: None,
        output_bytes: 0,
    };
    let (changed, _) = watch::channel(0u64);
    let proc = Arc::new(Mutex::new(Proc {
        info: info.clone(),
        log: LogStore::new(&agent.opts.log_dir, &id, agent.opts.max_log_bytes),
        exit: None,
        started: Instant::now(),
        changed,
    }));
    if let Ok(mut m) = agent.procs.procs.lock() {
        m.insert(id.clone(), proc.clone());
    }
    let out = child.stdout.take();
    let err = child.stderr.take();
    tokio::spawn(async move {
        let pumps = async {
            tokio::join!(
                pump(out, kind::STDOUT, &proc),
                pump(err, kind::STDERR, &proc)
            );
        };
        let (status, ()) = tokio::join!(child.wait(), pumps);
        let Ok(mut p) = proc.lock() else { return };
        let (exit_code, signal) = match status {
            Ok(s) => exit_of(s),
            Err(_) => (None, None),
        };
        p.info.state = ProcessState::Exited;
        p.info.exit_code = exit_code;
        p.info.signal = signal.clone();
        p.info.ended_at = Some(crate::now_rfc3339());
        p.exit = Some(ExecExit {
            exit_code,
            signal,
            timed_out: false,
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: p.started.elapsed().as_millis() as u64,
            // The daemon, which sees the sandbox's cgroup, fills this in.
            oom_killed: false,
        });
        p.changed.send_modify(|v| *v += 1);
    });
    reply_ok(w, &info).await
}

/// Copies one pipe into the log until it closes.
async fn pump<R: AsyncRead + Unpin>(r: Option<R>, stream: u8, proc: &Arc<Mutex<Proc>>) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(mut p) = proc.lock() else { return };
        p.log.append(stream, &buf[..n]);
        p.info.output_bytes = p.log.total();
        p.changed.send_modify(|v| *v += 1);
    }
}

/// `logs`: the info, then output from `offset`; with `follow`, until the
/// process has ended and all of it is sent, then `exit`.
pub(crate) async fn logs(
    agent: &Arc<Agent>,
    id: &str,
    offset: u64,
    follow: bool,
    mut r: BufReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let Some(proc) = agent.procs.get(id) else {
        return reply_err(&mut w, not_found(id)).await;
    };
    let (info, mut changes, from) = {
        let Ok(p) = proc.lock() else {
            return reply_err(&mut w, not_found(id)).await;
        };
        (
            p.info.clone(),
            p.changed.subscribe(),
            offset.max(p.log.base()),
        )
    };
    reply_ok(&mut w, &serde_json::json!({ "info": info, "from": from })).await?;
    let mut at = from;
    let mut probe = [0u8; 1];
    loop {
        // Take what is there under the lock, send it without.
        let (parts, next, exit) = {
            let Ok(p) = proc.lock() else { return Ok(()) };
            let (start, parts) = p.log.read(at, CHUNK * 4);
            let n: u64 = parts.iter().map(|(_, b)| b.len() as u64).sum();
            // Bytes lost to a full disk are skipped, not waited for.
            let next = if n == 0 && start < p.log.total() {
                p.log.total().min(start + (CHUNK * 4) as u64)
            } else {
                start + n
            };
            let done = next >= p.log.total();
            (parts, next, if done { p.exit.clone() } else { None })
        };
        for (stream, bytes) in &parts {
            for chunk in bytes.chunks(CHUNK) {
                write_frame(&mut w, *stream, chunk).await?;
            }
        }
        let caught_up = next == at;
        at = next;
        if let Some(exit) = exit {
            let json = serde_json::to_vec(&exit).map_err(std::io::Error::other)?;
            write_frame(&mut w, kind::EXIT, &json).await?;
            return w.shutdown().await;
        }
        if !caught_up {
            continue;
        }
        if !follow {
            return w.shutdown().await;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return w.shutdown().await;
                }
            }
            gone = r.read(&mut probe) => {
                if matches!(gone, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}
