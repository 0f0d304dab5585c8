//! Money: prices and estimates in whole credits. The rows (grants,
//! reservations, debits, settlement) live in `store::ledger`; the metering
//! ticker in `lifecycle::metering`. See `docs/payments.md`.
mod pricing;

pub use pricing::{
    billed_seconds, credits_for, credits_for_mix, estimate, paused_rate_centicredits,
    rate_centicredits, MAX_CREDITS, MAX_CREDITS_PER_HOUR,
};
