//! Snapshot lifecycle: capture (a background task under the sandbox's lock),
//! restore in place, the fork source of a provision, delete with blob
//! release, the expiry sweep, and the start-up pass.
//!
//! Every step is written before its side effect: the row is `creating`
//! before the archive is written (to `snapshots/tmp/<id>.tmp`, a name the
//! start-up pass can find), and a blob is only removed after the row that
//! held it says `deleted`. Blob names are guarded by their own lock
//! (`blob:<sha256>` in [`crate::lifecycle::Locks`]), so a capture that
//! reuses a blob and a delete that frees it never interleave.
//!
//! Test-only crash points (`SANDBOXER_FAULT`, debug builds):
//! `snapshot.after_temp_write` (abort once the archive is written, before it
//! is named), `restore.after_move_out` (abort with the old workspace moved
//! aside), `restore.before_move_in` (fail the restore there, to exercise
//! its roll-back) and `snapshot.slow_walk` (sleep 100 ms at every entry of
//! a capture's walk, to act on a capture in flight).
//!
//! A capture is registered in [`Captures`] from before it waits for the
//! sandbox's lock until its archive is written: a teardown of the sandbox,
//! and shutdown, cancel it (`snapshot_cancelled`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandboxer_api::{Failure, Sandbox, Snapshot, SnapshotState};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::catalog::DEFAULT_SNAPSHOT_MAX_BYTES;
use crate::extensions::{ExtError, SnapshotSource};
use crate::store::{now_ms, Captured, StoreError};
use crate::AppState;

/// How often the built-in sweeper looks for expired snapshots.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// The most snapshots one sweep deletes; the next takes the rest.
const SWEEP_BATCH: u32 = 1000;

/// Captures in flight (or waiting for their sandbox's lock), by sandbox,
/// each with the token that stops it. A teardown cancels its sandbox's
/// captures *before* it waits for the sandbox's lock (which a capture
/// holds), and shutdown cancels them all, so no capture of a hostile
/// workspace can hold a teardown or the daemon's exit hostage.
#[derive(Default)]
pub struct Captures(Mutex<CapturesInner>);

#[derive(Default)]
struct CapturesInner {
    /// sandbox id → snapshot id → token.
    by_sandbox: HashMap<String, HashMap<String, CancellationToken>>,
    /// Shutting down: every capture registered from now on starts cancelled.
    closed: bool,
}

impl Captures {
    fn inner(&self) -> std::sync::MutexGuard<'_, CapturesInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register capture `snapshot_id` of `sandbox_id`; it stays registered
    /// until the answered handle is dropped.
    pub fn begin(self: &Arc<Self>, sandbox_id: &str, snapshot_id: &str) -> CaptureHandle {
        let token = CancellationToken::new();
        let mut inner = self.inner();
        if inner.closed {
            token.cancel();
        }
        inner
            .by_sandbox
            .entry(sandbox_id.to_owned())
            .or_default()
            .insert(snapshot_id.to_owned(), token.clone());
        CaptureHandle {
            captures: self.clone(),
            sandbox_id: sandbox_id.to_owned(),
            snapshot_id: snapshot_id.to_owned(),
            token,
        }
    }

    /// Cancel every capture of `sandbox_id`; answers how many there were.
    pub fn cancel_sandbox(&self, sandbox_id: &str) -> usize {
        let inner = self.inner();
        let Some(captures) = inner.by_sandbox.get(sandbox_id) else {
            return 0;
        };
        captures.values().for_each(CancellationToken::cancel);
        captures.len()
    }

    /// Cancel every capture, now and from now on (shutdown); answers how
    /// many were in flight.
    pub fn cancel_all(&self) -> usize {
        let mut inner = self.inner();
        inner.closed = true;
        inner
            .by_sandbox
            .values()
            .flat_map(HashMap::values)
            .map(CancellationToken::cancel)
            .count()
    }
}

