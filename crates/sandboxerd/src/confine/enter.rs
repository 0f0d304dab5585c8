//! `sandboxerd enter`: run a command inside a running `ext.local` sandbox
//! with exactly the sandbox's privileges, never the caller's.
//!
//! `nsenter` keeps whatever its caller holds: run by root it gave the
//! entered command every capability inside the sandbox and no seccomp
//! filter, enough to reach the host's disk through `open_by_handle_at`.
//! This joins the sandbox's namespaces the same way, then becomes the
//! sandbox's own user (uid and gid 0 of its user namespace, an unprivileged
//! id on the host), drops every capability (bounding, ambient, permitted,
//! effective, inheritable), sets `no_new_privs`, loads the sandbox's seccomp
//! filter, takes the environment of the sandbox's first process (not the
//! caller's) and only then starts the command, inside the sandbox's pid
//! namespace. It waits for the command and exits with its status.
//!
//! It must run before any thread is started: joining a user namespace is
//! refused to a multi-threaded process.
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{setns, CloneFlags};
use nix::unistd::{chroot, fchdir, setgroups, setresgid, setresuid, Gid, Uid};

use crate::procfs;

/// What `sandboxerd enter` was asked.
#[derive(Debug, Clone)]
pub struct EnterArgs {
    /// Host pid of the sandbox's init (`reachability.pid`).
    pub pid: i32,
    /// Its start time in clock ticks since boot, so a reused pid is refused.
    pub start: Option<u64>,
    /// The sandbox's seccomp switches (its profile's `security.allow`).
    pub seccomp_allow: Vec<String>,
    /// The command and its arguments; a login shell when empty.
    pub argv: Vec<OsString>,
}

/// Why entering failed.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("no sandbox init with pid {0} (it ended, or the pid was reused)")]
    NoSandbox(i32),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Filter(#[from] super::seccomp::FilterError),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> EnterError {
    let what = what.into();
    move |e| EnterError::Sys {
        what,
        source: std::io::Error::from(e),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnterError {
    let what = what.into();
    move |source| EnterError::Sys { what, source }
}

/// Enter and run; answers the exit code to leave with.
pub fn run(args: &EnterArgs) -> Result<i32, EnterError> {
    let pid = args.pid;
    if !procfs::owns_pid(pid, args.start) || procfs::is_zombie(pid) {
        return Err(EnterError::NoSandbox(pid));
    }
    // Everything is opened before the first namespace is joined: after it,
    // the host's /proc is out of sight.
    let open_ns = |name: &str| {
        File::open(format!("/proc/{pid}/ns/{name}"))
            .map_err(io(format!("opening /proc/{pid}/ns/{name}")))
    };
    let user = open_ns("user")?;
    let others = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ]
    .into_iter()
    .filter(|(name, _)| !same_ns_as_self(pid, name))
    .map(|(name, flag)| open_ns(name).map(|f| (name, f, flag)))
    .collect::<Result<Vec<_>, _>>()?;
    let root =
        File::open(format!("/proc/{pid}/root")).map_err(io(format!("opening /proc/{pid}/root")))?;
    let env = sandbox_env(pid);
    let programs = super::seccomp::programs_allowing(&args.seccomp_allow)?;

    // Into the sandbox's cgroups first (its limits hold for what is entered
    // too), while this process still has the daemon's rights over them.
    let cgroups = super::cgroup::procs_files_of(pid).map_err(|e| EnterError::Sys {
        what: e,
        source: std::io::Error::other("cgroup"),
    })?;
    for f in &cgroups {
        let path = Path::new(std::ffi::OsStr::from_bytes(f.as_bytes()));
        std::fs::write(path, "0").map_err(io(format!("joining the cgroup {}", path.display())))?;
    }
    // Supplementary groups are host gids that the sandbox's user namespace
    // cannot drop later (setgroups is denied there): drop them while we
    // still may. Only root may; an unprivileged daemon's user keeps its own
    // (which is why its account must have none worth having).
    if nix::unistd::geteuid().is_root() {
        setgroups(&[]).map_err(sys("dropping supplementary groups"))?;
    }
    setns(&user, CloneFlags::CLONE_NEWUSER).map_err(sys("joining the user namespace"))?;
    for (name, file, flag) in &others {
        setns(file, *flag).map_err(sys(format!("joining the {name} namespace")))?;
    }
    // The sandbox's root is where bubblewrap pivoted to, not the root of
    // its mount namespace.
    fchdir(std::os::fd::AsRawFd::as_raw_fd(&root))
        .map_err(sys("changing to the sandbox's root"))?;
    chroot(".").map_err(sys("chroot into the sandbox's root"))?;
    if std::env::set_current_dir("/workspace").is_err() {
        std::env::set_current_dir("/").map_err(io("changing to /"))?;
    }
    // Uid and gid 0 of the sandbox's namespace: the host id it maps to.
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(sys("becoming the sandbox's group"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(sys("becoming the sandbox's user"))?;
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    super::seccomp::apply(&programs)?;

    let (program, rest) = match args.argv.split_first() {
        Some((p, rest)) => (p.clone(), rest.to_vec()),
        None => (OsString::from("/bin/sh"), Vec::new()),
    };
    // The child is the first process born into the sandbox's pid namespace.
    let status = Command::new(&program)
        .args(rest)
        .env_clear()
        .envs(env)
        .status()
        .map_err(io(format!("starting {}", Path::new(&program).display())))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Every capability set emptied. The bounding set goes first (it needs
/// `CAP_SETPCAP`), so no later `execve` as uid 0 can grant one back.
fn drop_capabilities() -> Result<(), EnterError> {
    use caps::CapSet;
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: caps::errors::CapsError| EnterError::Sys {
            what,
            source: std::io::Error::other(e.to_string()),
        }
    };
    caps::clear(None, CapSet::Bounding).map_err(err("clearing the bounding set"))?;
    caps::clear(None, CapSet::Ambient).map_err(err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clearing the inheritable set"))?;
    caps::clear(None, CapSet::Effective).map_err(err("clearing the effective set"))?;
    caps::clear(None, CapSet::Permitted).map_err(err("clearing the permitted set"))?;
    Ok(())
}

/// Whether `pid` shares our namespace `name` (then it is not joined: a
/// sandbox without its own cgroup namespace, say).
fn same_ns_as_self(pid: i32, name: &str) -> bool {
    match (
        std::fs::read_link(format!("/proc/{pid}/ns/{name}")),
        std::fs::read_link(format!("/proc/self/ns/{name}")),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The environment of the sandbox's first process (bubblewrap's child of
/// the init): the profile's env, `SANDBOX_ID` and the secrets, exactly as
/// the sandbox has them. Falls back to a bare `PATH` and `HOME`.
fn sandbox_env(init: i32) -> Vec<(OsString, OsString)> {
    use std::os::unix::ffi::OsStringExt;
    let first = procfs::children(init).into_iter().next();
    let raw = first
        .and_then(|child| std::fs::read(format!("/proc/{child}/environ")).ok())
        .unwrap_or_default();
    let mut env: Vec<(OsString, OsString)> = raw
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from_vec(kv[..eq].to_vec()),
                OsString::from_vec(kv[eq + 1..].to_vec()),
            ))
        })
        .collect();
    if env.is_empty() {
        env = vec![
            (
                "PATH".into(),
                "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
            ),
            ("HOME".into(), "/workspace".into()),
        ];
    }
    env
}
