//! A snapshot read back into a workspace: in place (restore, under the
//! sandbox's lock, the archive verified before the workspace is touched),
//! or into a new sandbox's first workspace (the fork source of a provision).
use sandboxer_api::{ProblemCode, Sandbox, SnapshotState};
use tokio::sync::OwnedMutexGuard;

use super::{blob_key, capable, Capability};
use crate::blobs::Blobs;
use crate::extensions::{ExtError, SnapshotSource};
use crate::lifecycle::error::{Missing, OpError, OpResult, Refusal};
use crate::store::StoreError;
use crate::AppState;

/// What a provision needs of the snapshot its sandbox is forked from: the
/// archive, and a hold on its blob so a delete cannot remove it mid-read.
/// Drop it once the workspace is filled.
#[derive(Default)]
pub struct ForkSource {
    pub source: Option<SnapshotSource>,
    _blob: Option<OwnedMutexGuard<()>>,
}

/// The snapshot sandbox `sandbox_id` starts from, if it is a fork. The inner
/// error fails the provision (`snapshot_not_found`, `snapshot_unavailable`).
pub async fn fork_source(
    state: &AppState,
    sandbox_id: &str,
) -> Result<Result<ForkSource, ExtError>, StoreError> {
    let Some(snapshot_id) = state.db.fork_source(sandbox_id).await? else {
        return Ok(Ok(ForkSource::default()));
    };
    let Some(snap) = state.db.get_snapshot_row(&snapshot_id, None).await? else {
        return Ok(Err(ExtError::new(
            ProblemCode::SnapshotNotFound,
            format!("snapshot {snapshot_id} to fork from does not exist"),
        )));
    };
    // A router may place a fork on any candidate of its profile: only the
    // snapshot's own extension (or one sharing its format) reads its archive.
    if let Some(row) = state.db.get_row(sandbox_id, None).await? {
        if !state
            .extensions
            .snapshots_compatible(&snap.extension, &row.extension)
        {
            return Ok(Err(ExtError::new(
                ProblemCode::SnapshotIncompatible,
                format!(
                    "snapshot {snapshot_id} was taken on {}, but this sandbox was placed on {}",
                    snap.extension, row.extension
                ),
            )));
        }
    }
    let Some(sha) = snap.sha256.clone().filter(|_| snap.state == "ready") else {
        return Ok(Err(ExtError::new(
            ProblemCode::SnapshotUnavailable,
            format!("snapshot {snapshot_id} is `{}`, not ready", snap.state),
        )));
    };
    let blob = state.locks.lock(&blob_key(&sha)).await;
    // Read again under the blob's lock: deleted meanwhile means gone.
    let still = state.db.get_snapshot_row(&snapshot_id, None).await?;
    let Some(path) = still
        .filter(|s| s.state == "ready")
        .and_then(|_| Blobs::new(&state.settings.data_dir).path(&sha))
    else {
        return Ok(Err(ExtError::new(
            ProblemCode::SnapshotUnavailable,
            format!("snapshot {snapshot_id} was deleted"),
        )));
    };
    Ok(Ok(ForkSource {
        source: Some(SnapshotSource {
            id: snapshot_id,
            path,
            sha256: sha,
        }),
        _blob: Some(blob),
    }))
}

