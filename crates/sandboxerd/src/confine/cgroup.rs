//! Resource limits of `ext.local` sandboxes through cgroups: a cgroup per
//! sandbox holding its init and everything under it (the agent, every exec
//! and process, commands joined by `sandboxerd enter`), with `cpus` as a CFS
//! quota, `memory` as a hard limit with no swap, and `pids`.
//!
//! Where the host mounts cgroup v1 controllers (`memory`, `pids`, `cpu`,
//! `cpuacct`) the sandbox gets a directory in each; on a pure cgroup v2
//! host, one directory in the unified tree with those controllers enabled.
//! The sandboxes' parent is `[local] cgroup_parent` (a path inside each
//! hierarchy), by default `sandboxer` under the daemon's own cgroup: under
//! the shipped systemd unit (`Delegate=yes`) that is the subtree systemd
//! hands the daemon, so an unprivileged daemon can write it. On v2 the
//! daemon first moves itself into a `daemon` leaf of its own cgroup, since
//! a cgroup that hands controllers to its children may hold no process.
//!
//! A process joins before it runs anything of the sandbox's: bubblewrap
//! writes itself into `cgroup.procs` between fork and exec
//! (`sandboxer_sys::join_cgroups_then_become`), and `enter` does the same for the
//! command it starts.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sandboxer_api::Usage;

/// The controllers a sandbox's limits and usage need.
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];
/// The v1 freezer, used when mounted (cgroup v2 has `cgroup.freeze` in
/// every cgroup).
const FREEZER: &str = "freezer";
/// Their cgroup v2 names (`cpuacct` is part of `cpu` there).
const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The CFS period the quota of `cpus` is a share of.
const CPU_PERIOD_US: u64 = 100_000;

/// What a sandbox may use; `None` leaves it unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// Where this host keeps cgroups and where the sandboxes' go.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// One parent directory per v1 controller (`cpu` and `cpuacct` may be
    /// one directory when the host mounts them together).
    V1(BTreeMap<&'static str, PathBuf>),
    /// The parent directory in the unified tree.
    V2(PathBuf),
}

/// One sandbox's cgroup directories.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    v2: bool,
    /// controller → directory (v1); `""` → the one directory (v2).
    dirs: BTreeMap<&'static str, PathBuf>,
}

