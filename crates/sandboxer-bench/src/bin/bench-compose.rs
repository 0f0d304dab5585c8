//! `bench-compose`: create→ready of a two-service compose stack through
//! sand-boxer (`ext.compose-ssh`) against doing the same by hand over SSH.
//!
//! Both sides run against one throwaway `sshd` on a loopback port (generated
//! host and client keys) and this machine's `dockerd`, with the stack of
//! `tests/fixtures/compose-two-service` (images from the local busybox
//! image; nothing is pulled). Runs are interleaved, so a burst of load from
//! elsewhere hits both alike.
//!
//! - **By hand:** OpenSSH's `ssh` over one multiplexed connection
//!   (`ControlMaster`, the most favourable setting for the baseline): `tar`
//!   the repository into the workdir, `docker-compose -p <p> up -d`, then
//!   poll `docker ps` every 100 ms until every service runs and the web
//!   service reports `healthy`.
//! - **sand-boxer:** `POST /v1/sandboxes?wait=120s` of `profile.compose-e2e`
//!   until it answers 201 `ready` (upload, override file, `up -d`, wait for
//!   running and healthy).
//!
//! ```text
//! cargo build --release -p sandboxerd
//! cargo run --release -p sandboxer-bench --bin bench-compose -- [--runs 10]
//! ```
//! Prints one markdown table. Needs root, docker.io, docker-compose,
//! openssh-server/-client and busybox-static (`scripts/test` installs them).
#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use sandboxer_api::{CreateSandbox, Placement, SandboxState};
use sandboxer_testkit::{prepare_docker, Daemon, DaemonBin, Sshd};

use stats::{ms, Samples};

/// Time a two-service compose stack through sand-boxer and by hand.
#[derive(Parser, Debug)]
#[command(name = "bench-compose")]
struct Args {
    /// Timed runs of each side (after one warm-up run of each).
    #[arg(long, default_value_t = 10)]
    runs: usize,
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
    let repo = repo
        .canonicalize()
        .with_context(|| format!("repository root {}", repo.display()))?;
    let stack = repo.join("tests/fixtures/compose-two-service");
    ensure!(
        stack.join("docker-compose.yml").is_file(),
        "{} has no docker-compose.yml",
        stack.display()
    );
    prepare_docker()?;
    let scratch = tempfile::Builder::new()
        .prefix("bench-compose-")
        .tempdir()
        .context("scratch directory")?;
    let sshd = Sshd::start(scratch.path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(&args, &repo, &stack, scratch.path(), &sshd));
    stop_master(&sshd, scratch.path());
    result
}