/// Roll sandbox `sandbox_id`'s workspace back to snapshot `snapshot_id`, in
/// place, under the sandbox's lock. Both must be visible to `project`.
#[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id, snapshot_id = %snapshot_id))]
pub async fn restore(
    state: &AppState,
    sandbox_id: &str,
    snapshot_id: &str,
    project: Option<&str>,
) -> OpResult<Sandbox> {
    let sandbox_gone = || OpError::not_found(Missing::Sandbox, sandbox_id);
    if state.db.get_row(sandbox_id, project).await?.is_none() {
        return Err(sandbox_gone());
    }
    if state
        .db
        .get_snapshot_row(snapshot_id, project)
        .await?
        .is_none()
    {
        return Err(OpError::not_found(Missing::Snapshot, snapshot_id).field("snapshot_id"));
    }
    let _guard = state.locks.lock(sandbox_id).await;
    let (Some(row), Some(snap)) = (
        state.db.get_row(sandbox_id, project).await?,
        state.db.get_snapshot_row(snapshot_id, project).await?,
    ) else {
        return Err(sandbox_gone());
    };
    if !capable(state, &row.extension, Capability::Restore) {
        return Err(OpError::conflict(
            ProblemCode::SnapshotUnsupported,
            format!("extension {} cannot restore snapshots", row.extension),
        ));
    }
    if !state
        .extensions
        .snapshots_compatible(&snap.extension, &row.extension)
    {
        return Err(OpError::invalid(
            ProblemCode::SnapshotIncompatible,
            "snapshot_id",
            format!(
                "snapshot {snapshot_id} was taken on {}; sandbox {sandbox_id} runs on {}",
                snap.extension, row.extension
            ),
        ));
    }
    let sbx_state = row.state()?;
    if !sbx_state.is_live() {
        return Err(OpError::wrong_state(
            &format!("sandbox {sandbox_id}"),
            sbx_state,
            "ready or active sandboxes can be restored",
        ));
    }
    let snap_state = snap.state()?;
    let sha = match (&snap.sha256, snap_state) {
        (Some(sha), SnapshotState::Ready) => sha.clone(),
        _ => {
            return Err(OpError::wrong_state(
                &format!("snapshot {snapshot_id}"),
                snap_state,
                "ready snapshots can be restored",
            )
            .field("snapshot_id"))
        }
    };
    let Some(ext) = state.extensions.get(&row.extension) else {
        return Err(OpError::conflict(
            ProblemCode::SnapshotUnsupported,
            format!("no backend `{}` in this daemon", row.extension),
        ));
    };
    let _blob = state.locks.lock(&blob_key(&sha)).await;
    let Some(path) = Blobs::new(&state.settings.data_dir).path(&sha) else {
        return Err(backend_failed(ExtError::new(
            ProblemCode::SnapshotCorrupt,
            format!("snapshot {snapshot_id} names no valid archive"),
        )));
    };
    let src = SnapshotSource {
        id: snapshot_id.to_owned(),
        path,
        sha256: sha,
    };
    // A backend that starts the sandbox's processes again gets their
    // environment, as at provision.
    let empty = std::collections::BTreeMap::new();
    let setup_env = state
        .catalog
        .profiles
        .get(&row.profile)
        .map(|p| &p.spec.setup.env)
        .unwrap_or(&empty);
    let secrets = match state.catalog.profiles.get(&row.profile) {
        Some(p) => crate::secrets::resolve(&p.spec.setup.secret_refs, &state.settings.secrets)
            .map_err(|e| backend_failed(e.into()))?,
        None => std::collections::BTreeMap::new(),
    };
    let env = crate::extensions::SandboxEnv {
        env: setup_env,
        secrets: &secrets,
    };
    let started = std::time::Instant::now();
    if let Err(e) = ext
        .restore(sandbox_id, row.backend_state().as_ref(), &src, env)
        .await
    {
        tracing::warn!(code = %e.code, message = %e.message, "restore failed; the workspace is as it was");
        if e.code == ProblemCode::SnapshotCorrupt {
            // Damaged for good: say so on the snapshot too.
            state
                .db
                .snapshot_failed(
                    snapshot_id,
                    &[SnapshotState::Ready],
                    &e.clone().into_failure(),
                )
                .await?;
            state.notify(snapshot_id);
        }
        return Err(backend_failed(e));
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "workspace restored from the snapshot"
    );
    Ok(row.into_api()?)
}

/// A restore the backend refused or failed; the workspace is as it was.
/// A damaged archive is the snapshot's fault (409); anything else is 500.
fn backend_failed(e: ExtError) -> OpError {
    if e.code == ProblemCode::SnapshotCorrupt {
        return OpError::conflict(ProblemCode::SnapshotCorrupt, e.message).field("snapshot_id");
    }
    OpError::refused(
        Refusal::Failed,
        ProblemCode::RestoreFailed,
        format!("{}; the workspace was left as it was", e.message),
    )
}
