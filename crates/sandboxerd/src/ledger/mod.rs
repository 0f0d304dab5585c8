//! Money: prices and estimates in whole credits. The rows (grants,
//! reservations, debits, settlement) live in `store::ledger`; the metering
//! ticker in `lifecycle::metering`. See `docs/payments.md`.
mod pricing;

pub use pricing::{
    billed_seconds, credits_for, estimate, rate_centicredits, MAX_CREDITS, MAX_CREDITS_PER_HOUR,
};
