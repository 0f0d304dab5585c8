//! The exit watcher: every second, each live sandbox on a backend that can
//! be probed cheaply ([`Extension::watches_exits`], e.g. ext.local) is
//! checked. One whose init is gone ends at once, `failed` with the
//! termination reason its backend tells (`oom_killed`, `pids_exceeded`,
//! `init_exited`, ...), and what it held is released; a new OOM kill inside
//! a live sandbox is written to its events. The usage it reads on the way
//! is what `/metrics` shows per sandbox. So a sandbox whose init died is
//! reported within about two seconds, not at the next reap or request.
//!
//! [`Extension::watches_exits`]: crate::extensions::Extension::watches_exits
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sandboxer_api::{Failure, ProblemCode, SandboxState, Usage};
use tokio_util::sync::CancellationToken;

use crate::extensions::Liveness;
use crate::metrics::Counter;
use crate::store::{Change, StoreError, Transition};
use crate::AppState;

/// How often live sandboxes are checked.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Check every [`INTERVAL`] until `stop` is cancelled.
pub async fn run(state: AppState, stop: CancellationToken) {
    let mut seen: HashMap<String, Usage> = HashMap::new();
    let mut pass: u64 = 0;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = check(&state, &mut seen, pass).await {
            tracing::warn!(error = %e, "exit watcher pass failed");
        }
        pass += 1;
    }
}

/// Pass number `pass` (0: this daemon's first). `seen` holds each
/// sandbox's usage at the previous pass.
pub async fn check(
    state: &AppState,
    seen: &mut HashMap<String, Usage>,
    pass: u64,
) -> Result<(), StoreError> {
    let first_pass = pass == 0;
    let mut usage = BTreeMap::new();
    let rows = state.db.watched().await?;
    for (id, ext_id, backend_state, generation) in rows {
        let Some(ext) = state.extensions.get(&ext_id) else {
            continue;
        };
        if !ext.watches_exits() {
            continue;
        }
        let backend_state = backend_state.and_then(|s| serde_json::from_str(&s).ok());
        match ext.probe(&id, backend_state.as_ref()).await {
            Ok(Liveness::Gone) => {
                let last = seen.remove(&id);
                let (reason, detail) = ext
                    .exit_cause(&id, backend_state.as_ref(), last.as_ref())
                    .await;
                end(state, &id, generation, reason, &detail).await?;
                continue;
            }
            Ok(Liveness::Alive) => {}
            Err(e) => {
                tracing::debug!(sandbox_id = %id, error = %e, "probe failed");
                continue;
            }
        }
        // No walk of the workspace: `/metrics` does not export its size.
        let Some(u) = ext.usage(&id, backend_state.as_ref(), false).await else {
            continue;
        };
        // On this daemon's first pass, what is counted already is the
        // baseline (kills before a restart were reported by the daemon that
        // saw them); a sandbox first seen later is new and starts from 0.
        let before = match seen.get(&id) {
            Some(last) => last.oom_kills,
            None if first_pass => u.oom_kills,
            None => 0,
        };
        if u.oom_kills > before {
            let n = u.oom_kills - before;
            state.metrics.add(Counter::OomKills, n);
            let reason = format!(
                "oom_kill: {n} process(es) killed at the memory limit ({} so far)",
                u.oom_kills
            );
            state.db.note(&id, &reason).await?;
            state.notify(&id);
        }
        seen.insert(id.clone(), u.clone());
        usage.insert(id, u);
    }
    seen.retain(|id, _| usage.contains_key(id));
    state.metrics.set_usage(usage);
    Ok(())
}

/// Sandbox `id` (generation `generation`) lost its init: `failed` with
/// `reason`, then what it held on the backend is released.
async fn end(
    state: &AppState,
    id: &str,
    generation: u32,
    reason: sandboxer_api::TerminationReason,
    detail: &str,
) -> Result<(), StoreError> {
    let why = format!("{reason}: {detail}");
    let change = Change {
        reason: &why,
        generation: Some(generation),
        failure: Some(Some(Failure::new(ProblemCode::SandboxExited, detail))),
        termination: Some((reason, detail)),
        reachability: Some(None),
        ..Change::default()
    };
    let from = [
        SandboxState::Ready,
        SandboxState::Active,
        SandboxState::Paused,
    ];
    let Transition::Done { sandbox, .. } = state
        .db
        .transition(id, &from, SandboxState::Failed, change)
        .await?
    else {
        // Destroyed, expired or recreated meanwhile: theirs to handle.
        return Ok(());
    };
    tracing::warn!(sandbox_id = %id, reason = %reason, detail, "sandbox ended: its init is gone");
    state.metrics.count(Counter::SandboxesInitEnded);
    state.notify(id);
    super::metering::settle(state, id).await;
    // Whatever is left (a workspace, a cgroup, stray processes) goes now, in
    // its own task (a slow teardown must not delay the next pass), under the
    // same guard and lock as a destroy's teardown; a later destroy finds
    // nothing to do, and retries it if this one failed.
    state.spawn(release(state.clone(), id.to_owned(), sandbox.extension));
    Ok(())
}

/// Tears down what sandbox `id`, ended by its init's death, still holds.
async fn release(state: AppState, id: String, extension: String) {
    let Some(ext) = state.extensions.get(&extension) else {
        return;
    };
    if !state.teardowns_in_flight.begin(&id) {
        return;
    }
    {
        let _guard = state.locks.lock(&id).await;
        let backend_state = match state.db.get_row(&id, None).await {
            Ok(row) => row.and_then(|r| r.backend_state()),
            Err(_) => None,
        };
        if let Err(e) = ext.teardown(&id, backend_state.as_ref()).await {
            tracing::warn!(sandbox_id = %id, error = %e, "releasing an ended sandbox failed; a destroy retries it");
        }
    }
    state.teardowns_in_flight.end(&id);
}