/// Counters of limits that were hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    /// Processes killed for going over `memory`.
    pub oom_kills: u64,
    /// Forks refused at `pids`.
    pub pids_refused: u64,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl Cgroups {
    /// Finds the controllers from this process's mounts and cgroups, and
    /// makes (or checks) the sandboxes' parent: `parent` when given (an
    /// absolute path inside each hierarchy), else `sandboxer` under this
    /// process's own cgroup. Fails, saying what is missing, when a
    /// controller is not mounted or the parent cannot be written.
    pub fn detect(parent: Option<&str>) -> Result<Cgroups, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading /proc/self/mountinfo".into()))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err("reading /proc/self/cgroup".into()))?;
        let mounts = cgroup_mounts(&mountinfo);
        let mut v1_mounts: BTreeMap<&'static str, PathBuf> = BTreeMap::new();
        let mut v2_mount: Option<PathBuf> = None;
        for m in &mounts {
            match &m.controllers {
                None => {
                    v2_mount.get_or_insert_with(|| m.mountpoint.clone());
                }
                Some(opts) => {
                    for c in V1_CONTROLLERS.iter().chain([&FREEZER]) {
                        if opts.iter().any(|o| o == c) {
                            v1_mounts.entry(c).or_insert_with(|| m.mountpoint.clone());
                        }
                    }
                }
            }
        }
        // This process's path in each hierarchy.
        let mut own_v1: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut own_v2 = None;
        for (names, path) in membership(&own) {
            if names.is_empty() {
                own_v2 = Some(path.to_owned());
            }
            for c in V1_CONTROLLERS.iter().chain([&FREEZER]) {
                if names.split(',').any(|n| n == *c) {
                    own_v1.insert(c, path.to_owned());
                }
            }
        }
        if !v1_mounts.is_empty() {
            let missing: Vec<&str> = V1_CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !v1_mounts.contains_key(c))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "cgroup v1 controllers not mounted: {}",
                    missing.join(", ")
                ));
            }
            let mut parents = BTreeMap::new();
            for c in V1_CONTROLLERS {
                let base = relative(parent, own_v1.get(c).map(String::as_str));
                let dir = v1_mounts[c].join(base);
                make_parent(&dir)?;
                parents.insert(c, dir);
            }
            // The freezer (for pause) where it is mounted and ours to use;
            // without it, pause falls back to signals.
            if let Some(mount) = v1_mounts.get(FREEZER) {
                let base = relative(parent, own_v1.get(FREEZER).map(String::as_str));
                let dir = mount.join(base);
                if make_parent(&dir).is_ok() {
                    parents.insert(FREEZER, dir);
                }
            }
            return Ok(Cgroups::V1(parents));
        }
        let Some(mount) = v2_mount else {
            return Err("no cgroup filesystem is mounted".into());
        };
        let own = own_v2.unwrap_or_else(|| "/".into());
        let own_dir = mount.join(own.trim_start_matches('/'));
        let enable = V2_CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        let dir = match parent {
            Some(p) => mount.join(p.trim_start_matches('/')),
            None => {
                // A delegated cgroup may not both hold processes and hand
                // controllers down: this process moves into a leaf first,
                // then its own cgroup hands the controllers to its children.
                if own != "/" {
                    let leaf = own_dir.join("daemon");
                    make_parent(&leaf)?;
                    write(&leaf.join("cgroup.procs"), "0")?;
                    write(&own_dir.join("cgroup.subtree_control"), &enable)?;
                }
                own_dir.join("sandboxer")
            }
        };
        make_parent(&dir)?;
        // The parent must have them to hand down to each sandbox's cgroup.
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).map_err(io_err(
            format!("reading {}/cgroup.controllers", dir.display()),
        ))?;
        let missing: Vec<&str> = V2_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !available.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "cgroup v2 controllers not delegated to {}: {} (enable them in its parent's cgroup.subtree_control; under systemd, `Delegate=yes`)",
                dir.display(),
                missing.join(", ")
            ));
        }
        write(&dir.join("cgroup.subtree_control"), &enable)?;
        Ok(Cgroups::V2(dir))
    }

    /// `v1` or `v2`, for messages.
    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V1(_) => "v1",
            Cgroups::V2(_) => "v2",
        }
    }

    /// Sandbox `id`'s cgroup (which may not exist).
    pub fn of(&self, id: &str) -> SandboxCgroup {
        match self {
            Cgroups::V1(parents) => SandboxCgroup {
                v2: false,
                dirs: parents.iter().map(|(c, p)| (*c, p.join(id))).collect(),
            },
            Cgroups::V2(parent) => SandboxCgroup {
                v2: true,
                dirs: BTreeMap::from([("", parent.join(id))]),
            },
        }
    }

    /// Removes the sandbox cgroups under the parent that hold no process,
    /// are older than `min_age` and for which `keep(id)` is false: what a
    /// daemon killed before its teardown left behind. A cgroup with a
    /// process in it is never removed (the kernel refuses), and the age
    /// spares one another daemon sharing the parent has just made.
    /// Answers how many were removed.
    pub fn sweep(&self, min_age: std::time::Duration, keep: impl Fn(&str) -> bool) -> usize {
        let parents: Vec<&PathBuf> = match self {
            Cgroups::V1(p) => p.values().collect(),
            Cgroups::V2(p) => vec![p],
        };
        let mut removed = 0;
        for parent in parents {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("sbx_") || keep(&name) {
                    continue;
                }
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= min_age);
                if old && std::fs::remove_dir(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Makes sandbox `id`'s cgroup with `limits` (again, if it was left).
    pub fn create(&self, id: &str, limits: Limits) -> Result<SandboxCgroup, String> {
        let cg = self.of(id);
        for dir in cg.dirs.values() {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("making {}: {e}", dir.display())),
            }
        }
        cg.apply(limits)?;
        Ok(cg)
    }
}

impl SandboxCgroup {
    fn dir(&self, controller: &'static str) -> &Path {
        let key = if self.v2 { "" } else { controller };
        self.dirs
            .get(key)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/nonexistent"))
    }

    fn apply(&self, limits: Limits) -> Result<(), String> {
        let memory = limits
            .memory_bytes
            .map_or_else(|| "max".to_owned(), |m| m.to_string());
        let pids = limits
            .pids
            .map_or_else(|| "max".to_owned(), |p| p.to_string());
        let quota = limits
            .cpus
            .map(|c| ((c * CPU_PERIOD_US as f64).round() as u64).max(1000));
        if self.v2 {
            let dir = self.dir("memory");
            write(&dir.join("memory.max"), &memory)?;
            // No swap: over the limit means reclaim, then the OOM killer.
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            write(&dir.join("pids.max"), &pids)?;
            let cpu = match quota {
                Some(q) => format!("{q} {CPU_PERIOD_US}"),
                None => format!("max {CPU_PERIOD_US}"),
            };
            write(&dir.join("cpu.max"), &cpu)?;
            return Ok(());
        }
        let mem = self.dir("memory");
        let limit = if memory == "max" { "-1" } else { &memory };
        // memsw (memory + swap) is at least the memory limit: lower it
        // after raising, raise it before lowering.
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        let _ = write(&memsw, "-1");
        write(&mem.join("memory.limit_in_bytes"), limit)?;
        if memsw.exists() {
            write(&memsw, limit)?;
        }
        write(&self.dir("pids").join("pids.max"), &pids)?;
        let cpu = self.dir("cpu");
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        let quota = quota.map_or_else(|| "-1".to_owned(), |q| q.to_string());
        write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        Ok(())
    }

