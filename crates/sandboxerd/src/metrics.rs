//! Prometheus metrics, kept in memory and rendered as text on `/metrics`.
//!
//! Rendered by hand, not with `prometheus-client`: that crate writes only
//! OpenMetrics (counter families named without `_total`, `# EOF`,
//! `le="1.0"`), served as `application/openmetrics-text`, while `/metrics`
//! is documented (OpenAPI, tests) as `text/plain; version=0.0.4`.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the create→ready histogram buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The plain counters, each rendered `sandboxer_<name>_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Reaper sweeps run.
    ReaperSweeps,
    /// Sandboxes moved to another host after theirs could not be used.
    HostFailovers,
    /// Sandboxes whose stale leftovers on a host were reaped.
    StaleReaped,
    /// Sandboxes expired by their TTL.
    SandboxesExpired,
    /// Sandboxes destroyed for being idle.
    SandboxesIdleReaped,
    /// Teardown attempts after a failed one.
    TeardownRetries,
    /// Ready sandboxes found gone from their backend.
    SandboxesBackendLost,
    /// Lifecycle events delivered to State Hub.
    EventsDelivered,
    /// Failed deliveries of lifecycle events (retried).
    EventDeliveryFailures,
    /// Metering ticks run.
    MeteringTicks,
    /// Credits debited for running time.
    CreditsDebited,
    /// Sandbox generations settled (final debit, rest released).
    SandboxesSettled,
    /// Creates moved to the next routing candidate after failing before ready.
    RouteFailovers,
    /// Processes killed in sandboxes for going over their memory limit.
    OomKills,
    /// Sandboxes that ended because their init did (killed or exited).
    SandboxesInitEnded,
}

impl Counter {
    /// Every counter, in the order they are rendered.
    pub const ALL: [Counter; 15] = [
        Counter::ReaperSweeps,
        Counter::HostFailovers,
        Counter::StaleReaped,
        Counter::SandboxesExpired,
        Counter::SandboxesIdleReaped,
        Counter::TeardownRetries,
        Counter::SandboxesBackendLost,
        Counter::EventsDelivered,
        Counter::EventDeliveryFailures,
        Counter::MeteringTicks,
        Counter::CreditsDebited,
        Counter::SandboxesSettled,
        Counter::RouteFailovers,
        Counter::OomKills,
        Counter::SandboxesInitEnded,
    ];

    /// The name (without `sandboxer_` and `_total`) and the help text.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            Counter::ReaperSweeps => ("reaper_sweeps", "Reaper sweeps run."),
            Counter::HostFailovers => (
                "host_failovers",
                "Sandboxes moved to another host after theirs could not be used.",
            ),
            Counter::StaleReaped => (
                "stale_reaped",
                "Sandboxes whose stale leftovers on a host were reaped.",
            ),
            Counter::SandboxesExpired => ("sandboxes_expired", "Sandboxes expired by their TTL."),
            Counter::SandboxesIdleReaped => (
                "sandboxes_idle_reaped",
                "Sandboxes destroyed for being idle.",
            ),
            Counter::TeardownRetries => {
                ("teardown_retries", "Teardown attempts after a failed one.")
            }
            Counter::SandboxesBackendLost => (
                "sandboxes_backend_lost",
                "Ready sandboxes found gone from their backend.",
            ),
            Counter::EventsDelivered => (
                "events_delivered",
                "Lifecycle events delivered to State Hub.",
            ),
            Counter::EventDeliveryFailures => (
                "event_delivery_failures",
                "Failed deliveries of lifecycle events (retried).",
            ),
            Counter::MeteringTicks => ("metering_ticks", "Metering ticks run."),
            Counter::OomKills => (
                "oom_kills",
                "Processes killed in sandboxes for going over their memory limit.",
            ),
            Counter::SandboxesInitEnded => (
                "sandboxes_init_ended",
                "Sandboxes that ended because their init did (killed or exited).",
            ),
            Counter::CreditsDebited => ("credits_debited", "Credits debited for running time."),
            Counter::SandboxesSettled => (
                "sandboxes_settled",
                "Sandbox generations settled (final debit, rest released).",
            ),
            Counter::RouteFailovers => (
                "route_failovers",
                "Creates moved to the next routing candidate after failing before ready.",
            ),
        }
    }
}

/// What happened in a warm pool, counted per profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEvent {
    /// A create was served by a pooled sandbox.
    Hit,
    /// A create the pool could serve found no ready member.
    MissEmpty,
    /// A create the pool can never serve (inputs, `from_snapshot`).
    MissIneligible,
    /// Starting or provisioning a member failed.
    RefillFailure,
    /// A ready member was found gone from its backend and replaced.
    Lost,
}

/// Counters of one warm pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounters {
    pub hits: u64,
    pub misses_empty: u64,
    pub misses_ineligible: u64,
    pub refill_failures: u64,
    pub lost: u64,
}

