//! `sandboxer-bench`: the figures of DESIGN.md's "Targets", measured on the
//! real daemon binary with real bubblewrap, and written as markdown tables
//! (figure, measured, target, met?) into `docs/benchmarks.md` between the
//! `<!-- bench:begin -->` / `<!-- bench:end -->` markers.
//!
//! ```text
//! cargo build --release -p sandboxerd
//! cargo run --release -p sandboxer-bench -- [--quick] [--out docs/benchmarks.md]
//! ```
//!
//! Sections: create→ready through HTTP against bubblewrap alone (the
//! floor); `GET /v1/sandboxes/{id}` throughput; one list page out of 10,000
//! rows; 200 concurrent creates; the daemon's memory; the reaper's sweep
//! query over 100,000 rows; create→ready from a warm pool (a second daemon
//! whose profiles add a pooled copy of the benchmark profile). A full run exits 1 when a target is missed;
//! `--quick` (CI) shrinks every load and judges nothing.
#![forbid(unsafe_code)]

mod fixtures;
mod floor;
mod load;
mod memory;
mod report;
mod stats;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use sandboxctl::{Client, ClientError, ListQuery};
use sandboxer_api::{CreateSandbox, Sandbox, SandboxState};
use sandboxerd::store::{new_id, now_ms, Db};

use floor::{Floor, InProcess, PROFILE};
use memory::{memory, Memory};
use report::{Report, Row, Section};
use sandboxer_testkit::{kill_leftovers, Daemon, DaemonBin};
use stats::{mib, ms, Samples};

/// Measure sand-boxer against the targets of DESIGN.md and write the report.
#[derive(Parser, Debug)]
#[command(name = "sandboxer-bench")]
struct Args {
    /// Few iterations and small loads, nothing judged (for CI, so the benchmark never rots).
    #[arg(long)]
    quick: bool,
    /// Report file; only the part between the bench markers is rewritten
    /// [default: <repo>/docs/benchmarks.md].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repository root holding profiles/ and extensions/ [default: the one this was built from].
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Keep the scratch directory (data dir, daemon log) and print where it is.
    #[arg(long)]
    keep: bool,
}

/// How much of everything a run does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    creates: usize,
    /// Creates served from a warm pool (after `warmup_creates` not counted).
    pool_creates: usize,
    warmup_creates: usize,
    connections: usize,
    get_warmup: Duration,
    get_duration: Duration,
    list_rows: usize,
    list_calls: usize,
    concurrent: usize,
    reaper_rows: usize,
    reaper_expired: usize,
    reaper_runs: usize,
}

const FULL: Plan = Plan {
    creates: 200,
    pool_creates: 200,
    warmup_creates: 5,
    connections: 64,
    get_warmup: Duration::from_secs(1),
    get_duration: Duration::from_secs(10),
    list_rows: 10_000,
    list_calls: 200,
    concurrent: 200,
    reaper_rows: 100_000,
    reaper_expired: 10_000,
    reaper_runs: 20,
};

const QUICK: Plan = Plan {
    creates: 10,
    pool_creates: 10,
    warmup_creates: 2,
    connections: 64,
    get_warmup: Duration::from_millis(200),
    get_duration: Duration::from_secs(2),
    list_rows: 10_000,
    list_calls: 20,
    concurrent: 20,
    reaper_rows: 20_000,
    reaper_expired: 2_000,
    reaper_runs: 3,
};

