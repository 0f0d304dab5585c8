//! Stale resources on placement hosts: labelled containers, networks,
//! volumes and workdirs that no live sandbox owns (a daemon killed between
//! making something and recording it, a teardown done by hand, another
//! daemon's crash). Listed and reaped on demand (`/v1/hosts/{id}/stale`,
//! `reap-stale`), and by a periodic sweep that only reaps what it has seen
//! stale for a whole grace period, so nothing in the middle of being made
//! (or of being recorded) is ever taken for an orphan.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sandboxer_api::{SandboxState, StaleItem};
use tokio_util::sync::CancellationToken;

use crate::extensions::ExtError;
use crate::metrics::Counter;
use crate::store::StoreError;
use crate::AppState;

/// Why a host could not be swept.
#[derive(Debug, thiserror::Error)]
pub enum StaleError {
    /// The host could not be asked.
    #[error("{0}")]
    Host(ExtError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a live (not destroyed, not failed) sandbox row owns `sandbox_id`.
async fn is_live(state: &AppState, sandbox_id: &str) -> Result<bool, StoreError> {
    Ok(match state.db.get_row(sandbox_id, None).await? {
        Some(row) => !matches!(row.state()?, SandboxState::Destroyed | SandboxState::Failed),
        None => false,
    })
}

/// What sand-boxer left on host `host` that no live sandbox owns.
pub async fn stale_items(state: &AppState, host: &str) -> Result<Vec<StaleItem>, StaleError> {
    let owned = match state.extensions.inventory_for(host) {
        Some(ext) => match ext.inventory() {
            Some(inv) => inv.owned(host).await.map_err(StaleError::Host)?,
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let mut live = BTreeMap::new();
    let mut items = Vec::new();
    for item in owned {
        let is_live = match live.get(&item.sandbox_id) {
            Some(v) => *v,
            None => {
                let v = is_live(state, &item.sandbox_id).await?;
                live.insert(item.sandbox_id.clone(), v);
                v
            }
        };
        if !is_live {
            items.push(item);
        }
    }
    Ok(items)
}

/// Remove what each of `sandbox_ids` left on `host`. Each is reaped under
/// its sandbox lock and only if, under that lock, it still has no live row.
/// Answers how many were reaped, and the errors, one line per sandbox.
pub async fn reap(
    state: &AppState,
    host: &str,
    sandbox_ids: &BTreeSet<String>,
) -> (usize, Vec<String>) {
    let mut reaped = 0;
    let mut errors = Vec::new();
    for sandbox_id in sandbox_ids {
        // A sandbox being made or torn down right now is not touched.
        let _guard = state.locks.lock(sandbox_id).await;
        match is_live(state, sandbox_id).await {
            Ok(false) => {}
            Ok(true) => continue,
            Err(e) => {
                errors.push(format!("{sandbox_id}: {e}"));
                continue;
            }
        }
        let ext = state.extensions.inventory_for(host);
        let Some(inv) = ext.as_deref().and_then(|e| e.inventory()) else {
            errors.push(format!("{sandbox_id}: no backend places on host `{host}`"));
            continue;
        };
        match inv.reap(host, sandbox_id).await {
            Ok(()) => {
                reaped += 1;
                state.metrics.count(Counter::StaleReaped);
                tracing::info!(host, sandbox_id = %sandbox_id, "reaped stale resources");
            }
            Err(e) => errors.push(format!("{sandbox_id}: {e}")),
        }
    }
    (reaped, errors)
}

/// The hosts the sweep looks at: the configured placement hosts, and this
/// machine's own Docker Engine where ext.docker places (`local`).
pub fn swept_hosts(state: &AppState) -> Vec<String> {
    let mut hosts: Vec<String> = state.settings.hosts.iter().map(|h| h.id.clone()).collect();
    let local = crate::extensions::docker::HOST;
    if !hosts.iter().any(|h| h == local) && state.extensions.inventory_for(local).is_some() {
        hosts.push(local.to_owned());
    }
    hosts
}

/// The periodic sweep's memory: since when each (host, sandbox id) has
/// been seen stale without a break. It starts empty at every start, so a
/// restarted daemon waits a whole grace period again.
#[derive(Debug, Default)]
pub struct Sweeper {
    seen: HashMap<(String, String), Instant>,
}

impl Sweeper {
    /// Look at every host once; reap what has been stale for `grace`.
    /// Answers how many sandboxes' leftovers were reaped.
    pub async fn sweep(&mut self, state: &AppState, grace: Duration) -> usize {
        let now = Instant::now();
        let mut reaped = 0;
        for host in swept_hosts(state) {
            let items = match stale_items(state, &host).await {
                Ok(items) => items,
                Err(e) => {
                    // An unreachable host keeps what it had: the clock of
                    // its items is not reset, and not advanced either.
                    tracing::debug!(host = %host, error = %e, "stale sweep skipped a host");
                    continue;
                }
            };
            let ids: BTreeSet<String> = items.into_iter().map(|i| i.sandbox_id).collect();
            // For the status page: what the last sweep found on the host.
            state
                .stale_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host.clone(), ids.len());
            // Forget what is no longer stale on this host.
            self.seen
                .retain(|(h, id), _| h != &host || ids.contains(id));
            let mut due = BTreeSet::new();
            for id in ids {
                let since = *self.seen.entry((host.clone(), id.clone())).or_insert(now);
                if now.duration_since(since) >= grace {
                    due.insert(id);
                }
            }
            if due.is_empty() {
                continue;
            }
            let (n, errors) = reap(state, &host, &due).await;
            for e in &errors {
                tracing::warn!(host = %host, error = %e, "stale sweep could not reap");
            }
            reaped += n;
            for id in &due {
                self.seen.remove(&(host.clone(), id.clone()));
            }
        }
        reaped
    }
}

/// Sweep every `interval` until `stop` is cancelled (not started when no
/// host is configured or `interval` is zero).
pub async fn run(state: AppState, interval: Duration, grace: Duration, stop: CancellationToken) {
    // Ticks never overlap, so the lock is only ever taken by one tick.
    let sweeper = std::sync::Arc::new(tokio::sync::Mutex::new(Sweeper::default()));
    crate::periodic::every(interval, stop.clone(), "stale sweep", || {
        let (state, stop, sweeper) = (state.clone(), stop.clone(), sweeper.clone());
        async move {
            let mut sweeper = sweeper.lock().await;
            // A sweep waits on hosts over SSH: a stop cuts it short.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = sweeper.sweep(&state, grace) => {}
            }
            Ok::<(), std::convert::Infallible>(())
        }
    })
    .await;
}
