//! A small closed-loop load generator: `connections` tasks, each with a
//! keep-alive client of its own (so exactly that many connections), sending
//! the same GET back to back for a fixed time or request budget.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::stats::Samples;

/// What a load run saw.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests answered 200 within the measured window.
    pub ok: u64,
    /// Requests answered anything else, or not answered.
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of every request of the window.
    pub latencies: Samples,
    /// CPU time (user + system) each watched process used in the window.
    pub cpu: Vec<Duration>,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A client holding one keep-alive connection per concurrent request.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// GET `url` from `connections` connections for `warmup` (not counted),
/// then for `duration` or until `max_requests` were sent, accounting the
/// CPU time of the processes `watch` over the measured window.
pub async fn hammer(
    url: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    max_requests: u64,
    watch: &[u32],
) -> anyhow::Result<LoadResult> {
    let budget = Arc::new(AtomicU64::new(max_requests));
    let start = Instant::now() + warmup;
    let end = start + duration;
    let cpu_at_start = {
        let pids = watch.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            pids.iter().map(|p| cpu_time(*p)).collect::<Vec<_>>()
        })
    };
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = client()?;
        let url = url.to_owned();
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(16_384);
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let counted = t0 >= start;
                if counted && budget.fetch_sub(1, Ordering::Relaxed) == 0 {
                    budget.store(0, Ordering::Relaxed);
                    break;
                }
                let res = match client.get(&url).send().await {
                    Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                        resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(resp) => Err(format!("HTTP {}", resp.status())),
                    Err(e) => Err(e.to_string()),
                };
                if !counted {
                    continue;
                }
                lat.push(t0.elapsed());
                match res {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (ok, errors, first_error, lat)
        }));
    }
    let (mut ok, mut errors, mut first_error, mut all) = (0, 0, None, Vec::new());
    for t in tasks {
        let (o, e, f, lat) = t.await.context("load task")?;
        ok += o;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
        all.extend(lat);
    }
    // Requests in flight at `end` finish after it and are counted: the
    // window runs until the last one is answered.
    let finished = Instant::now();
    let cpu_at_end: Vec<_> = watch.iter().map(|p| cpu_time(*p)).collect();
    let cpu_at_start = cpu_at_start.await.context("CPU sampler")?;
    let cpu = cpu_at_start
        .iter()
        .zip(&cpu_at_end)
        .map(|(a, b)| b.saturating_sub(*a))
        .collect();
    Ok(LoadResult {
        ok,
        errors,
        first_error,
        elapsed: finished.saturating_duration_since(start),
        latencies: Samples::new(all),
        cpu,
    })
}

/// CPU time (user + system) `pid` has used so far; zero when unknown.
pub fn cpu_time(pid: u32) -> Duration {
    // Linux reports these in USER_HZ ticks, 100 per second on every architecture.
    const TICKS_PER_SECOND: u64 = 100;
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command (which may hold spaces) and its `)`:
            // state is field 3, utime 14, stime 15.
            let rest = s.get(s.rfind(')')? + 1..)?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// Time `n` sequential GETs of `url` (after `warmup` untimed ones); every
/// answer must be 200. The clock stops once the whole body is read.
pub async fn timed_gets(
    client: &reqwest::Client,
    url: &str,
    warmup: usize,
    n: usize,
) -> anyhow::Result<Samples> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t0 = Instant::now();
        let resp = client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
        let dt = t0.elapsed();
        anyhow::ensure!(
            status == reqwest::StatusCode::OK,
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        if i >= warmup {
            lat.push(dt);
        }
    }
    Ok(Samples::new(lat))
}