/// The `?wait=` every create and destroy asks for.
const WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxer-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandboxer-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let repo = match &args.repo {
        Some(r) => r.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let repo = repo
        .canonicalize()
        .with_context(|| format!("repository root {}", repo.display()))?;
    ensure!(
        repo.join("profiles").is_dir(),
        "{} has no profiles/ folder: pass the repository root with --repo",
        repo.display()
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo.join("docs/benchmarks.md"));
    let bin = DaemonBin::beside_current_exe()?;
    bin.warn_if_stale(&repo);
    let plan = if args.quick { QUICK } else { FULL };

    let scratch = tempfile::Builder::new()
        .prefix("sandboxer-bench-")
        .tempdir()
        .context("creating a scratch directory")?;
    let load_before = loadavg();
    let started = Instant::now();
    let measured = measure(&plan, &repo, &bin, scratch.path()).await;
    let leftovers = kill_leftovers(scratch.path());
    if args.keep {
        let kept = scratch.keep();
        eprintln!("scratch directory kept: {}", kept.display());
    }
    let mut sections = measured?;
    if leftovers > 0 {
        eprintln!("warning: {leftovers} processes of this run were still running and were killed");
    }
    sections.push(Section {
        title: "Clean-up".into(),
        note: String::new(),
        rows: vec![Row::judged(
            "processes of the run still running after the daemon stopped",
            leftovers.to_string(),
            "0",
            leftovers == 0,
        )],
    });

    let report = Report {
        header: header(args, &repo, &bin, &load_before, started.elapsed()),
        sections,
        quick: args.quick,
    };
    let md = report.render();
    println!("{md}");
    report::write(&out, &report)?;
    eprintln!("report written to {}", out.display());
    let misses = report.misses();
    if args.quick || misses.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{} targets missed:", misses.len());
    for m in &misses {
        eprintln!("  {m}");
    }
    Ok(ExitCode::FAILURE)
}

/// Every section, in an order that keeps them apart: the reaper fixture
/// first (no daemon), then one daemon on a data dir pre-filled with the list
/// rows: idle memory, list, GET throughput, sequential creates, concurrent creates.
async fn measure(
    plan: &Plan,
    repo: &Path,
    bin: &DaemonBin,
    scratch: &Path,
) -> anyhow::Result<Vec<Section>> {
    let profile = floor::load_profile(repo, &scratch.join("catalog"))?;

    eprintln!("== reaper sweep: {} rows", plan.reaper_rows);
    let reaper = reaper_section(plan, &scratch.join("reaper.db")).await?;

    let data = scratch.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    eprintln!("== {} rows into the daemon's database", plan.list_rows);
    fixtures::list_rows(&data.join("sandboxer.db"), plan.list_rows).await?;

    let daemon = Daemon::builder(bin.clone())
        .repo(repo)
        .log_file(scratch.join("sandboxerd.log"))
        .try_start(&data)?;
    let sections = with_daemon(plan, &daemon, scratch, profile).await;
    let log_tail = daemon.log.text();
    let stopped = daemon.stop(Duration::from_secs(20));
    let mut sections =
        sections.with_context(|| format!("the daemon's log ends with:\n{log_tail}"))?;
    stopped?;
    sections.push(reaper);

    eprintln!(
        "== warm pool: {} creates from a pool of {POOL_SIZE}",
        plan.pool_creates
    );
    sections.push(pool_section(plan, repo, bin, scratch).await?);
    Ok(sections)
}

/// The pooled copy of [`PROFILE`] that the warm-pool section creates.
const POOL_PROFILE: &str = "profile.bench-pooled";
/// Its `pool.size`.
const POOL_SIZE: u32 = 4;

