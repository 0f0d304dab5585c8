//! The provision task: bring a sandbox from `requested` to `ready` on its
//! backend (or `failed` with the backend's reason), moving it to another
//! host or routing candidate when the first one cannot take it.
use sandboxer_api::{ProblemCode, SandboxState};

use super::{metering, snapshots};
use crate::extensions::{BackendState, ExtError, ProvisionRequest};
use crate::metrics::Counter;
use crate::store::{Change, StoreError, Transition};
use crate::AppState;

/// States a provision task may act on.
const LIVE_OR_COMING: [SandboxState; 4] = [
    SandboxState::Requested,
    SandboxState::Provisioning,
    SandboxState::Ready,
    SandboxState::Active,
];

/// Bring sandbox `id` (at `generation`) up: `requested → provisioning →
/// ready`, or `failed` with the backend's reason. For a recreate, `old`
/// is the previous generation's backend state, torn down first.
#[tracing::instrument(skip_all, fields(sandbox_id = %id, generation))]
pub async fn provision(state: AppState, id: String, generation: u32, old: Option<BackendState>) {
    let mut old = old;
    // Hosts this provision found unusable (no connection, or full).
    let mut tried = Vec::new();
    loop {
        match provision_inner(&state, &id, generation, old.take(), &mut tried).await {
            // Moved to another host or the next routing candidate: provision
            // it there. Each move uses up a host or a candidate, so this ends.
            Ok(Step::FailedOver) => continue,
            Ok(Step::Done) => break,
            Err(e) => {
                tracing::error!(error = %e, "provisioning stopped on a storage error");
                break;
            }
        }
    }
    state.notify(&id);
}

/// How a provision attempt ended.
enum Step {
    /// Ready, failed, or nothing to do.
    Done,
    /// Failed before ready and moved to another host or routing candidate.
    FailedOver,
}

