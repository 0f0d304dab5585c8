//! `bench-access`: reaching into a sandbox (API v1.1) through the daemon,
//! side by side with the same work done directly on this machine.
//!
//! - **time to interactive:** `POST /v1/sandboxes?wait=60s` then the first
//!   `POST …/exec` of `true` answered; directly: bubblewrap with the daemon's
//!   own flags for the sandbox running `true` to its end.
//! - **exec round trip** of `true` on a ready sandbox; directly: fork and
//!   exec of `/bin/true` here.
//! - **writing a 1 MiB file** (`PUT …/files`); directly: `std::fs::write`.
//! - **streamed output:** `head -c 256M /dev/zero | tr '\0' a` as server-sent
//!   events, bytes of data received per second; directly: the same pipeline
//!   into this process.
//! - **100 concurrent execs** on one sandbox: how many failed, wall time.
//!
//! ```text
//! cargo build --release -p sandboxerd --bins
//! cargo run --release -p sandboxer-bench --bin bench-access -- [--runs 50]
//! ```
//! Prints one markdown table. Needs bubblewrap.
#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use sandboxer_api::{CreateSandbox, SandboxState};
use sandboxer_testkit::{Daemon, DaemonBin};
use serde_json::{json, Value};

use stats::{ms, Samples};

/// Time exec, files and streaming through sand-boxer and directly.
#[derive(Parser, Debug)]
#[command(name = "bench-access")]
struct Args {
    /// Timed runs of each figure (after warm-up).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Megabytes streamed by the streaming figure.
    #[arg(long, default_value_t = 256)]
    stream_mb: u64,
    /// Repository root [default: the one this was built from].
    #[arg(long)]
    repo: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    let repo = match &args.repo {
        Some(r) => r.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let repo = repo.canonicalize().context("repository root")?;
    let scratch = tempfile::Builder::new().prefix("bench-access-").tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args, &repo, scratch.path()))
}

struct Row {
    what: &'static str,
    through: String,
    direct: String,
    target: &'static str,
}

