//! The router: which extension and host a sandbox runs on.
//!
//! A profile either binds one `extension` (no routing; nothing is checked
//! live, the provision reports what goes wrong) or names `routing` with a
//! policy and candidates. The router puts the candidates in the policy's
//! order, skips those that lack a capability the request needs or are
//! unavailable right now, and chooses the first left. The decision is
//! recorded on the sandbox as its `route`; when the chosen candidate fails
//! before the sandbox is ready, [`failover`] moves it to the next one. See
//! `docs/routing.md`.
use std::time::Duration;

use sandboxer_api::{
    CostBreakdown, ExtensionClass, ExtensionSpec, Profile, Route, RouteCandidate, Routing,
    RoutingPolicy,
};

use crate::catalog::LoadedProfile;
use crate::extensions::ExtError;
use crate::metrics::Counter;
use crate::store::{Rerouted, StoreError};
use crate::AppState;

// Kept with the ledger, which records it (a reroute moves a sandbox's
// escrow to a new target); the router is what chooses one.
pub use crate::store::Target;
// The isolation order is the catalog's (it checks profiles against it).
pub use crate::catalog::isolates_enough;

/// The router's answer for a create or an estimate.
#[derive(Debug, Clone)]
pub struct Placed {
    pub target: Target,
    /// `None` for profiles bound to one extension.
    pub route: Option<Route>,
}

/// What a request asks of the placement.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// `placement.host` of the create.
    pub host: Option<String>,
    /// A fork runs where its snapshot was taken...
    pub fork_of: Option<String>,
    /// ...or on another extension that reads the same archives.
    pub fork_readers: Vec<String>,
}

/// Why nothing can be placed.
#[derive(Debug, Clone)]
pub enum PlaceError {
    /// `placement.host` is not a host of any candidate; lists the hosts there are.
    UnknownHost { host: String, hosts: Vec<String> },
    /// The bound extension has no code in this daemon.
    NotBuiltIn(String),
    /// The bound extension places on hosts, and none is configured.
    NoHosts(String),
    /// Every candidate was skipped; the route says why.
    NoCandidate(Route),
}

/// What the router knows of one candidate.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub spec: &'a ExtensionSpec,
    /// Hosts the backend places on (empty when it has no code here).
    pub hosts: Vec<String>,
    /// Those of `hosts` that failed their last connection attempt.
    pub down: Vec<String>,
    pub built_in: bool,
    pub breakdown: CostBreakdown,
}

/// Order `candidates` by `policy` (stable: listed order breaks ties).
pub fn order<'a>(policy: RoutingPolicy, mut candidates: Vec<Candidate<'a>>) -> Vec<Candidate<'a>> {
    match policy {
        RoutingPolicy::Explicit => {}
        RoutingPolicy::PreferSelfHosted => candidates.sort_by_key(|c| match c.spec.class {
            ExtensionClass::SelfHosted => 0,
            ExtensionClass::Saas => 1,
        }),
        RoutingPolicy::LowestCost => candidates.sort_by_key(|c| c.breakdown.credits),
    }
    candidates
}

/// Why `c` cannot take this request whatever its availability, if it cannot.
pub fn static_skip(
    profile: &Profile,
    routing: &Routing,
    needs: &Needs,
    c: &Candidate<'_>,
) -> Option<String> {
    let caps = &c.spec.capabilities;
    if !c.built_in {
        return Some("no backend of this id is built into this daemon".into());
    }
    if let Some(ext) = &needs.fork_of {
        if *ext != c.spec.id && !needs.fork_readers.contains(&c.spec.id) {
            return Some(format!("the snapshot to fork was taken on {ext}"));
        }
        if !caps.restore {
            return Some("cannot start sandboxes from snapshots".into());
        }
    }
    if !isolates_enough(&caps.isolation, profile.isolation) {
        return Some(format!(
            "does not offer isolation `{}` or stronger",
            wire(&profile.isolation)
        ));
    }
    if !caps.network_policies.contains(&profile.network.mode) {
        return Some(format!(
            "does not offer network mode `{}`",
            wire(&profile.network.mode)
        ));
    }
    if routing.requires_snapshot && !(caps.snapshot && caps.restore) {
        return Some("cannot snapshot and restore, which the profile requires".into());
    }
    if let Some(host) = &needs.host {
        if !c.hosts.contains(host) {
            return Some(format!("does not place on host `{host}`"));
        }
    }
    None
}

fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The host of `hosts` to place on: the one asked for, else the profile's
/// preferred then fallback hosts, then the backend's others, leaving out
/// those in `tried` and putting those known `down` last.
pub fn choose_host(
    profile: &Profile,
    hosts: &[String],
    asked: Option<&str>,
    tried: &[String],
    down: &[String],
) -> Option<String> {
    if let Some(h) = asked {
        return hosts.iter().find(|x| *x == h).cloned();
    }
    let listed = profile
        .placement
        .prefer
        .iter()
        .chain(&profile.placement.fallback);
    let mut order: Vec<&String> = Vec::new();
    for h in listed.filter(|h| hosts.contains(h)).chain(hosts) {
        if !order.contains(&h) && !tried.contains(h) {
            order.push(h);
        }
    }
    order
        .iter()
        .find(|h| !down.contains(h))
        .or(order.first())
        .map(|h| (*h).clone())
}

/// Those of `hosts` whose last connection attempt from `ext` failed.
pub fn known_down(ext: &dyn crate::extensions::Extension, hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| ext.host_known_down(h))
        .cloned()
        .collect()
}

fn candidate<'a>(
    state: &AppState,
    spec: &'a ExtensionSpec,
    profile: &LoadedProfile,
    ttl: Duration,
) -> Candidate<'a> {
    let code = state.extensions.get(&spec.id);
    let factor = profile.spec.price_factor_percent;
    let breakdown = match &code {
        Some(ext) => ext.estimate_cost(&spec.pricing, factor, ttl),
        None => crate::ledger::estimate(&spec.pricing, factor, ttl),
    };
    let hosts = code.as_ref().map(|e| e.hosts()).unwrap_or_default();
    Candidate {
        spec,
        down: code
            .as_ref()
            .map(|e| known_down(e.as_ref(), &hosts))
            .unwrap_or_default(),
        hosts,
        built_in: code.is_some(),
        breakdown,
    }
}

fn target(profile: &LoadedProfile, c: &Candidate<'_>, host: String) -> Target {
    Target {
        extension: c.spec.id.clone(),
        host,
        rate_centicredits: crate::ledger::rate_centicredits(
            &c.spec.pricing,
            profile.spec.price_factor_percent,
        ),
        paused_rate_centicredits: crate::ledger::paused_rate_centicredits(
            &c.spec.pricing,
            profile.spec.price_factor_percent,
        ),
        estimate_credits: c.breakdown.credits,
        breakdown: c.breakdown.clone(),
    }
}

/// Place a sandbox of `profile` living `ttl`.
pub async fn place(
    state: &AppState,
    profile: &LoadedProfile,
    ttl: Duration,
    needs: &Needs,
) -> Result<Placed, PlaceError> {
    let spec = &profile.spec;
    let Some(routing) = &spec.routing else {
        // Bound: no live check; a backend that cannot provision says so in
        // the sandbox's failure.
        let ext_id = spec.extension.clone().unwrap_or_default();
        let Some(ext_spec) = state.catalog.extensions.get(&ext_id) else {
            return Err(PlaceError::NotBuiltIn(ext_id));
        };
        let c = candidate(state, ext_spec, profile, ttl);
        if !c.built_in {
            return Err(PlaceError::NotBuiltIn(ext_id));
        }
        if c.hosts.is_empty() {
            return Err(PlaceError::NoHosts(ext_id));
        }
        let host = match choose_host(spec, &c.hosts, needs.host.as_deref(), &[], &c.down) {
            Some(h) => h,
            None if needs.host.is_some() => {
                return Err(PlaceError::UnknownHost {
                    host: needs.host.clone().unwrap_or_default(),
                    hosts: c.hosts.clone(),
                })
            }
            None => String::new(),
        };
        return Ok(Placed {
            target: target(profile, &c, host),
            route: None,
        });
    };
    let listed: Vec<Candidate<'_>> = routing
        .candidates
        .iter()
        .filter_map(|id| state.catalog.extensions.get(id))
        .map(|s| candidate(state, s, profile, ttl))
        .collect();
    if let Some(host) = &needs.host {
        if !listed.iter().any(|c| c.hosts.contains(host)) {
            let mut hosts: Vec<String> = listed.iter().flat_map(|c| c.hosts.clone()).collect();
            hosts.sort();
            hosts.dedup();
            return Err(PlaceError::UnknownHost {
                host: host.clone(),
                hosts,
            });
        }
    }
    let ordered = order(routing.policy, listed);
    let mut route = Route {
        policy: routing.policy,
        considered: Vec::with_capacity(ordered.len()),
        chosen: None,
    };
    let mut chosen = None;
    for c in &ordered {
        let mut skipped = static_skip(spec, routing, needs, c);
        if skipped.is_none() && chosen.is_none() {
            // Only probed until one qualifies: later candidates are not needed.
            if let Some(ext) = state.extensions.get(&c.spec.id) {
                let a = ext.availability().await;
                if !a.available {
                    skipped = Some(format!(
                        "unavailable: {}",
                        a.reason.unwrap_or_else(|| "the backend says so".into())
                    ));
                }
            }
            if skipped.is_none() {
                let host = choose_host(spec, &c.hosts, needs.host.as_deref(), &[], &c.down)
                    .unwrap_or_default();
                chosen = Some(target(profile, c, host));
                route.chosen = Some(c.spec.id.clone());
            }
        }
        route.considered.push(RouteCandidate {
            extension: c.spec.id.clone(),
            estimate_credits: c.breakdown.credits,
            skipped,
        });
    }
    match chosen {
        Some(target) => Ok(Placed {
            target,
            route: Some(route),
        }),
        None => Err(PlaceError::NoCandidate(route)),
    }
}

