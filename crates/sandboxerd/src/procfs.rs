//! What `/proc` says about a process: state, start time, children. Used to
//! tell a live sandbox init from a zombie or from a reused pid.
use std::path::Path;

/// State letter and start time (clock ticks since boot) of a process, from
/// `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is gone or a zombie.
pub fn is_zombie(pid: i32) -> bool {
    matches!(stat(pid), Some(('Z' | 'X', _)) | None)
}

/// Whether `pid` is still the bubblewrap process we started (same start
/// time when known; a process whose argv[0] ends in `bwrap` otherwise).
pub fn owns_pid(pid: i32, start: Option<u64>) -> bool {
    match (stat(pid), start) {
        (Some((_, actual)), Some(expected)) => actual == expected,
        (Some(_), None) => argv(pid)
            .first()
            .is_some_and(|argv0| argv0.ends_with(b"bwrap")),
        (None, _) => false,
    }
}

/// The direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The command line of `pid`, one item per argument.
pub fn argv(pid: i32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default()
}

/// Every pid on the machine (as this process sees them).
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir(Path::new("/proc"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}