/// A pool's target and its members now, for the gauges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolGauge {
    pub profile: String,
    /// `pool.size` of the profile.
    pub size: u32,
    /// Unassigned members by state (`requested`, `provisioning`, `ready`).
    pub members: Vec<(String, i64)>,
}

/// A per-sandbox usage series: name, help, type and how to read it.
type UsageGauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&sandboxer_api::Usage) -> f64,
);

/// Counters and histograms of the daemon.
#[derive(Default)]
pub struct Metrics {
    /// Warm-pool counters by profile.
    pools: Mutex<BTreeMap<String, PoolCounters>>,
    counters: [AtomicU64; Counter::ALL.len()],
    /// Database time of the last reaper sweep, in microseconds.
    last_sweep_us: AtomicU64,
    http: Mutex<BTreeMap<(String, String, u16), u64>>,
    failures: Mutex<BTreeMap<String, u64>>,
    ready_buckets: [AtomicU64; BUCKETS.len()],
    ready_count: AtomicU64,
    /// Sum of observations in microseconds.
    ready_sum_us: AtomicU64,
    /// The latest usage of each live sandbox whose backend measures it
    /// (refreshed by the exit watcher every second).
    usage: Mutex<BTreeMap<String, sandboxer_api::Usage>>,
}

impl Metrics {
    /// Count one HTTP request by route template, method and status.
    pub fn count_request(&self, route: &str, method: &str, status: u16) {
        let mut map = self.http.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
    }

    /// Replace the per-sandbox usage shown by `/metrics`.
    pub fn set_usage(&self, usage: BTreeMap<String, sandboxer_api::Usage>) {
        *self.usage.lock().unwrap_or_else(|p| p.into_inner()) = usage;
    }