/// A registered capture; dropping it unregisters it.
pub struct CaptureHandle {
    captures: Arc<Captures>,
    sandbox_id: String,
    snapshot_id: String,
    /// Cancelled by a teardown of the sandbox or by shutdown.
    pub token: CancellationToken,
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        let mut inner = self.captures.inner();
        if let Some(captures) = inner.by_sandbox.get_mut(&self.sandbox_id) {
            captures.remove(&self.snapshot_id);
            if captures.is_empty() {
                inner.by_sandbox.remove(&self.sandbox_id);
            }
        }
    }
}

/// The lock key of a blob.
fn blob_key(sha256: &str) -> String {
    format!("blob:{sha256}")
}

/// Which capability of an extension an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Snapshot,
    Restore,
}

/// Whether extension `ext_id` can do `what`: its code implements snapshots
/// and its catalog entry does not switch the capability off.
pub fn capable(state: &AppState, ext_id: &str, what: Capability) -> bool {
    let code = state
        .extensions
        .get(ext_id)
        .is_some_and(|e| e.can_snapshot());
    let declared = state
        .catalog
        .extensions
        .get(ext_id)
        .is_some_and(|spec| match what {
            Capability::Snapshot => spec.capabilities.snapshot,
            Capability::Restore => spec.capabilities.restore,
        });
    code && declared
}

/// Capture snapshot `id` (in `creating`): archive the sandbox's workspace,
/// name the archive by its hash, mark the snapshot `ready`, or `failed` with
/// the reason (leaving no blob behind).
#[tracing::instrument(skip_all, fields(snapshot_id = %id))]
pub async fn capture(state: AppState, id: String) {
    if let Err(e) = capture_inner(&state, &id).await {
        tracing::error!(error = %e, "capture stopped on a storage error");
    }
    state.notify(&id);
}

async fn capture_inner(state: &AppState, id: &str) -> Result<(), StoreError> {
    let Some(snap) = state.db.get_snapshot_row(id, None).await? else {
        return Ok(());
    };
    // Registered before the lock and before the sandbox's state is read: a
    // teardown either finds this capture to cancel, or moved the sandbox out
    // of `ready`/`active` before the check below.
    let handle = state.captures.begin(&snap.sandbox_id, id);
    let cancel = handle.token.clone();
    let _guard = tokio::select! {
        guard = state.locks.lock(&snap.sandbox_id) => guard,
        () = cancel.cancelled() => {
            let e = crate::extensions::snapshot_cancelled();
            return failed(state, id, Failure { code: e.code.to_owned(), message: e.message }).await;
        }
    };
    // Read again under the lock: a delete may have come first.
    let Some(snap) = state.db.get_snapshot_row(id, None).await? else {
        return Ok(());
    };
    if snap.state()? != SnapshotState::Creating {
        return Ok(());
    }
    let fail = |code: &str, message: String| Failure {
        code: code.to_owned(),
        message,
    };
    let Some(row) = state.db.get_row(&snap.sandbox_id, None).await? else {
        return failed(
            state,
            id,
            fail("sandbox_not_found", "the sandbox is gone".into()),
        )
        .await;
    };
    let sbx_state = row.state()?;
    if !sbx_state.is_live() || row.generation != snap.sandbox_generation {
        return failed(
            state,
            id,
            fail(
                "invalid_state",
                format!(
                    "sandbox {} became `{sbx_state}` (generation {}) before the capture started",
                    row.id, row.generation
                ),
            ),
        )
        .await;
    }
    let Some(ext) = state.extensions.get(&row.extension) else {
        return failed(
            state,
            id,
            fail(
                "backend_unavailable",
                format!("no backend `{}` in this daemon", row.extension),
            ),
        )
        .await;
    };
    let max_bytes = state
        .catalog
        .profiles
        .get(&snap.profile)
        .map(|p| p.snapshot_max_bytes)
        .unwrap_or(DEFAULT_SNAPSHOT_MAX_BYTES);
    let blobs = Blobs::new(&state.settings.data_dir);
    if let Err(e) = blobs.prepare() {
        return failed(
            state,
            id,
            fail("snapshot_failed", format!("snapshot store: {e}")),
        )
        .await;
    }
    let tmp = blobs.tmp_path(id);
    let started = std::time::Instant::now();
    let archive = match ext
        .snapshot(
            &row.id,
            row.backend_state().as_ref(),
            &tmp,
            max_bytes,
            &cancel,
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            let _ = blobs.remove_tmp(id);
            tracing::warn!(code = e.code, message = %e.message, "capture failed");
            return failed(state, id, fail(e.code, e.message)).await;
        }
    };
    drop(handle);
    crate::fault::hit("snapshot.after_temp_write");
    let _blob = state.locks.lock(&blob_key(&archive.sha256)).await;
    let committed = {
        let blobs = blobs.clone();
        let (tmp, sha, size) = (tmp.clone(), archive.sha256.clone(), archive.size_bytes);
        tokio::task::spawn_blocking(move || blobs.commit(&tmp, &sha, size))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
    };
    if let Err(e) = committed {
        let _ = blobs.remove_tmp(id);
        return failed(
            state,
            id,
            fail("snapshot_failed", format!("storing the archive: {e}")),
        )
        .await;
    }
    let captured = Captured {
        sha256: archive.sha256.clone(),
        size_bytes: archive.size_bytes,
        content_bytes: archive.content_bytes,
    };
    match state.db.snapshot_ready(id, &captured).await? {
        Some(_) => tracing::info!(
            sha256 = %archive.sha256,
            size_bytes = archive.size_bytes,
            content_bytes = archive.content_bytes,
            seconds = started.elapsed().as_secs_f64(),
            "snapshot ready"
        ),
        // Deleted while capturing: drop the blob unless another snapshot holds it.
        None => {
            if !state.db.blob_in_use(&archive.sha256).await? {
                let _ = blobs.remove(&archive.sha256);
            }
        }
    }
    Ok(())
}