    /// Whether it exists.
    pub fn exists(&self) -> bool {
        self.dirs.values().any(|d| d.is_dir())
    }

    /// The `cgroup.procs` files a process writes `0` into to join, as C
    /// strings made before a fork.
    pub fn procs_files(&self) -> Vec<CString> {
        let mut seen = Vec::new();
        for dir in self.dirs.values() {
            let f = dir.join("cgroup.procs");
            if !seen.contains(&f) {
                seen.push(f);
            }
        }
        seen.into_iter()
            .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Live usage.
    pub fn usage(&self) -> Usage {
        let hits = self.hits();
        if self.v2 {
            let dir = self.dir("memory");
            let current = read_u64(&dir.join("memory.current")).unwrap_or(0);
            let usec = keyed(&dir.join("cpu.stat"), "usage_usec").unwrap_or(0);
            return Usage {
                cpu_seconds: usec as f64 / 1e6,
                memory_bytes: current,
                memory_peak_bytes: read_u64(&dir.join("memory.peak"))
                    .unwrap_or(current)
                    .max(current),
                pids: read_u64(&dir.join("pids.current")).unwrap_or(0),
                disk_bytes: 0,
                oom_kills: hits.oom_kills,
                pids_refused: hits.pids_refused,
            };
        }
        let mem = self.dir("memory");
        let current = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
        let ns = read_u64(&self.dir("cpuacct").join("cpuacct.usage")).unwrap_or(0);
        Usage {
            cpu_seconds: ns as f64 / 1e9,
            memory_bytes: current,
            memory_peak_bytes: read_u64(&mem.join("memory.max_usage_in_bytes"))
                .unwrap_or(current)
                .max(current),
            pids: read_u64(&self.dir("pids").join("pids.current")).unwrap_or(0),
            disk_bytes: 0,
            oom_kills: hits.oom_kills,
            pids_refused: hits.pids_refused,
        }
    }

    /// The OOM kills and refused forks so far.
    pub fn hits(&self) -> Hits {
        let oom_file = if self.v2 {
            self.dir("memory").join("memory.events")
        } else {
            self.dir("memory").join("memory.oom_control")
        };
        Hits {
            oom_kills: keyed(&oom_file, "oom_kill").unwrap_or(0),
            pids_refused: keyed(&self.dir("pids").join("pids.events"), "max").unwrap_or(0),
        }
    }

    /// The host pids in it now.
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for dir in self.dirs.values() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// SIGKILLs everything in it (v2: `cgroup.kill`, where the kernel has it).
    pub fn kill_all(&self) {
        if self.v2 {
            let kill = self.dir("pids").join("cgroup.kill");
            if kill.exists() && write(&kill, "1").is_ok() {
                return;
            }
        }
        for pid in self.pids() {
            if pid > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Removes it; fails (EBUSY) while a process is still in it. Removing
    /// what is already gone succeeds.
    /// Freezes (`true`) or thaws every process in it with the kernel's
    /// freezer (v2 `cgroup.freeze`, v1 `freezer.state`), and for a freeze
    /// waits until every one is frozen (at most `wait`). `Ok(false)`: there
    /// is no freezer here.
    pub fn freeze(&self, frozen: bool, wait: std::time::Duration) -> Result<bool, String> {
        let (file, value, done): (PathBuf, &str, fn(&str) -> bool) = if self.v2 {
            let dir = self.dir("");
            (
                dir.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                |events| events.lines().any(|l| l.trim() == "frozen 1"),
            )
        } else {
            match self.dirs.get(FREEZER) {
                Some(dir) => (
                    dir.join("freezer.state"),
                    if frozen { "FROZEN" } else { "THAWED" },
                    |state| state.trim() == "FROZEN",
                ),
                None => return Ok(false),
            }
        };
        if !file.exists() {
            return Ok(false);
        }
        write(&file, value)?;
        if !frozen {
            return Ok(true);
        }
        let watch = if self.v2 {
            self.dir("").join("cgroup.events")
        } else {
            file.clone()
        };
        let deadline = std::time::Instant::now() + wait;
        loop {
            let now = std::fs::read_to_string(&watch).unwrap_or_default();
            if done(&now) {
                return Ok(true);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{} did not report frozen within {wait:?}",
                    watch.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Whether the kernel's freezer holds it frozen (`None`: no freezer).
    pub fn is_frozen(&self) -> Option<bool> {
        if self.v2 {
            let events = std::fs::read_to_string(self.dir("").join("cgroup.freeze")).ok()?;
            return Some(events.trim() == "1");
        }
        let state = std::fs::read_to_string(self.dirs.get(FREEZER)?.join("freezer.state")).ok()?;
        Some(state.trim() != "THAWED")
    }

    pub fn remove(&self) -> Result<(), String> {
        for dir in self.dirs.values() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", dir.display())),
            }
        }
        Ok(())
    }
}

/// The cgroup `procs` files of the process `pid` is in (for `enter`, which
/// puts the command it starts where the sandbox's init is): each v1
/// hierarchy's and the v2 one's, under the mounts this process sees.
pub fn procs_files_of(pid: i32) -> Result<Vec<CString>, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(io_err(format!("reading /proc/{pid}/cgroup")))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading /proc/self/mountinfo".into()))?;
    let mounts = cgroup_mounts(&mountinfo);
    let mut out = Vec::new();
    for (names, path) in membership(&text) {
        // Only the hierarchies that carry limits (not `name=systemd` & co).
        let wanted = names.is_empty() || names.split(',').any(|n| V1_CONTROLLERS.contains(&n));
        if !wanted || path == "/" {
            continue;
        }
        // The mount of that hierarchy: v2 for no names, else the v1 mount
        // carrying every controller named.
        let mount = mounts.iter().find(|m| match &m.controllers {
            None => names.is_empty(),
            Some(opts) => {
                !names.is_empty() && names.split(',').all(|n| opts.iter().any(|o| o == n))
            }
        });
        let Some(mount) = mount else {
            continue;
        };
        let file = mount
            .mountpoint
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs");
        if let Ok(c) = CString::new(file.as_os_str().as_bytes()) {
            out.push(c);
        }
    }
    Ok(out)
}

/// A cgroup filesystem mounted here.
struct CgroupMount {
    mountpoint: PathBuf,
    /// The v1 mount's options (its controllers among them); `None` for v2.
    controllers: Option<Vec<String>>,
}

/// The cgroup (v1) and cgroup2 mounts of a `/proc/<pid>/mountinfo`.
fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // `id parent major:minor root mountpoint opts ... - fstype source superopts`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(mountpoint), Some(fstype)) = (left.split(' ').nth(4), r.next()) else {
            continue;
        };
        let controllers = match fstype {
            "cgroup2" => None,
            "cgroup" => Some(
                r.nth(1)
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => continue,
        };
        out.push(CgroupMount {
            mountpoint: PathBuf::from(unescape(mountpoint)),
            controllers,
        });
    }
    out
}

/// `(controller names, path)` of each line of a `/proc/<pid>/cgroup`
/// (`hierarchy-id:names:path`; the names are empty for v2).
fn membership(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        Some((parts.next()?, parts.next()?))
    })
}