    fn render_usage(&self, out: &mut String) {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let gauges: [UsageGauge; 5] = [
            (
                "sandbox_cpu_seconds_total",
                "CPU time used by a live sandbox.",
                "counter",
                |u| u.cpu_seconds,
            ),
            (
                "sandbox_memory_bytes",
                "Memory a live sandbox uses now.",
                "gauge",
                |u| u.memory_bytes as f64,
            ),
            (
                "sandbox_memory_peak_bytes",
                "The most memory a live sandbox has used.",
                "gauge",
                |u| u.memory_peak_bytes as f64,
            ),
            (
                "sandbox_pids",
                "Processes and threads in a live sandbox.",
                "gauge",
                |u| u.pids as f64,
            ),
            (
                "sandbox_oom_kills_total",
                "Processes of a live sandbox killed at its memory limit.",
                "counter",
                |u| u.oom_kills as f64,
            ),
        ];
        for (name, help, kind, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP sandboxer_{name} {help}\n# TYPE sandboxer_{name} {kind}"
            );
            for (id, u) in &usage {
                let _ = writeln!(out, "sandboxer_{name}{{sandbox_id=\"{id}\"}} {}", value(u));
            }
        }
    }

    /// Add one to `counter`.
    pub fn count(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Add `n` to `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// Record the database time of a reaper sweep.
    pub fn observe_sweep(&self, seconds: f64) {
        self.last_sweep_us
            .store((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Count one failed provision by failure code.
    pub fn count_failure(&self, code: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(code.to_owned()).or_default() += 1;
    }

    /// Count one warm-pool event of `profile`.
    pub fn pool(&self, profile: &str, event: PoolEvent) {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let c = map.entry(profile.to_owned()).or_default();
        match event {
            PoolEvent::Hit => c.hits += 1,
            PoolEvent::MissEmpty => c.misses_empty += 1,
            PoolEvent::MissIneligible => c.misses_ineligible += 1,
            PoolEvent::RefillFailure => c.refill_failures += 1,
            PoolEvent::Lost => c.lost += 1,
        }
    }

    /// The warm-pool counters of `profile` so far.
    pub fn pool_counters(&self, profile: &str) -> PoolCounters {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(profile)
            .copied()
            .unwrap_or_default()
    }

    /// Record one create→ready latency.
    pub fn observe_create_ready(&self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.ready_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ready_count.fetch_add(1, Ordering::Relaxed);
        self.ready_sum_us
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// The text exposition, with `by_state`, the outbox backlog and the
    /// pools' members counted from the database.
    pub fn render(
        &self,
        by_state: &[(String, i64)],
        outbox_backlog: i64,
        pools: &[PoolGauge],
    ) -> String {
        let mut out = String::new();
        for counter in Counter::ALL {
            let (name, help) = counter.describe();
            let _ = writeln!(
                out,
                "# HELP sandboxer_{name}_total {help}\n# TYPE sandboxer_{name}_total counter\nsandboxer_{name}_total {}",
                self.get(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sandboxer_reaper_last_sweep_seconds Database time of the last reaper sweep.\n\
             # TYPE sandboxer_reaper_last_sweep_seconds gauge\nsandboxer_reaper_last_sweep_seconds {}",
            self.last_sweep_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP sandboxer_outbox_backlog Lifecycle events not yet delivered to the configured receiver (0 without one).\n\
             # TYPE sandboxer_outbox_backlog gauge\nsandboxer_outbox_backlog {outbox_backlog}"
        );
        out.push_str("# HELP sandboxer_sandboxes Sandboxes by lifecycle state.\n# TYPE sandboxer_sandboxes gauge\n");
        for st in sandboxer_api::SandboxState::ALL {
            let n = by_state
                .iter()
                .find(|(s, _)| s == st.as_str())
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "sandboxer_sandboxes{{state=\"{}\"}} {n}", st.as_str());
        }
        out.push_str("# HELP sandboxer_create_ready_seconds Time from create to ready.\n# TYPE sandboxer_create_ready_seconds histogram\n");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "sandboxer_create_ready_seconds_bucket{{le=\"{le}\"}} {}",
                self.ready_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.ready_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "sandboxer_create_ready_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "sandboxer_create_ready_seconds_sum {}",
            self.ready_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "sandboxer_create_ready_seconds_count {count}");
        out.push_str("# HELP sandboxer_provision_failures_total Failed provisions by failure code.\n# TYPE sandboxer_provision_failures_total counter\n");
        for (code, n) in self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "sandboxer_provision_failures_total{{code=\"{}\"}} {n}",
                escape(code)
            );
        }
        self.render_pools(&mut out, pools);
        self.render_usage(&mut out);
        out.push_str("# HELP sandboxer_http_requests_total HTTP requests by route, method and status.\n# TYPE sandboxer_http_requests_total counter\n");
        for ((route, method, status), n) in
            self.http.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            let _ = writeln!(
                out,
                "sandboxer_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        out
    }
}

impl Metrics {
    /// The warm-pool families: every pooled profile appears in each, at 0
    /// until something happens.
    fn render_pools(&self, out: &mut String, pools: &[PoolGauge]) {
        let counters = self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let of = |p: &str| counters.get(p).copied().unwrap_or_default();
        // One value per pooled profile.
        let per_profile = |out: &mut String,
                           name: &str,
                           help: &str,
                           kind: &str,
                           value: &dyn Fn(&PoolGauge) -> u64| {
            let _ = writeln!(
                out,
                "# HELP sandboxer_{name} {help}\n# TYPE sandboxer_{name} {kind}"
            );
            for g in pools {
                let _ = writeln!(
                    out,
                    "sandboxer_{name}{{profile=\"{}\"}} {}",
                    escape(&g.profile),
                    value(g)
                );
            }
        };
        per_profile(
            out,
            "pool_size",
            "Sandboxes a warm pool keeps ready (the profile's pool.size).",
            "gauge",
            &|g| u64::from(g.size),
        );
        out.push_str("# HELP sandboxer_pool_members Unassigned warm-pool sandboxes by state.\n# TYPE sandboxer_pool_members gauge\n");
        for g in pools {
            for st in ["requested", "provisioning", "ready"] {
                let n = g
                    .members
                    .iter()
                    .find(|(s, _)| s == st)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "sandboxer_pool_members{{profile=\"{}\",state=\"{st}\"}} {n}",
                    escape(&g.profile)
                );
            }
        }
        per_profile(
            out,
            "pool_hits_total",
            "Creates served by a warm-pool sandbox.",
            "counter",
            &|g| of(&g.profile).hits,
        );
        out.push_str("# HELP sandboxer_pool_misses_total Creates of a pooled profile provisioned on demand: `empty` (no ready member) or `ineligible` (inputs or from_snapshot, which a pool cannot serve).\n# TYPE sandboxer_pool_misses_total counter\n");
        for g in pools {
            let c = of(&g.profile);
            for (reason, n) in [
                ("empty", c.misses_empty),
                ("ineligible", c.misses_ineligible),
            ] {
                let _ = writeln!(
                    out,
                    "sandboxer_pool_misses_total{{profile=\"{}\",reason=\"{reason}\"}} {n}",
                    escape(&g.profile)
                );
            }
        }
        per_profile(
            out,
            "pool_refill_failures_total",
            "Warm-pool members that could not be started or failed before ready.",
            "counter",
            &|g| of(&g.profile).refill_failures,
        );
        per_profile(
            out,
            "pool_members_lost_total",
            "Ready warm-pool members found gone from their backend (replaced).",
            "counter",
            &|g| of(&g.profile).lost,
        );
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_renders_under_its_documented_name() {
        let m = Metrics::default();
        m.count(Counter::ReaperSweeps);
        m.add(Counter::CreditsDebited, 42);
        let text = m.render(&[], 0, &[]);
        assert!(text.contains(
            "# HELP sandboxer_reaper_sweeps_total Reaper sweeps run.\n\
             # TYPE sandboxer_reaper_sweeps_total counter\n\
             sandboxer_reaper_sweeps_total 1\n"
        ));
        assert!(text.contains("sandboxer_credits_debited_total 42\n"));
        for counter in Counter::ALL {
            let name = format!("\nsandboxer_{}_total ", counter.describe().0);
            assert_eq!(text.matches(&name).count(), 1, "{name}");
        }
    }
}
