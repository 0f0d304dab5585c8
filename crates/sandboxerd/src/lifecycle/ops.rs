//! What a client asks of one sandbox after its create: destroy, recreate,
//! extend its TTL, mark activity. Each writes its transition first and
//! starts the background task (teardown, provision) the transition leads to.
//! `scope` is the project the caller sees (`None`: every project).
use sandboxer_api::{ExtendedSandbox, ProblemCode, Sandbox, SandboxState, TerminationReason};

use super::error::{Missing, OpError, OpResult};
use super::validate;
use crate::clock::millis;
use crate::store::{now_ms, Change, Escrow, Extended, NewLifetime, Transition};
use crate::AppState;

/// Move sandbox `id` to `destroying` and start its teardown. A sandbox
/// already on its way out (or gone) is answered as it is: destroy is
/// idempotent.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn destroy(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    if state.db.get_row(id, scope).await?.is_none() {
        return Err(OpError::not_found(Missing::Sandbox, id));
    }
    let from = [
        SandboxState::Requested,
        SandboxState::Provisioning,
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Paused,
        SandboxState::Failed,
    ];
    let change = Change {
        reason: "destroy requested",
        termination: Some((TerminationReason::Destroyed, "destroy requested")),
        ..Change::default()
    };
    match state
        .db
        .transition(id, &from, SandboxState::Destroying, change)
        .await?
    {
        Transition::Done { sandbox, .. } => {
            state.notify(id);
            state.spawn(super::teardown::destroy(state.clone(), id.to_owned()));
            Ok(sandbox)
        }
        Transition::Refused(sandbox) => Ok(sandbox),
        Transition::NotFound => Err(OpError::not_found(Missing::Sandbox, id)),
        Transition::InsufficientCredits(short) => {
            Err(OpError::insufficient(short, "", "a destroy"))
        }
    }
}

/// Tear sandbox `id`'s backend down and provision it again: same id, same
/// profile and inputs, generation + 1, a fresh TTL (`ttl`, or the
/// profile's default) whose estimate is reserved when credits are enforced.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn recreate(
    state: &AppState,
    scope: Option<&str>,
    id: &str,
    ttl: Option<&str>,
) -> OpResult<Sandbox> {
    let Some(row) = state.db.get_row(id, scope).await? else {
        return Err(OpError::not_found(Missing::Sandbox, id));
    };
    let profile = state.catalog.profiles.get(&row.profile).ok_or_else(|| {
        OpError::conflict(
            ProblemCode::ProfileNotFound,
            format!(
                "profile `{}` of this sandbox is no longer in the catalog",
                row.profile
            ),
        )
    })?;
    let ttl = validate::requested_ttl(ttl, profile)?;
    // A failed sandbox freed its name; another may hold it now.
    let name_taken = |holder: &str| {
        OpError::conflict(
            ProblemCode::NameTaken,
            format!(
                "its name `{}` is held by live sandbox {holder} now; destroy that one first",
                row.name.as_deref().unwrap_or_default()
            ),
        )
    };
    if let Some(name) = &row.name {
        if let Some(holder) = state.db.live_name_holder(&row.project, name).await? {
            if holder.id != id {
                return Err(name_taken(&holder.id));
            }
        }
    }
    let now = now_ms();
    let old_backend = row.backend_state();
    let change = Change {
        reason: "recreate requested",
        generation: Some(row.generation),
        new_generation: Some(NewLifetime {
            expires_at: now.saturating_add(millis(ttl)),
            max_expires_at: now.saturating_add(millis(profile.ttl_max)),
        }),
        reachability: Some(None),
        failure: Some(None),
        escrow: Some(Escrow {
            enforce: state.settings.credits.enforce,
        }),
        ..Change::default()
    };
    let from = [
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Failed,
    ];
    let moved = match state
        .db
        .transition(id, &from, SandboxState::Provisioning, change)
        .await
    {
        // Taken between the look above and the transition.
        Err(e) if e.is_name_clash() => return Err(name_taken("another sandbox")),
        other => other?,
    };
    match moved {
        Transition::Done { sandbox, .. } => {
            state.notify(id);
            state.spawn(super::provision::provision(
                state.clone(),
                id.to_owned(),
                sandbox.generation,
                Some(old_backend.unwrap_or_default()),
            ));
            Ok(sandbox)
        }
        Transition::Refused(sbx) => Err(OpError::wrong_state(
            &format!("sandbox {id}"),
            sbx.state,
            "ready, active or failed sandboxes can be recreated",
        )),
        Transition::NotFound => Err(OpError::not_found(Missing::Sandbox, id)),
        Transition::InsufficientCredits(short) => {
            Err(
                OpError::insufficient(short, &row.project, "the recreated sandbox's lifetime")
                    .field("ttl"),
            )
        }
    }
}

