//! The start-up reconciler: before the API serves, every row a previous run
//! left unsettled is brought to a state that matches what the backend holds.
//!
//! - `requested`: nothing was made yet; provisioning starts now.
//! - `provisioning`: if the backend holds a running sandbox it is finished
//!   (`ready`); otherwise whatever was made is torn down and the row is
//!   `failed` (`interrupted`).
//! - `ready`/`active` whose backend no longer holds them: torn down (to clear
//!   leftovers) and `failed` (`backend_lost`). Nothing is reported ready that
//!   the backend does not confirm.
//! - `destroying`/`expired`: teardown runs again until it succeeds.
//! - unassigned warm-pool members (see `pool`): retired (`destroying`, then
//!   torn down like the rows above) whatever their state, never carried
//!   over; the refill task makes fresh ones.
//!
//! A TTL that passed while the daemon was down is enforced by the reaper's
//! first sweep, right after start.
use std::time::Duration;

use sandboxer_api::{Failure, ProblemCode, SandboxState};

use crate::extensions::Liveness;
use crate::metrics::Counter;
use crate::store::{Change, SandboxRow, StoreError};
use crate::AppState;

/// How long a half-made sandbox may take to report ready during recovery.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Reconcile every unsettled row; answers how many rows were looked at.
pub async fn recover(state: &AppState) -> Result<usize, StoreError> {
    // Interrupted captures and restores first (see `snapshots::recover`).
    super::snapshots::recover(state).await?;
    // Members a previous run left are retired first; the pass below then
    // finds them in `destroying` and tears them down.
    let retired = super::pool::retire_unassigned(
        state,
        "warm-pool member left by a previous run: retired at start",
    )
    .await?;
    if !retired.is_empty() {
        tracing::info!(
            count = retired.len(),
            "retiring warm-pool members left by the previous run"
        );
    }
    let rows = state.db.unsettled().await?;
    let count = rows.len();
    for row in rows {
        match row.state()? {
            SandboxState::Requested => {
                state.spawn(super::provision::provision(
                    state.clone(),
                    row.id.clone(),
                    row.generation,
                    None,
                ));
            }
            SandboxState::Provisioning => finish_or_fail(state, row).await?,
            SandboxState::Ready | SandboxState::Active | SandboxState::Paused => {
                check_live(state, row).await?
            }
            SandboxState::Destroying | SandboxState::Expired => {
                state.spawn(super::teardown::destroy(state.clone(), row.id.clone()));
            }
            SandboxState::Destroyed | SandboxState::Failed => {}
        }
    }
    Ok(count)
}

async fn finish_or_fail(state: &AppState, row: SandboxRow) -> Result<(), StoreError> {
    let _guard = state.locks.lock(&row.id).await;
    let Some(ext) = state.extensions.get(&row.extension) else {
        return fail(
            state,
            &row,
            ProblemCode::BackendUnavailable,
            format!("no backend `{}` in this daemon", row.extension),
        )
        .await;
    };
    let backend_state = row.backend_state();
    if let Some(bs) = &backend_state {
        if let Ok(Liveness::Alive) = ext.probe(&row.id, Some(bs)).await {
            reattach(ext.as_ref(), &row.id, Some(bs)).await;
            if let Ok(info) = ext.wait_ready(&row.id, bs, FINISH_TIMEOUT).await {
                let change = Change {
                    reason: "recovered after restart: backend reports the sandbox reachable",
                    generation: Some(row.generation),
                    set_ready_at: true,
                    reachability: Some(Some(info.reachability)),
                    backend_state: Some(Some(info.backend_state)),
                    ..Change::default()
                };
                state
                    .db
                    .transition(
                        &row.id,
                        &[SandboxState::Provisioning],
                        SandboxState::Ready,
                        change,
                    )
                    .await?;
                return Ok(());
            }
        }
    }
    if let Err(e) = ext.teardown(&row.id, backend_state.as_ref()).await {
        tracing::warn!(sandbox_id = %row.id, error = %e, "teardown of an interrupted provision failed");
        // Leave it to the reaper: on its way out, retried until it succeeds.
        let change = Change {
            reason: "interrupted: the daemon stopped while provisioning; teardown pending",
            termination: Some((
                sandboxer_api::TerminationReason::ProvisionFailed,
                "the daemon stopped while provisioning",
            )),
            failure: Some(Some(Failure::new(
                ProblemCode::Interrupted,
                format!("sandboxerd stopped while provisioning; teardown failed: {e}"),
            ))),
            ..Change::default()
        };
        state
            .db
            .transition(
                &row.id,
                &[SandboxState::Provisioning],
                SandboxState::Destroying,
                change,
            )
            .await?;
        return Ok(());
    }
    fail(
        state,
        &row,
        ProblemCode::Interrupted,
        "sandboxerd stopped while this sandbox was being provisioned; what was made was torn down"
            .into(),
    )
    .await
}

