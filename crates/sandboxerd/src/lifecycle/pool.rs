//! Warm pools: for each profile that declares `pool: {size, max_age}`, a
//! task keeps `size` sandboxes provisioned and unassigned, and a create of
//! that profile is served by one of them in a single transaction.
//!
//! - A member is a real sandbox, provisioned through the normal path on the
//!   extension and host the router picks, held as a row that belongs to no
//!   project (`store::POOL_PROJECT`), at generation 0, labelled
//!   [`POOL_LABEL`]`=<profile>`, priced at 0 with nothing reserved, and
//!   expiring at made + `max_age`: the reaper expires it like any other
//!   sandbox, which is also what happens to members a crashed daemon left.
//! - A hit (`Db::claim_pooled`) assigns the consumer, labels, lifetime from
//!   now, price and reservation, and records the create's events, all in one
//!   transaction on the writer connection; billing starts there.
//! - The refill task starts at most `pools.refill_concurrency` members at
//!   once, at least `pools.refill_interval` apart, backs off from 1s (doubling
//!   up to `pools.max_backoff`) after failures, replaces members shortly
//!   before they reach `max_age`, probes ready members every
//!   `pools.probe_interval`, and stops on shutdown.
//! - Members are never carried over a restart: graceful shutdown tears the
//!   unassigned ones down, and the start-up reconciler retires whatever a
//!   crash left (the daemon that made them may have had another catalog,
//!   configuration or binary); the refill task makes fresh ones.
//!
//! See `docs/pools.md`.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandboxer_api::{CreateSandbox, SandboxState};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, LoadedProfile, PoolPolicy};
use crate::config::PoolSettings;
use crate::extensions::Liveness;
use crate::metrics::{PoolEvent, PoolGauge};
use crate::routing::{self, Needs, PlaceError};
use crate::store::{
    new_id, now_ms, Billing, Change, Created, NewSandbox, StoreError, Transition, POOL_ACTOR,
    POOL_PROJECT,
};
use crate::AppState;

/// The label every unassigned member carries: `io.sandboxer.pool=<profile id>`.
pub const POOL_LABEL: &str = "io.sandboxer.pool";

/// How often a refill task looks at its pool when nothing wakes it.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// After a handout wakes a refill task, how long it lets the create's
/// answer (its audit write, its response) go out before it starts a
/// replacement, so the two do not compete for the writer and the cores.
const AFTER_HANDOUT: Duration = Duration::from_millis(5);

