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

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (Linux 5.8 and later).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// How often [`attach_loop`] asks for a free device before giving up.
const ATTACH_TRIES: u32 = 32;

/// Binds the image file `image` to a free loop device, which the kernel
/// releases by itself once it is unmounted and this descriptor is closed
/// (`LO_FLAGS_AUTOCLEAR`). Answers the device's path and an open descriptor
/// of it (keep it until the filesystem is mounted). Without the forks of
/// `losetup` and `mount`, this and a `mount(2)` take about a millisecond.
pub fn attach_loop(
    image: &std::path::Path,
) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::fd::AsRawFd;
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Concurrent attaches of this process would all be handed the same free
    // device and all but one fail: they take turns (about 1 ms each).
    // Another process may still take the device between GET_FREE and
    // CONFIGURE (EBUSY): ask again, a little later each time.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..ATTACH_TRIES {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(attempt as u64));
        }
        // SAFETY: an ioctl without an argument on a descriptor we own.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        // SAFETY: all-zero is a valid `loop_config` (plain integers and arrays).
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads one `loop_config`, which lives
        // across the call.
        let r = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        };
        if r == 0 {
            return Ok((path, dev));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Err(std::io::Error::other(format!(
        "no free loop device after {ATTACH_TRIES} tries (other processes kept taking them)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn a_missing_cgroup_fails_the_spawn_with_its_error() {
        let mut cmd = Command::new("true");
        let bad = CString::new("/nonexistent/cgroup.procs").expect("path");
        join_cgroups_then_become(&mut cmd, vec![bad], None);
        let err = cmd.status().expect_err("must not start");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }
}
