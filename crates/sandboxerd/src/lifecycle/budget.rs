//! The budget step-down (`[credits] on_exhausted`): when a project's
//! balance reaches zero, its running priced sandboxes are paused, or
//! snapshotted and destroyed, or destroyed, with termination reason
//! `credits_exhausted`; sandboxes it paused resume once the project's
//! balance is above zero again (a grant).
//!
//! A pass runs after every metering tick (which is what moves balances
//! down) and after every grant (which moves them up). Each step is one
//! conditional transition or one pause step under the sandbox's lock, so a
//! pass repeated, racing a client or cut off by a crash does each thing
//! once; the next pass picks up whatever was left.
use sandboxer_api::{ProblemCode, SandboxState, TerminationReason};

use super::pause::{self, Cause};
use crate::config::OnExhausted;
use crate::store::{Change, PauseStep, StoreError, Transition};
use crate::AppState;

/// Sandboxes one pass takes of each kind; the next pass takes the rest.
const BATCH: u32 = 1000;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub paused: usize,
    pub destroyed: usize,
    pub resumed: usize,
}

/// One pass of the step-down.
pub async fn pass(state: &AppState) -> Result<Pass, StoreError> {
    let mut done = Pass::default();
    let policy = state.settings.credits.on_exhausted;
    if policy != OnExhausted::None {
        let paused_too = policy != OnExhausted::Pause;
        for id in state.db.exhausted_ids(paused_too, BATCH).await? {
            if policy == OnExhausted::Pause {
                match pause::step_for(state, &id, PauseStep::Pause, Cause::Credits).await {
                    Ok(_) => {
                        tracing::info!(sandbox_id = %id, "sandbox paused: its project ran out of credits");
                        done.paused += 1;
                        continue;
                    }
                    Err(e) if is_gone(&e) => continue,
                    // A backend that can never pause: destroyed instead
                    // (after an exit snapshot), never left running on no
                    // credits.
                    Err(e) if is_unsupported(&e) => {
                        tracing::warn!(sandbox_id = %id, error = %e, "its backend cannot pause; destroying it instead");
                    }
                    // Anything else (a host out of reach, a busy store) is
                    // tried again by the next pass.
                    Err(e) => {
                        tracing::warn!(sandbox_id = %id, error = %e, "pausing for lack of credits failed; the next pass retries");
                        continue;
                    }
                }
            }
            match end(state, &id).await {
                Ok(true) => done.destroyed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(sandbox_id = %id, error = %e, "ending for lack of credits failed; the next pass retries")
                }
            }
        }
    }
    // Whatever the policy is now: a sandbox the budget paused (perhaps
    // under another configuration) comes back when its project can pay.
    for id in state.db.budget_resumable_ids(BATCH).await? {
        match pause::step_for(state, &id, PauseStep::Resume, Cause::Credits).await {
            Ok(_) => {
                tracing::info!(sandbox_id = %id, "sandbox resumed: its project has credits again");
                done.resumed += 1;
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, error = %e, "resuming after a grant failed; the next pass retries")
            }
        }
    }
    Ok(done)
}

/// A pass in the background (after a metering tick or a grant), logged if
/// it fails; skipped while one is running (that one, or the next tick's,
/// sees the new balances).
pub fn spawn_pass(state: &AppState) {
    use std::sync::atomic::Ordering;
    if state.budget_pass.swap(true, Ordering::AcqRel) {
        return;
    }
    let st = state.clone();
    state.spawn(async move {
        if let Err(e) = pass(&st).await {
            tracing::warn!(error = %e, "budget pass failed; the next metering tick retries");
        }
        st.budget_pass.store(false, Ordering::Release);
    });
}

/// The backend can never pause this sandbox.
fn is_unsupported(e: &super::OpError) -> bool {
    matches!(
        e,
        super::OpError::Refused {
            code: ProblemCode::Unsupported,
            ..
        }
    )
}

/// The sandbox left or moved on meanwhile: nothing to do.
fn is_gone(e: &super::OpError) -> bool {
    matches!(
        e,
        super::OpError::Refused {
            code: ProblemCode::SandboxNotFound | ProblemCode::InvalidState,
            ..
        }
    )
}

/// Move a sandbox of an exhausted project to `destroying` (reason
/// `credits_exhausted`; its teardown takes the exit snapshot when the
/// policy or its profile asks for one) and start its teardown.
async fn end(state: &AppState, id: &str) -> Result<bool, StoreError> {
    let detail = "its project ran out of credits";
    let change = Change {
        reason: "the project ran out of credits",
        termination: Some((TerminationReason::CreditsExhausted, detail)),
        budget: Some(true),
        ..Change::default()
    };
    let from = [
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Paused,
    ];
    match state
        .db
        .transition(id, &from, SandboxState::Destroying, change)
        .await?
    {
        Transition::Done { .. } => {
            tracing::info!(sandbox_id = %id, "sandbox destroyed: its project ran out of credits");
            state.notify(id);
            state.spawn(super::teardown::destroy(state.clone(), id.to_owned()));
            Ok(true)
        }
        _ => Ok(false),
    }
}
