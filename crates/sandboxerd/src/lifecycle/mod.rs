//! The lifecycle: the operations a client asks for (create, destroy,
//! recreate, extend, touch, snapshot, restore, fork, grant, estimate) as
//! plain async functions over [`AppState`] that answer [`OpError`]; the
//! provisioning and teardown tasks they start (`provision.rs`,
//! `teardown.rs`); waiting for a state; and the start-up pass that
//! finishes what a previous run left in flight. Here: the per-sandbox
//! locks and [`wait_for`].
//!
//! Every step is written to SQLite before the side effect it leads to; each
//! sandbox's steps run one at a time under a per-sandbox lock. Nothing here
//! knows HTTP: `http/` parses, authorizes, calls one of these and renders.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandboxer_api::{Sandbox, SandboxState};
use tokio::sync::OwnedMutexGuard;

use crate::store::StoreError;
use crate::AppState;

pub mod access;
pub mod budget;
pub mod create;
pub mod credits;
pub mod error;
pub mod hosts;
pub mod metering;
pub mod ops;
pub mod pause;
pub mod pool;
pub mod provision;
pub mod reaper;
pub mod recover;
pub mod snapshots;
pub mod stale;
pub mod teardown;
pub mod validate;
pub mod watch;

pub use create::{create, Actor, Made};
pub use error::{Missing, OpError, OpResult, Refusal};

/// Per-sandbox async locks, so provision, teardown and recreate of one
/// sandbox never overlap while different sandboxes never wait on each other.
#[derive(Default)]
pub struct Locks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    /// Hold the lock of one sandbox.
    pub async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 1024 {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Ids with a task in flight (e.g. teardowns), so sweeps never start a second.
#[derive(Default)]
pub struct InFlight(Mutex<std::collections::HashSet<String>>);

impl InFlight {
    /// Claim `id`; false when it is already claimed.
    pub fn begin(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
    }

    /// Release `id`.
    pub fn end(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Whether `id` is claimed.
    pub fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
}

/// Wait until `done` holds for the sandbox's state, or `timeout` passes;
/// answers the sandbox as it is then.
pub async fn wait_for(
    state: &AppState,
    id: &str,
    project: Option<&str>,
    timeout: Duration,
    done: impl Fn(SandboxState) -> bool,
) -> Result<Option<Sandbox>, StoreError> {
    let mut rx = state.events.subscribe();
    let deadline = Instant::now() + timeout;
    loop {
        let Some(sbx) = state.db.get_sandbox(id, project).await? else {
            return Ok(None);
        };
        if done(sbx.state) || Instant::now() >= deadline {
            return Ok(Some(sbx));
        }
        // Wait for a change of this sandbox (or a lag, which may hide one).
        loop {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Err(_) => break,
                Ok(Ok(changed)) if &*changed == id => break,
                Ok(Ok(_)) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    return state.db.get_sandbox(id, project).await;
                }
            }
        }
    }
}
