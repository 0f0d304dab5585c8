//! Named crash points for tests. In debug builds, `SANDBOXER_FAULT=<point>`
//! makes the daemon abort (like `kill -9`: no cleanup, no flush) when it
//! reaches that point; release builds compile the check away.

/// Every crash point, in the order a sandbox meets them.
pub const POINTS: &[&str] = &[
    "create.after_insert",
    "provision.after_provisioning",
    "provision.after_spawn",
    "provision.after_backend_state",
    "teardown.after_destroying",
    "teardown.after_backend",
];

/// The crash point of an exit snapshot (`ttl.on_expire: snapshot`), right
/// after it is recorded on the sandbox and before its capture.
pub const EXIT_SNAPSHOT_POINTS: &[&str] = &["teardown.exit_snapshot"];

/// Crash points of pause and resume: after the backend acted, before the
/// state is recorded.
pub const PAUSE_POINTS: &[&str] = &["pause.after_backend", "resume.after_backend"];

/// ext.docker: the container is made, not started, and its id not recorded.
pub const DOCKER_POINTS: &[&str] = &["docker.after_create"];

/// Crash points of the metering ticker, reached inside the transaction of
/// a tick that debits (before it commits).
pub const METERING_POINTS: &[&str] = &["metering.after_debit"];

/// Slow points: `SANDBOXER_FAULT=<point>` makes the thread sleep there
/// instead of aborting (see [`pause`]).
pub const SLOW_POINTS: &[&str] = &["snapshot.slow_walk"];

/// Whether `SANDBOXER_FAULT` names `point` (always false in release
/// builds). Also for error points, where the operation fails instead of
/// the process aborting (e.g. `restore.before_move_in`).
pub fn wanted(point: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let wanted = WANTED.get_or_init(|| std::env::var("SANDBOXER_FAULT").ok());
        wanted.as_deref() == Some(point)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = point;
        false
    }
}

/// Abort the process here if the environment names this point.
pub fn hit(point: &'static str) {
    if wanted(point) {
        eprintln!("sandboxerd: fault injected at {point}: aborting");
        std::process::abort();
    }
}

/// Sleep for `pause` here (a blocking sleep: for blocking code) if the
/// environment names this point: a test makes a step slow enough to act
/// while it runs (e.g. `snapshot.slow_walk`, once per entry of a capture).
pub fn pause(point: &'static str, pause: std::time::Duration) {
    if wanted(point) {
        std::thread::sleep(pause);
    }
}
