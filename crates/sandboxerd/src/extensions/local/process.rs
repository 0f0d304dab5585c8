//! The processes of a sandbox as `/proc` and bubblewrap's files show them.

use super::*;

/// The host pid of the sandbox's pid 1, once bubblewrap has written it.
pub(super) fn read_info_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .get("child-pid")?
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

/// Whether the sandbox init has started the command under it yet.
pub(super) fn has_child(pid: i32) -> bool {
    !procfs::children(pid).is_empty()
}

pub(super) fn bwrap_exited(dir: &Path) -> bool {
    // bubblewrap writes nothing to its log unless it failed.
    std::fs::metadata(dir.join("bwrap.log"))
        .map(|m| m.len() > 0)
        .unwrap_or(false)
}

pub(super) fn exited_error(dir: &Path) -> ExtError {
    let log = std::fs::read_to_string(dir.join("bwrap.log")).unwrap_or_default();
    let log = log.trim();
    ExtError::new(
        ProblemCode::ProvisionFailed,
        if log.is_empty() {
            "bubblewrap exited before the sandbox was ready".to_owned()
        } else {
            format!("bubblewrap failed: {log}")
        },
    )
}
