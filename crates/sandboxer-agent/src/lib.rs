//! The in-sandbox agent (see `docs/access.md`).
//!
//! bubblewrap starts it as the sandbox's command (its own reaper is pid 1,
//! the agent pid 2; when the agent ends, so does the sandbox). It inherits
//! a listening Unix socket as a descriptor: the daemon made the socket on
//! the host, outside anything the sandbox can see, so code in the sandbox
//! can neither replace it nor see its path. Every process the agent starts
//! and every file it touches is the sandbox's: same user namespace, no
//! capabilities, `no_new_privs`, the seccomp filter, the sandbox's mount
//! namespace (so a path, a symlink or `..` can only resolve to what the
//! sandbox itself sees). The agent trusts nothing it is sent beyond that.
//!
//! [`proto`] is the wire; [`client`] is the daemon's side of it.

pub mod client;
pub mod egress;
mod exec;
mod files;
mod logstore;
pub mod ports;
mod procs;
pub mod proto;
pub mod splice;

use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::BufReader;
use tokio::net::UnixStream;

use proto::{read_line, write_line, AgentError, Reply, Request};
pub(crate) use proto::{reply_err, reply_ok};

/// How the agent was started (its command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// The inherited listening socket.
    pub listen_fd: i32,
    /// Instead of `listen_fd`: bind a socket at this path (a backend that
    /// cannot hand a descriptor over, such as a container's). Made 0600.
    pub listen_path: Option<PathBuf>,
    /// Where background processes' output is spilled (inside the sandbox).
    pub log_dir: PathBuf,
    /// Bytes of output kept per background process (older output is dropped).
    pub max_log_bytes: u64,
    /// Background processes kept (running and exited); the oldest exited go first.
    pub max_processes: usize,
    /// `network: {mode: egress}`: the daemon's proxy socket (inside the
    /// sandbox) and the loopback port relayed to it.
    pub egress: Option<(PathBuf, u16)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen_fd: 3,
            listen_path: None,
            log_dir: PathBuf::from("/run/sandboxer/logs"),
            max_log_bytes: 64 << 20,
            max_processes: 256,
            egress: None,
        }
    }
}

const USAGE: &str = "usage: sandboxer-agent [--listen-fd N | --listen PATH] [--log-dir DIR] [--max-log-bytes N] [--max-processes N] [--egress-socket PATH --egress-port N]";

impl Options {
    /// Parses the agent's arguments (after the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut o = Options::default();
        let mut it = args.into_iter();
        let (mut egress_socket, mut egress_port) = (None, None);
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
            };
            let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
            match flag.as_str() {
                "--listen-fd" => o.listen_fd = number(value()?)? as i32,
                "--listen" => o.listen_path = Some(PathBuf::from(value()?)),
                "--log-dir" => o.log_dir = PathBuf::from(value()?),
                "--max-log-bytes" => o.max_log_bytes = number(value()?)?.max(4096),
                "--max-processes" => o.max_processes = number(value()?)?.max(1) as usize,
                "--egress-socket" => egress_socket = Some(PathBuf::from(value()?)),
                "--egress-port" => match u16::try_from(number(value()?)?) {
                    Ok(p) if p > 0 => egress_port = Some(p),
                    _ => return Err(format!("{flag}: not a port from 1 to 65535")),
                },
                _ => return Err(format!("unknown argument {flag}; {USAGE}")),
            }
        }
        o.egress = match (egress_socket, egress_port) {
            (Some(s), Some(p)) => Some((s, p)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "--egress-socket and --egress-port go together; {USAGE}"
                ))
            }
        };
        Ok(o)
    }
}

/// What every connection shares.
pub(crate) struct Agent {
    pub opts: Options,
    pub procs: procs::Table,
}

