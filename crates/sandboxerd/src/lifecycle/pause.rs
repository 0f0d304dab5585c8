//! Pause and resume (API v1.1): every process of a sandbox frozen with its
//! memory kept, and let go again. The backend acts first and the state is
//! recorded after, under the sandbox's lock; a daemon that dies between
//! the two is put right at its next start, which brings every live
//! sandbox's processes to the state its row records (`recover`).
//!
//! A paused sandbox keeps its name and its place in the project's cap, its
//! TTL runs on (it expires paused like any other), its paused time is not
//! billed as running time, and it is not idle-reaped. Exec, files, ports,
//! SSH and snapshots answer 409 `invalid_state` until it is resumed.
use sandboxer_api::{ProblemCode, Sandbox, SandboxState};

use super::error::{Missing, OpError, OpResult, Refusal};
use crate::extensions::ExtError;
use crate::store::{Change, PauseStep, Transition};
use crate::AppState;

/// `POST /v1/sandboxes/{id}/pause`: a `ready` or `active` sandbox becomes
/// `paused`; a paused one is answered as it is (frozen again, in case).
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn pause(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    detached(state, scope, id, PauseStep::Pause).await
}

/// `POST /v1/sandboxes/{id}/resume`: a `paused` sandbox becomes `ready`;
/// a `ready` or `active` one is answered as it is (thawed again, in case a
/// pause was cut off).
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn resume(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    detached(state, scope, id, PauseStep::Resume).await
}

/// Runs the step in a task of its own: a client that hangs up cannot cut
/// it off between the backend and the record.
async fn detached(
    state: &AppState,
    scope: Option<&str>,
    id: &str,
    how: PauseStep,
) -> OpResult<Sandbox> {
    let (st, scope, id) = (state.clone(), scope.map(str::to_owned), id.to_owned());
    state
        .tasks
        .spawn(async move { step(&st, scope.as_deref(), &id, how).await })
        .await
        .map_err(|e| {
            OpError::refused(
                Refusal::Failed,
                ProblemCode::Internal,
                format!("pause task: {e}"),
            )
        })?
}

async fn step(
    state: &AppState,
    scope: Option<&str>,
    id: &str,
    step: PauseStep,
) -> OpResult<Sandbox> {
    let _guard = state.locks.lock(id).await;
    let Some(row) = state.db.get_row(id, scope).await? else {
        return Err(OpError::not_found(Missing::Sandbox, id));
    };
    if row.pool.is_some() {
        return Err(OpError::conflict(
            ProblemCode::InvalidState,
            format!("sandbox {id} is an unassigned warm-pool member"),
        ));
    }
    let now = row.state()?;
    let (from, to, done, only): (&[SandboxState], _, &[SandboxState], _) = match step {
        PauseStep::Pause => (
            &[SandboxState::Ready, SandboxState::Active],
            SandboxState::Paused,
            &[SandboxState::Paused],
            "ready, active or paused sandboxes can be paused",
        ),
        PauseStep::Resume => (
            &[SandboxState::Paused],
            SandboxState::Ready,
            &[SandboxState::Ready, SandboxState::Active],
            "paused, ready or active sandboxes can be resumed",
        ),
    };
    if !from.contains(&now) && !done.contains(&now) {
        return Err(OpError::wrong_state(&format!("sandbox {id}"), now, only));
    }
    let Some(ext) = state.extensions.get(&row.extension) else {
        return Err(OpError::refused(
            Refusal::Unavailable,
            ProblemCode::BackendUnavailable,
            format!("no backend `{}` in this daemon", row.extension),
        ));
    };
    if !ext.can_pause() {
        return Err(OpError::conflict(
            ProblemCode::Unsupported,
            format!("extension {} cannot pause sandboxes", row.extension),
        ));
    }
    let bs = row.backend_state();
    let act = |how: PauseStep| {
        let (ext, bs) = (ext.clone(), bs.clone());
        async move {
            match how {
                PauseStep::Pause => ext.pause(id, bs.as_ref()).await,
                PauseStep::Resume => ext.resume(id, bs.as_ref()).await,
            }
        }
    };
    // Idempotent: already there; the backend is told again (a pause cut
    // off halfway, or a crash, may have left it otherwise).
    if done.contains(&now) {
        act(step).await.map_err(backend_error)?;
        return Ok(row.into_api()?);
    }
    let undo = match step {
        PauseStep::Pause => PauseStep::Resume,
        PauseStep::Resume => PauseStep::Pause,
    };
    if let Err(e) = act(step).await {
        // Never left half done: undone as well as it can be.
        let _ = act(undo).await;
        return Err(backend_error(e));
    }
    crate::fault::hit(match step {
        PauseStep::Pause => "pause.after_backend",
        PauseStep::Resume => "resume.after_backend",
    });
    let reason = match step {
        PauseStep::Pause => "paused",
        PauseStep::Resume => "resumed",
    };
    let change = Change {
        reason,
        generation: Some(row.generation),
        pause: Some(step),
        ..Change::default()
    };
    let recorded = state.db.transition(id, from, to, change).await;
    if !matches!(recorded, Ok(Transition::Done { .. })) {
        // The row did not follow: the backend goes back to what it says.
        let _ = act(undo).await;
    }
    match recorded? {
        Transition::Done { sandbox, .. } => {
            state.notify(id);
            Ok(sandbox)
        }
        Transition::Refused(sbx) => Err(OpError::wrong_state(
            &format!("sandbox {id}"),
            sbx.state,
            only,
        )),
        Transition::NotFound => Err(OpError::not_found(Missing::Sandbox, id)),
        Transition::InsufficientCredits(_) => Err(OpError::conflict(
            ProblemCode::InvalidState,
            "credits refused a pause step, which reserves nothing",
        )),
    }
}

fn backend_error(e: ExtError) -> OpError {
    OpError::refused(Refusal::Failed, e.code, e.message)
}