async fn check_live(state: &AppState, row: SandboxRow) -> Result<(), StoreError> {
    let Some(ext) = state.extensions.get(&row.extension) else {
        return Ok(());
    };
    let backend_state = row.backend_state();
    match ext.probe(&row.id, backend_state.as_ref()).await {
        Ok(Liveness::Alive) => {
            reattach(ext.as_ref(), &row.id, backend_state.as_ref()).await;
            // The row says whether it is paused; a daemon that died between
            // freezing (or thawing) and recording it left the other. Only
            // what the backend can tell is put right: processes the tenant
            // stopped itself are never continued here.
            if ext.can_pause() {
                let bs = backend_state.as_ref();
                let paused = row.state()? == SandboxState::Paused;
                // Told again unless the backend confirms the recorded state
                // (both steps are idempotent): a backend that cannot tell,
                // or a stack half paused by a cut-off step, is put right.
                let settled = match (paused, ext.frozen(&row.id, bs).await) {
                    (true, Some(true)) | (false, Some(false)) => Ok(()),
                    (true, _) => ext.pause(&row.id, bs).await,
                    (false, _) => ext.resume(&row.id, bs).await,
                };
                if let Err(e) = settled {
                    tracing::warn!(sandbox_id = %row.id, error = %e, "cannot bring the sandbox's processes to its recorded state");
                }
            }
            Ok(())
        }
        Ok(Liveness::Gone) => {
            let _guard = state.locks.lock(&row.id).await;
            state.metrics.count(Counter::SandboxesBackendLost);
            if let Err(e) = ext.teardown(&row.id, backend_state.as_ref()).await {
                tracing::warn!(sandbox_id = %row.id, error = %e, "clearing a lost sandbox failed");
            }
            fail(
                state,
                &row,
                ProblemCode::BackendLost,
                "the backend no longer holds this sandbox (found at daemon start)".into(),
            )
            .await
        }
        // The backend cannot answer now (e.g. a host is down): nothing is
        // known, so nothing changes.
        Err(e) => {
            tracing::warn!(sandbox_id = %row.id, error = %e, "cannot probe sandbox at start");
            Ok(())
        }
    }
}

/// Serves again what the daemon serves for a live sandbox; a failure is
/// logged and leaves the sandbox as it is (its egress, say, answers 502
/// until the next start).
async fn reattach(
    ext: &dyn crate::extensions::Extension,
    id: &str,
    backend_state: Option<&serde_json::Value>,
) {
    if let Err(e) = ext.reattach(id, backend_state).await {
        tracing::warn!(sandbox_id = %id, error = %e, "cannot take up the sandbox's services again");
    }
}

async fn fail(
    state: &AppState,
    row: &SandboxRow,
    code: ProblemCode,
    message: String,
) -> Result<(), StoreError> {
    let reason = format!("{code}: {message}");
    let why = if code == ProblemCode::BackendLost {
        sandboxer_api::TerminationReason::BackendLost
    } else {
        sandboxer_api::TerminationReason::ProvisionFailed
    };
    let change = Change {
        reason: &reason,
        termination: Some((why, &message)),
        failure: Some(Some(Failure::new(code, message.clone()))),
        reachability: Some(None),
        ..Change::default()
    };
    state
        .db
        .transition(
            &row.id,
            &SandboxState::HOLDING,
            SandboxState::Failed,
            change,
        )
        .await?;
    Ok(())
}