/// A listening socket at `path` (whatever was there removed first), 0600
/// where the filesystem allows.
/// The standard library's sockets are close-on-exec.
fn bind_path(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    // gVisor refuses a mode change of a socket made on the host; the
    // directory (0700) is what keeps everyone else out, so that is kept.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

/// The agent's `main`: serves until the socket fails. Returns the exit code.
pub fn run(opts: Options) -> i32 {
    // Not dumpable: code in the sandbox (same uid, no capabilities) cannot
    // ptrace the agent, read its memory or take its descriptors.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    let fd = opts.listen_fd;
    let std_listener = match &opts.listen_path {
        Some(path) => match bind_path(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sandboxer-agent: {}: {e}", path.display());
                return 2;
            }
        },
        None => {
            // The descriptor came without close-on-exec: nothing started
            // here may inherit it.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                eprintln!(
                    "sandboxer-agent: descriptor {fd} is not open: {}",
                    std::io::Error::last_os_error()
                );
                return 2;
            }
            unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) }
        }
    };
    if let Err(e) = std_listener.set_nonblocking(true) {
        eprintln!("sandboxer-agent: descriptor {fd}: {e}");
        return 2;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(64)
        // One blocking thread is made at start (below) and kept: when code
        // in the sandbox holds every pid of its `pids` limit, tokio queues
        // file work on it instead of panicking for want of a thread.
        .thread_keep_alive(std::time::Duration::from_secs(7 * 24 * 3600))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxer-agent: no runtime: {e}");
            return 2;
        }
    };
    rt.block_on(async move {
        let _ = tokio::task::spawn_blocking(|| ()).await;
        let listener = match tokio::net::UnixListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sandboxer-agent: descriptor {fd} is not a listening socket: {e}");
                return 2;
            }
        };
        if let Some((socket, port)) = opts.egress.clone() {
            // Bound before the first request is served, so before any code
            // of the sandbox runs: nothing there can take the port first.
            match egress::bind(port).await {
                Ok(l) => {
                    tokio::spawn(egress::serve(l, socket));
                }
                Err(e) => {
                    eprintln!("sandboxer-agent: egress relay on 127.0.0.1:{port}: {e}");
                    return 2;
                }
            }
        }
        let agent = Arc::new(Agent {
            procs: procs::Table::new(opts.max_processes),
            opts,
        });
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move { serve(agent, conn).await });
                }
                Err(e) if is_transient(&e) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => {
                    eprintln!("sandboxer-agent: accept: {e}");
                    return 1;
                }
            }
        }
    })
}

pub(crate) fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}

/// Reads the request of one connection and answers it.
async fn serve(agent: Arc<Agent>, conn: UnixStream) {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    let req: Request = match read_line(&mut r).await {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(e) => {
            let _ = write_line(
                &mut w,
                &Reply::Err(AgentError::new("bad_request", e.to_string())),
            )
            .await;
            return;
        }
    };
    let result = match req {
        Request::Ping => {
            let hello = proto::Hello {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id() as i32,
                processes: agent.procs.len(),
            };
            reply_ok(&mut w, &hello).await
        }
        Request::Exec(x) => exec::exec(x, r, w).await,
        Request::Spawn(s) => procs::spawn(&agent, s, &mut w).await,
        Request::Processes => reply_ok(&mut w, &agent.procs.list()).await,
        Request::Process { id } => match agent.procs.info(&id) {
            Some(info) => reply_ok(&mut w, &info).await,
            None => reply_err(&mut w, procs::not_found(&id)).await,
        },
        Request::Logs { id, offset, follow } => {
            procs::logs(&agent, &id, offset, follow, r, w).await
        }
        Request::Signal { id, signal } => match agent.procs.signal(&id, signal) {
            Ok(info) => reply_ok(&mut w, &info).await,
            Err(e) => reply_err(&mut w, e).await,
        },
        Request::Read { path } => files::read(&path, w).await,
        Request::Write {
            path,
            mode,
            max_bytes,
        } => files::write(&path, mode, max_bytes, r, w).await,
        Request::Delete { path, recursive } => files::delete(&path, recursive, &mut w).await,
        Request::List {
            path,
            depth,
            max_entries,
        } => files::list(&path, depth, max_entries, &mut w).await,
        Request::Upload { path, max_bytes } => files::upload(&path, max_bytes, r, w).await,
        Request::Download { path } => files::download(&path, w).await,
        Request::Ports => reply_ok(&mut w, &ports::list()).await,
        Request::Connect { port } => ports::connect(port, r, w).await,
    };
    // A connection that broke is the daemon's business; nothing to tell.
    let _ = result;
}

/// Now, RFC 3339 with milliseconds.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