async fn provision_inner(
    state: &AppState,
    id: &str,
    generation: u32,
    old: Option<BackendState>,
    tried: &mut Vec<String>,
) -> Result<Step, StoreError> {
    let _guard = state.locks.lock(id).await;
    let Some(row) = state.db.get_row(id, None).await? else {
        return Ok(Step::Done);
    };
    if row.generation != generation {
        return Ok(Step::Done);
    }
    // A warm-pool member: its readiness is no consumer's create→ready.
    let pooled = row.pool.is_some();
    let current = row.state()?;
    match current {
        SandboxState::Requested => {
            let reason = format!("provisioning on {} at {}", row.extension, row.host);
            let change = Change {
                reason: &reason,
                generation: Some(generation),
                ..Change::default()
            };
            match state
                .db
                .transition(
                    id,
                    &[SandboxState::Requested],
                    SandboxState::Provisioning,
                    change,
                )
                .await?
            {
                Transition::Done { .. } => state.notify(id),
                _ => return Ok(Step::Done),
            }
            crate::fault::hit("provision.after_provisioning");
        }
        SandboxState::Provisioning => {}
        _ => return Ok(Step::Done),
    }
    let Some(ext) = state.extensions.get(&row.extension) else {
        fail(
            state,
            id,
            generation,
            None,
            ExtError::new(
                ProblemCode::BackendUnavailable,
                format!("no backend `{}` in this daemon", row.extension),
            ),
        )
        .await?;
        return Ok(Step::Done);
    };
    let Some(profile) = state.catalog.profiles.get(&row.profile) else {
        fail(
            state,
            id,
            generation,
            None,
            ExtError::new(
                ProblemCode::ProfileNotFound,
                format!("profile `{}` is no longer in the catalog", row.profile),
            ),
        )
        .await?;
        return Ok(Step::Done);
    };
    if let Some(old) = old {
        if let Err(e) = ext.teardown(id, Some(&old)).await {
            fail(state, id, generation, Some(old), e).await?;
            return Ok(Step::Done);
        }
    }
    let sandbox = row.into_api()?;
    // A fork's workspace comes from its snapshot, held until it is filled.
    let fork = match snapshots::fork_source(state, id).await? {
        Ok(fork) => fork,
        Err(e) => {
            fail(state, id, generation, None, e).await?;
            return Ok(Step::Done);
        }
    };
    let secrets =
        match crate::secrets::resolve(&profile.spec.setup.secret_refs, &state.settings.secrets) {
            Ok(s) => s,
            Err(e) => {
                fail(state, id, generation, None, e.into()).await?;
                return Ok(Step::Done);
            }
        };
    let req = ProvisionRequest {
        sandbox_id: id.to_owned(),
        generation,
        profile: profile.spec.clone(),
        inputs: sandbox.inputs.clone(),
        host: sandbox.host.clone(),
        from_snapshot: fork.source.clone(),
        secrets,
    };
    let provisioned = ext.provision(&req).await;
    drop(fork);
    let backend_state = match provisioned {
        Ok(s) => s,
        Err(e) => {
            let torn_down = ext.teardown(id, None).await.is_ok();
            if e.host_unusable
                && try_another_host(
                    state,
                    id,
                    generation,
                    &ext,
                    profile,
                    &sandbox.host,
                    tried,
                    &e,
                )
                .await?
            {
                return Ok(Step::FailedOver);
            }
            return fail_or_failover(state, id, generation, None, e, torn_down).await;
        }
    };
    crate::fault::hit("provision.after_spawn");
    state
        .db
        .set_backend_state(id, generation, &backend_state)
        .await?;
    crate::fault::hit("provision.after_backend_state");
    match ext
        .wait_ready(id, &backend_state, state.settings.provision_timeout)
        .await
    {
        Ok(info) => {
            let change = Change {
                reason: "backend reports the sandbox reachable",
                generation: Some(generation),
                set_ready_at: true,
                reachability: Some(Some(info.reachability)),
                backend_state: Some(Some(info.backend_state)),
                ..Change::default()
            };
            if let Transition::Done { sandbox, .. } = state
                .db
                .transition(
                    id,
                    &[SandboxState::Provisioning],
                    SandboxState::Ready,
                    change,
                )
                .await?
            {
                let secs = (sandbox.ready_at.unwrap_or(sandbox.updated_at) - sandbox.created_at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1e6;
                if pooled {
                    tracing::info!(seconds = secs, "warm-pool member ready");
                } else {
                    state.metrics.observe_create_ready(secs);
                    tracing::info!(seconds = secs, "sandbox ready");
                }
            }
            // Refused: a destroy came in meanwhile; its task tears down next.
        }
        Err(e) => {
            let torn_down = ext.teardown(id, Some(&backend_state)).await.is_ok();
            return fail_or_failover(state, id, generation, Some(backend_state), e, torn_down)
                .await;
        }
    }
    Ok(Step::Done)
}

/// Host `from` could not be used at all (`e`, nothing made there): move
/// the sandbox to the next host of the same backend in the profile's
/// placement order that this provision has not tried, those known down
/// last. Never when the create asked for its host (`placement.host`).
#[allow(clippy::too_many_arguments)]
async fn try_another_host(
    state: &AppState,
    id: &str,
    generation: u32,
    ext: &std::sync::Arc<dyn crate::extensions::Extension>,
    profile: &crate::catalog::LoadedProfile,
    from: &str,
    tried: &mut Vec<String>,
    e: &ExtError,
) -> Result<bool, StoreError> {
    if state.db.placement_host(id).await?.is_some() {
        return Ok(false);
    }
    if !tried.iter().any(|h| h == from) {
        tried.push(from.to_owned());
    }
    let hosts = ext.hosts();
    let down = crate::routing::known_down(ext.as_ref(), &hosts);
    let Some(to) = crate::routing::choose_host(&profile.spec, &hosts, None, tried, &down) else {
        return Ok(false);
    };
    let reason = format!(
        "placement: host {from} cannot be used ({}: {}); trying host {to}",
        e.code, e.message
    );
    if !state
        .db
        .move_host(id, generation, from, &to, &reason)
        .await?
    {
        return Ok(false);
    }
    tracing::warn!(sandbox_id = %id, from, to = %to, code = %e.code, "moved to another host");
    state.metrics.count(Counter::HostFailovers);
    state.notify(id);
    Ok(true)
}

/// A failure before ready: move the sandbox to its next routing candidate
/// when it has one (and what was made here is gone, so nothing is left
/// behind unowned), else mark it failed.
async fn fail_or_failover(
    state: &AppState,
    id: &str,
    generation: u32,
    backend_state: Option<BackendState>,
    e: ExtError,
    torn_down: bool,
) -> Result<Step, StoreError> {
    if torn_down && crate::routing::failover(state, id, generation, &e).await? {
        return Ok(Step::FailedOver);
    }
    fail(state, id, generation, backend_state, e).await?;
    Ok(Step::Done)
}

async fn fail(
    state: &AppState,
    id: &str,
    generation: u32,
    backend_state: Option<BackendState>,
    e: ExtError,
) -> Result<(), StoreError> {
    tracing::warn!(code = %e.code, message = %e.message, "provisioning failed");
    state.metrics.count_failure(e.code.as_str());
    let reason = format!("{}: {}", e.code, e.message);
    let change = Change {
        reason: &reason,
        generation: Some(generation),
        termination: Some((
            sandboxer_api::TerminationReason::ProvisionFailed,
            &e.message,
        )),
        failure: Some(Some(e.clone().into_failure())),
        backend_state: backend_state.map(Some),
        ..Change::default()
    };
    state
        .db
        .transition(id, &LIVE_OR_COMING, SandboxState::Failed, change)
        .await?;
    // Failure ends the generation: charge its use, release the rest.
    metering::settle(state, id).await;
    Ok(())
}