/// The reasons every candidate of `route` was skipped, for a message.
pub fn explain(route: &Route) -> String {
    route
        .considered
        .iter()
        .map(|c| {
            format!(
                "{}: {}",
                c.extension,
                c.skipped.as_deref().unwrap_or("not tried")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The sandbox's current candidate failed before ready with `error` (what it
/// made is already torn down). Move the sandbox to the next candidate of
/// its route that qualifies now: same id, new extension and host, an event
/// saying why. Answers `true` when it moved (provision it again), `false`
/// when there is no route or no candidate left (the failed one is recorded
/// in the route either way).
pub async fn failover(
    state: &AppState,
    id: &str,
    generation: u32,
    error: &ExtError,
) -> Result<bool, StoreError> {
    let Some(row) = state.db.get_row(id, None).await? else {
        return Ok(false);
    };
    let Some(mut route) = row
        .route
        .as_deref()
        .and_then(|r| serde_json::from_str::<Route>(r).ok())
    else {
        return Ok(false);
    };
    if row.generation != generation {
        return Ok(false);
    }
    let Some(profile) = state.catalog.profiles.get(&row.profile) else {
        return Ok(false);
    };
    let Some(routing) = profile.spec.routing.clone() else {
        return Ok(false);
    };
    let failed = row.extension.clone();
    let Some(at) = route.considered.iter().position(|c| c.extension == failed) else {
        return Ok(false);
    };
    route.considered[at].skipped = Some(format!(
        "failed before ready: {}: {}",
        error.code, error.message
    ));
    let ttl = Duration::from_millis(u64::try_from(row.expires_at - row.created_at).unwrap_or(0));
    // A fork's route was narrowed to its snapshot's extension at create, so
    // its other candidates are already skipped; a `placement.host` asked for
    // skipped the candidates without it the same way.
    let needs = Needs::default();
    for i in at + 1..route.considered.len() {
        if route.considered[i].skipped.is_some() {
            continue;
        }
        let Some(spec) = state.catalog.extensions.get(&route.considered[i].extension) else {
            route.considered[i].skipped = Some("no longer in the extension catalog".into());
            continue;
        };
        let c = candidate(state, spec, profile, ttl);
        if let Some(why) = static_skip(&profile.spec, &routing, &needs, &c) {
            route.considered[i].skipped = Some(why);
            continue;
        }
        if let Some(ext) = state.extensions.get(&spec.id) {
            let a = ext.availability().await;
            if !a.available {
                route.considered[i].skipped = Some(format!(
                    "unavailable: {}",
                    a.reason.unwrap_or_else(|| "the backend says so".into())
                ));
                continue;
            }
        }
        let host = if c.hosts.contains(&row.host) {
            row.host.clone()
        } else {
            choose_host(&profile.spec, &c.hosts, None, &[], &c.down).unwrap_or_default()
        };
        let to = target(profile, &c, host);
        route.chosen = Some(to.extension.clone());
        route.considered[i].estimate_credits = to.estimate_credits;
        let reason = format!(
            "failover: {failed} failed before ready ({}: {}); trying {} at {}",
            error.code, error.message, to.extension, to.host
        );
        match state
            .db
            .reroute(
                id,
                generation,
                &failed,
                &to,
                &route,
                &reason,
                state.settings.credits.enforce,
            )
            .await?
        {
            Rerouted::Done => {
                tracing::warn!(sandbox_id = %id, from = %failed, to = %to.extension, "failed over to the next candidate");
                state.metrics.count(Counter::RouteFailovers);
                state.notify(id);
                return Ok(true);
            }
            Rerouted::InsufficientCredits(short) => {
                route.considered[i].skipped = Some(format!(
                    "insufficient credits: {} needed, {} available",
                    short.needed, short.available
                ));
                route.chosen = Some(failed.clone());
            }
            Rerouted::Refused => return Ok(false),
        }
    }
    route.chosen = Some(failed);
    state.db.set_route(id, generation, &route).await?;
    Ok(false)
}
