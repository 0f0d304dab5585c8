//! The report's header: the machine, the versions, the command line.
use super::*;

/// `- key: value` lines about the machine and the run.
pub(crate) fn header(
    args: &Args,
    repo: &Path,
    bin: &DaemonBin,
    load_before: &str,
    took: Duration,
) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let commit = match command_line(repo, "git", &["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = command_line(
                repo,
                "git",
                &["status", "--porcelain", "--untracked-files=no"],
            )
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("`{c}` with uncommitted changes")
            } else {
                format!("`{c}`")
            }
        }
        None => "unknown".into(),
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut cmd = format!(
        "`cargo run{} -p sandboxer-bench --",
        if profile == "release" {
            " --release"
        } else {
            ""
        }
    );
    if args.quick {
        cmd.push_str(" --quick");
    }
    cmd.push('`');
    vec![
        (
            "Date".into(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        ),
        (
            "Machine".into(),
            format!("{cores} cores ({cpu}), {mem}, Linux {kernel}"),
        ),
        (
            "Load average (1, 5, 15 min) before / after".into(),
            format!("{load_before} / {}", loadavg()),
        ),
        ("Commit".into(), commit),
        (
            "Toolchain".into(),
            format!(
                "{}, {profile} build",
                command_line(repo, "rustc", &["--version"]).unwrap_or_else(|| "rustc ?".into())
            ),
        ),
        (
            "bubblewrap".into(),
            command_line(repo, "bwrap", &["--version"]).unwrap_or_else(|| "?".into()),
        ),
        (
            "Daemon".into(),
            format!(
                "`{}`, default configuration, fresh data dir, `127.0.0.1:0`, JSON logs at `info`",
                bin.path()
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        ),
        (
            "Command".into(),
            format!("{cmd} (took {:.0} s)", took.as_secs_f64()),
        ),
    ]
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The first line of what `program args` prints (run in `dir`), when it runs and succeeds.
pub(crate) fn command_line(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
    )
}