async fn run(
    args: &Args,
    repo: &Path,
    stack: &Path,
    scratch: &Path,
    sshd: &Sshd,
) -> anyhow::Result<()> {
    let workdir = scratch.join("remote");
    std::fs::create_dir_all(&workdir)?;
    let config = scratch.join("sandboxerd.toml");
    std::fs::write(
        &config,
        format!(
            "provision_timeout = \"120s\"\nstale_sweep_interval = \"0s\"\n\n[[hosts]]\nid = \"bench\"\n\
             address = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nidentity_file = \"{}\"\n\
             host_key = \"{}\"\nengine = \"docker\"\nworkdir = \"{}\"\n",
            sshd.port,
            sshd.identity.display(),
            sshd.host_key,
            workdir.display()
        ),
    )?;
    let bin = DaemonBin::beside_current_exe()?;
    bin.warn_if_stale(repo);
    let d = Daemon::builder(bin)
        .repo(repo)
        .arg("--config")
        .arg(&config)
        .log_file(scratch.join("daemon.log"))
        .try_start(&scratch.join("data"))?;
    let client = d.client.clone();
    let req = CreateSandbox {
        profile: "profile.compose-e2e".into(),
        inputs: BTreeMap::from([("repo".into(), stack.display().to_string())]),
        placement: Some(Placement {
            host: Some("bench".into()),
        }),
        ..CreateSandbox::default()
    };
    let mut by_hand = Vec::new();
    let mut through = Vec::new();
    for i in 0..=args.runs {
        // By hand.
        let project = format!("benchhand{i}");
        let dir = workdir.join(&project);
        let started = Instant::now();
        hand_up(sshd, scratch, stack, &dir, &project)?;
        let hand = started.elapsed();
        hand_down(sshd, scratch, &dir, &project)?;

        // Through sand-boxer.
        let started = Instant::now();
        let (status, sbx) = client
            .create(&req, Some(Duration::from_secs(120)), None)
            .await
            .context("create")?;
        let sb = started.elapsed();
        ensure!(
            status == 201 && sbx.state == SandboxState::Ready,
            "sand-boxer answered {status} with the sandbox {:?}: {:?}",
            sbx.state,
            sbx.failure
        );
        let (_, gone) = client
            .destroy(&sbx.id, Some(Duration::from_secs(120)))
            .await
            .context("destroy")?;
        ensure!(gone.state == SandboxState::Destroyed, "destroy: {gone:?}");
        eprintln!(
            "run {i}{}: by hand {}, sand-boxer {}",
            if i == 0 { " (warm-up)" } else { "" },
            ms(hand),
            ms(sb)
        );
        if i > 0 {
            by_hand.push(hand);
            through.push(sb);
        }
    }
    d.stop(Duration::from_secs(10))?;
    let (hand, sb) = (Samples::new(by_hand), Samples::new(through));
    let overhead = sb.p50().as_secs_f64() / hand.p50().as_secs_f64().max(1e-9) - 1.0;
    println!(
        "| date | nproc | runs | by hand over SSH, p50 / p95 / max | sand-boxer, p50 / p95 / max | sand-boxer adds (p50) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {} | {} | {} | {:+.1}% |",
        chrono::Utc::now().format("%Y-%m-%d"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.runs,
        triple(&hand),
        triple(&sb),
        overhead * 100.0
    );
    Ok(())
}

fn triple(s: &Samples) -> String {
    format!("{} / {} / {}", ms(s.p50()), ms(s.pct(95.0)), ms(s.max()))
}

/// `ssh` to the throwaway server over the shared master connection.
fn ssh(sshd: &Sshd, scratch: &Path) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-q",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .arg("-o")
    .arg(format!(
        "UserKnownHostsFile={}",
        sshd.dir.join("known_hosts").display()
    ))
    .arg("-o")
    .arg(format!(
        "ControlPath={}",
        scratch.join("ssh-master").display()
    ))
    .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=300"])
    .arg("-i")
    .arg(&sshd.identity)
    .arg("-p")
    .arg(sshd.port.to_string());
    cmd
}

/// The account `ssh` logs in as.
const LOGIN: &str = "root@127.0.0.1";

fn remote(sshd: &Sshd, scratch: &Path, script: &str) -> anyhow::Result<String> {
    let out = ssh(sshd, scratch)
        .arg(LOGIN)
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .context("running ssh")?;
    if !out.status.success() {
        bail!(
            "`{script}` over ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Upload, `up -d`, and wait until both services run and web is healthy.
fn hand_up(
    sshd: &Sshd,
    scratch: &Path,
    stack: &Path,
    dir: &Path,
    project: &str,
) -> anyhow::Result<()> {
    let tar = Command::new("tar")
        .arg("-c")
        .arg("-C")
        .arg(stack)
        .args(["--exclude=.git", "."])
        .output()
        .context("tar")?;
    ensure!(tar.status.success(), "tar of {} failed", stack.display());
    let mut child = ssh(sshd, scratch)
        .arg(LOGIN)
        .arg(format!("mkdir -p {d} && tar -x -C {d}", d = dir.display()))
        .stdin(Stdio::piped())
        .spawn()
        .context("ssh upload")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("ssh stdin")?;
        stdin.write_all(&tar.stdout)?;
    }
    ensure!(child.wait()?.success(), "upload over ssh failed");
    remote(
        sshd,
        scratch,
        &format!(
            "cd {} && docker-compose -p {project} up -d >/dev/null 2>&1",
            dir.display()
        ),
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = remote(
            sshd,
            scratch,
            &format!(
                "docker ps --filter label=com.docker.compose.project={project} --format '{{{{.Status}}}}'"
            ),
        )?;
        let lines: Vec<&str> = status.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() == 2
            && lines.iter().all(|l| l.starts_with("Up"))
            && lines.iter().any(|l| l.contains("(healthy)"))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the stack by hand was not up within 120 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hand_down(sshd: &Sshd, scratch: &Path, dir: &Path, project: &str) -> anyhow::Result<()> {
    remote(
        sshd,
        scratch,
        &format!(
            "cd {d} && docker-compose -p {project} down -v -t 1 >/dev/null 2>&1; rm -rf {d}",
            d = dir.display()
        ),
    )
    .map(|_| ())
}

/// End the shared `ssh` master connection.
fn stop_master(sshd: &Sshd, scratch: &Path) {
    let _ = ssh(sshd, scratch)
        .args(["-O", "exit", LOGIN])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