async fn run(args: &Args, repo: &Path, scratch: &Path) -> anyhow::Result<()> {
    let bin = DaemonBin::beside_current_exe()?;
    bin.warn_if_stale(repo);
    // The repository's profiles plus a pooled copy of the shell profile.
    let profiles = scratch.join("profiles");
    std::fs::create_dir_all(&profiles)?;
    for entry in std::fs::read_dir(repo.join("profiles"))? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, profiles.join(name))?;
        }
    }
    let shell = std::fs::read_to_string(repo.join("profiles/local-shell.yaml"))?;
    std::fs::write(
        profiles.join("bench-pooled.yaml"),
        format!(
            "{}\npool: {{size: 4, max_age: 30m}}\n",
            shell.replace("profile.local-shell", "profile.bench-pooled")
        ),
    )?;
    let d = Daemon::builder(bin)
        .repo(repo)
        .profiles(&profiles)
        .log_file(scratch.join("daemon.log"))
        .try_start(&scratch.join("data"))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let req = CreateSandbox {
        profile: "profile.local-shell".into(),
        ..CreateSandbox::default()
    };
    let exec = |id: String, body: Value| {
        let http = http.clone();
        let url = format!("{}/v1/sandboxes/{id}/exec", d.url);
        async move {
            let r = http.post(url).json(&body).send().await?;
            ensure!(r.status() == 200, "exec answered {}", r.status());
            let v: Value = r.json().await?;
            Ok::<Value, anyhow::Error>(v)
        }
    };
    let mut rows = Vec::new();

    // Time to interactive.
    let mut tti = Vec::new();
    for i in 0..=args.runs.min(30) {
        let started = Instant::now();
        let (status, sbx) = d
            .client
            .create(&req, Some(Duration::from_secs(60)), None)
            .await?;
        ensure!(
            status == 201 && sbx.state == SandboxState::Ready,
            "create: {status} {:?}",
            sbx.failure
        );
        let v = exec(sbx.id.clone(), json!({"cmd": ["true"]})).await?;
        ensure!(v["exit_code"] == 0, "{v}");
        if i > 0 {
            tti.push(started.elapsed());
        }
        d.client.destroy(&sbx.id, None).await?;
    }
    let direct_tti = direct_bwrap(args.runs.min(30))?;
    rows.push(Row {
        what: "create → first exec returned (time to interactive), p50 / p95 / max",
        through: Samples::new(tti).triple(),
        direct: direct_tti.triple(),
        target: "p50 ≤ 15 ms",
    });
    // The same from a warm pool (4 ready members; each create waits until
    // the pool is full again, so no refill runs while it is timed).
    let pooled = CreateSandbox {
        profile: "profile.bench-pooled".into(),
        ..CreateSandbox::default()
    };
    let mut tti_pool = Vec::new();
    for i in 0..=args.runs.min(30) {
        wait_pool_full(&http, &d.url, 4).await?;
        let started = Instant::now();
        let (status, sbx) = d
            .client
            .create(&pooled, Some(Duration::from_secs(60)), None)
            .await?;
        ensure!(
            status == 201 && sbx.state == SandboxState::Ready,
            "pooled create: {status}"
        );
        let v = exec(sbx.id.clone(), json!({"cmd": ["true"]})).await?;
        ensure!(v["exit_code"] == 0, "{v}");
        if i > 0 {
            tti_pool.push(started.elapsed());
        }
        d.client.destroy(&sbx.id, None).await?;
    }
    rows.push(Row {
        what: "the same from a warm pool (`pool: {size: 4}`), p50 / p95 / max",
        through: Samples::new(tti_pool).triple(),
        direct: "—".into(),
        target: "p50 ≤ 15 ms",
    });

    let (_, sbx) = d
        .client
        .create(&req, Some(Duration::from_secs(60)), None)
        .await?;
    let id = sbx.id.clone();
    for _ in 0..5 {
        exec(id.clone(), json!({"cmd": ["true"]})).await?;
    }
    let mut rt = Vec::new();
    for _ in 0..args.runs * 4 {
        let started = Instant::now();
        exec(id.clone(), json!({"cmd": ["true"]})).await?;
        rt.push(started.elapsed());
    }
    let mut direct = Vec::new();
    for _ in 0..args.runs * 4 {
        let started = Instant::now();
        Command::new("true").status()?;
        direct.push(started.elapsed());
    }
    rows.push(Row {
        what: "exec round trip of `true`, p50 / p95 / max",
        through: Samples::new(rt).triple(),
        direct: Samples::new(direct).triple(),
        target: "p50 ≤ 2 ms",
    });

    // 1 MiB file.
    let mib = vec![0x5au8; 1 << 20];
    let mut put = Vec::new();
    for i in 0..args.runs + 3 {
        let started = Instant::now();
        let r = http
            .put(format!("{}/v1/sandboxes/{id}/files", d.url))
            .query(&[("path", format!("/workspace/f{}", i % 4))])
            .body(mib.clone())
            .send()
            .await?;
        ensure!(r.status() == 201, "put answered {}", r.status());
        if i >= 3 {
            put.push(started.elapsed());
        }
    }
    let mut direct = Vec::new();
    for i in 0..args.runs {
        let started = Instant::now();
        std::fs::write(scratch.join(format!("f{}", i % 4)), &mib)?;
        direct.push(started.elapsed());
    }
    rows.push(Row {
        what: "write a 1 MiB file, p50 / p95 / max",
        through: Samples::new(put).triple(),
        direct: Samples::new(direct).triple(),
        target: "p50 ≤ 5 ms",
    });

    // Streamed output.
    let cmd = format!("head -c {}M /dev/zero | tr '\\0' a", args.stream_mb);
    let started = Instant::now();
    let mut r = http
        .post(format!("{}/v1/sandboxes/{id}/exec", d.url))
        .header("accept", "text/event-stream")
        .json(&json!({"cmd": cmd, "timeout": "10m"}))
        .send()
        .await?;
    let mut data_bytes: u64 = 0;
    let mut tail = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    while let Some(chunk) = r.chunk().await? {
        // The payload: what follows `data: ` on each line of a `stdout`
        // event (lines split at chunk ends are joined first).
        let mut rest: &[u8] = &chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let whole: &[u8] = if line.is_empty() {
                &rest[..nl]
            } else {
                line.extend_from_slice(&rest[..nl]);
                &line
            };
            if let Some(payload) = whole.strip_prefix(b"data: ".as_slice()) {
                if payload.first() == Some(&b'a') {
                    data_bytes += payload.len() as u64;
                }
            }
            line.clear();
            rest = &rest[nl + 1..];
        }
        line.extend_from_slice(rest);
        tail = chunk[chunk.len().saturating_sub(512)..].to_vec();
    }
    let through = started.elapsed();
    ensure!(
        String::from_utf8_lossy(&tail).contains("event: exit"),
        "the stream did not end with exit"
    );
    ensure!(
        data_bytes == args.stream_mb << 20,
        "got {data_bytes} bytes of output"
    );
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdout(Stdio::piped())
        .output()?;
    let direct = started.elapsed();
    ensure!(out.stdout.len() as u64 == args.stream_mb << 20);
    let rate = |d: Duration| {
        format!(
            "{:.0} MB/s",
            (args.stream_mb << 20) as f64 / d.as_secs_f64() / 1e6
        )
    };
    rows.push(Row {
        what: "streamed exec output (server-sent events), throughput",
        through: rate(through),
        direct: rate(direct),
        target: "≥ 200 MB/s",
    });

    // 100 concurrent execs.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let f = exec(id.clone(), json!({"cmd": ["echo", i.to_string()]}));
        tasks.push(tokio::spawn(f));
    }
    let mut failed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok(v) if v["stdout"] == format!("{i}\n") => {}
            _ => failed += 1,
        }
    }
    rows.push(Row {
        what: "100 concurrent execs on one sandbox: failed, wall time",
        through: format!("{failed} failed, {}", ms(started.elapsed())),
        direct: "—".into(),
        target: "0 failed",
    });
    d.stop(Duration::from_secs(10))?;

    println!(
        "date {}, nproc {}, runs {}",
        chrono::Utc::now().format("%Y-%m-%d"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.runs
    );
    println!();
    println!("| figure | through sand-boxer | directly | target |");
    println!("| --- | ---: | ---: | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what, r.through, r.direct, r.target
        );
    }
    Ok(())
}