/// Section 7, create → ready from a warm pool, on a daemon of its own (so
/// its refills never run under the other sections) whose profiles are the
/// repository's plus [`POOL_PROFILE`].
async fn pool_section(
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
async fn metric(client: &Client, series: &str) -> anyhow::Result<f64> {
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
async fn pool_full(client: &Client, limit: Duration) -> anyhow::Result<Duration> {
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

async fn pool_measure(plan: &Plan, daemon: &Daemon) -> anyhow::Result<Section> {
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

async fn with_daemon(
    plan: &Plan,
    daemon: &Daemon,
    scratch: &Path,
    profile: sandboxer_api::Profile,
) -> anyhow::Result<Vec<Section>> {
    let client = daemon.client.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = memory(daemon.pid())?;
    // Resident memory after each phase, to tell which one makes it grow.
    let mut phases = Vec::new();

    eprintln!("== list: {} calls", plan.list_calls);
    let list = list_section(plan, daemon, &client).await?;
    phases.push(("list calls".to_owned(), memory(daemon.pid())?));
    eprintln!(
        "== GET throughput: {} connections for {:?}",
        plan.connections, plan.get_duration
    );
    let get = get_section(plan, daemon, &client).await?;
    phases.push((
        format!("GET load, {} connections", plan.connections),
        memory(daemon.pid())?,
    ));
    eprintln!("== create→ready: {} sequential creates", plan.creates);
    let floor = Arc::new(Floor::new(&scratch.join("floor"), profile.clone())?);
    let inproc = InProcess::new(&scratch.join("inproc"), profile);
    let creates = create_section(plan, &client, floor, &inproc).await?;
    phases.push((
        format!("{} sequential creates", plan.creates),
        memory(daemon.pid())?,
    ));
    eprintln!("== {} concurrent creates", plan.concurrent);
    let (concurrent, peak) = concurrent_section(plan, daemon, &client).await?;
    phases.push((
        format!("{} concurrent creates", plan.concurrent),
        memory(daemon.pid())?,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = memory(daemon.pid())?;
    let memory = memory_section(plan, idle, &phases, peak, after);
    Ok(vec![creates, get, list, concurrent, memory])
}

fn create_request(label: &str) -> CreateSandbox {
    CreateSandbox {
        profile: PROFILE.into(),
        labels: BTreeMap::from([("bench".to_owned(), label.to_owned())]),
        ..CreateSandbox::default()
    }
}

/// 1. create→ready and destroy, through HTTP, bubblewrap alone, and ext.local in-process.
async fn create_section(
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
async fn get_section(plan: &Plan, daemon: &Daemon, client: &Client) -> anyhow::Result<Section> {
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
async fn list_section(plan: &Plan, daemon: &Daemon, client: &Client) -> anyhow::Result<Section> {
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

/// How concurrent creates ended, from the client's side.
#[derive(Debug, Default)]
struct Outcomes {
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
async fn concurrent_section(
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

/// 5. Resident memory of the daemon.
fn memory_section(
    plan: &Plan,
    idle: Memory,
    phases: &[(String, Memory)],
    peak_kib: u64,
    after: Memory,
) -> Section {
    let limit = 40 * 1024;
    let mut rows = vec![Row::judged(
        format!(
            "idle after start, {} rows (VmRSS)",
            thousands(plan.list_rows)
        ),
        mib(idle.rss_kib),
        "≤ 40 MiB",
        idle.rss_kib <= limit,
    )];
    for (phase, m) in phases {
        rows.push(Row::info(
            format!("right after the {phase} (VmRSS)"),
            mib(m.rss_kib),
        ));
    }
    rows.extend([
        Row::judged(
            "idle, 2 s after the whole run (VmRSS)",
            mib(after.rss_kib),
            "≤ 40 MiB",
            after.rss_kib <= limit,
        ),
        Row::info(
            format!(
                "peak during the {} concurrent creates (VmRSS sampled)",
                plan.concurrent
            ),
            mib(peak_kib),
        ),
        Row::info(
            "high-water mark over the whole run (VmHWM)",
            mib(after.hwm_kib),
        ),
    ]);
    Section {
        title: "5. Daemon memory".into(),
        note: format!(
            "`VmRSS` / `VmHWM` from `/proc/<pid>/status`. Idle: 2 s after start, before any \
             request, with the {rows} fixture rows in the database; and again 2 s after the whole \
             run. The peak is the highest `VmRSS` sampled every 5 ms during the {c} concurrent \
             creates and their destruction.",
            rows = thousands(plan.list_rows),
            c = plan.concurrent
        ),
        rows,
    }
}

/// `12345` as `12,345`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 6. The reaper's sweep query over a big table.
async fn reaper_section(plan: &Plan, db_path: &Path) -> anyhow::Result<Section> {
    let db = Db::open(db_path)
        .await
        .with_context(|| format!("opening {}", db_path.display()))?;
    let shape = fixtures::ReaperShape::new(plan.reaper_rows, plan.reaper_expired);
    let t0 = Instant::now();
    fixtures::reaper_rows(&db, shape).await?;
    let insert = t0.elapsed();
    let limit = u32::try_from(plan.reaper_expired).context("reaper batch")?;
    let mut runs = Vec::with_capacity(plan.reaper_runs);
    let mut first = Duration::ZERO;
    for i in 0..plan.reaper_runs {
        let t0 = Instant::now();
        let due = db.due_expiries(now_ms(), limit).await?;
        let dt = t0.elapsed();
        ensure!(
            due.len() == plan.reaper_expired,
            "the sweep found {} due rows, not {}",
            due.len(),
            plan.reaper_expired
        );
        if i == 0 {
            first = dt;
        }
        runs.push(dt);
    }
    db.close().await;
    let runs = Samples::new(runs);
    let limit_ms = Duration::from_millis(200);
    Ok(Section {
        title: format!(
            "6. Reaper sweep over {} rows, {} expired",
            thousands(plan.reaper_rows),
            thousands(plan.reaper_expired)
        ),
        note: format!(
            "A fresh database (`Db::open`, the daemon's pragmas and migrations) holding {} live rows \
             past `expires_at`, {} live rows not yet due and {} destroyed rows (expired long ago), \
             interleaved, written in one transaction in {}. Timed: \
             `Db::due_expiries(now, {})`, the sweep's query as the reaper runs it (what \
             `sandboxer_reaper_last_sweep_seconds` shows), {} runs.",
            thousands(shape.expired),
            thousands(shape.live),
            thousands(shape.destroyed),
            ms(insert),
            plan.reaper_expired,
            plan.reaper_runs
        ),
        rows: vec![
            Row::judged("median", ms(runs.p50()), "≤ 200 ms", runs.p50() <= limit_ms),
            Row::judged("max", ms(runs.max()), "≤ 200 ms", runs.max() <= limit_ms),
            Row::info("first run after opening", ms(first)),
        ],
    })
}

/// `- key: value` lines about the machine and the run.
fn header(
    args: &Args,
    repo: &Path,
    bin: &DaemonBin,
    load_before: &str,
    took: Duration,
) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let commit = match command_line(repo, "git", &["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = command_line(
                repo,
                "git",
                &["status", "--porcelain", "--untracked-files=no"],
            )
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("`{c}` with uncommitted changes")
            } else {
                format!("`{c}`")
            }
        }
        None => "unknown".into(),
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut cmd = format!(
        "`cargo run{} -p sandboxer-bench --",
        if profile == "release" {
            " --release"
        } else {
            ""
        }
    );
    if args.quick {
        cmd.push_str(" --quick");
    }
    cmd.push('`');
    vec![
        (
            "Date".into(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        ),
        (
            "Machine".into(),
            format!("{cores} cores ({cpu}), {mem}, Linux {kernel}"),
        ),
        (
            "Load average (1, 5, 15 min) before / after".into(),
            format!("{load_before} / {}", loadavg()),
        ),
        ("Commit".into(), commit),
        (
            "Toolchain".into(),
            format!(
                "{}, {profile} build",
                command_line(repo, "rustc", &["--version"]).unwrap_or_else(|| "rustc ?".into())
            ),
        ),
        (
            "bubblewrap".into(),
            command_line(repo, "bwrap", &["--version"]).unwrap_or_else(|| "?".into()),
        ),
        (
            "Daemon".into(),
            format!(
                "`{}`, default configuration, fresh data dir, `127.0.0.1:0`, JSON logs at `info`",
                bin.path()
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        ),
        (
            "Command".into(),
            format!("{cmd} (took {:.0} s)", took.as_secs_f64()),
        ),
    ]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The first line of what `program args` prints (run in `dir`), when it runs and succeeds.
fn command_line(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
    )
}