/// The warm pools of this daemon: one per profile with a `pool` (none when
/// `[pools] enabled = false`).
#[derive(Default)]
pub struct Pools {
    /// Wakes the refill task of a profile at once (after a hit or a loss).
    wakes: HashMap<String, Arc<Notify>>,
    /// The refill tasks, awaited on shutdown before members are retired.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Pools {
    /// The pools `catalog` declares, unless `settings` turn them off.
    pub fn new(catalog: &Catalog, settings: &PoolSettings) -> Self {
        let wakes = if settings.enabled {
            catalog
                .profiles
                .iter()
                .filter(|(_, p)| p.pool.is_some())
                .map(|(id, _)| (id.clone(), Arc::new(Notify::new())))
                .collect()
        } else {
            HashMap::new()
        };
        Self {
            wakes,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Whether creates of `profile` are served from a pool.
    pub fn is_pooled(&self, profile: &str) -> bool {
        self.wakes.contains_key(profile)
    }

    /// Tell the refill task of `profile` to look at its pool now.
    pub fn wake(&self, profile: &str) {
        if let Some(w) = self.wakes.get(profile) {
            w.notify_one();
        }
    }

    /// Profile ids with a pool, in order.
    pub fn profiles(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.wakes.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }
}

/// Why a create can never be served by a pooled sandbox, if it cannot: a
/// member is made before the request, so it holds nothing the request
/// supplies (inputs, a snapshot to start from).
pub fn ineligible(req: &CreateSandbox) -> Option<&'static str> {
    if req.from_snapshot.is_some() {
        Some("from_snapshot")
    } else if !req.inputs.is_empty() {
        Some("inputs")
    } else {
        None
    }
}

/// Serve the create `new` (validated, placed, priced) from the pool of its
/// profile when it has one and a ready member is on the extension and host
/// the router chose. `None`: a miss (or no pool), provision as usual.
/// `Some` is the create's outcome: the claimed sandbox, or the refusal
/// (idempotent replay, cap, credits) a normal create would have met; a
/// refused create leaves the member in the pool.
pub async fn hand_out(
    state: &AppState,
    req: &CreateSandbox,
    new: &NewSandbox,
    idempotency: Option<(&str, &str)>,
    cap: Option<i64>,
    billing: &Billing,
) -> Result<Option<Created>, StoreError> {
    let profile = new.profile.as_str();
    if !state.pools.is_pooled(profile) {
        return Ok(None);
    }
    if ineligible(req).is_some() {
        state.metrics.pool(profile, PoolEvent::MissIneligible);
        return Ok(None);
    }
    let claimed = if state
        .db
        .pool_has_ready(profile, &new.extension, &new.host)
        .await?
    {
        state
            .db
            .claim_pooled(profile, new, idempotency, cap, billing)
            .await?
    } else {
        None
    };
    match claimed {
        None => {
            state.metrics.pool(profile, PoolEvent::MissEmpty);
            state.pools.wake(profile);
            Ok(None)
        }
        Some(Created::New(sbx)) => {
            tracing::info!(sandbox_id = %sbx.id, profile, "create served from the warm pool");
            state.metrics.pool(profile, PoolEvent::Hit);
            state.metrics.observe_create_ready(0.0);
            state.pools.wake(profile);
            state.notify(&sbx.id);
            Ok(Some(Created::New(sbx)))
        }
        Some(refused) => Ok(Some(refused)),
    }
}

/// The gauges of every pool: its size and its members by state.
pub async fn gauges(state: &AppState) -> Result<Vec<PoolGauge>, StoreError> {
    let profiles = state.pools.profiles();
    if profiles.is_empty() {
        return Ok(Vec::new());
    }
    let mut members: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for (pool, st, n) in state.db.pool_counts().await? {
        members.entry(pool).or_default().push((st, n));
    }
    Ok(profiles
        .into_iter()
        .map(|p| PoolGauge {
            profile: p.to_owned(),
            size: state
                .catalog
                .profiles
                .get(p)
                .and_then(|l| l.pool)
                .map_or(0, |pool| pool.size),
            members: members.remove(p).unwrap_or_default(),
        })
        .collect())
}

/// Start the refill task of every pool; they stop when `stop` is cancelled.
pub fn start(state: &AppState, stop: &CancellationToken) {
    let mut tasks = state.pools.tasks.lock().unwrap_or_else(|p| p.into_inner());
    for profile in state.pools.profiles() {
        tasks.push(
            state
                .tasks
                .spawn(refill(state.clone(), profile.to_owned(), stop.clone())),
        );
    }
}

/// On shutdown (after `stop` was cancelled): wait for the refill tasks to
/// end, then move every unassigned member to `destroying` and start its
/// teardown (tracked like any lifecycle task; what does not finish within
/// the grace is finished by the next start).
pub async fn shut_down(state: &AppState) {
    let tasks: Vec<JoinHandle<()>> =
        std::mem::take(&mut *state.pools.tasks.lock().unwrap_or_else(|p| p.into_inner()));
    for task in tasks {
        let _ = task.await;
    }
    match retire_unassigned(
        state,
        "warm-pool member retired: sandboxerd is shutting down",
    )
    .await
    {
        Ok(ids) => {
            for id in ids {
                state.spawn(super::teardown::destroy(state.clone(), id));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "retiring warm-pool members at shutdown failed; the next start retires them")
        }
    }
}

/// Move every unassigned member that is not on its way out yet to
/// `destroying` (`reason` on its event); answers their ids. The caller
/// starts the teardowns.
pub async fn retire_unassigned(state: &AppState, reason: &str) -> Result<Vec<String>, StoreError> {
    let mut retired = Vec::new();
    for id in state.db.unassigned_members().await? {
        let change = Change {
            reason,
            termination: Some((sandboxer_api::TerminationReason::Destroyed, reason)),
            ..Change::default()
        };
        let from = [
            SandboxState::Requested,
            SandboxState::Provisioning,
            SandboxState::Ready,
            SandboxState::Active,
        ];
        if let Transition::Done { .. } = state
            .db
            .transition(&id, &from, SandboxState::Destroying, change)
            .await?
        {
            state.notify(&id);
            retired.push(id);
        }
    }
    Ok(retired)
}

/// How long after failed provisions the next start waits: 1s, doubling per
/// failure in a row, at most `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << shift).min(max)
}

