//! The sections one request at a time against the daemon: create → ready
//! (sequential, against the bubblewrap floor), `GET /v1/sandboxes/{id}`
//! throughput, one list page out of many rows.
use super::*;

/// 1. create→ready and destroy, through HTTP, bubblewrap alone, and ext.local in-process.
pub(crate) async fn create_section(
    plan: &Plan,
    client: &Client,
    floor: Arc<Floor>,
    inproc: &InProcess,
) -> anyhow::Result<Section> {
    let req = create_request("create");
    let mut http = (Vec::new(), Vec::new());
    let mut bare = (Vec::new(), Vec::new());
    let mut ext = (Vec::new(), Vec::new());
    let mut spawn = Vec::new();
    // Interleaved, so a burst of load from elsewhere hits all three alike.
    for i in 0..plan.warmup_creates + plan.creates {
        let t0 = Instant::now();
        let (status, sbx) = client
            .create(&req, Some(WAIT), None)
            .await
            .context("POST /v1/sandboxes?wait=60s")?;
        let created = t0.elapsed();
        ensure!(
            status == 201,
            "POST /v1/sandboxes?wait=60s answered {status}, state {}, failure {:?}",
            sbx.state,
            sbx.failure
        );
        let t0 = Instant::now();
        let (status, gone) = client
            .destroy(&sbx.id, Some(WAIT))
            .await
            .with_context(|| format!("DELETE /v1/sandboxes/{}?wait=60s", sbx.id))?;
        let destroyed = t0.elapsed();
        ensure!(
            status == 200 && gone.state == SandboxState::Destroyed,
            "DELETE /v1/sandboxes/{}?wait=60s answered {status}, state {}",
            sbx.id,
            gone.state
        );

        let f = floor.clone();
        let id = new_id("sbx");
        let (f_ready, f_gone) = tokio::task::spawn_blocking(move || f.run_once(&id))
            .await
            .context("floor task")??;
        let in_process = inproc.run_once(&new_id("sbx")).await?;

        if i >= plan.warmup_creates {
            http.0.push(created);
            http.1.push(destroyed);
            bare.0.push(f_ready);
            bare.1.push(f_gone);
            ext.0.push(in_process.ready);
            ext.1.push(in_process.teardown);
            spawn.push(in_process.provision);
        }
    }
    let [http_c, http_d, bare_c, bare_d, ext_c, ext_d, spawn] =
        [http.0, http.1, bare.0, bare.1, ext.0, ext.1, spawn].map(Samples::new);
    let overhead = http_c.p50().saturating_sub(bare_c.p50());
    let ratio = http_c.p50().as_secs_f64() / bare_c.p50().as_secs_f64().max(1e-9);
    let (p50, p99) = (http_c.p50(), http_c.pct(99.0));
    let at_most = |d: Duration, ms: u64| d <= Duration::from_millis(ms);
    Ok(Section {
        title: "1. Create → ready on ext.local".into(),
        note: format!(
            "{n} creates of `{PROFILE}` one after another (after {w} not counted), each \
             `POST /v1/sandboxes?wait=60s` answered 201, then `DELETE /v1/sandboxes/{{id}}?wait=60s` \
             answered 200 `destroyed`, timed by the client (sandboxctl) from send to decoded answer. \
             The floor runs bubblewrap with the argv the daemon builds (`LocalExtension::bwrap_args`), \
             the same empty environment, until the same readiness (the info fd holds `child-pid` and \
             that init has a child), polling every 50 µs, its directory made before the clock starts; \
             then SIGKILL to the init and wait for bubblewrap to exit. \"In-process\" drives \
             `ext.local`'s `provision` + `wait_ready` / `teardown` without HTTP or the database. \
             The three are interleaved.",
            n = plan.creates,
            w = plan.warmup_creates
        ),
        rows: vec![
            Row::judged("create→ready via HTTP, p50", ms(p50), "≤ 25 ms", at_most(p50, 25)),
            Row::info("create→ready via HTTP, p95", ms(http_c.pct(95.0))),
            Row::judged("create→ready via HTTP, p99", ms(p99), "≤ 60 ms", at_most(p99, 60)),
            Row::info("bubblewrap directly (the floor), p50 / p95 / p99", bare_c.triple()),
            Row::info("ext.local in-process (no HTTP, no DB), p50 / p95 / p99", ext_c.triple()),
            Row::info("… of which `provision` (dir + spawn), p50 / p95 / p99", spawn.triple()),
            Row::judged(
                "daemon overhead: HTTP p50 − floor p50",
                ms(overhead),
                "≤ 3 ms",
                at_most(overhead, 3),
            ),
            Row::info("HTTP p50 / floor p50", format!("{ratio:.2}×")),
            Row::info("destroy via HTTP, p50 / p95 / p99", http_d.triple()),
            Row::info("kill bubblewrap directly (the floor), p50 / p95 / p99", bare_d.triple()),
            Row::info("ext.local teardown in-process, p50 / p95 / p99", ext_d.triple()),
        ],
    })
}

