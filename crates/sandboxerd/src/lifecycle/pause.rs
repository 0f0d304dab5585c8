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
/// `paused`; a paused one is answered as it is.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn pause(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    step(state, scope, id, PauseStep::Pause).await
}

/// `POST /v1/sandboxes/{id}/resume`: a `paused` sandbox becomes `ready`;
/// a `ready` or `active` one is answered as it is.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn resume(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    step(state, scope, id, PauseStep::Resume).await
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
    if done.contains(&now) {
        // Idempotent: already there.
        return Ok(row.into_api()?);
    }
    if !from.contains(&now) {
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
    let acted = match step {
        PauseStep::Pause => ext.pause(id, bs.as_ref()).await,
        PauseStep::Resume => ext.resume(id, bs.as_ref()).await,
    };
    acted.map_err(backend_error)?;
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
    match state.db.transition(id, from, to, change).await? {
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
