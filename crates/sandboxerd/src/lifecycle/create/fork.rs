//! The fork side of a create (`from_snapshot`): which profile the fork
//! runs, whether its snapshot can start one, and the record that makes its
//! first provision fill the workspace from the snapshot.
use sandboxer_api::{CreateSandbox, ProblemCode, SnapshotState};

use crate::lifecycle::error::{Missing, OpError, OpResult};
use crate::lifecycle::snapshots::{capable, Capability};
use crate::AppState;

/// Check `from_snapshot` and fill in the profile (the snapshot's, unless
/// the request names another profile on the same extension). Without
/// `from_snapshot`, only checks that a profile is named. `scope`: the
/// project the caller sees (`None`: all).
pub async fn resolve(
    state: &AppState,
    scope: Option<&str>,
    mut req: CreateSandbox,
) -> OpResult<CreateSandbox> {
    let Some(snap_id) = req.from_snapshot.clone() else {
        if req.profile.is_empty() {
            return Err(OpError::invalid(
                ProblemCode::MissingProfile,
                "profile",
                "`profile` is required (unless `from_snapshot` is given)",
            ));
        }
        return Ok(req);
    };
    let Some(snap) = state.db.get_snapshot(&snap_id, scope).await? else {
        return Err(OpError::not_found(Missing::Snapshot, &snap_id).field("from_snapshot"));
    };
    if snap.state != SnapshotState::Ready {
        return Err(OpError::wrong_state(
            &format!("snapshot {snap_id}"),
            snap.state,
            "ready snapshots can be forked",
        )
        .field("from_snapshot"));
    }
    if req.profile.is_empty() {
        req.profile = snap.profile.clone();
    }
    let profile = super::super::validate::profile(state, &req.profile)?;
    if !profile
        .candidates()
        .iter()
        .any(|c| state.extensions.snapshots_compatible(&snap.extension, c))
    {
        return Err(OpError::invalid(
            ProblemCode::SnapshotIncompatible,
            "profile",
            format!(
                "profile {} runs on {}, but snapshot {snap_id} was taken on {}",
                req.profile,
                profile.candidates().join(" or "),
                snap.extension
            ),
        ));
    }
    if !capable(state, &snap.extension, Capability::Restore) {
        return Err(OpError::conflict(
            ProblemCode::SnapshotUnsupported,
            format!(
                "extension {} cannot start sandboxes from snapshots",
                snap.extension
            ),
        ));
    }
    Ok(req)
}

/// Record that the sandbox about to be inserted as `sandbox_id` is a fork
/// (before its row, so its first provision always finds the source).
pub async fn record(state: &AppState, sandbox_id: &str, req: &CreateSandbox) -> OpResult<()> {
    if let Some(snap) = &req.from_snapshot {
        state.db.set_fork_source(sandbox_id, snap).await?;
    }
    Ok(())
}
