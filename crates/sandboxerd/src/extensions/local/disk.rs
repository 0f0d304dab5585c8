//! The `disk` limit of an ext.local sandbox: its directory on the host is
//! the mount point of a filesystem of its own, an ext4 image of exactly
//! that size (sparse: it takes on the host only what is written), mounted
//! through a loop device with `nosuid,nodev`. A write past it fails with
//! ENOSPC inside the sandbox and touches no one else's space; what is used
//! is one `statvfs`. Everything of the sandbox's that the daemon reads or
//! swaps (workspace, restore staging) is on it, so snapshots and restores
//! work unchanged, and a restore's staging counts against the limit.
//!
//! Mounting needs root, so an unprivileged daemon does not enforce `disk`
//! (`[local] disk = "auto"` says so at start; `"image"` makes ext.local
//! unavailable there instead). `mkfs` costs ~13 ms, so images are formatted
//! ahead of need: a create takes a spare of its size by renaming it and
//! only mounts it; a thread formats the next spare.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Spare images kept formatted per size.
const SPARES: usize = 2;

/// The images of one data dir.
#[derive(Debug)]
pub struct Disks {
    /// `<data_dir>/disks`: `<sandbox id>.img` and `spare/<bytes>-<n>.img`.
    dir: PathBuf,
    /// Sizes whose spares are being formatted now.
    refilling: Mutex<Vec<u64>>,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Formats `path` as an empty ext4 filesystem of `bytes`: no reserved
/// blocks (the sandbox gets all of it), no journal (a workspace outlives
/// no host crash its sandbox does not), lazily initialised.
fn format(path: &Path, bytes: u64) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    f.set_len(bytes)
        .map_err(|e| format!("sizing {}: {e}", tmp.display()))?;
    drop(f);
    let made = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
        .args(["-E", "nodiscard,lazy_itable_init=1,root_owner=0:0"])
        .arg(&tmp));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

