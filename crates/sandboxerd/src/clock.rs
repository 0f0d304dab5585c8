//! The daemon's one clock: milliseconds since the epoch, the unit of every
//! stored time. Every layer reads it from here (the store keeps it as its
//! time unit, backends stamp what they see with it).

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
