//! The reaper: on every tick, expire what is past `expires_at`, destroy what
//! has been idle too long, and retry teardowns that failed. Expiry lives in
//! the database, so it survives restarts; nothing rests on in-memory timers.
use std::time::{Duration, Instant};

use sandboxer_api::SandboxState;
use tokio_util::sync::CancellationToken;

use crate::metrics::Counter;
use crate::store::{now_ms, Change, StoreError, Transition};
use crate::AppState;

/// The most rows one sweep takes of each kind; the next tick takes the rest.
const BATCH: u32 = 10_000;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub expired: usize,
    pub idle_reaped: usize,
    pub teardowns_started: usize,
}

/// Run sweeps every `interval` until `stop` is cancelled.
pub async fn run(state: AppState, interval: Duration, stop: CancellationToken) {
    crate::periodic::every(interval, stop, "reaper sweep", || {
        let state = state.clone();
        async move { sweep(&state).await }
    })
    .await;
}

/// One sweep.
pub async fn sweep(state: &AppState) -> Result<Sweep, StoreError> {
    let mut done = Sweep::default();
    let now = now_ms();
    let started = Instant::now();
    let due = state.db.due_expiries(now, BATCH).await?;
    state.metrics.observe_sweep(started.elapsed().as_secs_f64());
    state.metrics.count(Counter::ReaperSweeps);
    done.expired = expire(state, &due, now).await?.len();

    for (profile_id, profile) in state.catalog.profiles.iter() {
        let Some(idle) = profile.idle_reap else {
            continue;
        };
        let cutoff = now - crate::clock::millis(idle);
        for id in state.db.due_idle(profile_id, cutoff, BATCH).await? {
            let reason = format!("idle for more than {}", humantime::format_duration(idle));
            let change = Change {
                reason: &reason,
                idle_since: Some(cutoff),
                termination: Some((sandboxer_api::TerminationReason::IdleReaped, &reason)),
                ..Change::default()
            };
            let from = [SandboxState::Ready, SandboxState::Active];
            if let Transition::Done { .. } = state
                .db
                .transition(&id, &from, SandboxState::Destroying, change)
                .await?
            {
                state.metrics.count(Counter::SandboxesIdleReaped);
                state.notify(&id);
                done.idle_reaped += 1;
                state.spawn(super::teardown::destroy(state.clone(), id));
            }
        }
    }

    for id in state.db.due_teardowns(now, BATCH).await? {
        if !state.teardowns_in_flight.contains(&id) {
            done.teardowns_started += 1;
            state.spawn(super::teardown::destroy(state.clone(), id));
        }
    }
    Ok(done)
}

/// `POST /v1/expire`: the sandboxes past their expiry now; with `apply`,
/// expired (in batches, until none is left) and their teardown started.
#[tracing::instrument(skip_all, fields(apply = apply))]
pub async fn expire_due(
    state: &AppState,
    apply: bool,
) -> Result<Vec<sandboxer_api::Sandbox>, StoreError> {
    let now = now_ms();
    let mut items = Vec::new();
    loop {
        let due = state.db.due_expiries(now, 1000).await?;
        if due.is_empty() {
            break;
        }
        if !apply {
            for id in &due {
                if let Some(sbx) = state.db.get_sandbox(id, None).await? {
                    items.push(sbx);
                }
            }
            break;
        }
        let expired = expire(state, &due, now).await?;
        let progressed = !expired.is_empty();
        items.extend(expired);
        if !progressed {
            break;
        }
    }
    Ok(items)
}

/// Expire the sandboxes among `ids` that are still past their expiry at
/// `now` (one conditional transition each) and start their teardown.
/// Answers the ones this call expired.
pub async fn expire(
    state: &AppState,
    ids: &[String],
    now: i64,
) -> Result<Vec<sandboxer_api::Sandbox>, StoreError> {
    let mut expired = Vec::new();
    for id in ids {
        let change = Change {
            reason: "ttl expired",
            expired_by: Some(now),
            termination: Some((
                sandboxer_api::TerminationReason::TtlExpired,
                "its TTL ran out",
            )),
            ..Change::default()
        };
        // A paused sandbox's TTL runs too.
        let from = SandboxState::HOLDING;
        if let Transition::Done { sandbox, .. } = state
            .db
            .transition(id, &from, SandboxState::Expired, change)
            .await?
        {
            state.metrics.count(Counter::SandboxesExpired);
            state.notify(id);
            state.spawn(super::teardown::destroy(state.clone(), id.clone()));
            expired.push(sandbox);
        }
    }
    Ok(expired)
}
