//! The daemon's one clock: milliseconds since the epoch, the unit of every
//! stored time. Every layer reads it from here (the store keeps it as its
//! time unit, backends stamp what they see with it).

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Milliseconds of a duration, saturating: how a TTL or an interval is
/// added to a stored time.
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
