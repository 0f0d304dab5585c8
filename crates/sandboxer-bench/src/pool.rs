//! Section 7: create → ready from a warm pool, on a daemon of its own.
use super::*;

/// The pooled copy of [`PROFILE`] that the warm-pool section creates.
pub(crate) const POOL_PROFILE: &str = "profile.bench-pooled";
/// Its `pool.size`.
pub(crate) const POOL_SIZE: u32 = 4;

/// Section 7, create → ready from a warm pool, on a daemon of its own (so
/// its refills never run under the other sections) whose profiles are the
/// repository's plus [`POOL_PROFILE`].
pub(crate) async fn pool_section(
    plan: &Plan,
    repo: &Path,
    bin: &DaemonBin,
    scratch: &Path,
) -> anyhow::Result<Section> {
    let profiles = scratch.join("pool-profiles");
    std::fs::create_dir_all(&profiles)
        .with_context(|| format!("creating {}", profiles.display()))?;
    let source = repo.join("profiles");
    for entry in std::fs::read_dir(&source).with_context(|| source.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, profiles.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    let base = source.join("local-shell.yaml");
    let shell =
        std::fs::read_to_string(&base).with_context(|| format!("reading {}", base.display()))?;
    ensure!(
        shell.contains(PROFILE),
        "{} does not define {PROFILE}",
        base.display()
    );
    std::fs::write(
        profiles.join("bench-pooled.yaml"),
        format!(
            "{}\npool: {{size: {POOL_SIZE}, max_age: 30m}}\n",
            shell.replace(PROFILE, POOL_PROFILE)
        ),
    )
    .context("writing the pooled profile")?;
    let data = scratch.join("pool-data");
    let daemon = Daemon::builder(bin.clone())
        .repo(repo)
        .profiles(&profiles)
        .log_file(scratch.join("sandboxerd-pool.log"))
        .try_start(&data)?;
    let measured = pool_measure(plan, &daemon).await;
    let log_tail = daemon.log.text();
    let stopped = daemon.stop(Duration::from_secs(20));
    let section =
        measured.with_context(|| format!("the pool daemon's log ends with:\n{log_tail}"))?;
    stopped?;
    Ok(section)
}

/// One series of `/metrics` (`name{labels}`), 0 when absent.
pub(crate) async fn metric(client: &Client, series: &str) -> anyhow::Result<f64> {
    let (status, body) = client
        .request_json(sandboxctl::Method::GET, "/metrics", None)
        .await
        .context("GET /metrics")?;
    ensure!(status == 200, "GET /metrics answered {status}");
    let text = body.as_str().unwrap_or_default();
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

/// Wait until the pool holds [`POOL_SIZE`] ready members (polled every
/// 5 ms); answers how long that took.
pub(crate) async fn pool_full(client: &Client, limit: Duration) -> anyhow::Result<Duration> {
    let gauge = format!("sandboxer_pool_members{{profile=\"{POOL_PROFILE}\",state=\"ready\"}}");
    let t0 = Instant::now();
    loop {
        if metric(client, &gauge).await? >= f64::from(POOL_SIZE) {
            return Ok(t0.elapsed());
        }
        ensure!(
            t0.elapsed() < limit,
            "the warm pool did not hold {POOL_SIZE} ready sandboxes within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn pool_measure(plan: &Plan, daemon: &Daemon) -> anyhow::Result<Section> {
    let client = daemon.client.clone();
    let hits_series = format!("sandboxer_pool_hits_total{{profile=\"{POOL_PROFILE}\"}}");
    let first_fill = pool_full(&client, Duration::from_secs(60)).await?;
    let hits_before = metric(&client, &hits_series).await?;
    let req = CreateSandbox {
        profile: POOL_PROFILE.into(),
        labels: BTreeMap::from([("bench".to_owned(), "pool".to_owned())]),
        ..CreateSandbox::default()
    };
    let total = plan.warmup_creates + plan.pool_creates;
    let (mut created, mut refilled) = (Vec::new(), Vec::new());
    for i in 0..total {
        let t0 = Instant::now();
        let (status, sbx) = client
            .create(&req, Some(WAIT), None)
            .await
            .context("POST /v1/sandboxes?wait=60s")?;
        let dt = t0.elapsed();
        ensure!(
            status == 201,
            "POST /v1/sandboxes?wait=60s answered {status}, state {}, failure {:?}",
            sbx.state,
            sbx.failure
        );
        // The next create starts from a full pool, with no refill running.
        let refill = pool_full(&client, Duration::from_secs(60)).await?;
        let (status, gone) = client
            .destroy(&sbx.id, Some(WAIT))
            .await
            .with_context(|| format!("DELETE /v1/sandboxes/{}?wait=60s", sbx.id))?;
        ensure!(
            status == 200 && gone.state == SandboxState::Destroyed,
            "DELETE /v1/sandboxes/{}?wait=60s answered {status}, state {}",
            sbx.id,
            gone.state
        );
        if i >= plan.warmup_creates {
            created.push(dt);
            refilled.push(refill);
        }
    }
    let hits = (metric(&client, &hits_series).await? - hits_before).max(0.0) as usize;
    let [created, refilled] = [created, refilled].map(Samples::new);
    let p50 = created.p50();
    Ok(Section {
        title: "7. Create → ready from a warm pool".into(),
        note: format!(
            "A second daemon (default configuration, fresh data dir) whose profiles are the repository's \
             plus `{POOL_PROFILE}`: `{PROFILE}` with `pool: {{size: {POOL_SIZE}, max_age: 30m}}`. \
             {n} creates one after another (after {w} not counted), each `POST /v1/sandboxes?wait=60s` \
             answered 201 with a ready sandbox, timed by the client from send to decoded answer; \
             before each, the pool holds {POOL_SIZE} ready sandboxes (`sandboxer_pool_members`, polled \
             every 5 ms), so no refill runs when the create is sent. Each sandbox is then destroyed \
             (not timed). The pool's first fill took {fill}.",
            n = plan.pool_creates,
            w = plan.warmup_creates,
            fill = ms(first_fill)
        ),
        rows: vec![
            Row::judged(
                "create→ready from the pool via HTTP, p50",
                ms(p50),
                "≤ 5 ms",
                p50 <= Duration::from_millis(5),
            ),
            Row::info("create→ready from the pool via HTTP, p95", ms(created.pct(95.0))),
            Row::info("create→ready from the pool via HTTP, p99", ms(created.pct(99.0))),
            Row::judged(
                "creates served from the pool (`sandboxer_pool_hits_total`)",
                format!("{hits} of {total}"),
                format!("{total} of {total}"),
                hits == total,
            ),
            Row::info(
                "pool full again after a handout (refill seen on /metrics), p50 / p95 / p99",
                refilled.triple(),
            ),
        ],
    })
}