/// Waits until `/metrics` shows `want` ready members of the bench pool.
async fn wait_pool_full(http: &reqwest::Client, url: &str, want: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let members = text
            .lines()
            .filter(|l| {
                l.starts_with("sandboxer_pool_members")
                    && l.contains("profile.bench-pooled")
                    && l.contains("state=\"ready\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        if members as u64 >= want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the pool did not fill in 60 s ({members} members)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// bubblewrap with a sandbox's namespaces running `true`, `runs` times.
fn direct_bwrap(runs: usize) -> anyhow::Result<Samples> {
    let mut out = Vec::new();
    for i in 0..=runs {
        let started = Instant::now();
        let status = Command::new("bwrap")
            .args([
                "--unshare-user",
                "--uid",
                "0",
                "--gid",
                "0",
                "--unshare-pid",
                "--unshare-net",
                "--unshare-ipc",
                "--unshare-uts",
                "--new-session",
                "--cap-drop",
                "ALL",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/bin",
                "/bin",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--",
                "true",
            ])
            .stdin(Stdio::null())
            .status()
            .context("bwrap (apt-get install -y bubblewrap)")?;
        ensure!(status.success(), "bwrap: {status}");
        if i > 0 {
            out.push(started.elapsed());
        }
    }
    Ok(Samples::new(out))
}