/// 2. `GET /v1/sandboxes/{id}` from many keep-alive connections.
pub(crate) async fn get_section(
    plan: &Plan,
    daemon: &Daemon,
    client: &Client,
) -> anyhow::Result<Section> {
    let (status, sbx) = client
        .create(&create_request("get"), Some(WAIT), None)
        .await
        .context("creating the sandbox to GET")?;
    ensure!(
        status == 201,
        "create answered {status}, state {}",
        sbx.state
    );
    let url = format!("{}/v1/sandboxes/{}", daemon.url, sbx.id);
    let res = load::hammer(
        &url,
        plan.connections,
        plan.get_warmup,
        plan.get_duration,
        50_000_000,
        &[daemon.pid(), std::process::id()],
    )
    .await?;
    let (status, _) = client.destroy(&sbx.id, Some(WAIT)).await?;
    ensure!(status == 200, "destroying {} answered {status}", sbx.id);
    let rate = res.rate();
    let per_request = |cpu: Option<&Duration>| {
        cpu.map(|c| c.as_secs_f64() / (res.ok + res.errors).max(1) as f64)
            .unwrap_or(0.0)
    };
    let (daemon_cpu, bench_cpu) = (per_request(res.cpu.first()), per_request(res.cpu.get(1)));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut rows = vec![
        Row::judged(
            "throughput",
            format!("{rate:.0} req/s"),
            "≥ 15,000 req/s",
            rate >= 15_000.0,
        ),
        Row::info("latency p50", ms(res.latencies.p50())),
        Row::info("latency p99", ms(res.latencies.pct(99.0))),
        Row::info(
            "requests answered 200",
            format!("{} in {:.1} s", res.ok, res.elapsed.as_secs_f64()),
        ),
        Row::info(
            "daemon CPU per request (user + system)",
            format!(
                "{:.0} µs: {:.0} req/s if the daemon had all {cores} cores",
                daemon_cpu * 1e6,
                cores / daemon_cpu.max(1e-9)
            ),
        ),
        Row::info(
            "load generator CPU per request",
            format!("{:.0} µs", bench_cpu * 1e6),
        ),
        Row::judged(
            "other answers or transport errors",
            res.errors.to_string(),
            "0",
            res.errors == 0,
        ),
    ];
    if let Some(e) = &res.first_error {
        rows.push(Row::info("first error", e.clone()));
    }
    Ok(Section {
        title: format!("2. GET /v1/sandboxes/{{id}}, {} connections", plan.connections),
        note: format!(
            "One ready sandbox; {c} tasks, each with its own keep-alive HTTP/1.1 connection (reqwest), \
             send the same GET back to back for {d:?} after {w:?} of warm-up, reading each body whole. \
             The load generator runs on the same machine, so it shares the cores with the daemon.",
            c = plan.connections,
            d = plan.get_duration,
            w = plan.get_warmup
        ),
        rows,
    })
}

/// 3. One page of 100 out of the pre-filled rows, plain and label-filtered.
pub(crate) async fn list_section(
    plan: &Plan,
    daemon: &Daemon,
    client: &Client,
) -> anyhow::Result<Section> {
    // The rows must be what the API shows: decode a page with the real client.
    let page = client
        .list(&ListQuery {
            limit: Some(100),
            ..ListQuery::default()
        })
        .await
        .context("listing the fixture rows")?;
    ensure!(
        page.items.len() == 100 && page.next_cursor.is_some(),
        "the first page holds {} rows (cursor {:?}); the fixture has {}",
        page.items.len(),
        page.next_cursor,
        plan.list_rows
    );
    let shard = client
        .list(&ListQuery {
            labels: vec![("shard".into(), "7".into())],
            limit: Some(1000),
            ..ListQuery::default()
        })
        .await?;
    let expected = plan.list_rows.div_ceil(100).min(plan.list_rows);
    ensure!(
        shard.items.len() == expected,
        "label shard=7 matches {} rows, not {expected}",
        shard.items.len()
    );

    let http = load::client()?;
    let plain = load::timed_gets(
        &http,
        &format!("{}/v1/sandboxes?limit=100", daemon.url),
        10,
        plan.list_calls,
    )
    .await?;
    let label = load::timed_gets(
        &http,
        &format!("{}/v1/sandboxes?limit=100&label=shard%3D7", daemon.url),
        10,
        plan.list_calls,
    )
    .await?;
    let judge = |figure: &str, d: Duration| {
        Row::judged(figure, ms(d), "≤ 10 ms", d <= Duration::from_millis(10))
    };
    Ok(Section {
        title: format!(
            "3. List: one page of 100 out of {} rows",
            thousands(plan.list_rows)
        ),
        note: format!(
            "{rows} rows written into the daemon's SQLite before it starts (state `failed`, so the \
             start-up pass has nothing to reconcile and the default list shows them all; labels \
             `bench=list` and `shard=0..99`). {n} sequential calls each (after 10 not counted), one \
             keep-alive connection, timed to the last byte of the body. The label filter \
             `shard=7` matches 1% of the rows, so the page needs a scan of the whole table.",
            rows = thousands(plan.list_rows),
            n = plan.list_calls
        ),
        rows: vec![
            judge("`?limit=100`, p50", plain.p50()),
            judge("`?limit=100`, p99", plain.pct(99.0)),
            judge("`?limit=100&label=shard=7`, p50", label.p50()),
            judge("`?limit=100&label=shard=7`, p99", label.pct(99.0)),
        ],
    })
}
