//! Pause and resume (API v1.1): every process of a sandbox frozen with its
//! memory kept, and let go again. The backend acts first and the state is
//! recorded after, under the sandbox's lock; a daemon that dies between
//! the two is put right at its next start, which brings every live
//! sandbox's processes to the state its row records (`recover`).
//!
//! A paused sandbox keeps its name and its place in the project's cap, its
//! TTL runs on (it expires paused like any other) unless its profile says
//! `ttl.pause_stops_clock`, its paused time is billed at the paused rate
//! (not as running time), and it is not idle-reaped. Exec, files, ports,
//! SSH and snapshots answer 409 `invalid_state` until it is resumed.
use sandboxer_api::{ProblemCode, Sandbox, SandboxState};

use super::error::{Missing, OpError, OpResult, Refusal};
use crate::extensions::ExtError;
use crate::store::{Change, Escrow, PauseStep, Transition};
use crate::AppState;

/// Who asks for a pause step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A client, through the API.
    User,
    /// The budget step-down (`[credits] on_exhausted = "pause"`).
    Credits,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::User => "user",
            Cause::Credits => "credits_exhausted",
        }
    }
}

/// `POST /v1/sandboxes/{id}/pause`: a `ready` or `active` sandbox becomes
/// `paused`; a paused one is answered as it is (frozen again, in case).
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn pause(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    detached(state, scope, id, PauseStep::Pause, Cause::User).await
}

/// `POST /v1/sandboxes/{id}/resume`: a `paused` sandbox becomes `ready`;
/// a `ready` or `active` one is answered as it is (thawed again, in case a
/// pause was cut off). A sandbox the budget paused stays paused (402)
/// while its project's balance is not above zero.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn resume(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    detached(state, scope, id, PauseStep::Resume, Cause::User).await
}

/// A pause or resume step asked for by the daemon itself (`cause`).
pub async fn step_for(
    state: &AppState,
    id: &str,
    how: PauseStep,
    cause: Cause,
) -> OpResult<Sandbox> {
    detached(state, None, id, how, cause).await
}

/// Runs the step in a task of its own: a client that hangs up cannot cut
/// it off between the backend and the record.
async fn detached(
    state: &AppState,
    scope: Option<&str>,
    id: &str,
    how: PauseStep,
    cause: Cause,
) -> OpResult<Sandbox> {
    let (st, scope, id) = (state.clone(), scope.map(str::to_owned), id.to_owned());
    state
        .tasks
        .spawn(async move { step(&st, scope.as_deref(), &id, how, cause).await })
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
    cause: Cause,
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
    if row.expires_at <= crate::store::now_ms() {
        return Err(OpError::conflict(
            ProblemCode::InvalidState,
            format!("sandbox {id} is past its expiry; it is being torn down"),
        ));
    }
    if step == PauseStep::Resume
        && now == SandboxState::Paused
        && row.pause_reason.as_deref() == Some(Cause::Credits.as_str())
    {
        // The budget paused it; it resumes when the project has credits.
        let balance = state.db.balance(&row.project).await?;
        if balance.balance <= 0 {
            return Err(OpError::refused(
                Refusal::Credits,
                ProblemCode::InsufficientCredits,
                format!(
                    "sandbox {id} was paused because project `{}` ran out of credits (balance {}); it resumes when credits are granted",
                    row.project, balance.balance
                ),
            ));
        }
    }
    // `ttl.pause_stops_clock`: the longest a pause may then last, so that
    // a generation's pauses add up to at most `ttl.max` (a pause/resume
    // loop never keeps a sandbox for ever). A budget pause never stops
    // the clock: a project out of credits does not keep a sandbox longer.
    let clock = match (step, cause) {
        (PauseStep::Pause, Cause::User) => state
            .catalog
            .profiles
            .get(&row.profile)
            .filter(|p| p.spec.ttl.pause_stops_clock)
            .map(|p| crate::clock::millis(p.ttl_max) - row.paused_ms)
            .filter(|longest| *longest > 0),
        _ => None,
    };
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
    let reason = match (step, cause) {
        (PauseStep::Pause, Cause::User) => "paused",
        (PauseStep::Pause, Cause::Credits) => "paused: the project ran out of credits",
        (PauseStep::Resume, Cause::User) => "resumed",
        (PauseStep::Resume, Cause::Credits) => "resumed: the project has credits again",
    };
    let change = Change {
        reason,
        generation: Some(row.generation),
        pause: Some(step),
        pause_reason: Some(cause.as_str()),
        pause_clock: clock,
        budget: (cause == Cause::Credits).then_some(step == PauseStep::Pause),
        escrow: Some(Escrow {
            enforce: state.settings.credits.enforce,
        }),
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
        // A pause that stops the clock reserves what its longest would cost.
        Transition::InsufficientCredits(short) => Err(OpError::insufficient(
            short,
            &row.project,
            "a pause with its TTL clock stopped",
        )),
    }
}

fn backend_error(e: ExtError) -> OpError {
    OpError::refused(Refusal::Failed, e.code, e.message)
}
