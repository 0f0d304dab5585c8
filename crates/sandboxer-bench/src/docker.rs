//! ext.docker beside `docker run` by hand, in one run: create→ready and
//! create→first exec through HTTP (runc, and runsc where registered),
//! against `docker run --rm --network none <image> true` timed the same
//! way (the CLI's own start-up included, as an operator would pay it).
use super::*;

/// The image every figure runs (imported from busybox-static by the tests).
const IMAGE: &str = "local/busybox";

fn sh_ok(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) async fn docker_section(
    plan: &Plan,
    repo: &Path,
    bin: &DaemonBin,
    scratch: &Path,
) -> anyhow::Result<Option<Section>> {
    if !sh_ok(&format!("docker image inspect {IMAGE}")) {
        eprintln!("   skipped: no {IMAGE} image (the tests import it from busybox-static)");
        return Ok(None);
    }
    let gvisor = sh_ok("docker info --format '{{json .Runtimes}}' | grep -q runsc");
    let dir = scratch.join("docker");
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles)?;
    let text = std::fs::read_to_string(repo.join("profiles/local-shell.yaml"))?;
    ensure!(
        text.contains("extension: ext.local\n"),
        "profiles/local-shell.yaml changed: cannot derive the docker profiles"
    );
    // No disk image: the figure is the container's, as `docker run` has none.
    let docker = text
        .replace("profile.local-shell", "profile.bench-docker")
        .replace(
            "extension: ext.local\n",
            &format!("extension: ext.docker\nimage: {IMAGE}\n"),
        )
        .replace("isolation: process", "isolation: container")
        .replace("  disk: 1GiB\n", "");
    std::fs::write(profiles.join("docker.yaml"), &docker)?;
    std::fs::write(
        profiles.join("gvisor.yaml"),
        docker
            .replace("profile.bench-docker", "profile.bench-gvisor")
            .replace("isolation: container", "isolation: gvisor"),
    )?;
    let daemon = Daemon::builder(bin.clone())
        .repo(repo)
        .profiles(&profiles)
        .log_file(dir.join("sandboxerd.log"))
        .try_start(&dir.join("data"))?;
    let result = measure(plan, &daemon, gvisor).await;
    let stopped = daemon.stop(Duration::from_secs(20));
    let section = result?;
    stopped?;
    Ok(Some(section))
}

/// `docker run --rm` of `runtime` by hand, `n` times.
fn by_hand(runtime: &str, n: usize) -> anyhow::Result<Samples> {
    let mut out = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let ok = sh_ok(&format!(
            "docker run --rm --runtime={runtime} --network none {IMAGE} true"
        ));
        ensure!(ok, "docker run --runtime={runtime} failed");
        out.push(started.elapsed());
    }
    Ok(Samples::new(out))
}

/// create→ready and create→first exec of `profile` through HTTP, `n` times.
async fn through(daemon: &Daemon, profile: &str, n: usize) -> anyhow::Result<(Samples, Samples)> {
    let client = &daemon.client;
    let (mut ready, mut first) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let req = CreateSandbox {
            profile: profile.into(),
            ..CreateSandbox::default()
        };
        let started = Instant::now();
        let (_, sbx) = client.create(&req, Some(WAIT), None).await?;
        ensure!(
            sbx.state == SandboxState::Ready,
            "{profile}: {:?}",
            sbx.failure
        );
        ready.push(started.elapsed());
        let r = client
            .exec(
                &sbx.id,
                &sandboxer_api::ExecRequest {
                    cmd: sandboxer_api::Command::Argv(vec!["true".into()]),
                    cwd: None,
                    env: BTreeMap::new(),
                    stdin: None,
                    timeout: None,
                    service: None,
                },
            )
            .await?;
        ensure!(r.exit_code == Some(0), "exec true: {r:?}");
        first.push(started.elapsed());
        client.destroy(&sbx.id, Some(WAIT)).await?;
    }
    Ok((Samples::new(ready), Samples::new(first)))
}

fn adds(ours: &Samples, hand: &Samples) -> String {
    let (a, b) = (ours.p50().as_secs_f64(), hand.p50().as_secs_f64());
    format!("{:+.1}%", (a - b) / b * 100.0)
}

async fn measure(plan: &Plan, daemon: &Daemon, gvisor: bool) -> anyhow::Result<Section> {
    let n = if plan.creates < 50 { 5 } else { 40 };
    // One of each first, not counted: image and page caches warm.
    through(daemon, "profile.bench-docker", 1).await?;
    by_hand("runc", 1)?;
    let mut rows = Vec::new();
    let mut runtimes = vec![("runc", "profile.bench-docker")];
    if gvisor {
        through(daemon, "profile.bench-gvisor", 1).await?;
        by_hand("runsc", 1)?;
        runtimes.push(("runsc", "profile.bench-gvisor"));
    }
    for (runtime, profile) in runtimes {
        // Interleaved halves, so a noisy moment falls on both.
        let (r1, f1) = through(daemon, profile, n / 2).await?;
        let h1 = by_hand(runtime, n / 2)?;
        let (r2, f2) = through(daemon, profile, n - n / 2).await?;
        let h2 = by_hand(runtime, n - n / 2)?;
        let join =
            |a: Samples, b: Samples| Samples::new(a.all().into_iter().chain(b.all()).collect());
        let (ready, first, hand) = (join(r1, r2), join(f1, f2), join(h1, h2));
        rows.push(Row::info(
            format!("{runtime}: `docker run --rm … true` by hand, p50 / p95 / p99"),
            hand.triple(),
        ));
        let target = if runtime == "runc" {
            "p50 ≤ 250 ms"
        } else {
            "—"
        };
        let row = format!("{runtime}: create→ready through HTTP, p50 / p95 / p99");
        rows.push(if runtime == "runc" {
            Row::judged(
                row,
                ready.triple(),
                target,
                ready.p50() <= Duration::from_millis(250),
            )
        } else {
            Row::info(row, ready.triple())
        });
        rows.push(Row::info(
            format!("{runtime}: create→first exec (`true`) through HTTP, p50 / p95 / p99"),
            first.triple(),
        ));
        let added =
            (ready.p50().as_secs_f64() - hand.p50().as_secs_f64()) / hand.p50().as_secs_f64();
        let row = format!("{runtime}: sand-boxer's create→ready over `docker run` by hand (p50)");
        rows.push(if runtime == "runc" {
            Row::judged(row, adds(&ready, &hand), "≤ +10%", added <= 0.10)
        } else {
            Row::info(row, adds(&ready, &hand))
        });
    }
    Ok(Section {
        title: "10. ext.docker beside `docker run` by hand".into(),
        note: format!(
            "{n} sandboxes of `{IMAGE}` (busybox-static imported as an image) per runtime, each \
             created with `?wait=60s` through HTTP and timed from send to the ready answer, then \
             to the answer of a first exec of `true` through the agent, then destroyed; beside \
             `docker run --rm --runtime=<runtime> --network none {IMAGE} true` run by hand the \
             same number of times, interleaved in halves. A sandbox does more than the command \
             by hand (its workspace, the agent started and answering through its verified \
             socket, read-only root, tini, limits, the row and its events) and less (the \
             container stays up: removal is in the destroy, not timed)."
        ),
        rows,
    })
}