/// Move sandbox `id`'s `expires_at` forward by `by` (a humantime duration),
/// never past `created_at + ttl.max`; the extra estimate is reserved when
/// credits are enforced.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn extend(
    state: &AppState,
    scope: Option<&str>,
    id: &str,
    by: &str,
) -> OpResult<ExtendedSandbox> {
    let by = validate::positive_duration("duration", by)?;
    let enforce = state.settings.credits.enforce;
    match state
        .db
        .extend_ttl_billed(id, scope, millis(by), enforce)
        .await?
    {
        Extended::Done(sandbox, ttl_capped) => {
            state.notify(id);
            Ok(ExtendedSandbox {
                sandbox: *sandbox,
                ttl_capped,
            })
        }
        Extended::InsufficientCredits(short) => {
            let project = match scope {
                Some(p) => p.to_owned(),
                None => state
                    .db
                    .get_sandbox(id, None)
                    .await?
                    .map(|s| s.consumer.project)
                    .unwrap_or_default(),
            };
            Err(OpError::insufficient(short, &project, "this extension").field("duration"))
        }
        Extended::NotExtendable => match state.db.get_sandbox(id, scope).await? {
            None => Err(OpError::not_found(Missing::Sandbox, id)),
            Some(sbx) if sbx.state == SandboxState::Paused && sbx.expires_at > chrono::Utc::now() => {
                Err(OpError::conflict(
                    ProblemCode::InvalidState,
                    format!(
                        "sandbox {id} is paused with its TTL clock stopped (`ttl.pause_stops_clock`); resume it, then extend"
                    ),
                ))
            }
            Some(sbx) => Err(OpError::conflict(
                ProblemCode::InvalidState,
                format!(
                    "sandbox {id} is `{}` (or past its expiry); its TTL cannot be extended",
                    sbx.state
                ),
            )),
        },
    }
}

/// Mark activity on sandbox `id`: idle reap counts from now; `ready`
/// becomes `active`.
#[tracing::instrument(skip_all, fields(sandbox_id = %id))]
pub async fn touch(state: &AppState, scope: Option<&str>, id: &str) -> OpResult<Sandbox> {
    if state.db.get_row(id, scope).await?.is_none() {
        return Err(OpError::not_found(Missing::Sandbox, id));
    }
    match state.db.touch(id).await? {
        Transition::Done { sandbox, .. } => {
            state.notify(id);
            Ok(sandbox)
        }
        Transition::Refused(sbx) => Err(OpError::wrong_state(
            &format!("sandbox {id}"),
            sbx.state,
            "ready or active sandboxes can be touched",
        )),
        Transition::NotFound => Err(OpError::not_found(Missing::Sandbox, id)),
        Transition::InsufficientCredits(short) => Err(OpError::insufficient(short, "", "a touch")),
    }
}

/// The egress proxy's decisions for sandbox `id` (empty when it has made
/// none, or the sandbox's network is not `egress`, or it ended longer ago
/// than the proxy keeps logs).
pub async fn network_log(
    state: &AppState,
    scope: Option<&str>,
    id: &str,
) -> OpResult<sandboxer_api::NetworkLog> {
    if state.db.get_row(id, scope).await?.is_none() {
        return Err(OpError::not_found(Missing::Sandbox, id));
    }
    Ok(state
        .extensions
        .egress
        .log(id)
        .unwrap_or(sandboxer_api::NetworkLog {
            items: Vec::new(),
            dropped: 0,
            allowed: 0,
            denied: 0,
        }))
}

/// `sbx` with the live usage its backend measures (`ready`/`active`/`paused` only;
/// left `null` where the backend cannot tell). Read now, not cached: a
/// client checking what its last command did sees it.
pub async fn with_usage(state: &AppState, mut sbx: Sandbox) -> Sandbox {
    if !matches!(
        sbx.state,
        SandboxState::Ready | SandboxState::Active | SandboxState::Paused
    ) {
        return sbx;
    }
    let Some(ext) = state.extensions.get(&sbx.extension) else {
        return sbx;
    };
    // Backends that measure usage find their sandbox by id (ext.local);
    // no second read of the row on this hot path.
    sbx.usage = ext.usage(&sbx.id, None, true).await;
    sbx
}