async fn failed(state: &AppState, id: &str, failure: Failure) -> Result<(), StoreError> {
    state
        .db
        .snapshot_failed(id, &[SnapshotState::Creating], &failure)
        .await?;
    Ok(())
}

/// Delete snapshot `id` (idempotent) and remove its blob unless another
/// snapshot that is not deleted shares it. `None` when there is no such
/// snapshot in `project`.
pub async fn delete(
    state: &AppState,
    id: &str,
    project: Option<&str>,
) -> Result<Option<Snapshot>, StoreError> {
    let Some((_, snap)) = state.db.delete_snapshot(id, project).await? else {
        return Ok(None);
    };
    state.notify(id);
    if let Some(sha) = &snap.sha256 {
        release_blob(state, sha).await?;
    }
    Ok(Some(snap))
}

/// Remove blob `sha256` if no snapshot that is not deleted holds it.
async fn release_blob(state: &AppState, sha256: &str) -> Result<(), StoreError> {
    let _blob = state.locks.lock(&blob_key(sha256)).await;
    if !state.db.blob_in_use(sha256).await? {
        if let Err(e) = Blobs::new(&state.settings.data_dir).remove(sha256) {
            tracing::warn!(sha256, error = %e, "could not remove a snapshot blob");
        }
    }
    Ok(())
}

/// Delete every snapshot past its `expires_at` and free the blobs nobody
/// holds any more. Answers how many were deleted. For the reaper's tick.
pub async fn sweep_expired_snapshots(state: &AppState) -> Result<usize, StoreError> {
    let due = state
        .db
        .due_snapshot_expiries(now_ms(), SWEEP_BATCH)
        .await?;
    let mut n = 0;
    for id in due {
        if delete(state, &id, None).await?.is_some() {
            n += 1;
        }
    }
    if n > 0 {
        tracing::info!(deleted = n, "expired snapshots deleted");
    }
    Ok(n)
}

