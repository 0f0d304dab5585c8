//! What `sandboxerd` (which forbids `unsafe` code) needs done between fork
//! and exec of a child and `std::process::Command` has no option for.
//! Everything here is async-signal-safe: `open`, `write`, `close`,
//! `setgroups`, `setgid`, `setuid` on data prepared before the fork.
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Before `cmd` runs: write `0` (the child itself) into each of
/// `cgroup_procs` (`cgroup.procs` files: it joins those cgroups), then, if
/// `user` is given, drop supplementary groups and become that gid and uid.
/// In that order because joining needs the parent's rights over the
/// cgroups, which the target user may lack. Use it instead of
/// `Command::uid`/`gid` (those run before any `pre_exec` hook).
pub fn join_cgroups_then_become(
    cmd: &mut Command,
    cgroup_procs: Vec<CString>,
    user: Option<(u32, u32)>,
) {
    // SAFETY: the hook only makes async-signal-safe calls on memory it
    // owns (the paths were made before the fork) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for f in &cgroup_procs {
                join(f)?;
            }
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Writes `0` into the `cgroup.procs` file `f`: the calling process joins
/// that cgroup. Async-signal-safe.
pub fn join(f: &CString) -> std::io::Result<()> {
    // SAFETY: `f` is a valid NUL-terminated path; the descriptor is ours
    // and closed on every path.
    unsafe {
        let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cgroup_fails_the_spawn_with_its_error() {
        let mut cmd = Command::new("true");
        let bad = CString::new("/nonexistent/cgroup.procs").expect("path");
        join_cgroups_then_become(&mut cmd, vec![bad], None);
        let err = cmd.status().expect_err("must not start");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }
}