/// How long before `max_age` a member is replaced (its successor is started
/// then; the reaper retires it at `max_age`): a quarter of `max_age`, at
/// most 10s.
pub fn lead(max_age: Duration) -> Duration {
    (max_age / 4).min(Duration::from_secs(10))
}

/// How a member's provisioning ended, as its refill task learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ready,
    Failed,
    /// Retired or gone meanwhile (shutdown, an operator's delete).
    Other,
}

/// The refill task of one pool.
#[tracing::instrument(skip_all, fields(profile = %profile_id))]
async fn refill(state: AppState, profile_id: String, stop: CancellationToken) {
    let Some(profile) = state.catalog.profiles.get(&profile_id) else {
        return;
    };
    let Some(policy) = profile.pool else {
        return;
    };
    let Some(wake) = state.pools.wakes.get(&profile_id).cloned() else {
        return;
    };
    let cfg = state.settings.pools.clone();
    let concurrency = usize::try_from(cfg.refill_concurrency).unwrap_or(1).max(1);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let mut in_flight = 0usize;
    let mut failures = 0u32;
    let mut not_before = Instant::now();
    let mut next_probe = Instant::now() + cfg.probe_interval;
    let lead_ms = crate::clock::millis(lead(policy.max_age));
    tracing::info!(size = policy.size, max_age = %humantime::format_duration(policy.max_age), "warm pool refill started");
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut wait = CHECK_INTERVAL;
        match state.db.pool_stock(&profile_id, now_ms() + lead_ms).await {
            Ok(stock) if stock < policy.size && in_flight < concurrency => {
                let now = Instant::now();
                if now >= not_before {
                    not_before = now + cfg.refill_interval;
                    match start_member(&state, profile, &policy).await {
                        Ok(id) => {
                            in_flight += 1;
                            let st = state.clone();
                            let tx = done_tx.clone();
                            state.spawn(async move {
                                super::provision::provision(st.clone(), id.clone(), 0, None).await;
                                let outcome = match st.db.get_row(&id, None).await {
                                    Ok(Some(row)) => match row.state() {
                                        Ok(SandboxState::Ready) => Outcome::Ready,
                                        Ok(SandboxState::Failed) => Outcome::Failed,
                                        _ => Outcome::Other,
                                    },
                                    _ => Outcome::Other,
                                };
                                let _ = tx.send(outcome);
                            });
                        }
                        Err(e) => {
                            failures += 1;
                            state.metrics.pool(&profile_id, PoolEvent::RefillFailure);
                            let pause = backoff(failures, cfg.max_backoff);
                            tracing::warn!(error = %e, failures, ?pause, "cannot start a warm-pool member");
                            not_before = Instant::now() + pause;
                        }
                    }
                    // Look again at once: more may be missing.
                    continue;
                }
                wait = wait.min(not_before - now);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "counting the warm pool failed; retrying"),
        }
        if Instant::now() >= next_probe {
            probe_members(&state, &profile_id).await;
            next_probe = Instant::now() + cfg.probe_interval;
        }
        wait = wait.min(next_probe.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {
                not_before = not_before.max(Instant::now() + AFTER_HANDOUT);
            }
            Some(outcome) = done_rx.recv() => {
                in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Ready => failures = 0,
                    Outcome::Failed => {
                        failures += 1;
                        state.metrics.pool(&profile_id, PoolEvent::RefillFailure);
                        let pause = backoff(failures, cfg.max_backoff);
                        tracing::warn!(failures, ?pause, "a warm-pool member failed before ready; backing off");
                        not_before = not_before.max(Instant::now() + pause);
                    }
                    Outcome::Other => {}
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Insert one member (placed where the router puts a create of this
/// profile now); answers its id, or why it cannot be placed.
async fn start_member(
    state: &AppState,
    profile: &LoadedProfile,
    policy: &PoolPolicy,
) -> Result<String, String> {
    let spec = &profile.spec;
    let placed = routing::place(state, profile, profile.ttl_default, &Needs::default())
        .await
        .map_err(|e| match e {
            PlaceError::NotBuiltIn(ext) => format!("extension {ext} is not built in"),
            PlaceError::NoHosts(ext) => format!("extension {ext} has no placement host configured"),
            PlaceError::UnknownHost { host, .. } => format!("unknown host {host}"),
            PlaceError::NoCandidate(route) => format!(
                "no routing candidate can take it now: {}",
                routing::explain(&route)
            ),
        })?;
    let now = now_ms();
    let expires_at = now.saturating_add(crate::clock::millis(policy.max_age));
    let new = NewSandbox {
        id: new_id("sbx"),
        profile: spec.id.clone(),
        profile_version: spec.version,
        extension: placed.target.extension,
        host: placed.target.host,
        consumer: sandboxer_api::Consumer {
            actor_type: "adm".into(),
            actor: POOL_ACTOR.into(),
            project: POOL_PROJECT.into(),
        },
        inputs: BTreeMap::new(),
        labels: BTreeMap::from([(POOL_LABEL.to_owned(), spec.id.clone())]),
        now,
        expires_at,
        max_expires_at: expires_at,
        estimate_credits: 0,
        placement_host: None,
        name: None,
        reuse_by_name: false,
    };
    state
        .db
        .insert_pool_member(&new, &spec.id)
        .await
        .map_err(|e| format!("storage: {e}"))?;
    Ok(new.id)
}

/// Probe the ready members of a pool; one its backend no longer holds is
/// retired (torn down to clear leftovers) and thus replaced.
async fn probe_members(state: &AppState, profile_id: &str) {
    let members = match state.db.ready_members(profile_id).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "listing warm-pool members failed");
            return;
        }
    };
    for m in members {
        let Some(ext) = state.extensions.get(&m.extension) else {
            continue;
        };
        if !matches!(
            ext.probe(&m.id, m.backend_state.as_ref()).await,
            Ok(Liveness::Gone)
        ) {
            continue;
        }
        let change = Change {
            reason: "warm-pool member found gone from its backend; replaced",
            generation: Some(0),
            termination: Some((
                sandboxer_api::TerminationReason::BackendLost,
                "warm-pool member found gone from its backend",
            )),
            ..Change::default()
        };
        match state
            .db
            .transition(
                &m.id,
                &[SandboxState::Ready],
                SandboxState::Destroying,
                change,
            )
            .await
        {
            Ok(Transition::Done { .. }) => {
                tracing::warn!(sandbox_id = %m.id, "warm-pool member gone from its backend");
                state.metrics.pool(profile_id, PoolEvent::Lost);
                state.notify(&m.id);
                state.spawn(super::teardown::destroy(state.clone(), m.id));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sandbox_id = %m.id, error = %e, "retiring a lost warm-pool member failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap() {
        let max = Duration::from_secs(60);
        let got: Vec<u64> = (1..=8).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(0, max), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX, max), max);
    }

    #[test]
    fn members_are_replaced_a_quarter_of_max_age_early_at_most_ten_seconds() {
        assert_eq!(lead(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(lead(Duration::from_secs(3600)), Duration::from_secs(10));
    }

    #[test]
    fn only_requests_without_inputs_or_a_snapshot_can_be_served() {
        let mut req = CreateSandbox {
            profile: "profile.x".into(),
            ..CreateSandbox::default()
        };
        assert_eq!(ineligible(&req), None);
        req.labels.insert("team".into(), "a".into());
        req.ttl = Some("5m".into());
        assert_eq!(ineligible(&req), None);
        req.inputs.insert("repo".into(), "/src".into());
        assert_eq!(ineligible(&req), Some("inputs"));
        req.from_snapshot = Some("snap_1".into());
        assert_eq!(ineligible(&req), Some("from_snapshot"));
    }
}
