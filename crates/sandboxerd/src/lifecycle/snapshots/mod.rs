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

use sandboxer_api::{Failure, ProblemCode, Snapshot, SnapshotState};
use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::catalog::DEFAULT_SNAPSHOT_MAX_BYTES;
use crate::lifecycle::error::{Missing, OpError, OpResult};
use crate::lifecycle::validate;
use crate::store::{
    new_id, now_ms, Captured, NewSnapshot, SandboxRow, SnapshotCreated, SnapshotRow, StoreError,
};
use crate::AppState;

mod restore;

pub use restore::{fork_source, restore, ForkSource};

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

/// Snapshot sandbox `sandbox_id`'s workspace: record the snapshot
/// (`creating`, within the project's quota) and start its capture in the
/// background. `scope`: the project the caller sees (`None`: all).
#[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
pub async fn create(
    state: &AppState,
    scope: Option<&str>,
    sandbox_id: &str,
    label: Option<String>,
) -> OpResult<Snapshot> {
    validate::snapshot_label(label.as_deref())?;
    let Some(row) = state.db.get_row(sandbox_id, scope).await? else {
        return Err(OpError::not_found(Missing::Sandbox, sandbox_id));
    };
    if !capable(state, &row.extension, Capability::Snapshot) {
        return Err(OpError::conflict(
            ProblemCode::SnapshotUnsupported,
            format!("extension {} cannot snapshot sandboxes", row.extension),
        ));
    }
    let sbx_state = row.state()?;
    if !sbx_state.is_live() {
        return Err(OpError::wrong_state(
            &format!("sandbox {sandbox_id}"),
            sbx_state,
            "ready or active sandboxes can be snapshotted",
        ));
    }
    let now = now_ms();
    let ttl = state
        .catalog
        .profiles
        .get(&row.profile)
        .map(|p| p.snapshot_ttl)
        .unwrap_or(Duration::from_secs(7 * 86_400));
    let new = snapshot_of(&row, new_id("snap"), label, now, ttl);
    let quota = state.settings.snapshot_quota_per_project;
    let snap = match state.db.create_snapshot(new, quota).await? {
        SnapshotCreated::New(snap) => *snap,
        SnapshotCreated::OverQuota { quota } => {
            return Err(OpError::conflict(
                ProblemCode::SnapshotQuotaExceeded,
                format!(
                    "project {} already holds {quota} snapshots (the quota); delete some first",
                    row.project
                ),
            ))
        }
    };
    state.spawn(capture(state.clone(), snap.id.clone()));
    Ok(snap)
}

/// A new snapshot `id` of sandbox `row`'s current generation, kept `ttl`.
fn snapshot_of(
    row: &SandboxRow,
    id: String,
    label: Option<String>,
    now: i64,
    ttl: Duration,
) -> NewSnapshot {
    NewSnapshot {
        id,
        sandbox_id: row.id.clone(),
        sandbox_generation: row.generation,
        profile: row.profile.clone(),
        profile_version: row.profile_version,
        extension: row.extension.clone(),
        host: row.host.clone(),
        project: row.project.clone(),
        label,
        now,
        expires_at: now.saturating_add(crate::clock::millis(ttl)),
    }
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
            return failed(state, id, e.into_failure()).await;
        }
    };
    // Read again under the lock: a delete may have come first.
    let Some(snap) = state.db.get_snapshot_row(id, None).await? else {
        return Ok(());
    };
    if snap.state()? != SnapshotState::Creating {
        return Ok(());
    }
    let fail = Failure::new;
    let Some(row) = state.db.get_row(&snap.sandbox_id, None).await? else {
        return failed(
            state,
            id,
            fail(ProblemCode::SandboxNotFound, "the sandbox is gone".into()),
        )
        .await;
    };
    let sbx_state = row.state()?;
    if !sbx_state.is_live() || row.generation != snap.sandbox_generation {
        return failed(
            state,
            id,
            fail(
                ProblemCode::InvalidState,
                format!(
                    "sandbox {} became `{sbx_state}` (generation {}) before the capture started",
                    row.id, row.generation
                ),
            ),
        )
        .await;
    }
    let result = capture_locked(state, &snap, &row, &cancel).await;
    drop(handle);
    result
}

