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
//! whose profiles add a pooled copy of the benchmark profile); the egress
//! proxy's overhead on a 10 MB download. A full run exits 1 when a target is missed;
//! `--quick` (CI) shrinks every load and judges nothing.
#![forbid(unsafe_code)]

mod concurrent;
mod docker;
mod egress;
mod fixtures;
mod floor;
mod footprint;
mod header;
mod load;
mod memory;
mod pause;
mod pool;
mod report;
mod requests;
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

use concurrent::concurrent_section;
use floor::{Floor, InProcess, PROFILE};
use footprint::{memory_section, reaper_section, thousands};
use header::{header, loadavg};
use memory::{memory, Memory};
use pool::{pool_section, POOL_SIZE};
use report::{Report, Row, Section};
use requests::{create_section, get_section, list_section};
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
    /// Measure only the egress proxy's overhead (section 8), printed and
    /// not written into the report.
    #[arg(long)]
    egress_only: bool,
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
    if args.egress_only {
        let section = egress::egress_section(&plan, &repo, &bin, scratch.path()).await;
        kill_leftovers(scratch.path());
        let report = Report {
            header: Vec::new(),
            sections: vec![section?],
            quick: args.quick,
        };
        println!("{}", report.render());
        return Ok(ExitCode::SUCCESS);
    }
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

    eprintln!("== egress proxy: 10 MB downloads through the proxy and direct");
    sections.push(egress::egress_section(plan, repo, bin, scratch).await?);
    // Measured with the first daemon, reported in number order.
    if let Some(p) = sections.iter().position(|s| s.title.starts_with("9.")) {
        let pausing = sections.remove(p);
        sections.push(pausing);
    }
    eprintln!("== ext.docker beside docker run by hand");
    if let Some(s) = docker::docker_section(plan, repo, bin, scratch).await? {
        sections.push(s);
    }
    Ok(sections)
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
    eprintln!("== pause and resume");
    let pausing = pause::pause_section(plan, daemon).await?;
    eprintln!("== {} concurrent creates", plan.concurrent);
    let (concurrent, peak) = concurrent_section(plan, daemon, &client).await?;
    phases.push((
        format!("{} concurrent creates", plan.concurrent),
        memory(daemon.pid())?,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = memory(daemon.pid())?;
    let memory = memory_section(plan, idle, &phases, peak, after);
    Ok(vec![creates, get, list, concurrent, memory, pausing])
}

fn create_request(label: &str) -> CreateSandbox {
    CreateSandbox {
        profile: PROFILE.into(),
        labels: BTreeMap::from([("bench".to_owned(), label.to_owned())]),
        ..CreateSandbox::default()
    }
}