/// Run [`sweep_expired_snapshots`] every `interval` until `stop` is cancelled.
pub async fn run_sweeper(state: AppState, interval: Duration, stop: CancellationToken) {
    crate::periodic::every(interval, stop, "snapshot sweep", || {
        let state = state.clone();
        async move { sweep_expired_snapshots(&state).await }
    })
    .await;
}

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
            "snapshot_not_found",
            format!("snapshot {snapshot_id} to fork from does not exist"),
        )));
    };
    // A router may place a fork on any candidate of its profile: only the
    // snapshot's own extension can read its archive.
    if let Some(row) = state.db.get_row(sandbox_id, None).await? {
        if row.extension != snap.extension {
            return Ok(Err(ExtError::new(
                "snapshot_incompatible",
                format!(
                    "snapshot {snapshot_id} was taken on {}, but this sandbox was placed on {}",
                    snap.extension, row.extension
                ),
            )));
        }
    }
    let Some(sha) = snap.sha256.clone().filter(|_| snap.state == "ready") else {
        return Ok(Err(ExtError::new(
            "snapshot_unavailable",
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
            "snapshot_unavailable",
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

/// Why a restore was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("sandbox `{0}` not found")]
    SandboxNotFound(String),
    #[error("snapshot `{0}` not found")]
    SnapshotNotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("{0}")]
    SandboxState(String),
    #[error("{0}")]
    SnapshotState(String),
    /// The backend failed (`snapshot_corrupt`, `restore_failed`); the workspace is as it was.
    #[error(transparent)]
    Backend(ExtError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Roll sandbox `sandbox_id`'s workspace back to snapshot `snapshot_id`, in
/// place, under the sandbox's lock. Both must be visible to `project`.
#[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id, snapshot_id = %snapshot_id))]
pub async fn restore(
    state: &AppState,
    sandbox_id: &str,
    snapshot_id: &str,
    project: Option<&str>,
) -> Result<Sandbox, RestoreError> {
    if state.db.get_row(sandbox_id, project).await?.is_none() {
        return Err(RestoreError::SandboxNotFound(sandbox_id.to_owned()));
    }
    if state
        .db
        .get_snapshot_row(snapshot_id, project)
        .await?
        .is_none()
    {
        return Err(RestoreError::SnapshotNotFound(snapshot_id.to_owned()));
    }
    let _guard = state.locks.lock(sandbox_id).await;
    let (Some(row), Some(snap)) = (
        state.db.get_row(sandbox_id, project).await?,
        state.db.get_snapshot_row(snapshot_id, project).await?,
    ) else {
        return Err(RestoreError::SandboxNotFound(sandbox_id.to_owned()));
    };
    if !capable(state, &row.extension, Capability::Restore) {
        return Err(RestoreError::Unsupported(format!(
            "extension {} cannot restore snapshots",
            row.extension
        )));
    }
    if snap.extension != row.extension {
        return Err(RestoreError::Incompatible(format!(
            "snapshot {snapshot_id} was taken on {}; sandbox {sandbox_id} runs on {}",
            snap.extension, row.extension
        )));
    }
    let sbx_state = row.state()?;
    if !sbx_state.is_live() {
        return Err(RestoreError::SandboxState(format!(
            "sandbox {sandbox_id} is `{sbx_state}`; only ready or active sandboxes can be restored"
        )));
    }
    let snap_state = snap.state()?;
    let sha = match (&snap.sha256, snap_state) {
        (Some(sha), SnapshotState::Ready) => sha.clone(),
        _ => {
            return Err(RestoreError::SnapshotState(format!(
                "snapshot {snapshot_id} is `{snap_state}`; only ready snapshots can be restored"
            )))
        }
    };
    let Some(ext) = state.extensions.get(&row.extension) else {
        return Err(RestoreError::Unsupported(format!(
            "no backend `{}` in this daemon",
            row.extension
        )));
    };
    let _blob = state.locks.lock(&blob_key(&sha)).await;
    let Some(path) = Blobs::new(&state.settings.data_dir).path(&sha) else {
        return Err(RestoreError::Backend(ExtError::new(
            "snapshot_corrupt",
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
            .map_err(|e| RestoreError::Backend(e.into()))?,
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
        tracing::warn!(code = e.code, message = %e.message, "restore failed; the workspace is as it was");
        if e.code == "snapshot_corrupt" {
            // Damaged for good: say so on the snapshot too.
            state
                .db
                .snapshot_failed(
                    snapshot_id,
                    &[SnapshotState::Ready],
                    &Failure {
                        code: e.code.to_owned(),
                        message: e.message.clone(),
                    },
                )
                .await?;
            state.notify(snapshot_id);
        }
        return Err(RestoreError::Backend(e));
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "workspace restored from the snapshot"
    );
    Ok(row.into_api()?)
}

/// Wait until snapshot `id` is no longer `creating`, at most `timeout`.
pub async fn wait_settled(
    state: &AppState,
    id: &str,
    project: Option<&str>,
    timeout: Duration,
) -> Result<Option<Snapshot>, StoreError> {
    let mut rx = state.events.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let Some(snap) = state.db.get_snapshot(id, project).await? else {
            return Ok(None);
        };
        if snap.state != SnapshotState::Creating || tokio::time::Instant::now() >= deadline {
            return Ok(Some(snap));
        }
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => break,
                Ok(Ok(changed)) if &*changed == id => break,
                Ok(Ok(_)) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    return state.db.get_snapshot(id, project).await;
                }
            }
        }
    }
}

/// The start-up pass: captures a crash interrupted become `failed`
/// (`interrupted`) and their temp files go; blobs no snapshot holds (a crash
/// between naming a blob and marking its row) are removed; restores a crash
/// interrupted are rolled back. Answers how many snapshots were failed.
pub async fn recover(state: &AppState) -> Result<usize, StoreError> {
    let blobs = Blobs::new(&state.settings.data_dir);
    let creating = state.db.creating_snapshots().await?;
    for snap in &creating {
        let _ = blobs.remove_tmp(&snap.id);
        state
            .db
            .snapshot_failed(
                &snap.id,
                &[SnapshotState::Creating],
                &Failure {
                    code: "interrupted".into(),
                    message: "sandboxerd stopped while this snapshot was being captured; nothing was kept"
                        .into(),
                },
            )
            .await?;
    }
    // No capture runs before the API serves: whatever is in tmp/ is debris.
    match blobs.clear_tmp() {
        Ok(n) if n > 0 => tracing::info!(removed = n, "removed unfinished snapshot files"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not clear the snapshot temp folder"),
    }
    let held: std::collections::HashSet<String> =
        state.db.blobs_in_use().await?.into_iter().collect();
    match blobs.list() {
        Ok(names) => {
            for name in names.iter().filter(|n| !held.contains(*n)) {
                tracing::info!(sha256 = %name, "removing a snapshot blob no snapshot holds");
                let _ = blobs.remove(name);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list the snapshot store"),
    }
    for (id, extension, backend_state) in state.db.live_sandbox_handles().await? {
        let Some(ext) = state.extensions.get(&extension) else {
            continue;
        };
        if !ext.can_snapshot() {
            continue;
        }
        let _guard = state.locks.lock(&id).await;
        let bs = backend_state.and_then(|s| serde_json::from_str(&s).ok());
        if let Err(e) = ext.recover_workspace(&id, bs.as_ref()).await {
            tracing::error!(sandbox_id = %id, error = %e, "could not roll back an interrupted restore");
        }
    }
    if !creating.is_empty() {
        tracing::info!(
            failed = creating.len(),
            "snapshots interrupted by the previous run marked failed"
        );
    }
    Ok(creating.len())
}
