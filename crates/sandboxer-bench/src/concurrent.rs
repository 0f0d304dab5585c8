//! Many creates at once: how many succeed, how fast, and what is left.
use super::*;

/// How concurrent creates ended, from the client's side.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    ready: usize,
    failed_cleanly: usize,
    not_ready_in_time: usize,
    server_errors: usize,
    other_errors: usize,
    first_error: Option<String>,
}

impl Outcomes {
    fn error(&mut self, e: &ClientError) {
        match e.status() {
            Some(s) if s >= 500 => self.server_errors += 1,
            _ => self.other_errors += 1,
        }
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// Section 4: many creates at once, then destroying them all at once;
/// answers the section and the highest RSS sampled meanwhile.
pub(crate) async fn concurrent_section(
    plan: &Plan,
    daemon: &Daemon,
    client: &Client,
) -> anyhow::Result<(Section, u64)> {
    let n = plan.concurrent;
    let label = "concurrent";
    let req = create_request(label);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), daemon.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = memory(pid) {
                    peak.fetch_max(m.rss_kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, req) = (client.clone(), req.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let res = client.create(&req, Some(WAIT), None).await;
                (t.elapsed(), res)
            })
        })
        .collect();
    let mut outcomes = Outcomes::default();
    let mut answered: HashSet<String> = HashSet::new();
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        let (dt, res) = t.await.context("create task")?;
        latencies.push(dt);
        match res {
            Ok((201, sbx)) => {
                outcomes.ready += 1;
                answered.insert(sbx.id);
            }
            Ok((_, sbx)) if sbx.state == SandboxState::Failed => {
                outcomes.failed_cleanly += 1;
                outcomes
                    .first_error
                    .get_or_insert_with(|| format!("{:?}", sbx.failure));
                answered.insert(sbx.id);
            }
            Ok((status, sbx)) => {
                outcomes.not_ready_in_time += 1;
                outcomes
                    .first_error
                    .get_or_insert_with(|| format!("HTTP {status}, state {}", sbx.state));
                answered.insert(sbx.id);
            }
            Err(e) => outcomes.error(&e),
        }
    }
    let create_wall = t0.elapsed();
    let latencies = Samples::new(latencies);

    let query = ListQuery {
        labels: vec![("bench".into(), label.into())],
        include_all: true,
        limit: Some(1000),
        ..ListQuery::default()
    };
    let listed: Vec<Sandbox> = client.list_all(&query).await?;
    let listed_ids: HashSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    let lost = answered
        .iter()
        .filter(|id| !listed_ids.contains(id.as_str()))
        .count();
    let unanswered = listed.iter().filter(|s| !answered.contains(&s.id)).count();

    // Destroy everything still standing, all at once.
    let t0 = Instant::now();
    let tasks: Vec<_> = listed
        .iter()
        .filter(|s| !s.state.is_settled())
        .map(|s| {
            let (client, id) = (client.clone(), s.id.clone());
            tokio::spawn(async move { client.destroy(&id, Some(WAIT)).await })
        })
        .collect();
    let destroys = tasks.len();
    let (mut destroyed, mut destroy_5xx, mut destroy_other) = (0usize, 0usize, 0usize);
    let mut destroy_error = None;
    for t in tasks {
        match t.await.context("destroy task")? {
            Ok((200, s)) if s.state == SandboxState::Destroyed => destroyed += 1,
            Ok((status, s)) => {
                destroy_other += 1;
                destroy_error.get_or_insert_with(|| format!("HTTP {status}, state {}", s.state));
            }
            Err(e) => {
                if e.status().is_some_and(|s| s >= 500) {
                    destroy_5xx += 1;
                } else {
                    destroy_other += 1;
                }
                destroy_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let destroy_wall = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;

    let after: Vec<Sandbox> = client.list_all(&query).await?;
    let unsettled = after.iter().filter(|s| !s.state.is_settled()).count();
    let locked = daemon.log.locked.load(Ordering::Relaxed);
    let log_errors = daemon.log.errors.load(Ordering::Relaxed);

    let clean = outcomes.ready + outcomes.failed_cleanly;
    let mut rows = vec![
        Row::judged(
            "creates ready (201) + failed cleanly (200, `failed`)",
            format!("{} + {} of {n}", outcomes.ready, outcomes.failed_cleanly),
            format!("{n} of {n}"),
            clean == n,
        ),
        Row::judged(
            "5xx answers to creates",
            outcomes.server_errors.to_string(),
            "0",
            outcomes.server_errors == 0,
        ),
        Row::judged(
            "other create errors (transport, 4xx, not ready within 60 s)",
            (outcomes.other_errors + outcomes.not_ready_in_time).to_string(),
            "0",
            outcomes.other_errors + outcomes.not_ready_in_time == 0,
        ),
        Row::judged(
            "lost: answered but not listed, or listed but never answered",
            (lost + unanswered).to_string(),
            "0",
            lost + unanswered == 0,
        ),
        Row::judged(
            "`database is locked` in the daemon's log (whole run)",
            locked.to_string(),
            "0",
            locked == 0,
        ),
        Row::info(
            "ERROR lines in the daemon's log (whole run)",
            log_errors.to_string(),
        ),
        Row::info(format!("wall time, {n} creates"), ms(create_wall)),
        Row::info(
            "create→ready under this load, p50 / p95 / p99",
            latencies.triple(),
        ),
        Row::info(
            format!("wall time, destroying {destroys} at once"),
            ms(destroy_wall),
        ),
        Row::judged(
            "destroys not answered 200 `destroyed` (5xx + other)",
            format!("{destroy_5xx} + {destroy_other}"),
            "0",
            destroy_5xx + destroy_other == 0 && destroyed == destroys,
        ),
        Row::judged(
            "rows left neither `destroyed` nor `failed`",
            unsettled.to_string(),
            "0",
            unsettled == 0,
        ),
    ];
    if let Some(e) = outcomes.first_error.or(destroy_error) {
        rows.push(Row::info("first error", e));
    }
    let section = Section {
        title: format!("4. {n} concurrent creates"),
        note: format!(
            "{n} `POST /v1/sandboxes?wait=60s` sent at once (one connection each), then the label \
             `bench={label}` listed (`include=all`) to find any sandbox lost or made without an \
             answer, then every sandbox still standing destroyed at once with `DELETE ?wait=60s`."
        ),
        rows,
    };
    Ok((section, peak.load(Ordering::Relaxed)))
}
