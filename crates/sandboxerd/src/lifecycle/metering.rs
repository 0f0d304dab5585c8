//! The metering ticker: on every tick, debit the running time of each live
//! sandbox by the second, and settle every ended generation that is not
//! settled yet (the lifecycle settles right after destroy, expiry and
//! failure; this heals a crash between the two).
//!
//! A tick is idempotent: for each sandbox it computes the cumulative charge
//! its running time has reached and debits only the difference to what the
//! ledger already holds, inside one transaction on the writer connection,
//! under an idempotency key made of the sandbox, its generation and the
//! cumulative amount. A retried, repeated or crashed tick never debits twice.
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Counter;
use crate::store::{now_ms, StoreError};
use crate::AppState;

/// Sandboxes metered per transaction.
const BATCH: u32 = 200;
/// Ended generations settled one by one per tick (the rest on the next).
const SETTLE_BATCH: u32 = 1000;

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Live sandboxes looked at.
    pub metered: usize,
    /// Credits debited.
    pub debited: i64,
    /// Generations settled.
    pub settled: usize,
}

/// Tick every `interval` until `stop` is cancelled; after each tick,
/// `after` (the budget step-down, which looks at the new balances in a
/// task of its own, so backend calls never hold up metering).
pub async fn run(
    state: AppState,
    interval: Duration,
    stop: CancellationToken,
    after: fn(&AppState),
) {
    crate::periodic::every(interval, stop, "metering tick", || {
        let state = state.clone();
        async move {
            let tick = tick_at(&state, now_ms()).await?;
            after(&state);
            Ok::<_, StoreError>(tick)
        }
    })
    .await;
}

/// One tick as of `at` (milliseconds since the epoch).
pub async fn tick_at(state: &AppState, at: i64) -> Result<Tick, StoreError> {
    let enforce = state.settings.credits.enforce;
    let mut done = Tick::default();
    let mut after: Option<String> = None;
    loop {
        let ids = state.db.metered_ids(after.as_deref(), BATCH).await?;
        let Some(last) = ids.last().cloned() else {
            break;
        };
        done.debited += state.db.meter(&ids, at, enforce).await?;
        done.metered += ids.len();
        if ids.len() < BATCH as usize {
            break;
        }
        after = Some(last);
    }
    done.settled += usize::try_from(state.db.settle_trivial().await?).unwrap_or(usize::MAX);
    for id in state.db.unsettled_ids(SETTLE_BATCH).await? {
        if state.db.settle(&id, at, enforce).await? {
            done.settled += 1;
        }
    }
    state.metrics.count(Counter::MeteringTicks);
    state.metrics.add(
        Counter::CreditsDebited,
        u64::try_from(done.debited).unwrap_or(0),
    );
    state.metrics.add(
        Counter::SandboxesSettled,
        u64::try_from(done.settled).unwrap_or(0),
    );
    Ok(done)
}

/// Settle sandbox `id` now if its generation has ended: called right after
/// the transition that ended it. A failure here is healed by the next tick.
pub async fn settle(state: &AppState, id: &str) {
    match state
        .db
        .settle(id, now_ms(), state.settings.credits.enforce)
        .await
    {
        Ok(true) => state.metrics.count(Counter::SandboxesSettled),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(sandbox_id = %id, error = %e, "settling failed; the metering ticker retries")
        }
    }
}
