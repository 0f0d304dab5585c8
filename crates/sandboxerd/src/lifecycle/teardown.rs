//! The teardown task: tear a sandbox's backend down and mark it
//! `destroyed`, or leave it for the reaper to retry with backoff.
use sandboxer_api::{ProblemCode, SandboxState};

use super::metering;
use crate::extensions::ExtError;
use crate::metrics::Counter;
use crate::store::{now_ms, Change, StoreError};
use crate::AppState;

/// Tear sandbox `id` down (it is in `destroying` or `expired`) and mark it
/// `destroyed`. A failing backend leaves the row where it is, with the time
/// of the next attempt, for the reaper to retry.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn destroy(state: AppState, id: String) {
    // One teardown of a sandbox at a time; a sweep finding it again skips it.
    if !state.teardowns_in_flight.begin(&id) {
        return;
    }
    if let Err(e) = destroy_inner(&state, &id).await {
        tracing::error!(error = %e, "teardown stopped on a storage error");
    }
    state.teardowns_in_flight.end(&id);
    state.notify(&id);
}

async fn destroy_inner(state: &AppState, id: &str) -> Result<(), StoreError> {
    // A capture holds the sandbox's lock while it walks the workspace, which
    // the sandbox's code controls: stop it first, or wait on it for ever.
    let cancelled = state.captures.cancel_sandbox(id);
    if cancelled > 0 {
        tracing::info!(
            cancelled,
            "snapshot captures of the sandbox cancelled for its teardown"
        );
    }
    let _guard = state.locks.lock(id).await;
    let Some(row) = state.db.get_row(id, None).await? else {
        return Ok(());
    };
    let from = row.state()?;
    if !matches!(from, SandboxState::Destroying | SandboxState::Expired) {
        return Ok(());
    }
    // Destroy and expiry end the generation (at the transition that led
    // here): charge its use, release the rest.
    metering::settle(state, id).await;
    crate::fault::hit("teardown.after_destroying");
    // `ttl.on_expire: snapshot`: the work is kept before it goes (bounded
    // in time; whatever happens, the teardown goes on).
    super::snapshots::exit_snapshot(state, &row, state.settings.exit_snapshot_timeout).await;
    if row.teardown_attempts > 0 {
        state.metrics.count(Counter::TeardownRetries);
    }
    let result = match state.extensions.get(&row.extension) {
        Some(ext) => ext.teardown(id, row.backend_state().as_ref()).await,
        None => Err(ExtError::new(
            ProblemCode::BackendUnavailable,
            format!("no backend `{}` in this daemon", row.extension),
        )),
    };
    if let Err(e) = result {
        // Never dropped: the row stays on its way out and the reaper tries
        // again after a backoff that doubles up to five minutes.
        let attempts = row.teardown_attempts + 1;
        let backoff_ms = 1000i64
            .saturating_mul(1 << attempts.clamp(0, 9))
            .min(300_000);
        tracing::warn!(attempts, backoff_ms, error = %e, "teardown failed; will retry");
        state
            .db
            .teardown_failed(id, attempts, now_ms() + backoff_ms, &e.to_string())
            .await?;
        return Ok(());
    }
    crate::fault::hit("teardown.after_backend");
    let change = Change {
        reason: "backend torn down",
        set_destroyed_at: true,
        reachability: Some(None),
        failure: Some(None),
        teardown_retry: Some(None),
        ..Change::default()
    };
    state
        .db
        .transition(
            id,
            &[SandboxState::Destroying, SandboxState::Expired],
            SandboxState::Destroyed,
            change,
        )
        .await?;
    Ok(())
}