impl Disks {
    /// Images under `<data_dir>/disks`, when this daemon can mount them
    /// (root, with `mkfs.ext4` and `mount`); else why not.
    pub fn new(data_dir: &Path) -> Result<Arc<Disks>, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("mounting a sandbox's disk image needs a root daemon".into());
        }
        for tool in ["mkfs.ext4"] {
            if super::bwrap::find_in_path(tool).is_none() {
                return Err(format!(
                    "`{tool}` is not on PATH (apt-get install e2fsprogs)"
                ));
            }
        }
        let dir = data_dir.join("disks");
        std::fs::create_dir_all(dir.join("spare"))
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        crate::extensions::fsutil::private_dir(&dir)
            .map_err(|e| format!("making {} private: {e}", dir.display()))?;
        probe(&dir)?;
        Ok(Arc::new(Disks {
            dir,
            refilling: Mutex::new(Vec::new()),
        }))
    }

    fn image(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join(format!("{sandbox_id}.img"))
    }

    fn spare(&self, bytes: u64, n: usize) -> PathBuf {
        self.dir.join("spare").join(format!("{bytes}-{n}.img"))
    }

    /// Mounts a fresh filesystem of `bytes` at `at` (an empty directory)
    /// for sandbox `sandbox_id`. A spare is taken when there is one.
    pub fn attach(self: &Arc<Self>, sandbox_id: &str, bytes: u64, at: &Path) -> Result<(), String> {
        let image = self.image(sandbox_id);
        let _ = self.detach(sandbox_id, at);
        let took = (0..SPARES).any(|n| std::fs::rename(self.spare(bytes, n), &image).is_ok());
        if !took {
            format(&image, bytes)?;
        }
        self.refill(bytes);
        if let Err(e) = mount(&image, at) {
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
        let _ = std::fs::remove_dir(at.join("lost+found"));
        Ok(())
    }

    /// Unmounts `at` (if sandbox `sandbox_id`'s image is mounted there)
    /// and removes the image. Nothing there is fine.
    pub fn detach(&self, sandbox_id: &str, at: &Path) -> Result<(), String> {
        if is_mount_point(at) {
            use nix::mount::{umount2, MntFlags};
            if let Err(e) = umount2(at, MntFlags::empty()) {
                // Busy (a host process inside it): detached now, freed
                // (with its loop device) when the last user goes.
                umount2(at, MntFlags::MNT_DETACH)
                    .map_err(|_| format!("unmounting {}: {e}", at.display()))?;
            }
        }
        match std::fs::remove_file(self.image(sandbox_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing the disk image: {e}")),
        }
    }

    /// Formats spares of `bytes` in the background until there are enough.
    fn refill(self: &Arc<Self>, bytes: u64) {
        {
            let mut busy = self.refilling.lock().unwrap_or_else(|p| p.into_inner());
            if busy.contains(&bytes) {
                return;
            }
            busy.push(bytes);
        }
        let me = self.clone();
        std::thread::spawn(move || {
            // After the create that took a spare is through (mkfs is ~13 ms
            // of CPU, which that create should not compete with).
            std::thread::sleep(std::time::Duration::from_millis(100));
            for n in 0..SPARES {
                let path = me.spare(bytes, n);
                if !path.exists() {
                    if let Err(e) = format(&path, bytes) {
                        tracing::warn!(error = %e, "formatting a spare disk image failed");
                        break;
                    }
                }
            }
            me.refilling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|b| *b != bytes);
        });
    }

    /// Removes the images of sandboxes for which `live(id)` is false (left
    /// by a daemon killed before its teardown). Answers how many.
    pub fn sweep(&self, live: impl Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".img") else {
                continue;
            };
            if id.starts_with("sbx_") && !live(id) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// Formats, mounts and unmounts a small image under `dir` once, so a host
/// without usable loop devices (a container, a kernel without the module)
/// is found at start, not at every create.
fn probe(dir: &Path) -> Result<(), String> {
    let image = dir.join("probe.img");
    let at = dir.join("probe.mnt");
    let _ = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&at);
    std::fs::create_dir(&at).map_err(|e| format!("creating {}: {e}", at.display()))?;
    let result = format(&image, 16 << 20).and_then(|()| {
        mount(&image, &at)?;
        nix::mount::umount2(&at, nix::mount::MntFlags::empty())
            .map_err(|e| format!("unmounting {}: {e}", at.display()))
    });
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_dir(&at);
    result.map_err(|e| format!("a loop-mounted disk image does not work here: {e}"))
}

/// Mounts the ext4 image `image` at `at`, `nosuid,nodev,noatime`, through
/// a loop device the kernel frees when it is unmounted.
fn mount(image: &Path, at: &Path) -> Result<(), String> {
    use nix::mount::MsFlags;
    let (device, _held) = sandboxer_sys::attach_loop(image)
        .map_err(|e| format!("a loop device for {}: {e}", image.display()))?;
    nix::mount::mount(
        Some(&device),
        at,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| format!("mounting {} at {}: {e}", device.display(), at.display()))
}

/// Bytes used on the filesystem mounted at `at` (`None` when `at` is no
/// mount point).
pub fn used_bytes(at: &Path) -> Option<u64> {
    if !is_mount_point(at) {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(at).ok()?;
    let frsize = st.fragment_size();
    Some(st.blocks().saturating_sub(st.blocks_free()) * frsize)
}

/// Whether the filesystem mounted at `at` is full for practical purposes:
/// less than 1% of it (at least 1 MiB) left for the sandbox (`false` when
/// `at` is no mount point).
pub fn is_full(at: &Path) -> bool {
    if !is_mount_point(at) {
        return false;
    }
    nix::sys::statvfs::statvfs(at).is_ok_and(|st| {
        let frsize = st.fragment_size();
        let left = st.blocks_available() * frsize;
        let size = st.blocks() * frsize;
        left < (size / 100).max(1 << 20)
    })
}

/// Whether `path` is where a filesystem is mounted (its device differs
/// from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    std::fs::symlink_metadata(parent).is_ok_and(|p| p.dev() != me.dev())
}