/// `parent` (absolute, inside the hierarchy) or `sandboxer` under `own`.
fn relative(parent: Option<&str>, own: Option<&str>) -> PathBuf {
    match parent {
        Some(p) => PathBuf::from(p.trim_start_matches('/')),
        None => PathBuf::from(own.unwrap_or("/").trim_start_matches('/')).join("sandboxer"),
    }
}

fn make_parent(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("making {}", dir.display())))?;
    // Writable by this process, or nothing below can be made.
    let probe = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&probe)
        .map(drop)
        .map_err(io_err(format!(
            "{} is not writable by this daemon (delegate it, see docs/extensions/local.md)",
            probe.display()
        )))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    f.write_all(value.as_bytes())
        .map_err(io_err(format!("writing `{value}` to {}", path.display())))
}

fn read_u64(path: &Path) -> Option<u64> {
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    s.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// mountinfo escapes spaces and the like as `\040`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_and_keyed_files() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").expect("write");
        assert_eq!(keyed(&f, "oom_kill"), Some(3));
        assert_eq!(keyed(&f, "missing"), None);
    }

    #[test]
    fn mounts_and_membership_are_read_from_procs_files() {
        let info = "35 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    36 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    22 1 8:1 / / rw - ext4 /dev/vda rw\n";
        let m = cgroup_mounts(info);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mountpoint, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(m[1]
            .controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|o| o == "cpuacct")));
        assert!(m[2].controllers.is_none());
        let own: Vec<_> = membership("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/x\n").collect();
        assert_eq!(own, [("memory", "/a/b"), ("cpu,cpuacct", "/"), ("", "/x")]);
    }

    #[test]
    fn a_parent_is_absolute_in_the_hierarchy_or_under_our_own() {
        assert_eq!(relative(Some("/sbx"), Some("/a")), PathBuf::from("sbx"));
        assert_eq!(relative(None, Some("/a/b")), PathBuf::from("a/b/sandboxer"));
        assert_eq!(relative(None, Some("/")), PathBuf::from("sandboxer"));
    }
}