/// The capture itself, under the sandbox's lock (held by the caller): the
/// archive written, named by its hash, the snapshot marked `ready`, or
/// `failed` with the reason (leaving no blob behind).
async fn capture_locked(
    state: &AppState,
    snap: &SnapshotRow,
    row: &SandboxRow,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let id = snap.id.as_str();
    let fail = Failure::new;
    let Some(ext) = state.extensions.get(&row.extension) else {
        return failed(
            state,
            id,
            fail(
                ProblemCode::BackendUnavailable,
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
            fail(ProblemCode::SnapshotFailed, format!("snapshot store: {e}")),
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
            cancel,
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            let _ = blobs.remove_tmp(id);
            tracing::warn!(code = %e.code, message = %e.message, "capture failed");
            return failed(state, id, e.into_failure()).await;
        }
    };
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
            fail(
                ProblemCode::SnapshotFailed,
                format!("storing the archive: {e}"),
            ),
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

/// How long a cancelled exit snapshot is waited for before the teardown
/// goes on without it.
const EXIT_CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Before sandbox `row` (on its way out: its TTL ran out, or it was reaped
/// idle) is torn down: its exit snapshot, when its profile says
/// `ttl.on_expire: snapshot` and it has none yet. The snapshot is made and
/// recorded on the sandbox in one transaction before the capture starts,
/// so a crash never makes a second one; the capture is given `timeout`,
/// then cancelled (as at shutdown) and, if it still has not ended within
/// [`EXIT_CANCEL_GRACE`], left behind as `failed`. Never fails the
/// teardown: what went wrong is on the snapshot and in the events.
pub async fn exit_snapshot(state: &AppState, row: &SandboxRow, timeout: Duration) {
    if let Err(e) = exit_snapshot_inner(state, row, timeout).await {
        tracing::warn!(sandbox_id = %row.id, error = %e, "exit snapshot stopped on a storage error; the teardown goes on");
    }
}

async fn exit_snapshot_inner(
    state: &AppState,
    row: &SandboxRow,
    timeout: Duration,
) -> Result<(), StoreError> {
    let why = match row.termination_reason.as_deref() {
        Some("ttl_expired") => "its TTL ran out",
        Some("idle_reaped") => "it was reaped idle",
        Some("credits_exhausted") => "its project ran out of credits",
        _ => return Ok(()),
    };
    // `[credits] on_exhausted = "snapshot_and_destroy"` asks for it
    // whatever the profile says, and so does `pause` (whose sandbox is
    // destroyed only where its backend cannot pause: its work is kept).
    let policy_asks = row.termination_reason.as_deref() == Some("credits_exhausted")
        && matches!(
            state.settings.credits.on_exhausted,
            crate::config::OnExhausted::SnapshotAndDestroy | crate::config::OnExhausted::Pause
        );
    // Unassigned warm-pool members and sandboxes that never became ready
    // hold no one's work; a retried teardown has had its chance.
    if row.pool.is_some()
        || row.generation == 0
        || row.ready_at.is_none()
        || row.exit_snapshot.is_some()
        || row.teardown_attempts > 0
    {
        return Ok(());
    }
    let Some(profile) = state.catalog.profiles.get(&row.profile) else {
        // Its profile (and with it `on_expire`) left the catalog.
        state
            .db
            .record_exit_snapshot(
                &row.id,
                None,
                "no exit snapshot: the sandbox's profile is no longer in the catalog",
            )
            .await?;
        return Ok(());
    };
    if profile.spec.ttl.on_expire != sandboxer_api::OnExpire::Snapshot && !policy_asks {
        return Ok(());
    }
    if !capable(state, &row.extension, Capability::Snapshot) {
        state
            .db
            .record_exit_snapshot(
                &row.id,
                None,
                &format!(
                    "no exit snapshot: extension {} cannot snapshot",
                    row.extension
                ),
            )
            .await?;
        return Ok(());
    }
    let now = now_ms();
    let snap_id = new_id("snap");
    let new = snapshot_of(
        row,
        snap_id.clone(),
        Some(format!("exit snapshot: {why}")),
        now,
        profile.snapshot_ttl,
    );
    let quota = state.settings.snapshot_quota_per_project;
    let made = state
        .db
        .create_exit_snapshot(
            new,
            quota,
            &format!("exit snapshot {snap_id} started: {why}"),
            &format!(
                "no exit snapshot: project {} already holds {quota} snapshots (the quota)",
                row.project
            ),
        )
        .await?;
    if !matches!(made, Some(SnapshotCreated::New(_))) {
        return Ok(());
    }
    crate::fault::hit("teardown.exit_snapshot");
    let Some(snap_row) = state.db.get_snapshot_row(&snap_id, None).await? else {
        return Ok(());
    };
    // Registered like any capture: shutdown cancels it too.
    let handle = state.captures.begin(&row.id, &snap_id);
    let cancel = handle.token.clone();
    let started = std::time::Instant::now();
    let capture = capture_locked(state, &snap_row, row, &cancel);
    tokio::pin!(capture);
    let done = tokio::select! {
        r = &mut capture => Some(r),
        () = tokio::time::sleep(timeout) => {
            // A walk ends within one entry or read chunk once cancelled.
            cancel.cancel();
            tokio::time::timeout(EXIT_CANCEL_GRACE, &mut capture).await.ok()
        }
    };
    drop(handle);
    match done {
        Some(r) => r?,
        None => {
            // Still not ended: the teardown goes on, the snapshot is failed
            // and its partial archive removed.
            let _ = Blobs::new(&state.settings.data_dir).remove_tmp(&snap_id);
            failed(
                state,
                &snap_id,
                Failure::new(
                    ProblemCode::SnapshotCancelled,
                    format!("the exit snapshot took longer than {timeout:?} and was given up"),
                ),
            )
            .await?;
        }
    }
    tracing::info!(
        snapshot_id = %snap_id,
        seconds = started.elapsed().as_secs_f64(),
        "exit snapshot ended"
    );
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
                &Failure::new(
                    ProblemCode::Interrupted,
                    "sandboxerd stopped while this snapshot was being captured; nothing was kept",
                ),
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
