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

/// Crash points of the metering ticker, reached inside the transaction of
/// a tick that debits (before it commits).
pub const METERING_POINTS: &[&str] = &["metering.after_debit"];

/// Abort the process here if the environment names this point.
pub fn hit(point: &'static str) {
    #[cfg(debug_assertions)]
    {
        static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let wanted = WANTED.get_or_init(|| std::env::var("SANDBOXER_FAULT").ok());
        if wanted.as_deref() == Some(point) {
            eprintln!("sandboxerd: fault injected at {point}: aborting");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
